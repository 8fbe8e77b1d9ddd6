//! The clipped policy-gradient surrogate (PPO/GRPO family), its reductions, and the importance
//! weights that correct stale samples.
//!
//! Follows PPO (Schulman et al., 2017) with DAPO's decoupled clip range (`eps_low`, `eps_high`,
//! "clip-higher"; Yu et al., 2025) and the dual clip of Ye et al. (2020) for negative advantages:
//!
//! ```text
//! rho = exp(logp_theta - logp_old)
//! l   = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
//! l   = min(l, -c * A)            where A < 0, with dual clip c > 1
//! ```
//!
//! Off-policy correction for stale samples: decoupled PPO (Hilton et al., 2022; AReaL) takes
//! `logp_old` to be the *proximal* policy (log-probs recomputed with the current weights before the
//! update) and multiplies the per-token loss by the detached behaviour weight
//! `w = exp(logp_prox - logp_behavior)`, truncated at `C` or masked outside `[lo, hi]`. Truncated IS
//! (TIS) is the same weight applied when `logp_old` is the trainer's own recomputation of the
//! behaviour policy. Weights are computed under `detach`, so no gradient flows through them.
//!
//! Reductions, by name (`loss_mask` honoured everywhere, so environment tokens never train):
//! `seq-mean-token-mean` (GRPO: mean over sequences of each sequence's token mean), `token-mean`
//! (DAPO: one mean over all tokens of the batch), `seq-mean-token-sum-norm` (Dr. GRPO: each
//! sequence's token sum divided by a constant, the generation budget `rl.max_completion_tokens`,
//! then the mean over sequences; Liu et al., 2025, section 3.1, so that neither the batch's longest
//! completion nor its padding changes a sequence's weight).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Clipping hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipConfig {
    /// Lower clip: `rho >= 1 - eps_low`.
    pub eps_low: f32,
    /// Upper clip: `rho <= 1 + eps_high` (DAPO uses 0.28).
    pub eps_high: f32,
    /// Dual-clip constant `c > 1` for negative advantages; `None` is off.
    pub dual_clip: Option<f32>,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self { eps_low: 0.2, eps_high: 0.2, dual_clip: None }
    }
}

/// How per-token losses become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Reduction {
    /// GRPO: mean over sequences of the token mean.
    #[default]
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
    /// DAPO: mean over every token of the batch.
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Dr. GRPO: per-sequence token sum over the generation budget, mean over sequences.
    #[serde(rename = "seq-mean-token-sum-norm")]
    SeqMeanTokenSumNorm,
}

/// How stale samples are reweighted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum IsCorrection {
    /// `min(w, cap)`.
    Truncate {
        /// The cap `C`.
        cap: f32,
    },
    /// `w` inside `[lo, hi]`, else 0 (the token is dropped).
    Mask {
        /// Lowest kept weight.
        lo: f32,
        /// Highest kept weight.
        hi: f32,
    },
}

/// Per-token clipped surrogate loss `[batch, T]` (0 where `mask` is 0).
///
/// `advantages` is one value per sequence, `[batch]`; `weight` an optional detached per-token
/// importance weight (see [`importance_weights`]).
pub fn clipped_surrogate<B: Backend>(
    logp: Tensor<B, 2>,
    logp_old: Tensor<B, 2>,
    advantages: Tensor<B, 1>,
    mask: Tensor<B, 2>,
    clip: &ClipConfig,
    weight: Option<Tensor<B, 2>>,
) -> Tensor<B, 2> {
    let [b, t] = logp.dims();
    let rho = (logp - logp_old.detach()).exp();
    let a = advantages.reshape([b, 1]).expand([b, t]);
    let unclipped = rho.clone() * a.clone();
    let clipped = rho.clamp(1.0 - clip.eps_low, 1.0 + clip.eps_high) * a.clone();
    let mut objective = unclipped.min_pair(clipped);
    if let Some(c) = clip.dual_clip {
        let floor = a.clone() * c;
        let dual = objective.clone().max_pair(floor);
        objective = objective.mask_where(a.lower_elem(0.0), dual);
    }
    let loss = objective.neg();
    let loss = match weight {
        Some(w) => loss * w.detach(),
        None => loss,
    };
    loss * mask
}

