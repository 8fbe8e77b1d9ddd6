//! Cutting a step's batch into micro-batches by length.
//!
//! # Design
//! *Constraints.* The scorer pads a micro-batch to `[rows, longest prompt + longest completion]`,
//! and RL completions vary from a few tokens to the generation limit, so one micro-batch of the
//! whole step spends much of its compute on padding (in the TRL benchmark, about 1100 completion
//! tokens in 64 x 38 positions). The step's gradient must not depend on how the batch is cut (each
//! micro-batch's loss is normalised by the batch's totals, see `trainer.rs`); trajectory balance
//! needs whole groups in a micro-batch (its `log Z` is per group); `learner.micro_batch_groups`
//! caps the rows of one pass (memory).
//! *Solution.* Units (rows for GRPO, whole groups for TB) are sorted longest first and cut into
//! contiguous runs by dynamic programming that minimises the padded positions of all runs plus a
//! fixed cost per run ([`RUN_OVERHEAD_POSITIONS`]), never more rows in a run than the cap.
//! *Pros:* fewer positions for the same gradient; with equal lengths nothing changes (one run).
//! *Cons:* more, smaller forward calls; the float summation order of the gradient follows the
//! lengths, not the order the samples arrived in.

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
    /// Its longest prompt.
    pub prompt: usize,
    /// Its longest completion.
    pub completion: usize,
}

/// The order to take the units in (indices into `units`) and the micro-batches as ranges of that
/// order. Every run holds at most `max_rows` rows, unless one unit alone holds more.
pub fn plan(units: &[Unit], max_rows: usize) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Longest first; ties keep arrival order, so the plan is a function of the lengths only.
    order.sort_by_key(|&i| std::cmp::Reverse(units[i].prompt + units[i].completion));
    let n = order.len();
    // best[i]: least cost of the first i units of `order`; cut[i]: where its last run starts.
    let mut best = vec![usize::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let (mut rows, mut prompt, mut completion) = (0usize, 0usize, 0usize);
        for start in (0..end).rev() {
            let u = units[order[start]];
            rows += u.rows;
            if rows > max_rows && start + 1 < end {
                break;
            }
            prompt = prompt.max(u.prompt);
            completion = completion.max(u.completion.max(1));
            let cost = best[start].saturating_add(rows * (prompt + completion) + RUN_OVERHEAD_POSITIONS);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: usize, completion: usize) -> Unit {
        Unit { rows: 1, prompt, completion }
    }

    fn padded(units: &[Unit], order: &[usize], runs: &[Range<usize>]) -> usize {
        runs.iter()
            .map(|r| {
                let us: Vec<Unit> = order[r.clone()].iter().map(|&i| units[i]).collect();
                let rows: usize = us.iter().map(|u| u.rows).sum();
                rows * (us.iter().map(|u| u.prompt).max().unwrap()
                    + us.iter().map(|u| u.completion).max().unwrap())
            })
            .sum()
    }

    #[test]
    fn equal_lengths_stay_one_micro_batch() {
        let units = vec![row(32, 32); 64];
        let (order, runs) = plan(&units, 64);
        assert_eq!(runs, vec![0..64]);
        assert_eq!(order, (0..64).collect::<Vec<_>>());
    }

    #[test]
    fn short_and_long_completions_go_to_separate_micro_batches() {
        // 32 rows that stopped after 2 tokens and 32 that ran to 200: one pass would pad all 64
        // to 200; two passes save 32 x 198 positions, far more than one pass costs.
        let units: Vec<Unit> = (0..64).map(|i| row(8, if i % 2 == 0 { 2 } else { 200 })).collect();
        let (order, runs) = plan(&units, 64);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert!(order[runs[0].clone()].iter().all(|&i| units[i].completion == 200));
        assert!(order[runs[1].clone()].iter().all(|&i| units[i].completion == 2));
        assert_eq!(padded(&units, &order, &runs), 32 * 208 + 32 * 10);
    }

    #[test]
    fn the_row_cap_holds_and_every_unit_is_taken_once() {
        let units: Vec<Unit> =
            (0..50).map(|i| Unit { rows: 4, prompt: 5 + i % 7, completion: (i * 37) % 61 }).collect();
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
        let units =
            vec![Unit { rows: 8, prompt: 4, completion: 4 }, Unit { rows: 8, prompt: 4, completion: 4 }];
        let (_, runs) = plan(&units, 4);
        assert_eq!(runs, vec![0..1, 1..2]);
    }
}
