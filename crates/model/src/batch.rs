//! How a batch is laid out for one forward call: positions, rotary tables, attention mask.
//!
//! Two layouts share one [`ForwardCtx`]:
//! - the sampler's: one sequence per row, left-padded (`[left padding | prompt | new tokens]`),
//!   with a key-padding mask ([`forward_ctx`]), so decoding appends one column to every row;
//! - the scorer's: whole sequences packed into rows as wide as the longest ([`pack`]), each with
//!   its own positions from 0 and a block-diagonal causal mask ([`packed_ctx`]), so a ragged batch
//!   computes its real tokens and almost no padding.
//!
//! In both, a query sees a key iff the key belongs to its sequence and is not after it; every
//! query also sees itself, so a padding column never takes a softmax over nothing. Masked keys
//! contribute exactly zero, so a sequence computes what it would compute alone.

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
    debug_assert_eq!(key_valid.len(), batch * total);
    ctx(cfg, batch, seq, total, positions, device, |b, i, j| {
        let q = past + i;
        j != q && (j > q || !key_valid[b * total + j])
    })
}

/// Sequences packed into rows: each sequence whole in one row, at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// The row width: the longest sequence.
    pub width: usize,
    /// Rows used.
    pub rows: usize,
    /// `(row, offset)` of each sequence, in input order.
    pub slots: Vec<(usize, usize)>,
}

impl Packing {
    /// Positions a forward over the packed rows computes (`rows * width`).
    pub fn positions(&self) -> usize {
        self.rows * self.width
    }
}

/// Packs sequences of lengths `lens` into rows as wide as the longest: longest first, each into
/// the first row with room (first-fit decreasing; ties in input order, so the layout is a function
/// of the lengths).
pub fn pack(lens: &[usize]) -> Packing {
    let width = lens.iter().copied().max().unwrap_or(0).max(1);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut used: Vec<usize> = Vec::new();
    let mut slots = vec![(0, 0); lens.len()];
    for i in order {
        let row = match used.iter().position(|&u| u + lens[i] <= width) {
            Some(r) => r,
            None => {
                used.push(0);
                used.len() - 1
            }
        };
        slots[i] = (row, used[row]);
        used[row] += lens[i];
    }
    Packing { width, rows: used.len(), slots }
}

/// Builds the [`ForwardCtx`] of a packed batch without a cache: `segment` names, for each of the
/// `batch * seq` columns, the sequence it holds (`None` for padding), and `positions` its rotary
/// position within that sequence.
pub fn packed_ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    positions: &[usize],
    segment: &[Option<u32>],
    device: &B::Device,
) -> ForwardCtx<B> {
    debug_assert_eq!(segment.len(), batch * seq);
    ctx(cfg, batch, seq, seq, positions, device, |b, i, j| {
        let s = &segment[b * seq..(b + 1) * seq];
        j != i && (j > i || s[i].is_none() || s[j] != s[i])
    })
}

/// The rotary tables of `positions` and the mask `masked(row, query, key)` over `total` keys, in
/// the layout attention consumes.
fn ctx<B: Backend>(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    total: usize,
    positions: &[usize],
    device: &B::Device,
    masked: impl Fn(usize, usize, usize) -> bool,
) -> ForwardCtx<B> {
    debug_assert_eq!(positions.len(), batch * seq);
    let (cos, sin) = rope_tables(cfg, positions);
    let hd = cfg.head_dim;
    let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, [batch, seq, 1, hd]), device);
    let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, [batch, seq, 1, hd]), device);
    // Built once per forward in the layout attention consumes, so no layer reshapes or copies it.
    let (kv, rep) = (cfg.num_kv_heads, cfg.num_heads / cfg.num_kv_heads);
    let mut mask = Vec::with_capacity(batch * kv * rep * seq * total);
    let mut tile = Vec::with_capacity(seq * total);
    for b in 0..batch {
        tile.clear();
        for i in 0..seq {
            tile.extend((0..total).map(|j| masked(b, i, j)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_puts_the_longest_first_and_each_into_the_first_row_with_room() {
        let p = pack(&[5, 3, 2, 5, 1]);
        assert_eq!(p.width, 5);
        // Rows: [5], [5], [3, 2], [1].
        assert_eq!(p.slots, vec![(0, 0), (2, 0), (2, 3), (1, 0), (3, 0)]);
        assert_eq!((p.rows, p.positions()), (4, 20));
        // No two sequences overlap and each fits in its row.
        let lens = [7, 1, 4, 3, 3, 6, 2, 2, 5];
        let p = pack(&lens);
        let mut cells = vec![false; p.positions()];
        for (&(row, offset), &len) in p.slots.iter().zip(&lens) {
            assert!(offset + len <= p.width);
            for k in 0..len {
                let cell = &mut cells[row * p.width + offset + k];
                assert!(!*cell, "overlap at row {row}");
                *cell = true;
            }
        }
        assert_eq!(p.rows, 5, "33 tokens in rows of 7");
    }
}
