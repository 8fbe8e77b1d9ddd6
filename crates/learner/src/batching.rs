//! Cutting a step's batch into micro-batches.
//!
//! # Design
//! *Constraints.* The scorer packs a micro-batch's sequences into rows, the samples of a group
//! sharing one copy of their prompt (`sluice_model::batch::pack`), so what a pass costs depends on
//! which groups it holds: a group split over two passes computes its prompt twice, and long
//! sequences that cannot share a row pad short ones to their width. Each pass also has a fixed
//! cost. `learner.micro_batch_groups` caps the groups of one pass (memory). The step's gradient
//! must not depend on how the batch is cut (each micro-batch's loss is normalised by the batch's
//! totals, see `trainer.rs`); trajectory balance needs whole groups in a micro-batch (its `log Z`
//! is per group).
//! *Solution.* Units are whole groups, for every objective. They are sorted longest first and cut
//! into contiguous runs by dynamic programming that minimises the cost of all runs as the scorer
//! will pack them (the caller's `cost`: `sluice_model::packing_cost`) plus a fixed cost per run
//! ([`RUN_OVERHEAD_POSITIONS`]), never more rows in a run than the cap. A run's real tokens bound
//! its cost from below, so runs that cannot win are not packed.
//! *Pros:* the plan is the scorer's own layout, prompt sharing included, whatever the shape.
//! *Cons:* up to `n (n + 1) / 2` packings of candidate runs for `n` groups: about 1 ms at 8 groups
//! of 8, 0.15 s at 64 groups of 8 (release build, 2 cores), small next to such a step's forward;
//! the float summation order of the gradient follows the lengths, not the order the samples
//! arrived in.

use std::ops::Range;

/// The fixed cost of one more forward/backward pass, in positions: per-op dispatch and
/// allocations that do not shrink with the micro-batch. Measured with the learner step benchmark
/// (tiny Llama, 64 rows x 64 positions, CPU): 16 passes of 4 rows took 0.35 s more than one pass
/// of 64 (2.97 s against 2.5-2.7 s), about 40 positions per extra pass; 4 passes of 16 rows cost
/// nothing measurable. Set higher to leave a margin for models whose positions are cheaper.
pub const RUN_OVERHEAD_POSITIONS: usize = 128;

/// A unit of the plan: a whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Its rows (samples).
    pub rows: usize,
    /// Its longest sequence, as the scorer lays it out: the order to plan in.
    pub longest: usize,
    /// Input tokens it has at the least (its prompt once, then its completions): a lower bound of
    /// what it costs in any run.
    pub tokens: usize,
}

