//! Rollout workers: worker loop, batched interruptible generation scheduler, multi-turn env runner, curriculum, weight refresh.
//!
//! Built so far (issue 6, first step): [`guard`], environment calls under a timeout with panics
//! contained and counted. The worker loop, scheduler, curriculum and weight refresh come with the
//! rest of issue 6.

pub mod guard;

pub use guard::{EnvFailure, FailureCounts};
