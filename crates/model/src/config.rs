//! Model configuration: the Hugging Face `config.json` mirror and the validated config built from it.
//!
//! The mirror ([`HfConfig`]) takes `config.json` as transformers writes it; [`ModelConfig`] is what
//! the rest of the crate trusts. Conversion refuses architectures and options this crate does not
//! implement, naming them, instead of silently computing something else.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The decoder families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama (and the many models that copy it: SmolLM, Mistral without sliding window...).
    Llama,
    /// Qwen2: Llama with a bias on the q/k/v projections.
    Qwen2,
}

impl Architecture {
    /// The transformers class name written into `config.json`'s `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    /// The transformers `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

const SUPPORTED: &str = "LlamaForCausalLM, MistralForCausalLM (no sliding window), Qwen2ForCausalLM";

/// A token id or a list of them, as `eos_token_id` may be either in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

/// Mirror of a Hugging Face `config.json` for the Llama/Qwen2 family. Field names are transformers'.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)] // field meanings are transformers'
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<serde_json::Value>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

/// The validated configuration of a decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which family; decides the q/k/v bias and the name written back to `config.json`.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest position the model was trained for.
    pub max_position_embeddings: usize,
    /// Bias on the q/k/v projections (always for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// The output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, when the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens: generation stops at any of them.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// The random tiny Llama the benchmarks share (model, learner, GRPO against TRL): 4 layers,
    /// hidden 256, MLP 1024, 4 query / 2 KV heads of 64, untied, over `vocab_size` tokens.
    pub fn bench_llama(vocab_size: usize, eos_token_ids: Vec<u32>) -> Self {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size: 256,
            intermediate_size: 1024,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            qkv_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids,
        }
    }

    /// The random tiny Llama the end-to-end and rollout tests train in seconds: 2 layers,
    /// hidden 32, MLP 64, 4 query / 2 KV heads of 8, untied, over `vocab_size` tokens.
    pub fn tiny_llama(vocab_size: usize, eos_token_ids: Vec<u32>) -> Self {
        ModelConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            max_position_embeddings: 256,
            ..Self::bench_llama(vocab_size, eos_token_ids)
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))?;
        Self::from_hf(&hf, path)
    }

    /// Validates a parsed mirror; `origin` names the file in errors.
    pub fn from_hf(hf: &HfConfig, origin: &Path) -> Result<Self> {
        let class = hf.architectures.first().cloned().unwrap_or_default();
        let architecture = match (class.as_str(), hf.model_type.as_deref()) {
            ("LlamaForCausalLM", _) | ("MistralForCausalLM", _) | ("", Some("llama" | "mistral")) => {
                Architecture::Llama
            }
            ("Qwen2ForCausalLM", _) | ("", Some("qwen2")) => Architecture::Qwen2,
            _ => {
                let architecture = if class.is_empty() {
                    hf.model_type.clone().unwrap_or_else(|| "<none>".into())
                } else {
                    class
                };
                return Err(ModelError::UnsupportedArchitecture {
                    path: origin.into(),
                    architecture,
                    supported: SUPPORTED,
                });
            }
        };
        let bad = |reason: String| Err(ModelError::config(origin, reason));
        if let Some(scaling) = &hf.rope_scaling {
            if !scaling.is_null() {
                return bad(format!("rope_scaling {scaling} is not supported (only plain RoPE)"));
            }
        }
        if hf.mlp_bias == Some(true) {
            return bad("mlp_bias = true is not supported".into());
        }
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return bad(format!("hidden_act {act:?} is not supported (only \"silu\")"));
            }
        }
        if hf.use_sliding_window == Some(true) {
            return bad("use_sliding_window = true is not supported".into());
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if hf.num_attention_heads == 0
            || num_kv_heads == 0
            || !hf.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({num_kv_heads})",
                hf.num_attention_heads
            ));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None if hf.hidden_size.is_multiple_of(hf.num_attention_heads) => {
                hf.hidden_size / hf.num_attention_heads
            }
            None => {
                return bad(format!(
                    "hidden_size ({}) is not divisible by num_attention_heads ({})",
                    hf.hidden_size, hf.num_attention_heads
                ))
            }
        };
        if head_dim % 2 != 0 {
            return bad(format!("head_dim ({head_dim}) must be even for RoPE"));
        }
        for (name, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        let eos_token_ids = match &hf.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![*id],
            Some(OneOrMany::Many(ids)) => ids.clone(),
        };
        Ok(Self {
            architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            max_position_embeddings: hf.max_position_embeddings,
            qkv_bias: architecture == Architecture::Qwen2 || hf.attention_bias == Some(true),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: hf.bos_token_id,
            eos_token_ids,
        })
    }

    /// The `config.json` mirror transformers loads this model from.
    pub fn to_hf(&self) -> HfConfig {
        HfConfig {
            architectures: vec![self.architecture.hf_class().into()],
            model_type: Some(self.architecture.model_type().into()),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_layers,
            num_attention_heads: self.num_heads,
            num_key_value_heads: Some(self.num_kv_heads),
            head_dim: Some(self.head_dim),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: Some(self.tie_word_embeddings),
            attention_bias: (self.architecture == Architecture::Llama).then_some(self.qkv_bias),
            mlp_bias: (self.architecture == Architecture::Llama).then_some(false),
            hidden_act: Some("silu".into()),
            use_sliding_window: (self.architecture == Architecture::Qwen2).then_some(false),
            sliding_window: None,
            bos_token_id: self.bos_token_id,
            eos_token_id: match self.eos_token_ids.as_slice() {
                [] => None,
                [one] => Some(OneOrMany::One(*one)),
                many => Some(OneOrMany::Many(many.to_vec())),
            },
            pad_token_id: None,
            torch_dtype: Some("float32".into()),
        }
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers * layer + h + head
    }

    /// The checkpoint names and shapes of every tensor this config needs, in checkpoint order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias {
                out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        let hf: HfConfig = serde_json::from_str(json).map_err(|e| ModelError::json("t", e))?;
        ModelConfig::from_hf(&hf, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn unknown_architecture_is_named() {
        let err = parse(&format!(r#"{{"architectures": ["GPTNeoXForCausalLM"], {BASE}}}"#)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("GPTNeoXForCausalLM") && msg.contains("config.json"), "{msg}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_roundtrips() {
        let c = parse(&format!(r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}}}"#)).unwrap();
        assert!(c.qkv_bias);
        assert_eq!(c.num_kv_heads, 2);
        assert_eq!(c.head_dim, 4);
        let back = ModelConfig::from_hf(&c.to_hf(), Path::new("x")).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rope_scaling_is_refused() {
        let err = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "rope_scaling": {{"type": "llama3"}}, {BASE}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("rope_scaling"), "{err}");
    }

    #[test]
    fn param_count_matches_tensor_shapes() {
        let c = parse(&format!(r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}}}"#)).unwrap();
        let total: usize = c.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(total, c.num_params());
    }
}
