//! Data-parallel learner step: one learner training a step's groups against two learner rank
//! processes training half each (`Trainer::train_shard`, gradients summed through burn's
//! collective engine), same model, same groups, same settings, in one command. Reports the
//! median seconds per step of each and the share of a rank's step spent in all-reduces.
//!
//! `cargo bench --bench dp -- [tiny|smollm2|all]` (SmolLM2 after `sluice model fetch
//! smollm2-135m-instruct`). Prints one JSON object per measurement on stdout. On 2 cores the two
//! ranks share the cores one learner had, so no speed-up is expected: the figure is the cost of
//! the collective.

#![allow(clippy::unwrap_used)] // a benchmark fails loudly
#![allow(clippy::disallowed_methods)] // a plain main thread: blocking waits are right

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::fetch::{cache_dir, known, model_path};
use sluice_core::testing::{group, sample};
use sluice_core::{free_local_port, metrics, Finish, Group, RlConfig, Sample};
use sluice_learner::{
    AdamW, AllReduceStrategy, Collective, CollectiveConfig, KlConfig, LearnerConfig, Schedule, Trainer,
};
use sluice_model::{CpuAutodiff, Llama, ModelConfig, Policy};

const G: usize = 4;

/// The step's shape for each model: groups, prompt and completion tokens, steps timed.
fn shape(model: &str) -> (usize, usize, usize, usize) {
    match model {
        "tiny" => (16, 32, 32, 5),
        _ => (4, 32, 32, 3),
    }
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

fn groups(vocab: u32, n: usize, prompt: usize, completion: usize) -> Vec<Group> {
    let mut t = Tokens(1);
    (0..n as u64)
        .map(|group_id| {
            let p: Vec<u32> = (0..prompt).map(|_| t.next(vocab)).collect();
            let samples = (0..G).map(|i| Sample {
                prompt_tokens: p.clone(),
                behavior_logprobs: vec![-9.0; completion],
                reward: (i % 2) as f32,
                finish: Finish::Length,
                ..sample(group_id, i as u16, 0, (0..completion).map(|_| t.next(vocab)).collect())
            });
            group(group_id, samples)
        })
        .collect()
}

fn load(model: &str) -> Llama<CpuAutodiff> {
    if model == "tiny" {
        return Llama::random(&ModelConfig::bench_llama(8192, vec![]), 0, &Default::default());
    }
    let gguf = model_path(&cache_dir().unwrap(), known("smollm2-135m-instruct").unwrap());
    assert!(gguf.is_file(), "run `sluice model fetch smollm2-135m-instruct` first");
    Policy::<CpuAutodiff>::load(&gguf, &Default::default()).unwrap().model
}

fn trainer(model: Llama<CpuAutodiff>, groups: usize) -> Trainer<CpuAutodiff> {
    let rl = RlConfig { group_size: G, groups_per_step: groups, max_staleness: 1, ..Default::default() };
    let cfg = LearnerConfig {
        kl: KlConfig { beta: 0.0, ..Default::default() },
        schedule: Schedule::constant(1e-5),
        ..Default::default()
    };
    Trainer::new(cfg, rl, model, None, AdamW::new(Default::default())).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One rank process: `--rank R ORCHESTRATOR_PORT DATA_PORT MODEL`.
fn rank(args: &[String]) {
    let (rank, model): (u32, &str) = (args[0].parse().unwrap(), &args[3]);
    let cfg = CollectiveConfig {
        rank,
        world_size: 2,
        orchestrator_host: "127.0.0.1".into(),
        orchestrator_port: args[1].parse().unwrap(),
        host: "127.0.0.1".into(),
        data_port: args[2].parse().unwrap(),
        timeout: Duration::from_secs(600),
        strategy: AllReduceStrategy::Ring,
    };
    let collective = Collective::<sluice_model::Cpu>::join(cfg, Default::default()).unwrap();
    let policy = load(model);
    let vocab = policy.config().vocab_size as u32;
    let (n, prompt, completion, steps) = shape(model);
    let mine: Vec<Group> =
        groups(vocab, n, prompt, completion).into_iter().skip(rank as usize).step_by(2).collect();
    let mut t = trainer(policy, n);
    let (mut secs, mut reduce) = (Vec::new(), Vec::new());
    for _ in 0..steps + 1 {
        let t0 = Instant::now();
        let stats = t.train_shard(&mine, &collective).unwrap();
        secs.push(t0.elapsed().as_secs_f64());
        reduce.push(stats.get(metrics::ALL_REDUCE_S).unwrap());
    }
    // The first step warms up (allocations, the first connections): left out.
    let line = serde_json::json!({"model": model, "ranks": 2, "rank": rank,
        "seconds_per_step": median(secs[1..].to_vec()), "all_reduce_s": median(reduce[1..].to_vec())});
    println!("{line}");
    t.check_same_weights(&collective).unwrap();
}

fn main() {
    sluice_model::keep_freed_memory(); // as the `sluice` binary does
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--rank") {
        return rank(&args[1..]);
    }
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let models: Vec<&str> = match which.as_str() {
        "all" => vec!["tiny", "smollm2"],
        m => vec![if m == "smollm2" { "smollm2" } else { "tiny" }],
    };
    for model in models {
        // One learner on the whole step, in this process.
        let policy = load(model);
        let vocab = policy.config().vocab_size as u32;
        let (n, prompt, completion, steps) = shape(model);
        let data = groups(vocab, n, prompt, completion);
        let mut t = trainer(policy, n);
        let mut secs = Vec::new();
        for _ in 0..steps + 1 {
            let t0 = Instant::now();
            t.train(&data).unwrap();
            secs.push(t0.elapsed().as_secs_f64());
        }
        let one = median(secs[1..].to_vec());
        println!("{}", serde_json::json!({"model": model, "ranks": 1, "seconds_per_step": one}));
        drop(t);
        // Two rank processes, half the groups each.
        let orchestrator = free_local_port().unwrap().to_string();
        let children: Vec<_> = (0..2)
            .map(|r| {
                Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--rank",
                        &r.to_string(),
                        &orchestrator,
                        &free_local_port().unwrap().to_string(),
                        model,
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut rows = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a rank failed: {}", String::from_utf8_lossy(&out.stdout));
            let line = String::from_utf8(out.stdout).unwrap();
            let row: serde_json::Value =
                serde_json::from_str(line.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
            println!("{row}");
            rows.push(row);
        }
        let two = rows.iter().map(|r| r["seconds_per_step"].as_f64().unwrap()).fold(0.0, f64::max);
        let share = rows
            .iter()
            .map(|r| r["all_reduce_s"].as_f64().unwrap() / r["seconds_per_step"].as_f64().unwrap());
        let share = share.fold(0.0, f64::max);
        println!(
            "{}",
            serde_json::json!({"model": model, "summary": true, "one_rank_s": one, "two_ranks_s": two,
                "two_over_one": two / one, "all_reduce_share": share})
        );
    }
}
