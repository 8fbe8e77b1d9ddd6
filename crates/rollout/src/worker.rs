//! The rollout worker loop (`docs/design.md`, "Versions and staleness" and "Environments"):
//! staleness gate, admission tickets, curriculum draw, batched rollout, append with retry,
//! liveliness.
//!
//! # Design
//! *Constraints.* A worker must not generate work bound to go stale (AReaL's admission control),
//! must not run ahead of the weights it has (the staleness gate), must never drop a finished group
//! without saying so, and must be able to join and leave a running run. *Solution.* One loop per
//! worker: (1) swap in any staged weights and wait while the gate is shut; (2) ask the replay for
//! tickets (`granted` groups may start); the reply's current learner version also moves the gate (the
//! replay hears of a new version from the learner's sample request, often before the worker hears
//! the publisher's announce), and the worker passes the gate again before it spends them, so it
//! never spends tickets granted at version `v` on weights the replay would drop as stale at `v`;
//! (3) draw that many tasks from the curriculum; (4) roll them
//! out with the [`Runner`] (weights swapped between decoding steps when `partial_rollout`); (5) feed
//! the groups' |advantage| to the curriculum; (6) append them, retrying until the replay takes them.
//! A worker holds a zenoh liveliness token under `sluice/{run}/rollout/{worker}` while it runs, so
//! others can see it come and go; several workers share a process as separate tasks, each with its
//! own model copy and subscriber. A stopped worker gives a replay call in flight
//! [`STOP_GRACE`] and then gives up (a run's end stops the replay too; the groups are counted as
//! unsent, never as delivered). *Cons:* a batch is the unit of work: a worker asked to stop ends
//! its current batch first.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::Backend;
use sluice_core::{keys, Group, PolicyId};
use sluice_model::weights::Checkpoint;
use sluice_model::HostTensor;
use sluice_model::{Llama, ModelConfig};
use sluice_replay::{ReplayClient, ReplayError};
use sluice_weights_sync::{Subscriber, Weights};

use crate::curriculum::Curriculum;
use crate::error::{Result, RolloutError};
use crate::runner::{EnvSource, FixedWeights, Job, Runner, RunnerStats, Versioned, WeightFeed};

/// How long a stopped worker still waits on a replay call in flight. A run's end stops the replay
/// too, and the replay client would otherwise retry a vanished shard for its whole `retry_for`.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The longest pause between two ticket requests that were both refused. The replay grants
/// tickets when the learner's next sample request shows it needs data; a request costs the replay
/// one lookup, so ten a second per worker is cheap next to a synchronous step stalled for longer.
const TICKET_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Builds the model from a staged weight-sync version (replicated layout, checkpoint names).
pub fn llama_from_weights<B: Backend>(
    w: &Weights,
    cfg: &ModelConfig,
    device: &B::Device,
) -> Result<Llama<B>> {
    let origin = format!("<weight-sync version {}>", w.id());
    let mut ckpt = Checkpoint::default();
    for (t, bytes) in w.tensors.iter().zip(&w.buffers) {
        let tensor = HostTensor { shape: t.shape.clone(), data: w.dtype.decode(bytes) };
        ckpt.insert(t.name.clone(), tensor, Path::new(&origin));
    }
    Ok(Llama::from_checkpoint(cfg, &ckpt, Path::new(&origin), device)?)
}

/// Weights from a [`Subscriber`]: a staged version is built into a model when the runner asks,
/// and acknowledged (which moves the staleness gate) once it is swapped in.
pub struct SubscriberFeed<B: Backend> {
    sub: Arc<Subscriber>,
    cfg: ModelConfig,
    device: B::Device,
}

impl<B: Backend> SubscriberFeed<B> {
    /// A feed for a model of `cfg` on `device`.
    pub fn new(sub: Arc<Subscriber>, cfg: ModelConfig, device: B::Device) -> Self {
        SubscriberFeed { sub, cfg, device }
    }
}

