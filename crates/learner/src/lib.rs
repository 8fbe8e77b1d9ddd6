//! Learner: advantages, losses (GRPO family, TB, KL, IS corrections), optimizer and schedules,
//! training loop, checkpoint/resume.
//!
//! Built so far: the objectives, as plain tensor functions over any burn backend, each checked
//! against an independent numpy reference (`tests/fixtures/make_objectives.py`). The optimizer,
//! the loop and checkpoints come with the rest of issue 5.

mod advantages;
mod error;
mod grpo;
mod kl;
mod tb;

pub use advantages::{advantages, overlong_penalty, zero_variance, AdvantageConfig, Estimator};
pub use error::{LearnerError, Result};
pub use grpo::{
    clip_fraction, clipped_surrogate, importance_weights, reduce, ClipConfig, IsCorrection, Reduction,
};
pub use kl::{kl_per_token, KlEstimator};
pub use tb::tb_vargrad_loss;
