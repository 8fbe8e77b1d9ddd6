//! The learner's settings: one typed tree, unknown keys refused, every range checked by
//! [`LearnerConfig::check`] with the key's path in the error.

use serde::{Deserialize, Serialize};
use sluice_core::RlConfig;
use sluice_replay::Sampler;

use crate::advantages::AdvantageConfig;
use crate::error::{LearnerError, Result};
use crate::grpo::{ClipConfig, IsCorrection, Reduction};
use crate::kl::KlEstimator;
use crate::optim::{AdamWConfig, Schedule};

/// Which objective trains the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The GRPO family: group advantages, clipped surrogate, optional KL.
    #[default]
    Grpo,
    /// Trajectory balance (TBA, VarGrad form).
    Tb,
}

/// How stale samples are corrected (`docs/design.md`, "Versions and staleness" and "Objectives").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffPolicyMode {
    /// Decoupled PPO when `rl.max_staleness > 0`, none otherwise.
    #[default]
    Auto,
    /// Decoupled PPO (Hilton et al., 2022; AReaL): the ratio is taken against the proximal policy
    /// (the current weights before the update) and each token is weighted by the detached
    /// `exp(logp_prox - logp_behavior)`, truncated or masked by [`OffPolicyConfig::correction`].
    Decoupled,
    /// Plain truncated importance sampling: the per-token loss is
    /// `-sg(min(exp(logp - logp_behavior), cap)) * A * logp` (IMPALA's truncated rho), with no
    /// clipping at `epochs = 1`. With `epochs > 1` later epochs take the ratio against the
    /// weights before the batch's first update (and the weight from them), clipped as in PPO: a
    /// trust region rather than a ratio recomputed to 1 every epoch.
    Tis,
    /// No correction: the ratio is taken against the behaviour log-probs, clipped as in PPO.
    Off,
}

/// Off-policy correction settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffPolicyConfig {
    /// Which correction.
    pub mode: OffPolicyMode,
    /// How decoupled PPO bounds its weight (TIS always truncates at `cap` of a `truncate`
    /// correction, or 2 when the correction masks).
    pub correction: IsCorrection,
}

impl Default for OffPolicyConfig {
    fn default() -> Self {
        OffPolicyConfig { mode: OffPolicyMode::Auto, correction: IsCorrection::Truncate { cap: 2.0 } }
    }
}

impl OffPolicyConfig {
    /// The mode in force for a run with this staleness bound.
    pub fn resolved(&self, max_staleness: u64) -> OffPolicyMode {
        match self.mode {
            OffPolicyMode::Auto if max_staleness > 0 => OffPolicyMode::Decoupled,
            OffPolicyMode::Auto => OffPolicyMode::Off,
            m => m,
        }
    }
}

/// KL penalty to the frozen reference (the initial weights).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KlConfig {
    /// Coefficient; 0 skips the reference forward entirely.
    pub beta: f32,
    /// Which estimator.
    pub estimator: KlEstimator,
    /// Bound on `|logp_ref - logp|` before the estimator.
    pub clamp: f32,
}

impl Default for KlConfig {
    fn default() -> Self {
        KlConfig { beta: 0.0, estimator: KlEstimator::K3, clamp: 10.0 }
    }
}

/// Trajectory balance: `beta` moves linearly from `beta_start` to `beta_end` over `beta_steps`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TbConfig {
    /// `beta` at step 0.
    pub beta_start: f32,
    /// `beta` from `beta_steps` on.
    pub beta_end: f32,
    /// Length of the ramp (0: `beta_end` throughout).
    pub beta_steps: u64,
}

impl Default for TbConfig {
    fn default() -> Self {
        TbConfig { beta_start: 0.1, beta_end: 0.1, beta_steps: 0 }
    }
}

impl TbConfig {
    /// `beta` at policy version `step`.
    pub fn beta_at(&self, step: u64) -> f32 {
        if step >= self.beta_steps {
            return self.beta_end;
        }
        let f = step as f32 / self.beta_steps as f32;
        self.beta_start + (self.beta_end - self.beta_start) * f
    }
}

/// DAPO's soft overlong penalty, added to the reward (see [`crate::overlong_penalty`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlongConfig {
    /// The generation budget in tokens.
    pub max_len: usize,
    /// Length of the soft zone before `max_len`.
    pub cache: usize,
    /// Scale of the penalty (DAPO: 1).
    #[serde(default = "one")]
    pub factor: f32,
}

fn one() -> f32 {
    1.0
}

