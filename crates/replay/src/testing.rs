//! Builders shared by the crate's unit tests.

/// A group of two samples (rewards 0 and 1) with one-token completions at `version`.
pub(crate) fn two_sample_group(group_id: u64, version: u64) -> sluice_core::Group {
    sluice_core::Group {
        group_id,
        samples: (0..2u16)
            .map(|i| sluice_core::Sample {
                run_id: "r".into(),
                group_id,
                sample_idx: i,
                task_id: "t".into(),
                source: "s".into(),
                prompt_tokens: vec![1],
                completion_tokens: vec![2],
                loss_mask: vec![1],
                behavior_logprobs: vec![-1.0],
                token_versions: vec![version],
                behavior_version: version,
                reward: i as f32,
                reward_parts: Default::default(),
                finish: sluice_core::Finish::Stop,
                num_turns: 1,
                created_at_us: 0,
            })
            .collect(),
    }
}
