//! Cutting a step's batch into micro-batches.
//!
//! # Design
//! *Constraints.* The scorer packs a micro-batch's sequences into rows as wide as its longest
//! sequence (`sluice_model::batch::pack`), so a pass costs about its real tokens rounded up to
//! whole rows, plus a fixed cost per pass; `learner.micro_batch_groups` caps the rows of one pass
//! (memory). The step's gradient must not depend on how the batch is cut (each micro-batch's loss
//! is normalised by the batch's totals, see `trainer.rs`); trajectory balance needs whole groups
//! in a micro-batch (its `log Z` is per group).
//! *Solution.* Units (rows for GRPO, whole groups for TB) are sorted longest first and cut into
//! contiguous runs by dynamic programming that minimises the packed positions of all runs
//! (estimated as their tokens rounded up to rows of their longest sequence) plus a fixed cost per
//! run ([`RUN_OVERHEAD_POSITIONS`]), never more rows in a run than the cap. With packing, one run
//! is cheapest unless the cap says otherwise.
//! *Pros:* as few passes as memory allows, each computing little padding.
//! *Cons:* the float summation order of the gradient follows the lengths, not the order the
//! samples arrived in.

use std::ops::Range;

/// The fixed cost of one more forward/backward pass, in padded positions: per-op dispatch and
/// allocations that do not shrink with the micro-batch. Measured with the learner step benchmark
/// (tiny Llama, 64 rows x 64 positions, CPU): 16 passes of 4 rows took 0.35 s more than one pass
/// of 64 (2.97 s against 2.5-2.7 s), about 40 positions per extra pass; 4 passes of 16 rows cost
/// nothing measurable. Set higher to leave a margin for models whose positions are cheaper.
pub const RUN_OVERHEAD_POSITIONS: usize = 128;

/// What the planner needs to know of a unit (a row or a whole group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Rows in the unit.
    pub rows: usize,
    /// Tokens (prompt + completion) of all its rows.
    pub tokens: usize,
    /// Its longest sequence (prompt + completion).
    pub longest: usize,
}

/// The order to take the units in (indices into `units`) and the micro-batches as ranges of that
/// order. Every run holds at most `max_rows` rows, unless one unit alone holds more.
pub fn plan(units: &[Unit], max_rows: usize) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Longest first; ties keep arrival order, so the plan is a function of the lengths only.
    order.sort_by_key(|&i| std::cmp::Reverse(units[i].longest));
    let n = order.len();
    // best[i]: least cost of the first i units of `order`; cut[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let (mut rows, mut tokens, mut width) = (0usize, 0usize, 1usize);
        for start in (0..end).rev() {
            let u = units[order[start]];
            rows += u.rows;
            if rows > max_rows && start + 1 < end {
                break;
            }
            tokens += u.tokens;
            width = width.max(u.longest);
            let cost = best[start].saturating_add(packed(tokens, width) + RUN_OVERHEAD_POSITIONS);
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

/// Positions of `tokens` packed into rows of `width`: a lower bound that first-fit decreasing
/// meets or nearly meets.
fn packed(tokens: usize, width: usize) -> usize {
    tokens.div_ceil(width) * width
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(len: usize) -> Unit {
        Unit { rows: 1, tokens: len, longest: len }
    }

    fn lens(units: &[Unit], order: &[usize], run: &Range<usize>) -> Vec<usize> {
        order[run.clone()].iter().map(|&i| units[i].longest).collect()
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
    fn the_row_cap_holds_and_every_unit_is_taken_once() {
        let units: Vec<Unit> = (0..50)
            .map(|i| {
                let longest = 5 + i % 7 + (i * 37) % 61;
                Unit { rows: 4, tokens: 4 * longest - i % 3, longest }
            })
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
            let rows: usize = order[r.clone()].iter().map(|&i| units[i].rows).sum();
            assert!(rows <= 12, "run {r:?} holds {rows} rows");
        }
    }

    #[test]
    fn a_unit_larger_than_the_cap_gets_a_run_of_its_own() {
        let units = vec![Unit { rows: 8, tokens: 64, longest: 8 }, Unit { rows: 8, tokens: 64, longest: 8 }];
        let (_, runs) = plan(&units, 4);
        assert_eq!(runs, vec![0..1, 1..2]);
    }
}
