//! Deterministic weights with real checkpoint names and shapes, for tests, benchmarks and for
//! measuring a deployment's sync speed without a trained model (`weights-peer`).

use crate::layout::Layout;
use crate::manifest::DType;
use crate::publisher::SourceTensor;

/// The shape of a Llama-family model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Key/value width (heads x head dim).
    pub kv_width: usize,
}

/// SmolLM2-135M: 134.5 M parameters, 269 MB in bf16.
pub const SMOLLM2_135M: ModelShape =
    ModelShape { vocab: 49152, hidden: 576, intermediate: 1536, layers: 30, kv_width: 192 };

/// A small model for tests (about 0.2 M parameters).
pub const TINY: ModelShape =
    ModelShape { vocab: 512, hidden: 64, intermediate: 128, layers: 2, kv_width: 32 };

/// Every tensor of `m` with its HF checkpoint name and shape (embeddings tied).
pub fn llama_tensors(m: ModelShape) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![m.vocab, m.hidden])];
    for l in 0..m.layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![m.hidden]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![m.hidden, m.hidden]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![m.kv_width, m.hidden]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![m.kv_width, m.hidden]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![m.hidden, m.hidden]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![m.hidden]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![m.intermediate, m.hidden]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![m.intermediate, m.hidden]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![m.hidden, m.intermediate]));
    }
    out.push(("model.norm.weight".to_string(), vec![m.hidden]));
    out
}

/// Matrices of 1024 x 4096 totalling about `bytes` in bf16 (at least one).
pub fn blob_tensors(bytes: u64) -> Vec<(String, Vec<usize>)> {
    let per = 1024 * 4096 * 2;
    (0..bytes.div_ceil(per).max(1)).map(|i| (format!("blob.{i}.weight"), vec![1024, 4096])).collect()
}

/// Element `i` of tensor `tensor` at `version`: a multiple of 1/64 in [-4, 4), exact in bf16.
pub fn value(version: u64, tensor: usize, i: u64) -> f32 {
    let mut z = version.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((tensor as u64) << 40) ^ i;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z % 512) as f32 - 256.0) / 64.0
}

/// The full values of tensor `tensor` (`numel` elements) at `version`.
pub fn values(version: u64, tensor: usize, numel: usize) -> Vec<f32> {
    (0..numel as u64).map(|i| value(version, tensor, i)).collect()
}

/// A snapshot of `tensors` at `version`, held by `holders` FSDP ranks (`Flat`) or, for 1, whole.
pub fn snapshot(version: u64, tensors: &[(String, Vec<usize>)], holders: usize) -> Vec<SourceTensor> {
    tensors
        .iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let full = values(version, t, shape.iter().product());
            if holders <= 1 {
                return SourceTensor::whole(name.clone(), shape.clone(), full);
            }
            let layouts: Vec<Layout> =
                (0..holders).map(|index| Layout::Flat { parts: holders, index }).collect();
            let pieces = layouts
                .iter()
                .map(|l| {
                    l.ranges(shape)
                        .iter()
                        .flat_map(|r| full[r.start as usize..(r.start + r.len) as usize].to_vec())
                        .collect()
                })
                .collect();
            SourceTensor { name: name.clone(), dtype: DType::F32, shape: shape.clone(), layouts, pieces }
        })
        .collect()
}
