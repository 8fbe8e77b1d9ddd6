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
//! Departure from a learned log Z: the batch estimate replaces it, which needs whole groups. A
//! group's failed episodes (`finish = error`) are left out of both means: `valid` weighs each
//! row 1 or 0.

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
    let valid = rewards.ones_like();
    Ok(tb_vargrad(seq_logp, seq_logp_ref, rewards, valid, group_size, beta)?.loss)
}

/// The loss and the per-group `log Z` it was computed with (the one place `log Z` is computed;
/// the trainer reports its mean).
pub(crate) struct TbTerms<B: Backend> {
    /// The VarGrad loss.
    pub loss: Tensor<B, 1>,
    /// `log Z` of each group, `[groups]`, detached.
    pub log_z: Tensor<B, 1>,
}

/// [`tb_vargrad_loss`] with its `log Z`, over the rows `valid` weighs 1 (each group has at least
/// one): `log Z` is the mean over a group's valid rows, the loss the mean over the valid rows.
pub(crate) fn tb_vargrad<B: Backend>(
    seq_logp: Tensor<B, 1>,
    seq_logp_ref: Tensor<B, 1>,
    rewards: Tensor<B, 1>,
    valid: Tensor<B, 1>,
    group_size: usize,
    beta: f32,
) -> Result<TbTerms<B>> {
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
    let valid = valid.detach();
    let per_group = valid.clone().reshape([groups, group_size]);
    let inner = (scaled.clone() - log_ratio.clone()).detach().reshape([groups, group_size]);
    let counts = per_group.clone().sum_dim(1).clamp_min(1.0);
    let log_z = ((inner * per_group).sum_dim(1) / counts).reshape([groups]);
    let residual =
        log_z.clone().unsqueeze_dim::<2>(1).expand([groups, group_size]).reshape([n]) + log_ratio - scaled;
    let loss = (residual.powi_scalar(2) * valid.clone()).sum() / valid.sum().clamp_min(1.0);
    Ok(TbTerms { loss, log_z })
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn log_z_is_each_groups_mean_of_scaled_reward_minus_log_ratio() {
        let d = Default::default();
        let t = |v: &[f32]| Tensor::<Flex, 1>::from_floats(v, &d);
        let (seq, seq_ref, r) =
            (t(&[-1.0, -2.0, -3.0, -5.0]), t(&[-1.5, -1.0, -3.0, -4.0]), t(&[1.0, 0.0, 0.5, 1.0]));
        let terms = tb_vargrad(seq.clone(), seq_ref.clone(), r.clone(), t(&[1.0; 4]), 2, 0.5)
            .expect("two groups of two");
        // Group 0: [1/0.5 - (-1 + 1.5), 0 - (-2 + 1)] = [1.5, 1]; group 1: [1 - 0, 2 - (-1)] = [1, 3].
        let log_z = host(terms.log_z);
        assert_eq!(log_z, vec![1.25, 2.0]);
        // Residuals: group 0 [1.25 - 1.5, 1.25 - 1], group 1 [2 - 1, 2 - 3]; loss = mean of squares.
        let loss = host(terms.loss)[0];
        assert!((loss - (0.0625 + 0.0625 + 1.0 + 1.0) / 4.0).abs() < 1e-6, "{loss}");
        // Row 3 failed: group 1's log Z is row 2's term alone (1), and the loss the mean of the
        // three valid rows' squares.
        let terms = tb_vargrad(seq, seq_ref, r, t(&[1.0, 1.0, 1.0, 0.0]), 2, 0.5).expect("valid rows");
        assert_eq!(host(terms.log_z), vec![1.25, 1.0]);
        let loss = host(terms.loss)[0];
        assert!((loss - (0.0625 + 0.0625 + 0.0) / 3.0).abs() < 1e-6, "{loss}");
    }

    fn host(t: Tensor<Flex, 1>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data")
    }
}
