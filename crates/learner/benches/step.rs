//! Learner step time: one GRPO step (forward at the completion positions, clipped surrogate,
//! optional k3 KL to a frozen reference, backward, global-norm clipping, AdamW) on 64 completions
//! of 32 tokens for the 4-layer hidden-256 Llama of the model benchmark.
//!
//! Run through `benches/learner.sh`, which runs `benches/learner_torch.py` on the same weights and
//! shapes in the same command and prints the ratios. Alone:
//! `cargo bench -p sluice-learner --bench step -- DIR` (DIR receives the weights).
//! Prints one JSON object per measurement on stdout.

#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use sluice_core::testing::{group, sample};
use sluice_core::{Finish, Group, RlConfig, Sample};
use sluice_learner::{AdamW, AdamWConfig, KlConfig, LearnerConfig, Schedule, Trainer};
use sluice_model::{save_model, CpuAutodiff, Llama, ModelConfig};

const GROUPS: usize = 16;
const G: usize = 4;
const PROMPT: usize = 32;
const COMPLETION: usize = 32;
const ITERS: usize = 5;

fn tiny_config() -> ModelConfig {
    ModelConfig::bench_llama(8192, vec![])
}

/// A splitmix64 stream: the same tokens on every run without a dependency.
struct Tokens(u64);

impl Tokens {
    fn next(&mut self, vocab: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        3 + ((z ^ (z >> 31)) % (vocab as u64 - 3)) as u32
    }
}

fn groups(vocab: u32) -> Vec<Group> {
    let mut t = Tokens(1);
    (0..GROUPS as u64)
        .map(|group_id| {
            let prompt: Vec<u32> = (0..PROMPT).map(|_| t.next(vocab)).collect();
            let samples = (0..G).map(|i| Sample {
                prompt_tokens: prompt.clone(),
                behavior_logprobs: vec![-9.0; COMPLETION],
                reward: (i % 2) as f32,
                finish: Finish::Length,
                ..sample(group_id, i as u16, 0, (0..COMPLETION).map(|_| t.next(vocab)).collect())
            });
            group(group_id, samples)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    sluice_model::keep_freed_memory(); // as the `sluice` binary does
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench/learner-llama"));
    let cfg = tiny_config();
    let model = Llama::<CpuAutodiff>::random(&cfg, 0, &Default::default());
    save_model(&model, &dir).unwrap();
    let data = groups(cfg.vocab_size as u32);
    for beta in [0.0f64, 0.04] {
        let rl = RlConfig {
            group_size: G,
            groups_per_step: GROUPS,
            max_staleness: 0,
            temperature: 1.0,
            ..RlConfig::default()
        };
        let learner = LearnerConfig {
            log_entropy: false,
            kl: KlConfig { beta: beta as f32, ..Default::default() },
            optimizer: AdamWConfig { weight_decay: 0.01, ..Default::default() },
            schedule: Schedule::constant(1e-6),
            ..Default::default()
        };
        let reference = (beta > 0.0).then(|| model.valid());
        let mut trainer =
            Trainer::new(learner, rl, model.clone(), reference, AdamW::new(Default::default())).unwrap();
        trainer.train(&data).unwrap(); // warm-up (and the optimizer's state allocation)
        let times: Vec<f64> = (0..ITERS)
            .map(|_| {
                let t = Instant::now();
                trainer.train(&data).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        let secs = median(times);
        println!(
            "{}",
            serde_json::json!({"impl": "sluice", "beta": beta, "completions": GROUPS * G, "prompt": PROMPT,
                "completion": COMPLETION, "seconds": secs})
        );
    }
}
