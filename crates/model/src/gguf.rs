//! GGUF reader: metadata, tensor directory, and dequantisation of F32, F16, BF16, Q8_0, Q4_0 and Q4_1
//! tensors to f32.
//!
//! GGUF stores dimensions innermost-first (`ne[0]` is the row length), so a `[576, 49152]` GGUF
//! tensor is the `[49152, 576]` PyTorch tensor; we reverse the dims on read. llama.cpp's converter
//! permutes the rows of Llama's q/k projections for its own RoPE kernel; [`unpermute_qk`] restores
//! the Hugging Face order (Qwen2 files are written unpermuted).
//!
//! Every read is bounds-checked: a truncated or corrupt file is an error naming the file and what
//! was being read, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::host::HostTensor;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::UInt(v) => Some(*v),
            Self::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::UInt(v) => Some(*v as f64),
            Self::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: f16 scale, 32 x i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 32 x 4-bit (offset 8).
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 32 x 4-bit.
    Q4_1,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// (elements per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q8_0 => (32, 34),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in PyTorch order (outermost first).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

/// A parsed GGUF file (metadata and directory; data read on demand).
#[derive(Debug)]
pub struct GgufFile {
    /// The file.
    pub path: PathBuf,
    /// Metadata key/values.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor directory, in file order.
    pub tensors: Vec<GgufTensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            ModelError::gguf(self.path, format!("truncated file: reading {what} at byte {}", self.pos))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        // Any length longer than the file is corrupt; refusing it early also bounds allocations.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or_else(|| ModelError::gguf(self.path, format!("{what}: length {n} exceeds the file size")))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| ModelError::gguf(self.path, format!("{what}: not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::UInt(self.take(1, key)?[0] as u64),
            1 => GgufValue::Int(self.take(1, key)?[0] as i8 as i64),
            2 => {
                let b = self.take(2, key)?;
                GgufValue::UInt(u16::from_le_bytes([b[0], b[1]]) as u64)
            }
            3 => {
                let b = self.take(2, key)?;
                GgufValue::Int(i16::from_le_bytes([b[0], b[1]]) as i64)
            }
            4 => GgufValue::UInt(self.u32(key)? as u64),
            5 => GgufValue::Int(self.u32(key)? as i32 as i64),
            6 => GgufValue::Float(f32::from_bits(self.u32(key)?) as f64),
            7 => GgufValue::Bool(self.take(1, key)?[0] != 0),
            8 => GgufValue::Str(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(ModelError::gguf(self.path, format!("{key}: arrays nested too deep")));
                }
                let item_ty = self.u32(key)?;
                let n = self.len(key)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::UInt(self.u64(key)?),
            11 => GgufValue::Int(self.u64(key)? as i64),
            12 => GgufValue::Float(f64::from_bits(self.u64(key)?)),
            other => return Err(ModelError::gguf(self.path, format!("{key}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, bytes)
    }

    /// Parses GGUF bytes; `path` is only used in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut r = Reader { buf: &bytes, pos: 0, path };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(ModelError::gguf(path, format!("bad magic {magic:?}, expected \"GGUF\"")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::gguf(path, format!("version {version} not supported (2 or 3)")));
        }
        let n_tensors = r.len("tensor count")?;
        let n_kv = r.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(ModelError::gguf(path, format!("tensor {name:?}: {n_dims} dimensions")));
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(r.len(&name)?);
            }
            shape.reverse();
            let type_id = r.u32(&name)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                ModelError::gguf(
                    path,
                    format!("tensor {name:?}: ggml type {type_id} not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)"),
                )
            })?;
            let offset = r.u64(&name)?;
            tensors.push(GgufTensorInfo { name, shape, ggml_type, offset });
        }
        let align = metadata.get("general.alignment").and_then(|v| v.as_u64()).unwrap_or(32).max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let file = Self { path: path.to_path_buf(), metadata, tensors, bytes, data_start };
        // Check every tensor's extent now so later reads cannot run off the end.
        for t in &file.tensors {
            file.extent(t)?;
        }
        Ok(file)
    }

    fn extent(&self, t: &GgufTensorInfo) -> Result<std::ops::Range<usize>> {
        let n: usize = t.shape.iter().product();
        let (per_block, block_bytes) = t.ggml_type.block();
        if !n.is_multiple_of(per_block) {
            return Err(ModelError::gguf(
                &self.path,
                format!("tensor {:?}: {n} elements is not a multiple of the {:?} block", t.name, t.ggml_type),
            ));
        }
        let len = n / per_block * block_bytes;
        let start = usize::try_from(t.offset).ok().and_then(|o| o.checked_add(self.data_start));
        match start.and_then(|s| s.checked_add(len).map(|e| s..e)) {
            Some(r) if r.end <= self.bytes.len() => Ok(r),
            _ => Err(ModelError::gguf(
                &self.path,
                format!("truncated file: tensor {:?} needs bytes past the end of the file", t.name),
            )),
        }
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Dequantises one tensor to f32.
    pub fn read(&self, t: &GgufTensorInfo) -> Result<HostTensor> {
        let range = self.extent(t)?;
        let data = dequantize(t.ggml_type, &self.bytes[range]);
        Ok(HostTensor { shape: t.shape.clone(), data })
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises raw tensor bytes of a type to f32 (the byte length must be a whole number of blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (per_block, block_bytes) = ty.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * per_block);
    match ty {
        GgmlType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(block_bytes) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes.chunks_exact(block_bytes) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes.chunks_exact(block_bytes) {
                let d = f16_at(blk, 0);
                let m = f16_at(blk, 2);
                let qs = &blk[4..];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// Undoes llama.cpp's q/k row permutation: GGUF rows `[head, 2, half, ...]` ordering back to the
/// Hugging Face `[head, half, 2, ...]`... i.e. the inverse of `convert_hf_to_gguf.py`'s `permute`.
pub fn unpermute_qk(t: &HostTensor, n_head: usize) -> HostTensor {
    // HF -> GGUF was: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols),
    // i.e. GGUF row (h, i, j) = HF row (h, j, i) with i < half, j < 2. Invert it.
    let rows = t.shape[0];
    let cols: usize = t.shape[1..].iter().product();
    let half = rows / n_head / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * 2 * half + i * 2 + j;
                let hf_row = h * 2 * half + j * half + i;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&t.data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    HostTensor { shape: t.shape.clone(), data: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_magic_is_an_error() {
        let err = GgufFile::parse(Path::new("x.gguf"), b"GGML\x03\0\0\0".to_vec()).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn truncated_header_is_an_error() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        let err = GgufFile::parse(Path::new("x.gguf"), b).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let err = GgufFile::parse(Path::new("x.gguf"), b).unwrap_err();
        assert!(err.to_string().contains("exceeds the file size"), "{err}");
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // Two heads of four rows: HF rows 0..8, one column each.
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        // convert_hf_to_gguf permute for n_head=2: reshape(2,2,2,1).swapaxes(1,2): per head rows [0,2,1,3].
        let gguf = HostTensor { shape: vec![8, 1], data: vec![0., 2., 1., 3., 4., 6., 5., 7.] };
        assert_eq!(unpermute_qk(&gguf, 2).data, hf);
    }
}
