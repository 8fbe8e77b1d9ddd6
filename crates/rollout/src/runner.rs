//! Turns a batch of tasks into scored groups: batched generation with weight refresh between
//! decoding steps, multi-turn environment episodes, verifiers, and the rows of the trajectory
//! schema (`docs/design.md`: "Trajectories", "Versions and staleness", "Environments").
//!
//! # Design
//! *Constraints.* The learner must train on exactly what the sampler produced: the tokens, their
//! log-probs and the version of the weights behind each of them. Environments speak text, and
//! text round-trips through a tokenizer lossily (special tokens vanish, merges differ at
//! boundaries). Tool calls are slow and must overlap; an environment may hang or panic. New
//! weights arrive while sequences are half-generated.
//!
//! *Solution.* An episode is a token buffer that only grows: the model's tokens are appended as
//! sampled (`loss_mask = 1`, their log-prob, the version that sampled them); an observation is
//! tokenized once, when it arrives, and appended (`loss_mask = 0`, log-prob 0). The model's text
//! is decoded only to hand it to the environment or verifier; it is never encoded back. A turn
//! prefills `prompt ++ tokens so far` for every running episode at once (one [`Generator`] per
//! distinct set of stop strings), so a multi-turn episode's context is its own token buffer, not a
//! re-rendered chat. Between two decoding steps the runner asks its [`WeightFeed`] for a newer
//! version (only when `partial_rollout` is on; otherwise only between batches), rebuilds the
//! running rows' key/value cache under it (`swap_cache = "recompute"`, the default) or keeps the
//! old one (`"keep"`), and records per token the version it depends on. All environment calls of
//! a turn run concurrently, each under the guard's timeout ([`crate::guard`]); a failure ends that
//! episode as `finish = error` with reward 0, counted, and the rest of the batch goes on.
//!
//! *Cons.* Each turn re-prefills the whole context (no cache carried across turns): simple and
//! exact, and cheap next to decoding for the short observations of tool envs. Observations are
//! appended as raw text tokens, inside the assistant's turn (as search/tool envs with inline
//! `<result>` tags do), not wrapped in chat-role markers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use burn::prelude::Backend;
use sluice_core::{
    fnv1a64, splitmix64, Env, Episode, Finish, Group, PolicyId, Prompt, Reward, RlConfig, Sample, Task,
    Verifier,
};
use sluice_model::{ChatMessage, FinishReason, Generator, Llama, SamplingParams, Tokenizer};

use crate::config::{RolloutConfig, SwapCache};
use crate::error::{Result, RolloutError};
use crate::guard::{self, FailureCounts};

/// How a task's answer is judged.
#[derive(Clone)]
pub enum Judge {
    /// One turn, scored by a verifier.
    Verifier(Arc<dyn Verifier>),
    /// Several turns with an environment, which gives the reward.
    Env(Arc<dyn Env>),
}

/// A task source with its judge: one entry of the curriculum.
pub struct EnvSource {
    /// Where tasks come from.
    pub tasks: Box<dyn sluice_core::TaskSource>,
    /// How answers are judged.
    pub judge: Judge,
    /// A turn ends when the model's text contains one of these (e.g. `</calc>` for a tool call).
    pub stop_strings: Vec<String>,
}

/// One task to roll out G times.
#[derive(Clone)]
pub struct Job {
    /// The task.
    pub task: Task,
    /// Its judge.
    pub judge: Judge,
    /// Stop strings of its source.
    pub stop_strings: Vec<String>,
}

/// Weights and the version they are.
pub struct Versioned<B: Backend> {
    /// The network.
    pub model: Llama<B>,
    /// Learner batches behind these weights (0 for the initial ones).
    pub version: u64,
    /// The learner start that published them ([`PolicyId`]; 0 for the initial weights).
    pub epoch: u64,
}

impl<B: Backend> Versioned<B> {
    /// Which version they are.
    pub fn id(&self) -> PolicyId {
        PolicyId::new(self.epoch, self.version)
    }
}

/// Where newer weights come from; asked between batches and, with `partial_rollout`, between
/// decoding steps.
pub trait WeightFeed<B: Backend> {
    /// A version newer than `current` ([`PolicyId`] order), when one is ready. `same_epoch`: only
    /// one of `current`'s epoch (asked mid-batch: a sample's tokens all come from one learner
    /// start, so that a resume's orphaned weights and its new lineage's never share a sample).
    fn newer(&mut self, current: PolicyId, same_epoch: bool) -> Result<Option<Versioned<B>>>;
}