/// The order to take the units in (indices into `units`) and the micro-batches as ranges of that
/// order. Every run holds at most `max_rows` rows, unless one unit alone holds more. `cost(run)`
/// is what a pass over the units `run` (indices into `units`) costs, in positions, at least their
/// `tokens`.
pub fn plan(
    units: &[Unit],
    max_rows: usize,
    mut cost: impl FnMut(&[usize]) -> f64,
) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut order: Vec<usize> = (0..units.len()).collect();
    // Longest first; ties keep arrival order, so the plan is a function of the lengths only.
    order.sort_by_key(|&i| std::cmp::Reverse(units[i].longest));
    let n = order.len();
    let overhead = RUN_OVERHEAD_POSITIONS as f64;
    // best[i]: least cost of the first i units of `order`; cut[i]: where its last run starts.
    let mut best = vec![f64::INFINITY; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0.0;
    for end in 1..=n {
        let (mut rows, mut tokens) = (0usize, 0usize);
        for start in (0..end).rev() {
            let unit = &units[order[start]];
            rows += unit.rows;
            if rows > max_rows && start + 1 < end {
                break;
            }
            tokens += unit.tokens;
            if best[start] + tokens as f64 + overhead >= best[end] {
                continue;
            }
            let total = best[start] + cost(&order[start..end]) + overhead;
            if total < best[end] {
                best[end] = total;
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
    use sluice_model::batch::pack_cost;

    use super::*;

    /// Groups as (prompt length, completion input lengths); prompts differ between groups.
    type Groups = Vec<(usize, Vec<usize>)>;

    fn prompt(g: usize, len: usize) -> Vec<u32> {
        (0..len).map(|k| (g * 1000 + k) as u32).collect()
    }

    fn units(groups: &Groups) -> Vec<Unit> {
        groups
            .iter()
            .map(|(p, c)| Unit {
                rows: c.len(),
                longest: p + c.iter().max().unwrap_or(&0),
                tokens: p + c.iter().sum::<usize>(),
            })
            .collect()
    }

    /// What the scorer's packing of the groups `run` computes, in positions.
    fn positions(groups: &Groups, run: &[usize]) -> f64 {
        let prompts: Vec<Vec<u32>> = run.iter().map(|&g| prompt(g, groups[g].0)).collect();
        let mut seqs: Vec<&[u32]> = Vec::new();
        let mut inputs = Vec::new();
        for (p, &g) in prompts.iter().zip(run) {
            for &c in &groups[g].1 {
                seqs.push(p);
                inputs.push(c);
            }
        }
        pack_cost(&seqs, &inputs, 0.0)
    }

    fn planned(groups: &Groups, max_rows: usize) -> (Vec<usize>, Vec<Range<usize>>) {
        plan(&units(groups), max_rows, |run| positions(groups, run))
    }

    #[test]
    fn equal_lengths_stay_one_micro_batch() {
        let groups: Groups = (0..8).map(|_| (8, vec![56; 8])).collect();
        let (order, runs) = planned(&groups, 64);
        assert_eq!(runs, vec![0..8]);
        assert_eq!(order, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn short_and_long_sequences_share_one_packed_pass() {
        // Half of each group stopped after 2 tokens, half ran to 200: packed, the short ones fill
        // the rows' ends, which costs less than a second pass.
        let groups: Groups = (0..8).map(|_| (8, [2, 200].repeat(4))).collect();
        let (_, runs) = planned(&groups, 64);
        assert_eq!(runs, vec![0..8]);
    }

    #[test]
    fn a_pass_of_its_own_when_rounding_to_the_longest_row_wastes_more_than_a_pass_costs() {
        // A 1000-token sequence and a group of a 600-token prompt with eight 60-token
        // completions (1080 tokens shared): together the best rows hold 3000 positions; apart,
        // 1000 and 1320 (rows are whole multiples of a pass's longest sequence), which saves
        // more than a pass costs.
        let groups: Groups = vec![(600, vec![60; 8]), (10, vec![990])];
        assert_eq!(positions(&groups, &[1, 0]), 3000.0);
        assert_eq!(positions(&groups, &[1]) + positions(&groups, &[0]), 2320.0);
        let (order, runs) = planned(&groups, 64);
        assert_eq!(runs, vec![0..1, 1..2]);
        assert_eq!(order, vec![1, 0], "longest first");
    }

    #[test]
    fn a_group_sharing_its_prompt_is_not_cut_by_length() {
        // Chat prompts of 50 tokens, completions of 48 or 10: every sequence is more than half of
        // the longest, so without sharing no two could share a row and a cut by length would
        // pay; after one copy of its prompt a group's completions fill a row, so one pass
        // computes little more than the real tokens.
        let groups: Groups = (0..4).map(|_| (50, [48, 10].repeat(4))).collect();
        let (_, runs) = planned(&groups, 32);
        assert_eq!(runs, vec![0..4]);
        let tokens: usize = units(&groups).iter().map(|u| u.tokens).sum();
        assert_eq!(tokens, 4 * 282);
        assert!(positions(&groups, &[0, 1, 2, 3]) <= 1.05 * tokens as f64);
    }

    #[test]
    fn the_row_cap_holds_and_every_unit_is_taken_once() {
        let groups: Groups = (0..50)
            .map(|i| (3 + i % 7, (0..4).map(|k| 5 + (i * 7 + k) % 11 + (i * 37) % 61).collect()))
            .collect();
        let (order, runs) = planned(&groups, 12);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(runs.first().map(|r| r.start), Some(0));
        assert_eq!(runs.last().map(|r| r.end), Some(50));
        for w in runs.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &runs {
            let rows: usize = order[r.clone()].iter().map(|&i| groups[i].1.len()).sum();
            assert!(rows <= 12, "run {r:?} holds {rows} rows");
        }
    }

    #[test]
    fn a_unit_larger_than_the_cap_gets_a_run_of_its_own() {
        let groups: Groups = vec![(4, vec![8; 8]), (4, vec![8; 8])];
        let (_, runs) = planned(&groups, 4);
        assert_eq!(runs, vec![0..1, 1..2]);
    }
}
