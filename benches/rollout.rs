//! Rollout throughput of SmolLM2-135M-Instruct on the CPU (`benches/rollout.sh`):
//!
//! - `generate`: the baseline, the model's batched sampler alone on one batch of the same prompts
//!   (no environment, replay or zenoh);
//! - `arithmetic x1`, `arithmetic x2`: one and two rollout workers in this process (each with its
//!   own model copy), the full loop: tickets, curriculum draw, generation, verifier, append to a
//!   replay service over zenoh on loopback;
//! - `calculator 100ms x1` against `calculator 0ms x1`: the multi-turn tool env, whose every tool
//!   call sleeps 100 ms, against the same env with instant tools.
//!
//! - `swap` (alone: `-- swap`): what a mid-generation weight swap costs, every 8 decoding steps,
//!   with `swap_cache = "recompute"` (one prefill of every running row) and `"keep"` (none),
//!   against the same generation with no swap; no stop token, so every row decodes the full 64
//!   tokens in all three and the work is the same.
//!
//! Prints one JSON line per measurement and a table with samples/s, tokens/s and the ratios.
//! Alone: `cargo bench --bench rollout -- [all|arithmetic|calculator|swap]`.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::fetch::{cache_dir, known, model_path};
use sluice_core::{free_local_port, PolicyId, RlConfig, ZenohOptions};
use sluice_envs::{
    Arithmetic, ArithmeticConfig, Calculator, CalculatorConfig, CalculatorTasks, IntegerVerifier,
};
use sluice_model::{Cpu, Generator, Llama, Policy, SamplingParams};
use sluice_replay::{ClientConfig, Durability, ReplayClient, ReplayConfig, ReplayService, Shard};
use sluice_rollout::{
    CurriculumConfig, EnvSource, FixedWeights, Job, Judge, RolloutConfig, Runner, SwapCache, Versioned,
    WeightFeed, Worker, WorkerStats,
};

const G: usize = 8;
const TASKS_PER_BATCH: usize = 2;
const BATCHES: u64 = 2;

#[derive(Debug)]
struct Row {
    what: String,
    samples: u64,
    tokens: u64,
    seconds: f64,
    env_steps: u64,
    env_wait_s: f64,
}

impl Row {
    fn print(&self) {
        println!(
            "{}",
            serde_json::json!({"what": self.what, "samples": self.samples, "model_tokens": self.tokens,
                "seconds": self.seconds, "env_steps": self.env_steps, "env_wait_s": self.env_wait_s,
                "samples_per_s": self.samples as f64 / self.seconds,
                "tokens_per_s": self.tokens as f64 / self.seconds})
        );
    }
    fn samples_per_s(&self) -> f64 {
        self.samples as f64 / self.seconds
    }
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }
}

/// Groups of `G` at temperature 1, episodes of at most `budget` tokens; the replay admits
/// everything.
fn rl(budget: usize) -> RlConfig {
    RlConfig {
        group_size: G,
        groups_per_step: 1_000_000,
        max_staleness: 1_000_000,
        temperature: 1.0,
        max_completion_tokens: budget,
    }
}

fn arithmetic_cfg() -> RolloutConfig {
    RolloutConfig {
        tasks_per_batch: TASKS_PER_BATCH,
        max_new_tokens: 64,
        curriculum: CurriculumConfig::Fixed { weights: vec![1.0] },
        ..Default::default()
    }
}

/// Every response opens a tool call (`<calc>` ends the prompt), so each episode makes at least one
/// call: SmolLM2-135M does not open one by itself.
fn calculator_cfg() -> RolloutConfig {
    RolloutConfig { max_new_tokens: 48, max_turns: 3, response_prefix: "<calc>".into(), ..arithmetic_cfg() }
}

fn arithmetic_source(seed: u64) -> EnvSource {
    let tasks = Arithmetic::new(ArithmeticConfig { seed, ..Default::default() }).unwrap();
    EnvSource {
        tasks: Box::new(tasks),
        judge: Judge::Verifier(Arc::new(IntegerVerifier { format_weight: 0.1 })),
        stop_strings: vec![],
    }
}

fn calculator_source(seed: u64, latency_ms: u64) -> EnvSource {
    let tasks = CalculatorTasks::new(ArithmeticConfig { seed, ..CalculatorTasks::default_config() }).unwrap();
    let env = Calculator::new(CalculatorConfig { tool_latency_ms: latency_ms, ..Default::default() });
    EnvSource {
        tasks: Box::new(tasks),
        judge: Judge::Env(Arc::new(env)),
        stop_strings: vec!["</calc>".into()],
    }
}

