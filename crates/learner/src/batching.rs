//! Cutting a step's batch into micro-batches.
//!
//! # Design
//! *Constraints.* The scorer packs a micro-batch's sequences into rows as wide as its longest
//! sequence (`sluice_model::batch::pack`), so a pass costs its real tokens rounded up to whole
//! rows, plus a fixed cost per pass; but no two sequences longer than half the width share a row,
//! so where prompts are most of every sequence (chat templates) packing saves nothing and only a
//! cut by length does. `learner.micro_batch_groups` caps the rows of one pass (memory). The step's
//! gradient must not depend on how the batch is cut (each micro-batch's loss is normalised by the
//! batch's totals, see `trainer.rs`); trajectory balance needs whole groups in a micro-batch (its
//! `log Z` is per group).
//! *Solution.* Units (rows for GRPO, whole groups for TB) are sorted longest first and cut into
//! contiguous runs by dynamic programming that minimises the packed positions of all runs (a
//! lower bound of first-fit decreasing, [`packed_rows`]) plus a fixed cost per run
//! ([`RUN_OVERHEAD_POSITIONS`]), never more rows in a run than the cap. Short sequences end up
//! packed together in one pass; sequences that cannot share rows are cut by length.
//! *Pros:* as few passes as memory allows, each computing little padding, whatever the shape.
//! *Cons:* the float summation order of the gradient follows the lengths, not the order the
//! samples arrived in.

use std::ops::Range;

/// The fixed cost of one more forward/backward pass, in positions: per-op dispatch and
/// allocations that do not shrink with the micro-batch. Measured with the learner step benchmark
/// (tiny Llama, 64 rows x 64 positions, CPU): 16 passes of 4 rows took 0.35 s more than one pass
/// of 64 (2.97 s against 2.5-2.7 s), about 40 positions per extra pass; 4 passes of 16 rows cost
/// nothing measurable. Set higher to leave a margin for models whose positions are cheaper.
pub const RUN_OVERHEAD_POSITIONS: usize = 128;

/// A unit of the plan (a row, or a whole group): the sequence lengths (prompt + completion) of its
/// rows, longest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    lens: Vec<usize>,
}

impl Unit {
    /// A unit of rows whose sequences are `lens` tokens long.
    pub fn new(mut lens: Vec<usize>) -> Self {
        lens.sort_unstable_by(|a, b| b.cmp(a));
        Unit { lens }
    }

    fn rows(&self) -> usize {
        self.lens.len()
    }

    fn longest(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }

    fn longer_than(&self, half: usize) -> usize {
        self.lens.partition_point(|&l| l > half)
    }
}

/// The order to take the units in (indices into `units`) and the micro-batches as ranges of that
/// order. Every run holds at most `max_rows` rows, unless one unit alone holds more.
///
/// Quadratic in the units, times the units longer than half a run's width that the cost model
/// counts (see [`packed_rows`]).
pub fn plan(units: &[Unit], max_rows: usize) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Longest first; ties keep arrival order, so the plan is a function of the lengths only.
    order.sort_by_key(|&i| std::cmp::Reverse(units[i].longest()));
    let sorted: Vec<&Unit> = order.iter().map(|&i| &units[i]).collect();
    let tokens: Vec<usize> = sorted.iter().map(|u| u.lens.iter().sum()).collect();
    let n = order.len();
    // best[i]: least cost of the first i units of `order`; cut[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let (mut rows, mut run_tokens) = (0usize, 0usize);
        for start in (0..end).rev() {
            rows += sorted[start].rows();
            if rows > max_rows && start + 1 < end {
                break;
            }
            run_tokens += tokens[start];
            let width = sorted[start].longest().max(1);
            let cost = packed_rows(&sorted[start..end], run_tokens, width) * width;
            let cost = best[start].saturating_add(cost + RUN_OVERHEAD_POSITIONS);
            if cost < best[end] {
                best[end] = cost;
                cut[end] = start;
            }
        }
    }
    let mut runs = Vec::new();
    let mut end = n;
    while end > 0 {
        runs.push(cut[end]..end);
        end = cut[end];
    }
    runs.reverse();
    (order, runs)
}

