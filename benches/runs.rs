//! Whole runs of `sluice run` (the release binary, as a user starts it), timed from the run's own
//! `metrics.jsonl` (`time/wall_s` on every learner step):
//!
//! - `grpo` (`benches/trl.sh`, the sluice side of the TRL comparison): writes the tiny Llama
//!   (4 layers, hidden 256) with a char-level tokenizer to `target/bench/grpo-llama` (the TRL
//!   script loads the same directory), then runs GRPO on bare `a+b=` questions, 8 prompts x 8
//!   completions x at most 32 new tokens per step, beta 0 and 0.04, synchronous
//!   (`max_staleness = 0`, the shape of TRL's loop) and asynchronous (`max_staleness = 2`).
//!   Steps/s is taken over the steps after the first `WARMUP`.
//! - `async` (`benches/async.sh`): SmolLM2-135M-Instruct on `calculator` with 100 ms tool calls
//!   and on `arithmetic`, `max_staleness = 4` against `max_staleness = 0`, the same number of
//!   trained samples; the wall clock of the last step, the mean reward over all steps, and the
//!   mean wait for a batch and learner step (from which `benches/async.sh` bounds the ratio).
//!
//! Prints one JSON line per run. `cargo bench --bench runs -- grpo STEPS` or `-- async STEPS`.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sluice_model::{Cpu, Llama, ModelConfig, Tokenizer};

/// Learner steps left out of the grpo timing (model load, first generation, first publish).
const WARMUP: usize = 2;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench")
}

/// The tiny Llama of the model and learner benchmarks, over the characters of `a+b=` questions.
fn write_char_llama(dir: &Path) {
    let tok = Tokenizer::char_level("0123456789+-*=").unwrap();
    let cfg = ModelConfig::bench_llama(tok.vocab_size(), vec![tok.eos_token_id().unwrap()]);
    let model = Llama::<Cpu>::random(&cfg, 11, &Default::default());
    sluice_model::save_model(&model, dir).unwrap();
    tok.save(dir).unwrap();
}

/// Runs `sluice run` on `config` (a fresh run directory `dir`) and returns its learner steps.
fn run(dir: &Path, config: &str) -> Vec<Value> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("run.toml");
    std::fs::write(&path, config).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success(), "sluice run {} failed: {status}", path.display());
    let text = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["role"] == "learner" && r.get("event").is_none())
        .collect()
}

fn field(r: &Value, key: &str) -> f64 {
    r[key].as_f64().unwrap_or_else(|| panic!("no {key} in {r}"))
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn grpo(steps: usize) {
    let model = bench_dir().join("grpo-llama");
    write_char_llama(&model);
    for beta in [0.0, 0.04] {
        for staleness in [0, 2] {
            let dir = bench_dir().join(format!("grpo-run-{beta}-{staleness}"));
            let config = format!(
                r#"
[run]
name = "grpo-bench"
dir = "{run}"
[model]
path = "{model}"
[[envs]]
name = "arithmetic"
style = "bare"
ops = ["+"]
[rl]
group_size = 8
groups_per_step = 8
max_staleness = {staleness}
temperature = 1.0
max_completion_tokens = 32
[learner]
total_steps = {steps}
checkpoint_every = 0
drop_zero_variance = false
log_entropy = true
[learner.kl]
beta = {beta}
[learner.schedule]
lr = 1e-5
[rollout]
tasks_per_batch = 8
max_new_tokens = 32
chat_template = false
"#,
                run = dir.join("run").display(),
                model = model.display(),
            );
            let recs = run(&dir, &config);
            assert_eq!(recs.len(), steps, "learner steps of {}", dir.display());
            let (a, b) = (field(&recs[WARMUP - 1], "time/wall_s"), field(&recs[steps - 1], "time/wall_s"));
            let samples = mean(recs[WARMUP..].iter().map(|r| field(r, "data/samples")));
            println!(
                "{}",
                json!({"impl": "sluice", "beta": beta, "max_staleness": staleness,
                    "steps_timed": steps - WARMUP, "seconds": b - a,
                    "steps_per_s": (steps - WARMUP) as f64 / (b - a), "samples_per_step": samples,
                    "reward_mean": mean(recs.iter().map(|r| field(r, "reward/mean")))})
            );
        }
    }
}

fn async_vs_sync(steps: usize) {
    let envs = [
        (
            "calculator",
            "name = \"calculator\"\n[envs.tool]\ntool_latency_ms = 100\n",
            "max_new_tokens = 48\nmax_turns = 3\nresponse_prefix = \"<calc>\"\n",
            160,
        ),
        ("arithmetic", "name = \"arithmetic\"\n", "max_new_tokens = 48\n", 48),
    ];
    for (env, env_toml, rollout_toml, budget) in envs {
        for staleness in [4, 0] {
            let dir = bench_dir().join(format!("async-run-{env}-{staleness}"));
            let config = format!(
                r#"
[run]
name = "async-bench"
dir = "{run}"
[model]
path = "smollm2-135m-instruct"
[[envs]]
{env_toml}
[rl]
group_size = 8
groups_per_step = 2
max_staleness = {staleness}
temperature = 1.0
max_completion_tokens = {budget}
[learner]
total_steps = {steps}
checkpoint_every = 0
drop_zero_variance = false
log_entropy = true
[learner.schedule]
lr = 1e-5
[rollout]
tasks_per_batch = 2
{rollout_toml}
"#,
                run = dir.join("run").display(),
            );
            let recs = run(&dir, &config);
            assert_eq!(recs.len(), steps, "learner steps of {}", dir.display());
            let last = recs.last().unwrap();
            println!(
                "{}",
                json!({"env": env, "max_staleness": staleness, "steps": steps,
                    "samples": recs.iter().map(|r| field(r, "data/samples")).sum::<f64>(),
                    "seconds": field(last, "time/wall_s"),
                    "reward_mean": mean(recs.iter().map(|r| field(r, "reward/mean"))),
                    // A step none of whose samples reached a gradable answer reports no accuracy.
                    "accuracy_mean": mean(recs.iter().filter_map(|r| r["reward/accuracy"].as_f64())),
                    "staleness_mean": mean(recs.iter().map(|r| field(r, "staleness/mean"))),
                    // What overlap can save: the learner's wait for each batch and its step.
                    "wait_s_mean": mean(recs.iter().map(|r| field(r, "time/wait_data_s"))),
                    "step_s_mean": mean(recs.iter().map(|r| field(r, "time/step_s")))})
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let what = args.first().map(String::as_str).unwrap_or("grpo");
    let steps = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(12);
    match what {
        "grpo" => grpo(steps),
        "async" => async_vs_sync(steps),
        other => panic!("unknown benchmark {other:?}: grpo or async"),
    }
}
