//! sluice: asynchronous reinforcement-learning post-training for language models.
//!
//! This package is the `sluice` command line and the launcher of the roles; the library part
//! holds what the binary, its tests and examples share.

pub mod certs;
pub mod config;
pub mod env_spec;
pub mod eval;
pub mod fetch;
pub mod launch;
pub mod plot;
pub mod replay_role;
pub mod report;
pub mod roles;
pub mod tensorboard;