/// Weights that never change (evaluation, benchmarks of generation alone).
pub struct FixedWeights;

impl<B: Backend> WeightFeed<B> for FixedWeights {
    fn newer(&mut self, _current: PolicyId, _same_epoch: bool) -> Result<Option<Versioned<B>>> {
        Ok(None)
    }
}

/// Counters of one runner.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunnerStats {
    /// Groups produced.
    pub groups: u64,
    /// Samples produced.
    pub samples: u64,
    /// Tokens the model sampled (`loss_mask = 1`).
    pub model_tokens: u64,
    /// Environment tokens appended (`loss_mask = 0`).
    pub env_tokens: u64,
    /// Weight versions swapped in while sequences were running.
    pub mid_generation_swaps: u64,
    /// Wall seconds spent rebuilding caches after those swaps (`SwapCache::Recompute`).
    pub swap_recompute_s: f64,
    /// Samples that ended with `finish = error`.
    pub errored_samples: u64,
    /// Environment `step` calls.
    pub env_steps: u64,
    /// Wall seconds spent waiting for environment steps (all of a turn's steps run at once).
    pub env_wait_s: f64,
}

/// A row while its episode runs.
struct Ep {
    job: usize,
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    mask: Vec<u8>,
    logprobs: Vec<f32>,
    versions: Vec<u64>,
    episode: Option<Box<dyn Episode>>,
    reward: Reward,
    finish: Option<Finish>,
    turns: u16,
}

/// What one turn of generation gave a row.
struct TurnOut {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    versions: Vec<u64>,
    finish: FinishReason,
}

/// Group ids unique across workers and restarts: a per-runner random prefix through a bijective
/// mixer, so ids of one runner never collide and those of two runners collide with probability
/// about `n^2 / 2^64`.
struct GroupIds {
    base: u64,
    next: u64,
}

impl GroupIds {
    fn new(worker: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let name = fnv1a64(worker.as_bytes());
        GroupIds { base: splitmix64(nanos ^ splitmix64(name ^ std::process::id() as u64)), next: 0 }
    }

    fn take(&mut self) -> u64 {
        self.next += 1;
        splitmix64(self.base.wrapping_add(self.next))
    }
}

/// Rolls out batches of tasks for one worker.
pub struct Runner {
    cfg: RolloutConfig,
    /// The group size and the sampling temperature (the run's shared settings; `sluice eval`
    /// passes its own).
    rl: RlConfig,
    run: String,
    tokenizer: Tokenizer,
    stop_token_ids: Vec<u32>,
    failures: Arc<FailureCounts>,
    ids: GroupIds,
    /// `seed` mixed with the worker's name: workers of one config sample differently.
    seed: u64,
    batches: u64,
    stats: RunnerStats,
}

