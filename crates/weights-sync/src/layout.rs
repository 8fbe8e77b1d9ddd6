//! Shard layouts: which part of a full tensor one holder (a learner rank, a rollout worker) keeps.
//!
//! Every layout is described, for a tensor of a given shape, as the list of contiguous ranges of
//! the full tensor's row-major elements that the holder keeps, in the order it stores them: its
//! local buffer is those ranges concatenated. The planner needs nothing else, which is what keeps
//! it a pure function.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};

/// What part of a tensor a holder keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Layout {
    /// The whole tensor.
    Replicated,
    /// Tensor parallel: the tensor cut into `parts` equal slices along `dim`; this holder keeps
    /// slice `index` (row-major within the slice).
    Split {
        /// The dimension cut.
        dim: usize,
        /// Number of slices; must divide the dimension.
        parts: usize,
        /// Which slice.
        index: usize,
    },
    /// FSDP style: the flattened tensor cut into `parts` ranges of `ceil(numel / parts)` elements
    /// (the last ones shorter or empty); this holder keeps range `index`.
    Flat {
        /// Number of ranges.
        parts: usize,
        /// Which range.
        index: usize,
    },
}

/// A contiguous run of the full tensor's elements held by one holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First element, in the full tensor's row-major order.
    pub start: u64,
    /// Number of elements.
    pub len: u64,
    /// Where the run starts in the holder's local buffer, in elements.
    pub local: u64,
}

impl Layout {
    /// Checks the layout against a shape.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let bad = |reason: String| Err(SyncError::Layout { tensor: name.to_string(), reason });
        match *self {
            Layout::Replicated => Ok(()),
            Layout::Split { dim, parts, index } => {
                if dim >= shape.len() {
                    return bad(format!("split dim {dim} but the tensor has {} dims {shape:?}", shape.len()));
                }
                if parts == 0 || index >= parts {
                    return bad(format!("split part {index} of {parts}"));
                }
                if !shape[dim].is_multiple_of(parts) {
                    return bad(format!("dim {dim} of {shape:?} does not split into {parts} equal parts"));
                }
                Ok(())
            }
            Layout::Flat { parts, index } => {
                if parts == 0 || index >= parts {
                    return bad(format!("flat part {index} of {parts}"));
                }
                Ok(())
            }
        }
    }

    /// The same layout for another holder (`index`), e.g. every rank of a split.
    pub fn with_index(self, index: usize) -> Layout {
        match self {
            Layout::Replicated => Layout::Replicated,
            Layout::Split { dim, parts, .. } => Layout::Split { dim, parts, index },
            Layout::Flat { parts, .. } => Layout::Flat { parts, index },
        }
    }

    /// Number of holders that together make the whole tensor (1 for `Replicated`).
    pub fn parts(&self) -> usize {
        match *self {
            Layout::Replicated => 1,
            Layout::Split { parts, .. } | Layout::Flat { parts, .. } => parts,
        }
    }

    /// Elements this holder keeps.
    pub fn local_len(&self, shape: &[usize]) -> u64 {
        self.ranges(shape).iter().map(|r| r.len).sum()
    }

    /// The runs this holder keeps, in local order (which is also full-tensor order). The layout
    /// must have passed [`Layout::check`] for `shape`.
    pub fn ranges(&self, shape: &[usize]) -> Vec<Range> {
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        match *self {
            Layout::Replicated => {
                if numel == 0 {
                    Vec::new()
                } else {
                    vec![Range { start: 0, len: numel, local: 0 }]
                }
            }
            Layout::Flat { parts, index } => {
                let per = numel.div_ceil(parts as u64);
                let start = (per * index as u64).min(numel);
                let end = (start + per).min(numel);
                if end > start {
                    vec![Range { start, len: end - start, local: 0 }]
                } else {
                    Vec::new()
                }
            }
            Layout::Split { dim, parts, index } => {
                let outer: u64 = shape[..dim].iter().map(|&d| d as u64).product();
                let inner: u64 = shape[dim + 1..].iter().map(|&d| d as u64).product();
                let slice = (shape[dim] / parts) as u64;
                let len = slice * inner;
                if len == 0 {
                    return Vec::new();
                }
                let row = shape[dim] as u64 * inner;
                (0..outer)
                    .map(|o| Range { start: o * row + index as u64 * len, len, local: o * len })
                    .collect()
            }
        }
    }
}