/// Everything the learner needs besides the model and the run's shared settings
/// ([`RlConfig`]: group size, groups per step, staleness bound, temperature). Its defaults are the
/// quickstart's, so a config that leaves a key out gets the value `sluice run` runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnerConfig {
    /// GRPO family or trajectory balance.
    pub algorithm: Algorithm,
    /// At most this many groups' rows per forward/backward pass (a memory cap; 0: no cap). Each
    /// pass packs its sequences (the scorer); within the cap the batch is cut where that saves
    /// more than a pass costs (`batching.rs`). Gradients of a step's micro-batches are summed
    /// before the update, which equals one pass over the whole batch.
    pub micro_batch_groups: usize,
    /// Optimizer steps taken on each batch (PPO's mu; GRPO's usual 1). A batch is one policy
    /// version however many epochs it takes.
    pub epochs: u32,
    /// Replay sampler, written by name (`fifo`, `uniform`, `recency[:HALF_LIFE]`, `reward[:T]`,
    /// `tba[:P[:T]]`) and parsed once, where the config is read.
    #[serde(with = "sluice_replay::sampler_spec")]
    pub sampler: Sampler,
    /// Drop zero-variance groups before the step (dynamic sampling). Default: on for GRPO, off for
    /// TB (whose loss still learns from them).
    pub drop_zero_variance: Option<bool>,
    /// Most zero-variance groups dropped while filling one batch (DAPO's bound on regeneration;
    /// checked between draws, and one draw drops at most the groups it asks for); past it the
    /// batch is filled with them (they carry no GRPO gradient, but the run does not
    /// wait for ever once the policy has solved, or collapsed on, its tasks). 0: no bound.
    pub max_zero_variance_dropped: usize,
    /// The environment error budget, with `max_failed_steps`: the run stops when more than this
    /// fraction of the episodes drawn for a step failed (`finish = error`: the env raised, timed
    /// out or crashed) in `max_failed_steps` steps in a row. 1: no bound on the fraction.
    pub max_failed_fraction: f64,
    /// Steps in a row over `max_failed_fraction` before the run stops; the run also stops once
    /// every episode of this many steps' worth of groups in a row failed (such steps never fill).
    /// A crashed environment server fails the episodes it held, which seldom spans more than a
    /// step. 0: no error budget.
    pub max_failed_steps: u32,
    /// Advantage estimator.
    pub advantage: AdvantageConfig,
    /// Clip ranges.
    pub clip: ClipConfig,
    /// Loss reduction by name.
    pub reduction: Reduction,
    /// KL penalty.
    pub kl: KlConfig,
    /// Off-policy correction.
    pub off_policy: OffPolicyConfig,
    /// Trajectory balance.
    pub tb: TbConfig,
    /// Overlong reward shaping; off when absent.
    pub overlong: Option<OverlongConfig>,
    /// AdamW.
    pub optimizer: AdamWConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Publish weights every this many steps (and after the last).
    pub sync_every: u64,
    /// Checkpoint every this many steps (and after the last); 0: only at the end.
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Steps of the run.
    pub total_steps: u64,
    /// Compute the policy entropy for the metrics (one more pass over the logits).
    pub log_entropy: bool,
    /// Write `trained.jsonl` in the run directory: per step, the groups trained on and the
    /// version of the weights that sampled each (an audit of what trained the policy).
    pub log_trained_groups: bool,
    /// The name this learner holds replay leases and acks under.
    pub consumer: String,
    /// Seed of the run, stored in the trainer state.
    pub seed: u64,
}

impl Default for LearnerConfig {
    /// The quickstart's learner: GRPO, lr 2e-5 constant, 20 steps, a checkpoint every 5, no
    /// entropy pass.
    fn default() -> Self {
        LearnerConfig {
            algorithm: Algorithm::Grpo,
            micro_batch_groups: 0,
            epochs: 1,
            sampler: Sampler::Fifo,
            drop_zero_variance: None,
            max_zero_variance_dropped: 64,
            max_failed_fraction: 0.5,
            max_failed_steps: 3,
            advantage: AdvantageConfig::default(),
            clip: ClipConfig::default(),
            reduction: Reduction::SeqMeanTokenMean,
            kl: KlConfig::default(),
            off_policy: OffPolicyConfig::default(),
            tb: TbConfig::default(),
            overlong: None,
            optimizer: AdamWConfig::default(),
            schedule: Schedule::constant(2e-5),
            sync_every: 1,
            checkpoint_every: 5,
            keep_checkpoints: 3,
            total_steps: 20,
            log_entropy: false,
            log_trained_groups: false,
            consumer: "learner".into(),
            seed: 0,
        }
    }
}

impl LearnerConfig {
    /// Whether zero-variance groups are dropped.
    pub fn drops_zero_variance(&self) -> bool {
        self.drop_zero_variance.unwrap_or(self.algorithm == Algorithm::Grpo)
    }

