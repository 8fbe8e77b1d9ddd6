//! Shared vocabulary of sluice: policy versions and staleness, the trajectory schema (Arrow), the
//! environment API, zenoh key expressions and session setup, metric names.
//!
//! Later work adds the run's config types here (DESIGN.md §1); only what is used today lives here.

pub mod env;
mod error;
pub mod hash;
pub mod keys;
pub mod metrics;
mod net;
pub mod trajectory;
mod version;

pub use env::{
    BoxFuture, Env, EnvError, Episode, Message, Prompt, Reward, Started, StepResult, Task, TaskSource,
    Verifier,
};
pub use error::{Error, Result};
pub use hash::{fnv1a64, splitmix64};
pub use net::{free_local_port, ZenohOptions};
pub use trajectory::{Finish, Group, GroupSpan, Sample};
pub use version::{admission_limit, is_admissible, PolicyVersion};
