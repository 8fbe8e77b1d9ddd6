//! What a subscriber holds, and the placement of every fetched chunk byte into it.
//!
//! A [`Destination`] names the rollout side's layout: the whole model (`Replicated`), or one rank
//! of Megatron-style tensor parallelism — column-parallel matrices (`q/k/v/gate/up` projections,
//! embeddings, the LM head) split along dim 0, row-parallel ones (`o_proj`, `down_proj`) along
//! dim 1, vectors replicated — optionally with `q/k/v` and `gate/up` fused into `qkv_proj` and
//! `gate_up_proj` as vLLM holds them. [`Destination::place`] runs the pure planner for every
//! tensor and turns its copies into per-chunk placements, so a chunk can be written into the
//! staging buffers as soon as it arrives and is verified.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};
use crate::layout::Layout;
use crate::manifest::Manifest;
use crate::planner::{plan_fused, plan_tensor, Copy, Fused};

/// The layout a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// `Some((parts, index))`: tensor-parallel rank `index` of `parts`; `None`: every tensor whole.
    pub tensor_parallel: Option<(usize, usize)>,
    /// Fuse `q/k/v` into `qkv_proj` and `gate/up` into `gate_up_proj`.
    pub fuse: bool,
}

impl Destination {
    /// Every tensor whole, unfused.
    pub const REPLICATED: Destination = Destination { tensor_parallel: None, fuse: false };

    /// Tensor-parallel rank `index` of `parts`, unfused.
    pub fn tensor_parallel(parts: usize, index: usize) -> Destination {
        Destination { tensor_parallel: Some((parts, index)), fuse: false }
    }

    /// The layout this destination keeps of tensor `name` with `shape`.
    pub fn layout_of(&self, name: &str, shape: &[usize]) -> Layout {
        match self.tensor_parallel {
            Some((parts, index)) if shape.len() == 2 => {
                let row_parallel = name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight");
                Layout::Split { dim: usize::from(row_parallel), parts, index }
            }
            _ => Layout::Replicated,
        }
    }

    /// Plans `manifest` for this destination: the staged tensors and where each chunk's bytes go.
    pub fn place(&self, manifest: &Manifest) -> Result<Placement> {
        let elem = manifest.transfer_dtype.size();
        let index: BTreeMap<&str, usize> =
            manifest.tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let mut placement = Placement { tensors: Vec::new(), by_chunk: BTreeMap::new() };
        let mut fused_away = vec![false; manifest.tensors.len()];
        if self.fuse {
            for fused in fusions(&index) {
                let parts: Vec<usize> = fused.parts.iter().map(|p| index[p.as_str()]).collect();
                let dest = self.layout_of(&fused.parts[0], &manifest.tensors[parts[0]].shape);
                let shapes: Vec<(Vec<usize>, Vec<Layout>)> = parts
                    .iter()
                    .map(|&t| (manifest.tensors[t].shape.clone(), manifest.tensors[t].layouts.clone()))
                    .collect();
                let (per_part, bytes) = plan_fused(&fused, &shapes, elem, dest)?;
                let mut shape = local_shape(&shapes[0].0, dest);
                shape[0] = parts.iter().map(|&t| local_shape(&manifest.tensors[t].shape, dest)[0]).sum();
                let slot = placement.tensors.len();
                placement.tensors.push(StagedTensor { name: fused.name.clone(), shape, layout: dest, bytes });
                for (&t, pc) in parts.iter().zip(&per_part) {
                    fused_away[t] = true;
                    placement.add(manifest, t, slot, &pc.copies);
                }
            }
        }
        for (t, entry) in manifest.tensors.iter().enumerate() {
            if fused_away[t] {
                continue;
            }
            let dest = self.layout_of(&entry.name, &entry.shape);
            let copies = plan_tensor(&entry.name, &entry.shape, elem, &entry.layouts, dest)?;
            let bytes = dest.local_len(&entry.shape) * elem;
            let slot = placement.tensors.len();
            placement.tensors.push(StagedTensor {
                name: entry.name.clone(),
                shape: local_shape(&entry.shape, dest),
                layout: dest,
                bytes,
            });
            placement.add(manifest, t, slot, &copies);
        }
        // Every byte of every staged tensor must be written by some chunk.
        let mut filled = vec![0u64; placement.tensors.len()];
        for places in placement.by_chunk.values() {
            for p in places {
                filled[p.tensor] += p.len;
            }
        }
        for (t, f) in placement.tensors.iter().zip(filled) {
            if f != t.bytes {
                return Err(SyncError::Manifest(format!(
                    "version {}: the chunk table fills {f} of the {} bytes of `{}`",
                    manifest.version, t.bytes, t.name
                )));
            }
        }
        Ok(placement)
    }
}

