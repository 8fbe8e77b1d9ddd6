//! KL penalty to a frozen reference policy, per token (Schulman's estimators, "Approximating KL
//! Divergence", 2020), with `d = logp_ref - logp_theta` clamped to `[-clamp, clamp]`:
//!
//! ```text
//! k1 = -d          k2 = d^2 / 2          k3 = e^d - d - 1
//! ```
//!
//! k3 is unbiased for KL(theta || ref) under samples from theta and always >= 0 (GRPO's choice).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Which estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `-d`.
    K1,
    /// `d^2 / 2`.
    K2,
    /// `e^d - d - 1`.
    #[default]
    K3,
}

/// Per-token KL estimate `[batch, T]` (0 where `mask` is 0).
pub fn kl_per_token<B: Backend>(
    logp: Tensor<B, 2>,
    logp_ref: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    estimator: KlEstimator,
    clamp: f32,
) -> Tensor<B, 2> {
    let d = (logp_ref.detach() - logp).clamp(-clamp, clamp);
    let kl = match estimator {
        KlEstimator::K1 => d.neg(),
        KlEstimator::K2 => d.powi_scalar(2) * 0.5,
        KlEstimator::K3 => d.clone().exp() - d - 1.0,
    };
    kl * mask
}
