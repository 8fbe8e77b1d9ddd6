//! sluice: asynchronous reinforcement-learning post-training for language models.
//!
//! This package is the `sluice` command line and the launcher of the roles; the library part
//! holds what the binary, its tests and examples share.

pub mod fetch;
pub mod replay_role;
