//! The reshard planner: (source layouts, destination layout) -> byte-range copies. Pure.
//!
//! # Design
//! *Constraints.* Learners hold parameters in their own sharding (replicated, FSDP flat ranges,
//! tensor-parallel slices); each rollout worker wants its own (replicated, or TP slices, possibly
//! of fused tensors such as qkv). Moving through a gathered full copy costs memory and time on
//! both ends. *Solution.* Reduce every layout to the runs of full-tensor elements a holder keeps
//! ([`Layout::ranges`]); the copies a destination needs are the intersections of its runs with the
//! sources' runs, computed by one merge. Fused destinations (`qkv = [q; k; v]` along dim 0) place
//! each part's piece after the previous ones, vLLM's layout for tensor-parallel fused weights.
//! *Pros:* any layout pair, no full copy, testable without a network. *Cons:* a split along an
//! inner dimension yields one copy per outer row (coalesced where contiguous).

use crate::error::{Result, SyncError};
use crate::layout::{Layout, Range};

/// One copy: `len` bytes from byte `src` of source holder `source`'s local buffer to byte `dst`
/// of the destination's local buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    /// Index into the source layouts given to the planner.
    pub source: usize,
    /// Byte offset in that source's local buffer.
    pub src: u64,
    /// Byte offset in the destination's local buffer.
    pub dst: u64,
    /// Bytes.
    pub len: u64,
}

/// A source run tagged with its holder, trimmed so runs do not overlap.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    holder: usize,
    local: u64,
}

/// The copies that fill the destination piece `dest` of tensor `name` (shape `shape`, `elem`
/// bytes per element) from source pieces `sources` (each holder's layout; they may overlap, e.g.
/// replicated copies, and must together cover what the destination needs).
pub fn plan_tensor(
    name: &str,
    shape: &[usize],
    elem: u64,
    sources: &[Layout],
    dest: Layout,
) -> Result<Vec<Copy>> {
    dest.check(name, shape)?;
    for s in sources {
        s.check(name, shape)?;
    }
    // Disjoint cover of the union of the sources' runs, first holder wins on overlap.
    let mut runs: Vec<Run> = sources
        .iter()
        .enumerate()
        .flat_map(|(holder, l)| {
            l.ranges(shape).into_iter().map(move |r: Range| Run {
                start: r.start,
                end: r.start + r.len,
                holder,
                local: r.local,
            })
        })
        .collect();
    runs.sort_by_key(|r| (r.start, r.holder));
    let mut cover: Vec<Run> = Vec::with_capacity(runs.len());
    let mut covered_to = 0u64;
    for r in runs {
        if r.end <= covered_to {
            continue;
        }
        let start = r.start.max(covered_to);
        cover.push(Run { start, end: r.end, holder: r.holder, local: r.local + (start - r.start) });
        covered_to = r.end;
    }
    let mut copies: Vec<Copy> = Vec::new();
    for d in dest.ranges(shape) {
        let (mut pos, end) = (d.start, d.start + d.len);
        // The last cover run starting at or before `pos`.
        let mut i = cover.partition_point(|r| r.start <= pos).saturating_sub(1);
        while pos < end {
            let run = cover.get(i).filter(|r| r.start <= pos && pos < r.end);
            let Some(run) = run else {
                let next = cover.get(i + 1).map_or(end, |r| r.start.min(end)).max(pos + 1);
                return Err(SyncError::Uncovered { tensor: name.to_string(), start: pos, end: next });
            };
            let take = run.end.min(end) - pos;
            let copy = Copy {
                source: run.holder,
                src: (run.local + pos - run.start) * elem,
                dst: (d.local + pos - d.start) * elem,
                len: take * elem,
            };
            match copies.last_mut() {
                Some(c)
                    if c.source == copy.source && c.src + c.len == copy.src && c.dst + c.len == copy.dst =>
                {
                    c.len += copy.len
                }
                _ => copies.push(copy),
            }
            pos += take;
            i += 1;
        }
    }
    Ok(copies)
}

/// A destination tensor made of several source tensors concatenated along dim 0 (e.g.
/// `qkv_proj = [q_proj; k_proj; v_proj]`, `gate_up_proj = [gate_proj; up_proj]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fused {
    /// The destination's name.
    pub name: String,
    /// The source tensors, in order.
    pub parts: Vec<String>,
}

/// One part's copies inside a fused destination, offsets already shifted into the fused buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartCopies {
    /// The source tensor.
    pub tensor: String,
    /// Its copies.
    pub copies: Vec<Copy>,
}

/// Plans a fused destination: each part is cut by `dest` (a `Split` along dim 0 takes slice
/// `index` of every part, as vLLM's tensor-parallel fused layers hold them) and the pieces follow
/// each other in the destination buffer. `parts` gives each part's shape and its sources'
/// layouts. Returns the copies per part and the destination's byte length.
pub fn plan_fused(
    fused: &Fused,
    parts: &[(Vec<usize>, Vec<Layout>)],
    elem: u64,
    dest: Layout,
) -> Result<(Vec<PartCopies>, u64)> {
    if let Layout::Split { dim, .. } = dest {
        if dim != 0 {
            return Err(SyncError::Layout {
                tensor: fused.name.clone(),
                reason: format!("a fused tensor can only be split along dim 0, not {dim}"),
            });
        }
    }
    let mut offset = 0;
    let mut out = Vec::with_capacity(parts.len());
    for (tensor, (shape, sources)) in fused.parts.iter().zip(parts) {
        let mut copies = plan_tensor(tensor, shape, elem, sources, dest)?;
        for c in &mut copies {
            c.dst += offset;
        }
        offset += dest.local_len(shape) * elem;
        out.push(PartCopies { tensor: tensor.clone(), copies });
    }
    Ok((out, offset))
}

/// Runs copies: fills `dest` from the source holders' local buffers.
pub fn apply(copies: &[Copy], sources: &[&[u8]], dest: &mut [u8]) {
    for c in copies {
        let (s, d, n) = (c.src as usize, c.dst as usize, c.len as usize);
        dest[d..d + n].copy_from_slice(&sources[c.source][s..s + n]);
    }
}
