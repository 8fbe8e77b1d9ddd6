//! The manifest of one published version (`docs/design.md`, "Weight sync"): every tensor with its
//! checkpoint name, dtype, shape and the source holders' layouts; the chunk table (holder byte
//! ranges with xxh3 checksums) in the transfer dtype; and a digest over all of it, announced with
//! the version.

use serde::{Deserialize, Serialize};
use sluice_core::PolicyId;

use crate::error::{Result, SyncError};
use crate::layout::Layout;

/// Element types on the wire and in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// bfloat16 (the default transfer dtype: half the bytes, the range of f32).
    Bf16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }

    /// `values` in this dtype, little-endian (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        }
    }

    /// Little-endian bytes of this dtype back to f32.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => {
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            DType::Bf16 => {
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            DType::F16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
        }
    }
}

/// One tensor of the policy as the publisher holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// Name as in the HF checkpoint.
    pub name: String,
    /// The checkpoint's dtype.
    pub dtype: DType,
    /// Full shape.
    pub shape: Vec<usize>,
    /// Layout of each source holder (learner rank); holder `i` serves `layouts[i]`.
    pub layouts: Vec<Layout>,
}

/// A checksummed byte range of one holder's local buffer of one tensor, in the transfer dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Index into [`Manifest::tensors`].
    pub tensor: u32,
    /// Source holder.
    pub holder: u32,
    /// Byte offset in the holder's local buffer.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// xxh3-64 of the bytes.
    pub xxh3: u64,
}

/// Everything a subscriber needs to plan, fetch and verify one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The learner start that published it ([`PolicyId`]; 0 in manifests from before epochs).
    #[serde(default)]
    pub epoch: u64,
    /// The policy version.
    pub version: u64,
    /// Element type of every chunk.
    pub transfer_dtype: DType,
    /// The tensors.
    pub tensors: Vec<TensorEntry>,
    /// The chunk table, sorted by (tensor, holder, start).
    pub chunks: Vec<Chunk>,
    /// xxh3-64 over the canonical JSON of every other field.
    pub digest: u64,
}

/// One holder's local buffer of one tensor, already in the transfer dtype.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// Index into the tensor list.
    pub tensor: usize,
    /// Source holder.
    pub holder: usize,
    /// The bytes.
    pub bytes: &'a [u8],
}

impl Manifest {
    /// Builds the manifest of `pieces`, cut into chunks of at most `chunk_bytes`.
    pub fn build(
        id: PolicyId,
        transfer_dtype: DType,
        tensors: Vec<TensorEntry>,
        pieces: &[Piece<'_>],
        chunk_bytes: u64,
    ) -> Result<Manifest> {
        let chunk_bytes = chunk_bytes.max(transfer_dtype.size());
        let mut chunks = Vec::new();
        for p in pieces {
            let t = tensors.get(p.tensor).ok_or_else(|| {
                SyncError::Manifest(format!("piece of tensor {} of {}", p.tensor, tensors.len()))
            })?;
            let layout = t.layouts.get(p.holder).ok_or_else(|| {
                SyncError::Manifest(format!("tensor `{}` has no holder {}", t.name, p.holder))
            })?;
            layout.check(&t.name, &t.shape)?;
            let want = layout.local_len(&t.shape) * transfer_dtype.size();
            if p.bytes.len() as u64 != want {
                return Err(SyncError::Manifest(format!(
                    "tensor `{}` holder {}: {} bytes given, its layout {layout:?} holds {want}",
                    t.name,
                    p.holder,
                    p.bytes.len()
                )));
            }
            let mut start = 0u64;
            while start < want {
                let len = chunk_bytes.min(want - start);
                let bytes = &p.bytes[start as usize..(start + len) as usize];
                chunks.push(Chunk {
                    tensor: p.tensor as u32,
                    holder: p.holder as u32,
                    start,
                    len,
                    xxh3: xxhash_rust::xxh3::xxh3_64(bytes),
                });
                start += len;
            }
        }
        chunks.sort_by_key(|c| (c.tensor, c.holder, c.start));
        let mut m =
            Manifest { epoch: id.epoch, version: id.version, transfer_dtype, tensors, chunks, digest: 0 };
        m.digest = m.compute_digest();
        Ok(m)
    }

    fn compute_digest(&self) -> u64 {
        let body = (self.epoch, self.version, self.transfer_dtype, &self.tensors, &self.chunks);
        // Serializing plain data to a Vec cannot fail.
        xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The version it holds.
    pub fn id(&self) -> PolicyId {
        PolicyId::new(self.epoch, self.version)
    }

    /// Checks the digest (a manifest fetched whole and unaltered).
    pub fn verify(&self) -> Result<()> {
        let d = self.compute_digest();
        if d != self.digest {
            return Err(SyncError::Manifest(format!(
                "manifest of version {} has digest {:016x} but its contents hash to {d:016x}",
                self.version, self.digest
            )));
        }
        Ok(())
    }

    /// The chunks of `(tensor, holder)` that overlap bytes `start..start + len`.
    pub fn chunks_covering(&self, tensor: usize, holder: usize, start: u64, len: u64) -> &[Chunk] {
        &self.chunks[self.covering(tensor, holder, start, len)]
    }

    /// Indices into [`Manifest::chunks`] of the chunks of `(tensor, holder)` that overlap bytes
    /// `start..start + len`.
    pub fn covering(&self, tensor: usize, holder: usize, start: u64, len: u64) -> std::ops::Range<usize> {
        let key = (tensor as u32, holder as u32);
        let lo = self.chunks.partition_point(|c| {
            (c.tensor, c.holder) < key || ((c.tensor, c.holder) == key && c.start + c.len <= start)
        });
        let hi = self.chunks.partition_point(|c| {
            (c.tensor, c.holder) < key || ((c.tensor, c.holder) == key && c.start < start + len)
        });
        lo..hi.max(lo)
    }

    /// Whether `bytes` are chunk `c` intact.
    pub fn check_chunk(c: &Chunk, bytes: &[u8]) -> bool {
        Manifest::check_chunk_parts(c, &[bytes])
    }

    /// Whether `parts`, concatenated, are chunk `c` intact (a payload received in fragments).
    pub fn check_chunk_parts(c: &Chunk, parts: &[&[u8]]) -> bool {
        if parts.iter().map(|p| p.len() as u64).sum::<u64>() != c.len {
            return false;
        }
        if let [one] = parts {
            return xxhash_rust::xxh3::xxh3_64(one) == c.xxh3;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for p in parts {
            h.update(p);
        }
        h.digest() == c.xxh3
    }

    /// Total bytes of every chunk.
    pub fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }
}
