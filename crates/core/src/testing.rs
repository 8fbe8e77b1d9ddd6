//! Builders of valid trajectories for tests and benchmarks: one [`sample`] with every column
//! consistent (mask, log-probs and versions as long as the completion), changed field by field with
//! struct update syntax, and [`group`] around them.
//!
//! ```
//! use sluice_core::testing::{group, sample};
//! use sluice_core::Sample;
//!
//! let g = group(7, (0..4).map(|i| Sample { reward: i as f32, ..sample(7, i, 0, vec![5, 6]) }));
//! assert_eq!((g.samples.len(), g.samples[3].reward), (4, 3.0));
//! sluice_core::trajectory::groups_to_batch(&[g]).unwrap();
//! ```

use crate::trajectory::{Finish, Group, Sample};

/// Sample `sample_idx` of group `group_id`, drawn at `version`: prompt `[1, 2, 3]`, the given
/// completion (every token trained, log-prob -0.5, produced at `version`), reward 0, finished by a
/// stop token after one turn, task `task-{group_id}` of source `test`.
pub fn sample(group_id: u64, sample_idx: u16, version: u64, completion: Vec<u32>) -> Sample {
    let n = completion.len();
    Sample {
        run_id: "test".into(),
        group_id,
        sample_idx,
        task_id: format!("task-{group_id}"),
        source: "test".into(),
        prompt_tokens: vec![1, 2, 3],
        completion_tokens: completion,
        loss_mask: vec![1; n],
        behavior_logprobs: vec![-0.5; n],
        token_versions: vec![version; n],
        behavior_version: version,
        behavior_epoch: 0,
        reward: 0.0,
        reward_parts: Default::default(),
        finish: Finish::Stop,
        num_turns: 1,
        created_at_us: 0,
    }
}

/// The group `group_id` of `samples` (in `sample_idx` order).
pub fn group(group_id: u64, samples: impl IntoIterator<Item = Sample>) -> Group {
    Group { group_id, samples: samples.into_iter().collect() }
}
