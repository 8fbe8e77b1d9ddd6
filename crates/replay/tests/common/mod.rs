//! Builders of trajectory groups for the replay tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use sluice_core::testing::sample;
use sluice_core::{Group, Sample};

/// A group of `rewards.len()` samples at `version`, each with a `len`-token completion whose
/// tokens are derived from the group id and sample index (distinct completions).
pub fn group(group_id: u64, version: u64, rewards: &[f32], len: usize) -> Group {
    let samples = rewards.iter().enumerate().map(|(i, &reward)| {
        let tokens = (0..len).map(|t| (group_id as u32).wrapping_mul(31) ^ (i * 7 + t) as u32).collect();
        Sample {
            prompt_tokens: vec![1, 2, 3, (group_id % 1000) as u32],
            behavior_logprobs: (0..len).map(|t| -0.1 - t as f32 * 0.01).collect(),
            reward,
            reward_parts: BTreeMap::from([("correct".to_string(), reward)]),
            created_at_us: 1_700_000_000_000_000 + group_id as i64,
            ..sample(group_id, i as u16, version, tokens)
        }
    });
    sluice_core::testing::group(group_id, samples)
}

/// Groups `ids` at `version`, rewards 0/1 alternating (non-zero variance), 4 samples, 8 tokens.
pub fn groups(ids: std::ops::Range<u64>, version: u64) -> Vec<Group> {
    ids.map(|id| group(id, version, &[0.0, 1.0, 0.0, 1.0], 8)).collect()
}
