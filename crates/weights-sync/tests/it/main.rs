//! Weight sync's integration tests, one binary (one link) for the crate: a module per subject.

mod common;
mod manifest;
mod multiprocess;
mod planner;
mod sync;
