//! `sluice eval`: accuracy and pass@k of a model on held-out tasks (the split training never
//! draws: `docs/design.md`, "Environments"), rolled out by the same runner the workers use.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use serde::Serialize;
use sluice_core::{metrics, RlConfig};
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
    /// Tasks.
    pub n: usize,
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
        format!(
            "{} on {} {} {} tasks x{}: accuracy {:.3}, pass@{} {:.3}, mean reward {:.3} ({:.0} s)",
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

/// Evaluates the policy at `model_path` on `req.n` tasks of `spec` from `req.split`,
/// `req.samples` each, with the rollout settings `base` (prompting, lengths) at `req.temperature`.
pub async fn eval<B: Backend>(
    model_path: &Path,
    spec: &EnvSpec,
    req: EvalRequest,
    base: &RolloutConfig,
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
    let draw = RlConfig { group_size: samples, temperature, ..RlConfig::default() };
    let batch = cfg.tasks_per_batch.max(1);
    let mut runner =
        Runner::new("eval", "eval", cfg, draw, policy.tokenizer.clone(), policy.stop_token_ids())?;
    let mut source = spec.build(Purpose::Eval(split), session, "eval")?;
    let mut current = Versioned { model: policy.model, version: 0 };
    let (mut correct, mut rewards, mut passed, mut tasks) = (Vec::new(), Vec::new(), 0usize, 0usize);
    while tasks < n {
        let mut jobs = Vec::new();
        while jobs.len() < batch.min(n - tasks) {
            let Some(task) = source.tasks.next_task() else { break };
            jobs.push(Job { task, judge: source.judge.clone(), stop_strings: source.stop_strings.clone() });
        }
        if jobs.is_empty() {
            tracing::warn!("{}: the held-out split has only {tasks} tasks", spec.name());
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
