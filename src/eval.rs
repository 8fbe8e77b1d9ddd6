//! `sluice eval`: accuracy and pass@k of a model on held-out tasks (the split training never
//! draws: `docs/design.md`, "Environments"), rolled out by the same runner the workers use.
//!
//! Tasks are distinct: a generator that draws with replacement (one-digit arithmetic has 38
//! held-out questions at the default split) would otherwise score some questions several times
//! and report `--n` tasks where there were far fewer. Draws whose prompt was already taken are
//! passed over; when [`PATIENCE`] draws in a row bring nothing new, or a finite source ends, the
//! split is taken to hold no more, and the result says how many were asked for.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::prelude::Backend;
use serde::Serialize;
use sluice_core::{metrics, RlConfig, Task, TaskSource};
use sluice_model::Policy;
use sluice_rollout::{FixedWeights, Job, RolloutConfig, Runner, Versioned};

use sluice_envs::Split;

use crate::env_spec::{EnvSpec, Purpose};

/// What an evaluation measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalResult {
    /// The model evaluated.
    pub model: String,
    /// The environment.
    pub env: String,
    /// Distinct tasks scored.
    pub n: usize,
    /// Tasks asked for (`n` is lower when the split holds fewer distinct ones).
    pub requested: usize,
    /// Which split they came from (`held-out` unless asked otherwise).
    pub split: Split,
    /// Samples per task.
    pub samples: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Mean of the `correct` reward part over every sample.
    pub accuracy: f64,
    /// Fraction of tasks with at least one correct sample among `samples` (pass@k, k = samples).
    pub pass_at_k: f64,
    /// Mean reward over every sample.
    pub mean_reward: f64,
    /// Samples whose environment failed (timeouts, panics, errors).
    pub errored: u64,
    /// Wall time.
    pub seconds: f64,
}

impl EvalResult {
    /// The one-line text form.
    pub fn line(&self) -> String {
        let short = if self.n < self.requested {
            format!(" (asked for {}: the split holds no more distinct tasks)", self.requested)
        } else {
            String::new()
        };
        format!(
            "{} on {} distinct {} {} tasks x{}: accuracy {:.3}, pass@{} {:.3}, mean reward {:.3} ({:.0} s){short}",
            self.model,
            self.n,
            match self.split {
                Split::Train => "train",
                Split::HeldOut => "held-out",
            },
            self.env,
            self.samples,
            self.accuracy,
            self.samples,
            self.pass_at_k,
            self.mean_reward,
            self.seconds
        )
    }
}

/// How many tasks, from which split, sampled how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalRequest {
    /// Tasks.
    pub n: usize,
    /// Samples per task.
    pub samples: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Which tasks.
    pub split: Split,
}

/// Draws in a row that bring no new task before a generated split is taken to be exhausted: far
/// more than the coupon collector needs for the last of a few hundred tasks, cheap beside one
/// rollout.
pub const PATIENCE: usize = 20_000;