    /// Whether the frozen reference policy is needed.
    pub fn needs_reference(&self) -> bool {
        self.algorithm == Algorithm::Tb || self.kl.beta > 0.0
    }

    /// Micro-batch size in groups, for `groups_per_step` groups a step.
    pub fn micro_groups(&self, groups_per_step: usize) -> usize {
        if self.micro_batch_groups == 0 {
            groups_per_step
        } else {
            self.micro_batch_groups.min(groups_per_step)
        }
    }

    /// The xxh3 of the canonical JSON of these settings and the shared ones, recorded in
    /// checkpoints.
    pub fn digest(&self, rl: &RlConfig) -> String {
        let json = serde_json::to_vec(&(self, rl)).unwrap_or_default();
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
    }

    /// Checks every range, and the agreements with the shared settings `rl` (checked on their own
    /// by [`RlConfig::check`]); the error names the key. The run config calls it once, where the
    /// config is read.
    pub fn check(&self, rl: &RlConfig) -> Result<()> {
        let bad = |name: &'static str, reason: String| Err(LearnerError::InvalidConfig { name, reason });
        if self.epochs == 0 {
            return bad("learner.epochs", "must be >= 1".into());
        }
        if !(self.advantage.eps.is_finite() && self.advantage.eps >= 0.0) {
            return bad("learner.advantage.eps", format!("{} must be >= 0", self.advantage.eps));
        }
        let c = self.clip;
        if !(c.eps_low > 0.0 && c.eps_low < 1.0) {
            return bad("learner.clip.eps_low", format!("{} must be in (0, 1)", c.eps_low));
        }
        if !(c.eps_high > 0.0 && c.eps_high.is_finite()) {
            return bad("learner.clip.eps_high", format!("{} must be > 0", c.eps_high));
        }
        if let Some(d) = c.dual_clip {
            if !(d > 1.0 && d.is_finite()) {
                return bad("learner.clip.dual_clip", format!("{d} must be > 1"));
            }
        }
        if !(self.kl.beta.is_finite() && self.kl.beta >= 0.0) {
            return bad("learner.kl.beta", format!("{} must be >= 0", self.kl.beta));
        }
        if self.kl.clamp.is_nan() || self.kl.clamp <= 0.0 {
            return bad("learner.kl.clamp", format!("{} must be > 0", self.kl.clamp));
        }
        match self.off_policy.correction {
            IsCorrection::Truncate { cap } if !(cap > 0.0 && cap.is_finite()) => {
                return bad("learner.off_policy.correction.cap", format!("{cap} must be > 0"));
            }
            IsCorrection::Mask { lo, hi } if !(lo >= 0.0 && lo < hi && hi.is_finite()) => {
                return bad("learner.off_policy.correction", format!("need 0 <= lo ({lo}) < hi ({hi})"));
            }
            _ => {}
        }
        let tb = self.tb;
        if !(tb.beta_start > 0.0 && tb.beta_end > 0.0 && tb.beta_start.is_finite() && tb.beta_end.is_finite())
        {
            return bad(
                "learner.tb.beta_start",
                format!("beta_start ({}) and beta_end ({}) must be > 0", tb.beta_start, tb.beta_end),
            );
        }
        if let Some(o) = self.overlong {
            if o.cache == 0 || o.cache > o.max_len {
                return bad(
                    "learner.overlong.cache",
                    format!("{} must be in 1..=max_len ({})", o.cache, o.max_len),
                );
            }
        }
        if self.sync_every == 0 {
            return bad("learner.sync_every", "must be >= 1".into());
        }
        if self.sync_every > rl.max_staleness + 1 {
            // Between publishes the workers keep the last weights while the learner moves on: at
            // version `k * sync_every - 1` their data is `sync_every - 1` versions old, which the
            // replay refuses past `max_staleness`, and no new weights come until the next step.
            return bad(
                "learner.sync_every",
                format!(
                    "{} publishes weights too rarely for rl.max_staleness = {}: need sync_every <= \
                     max_staleness + 1, or the workers' data goes stale before the next publish",
                    self.sync_every, rl.max_staleness
                ),
            );
        }
        if !(self.max_failed_fraction > 0.0 && self.max_failed_fraction <= 1.0) {
            return bad(
                "learner.max_failed_fraction",
                format!("{} must be in (0, 1]", self.max_failed_fraction),
            );
        }
        if self.keep_checkpoints == 0 {
            return bad("learner.keep_checkpoints", "must be >= 1".into());
        }
        if self.consumer.is_empty() {
            return bad("learner.consumer", "must not be empty".into());
        }
        self.optimizer.check()?;
        self.schedule.check()
    }
}
