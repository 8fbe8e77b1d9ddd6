//! A policy: the decoder with its tokenizer, loaded from a Hugging Face directory or a GGUF file,
//! and saved as a Hugging Face directory.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::config::{Architecture, HfConfig, ModelConfig, OneOrMany};
use crate::error::{ModelError, Result};
use crate::gguf::{unpermute_qk, GgufFile};
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;
use crate::weights::{read_hf_weights, safetensors_dtypes, write_safetensors, Checkpoint};

/// The decoder and its tokenizer.
#[derive(Debug, Clone)]
pub struct Policy<B: Backend> {
    /// The network.
    pub model: Llama<B>,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

/// Where a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A Hugging Face directory with safetensors.
    HfDir,
    /// A GGUF file.
    Gguf,
}

/// What `sluice model info` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// The path given.
    pub path: PathBuf,
    /// `hf` or `gguf`.
    pub format: &'static str,
    /// The validated config.
    pub config: ModelConfig,
    /// Number of parameters.
    pub parameters: usize,
    /// Storage dtypes found in the file(s), with tensor counts.
    pub dtypes: Vec<(String, usize)>,
    /// Tokenizer vocabulary size (added tokens included).
    pub tokenizer_vocab: usize,
    /// Whether a chat template is present.
    pub chat_template: bool,
}

/// Tells whether `path` is a GGUF file or an HF directory.
pub fn source_format(path: &Path) -> Result<SourceFormat> {
    if path.is_dir() {
        return Ok(SourceFormat::HfDir);
    }
    if path.is_file() {
        return Ok(SourceFormat::Gguf);
    }
    Err(ModelError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory")))
}

/// Maps a GGUF tensor name to its Hugging Face name.
fn hf_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The model config from GGUF metadata (`{arch}.*` keys).
pub fn gguf_config(file: &GgufFile) -> Result<ModelConfig> {
    let path = &file.path;
    let arch = file.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("<missing>");
    let architecture = match arch {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.clone(),
                architecture: other.to_string(),
                supported: "GGUF general.architecture \"llama\" or \"qwen2\"",
            })
        }
    };
    let num = |key: &str| -> Result<usize> {
        file.get(&format!("{arch}.{key}"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::config(path, format!("missing {arch}.{key}")))
    };
    let vocab = match file.get(&format!("{arch}.vocab_size")).and_then(|v| v.as_u64()) {
        Some(v) => v as usize,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| ModelError::config(path, "no vocab size"))?,
    };
    if file.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(ModelError::config(path, "rope_freqs (scaled RoPE) is not supported"));
    }
    let heads = num("attention.head_count")?;
    let hidden = num("embedding_length")?;
    let hf = HfConfig {
        architectures: vec![architecture.hf_class().into()],
        model_type: Some(architecture.model_type().into()),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: num("feed_forward_length")?,
        num_hidden_layers: num("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(num("attention.head_count_kv").unwrap_or(heads)),
        head_dim: num("rope.dimension_count").ok(),
        rms_norm_eps: file
            .get(&format!("{arch}.attention.layer_norm_rms_epsilon"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-6),
        rope_theta: file.get(&format!("{arch}.rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: num("context_length").unwrap_or(2048),
        tie_word_embeddings: Some(!file.tensors.iter().any(|t| t.name == "output.weight")),
        attention_bias: Some(file.tensors.iter().any(|t| t.name.ends_with("attn_q.bias"))),
        mlp_bias: None,
        hidden_act: None,
        use_sliding_window: None,
        sliding_window: None,
        bos_token_id: file.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32),
        eos_token_id: file
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| OneOrMany::One(v as u32)),
        pad_token_id: None,
        torch_dtype: None,
    };
    // f32 rounding of the GGUF float field (1e-5 stored as 9.99999974e-6) is undone so a
    // converted config.json reads as the original.
    let mut cfg = ModelConfig::from_hf(&hf, path)?;
    cfg.rms_norm_eps = round_sig(cfg.rms_norm_eps);
    cfg.rope_theta = round_sig(cfg.rope_theta);
    Ok(cfg)
}

/// Rounds to 7 significant digits: the precision of the f32 GGUF stores.
fn round_sig(v: f64) -> f64 {
    if v == 0.0 {
        return v;
    }
    format!("{:.6e}", v).parse().unwrap_or(v)
}

/// Reads and dequantises a GGUF file into HF-named tensors (q/k rows restored to HF order).
pub fn gguf_checkpoint(file: &GgufFile, cfg: &ModelConfig) -> Result<Checkpoint> {
    let mut ckpt = Checkpoint::default();
    for info in &file.tensors {
        let Some(name) = hf_name(&info.name) else {
            tracing::warn!(tensor = %info.name, file = %file.path.display(), "GGUF tensor not used");
            continue;
        };
        let mut t = file.read(info)?;
        if cfg.architecture == Architecture::Llama {
            if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
                t = unpermute_qk(&t, cfg.num_heads);
            } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
                t = unpermute_qk(&t, cfg.num_kv_heads);
            }
        }
        ckpt.insert(name, t, &file.path);
    }
    Ok(ckpt)
}

