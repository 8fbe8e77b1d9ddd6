//! The learner's integration tests, one binary (one link) for the crate: a module per subject.

mod checkpoint;
mod collective;
mod common;
mod gradcheck;
mod objectives;
mod optim;
mod train;
