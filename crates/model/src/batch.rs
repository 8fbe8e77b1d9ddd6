//! How a ragged batch is laid out for one forward call: positions, rotary tables, attention mask.
//!
//! Both the sampler and the scorer lay a batch out as `[left padding | prompt | completion | right
//! padding]`, with each row's positions counted from its own first real token. A query sees a key
//! iff the key is not after it and the key is a real token; every query also sees itself, so a
//! padding row never takes a softmax over nothing. Masked keys contribute exactly zero, so a row
//! computes what it would compute alone.

use burn::prelude::*;

use crate::config::ModelConfig;
use crate::llama::ForwardCtx;

/// Builds the [`ForwardCtx`] for `seq` new columns per row after `past` cached columns.
///
/// `positions` holds `batch * seq` rotary positions; `key_valid` holds `batch * (past + seq)` flags
/// saying which key columns are real tokens.
pub fn forward_ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    past: usize,
    positions: &[usize],
    key_valid: &[bool],
    device: &B::Device,
) -> ForwardCtx<B> {
    let total = past + seq;
    debug_assert_eq!(positions.len(), batch * seq);
    debug_assert_eq!(key_valid.len(), batch * total);
    let (cos, sin) = rope_tables(cfg, positions);
    let hd = cfg.head_dim;
    let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, [batch, seq, 1, hd]), device);
    let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, [batch, seq, 1, hd]), device);
    // Built once per forward in the layout attention consumes, so no layer reshapes or copies it.
    let (kv, rep) = (cfg.num_kv_heads, cfg.num_heads / cfg.num_kv_heads);
    let mut mask = Vec::with_capacity(batch * kv * rep * seq * total);
    let mut tile = Vec::with_capacity(seq * total);
    for b in 0..batch {
        let valid = &key_valid[b * total..(b + 1) * total];
        tile.clear();
        for i in 0..seq {
            let q = past + i;
            tile.extend((0..total).map(|j| j != q && (j > q || !valid[j])));
        }
        for _ in 0..kv * rep {
            mask.extend_from_slice(&tile);
        }
    }
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(mask, [batch, kv, rep * seq, total]), device);
    ForwardCtx { cos, sin, mask }
}

/// HF rotary tables: `inv_freq[i] = theta^(-2i/d)` in f32 as transformers computes it, then
/// `cos(pos * inv_freq)` over both halves of the head and `sin` with its first half negated.
fn rope_tables(cfg: &ModelConfig, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let hd = cfg.head_dim;
    let half = hd / 2;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * hd);
    let mut sin = Vec::with_capacity(positions.len() * hd);
    for &p in positions {
        for sign in [-1.0f32, 1.0] {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(sign * angle.sin());
            }
        }
    }
    (cos, sin)
}
