//! Checkpoint tensors on the host: reading Hugging Face safetensors (single file or sharded with an
//! index), writing them back, and building a [`Llama`] from named tensors.
//!
//! Every tensor is widened to f32 on load (F32, F16 and BF16 files are read); the model computes in
//! f32. Saving writes f32, so save -> load is bit-exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::host::HostTensor;
use crate::llama::{DecoderLayer, Llama};

/// Named tensors of a checkpoint, with the file each came from (for error messages).
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// Tensors under their checkpoint names.
    pub tensors: BTreeMap<String, HostTensor>,
    /// The file each tensor was read from.
    pub origin: BTreeMap<String, PathBuf>,
}

impl Checkpoint {
    /// Adds a tensor read from `file`.
    pub fn insert(&mut self, name: String, tensor: HostTensor, file: &Path) {
        self.origin.insert(name.clone(), file.to_path_buf());
        self.tensors.insert(name, tensor);
    }
}

/// Reads every tensor of one `.safetensors` file.
pub fn read_safetensors(path: &Path, into: &mut Checkpoint) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::malformed(path, e.to_string()))?;
    for (name, view) in st.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => {
                return Err(ModelError::malformed(
                    path,
                    format!("tensor {name:?} has dtype {other:?}; only F32, F16 and BF16 are read"),
                ))
            }
        };
        into.insert(name.to_string(), HostTensor { shape: view.shape().to_vec(), data: values }, path);
    }
    Ok(())
}

/// The storage dtype of every tensor in a `.safetensors` file, read from its header alone.
pub fn safetensors_dtypes(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| ModelError::malformed(path, format!("header length: {e}")))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len > size.saturating_sub(8) || len > 100_000_000 {
        return Err(ModelError::malformed(path, format!("header length {len} does not fit the file")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| ModelError::malformed(path, format!("header: {e}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| ModelError::malformed(path, format!("header: {e}")))?;
    let entries = header.as_object().ok_or_else(|| ModelError::malformed(path, "header is not an object"))?;
    Ok(entries
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .map(|(_, info)| info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?").to_string())
        .collect())
}

/// Reads the weights of a Hugging Face model directory: `model.safetensors`, or the shards listed
/// by `model.safetensors.index.json`.
pub fn read_hf_weights(dir: &Path) -> Result<Checkpoint> {
    let mut ckpt = Checkpoint::default();
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::malformed(&index, "no \"weight_map\" object"))?;
        let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        for file in files {
            read_safetensors(&dir.join(file), &mut ckpt)?;
        }
        for name in map.keys() {
            if !ckpt.tensors.contains_key(name) {
                return Err(ModelError::MissingTensor { path: index.clone(), name: name.clone() });
            }
        }
    } else {
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(ModelError::malformed(
                dir,
                "neither model.safetensors nor model.safetensors.index.json found",
            ));
        }
        read_safetensors(&single, &mut ckpt)?;
    }
    Ok(ckpt)
}

/// Writes named f32 tensors to one `.safetensors` file.
pub fn write_safetensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::malformed(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path)
        .map_err(|e| ModelError::malformed(path, e.to_string()))
}

impl<B: Backend> Llama<B> {
    /// Builds the model from named tensors; every tensor the config needs must be present with the
    /// shape the config implies. `origin` names the checkpoint in errors.
    pub fn from_checkpoint(
        cfg: &ModelConfig,
        ckpt: &Checkpoint,
        origin: &Path,
        device: &B::Device,
    ) -> Result<Self> {
        let expected: BTreeMap<String, Vec<usize>> = cfg.tensor_shapes().into_iter().collect();
        let get = |name: &str| -> Result<&HostTensor> {
            let t = ckpt
                .tensors
                .get(name)
                .ok_or_else(|| ModelError::MissingTensor { path: origin.into(), name: name.into() })?;
            let want = &expected[name];
            if &t.shape != want {
                let path = ckpt.origin.get(name).cloned().unwrap_or_else(|| origin.into());
                return Err(ModelError::ShapeMismatch {
                    path,
                    name: name.into(),
                    expected: want.clone(),
                    actual: t.shape.clone(),
                });
            }
            Ok(t)
        };
        let p2 = |name: &str| -> Result<Param<Tensor<B, 2>>> {
            let t = get(name)?;
            let data = TensorData::new(t.data.clone(), [t.shape[0], t.shape[1]]);
            Ok(Param::from_tensor(Tensor::from_data(data, device)))
        };
        let p1 = |name: &str| -> Result<Param<Tensor<B, 1>>> {
            let t = get(name)?;
            Ok(Param::from_tensor(Tensor::from_data(TensorData::new(t.data.clone(), [t.shape[0]]), device)))
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let bias = |n: &str| -> Result<Option<Param<Tensor<B, 1>>>> {
                if cfg.qkv_bias {
                    p1(&format!("{p}.self_attn.{n}_proj.bias")).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: p1(&format!("{p}.input_layernorm.weight"))?,
                q_proj: p2(&format!("{p}.self_attn.q_proj.weight"))?,
                k_proj: p2(&format!("{p}.self_attn.k_proj.weight"))?,
                v_proj: p2(&format!("{p}.self_attn.v_proj.weight"))?,
                q_bias: bias("q")?,
                k_bias: bias("k")?,
                v_bias: bias("v")?,
                o_proj: p2(&format!("{p}.self_attn.o_proj.weight"))?,
                post_attention_layernorm: p1(&format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: p2(&format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: p2(&format!("{p}.mlp.up_proj.weight"))?,
                down_proj: p2(&format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        for name in ckpt.tensors.keys() {
            if !(expected.contains_key(name) || cfg.tie_word_embeddings && name == "lm_head.weight") {
                tracing::warn!(tensor = %name, "checkpoint tensor not used by the model");
            }
        }
        Ok(Self {
            embed_tokens: p2("model.embed_tokens.weight")?,
            layers,
            norm: p1("model.norm.weight")?,
            lm_head: if cfg.tie_word_embeddings { None } else { Some(p2("lm_head.weight")?) },
            config: cfg.clone(),
        })
    }

    /// A model with random weights (normal, std 0.02; norms at 1), for tests and benchmarks.
    pub fn random(cfg: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut ckpt = Checkpoint::default();
        for (name, shape) in cfg.tensor_shapes() {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
                (0..n).map(|_| 1.0 + 0.1 * (rng.random::<f32>() - 0.5)).collect()
            } else {
                // Sum of uniforms: close enough to a normal for initialisation, no extra crate.
                (0..n)
                    .map(|_| 0.02 * ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 3f32.sqrt())
                    .collect()
            };
            ckpt.insert(name, HostTensor { shape, data }, Path::new("<random>"));
        }
        match Self::from_checkpoint(cfg, &ckpt, Path::new("<random>"), device) {
            Ok(m) => m,
            Err(e) => unreachable!("random tensors follow the config's own shapes: {e}"),
        }
    }

    /// Every tensor on the host under its checkpoint name, in its checkpoint shape.
    pub fn to_host_tensors(&self) -> Vec<(String, HostTensor)> {
        self.named_tensors().into_iter().map(|(name, t)| (name, t.to_host())).collect()
    }
}
