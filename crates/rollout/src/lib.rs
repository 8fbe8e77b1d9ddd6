//! Rollout workers: worker loop, batched interruptible generation scheduler, multi-turn env runner, curriculum, weight refresh.
//!
//! - [`runner`]: a batch of tasks -> scored groups: batched generation with weights swapped between
//!   decoding steps (`token_versions` records it), multi-turn episodes token in / token out,
//!   verifiers, every env call guarded.
//! - [`worker`]: the loop around it: staleness gate, admission tickets, curriculum draw, append
//!   with retry, liveliness token.
//! - [`guard`]: environment calls under a timeout with panics contained and counted.
//! - [`curriculum`]: DUMP's UCB over task sources or fixed weights, with a checkpointable state.
//! - [`config`]: the worker's settings.

pub mod config;
pub mod curriculum;
pub mod error;
pub mod guard;
pub mod runner;
pub mod worker;

pub use config::{RolloutConfig, SwapCache};
pub use curriculum::{Curriculum, CurriculumConfig, CurriculumState};
pub use error::{Result, RolloutError};
pub use guard::{EnvFailure, FailureCounts};
pub use runner::{EnvSource, FixedWeights, Job, Judge, Runner, RunnerStats, Versioned, WeightFeed};
pub use worker::{abs_advantages, llama_from_weights, SubscriberFeed, Worker, WorkerStats};