/// The fusions present in a checkpoint: every layer's `q/k/v` and `gate/up` projections.
fn fusions(index: &BTreeMap<&str, usize>) -> Vec<Fused> {
    let groups: [(&str, &[&str]); 2] =
        [("qkv_proj", &["q_proj", "k_proj", "v_proj"]), ("gate_up_proj", &["gate_proj", "up_proj"])];
    let mut out = Vec::new();
    for name in index.keys() {
        for (fused, parts) in groups {
            let first = format!("{}.weight", parts[0]);
            let Some(prefix) = name.strip_suffix(first.as_str()) else { continue };
            let names: Vec<String> = parts.iter().map(|p| format!("{prefix}{p}.weight")).collect();
            if names.iter().all(|n| index.contains_key(n.as_str())) {
                out.push(Fused { name: format!("{prefix}{fused}.weight"), parts: names });
            }
        }
    }
    out
}

/// The shape a holder with `layout` keeps of a tensor of `shape`.
pub fn local_shape(shape: &[usize], layout: Layout) -> Vec<usize> {
    match layout {
        Layout::Replicated => shape.to_vec(),
        Layout::Split { dim, parts, .. } => {
            let mut s = shape.to_vec();
            s[dim] /= parts;
            s
        }
        Layout::Flat { .. } => vec![layout.local_len(shape) as usize],
    }
}

/// A staged tensor of a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedTensor {
    /// Its name (a fused name for fused tensors).
    pub name: String,
    /// Its local shape.
    pub shape: Vec<usize>,
    /// The part of the full tensor it is (for a fused tensor, the part of each component).
    pub layout: Layout,
    /// Bytes in the transfer dtype.
    pub bytes: u64,
}

/// Bytes `chunk_offset..chunk_offset + len` of a chunk go to byte `offset` of staged tensor `tensor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Offset in the chunk.
    pub chunk_offset: u64,
    /// Index into [`Placement::tensors`].
    pub tensor: usize,
    /// Offset in that tensor's buffer.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A destination's plan for one manifest.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The tensors to stage.
    pub tensors: Vec<StagedTensor>,
    /// For every chunk needed (index into the manifest's table), where its bytes go.
    pub by_chunk: BTreeMap<usize, Vec<Place>>,
}

impl Placement {
    fn add(&mut self, manifest: &Manifest, tensor: usize, slot: usize, copies: &[Copy]) {
        for c in copies {
            let range = manifest.covering(tensor, c.source, c.src, c.len);
            for (i, chunk) in manifest.chunks[range.clone()].iter().enumerate() {
                let lo = c.src.max(chunk.start);
                let hi = (c.src + c.len).min(chunk.start + chunk.len);
                self.by_chunk.entry(range.start + i).or_default().push(Place {
                    chunk_offset: lo - chunk.start,
                    tensor: slot,
                    offset: c.dst + (lo - c.src),
                    len: hi - lo,
                });
            }
        }
    }

    /// Writes chunk `index`'s verified bytes into `buffers` (one per staged tensor).
    pub fn write(&self, index: usize, bytes: &[u8], buffers: &[Mutex<Vec<u8>>]) {
        self.write_parts(index, &[bytes], buffers);
    }

    /// [`Placement::write`] for a chunk received as fragments (`parts`, concatenated). Each
    /// tensor's buffer is locked while its bytes are written, so chunks of different tensors are
    /// written concurrently.
    pub fn write_parts(&self, index: usize, parts: &[&[u8]], buffers: &[Mutex<Vec<u8>>]) {
        for p in self.by_chunk.get(&index).map(Vec::as_slice).unwrap_or_default() {
            let mut buffer = buffers[p.tensor].lock().unwrap_or_else(|e| e.into_inner());
            let (mut from, mut to, mut left) = (p.chunk_offset as usize, p.offset as usize, p.len as usize);
            let mut base = 0;
            for part in parts {
                if left == 0 {
                    break;
                }
                if from < base + part.len() {
                    let s = from - base;
                    let n = left.min(part.len() - s);
                    buffer[to..to + n].copy_from_slice(&part[s..s + n]);
                    (from, to, left) = (from + n, to + n, left - n);
                }
                base += part.len();
            }
        }
    }
}
