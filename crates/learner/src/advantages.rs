//! Group-relative advantages and reward shaping, computed per sequence on the host.
//!
//! - GRPO (Shao et al., 2024, DeepSeekMath): `A_i = (R_i - mean_G R) / (std_G R + eps)`. The std is
//!   the sample std (`G - 1` in the denominator), as TRL and verl compute it with `torch.std`.
//! - Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training"): `A_i = R_i - mean_G R`.
//! - RLOO (Ahmadian et al., 2024): `A_i = R_i - mean_{j != i} R_j`.
//! - DAPO's overlong penalty (Yu et al., 2025): 0 up to `max_len - cache`, then falling linearly to
//!   -1 at `max_len`, and -1 beyond.

use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};

/// Which advantage estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    /// Group-normalised (`scale = "group"`).
    #[default]
    Grpo,
    /// Mean-centred only (`scale = "none"`).
    DrGrpo,
    /// Leave-one-out baseline.
    Rloo,
}

/// Advantage hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdvantageConfig {
    /// The estimator.
    pub estimator: Estimator,
    /// Added to the group std before dividing (GRPO only).
    pub eps: f32,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self { estimator: Estimator::Grpo, eps: 1e-6 }
    }
}

/// One advantage per sequence; `rewards` holds whole groups of `group_size`, group by group.
pub fn advantages(rewards: &[f32], group_size: usize, cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    if group_size < 2 || !rewards.len().is_multiple_of(group_size) {
        return Err(LearnerError::RaggedGroups { rows: rewards.len(), group_size });
    }
    let mut out = Vec::with_capacity(rewards.len());
    for group in rewards.chunks_exact(group_size) {
        out.extend(group_advantages(group, cfg)?);
    }
    Ok(out)
}

/// The advantages of one group of at least two rewards: the samples that count in its statistics
/// (a group's failed episodes are left out before, so groups differ in size).
pub fn group_advantages(group: &[f32], cfg: &AdvantageConfig) -> Result<Vec<f32>> {
    if group.len() < 2 {
        return Err(LearnerError::Batch(format!("a group baseline needs two rewards, got {}", group.len())));
    }
    check_rewards(group)?;
    let g = group.len() as f64;
    let sum: f64 = group.iter().map(|&r| r as f64).sum();
    let mean = sum / g;
    Ok(match cfg.estimator {
        Estimator::Grpo => {
            let var = group.iter().map(|&r| (r as f64 - mean).powi(2)).sum::<f64>() / (g - 1.0);
            let denom = var.sqrt() + cfg.eps as f64;
            group.iter().map(|&r| ((r as f64 - mean) / denom) as f32).collect()
        }
        Estimator::DrGrpo => group.iter().map(|&r| (r as f64 - mean) as f32).collect(),
        Estimator::Rloo => group.iter().map(|&r| (r as f64 - (sum - r as f64) / (g - 1.0)) as f32).collect(),
    })
}

/// Refuses a non-finite reward, naming its row.
pub(crate) fn check_rewards(rewards: &[f32]) -> Result<()> {
    match rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        Some((row, &value)) => Err(LearnerError::NonFinite { what: "reward", row, value }),
        None => Ok(()),
    }
}

/// DAPO's soft overlong penalty for a completion of `len` tokens.
pub fn overlong_penalty(len: usize, max_len: usize, cache: usize) -> f32 {
    let soft_start = max_len.saturating_sub(cache);
    if len <= soft_start {
        0.0
    } else if len <= max_len {
        (soft_start as f32 - len as f32) / cache as f32
    } else {
        -1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_groups_and_nan_rewards_are_refused() {
        let cfg = AdvantageConfig::default();
        assert!(matches!(advantages(&[1.0, 2.0, 3.0], 2, &cfg), Err(LearnerError::RaggedGroups { .. })));
        let err = advantages(&[1.0, f32::NAN], 2, &cfg).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
    }

    #[test]
    fn zero_variance_group_has_zero_advantage() {
        let a = advantages(&[0.5; 4], 4, &AdvantageConfig::default()).unwrap();
        assert!(a.iter().all(|&v| v == 0.0));
        assert!(sluice_core::zero_variance([0.5; 4]) && !sluice_core::zero_variance([0.5, 0.4]));
    }
}
