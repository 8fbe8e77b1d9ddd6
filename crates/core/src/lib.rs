//! Shared vocabulary of sluice: policy versions and the staleness rules every role applies.
//!
//! Later work adds the trajectory schema, environment traits, config types, key expressions and
//! metric names here (DESIGN.md §1); only what is used today lives here.

mod version;

pub use version::{admission_limit, is_admissible, PolicyVersion};
