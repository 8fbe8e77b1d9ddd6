//! Learner: advantages, losses (GRPO family, TB, KL, IS corrections), optimizer and schedules,
//! training loop, checkpoint/resume.
//!
//! Built so far: the objectives, as plain tensor functions over any burn backend, each checked
//! against an independent numpy reference (`tests/fixtures/make_objectives.py`), and the
//! optimizer (AdamW, global-norm clipping, warmup + cosine/constant schedule, gradient
//! accumulation), checked against PyTorch (`tests/fixtures/make_optim.py`), and sealed
//! [`checkpoint`]s (temporary directory, xxh3 seal, rename, prune; corrupt ones skipped) with the
//! optimizer state as safetensors. The loop, the trainer state and resume come with the rest of
//! issue 5.

mod advantages;
pub mod checkpoint;
mod config;
mod error;
mod grpo;
mod kl;
mod learner;
mod optim;
mod tb;
mod trainer;

pub use advantages::{advantages, overlong_penalty, zero_variance, AdvantageConfig, Estimator};
pub use checkpoint::{load_optimizer, save_optimizer, Checkpoints};
pub use config::{
    Algorithm, KlConfig, LearnerConfig, OffPolicyConfig, OffPolicyMode, OverlongConfig, TbConfig,
};
pub use error::{LearnerError, Result};
pub use grpo::{
    clip_fraction, clipped_surrogate, importance_weights, reduce, reduce_partial, BatchTotals, ClipConfig,
    IsCorrection, Reduction,
};
pub use kl::{kl_per_token, KlEstimator};
pub use learner::{load_checkpoint, record, GroupSource, Learner, MetricsLog, Restored, TrainerState};
pub use optim::{param_paths, AdamW, AdamWConfig, Decay, GradAccumulator, Moments, Schedule, StepReport};
pub use tb::tb_vargrad_loss;
pub use trainer::{StepStats, Trainer};