impl<B: Backend> WeightFeed<B> for SubscriberFeed<B> {
    fn newer(&mut self, current: PolicyId, same_epoch: bool) -> Result<Option<Versioned<B>>> {
        let Some(w) =
            self.sub.ready().filter(|w| w.id() > current && (!same_epoch || w.epoch == current.epoch))
        else {
            return Ok(None);
        };
        let model = llama_from_weights(&w, &self.cfg, &self.device)?;
        let (sub, version) = (self.sub.clone(), w.id());
        // Called from generation (a blocking section) too: the ack goes out on its own task.
        tokio::spawn(async move {
            if let Err(e) = sub.applied(version).await {
                tracing::warn!(%version, "weight ack failed: {e}");
            }
        });
        Ok(Some(Versioned { model, version: version.version, epoch: version.epoch }))
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerStats {
    /// The runner's counters (groups, samples, tokens, swaps, errors).
    pub rollout: RunnerStats,
    /// Batches rolled out.
    pub batches: u64,
    /// Groups the replay acknowledged.
    pub groups_appended: u64,
    /// Groups that could not be appended before the worker stopped (reported, never silent).
    pub groups_unsent: u64,
    /// Groups the replay refused because a resumed learner orphaned the weights that sampled
    /// them (finished with the old weights while the learner restarted).
    pub groups_orphaned: u64,
    /// Appends that failed and were retried.
    pub append_retries: u64,
    /// Seconds spent waiting for the staleness gate.
    pub gate_wait_s: f64,
    /// Seconds spent waiting for tickets.
    pub ticket_wait_s: f64,
    /// Seconds spent rolling out.
    pub rollout_s: f64,
    /// The weight version in use.
    pub version: u64,
    /// Its epoch (the learner start that published it).
    pub epoch: u64,
    /// Environment calls that timed out, panicked, or returned an error.
    pub env_timeouts: u64,
    /// See `env_timeouts`.
    pub env_panics: u64,
    /// See `env_timeouts`.
    pub env_errors: u64,
    /// The first failure of each kind (`timeout`, `panic`, `error`), as it was reported.
    pub env_first_failure: std::collections::BTreeMap<String, String>,
}

/// One rollout worker.
pub struct Worker<B: Backend> {
    name: String,
    session: zenoh::Session,
    replay: ReplayClient,
    runner: Runner,
    policy: Versioned<B>,
    feed: Box<dyn WeightFeed<B> + Send>,
    subscriber: Option<Arc<Subscriber>>,
    sources: Vec<EnvSource>,
    exhausted: Vec<bool>,
    curriculum: Curriculum,
    stop: Arc<AtomicBool>,
    stats: WorkerStats,
    reports: Option<tokio::sync::watch::Sender<WorkerStats>>,
    append_log: Option<std::fs::File>,
}

impl<B: Backend> Worker<B> {
    /// A worker named `name` (its ticket, liveliness and ack name) that starts from `model` as
    /// version `version` (the initial weights: `PolicyId::default()`), drawing tasks from `sources`.
    pub fn new(
        session: zenoh::Session,
        replay: ReplayClient,
        name: &str,
        runner: Runner,
        model: Llama<B>,
        version: PolicyId,
        sources: Vec<EnvSource>,
    ) -> Result<Self> {
        keys::check_name("worker", name).map_err(|e| RolloutError::Config(e.to_string()))?;
        let cfg = runner.config();
        // Workers of one config draw sources differently.
        let seed = cfg.seed ^ sluice_core::fnv1a64(name.as_bytes());
        let curriculum = Curriculum::new(cfg.curriculum.clone(), sources.len(), seed)?;
        Ok(Worker {
            name: name.to_string(),
            session,
            replay,
            runner,
            policy: Versioned { model, version: version.version, epoch: version.epoch },
            feed: Box::new(FixedWeights),
            subscriber: None,
            exhausted: vec![false; sources.len()],
            sources,
            curriculum,
            stop: Arc::new(AtomicBool::new(false)),
            stats: WorkerStats { version: version.version, epoch: version.epoch, ..Default::default() },
            reports: None,
            append_log: None,
        })
    }

    /// Takes new weights from `sub` and obeys its staleness gate.
    pub fn with_subscriber(mut self, sub: Subscriber) -> Self {
        let sub = Arc::new(sub);
        let cfg = self.policy.model.config().clone();
        self.feed = Box::new(SubscriberFeed::<B>::new(sub.clone(), cfg, self.policy.model.device()));
        self.subscriber = Some(sub);
        self
    }

    /// Sends the counters to `tx` after every appended batch (the launcher publishes them as the
    /// worker's metric reports).
    pub fn with_reports(mut self, tx: tokio::sync::watch::Sender<WorkerStats>) -> Self {
        self.reports = Some(tx);
        self
    }

    /// Appends one JSON line per batch the replay acknowledged (`{"worker", "group_ids",
    /// "behavior"}`: the groups it stored and the `[epoch, version]` that sampled each) to `file`:
    /// an audit trail of what this worker handed over, checked against the replay's contents by
    /// the fault test.
    pub fn with_append_log(mut self, file: std::fs::File) -> Self {
        self.append_log = Some(file);
        self
    }

    /// Uses `flag` as the stop flag (one flag can stop every worker of a process).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// Set it to make the worker stop after its current batch.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The curriculum (its state is what a checkpoint keeps).
    pub fn curriculum(&self) -> &Curriculum {
        &self.curriculum
    }

    /// Continues the curriculum from a checkpointed state (same sources, same order).
    pub fn restore_curriculum(&mut self, state: crate::curriculum::CurriculumState) -> Result<()> {
        if state.counts.len() != self.sources.len() {
            return Err(RolloutError::Config(format!(
                "curriculum state has {} sources, this worker {}",
                state.counts.len(),
                self.sources.len()
            )));
        }
        self.curriculum = Curriculum::restore(self.runner.config().curriculum.clone(), state)?;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats.clone();
        s.rollout = self.runner.stats().clone();
        (s.env_timeouts, s.env_panics, s.env_errors) = self.runner.failures().snapshot();
        s.env_first_failure = self.runner.failures().first();
        (s.version, s.epoch) = (self.policy.version, self.policy.epoch);
        s
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs until stopped, until `max_groups` groups are appended, or until every task source is
    /// exhausted; returns the counters.
    pub async fn run(&mut self, max_groups: Option<u64>) -> Result<WorkerStats> {
        let key = keys::rollout_worker(&self.replay.config().run, &self.name);
        let token = self
            .session
            .liveliness()
            .declare_token(&key)
            .await
            .map_err(|e| RolloutError::Zenoh(format!("liveliness token {key}: {e}")))?;
        let result = self.run_loop(max_groups).await;
        if let Err(e) = token.undeclare().await {
            tracing::debug!("liveliness token {key}: {e}");
        }
        result?;
        Ok(self.stats())
    }

    async fn run_loop(&mut self, max_groups: Option<u64>) -> Result<()> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = max_groups.map(|m| m.saturating_sub(self.stats.groups_appended));
            if self.stopped() || left == Some(0) {
                return Ok(());
            }
            if !self.wait_for_gate().await? {
                return Ok(());
            }
            let want = (self.runner.config().tasks_per_batch as u64).min(left.unwrap_or(u64::MAX));
            let t0 = Instant::now();
            let Some(reply) = unless_stopped(&self.stop, self.replay.tickets(&self.name, want)).await else {
                return Ok(());
            };
            let granted = match reply {
                Ok(r) => {
                    // The replay may know of a learner version this worker has not heard announced
                    // yet (the learner's sample request reaches it first): tickets granted for that
                    // version must not be spent on older weights, which it would drop as stale, nor
                    // on weights a resumed learner orphaned, which it would drop for good.
                    if let Some(sub) = &self.subscriber {
                        sub.gate().set_learner(&r.learner);
                    }
                    r.granted
                }
                Err(e) => {
                    tracing::warn!(worker = %self.name, "tickets: {e}; retrying");
                    0
                }
            };
            if granted == 0 {
                tokio::time::sleep(backoff).await;
                // Capped low: the wait ends when the learner asks for its next batch, and every
                // millisecond slept past that is a millisecond the synchronous loop stands still
                // (at 500 ms, half the tiny-model GRPO benchmark's sync step went here).
                backoff = (backoff * 2).min(TICKET_BACKOFF_MAX);
                self.stats.ticket_wait_s += t0.elapsed().as_secs_f64();
                continue;
            }
            backoff = Duration::from_millis(20);
            self.stats.ticket_wait_s += t0.elapsed().as_secs_f64();
            if !self.wait_for_gate().await? {
                return Ok(());
            }
            let drawn = self.draw(granted as usize)?;
            if drawn.is_empty() {
                tracing::info!(worker = %self.name, "every task source is exhausted");
                return Ok(());
            }
            let (sources, jobs): (Vec<usize>, Vec<Job>) = drawn.into_iter().unzip();
            let t0 = Instant::now();
            let groups = self.runner.run(&mut self.policy, self.feed.as_mut(), &jobs).await?;
            self.stats.rollout_s += t0.elapsed().as_secs_f64();
            self.stats.batches += 1;
            for (g, &s) in groups.iter().zip(&sources) {
                self.curriculum.observe(s, &abs_advantages(g));
            }
            self.append(groups).await?;
            if let Some(tx) = &self.reports {
                tx.send_replace(self.stats());
            }
        }
    }

    /// Swaps in staged weights and waits while the gate is shut; false when stopped meanwhile.
    async fn wait_for_gate(&mut self) -> Result<bool> {
        let Some(sub) = self.subscriber.clone() else {
            return Ok(true);
        };
        let t0 = Instant::now();
        loop {
            if let Some(p) = self.feed.newer(self.policy.id(), false)? {
                self.policy = p;
                // The feed acks on a task; the gate must see this version before it is asked.
                sub.gate().set_applied(self.policy.id());
            }
            if sub.gate().may_start() {
                break;
            }
            if self.stopped() {
                return Ok(false);
            }
            tokio::select! {
                _ = sub.next_ready() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        self.stats.gate_wait_s += t0.elapsed().as_secs_f64();
        Ok(true)
    }

    /// Up to `n` tasks, each from the source the curriculum picks (exhausted sources skipped); an
    /// error when a source failed rather than ran out ([`sluice_core::TaskSource::failure`]).
    fn draw(&mut self, n: usize) -> Result<Vec<(usize, Job)>> {
        let mut out = Vec::with_capacity(n);
        let mut attempts = 0usize;
        while out.len() < n && !self.exhausted.iter().all(|&e| e) && attempts < 1000 * n {
            attempts += 1;
            let s = self.curriculum.pick();
            if self.exhausted[s] {
                continue;
            }
            let src = &mut self.sources[s];
            match src.tasks.next_task() {
                Some(task) => out.push((
                    s,
                    Job { task, judge: src.judge.clone(), stop_strings: src.stop_strings.clone() },
                )),
                None => {
                    if let Some(why) = src.tasks.failure() {
                        return Err(RolloutError::Source {
                            task_source: src.tasks.name().to_string(),
                            reason: why,
                        });
                    }
                    tracing::info!(source = %src.tasks.name(), "task source exhausted");
                    self.exhausted[s] = true;
                }
            }
        }
        Ok(out)
    }

    /// Counts `n` finished groups as unsent (the worker stops before the replay took them).
    fn give_up(&mut self, n: usize, why: &str) {
        self.stats.groups_unsent += n as u64;
        tracing::error!(worker = %self.name, groups = n, "stopping with groups the replay did not take: {why}");
    }

    /// Appends `groups`, retrying transient failures until the replay takes them or the worker
    /// is stopped (then they are counted as unsent and logged).
    async fn append(&mut self, groups: Vec<Group>) -> Result<()> {
        loop {
            let Some(reply) = unless_stopped(&self.stop, self.replay.append(&groups)).await else {
                self.give_up(groups.len(), "the replay had not answered the append");
                return Ok(());
            };
            match reply {
                Ok(ack) => {
                    let orphaned = ack.orphaned.len() as u64;
                    self.stats.groups_orphaned += orphaned;
                    self.stats.groups_appended += groups.len() as u64 - orphaned;
                    if let Some(f) = &mut self.append_log {
                        use std::io::Write;
                        let kept: Vec<&Group> =
                            groups.iter().filter(|g| !ack.orphaned.contains(&g.group_id)).collect();
                        let ids: Vec<u64> = kept.iter().map(|g| g.group_id).collect();
                        let behavior: Vec<[u64; 2]> = kept
                            .iter()
                            .map(|g| {
                                let b = g.samples.iter().map(|s| s.behavior()).min().unwrap_or_default();
                                [b.epoch, b.version]
                            })
                            .collect();
                        let line =
                            serde_json::json!({"worker": self.name, "group_ids": ids, "behavior": behavior});
                        if let Err(e) = writeln!(f, "{line}") {
                            tracing::warn!(worker = %self.name, "append log: {e}");
                        }
                    }
                    return Ok(());
                }
                Err(ReplayError::Invalid(e)) => {
                    return Err(RolloutError::Internal(format!(
                        "the replay rejected this worker's groups: {e}"
                    )))
                }
                Err(e) => {
                    self.stats.append_retries += 1;
                    if self.stopped() {
                        self.give_up(groups.len(), &e.to_string());
                        return Ok(());
                    }
                    tracing::warn!(worker = %self.name, groups = groups.len(), "append failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// `call`'s output, or None once `stop` has been set for [`STOP_GRACE`].
async fn unless_stopped<T>(stop: &Arc<AtomicBool>, call: impl std::future::Future<Output = T>) -> Option<T> {
    let stop = stop.clone();
    let stopped = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        r = call => Some(r),
        _ = stopped => None,
    }
}

/// GRPO's |advantage| of each sample of a group (`|r - mean| / std`, 0 for a constant group),
/// DUMP's signal of how much a source still teaches.
pub fn abs_advantages(g: &Group) -> Vec<f32> {
    let n = g.samples.len().max(1) as f64;
    let mean = g.samples.iter().map(|s| s.reward as f64).sum::<f64>() / n;
    let var = g.samples.iter().map(|s| (s.reward as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    g.samples
        .iter()
        .map(|s| if std > 1e-6 { ((s.reward as f64 - mean).abs() / std) as f32 } else { 0.0 })
        .collect()
}
