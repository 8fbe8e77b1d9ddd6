//! Shared vocabulary of sluice: the settings every role agrees on, policy versions and staleness,
//! the trajectory schema (Arrow), the environment API, zenoh key expressions and session setup
//! (mutual TLS, access control by role), metric names.

pub mod env;
mod error;
pub mod hash;
pub mod keys;
pub mod metrics;
mod net;
pub mod security;
mod settings;
pub mod testing;
pub mod trajectory;
mod version;

pub use env::{
    BoxFuture, Env, EnvError, Episode, Message, Prompt, Reward, Started, StepResult, Task, TaskSource,
    Verifier,
};
pub use error::{Error, Result};
pub use hash::{fnv1a64, splitmix64};
pub use net::{free_local_port, ZenohOptions};
pub use security::Security;
pub use settings::RlConfig;
pub use trajectory::{zero_variance, Finish, Group, GroupSpan, Sample};
pub use version::{admission_limit, Lineage, PolicyId, PolicyVersion};