impl Runner {
    /// A runner for `worker` of `run` that samples groups of `rl.group_size` at `rl.temperature`
    /// (0: greedy, for evaluation); `stop_token_ids` end a turn (the model's EOS tokens). The
    /// settings are taken as checked ([`RolloutConfig::check`]), as the run config does where it
    /// reads them.
    pub fn new(
        run: &str,
        worker: &str,
        cfg: RolloutConfig,
        rl: RlConfig,
        tokenizer: Tokenizer,
        stop_token_ids: Vec<u32>,
    ) -> Result<Self> {
        let seed = splitmix64(cfg.seed) ^ fnv1a64(worker.as_bytes());
        Ok(Runner {
            cfg,
            rl,
            run: run.to_string(),
            tokenizer,
            stop_token_ids,
            failures: Arc::new(FailureCounts::default()),
            ids: GroupIds::new(worker),
            seed,
            batches: 0,
            stats: RunnerStats::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Environment failures by kind.
    pub fn failures(&self) -> &FailureCounts {
        &self.failures
    }

    /// The counters.
    pub fn stats(&self) -> &RunnerStats {
        &self.stats
    }

    /// The prompt tokens of `task`: the chat template over its messages (a text prompt is one user
    /// message) when `chat_template` is on and the tokenizer has one, else the text as is.
    pub fn prompt_tokens(&self, task: &Task) -> Result<Vec<u32>> {
        let bad = |reason: String| RolloutError::Task {
            task: task.id.clone(),
            task_source: task.source.clone(),
            reason,
        };
        let templated = self.cfg.chat_template && self.tokenizer.chat_template().is_some();
        let tokens = match (&task.prompt, templated) {
            (Prompt::Text(t), false) => self.tokenizer.encode(t, true),
            (Prompt::Text(t), true) => {
                self.tokenizer.encode_chat(&[ChatMessage::new("user", t.as_str())], true)
            }
            (Prompt::Chat(m), true) => {
                let msgs: Vec<ChatMessage> =
                    m.iter().map(|m| ChatMessage::new(m.role.as_str(), m.content.as_str())).collect();
                self.tokenizer.encode_chat(&msgs, true)
            }
            (Prompt::Chat(_), false) => {
                return Err(bad("a chat prompt needs the model's chat template (the tokenizer has none, or \
                     rollout.chat_template is off)"
                    .into()))
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        let mut tokens = tokens;
        if !self.cfg.response_prefix.is_empty() {
            tokens.extend(
                self.tokenizer.encode(&self.cfg.response_prefix, false).map_err(|e| bad(e.to_string()))?,
            );
        }
        if tokens.is_empty() {
            return Err(bad("the prompt encodes to no tokens".into()));
        }
        Ok(tokens)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.env_timeout_s)
    }

    /// Rolls out every job `rl.group_size` times and returns one group per job, in job order.
    /// `policy` is swapped for newer weights from `feed` as they come.
    pub async fn run<B: Backend>(
        &mut self,
        policy: &mut Versioned<B>,
        feed: &mut (dyn WeightFeed<B> + Send),
        jobs: &[Job],
    ) -> Result<Vec<Group>> {
        if let Some(p) = feed.newer(policy.id(), false)? {
            *policy = p;
        }
        self.batches += 1;
        let g = self.rl.group_size;
        let mut eps = Vec::with_capacity(jobs.len() * g);
        for (j, job) in jobs.iter().enumerate() {
            let prompt = self.prompt_tokens(&job.task)?;
            for _ in 0..g {
                eps.push(Ep {
                    job: j,
                    prompt: prompt.clone(),
                    tokens: Vec::new(),
                    mask: Vec::new(),
                    logprobs: Vec::new(),
                    versions: Vec::new(),
                    episode: None,
                    reward: Reward::default(),
                    finish: None,
                    turns: 0,
                });
            }
        }
        self.reset_episodes(&mut eps, jobs).await?;
        let mut turn = 0u64;
        while eps.iter().any(|e| e.finish.is_none()) {
            turn += 1;
            let seed = splitmix64(self.seed ^ splitmix64(self.batches) ^ splitmix64(turn.rotate_left(32)));
            let outs = tokio::task::block_in_place(|| self.generate_turn(policy, feed, &eps, jobs, seed))?;
            let mut actions = Vec::new();
            for (i, out) in outs {
                let ep = &mut eps[i];
                let start = ep.tokens.len();
                ep.tokens.extend_from_slice(&out.tokens);
                ep.mask.extend(std::iter::repeat_n(1u8, out.tokens.len()));
                ep.logprobs.extend_from_slice(&out.logprobs);
                ep.versions.extend_from_slice(&out.versions);
                self.stats.model_tokens += out.tokens.len() as u64;
                match jobs[ep.job].judge {
                    Judge::Verifier(_) => {
                        ep.finish = Some(match out.finish {
                            FinishReason::Stop => Finish::Stop,
                            FinishReason::Length => Finish::Length,
                        });
                    }
                    Judge::Env(_) => {
                        let text = self.tokenizer.decode(&ep.tokens[start..], true)?;
                        actions.push((i, text));
                    }
                }
            }
            self.step_episodes(&mut eps, jobs, actions, policy.version).await?;
        }
        self.score_single_turn(&mut eps, jobs).await?;
        Ok(self.build_groups(eps, jobs, policy.id()))
    }

    async fn reset_episodes(&mut self, eps: &mut [Ep], jobs: &[Job]) -> Result<()> {
        let mut handles = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            if let Judge::Env(env) = &jobs[ep.job].judge {
                let call = guard::reset(env.clone(), jobs[ep.job].task.clone(), self.timeout());
                handles.push((i, tokio::spawn(call)));
            }
        }
        for (i, h) in handles {
            let ep = &mut eps[i];
            match h.await.map_err(|e| RolloutError::Internal(format!("reset task: {e}")))? {
                Ok((episode, obs)) => {
                    if !obs.is_empty() {
                        ep.prompt.extend(self.tokenizer.encode(&obs, false)?);
                    }
                    ep.episode = Some(episode);
                }
                Err(f) => self.fail(ep, &jobs[ep.job].task, f),
            }
        }
        Ok(())
    }

    /// Hands each action to its episode (all at once) and appends what comes back.
    async fn step_episodes(
        &mut self,
        eps: &mut [Ep],
        jobs: &[Job],
        actions: Vec<(usize, String)>,
        version: u64,
    ) -> Result<()> {
        let mut handles = Vec::new();
        for (i, action) in actions {
            let Some(episode) = eps[i].episode.take() else {
                return Err(RolloutError::Internal(format!("episode {i} has no environment state")));
            };
            handles.push((i, tokio::spawn(guard::step(episode, action, self.timeout()))));
        }
        let max_tokens = self.rl.max_completion_tokens;
        self.stats.env_steps += handles.len() as u64;
        let t0 = std::time::Instant::now();
        let mut results = Vec::with_capacity(handles.len());
        for (i, h) in handles {
            results.push((i, h.await.map_err(|e| RolloutError::Internal(format!("step task: {e}")))?));
        }
        self.stats.env_wait_s += t0.elapsed().as_secs_f64();
        for (i, result) in results {
            let ep = &mut eps[i];
            let (episode, r) = match result {
                Ok(x) => x,
                Err(f) => {
                    self.fail(ep, &jobs[ep.job].task, f);
                    continue;
                }
            };
            ep.turns = ep.turns.saturating_add(1);
            if let Some(rw) = r.reward {
                add_reward(&mut ep.reward, &rw);
            }
            if r.done {
                ep.finish = Some(Finish::EnvDone);
            } else if ep.turns >= self.cfg.max_turns {
                ep.finish = Some(Finish::Length);
            } else if let Some(obs) = r.observation.filter(|o| !o.is_empty()) {
                let obs = self.tokenizer.encode(&obs, false)?;
                if ep.tokens.len() + obs.len() >= max_tokens {
                    ep.finish = Some(Finish::Length);
                } else {
                    self.stats.env_tokens += obs.len() as u64;
                    ep.tokens.extend_from_slice(&obs);
                    ep.mask.extend(std::iter::repeat_n(0u8, obs.len()));
                    ep.logprobs.extend(std::iter::repeat_n(0.0f32, obs.len()));
                    ep.versions.extend(std::iter::repeat_n(version, obs.len()));
                }
            } else if ep.tokens.len() >= max_tokens {
                ep.finish = Some(Finish::Length);
            }
            if ep.finish.is_some() {
                close(episode, self.timeout());
            } else {
                ep.episode = Some(episode);
            }
        }
        Ok(())
    }

    async fn score_single_turn(&mut self, eps: &mut [Ep], jobs: &[Job]) -> Result<()> {
        let mut handles = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            if let (Judge::Verifier(v), Some(Finish::Stop | Finish::Length)) =
                (&jobs[ep.job].judge, ep.finish)
            {
                let text = self.tokenizer.decode(&ep.tokens, true)?;
                let call = guard::score(v.clone(), jobs[ep.job].task.clone(), text, self.timeout());
                handles.push((i, tokio::spawn(call)));
            }
        }
        for (i, h) in handles {
            let ep = &mut eps[i];
            match h.await.map_err(|e| RolloutError::Internal(format!("score task: {e}")))? {
                Ok(r) => ep.reward = r,
                Err(f) => self.fail(ep, &jobs[ep.job].task, f),
            }
        }
        Ok(())
    }

    fn fail(&mut self, ep: &mut Ep, task: &Task, f: guard::EnvFailure) {
        // The first of a kind in full, then every power of ten: an env that fails every episode
        // does not flood the log (the counts are in the worker's metrics and the run's summary).
        let n = self.failures.count(&f);
        if is_power_of_ten(n) {
            tracing::warn!(task = %task.id, source = %task.source, "episode ends as an error: {f} (failure {n} of kind `{}`)", f.kind());
        } else {
            tracing::debug!(task = %task.id, source = %task.source, "episode ends as an error: {f}");
        }
        ep.finish = Some(Finish::Error);
        ep.reward = Reward::new(0.0);
        ep.episode = None;
    }

    /// One turn for every running episode: prefill `prompt ++ tokens`, decode until each row stops.
    fn generate_turn<B: Backend>(
        &mut self,
        policy: &mut Versioned<B>,
        feed: &mut (dyn WeightFeed<B> + Send),
        eps: &[Ep],
        jobs: &[Job],
        seed: u64,
    ) -> Result<Vec<(usize, TurnOut)>> {
        let mut by_stops: BTreeMap<&[String], Vec<usize>> = BTreeMap::new();
        for (i, ep) in eps.iter().enumerate() {
            if ep.finish.is_none() {
                by_stops.entry(jobs[ep.job].stop_strings.as_slice()).or_default().push(i);
            }
        }
        let mut out = Vec::new();
        for (part, (stops, rows)) in by_stops.into_iter().enumerate() {
            let budgets: Vec<usize> = rows
                .iter()
                .map(|&i| self.rl.max_completion_tokens.saturating_sub(eps[i].tokens.len()))
                .collect();
            let prompts: Vec<Vec<u32>> =
                rows.iter().map(|&i| [eps[i].prompt.as_slice(), eps[i].tokens.as_slice()].concat()).collect();
            let params = SamplingParams {
                temperature: self.rl.temperature,
                top_p: self.cfg.top_p,
                top_k: self.cfg.top_k,
                max_new_tokens: self.cfg.max_new_tokens.min(budgets.iter().copied().max().unwrap_or(0)),
                stop_token_ids: self.stop_token_ids.clone(),
                stop_strings: stops.to_vec(),
                seed: splitmix64(seed ^ part as u64),
            };
            let mut gen = Generator::new(&policy.model, &prompts, &params, Some(&self.tokenizer))?;
            let started = policy.version;
            let mut versions: Vec<Vec<u64>> =
                gen.generated_lens().iter().map(|&n| vec![policy.version; n]).collect();
            while !gen.is_done() {
                if self.cfg.partial_rollout {
                    if let Some(p) = feed.newer(policy.id(), true)? {
                        tracing::debug!(
                            from = policy.version,
                            to = p.version,
                            "weights swapped mid-generation"
                        );
                        *policy = p;
                        self.stats.mid_generation_swaps += 1;
                        if self.cfg.swap_cache == SwapCache::Recompute {
                            let t0 = std::time::Instant::now();
                            gen.recompute(&policy.model)?;
                            self.stats.swap_recompute_s += t0.elapsed().as_secs_f64();
                        }
                    }
                }
                gen.step(&policy.model)?;
                // The version each new token depends on (`SwapCache`): the sampling weights' once
                // the cache is rebuilt, the turn's first otherwise.
                let label = match self.cfg.swap_cache {
                    SwapCache::Recompute => policy.version,
                    SwapCache::Keep => started,
                };
                for (v, n) in versions.iter_mut().zip(gen.generated_lens()) {
                    v.resize(n, label);
                }
            }
            for (((i, c), mut v), budget) in rows.into_iter().zip(gen.finish()).zip(versions).zip(budgets) {
                let (mut tokens, mut logprobs, mut finish) = (c.tokens, c.logprobs, c.finish);
                if tokens.len() > budget {
                    tokens.truncate(budget);
                    logprobs.truncate(budget);
                    v.truncate(budget);
                    finish = FinishReason::Length;
                }
                out.push((i, TurnOut { tokens, logprobs, versions: v, finish }));
            }
        }
        Ok(out)
    }

    /// `policy`: the weights the batch ended with (of the epoch it began with).
    fn build_groups(&mut self, eps: Vec<Ep>, jobs: &[Job], policy: PolicyId) -> Vec<Group> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mut groups: Vec<Group> =
            jobs.iter().map(|_| Group { group_id: self.ids.take(), samples: Vec::new() }).collect();
        for ep in eps {
            let group = &mut groups[ep.job];
            let task = &jobs[ep.job].task;
            let finish = ep.finish.unwrap_or(Finish::Aborted);
            self.stats.samples += 1;
            self.stats.errored_samples += (finish == Finish::Error) as u64;
            group.samples.push(Sample {
                run_id: self.run.clone(),
                group_id: group.group_id,
                sample_idx: group.samples.len() as u16,
                task_id: task.id.clone(),
                source: task.source.clone(),
                prompt_tokens: ep.prompt,
                behavior_version: ep.versions.iter().copied().min().unwrap_or(policy.version),
                behavior_epoch: policy.epoch,
                completion_tokens: ep.tokens,
                loss_mask: ep.mask,
                behavior_logprobs: ep.logprobs,
                token_versions: ep.versions,
                reward: ep.reward.total,
                reward_parts: ep.reward.parts,
                finish,
                num_turns: ep.turns,
                created_at_us: now,
            });
        }
        self.stats.groups += groups.len() as u64;
        groups
    }
}

fn add_reward(total: &mut Reward, r: &Reward) {
    total.total += r.total;
    for (k, v) in &r.parts {
        *total.parts.entry(k.clone()).or_insert(0.0) += v;
    }
}

/// Closes a finished episode in the background, under the timeout.
fn close(mut episode: Box<dyn Episode>, timeout: Duration) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, episode.close()).await;
    });
}

/// 1, 10, 100, ...
fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n.is_multiple_of(10) {
        n /= 10;
    }
    n == 1
}