/// Evaluates the policy at `model_path` on `req.n` tasks of `spec` from `req.split`,
/// `req.samples` each, with the rollout settings `base` (prompting, lengths) and the run's token
/// budget (`rl.max_completion_tokens`) at `req.temperature`.
pub async fn eval<B: Backend>(
    model_path: &Path,
    spec: &EnvSpec,
    req: EvalRequest,
    base: &RolloutConfig,
    rl: &RlConfig,
    session: &zenoh::Session,
    device: B::Device,
) -> Result<EvalResult> {
    let EvalRequest { n, samples, temperature, split } = req;
    anyhow::ensure!(n > 0, "--n must be at least 1");
    anyhow::ensure!(
        (1..=u16::MAX as usize).contains(&samples),
        "--samples {samples}: must be in 1..={} (a sample's index in its group is 16 bits)",
        u16::MAX
    );
    anyhow::ensure!(
        temperature > 0.0 || samples == 1,
        "--temperature 0 (greedy) gives one answer per task: use --samples 1 or a temperature > 0"
    );
    let t0 = Instant::now();
    let policy = Policy::<B>::load(model_path, &device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let cfg = RolloutConfig {
        curriculum: sluice_rollout::CurriculumConfig::Fixed { weights: vec![1.0] },
        ..base.clone()
    };
    // Evaluation's own draw: `samples` per task at its temperature (0: greedy).
    let draw = RlConfig { group_size: samples, temperature, ..*rl };
    let batch = cfg.tasks_per_batch.max(1);
    let env_timeout = Duration::from_secs_f64(cfg.env_timeout_s);
    let mut runner =
        Runner::new("eval", "eval", cfg, draw, policy.tokenizer.clone(), policy.stop_token_ids())?;
    let mut source = spec.build(Purpose::Eval(split), session, "eval", env_timeout)?;
    let mut current = Versioned { model: policy.model, version: 0, epoch: 0 };
    let (mut correct, mut rewards, mut passed, mut tasks) = (Vec::new(), Vec::new(), 0usize, 0usize);
    let mut seen = std::collections::HashSet::new();
    let mut exhausted = false;
    while tasks < n && !exhausted {
        let mut jobs = Vec::new();
        while jobs.len() < batch.min(n - tasks) {
            let Some(task) = distinct(&mut *source.tasks, &mut seen) else {
                exhausted = true;
                break;
            };
            jobs.push(Job { task, judge: source.judge.clone(), stop_strings: source.stop_strings.clone() });
        }
        if jobs.is_empty() {
            break;
        }
        tasks += jobs.len();
        for g in runner.run(&mut current, &mut FixedWeights, &jobs).await? {
            let c: Vec<f64> = g
                .samples
                .iter()
                .map(|s| s.reward_parts.get(metrics::ACCURACY_PART).copied().unwrap_or(0.0) as f64)
                .collect();
            passed += c.iter().any(|&x| x >= 1.0) as usize;
            correct.extend(c);
            rewards.extend(g.samples.iter().map(|s| s.reward as f64));
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    Ok(EvalResult {
        model: model_path.display().to_string(),
        env: spec.name().to_string(),
        n: tasks,
        requested: n,
        split,
        samples,
        temperature,
        accuracy: mean(&correct),
        pass_at_k: passed as f64 / tasks.max(1) as f64,
        mean_reward: mean(&rewards),
        errored: runner.stats().errored_samples,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The next task whose prompt is not in `seen` (recorded there), or `None` once the source ends
/// or [`PATIENCE`] draws in a row repeat what was seen.
fn distinct(tasks: &mut dyn TaskSource, seen: &mut std::collections::HashSet<String>) -> Option<Task> {
    for _ in 0..PATIENCE {
        let task = tasks.next_task()?;
        if seen.insert(task.prompt.key()) {
            return Some(task);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use sluice_envs::arithmetic::{Arithmetic, ArithmeticConfig};

    use super::*;

    fn held_out(one_in: u64) -> Arithmetic {
        let cfg = ArithmeticConfig {
            max_digits: 1,
            split: Split::HeldOut,
            held_out_one_in: one_in,
            seed: 3,
            ..Default::default()
        };
        Arithmetic::new(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn eval_draws_each_held_out_question_once_and_stops_when_the_split_has_no_more() {
        // One-digit `+ - x` questions: 300, of which one in eight (38) or one in two (150) are
        // held out. A draw with replacement scored `--n 100` "tasks" from the 38.
        for (one_in, want) in [(8, 38), (2, 150)] {
            let mut source = held_out(one_in);
            let mut seen = HashSet::new();
            let mut prompts = HashSet::new();
            while let Some(task) = distinct(&mut source, &mut seen) {
                assert!(prompts.insert(format!("{:?}", task.prompt)), "{:?} twice", task.prompt);
            }
            assert_eq!(prompts.len(), want, "held out one in {one_in}");
        }
        let result = EvalResult {
            model: "m".into(),
            env: "arithmetic".into(),
            n: 38,
            requested: 100,
            split: Split::HeldOut,
            samples: 1,
            temperature: 0.0,
            accuracy: 0.5,
            pass_at_k: 0.5,
            mean_reward: 0.5,
            errored: 0,
            seconds: 1.0,
        };
        let line = result.line();
        assert!(line.contains("38 distinct held-out") && line.contains("asked for 100"), "{line}");
    }
}