/// Rows the scorer needs to pack `run` (units longest first, `tokens` in all) into rows of
/// `width`: at least its tokens over the width, and at least one row per sequence longer than half
/// the width (no two of those fit in a row). A lower bound that first-fit decreasing meets or
/// nearly meets; the second term is what keeps batches whose prompts are most of every sequence
/// cut by length, where packing cannot help.
fn packed_rows(run: &[&Unit], tokens: usize, width: usize) -> usize {
    let half = width / 2;
    let long: usize = run.iter().take_while(|u| u.longest() > half).map(|u| u.longer_than(half)).sum();
    tokens.div_ceil(width).max(long)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(len: usize) -> Unit {
        Unit::new(vec![len])
    }

    fn lens(units: &[Unit], order: &[usize], run: &Range<usize>) -> Vec<usize> {
        order[run.clone()].iter().map(|&i| units[i].longest()).collect()
    }

    #[test]
    fn equal_lengths_stay_one_micro_batch() {
        let units = vec![row(64); 64];
        let (order, runs) = plan(&units, 64);
        assert_eq!(runs, vec![0..64]);
        assert_eq!(order, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn short_and_long_sequences_share_one_packed_pass() {
        // 32 rows that stopped after 2 tokens and 32 that ran to 200: packed, the short ones fill
        // two rows of 208, which costs less than a second pass.
        let units: Vec<Unit> = (0..64).map(|i| row(if i % 2 == 0 { 10 } else { 208 })).collect();
        let (_, runs) = plan(&units, 64);
        assert_eq!(runs, vec![0..64]);
    }

    #[test]
    fn a_pass_of_its_own_when_rounding_to_the_longest_row_wastes_more_than_a_pass_costs() {
        // One pass: 2100 tokens in rows of 1000 is 3000 positions. Cut after the longest: 1000,
        // then 1100 tokens in rows of 600 is 1200; 2200 + one more pass is cheaper.
        let units = vec![row(600), row(1000), row(500)];
        let (order, runs) = plan(&units, 8);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(lens(&units, &order, &runs[0]), vec![1000]);
        assert_eq!(lens(&units, &order, &runs[1]), vec![600, 500]);
    }

    #[test]
    fn sequences_longer_than_half_the_longest_are_still_cut_by_length() {
        // Chat prompts of 50 tokens, completions of 48 or 10: no two sequences share a row, so one
        // pass would pad the 16 short ones to 98; two passes save 16 x 38 positions.
        let units: Vec<Unit> = (0..32).map(|i| row(if i % 2 == 0 { 98 } else { 60 })).collect();
        let (order, runs) = plan(&units, 32);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(lens(&units, &order, &runs[0]).iter().all(|&l| l == 98));
        assert!(lens(&units, &order, &runs[1]).iter().all(|&l| l == 60));
    }

    #[test]
    fn the_row_cap_holds_and_every_unit_is_taken_once() {
        let units: Vec<Unit> = (0..50)
            .map(|i| Unit::new((0..4).map(|k| 5 + (i * 7 + k) % 11 + (i * 37) % 61).collect()))
            .collect();
        let (order, runs) = plan(&units, 12);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(50));
        for w in runs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &runs {
            let rows: usize = order[r.clone()].iter().map(|&i| units[i].rows()).sum();
            assert!(rows <= 12, "run {r:?} holds {rows} rows");
        }
    }

    #[test]
    fn a_unit_larger_than_the_cap_gets_a_run_of_its_own() {
        let units = vec![Unit::new(vec![8; 8]), Unit::new(vec![8; 8])];
        let (_, runs) = plan(&units, 4);
        assert_eq!(runs, vec![0..1, 1..2]);
    }
}
