//! Builders shared by the crate's unit tests.

use sluice_core::testing::{group, sample};
use sluice_core::{Group, Sample};

/// A group of two samples (rewards 0 and 1) with one-token completions at `version`.
pub(crate) fn two_sample_group(group_id: u64, version: u64) -> Group {
    group(group_id, (0..2u16).map(|i| Sample { reward: i as f32, ..sample(group_id, i, version, vec![2]) }))
}