/// Fraction of unmasked tokens whose ratio was clipped (a standard PPO diagnostic).
pub fn clip_fraction<B: Backend>(
    logp: Tensor<B, 2>,
    logp_old: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    clip: &ClipConfig,
) -> f32 {
    let rho = (logp - logp_old).exp();
    let outside =
        rho.clone().lower_elem(1.0 - clip.eps_low).float() + rho.greater_elem(1.0 + clip.eps_high).float();
    let n = mask.clone().sum().into_scalar().elem::<f32>();
    if n == 0.0 {
        return 0.0;
    }
    (outside * mask).sum().into_scalar().elem::<f32>() / n
}

/// Reduces per-token losses `[batch, T]` to a scalar; `budget` is Dr. GRPO's constant (the
/// generation budget, `rl.max_completion_tokens`), unused by the other reductions.
pub fn reduce<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    how: Reduction,
    budget: usize,
) -> Tensor<B, 1> {
    let masked = per_token * mask.clone();
    match how {
        Reduction::SeqMeanTokenMean => {
            // An empty completion contributes 0 rather than 0/0.
            let lens = mask.sum_dim(1).clamp_min(1.0);
            (masked.sum_dim(1) / lens).mean().reshape([1])
        }
        Reduction::TokenMean => masked.sum() / mask.sum().clamp_min(1.0),
        Reduction::SeqMeanTokenSumNorm => (masked.sum_dim(1) / budget.max(1) as f32).mean().reshape([1]),
    }
}

/// The batch a micro-batch belongs to: what [`reduce_partial`] normalises by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTotals {
    /// Sequences trained on in the batch (failed episodes are not).
    pub rows: usize,
    /// Trained tokens (mask 1) in the batch.
    pub tokens: usize,
    /// The generation budget, `rl.max_completion_tokens` (Dr. GRPO's constant normaliser).
    pub budget: usize,
}

/// A micro-batch's share of the batch loss [`reduce`] would compute over the whole batch: summed
/// over the micro-batches of a batch it equals `reduce` of the batch.
pub fn reduce_partial<B: Backend>(
    per_token: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    how: Reduction,
    totals: &BatchTotals,
) -> Tensor<B, 1> {
    let masked = per_token * mask.clone();
    let rows = totals.rows.max(1) as f32;
    match how {
        Reduction::SeqMeanTokenMean => {
            let lens = mask.sum_dim(1).clamp_min(1.0);
            (masked.sum_dim(1) / lens).sum().reshape([1]) / rows
        }
        Reduction::TokenMean => masked.sum() / totals.tokens.max(1) as f32,
        Reduction::SeqMeanTokenSumNorm => masked.sum() / (totals.budget.max(1) as f32 * rows),
    }
}

/// Detached per-token importance weights `exp(logp_prox - logp_behavior)` under a correction.
pub fn importance_weights<B: Backend>(
    logp_prox: Tensor<B, 2>,
    logp_behavior: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    correction: &IsCorrection,
) -> Tensor<B, 2> {
    let w = (logp_prox.detach() - logp_behavior.detach()).exp();
    let w = match *correction {
        IsCorrection::Truncate { cap } => w.clamp_max(cap),
        IsCorrection::Mask { lo, hi } => {
            let outside = w.clone().lower_elem(lo).bool_or(w.clone().greater_elem(hi));
            w.mask_fill(outside, 0.0)
        }
    };
    w * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_model::Cpu;

    fn t2(rows: &[&[f32]]) -> Tensor<Cpu, 2> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, width - r.len())))
            .collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), width]), &Default::default())
    }

    #[test]
    fn dr_grpo_weighs_a_sequence_by_the_budget_whatever_else_is_in_the_batch() {
        // The same sequence (loss 1 on each of its 3 tokens) next to a 3-token and then a 40-token
        // sequence whose loss is 0: with a constant normaliser its share is the same.
        let budget = 48;
        let share = |other: usize| {
            let loss = t2(&[&[1.0; 3], &vec![0.0; other]]);
            let mask = t2(&[&[1.0; 3], &vec![1.0; other]]);
            let totals = BatchTotals { rows: 2, tokens: 3 + other, budget };
            let got = reduce_partial(loss.clone(), mask.clone(), Reduction::SeqMeanTokenSumNorm, &totals);
            let whole = reduce(loss, mask, Reduction::SeqMeanTokenSumNorm, budget);
            let (got, whole) = (got.into_scalar(), whole.into_scalar());
            assert!((got - whole).abs() < 1e-7, "{got} vs {whole}");
            got
        };
        assert_eq!(share(3), share(40));
        assert!((share(3) - 3.0 / (48.0 * 2.0)).abs() < 1e-7);
    }
}
