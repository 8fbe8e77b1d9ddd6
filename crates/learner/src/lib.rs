//! Learner: advantages, losses (GRPO family, TB, KL, IS corrections), optimizer and schedules,
//! training loop, checkpoint/resume.
//!
//! - Objectives ([`advantages`], [`clipped_surrogate`], [`kl_per_token`], [`importance_weights`],
//!   [`tb_vargrad_loss`]) as plain tensor functions over any burn backend, each checked against an
//!   independent numpy reference (`tests/fixtures/make_objectives.py`).
//! - The optimizer ([`AdamW`], global-norm clipping, warmup + cosine/constant [`Schedule`],
//!   [`GradAccumulator`]), checked against PyTorch (`tests/fixtures/make_optim.py`).
//! - [`Trainer`]: one step on whole groups (shaping, advantages, micro-batches, off-policy
//!   correction, KL or TB against the frozen reference, the update), reporting [`StepStats`] under
//!   the names of `sluice_core::metrics`.
//! - [`Learner`]: the loop over a [`GroupSource`] (the replay over zenoh, or a shard in process):
//!   dynamic sampling, weight publishing, sealed [`checkpoint`]s with the trainer state, acks
//!   aligned with checkpoints, exact resume ([`resume_latest`]), `metrics.jsonl`.
//!
//! - [`Collective`]: data-parallel learner ranks summing what they computed through burn's
//!   collective engine, every call under a timeout.
//!
//! Configured by [`LearnerConfig`] (`deny_unknown_fields`; [`LearnerConfig::check`] names the key
//! of any out-of-range value).

mod advantages;
mod batching;
pub mod checkpoint;
mod collective;
mod config;
mod error;
mod grpo;
mod kl;
mod learner;
mod metrics_log;
mod optim;
mod source;
mod tb;
mod trainer;

pub use advantages::{advantages, group_advantages, overlong_penalty, AdvantageConfig, Estimator};
/// The all-reduce strategies of [`CollectiveConfig::strategy`].
pub use burn_collective::AllReduceStrategy;
pub use checkpoint::{
    load_checkpoint, load_optimizer, resume_latest, save_optimizer, write_checkpoint, Checkpoints, Restored,
    TrainerState,
};
pub use collective::{Collective, CollectiveConfig};
pub use config::{
    Algorithm, KlConfig, LearnerConfig, OffPolicyConfig, OffPolicyMode, OverlongConfig, TbConfig,
};
pub use error::{LearnerError, Result};
pub use grpo::{
    clip_fraction, clipped_surrogate, importance_weights, reduce, reduce_partial, BatchTotals, ClipConfig,
    IsCorrection, Reduction,
};
pub use kl::{kl_per_token, KlEstimator};
pub use learner::Learner;
pub use metrics_log::{record, MetricsLog, MetricsSink};
pub use optim::{
    first_non_finite, param_paths, AdamW, AdamWConfig, Decay, GradAccumulator, Moments, Schedule, StepReport,
};
pub use source::GroupSource;
pub use tb::tb_vargrad_loss;
pub use trainer::{StepStats, Trainer};
