//! Key/value cache for incremental decoding.

use burn::prelude::*;

/// Keys and values of every layer for the tokens already decoded, `[batch, kv_heads, len, head_dim]`.
///
/// Rows can be dropped when their sequences finish ([`KvCache::retain_rows`]), so a batch that
/// shrinks stops paying for the rows it no longer decodes.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// One slot per layer; `None` until the first forward fills it.
    pub(crate) layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Number of key positions held (including padding columns).
    pub(crate) len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], len: 0 }
    }

    /// Key positions held so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the given batch rows, in the given order (a row named twice is copied).
    pub fn retain_rows(&mut self, rows: &[usize], device: &B::Device) {
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
    }
}