/// `workers` workers, each rolling out `BATCHES` batches from its own `source(i)`, appending to one
/// replay service; wall time from start to the last append.
async fn workers(
    what: &str,
    policy: &Policy<Cpu>,
    cfg: RolloutConfig,
    rl: RlConfig,
    n: usize,
    source: impl Fn(u64) -> EnvSource,
) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let server = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
    let client = ZenohOptions::connect_to(ep).open().await.unwrap();
    let rcfg = ReplayConfig { durability: Durability::GroupCommit { interval_ms: 5 }, ..Default::default() };
    let shard = Arc::new(Shard::open(dir.path().join("replay"), 0, rcfg, rl).unwrap());
    let service = ReplayService::start(&server, "bench", shard.clone()).await.unwrap();
    let mut handles = Vec::new();
    let t0 = Instant::now();
    for i in 0..n {
        let name = format!("w{i}");
        let cfg = RolloutConfig { seed: i as u64, ..cfg.clone() };
        let runner =
            Runner::new("bench", &name, cfg, rl, policy.tokenizer.clone(), policy.stop_token_ids()).unwrap();
        let replay = ReplayClient::new(client.clone(), ClientConfig::new("bench", 1)).unwrap();
        let mut w = Worker::new(
            client.clone(),
            replay,
            &name,
            runner,
            policy.model.clone(),
            PolicyId::default(),
            vec![source(i as u64)],
        )
        .unwrap();
        let groups = BATCHES * TASKS_PER_BATCH as u64;
        handles.push(tokio::spawn(async move { w.run(Some(groups)).await.unwrap() }));
    }
    let mut stats: Vec<WorkerStats> = Vec::new();
    for h in handles {
        stats.push(h.await.unwrap());
    }
    let seconds = t0.elapsed().as_secs_f64();
    assert_eq!(shard.stats().groups, n as u64 * BATCHES * TASKS_PER_BATCH as u64);
    service.stop();
    let failures: u64 = stats.iter().map(|s| s.env_timeouts + s.env_panics + s.env_errors).sum();
    assert_eq!(failures, 0, "{what}: environment failures");
    Row {
        what: what.into(),
        samples: stats.iter().map(|s| s.rollout.samples).sum(),
        tokens: stats.iter().map(|s| s.rollout.model_tokens).sum(),
        seconds,
        env_steps: stats.iter().map(|s| s.rollout.env_steps).sum(),
        env_wait_s: stats.iter().map(|s| s.rollout.env_wait_s).sum(),
    }
}

/// The sampler alone on one batch of arithmetic prompts, `BATCHES` times.
fn generate_baseline(policy: &Policy<Cpu>) -> Row {
    let cfg = arithmetic_cfg();
    let runner = Runner::new("bench", "base", cfg.clone(), rl(64), policy.tokenizer.clone(), vec![]).unwrap();
    let mut src = arithmetic_source(0);
    let mut prompts = Vec::new();
    for _ in 0..TASKS_PER_BATCH {
        let t = src.tasks.next_task().unwrap();
        let p = runner.prompt_tokens(&t).unwrap();
        prompts.extend(std::iter::repeat_n(p, G));
    }
    let params = SamplingParams {
        temperature: rl(64).temperature,
        max_new_tokens: cfg.max_new_tokens,
        stop_token_ids: policy.stop_token_ids(),
        ..Default::default()
    };
    let (mut samples, mut tokens) = (0, 0);
    let t0 = Instant::now();
    for b in 0..BATCHES {
        let params = SamplingParams { seed: b, ..params.clone() };
        let out = Generator::new(&policy.model, &prompts, &params, None).unwrap().run(&policy.model).unwrap();
        samples += out.len() as u64;
        tokens += out.iter().map(|c| c.tokens.len() as u64).sum::<u64>();
    }
    let seconds = t0.elapsed().as_secs_f64();
    Row { what: "generate (baseline)".into(), samples, tokens, seconds, env_steps: 0, env_wait_s: 0.0 }
}

/// Hands out the same weights as a new version every `every` decoding steps: a swap costs the
/// same whatever the weights are.
struct EverySteps {
    model: Llama<Cpu>,
    every: usize,
    calls: usize,
}

impl WeightFeed<Cpu> for EverySteps {
    fn newer(
        &mut self,
        current: PolicyId,
        _same_epoch: bool,
    ) -> sluice_rollout::Result<Option<Versioned<Cpu>>> {
        self.calls += 1;
        if !self.calls.is_multiple_of(self.every) {
            return Ok(None);
        }
        Ok(Some(Versioned { model: self.model.clone(), version: current.version + 1, epoch: current.epoch }))
    }
}

