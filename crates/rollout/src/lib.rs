//! Rollout workers: worker loop, batched interruptible generation scheduler, multi-turn env runner, curriculum, weight refresh.
//!
//! Built so far (issue 6, first step): [`guard`], environment calls under a timeout with panics
//! contained and counted; [`curriculum`], DUMP's UCB over task sources or fixed weights, with a
//! checkpointable state. The worker loop, scheduler and weight refresh come with the rest of
//! issue 6.

pub mod curriculum;
pub mod guard;

pub use curriculum::{Curriculum, CurriculumConfig, CurriculumState};
pub use guard::{EnvFailure, FailureCounts};