impl<B: Backend> Policy<B> {
    /// Loads a policy from an HF directory or a GGUF file.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        match source_format(path)? {
            SourceFormat::HfDir => {
                let cfg = ModelConfig::from_file(&path.join("config.json"))?;
                let ckpt = read_hf_weights(path)?;
                let model = Llama::from_checkpoint(&cfg, &ckpt, path, device)?;
                Ok(Self { model, tokenizer: Tokenizer::from_dir(path)? })
            }
            SourceFormat::Gguf => {
                let file = GgufFile::open(path)?;
                let cfg = gguf_config(&file)?;
                let ckpt = gguf_checkpoint(&file, &cfg)?;
                let model = Llama::from_checkpoint(&cfg, &ckpt, path, device)?;
                Ok(Self { model, tokenizer: Tokenizer::from_gguf(&file)? })
            }
        }
    }

    /// Token ids at which generation stops by default: the config's EOS ids and the tokenizer's.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut ids = self.model.config().eos_token_ids.clone();
        ids.extend(self.tokenizer.eos_token_id());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Saves an HF directory transformers loads unchanged: `model.safetensors` (f32, HF names),
    /// `config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model(&self.model, dir)?;
        self.tokenizer.save(dir)
    }
}

/// Saves the weights and config of a model into `dir` (created if needed).
pub fn save_model<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(&dir.join("model.safetensors"), &model.to_host_tensors())?;
    let cfg = model.config();
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::json(&path, e))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    };
    let hf = serde_json::to_value(cfg.to_hf()).map_err(|e| ModelError::json(dir.join("config.json"), e))?;
    write_json("config.json", &hf)?;
    write_json(
        "generation_config.json",
        &serde_json::json!({"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_ids}),
    )
}

/// Describes a model without building it on a device.
pub fn model_info(path: &Path) -> Result<ModelInfo> {
    let mut dtypes = std::collections::BTreeMap::<String, usize>::new();
    let (format, cfg, tokenizer) = match source_format(path)? {
        SourceFormat::HfDir => {
            let cfg = ModelConfig::from_file(&path.join("config.json"))?;
            for entry in std::fs::read_dir(path).map_err(|e| ModelError::io(path, e))? {
                let file = entry.map_err(|e| ModelError::io(path, e))?.path();
                if file.extension().is_some_and(|e| e == "safetensors") {
                    for dtype in safetensors_dtypes(&file)? {
                        *dtypes.entry(dtype).or_default() += 1;
                    }
                }
            }
            ("hf", cfg, Tokenizer::from_dir(path)?)
        }
        SourceFormat::Gguf => {
            let file = GgufFile::open(path)?;
            for t in &file.tensors {
                *dtypes.entry(format!("{:?}", t.ggml_type)).or_default() += 1;
            }
            ("gguf", gguf_config(&file)?, Tokenizer::from_gguf(&file)?)
        }
    };
    Ok(ModelInfo {
        path: path.to_path_buf(),
        format,
        parameters: cfg.num_params(),
        config: cfg,
        dtypes: dtypes.into_iter().collect(),
        tokenizer_vocab: tokenizer.vocab_size(),
        chat_template: tokenizer.chat_template().is_some(),
    })
}
