//! Trajectory balance in its VarGrad form, as TBA uses it (Bartoldson et al., 2025, "Trajectory
//! Balance with Asynchrony"; VarGrad: Richter et al., 2020).
//!
//! For each group of `G` completions `y_k` of one prompt, with sequence log-probs under the policy
//! and the frozen reference, and rewards `r_k`:
//!
//! ```text
//! logZ = mean_k [ r_k / beta - logp_theta(y_k) + logp_ref(y_k) ]        (detached)
//! loss = mean_i ( logZ + logp_theta(y_i) - logp_ref(y_i) - r_i / beta )^2
//! ```
//!
//! Departure from a learned log Z: the batch estimate replaces it, which needs whole groups.

use burn::prelude::*;

use crate::error::{LearnerError, Result};

/// The VarGrad trajectory-balance loss over whole groups (`[batch]` inputs, groups contiguous).
pub fn tb_vargrad_loss<B: Backend>(
    seq_logp: Tensor<B, 1>,
    seq_logp_ref: Tensor<B, 1>,
    rewards: Tensor<B, 1>,
    group_size: usize,
    beta: f32,
) -> Result<Tensor<B, 1>> {
    let [n] = seq_logp.dims();
    if group_size == 0 || !n.is_multiple_of(group_size) {
        return Err(LearnerError::RaggedGroups { rows: n, group_size });
    }
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(LearnerError::InvalidConfig { name: "beta", reason: format!("{beta} must be > 0") });
    }
    let groups = n / group_size;
    let scaled = rewards / beta;
    let log_ratio = seq_logp - seq_logp_ref.detach();
    let inner = (scaled.clone() - log_ratio.clone()).detach().reshape([groups, group_size]);
    let log_z = inner.mean_dim(1).expand([groups, group_size]).reshape([n]);
    let residual = log_z + log_ratio - scaled;
    Ok(residual.powi_scalar(2).mean())
}