/// `BATCHES` batches of arithmetic rolled out by one runner, with a swap every 8 decoding steps
/// handled by `swap`, or none.
async fn swaps(policy: &Policy<Cpu>, swap: Option<SwapCache>) -> Row {
    let cfg = RolloutConfig {
        partial_rollout: swap.is_some(),
        swap_cache: swap.unwrap_or_default(),
        ..arithmetic_cfg()
    };
    let what = match swap {
        None => "no swap".to_string(),
        Some(SwapCache::Recompute) => "swap every 8 steps, recompute".to_string(),
        Some(SwapCache::Keep) => "swap every 8 steps, keep".to_string(),
    };
    // No stop token: every row decodes all 64 tokens, whatever the weights sample.
    let mut runner = Runner::new("bench", "swap", cfg, rl(64), policy.tokenizer.clone(), vec![]).unwrap();
    let mut src = arithmetic_source(0);
    let t0 = Instant::now();
    for _ in 0..BATCHES {
        let jobs: Vec<Job> = (0..TASKS_PER_BATCH)
            .map(|_| Job {
                task: src.tasks.next_task().unwrap(),
                judge: src.judge.clone(),
                stop_strings: vec![],
            })
            .collect();
        let mut current = Versioned { model: policy.model.clone(), version: 0, epoch: 0 };
        let groups = match swap {
            Some(_) => {
                let mut feed = EverySteps { model: policy.model.clone(), every: 8, calls: 0 };
                runner.run(&mut current, &mut feed, &jobs).await
            }
            None => runner.run(&mut current, &mut FixedWeights, &jobs).await,
        };
        assert_eq!(groups.unwrap().len(), TASKS_PER_BATCH);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let s = runner.stats();
    assert_eq!(s.model_tokens, s.samples * 64, "every row decoded its 64 tokens");
    println!(
        "{}",
        serde_json::json!({"what": what, "swaps": s.mid_generation_swaps, "recompute_s": s.swap_recompute_s})
    );
    Row { what, samples: s.samples, tokens: s.model_tokens, seconds, env_steps: 0, env_wait_s: 0.0 }
}

fn main() -> std::process::ExitCode {
    sluice_model::keep_freed_memory(); // as the `sluice` binary does
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| "all".into());
    let gguf = model_path(&cache_dir().unwrap(), known("smollm2-135m-instruct").unwrap());
    if !gguf.is_file() {
        eprintln!("run `sluice model fetch smollm2-135m-instruct` first");
        return std::process::ExitCode::from(2);
    }
    let policy = Policy::<Cpu>::load(&gguf, &Default::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if which == "swap" {
        // Two rounds, alternating, so a drift of the machine shows as spread rather than bias.
        let mut rows = Vec::new();
        for _ in 0..2 {
            for swap in [None, Some(SwapCache::Recompute), Some(SwapCache::Keep)] {
                let r = rt.block_on(swaps(&policy, swap));
                r.print();
                rows.push(r);
            }
        }
        println!("\n| measurement | samples | model tokens | seconds | tokens/s | ratio to no swap |");
        println!("|---|---|---|---|---|---|");
        for round in rows.chunks(3) {
            for r in round {
                println!(
                    "| {} | {} | {} | {:.1} | {:.1} | {:.2}x |",
                    r.what,
                    r.samples,
                    r.tokens,
                    r.seconds,
                    r.tokens_per_s(),
                    r.tokens_per_s() / round[0].tokens_per_s()
                );
            }
        }
        return std::process::ExitCode::SUCCESS;
    }
    let base = generate_baseline(&policy);
    base.print();
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        let arithmetic =
            if which == "calculator" { vec![] } else { vec![("arithmetic x1", 1), ("arithmetic x2", 2)] };
        for (what, n) in arithmetic {
            let r = workers(what, &policy, arithmetic_cfg(), rl(64), n, arithmetic_source).await;
            r.print();
            rows.push(r);
        }
        let calculator = if which == "arithmetic" {
            vec![]
        } else {
            vec![("calculator 0ms x1", 0), ("calculator 100ms x1", 100)]
        };
        for (what, ms) in calculator {
            let r = workers(what, &policy, calculator_cfg(), rl(160), 1, |i| calculator_source(i, ms)).await;
            r.print();
            rows.push(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rows
    });
    let ratio = |a: &Row, b: &Row| a.samples_per_s() / b.samples_per_s();
    println!("\n| measurement | samples | model tokens | env steps | env wait s | seconds | samples/s | tokens/s | samples/s ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let line = |r: &Row, ratio: String| {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.1} | {} |",
            r.what,
            r.samples,
            r.tokens,
            r.env_steps,
            r.env_wait_s,
            r.seconds,
            r.samples_per_s(),
            r.tokens_per_s(),
            ratio
        )
    };
    line(&base, "1.00x (baseline)".into());
    let find = |w: &str| rows.iter().find(|r| r.what == w);
    if let (Some(x1), Some(x2)) = (find("arithmetic x1"), find("arithmetic x2")) {
        line(x1, format!("{:.2}x of generate", ratio(x1, &base)));
        line(x2, format!("{:.2}x of x1", ratio(x2, x1)));
    }
    if let (Some(c0), Some(c100)) = (find("calculator 0ms x1"), find("calculator 100ms x1")) {
        line(c0, format!("{:.2}x of generate", ratio(c0, &base)));
        line(c100, format!("{:.2}x of 0ms", ratio(c100, c0)));
    }
    std::process::ExitCode::SUCCESS
}
