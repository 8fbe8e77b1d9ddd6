//! The learner loop: pull whole groups from the replay, train, publish weights, checkpoint, log.
//!
//! # Design
//! *Constraints.* Resume must neither skip nor repeat data (what practitioners hate most after a
//! crash), the step must not stall the weight publisher or the zenoh runtime, and a run must be
//! reproducible from its checkpoint. *Solution.* Groups drawn from the `fifo` stream are
//! acknowledged to the replay only once a checkpoint that contains their update is sealed: until
//! then they are held under the learner's lease, listed in the trainer state (`unacked`), and
//! acknowledged on resume if the crash came after the seal. A crash before the seal leaves them
//! unacknowledged, so the replay delivers them again when their lease ends; groups redelivered
//! while this learner still holds them are skipped (counted as `data/duplicates_skipped`). Without
//! checkpoints, groups are acknowledged after each step. The step runs on the caller's thread
//! (inside `block_in_place` on a multi-thread runtime), so the publisher's casting and hashing
//! proceed on tokio's blocking pool meanwhile. The trainer state (`trainer.json`) holds the
//! version, the learner step, the seed, the schedule position, the replay consumer position and
//! the config digest; the model directory beside it is an HF checkpoint, the optimizer's moments
//! are `optimizer.safetensors`. *Cons:* the replay's `fifo_lease_ms` should exceed the time
//! between checkpoints, or groups come back (and are skipped) while the learner still runs.
//!
//! The learner draws no random numbers itself (the replay's samplers hold their own seeded RNG);
//! the state records the run's seed so that any draw is keyed by `(seed, step)`.
//!
//! Every learner start is a new run epoch ([`Checkpoints::next_epoch`], [`Learner::start_epoch`]):
//! the weights it publishes carry the lineage (epoch, version, ancestry), and so do its sample
//! requests, so that after a resume from a checkpoint behind the versions already published,
//! workers move to the resumed weights and the replay drops what the orphaned versions sampled
//! (`docs/design.md`, "Versions and staleness"). A group that still arrives sampled by an orphaned
//! version is dropped here too (`data/orphaned_dropped`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use sluice_core::{metrics, trajectory, Group, Lineage, PolicyId, RlConfig};
use sluice_model::Llama;
use sluice_replay::{SampleRequest, Sampler};
use sluice_weights_sync::{Announce, Publisher, SourceTensor};
use tokio::task::JoinHandle;

use crate::checkpoint::{write_checkpoint, Checkpoints, Restored, TrainerState};
use crate::config::LearnerConfig;
use crate::error::{LearnerError, Result};
use crate::metrics_log::{record, MetricsLog};
use crate::source::GroupSource;
use crate::trainer::{StepStats, Trainer};

/// The learner: a [`Trainer`] fed from a [`GroupSource`], with optional weight publishing,
/// checkpoints and a metrics log.
pub struct Learner<B: AutodiffBackend> {
    trainer: Trainer<B>,
    state: TrainerState,
    checkpoints: Option<Checkpoints>,
    publisher: Option<Publisher>,
    publishing: Option<JoinHandle<sluice_weights_sync::Result<Announce>>>,
    /// The version last handed to the publisher (a version is published once).
    published: Option<PolicyId>,
    /// The version whose weights were last found finite.
    checked_finite: Option<u64>,
    metrics: Option<MetricsLog>,
    /// One JSON line per step naming the groups it trained on (`learner.log_trained_groups`).
    trained_log: Option<std::fs::File>,
    tokenizer_dir: Option<PathBuf>,
    /// Groups trained since the last checkpoint (== `state.unacked`), for duplicate detection.
    held: HashSet<u64>,
    /// Acks a restored checkpoint still owes the replay.
    owed: Vec<u64>,
    stop: Arc<AtomicBool>,
    poll: Duration,
    budget: FailureBudget,
}

impl<B: AutodiffBackend> Learner<B> {
    /// A learner starting at the trainer's version with a fresh state.
    pub fn new(trainer: Trainer<B>) -> Self {
        let cfg = trainer.config();
        let state = TrainerState {
            format: 1,
            version: trainer.version(),
            step: 0,
            seed: cfg.seed,
            schedule_step: trainer.version(),
            consumer: cfg.consumer.clone(),
            groups_consumed: 0,
            samples_consumed: 0,
            unacked: Vec::new(),
            config_digest: cfg.digest(trainer.rl()),
            epoch: 0,
            ancestry: Vec::new(),
        };
        Self::with_state(trainer, state, Vec::new())
    }

    fn with_state(trainer: Trainer<B>, state: TrainerState, owed: Vec<u64>) -> Self {
        Learner {
            trainer,
            state,
            checkpoints: None,
            publisher: None,
            publishing: None,
            published: None,
            checked_finite: None,
            metrics: None,
            trained_log: None,
            tokenizer_dir: None,
            held: HashSet::new(),
            owed,
            stop: Arc::new(AtomicBool::new(false)),
            poll: Duration::from_millis(50),
            budget: FailureBudget::default(),
        }
    }

    /// Resumes from a restored checkpoint: the model and optimizer go into a trainer built with
    /// `cfg`, `rl` and `reference`; the groups the checkpoint had not acknowledged yet are
    /// acknowledged on the first step. A config whose digest differs from the checkpoint's is
    /// accepted with a warning (changing, say, `total_steps` is legitimate; the digests are logged).
    pub fn resume(
        cfg: LearnerConfig,
        rl: RlConfig,
        restored: Restored<B>,
        reference: Option<Llama<B::InnerBackend>>,
    ) -> Result<Self> {
        let Restored { model, optimizer, mut state } = restored;
        let digest = cfg.digest(&rl);
        if state.config_digest != digest {
            tracing::warn!(
                "resuming under a different config (checkpoint {}, now {digest})",
                state.config_digest,
            );
            state.config_digest = digest;
        }
        if state.consumer != cfg.consumer {
            return Err(LearnerError::InvalidConfig {
                name: "learner.consumer",
                reason: format!(
                    "the checkpoint consumed the replay as {:?}; resuming as {:?} would re-read its data",
                    state.consumer, cfg.consumer
                ),
            });
        }
        let owed = std::mem::take(&mut state.unacked);
        let trainer = Trainer::new(cfg, rl, model, reference, optimizer)?.at_version(state.version);
        Ok(Self::with_state(trainer, state, owed))
    }

    /// Makes this learner start run epoch `epoch` ([`Checkpoints::next_epoch`]), descending from
    /// the weights it holds: the restored checkpoint's lineage, or the initial weights. What any
    /// earlier epoch published past those weights is orphaned from here on.
    pub fn start_epoch(mut self, epoch: u64) -> Result<Self> {
        if epoch <= self.state.epoch {
            return Err(LearnerError::Checkpoint(format!(
                "run epoch {epoch} is not above the checkpoint's epoch {}",
                self.state.epoch
            )));
        }
        let lineage = self.lineage().fork(epoch);
        (self.state.epoch, self.state.ancestry) = (lineage.epoch, lineage.ancestry);
        Ok(self)
    }

    /// The lineage of the weights now: this start's epoch, the version, the ancestry.
    pub fn lineage(&self) -> Lineage {
        Lineage { version: self.trainer.version(), ..self.state.lineage() }
    }

    /// Appends one JSON line per step to `file`: the step, the learner's epoch and version before
    /// the update, and the groups trained on with the version of the weights that sampled each
    /// (`{"step", "epoch", "version", "groups": [[group_id, epoch, version], ...]}`). An audit of
    /// what trained the policy, which the resume test checks against the checkpoints.
    pub fn with_trained_log(mut self, file: std::fs::File) -> Self {
        self.trained_log = Some(file);
        self
    }

    /// Writes checkpoints into `checkpoints` (every `checkpoint_every` steps and at the end).
    pub fn with_checkpoints(mut self, checkpoints: Checkpoints) -> Self {
        self.checkpoints = Some(checkpoints);
        self
    }

    /// Publishes weights through `publisher` (at the start, every `sync_every` steps, at the end).
    pub fn with_publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Appends a record per step to `metrics.jsonl` at `path`.
    pub fn with_metrics(mut self, log: MetricsLog) -> Self {
        self.metrics = Some(log);
        self
    }

    /// Copies the tokenizer files of `dir` into every checkpoint, so each one loads as a policy.
    pub fn with_tokenizer_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tokenizer_dir = Some(dir.into());
        self
    }

    /// Uses `flag` as the stop flag (shared with the caller's signal handling).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// A flag that ends [`Learner::run`] at the next point where it waits for data.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The trainer.
    pub fn trainer(&self) -> &Trainer<B> {
        &self.trainer
    }

    /// The trainer state as the next checkpoint would record it.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Runs until `total_steps` (or the stop flag), then checkpoints and publishes the last
    /// version. Returns the steps taken by this call.
    pub async fn run<S: GroupSource>(&mut self, source: &S) -> Result<u64> {
        let total = self.trainer.config().total_steps;
        let start = self.state.step;
        self.publish().await?;
        while self.state.step < total {
            if self.step(source).await?.is_none() {
                break;
            }
        }
        self.finish(source).await?;
        Ok(self.state.step - start)
    }

    /// One learner step: fill the batch, train, then publish, checkpoint and log as configured.
    /// `None` when the stop flag was raised while waiting for data.
    pub async fn step<S: GroupSource>(&mut self, source: &S) -> Result<Option<StepStats>> {
        self.ack_owed(source).await?;
        let waited = Instant::now();
        let Some((groups, mut data)) = self.fill(source).await? else { return Ok(None) };
        let wait_s = waited.elapsed().as_secs_f64();
        self.log_trained(&groups)?;
        let started = Instant::now();
        let mut stats = in_place(|| self.trainer.train(&groups))?;
        let step_s = started.elapsed().as_secs_f64();
        stats.values.append(&mut data.values);
        stats.values.insert(metrics::WAIT_DATA_S, wait_s);
        stats.values.insert(metrics::STEP_S, step_s);
        let tokens = stats.get(metrics::TOKENS).unwrap_or(0.0);
        stats.values.insert(metrics::TOKENS_PER_S, tokens / step_s.max(1e-9));

        self.state.step += 1;
        self.state.version = self.trainer.version();
        self.state.schedule_step = self.trainer.version();
        self.state.groups_consumed += groups.len() as u64;
        self.state.samples_consumed += groups.iter().map(|g| g.samples.len() as u64).sum::<u64>();
        for g in &groups {
            if self.held.insert(g.group_id) {
                self.state.unacked.push(g.group_id);
            }
        }
        let cfg = self.trainer.config();
        let last = self.state.step >= cfg.total_steps;
        let every = cfg.checkpoint_every;
        if self.state.step.is_multiple_of(cfg.sync_every) && !last {
            self.publish().await?;
        }
        match &self.checkpoints {
            Some(_) => {
                if every > 0 && self.state.step.is_multiple_of(every) && !last {
                    self.checkpoint(source).await?;
                }
            }
            None => self.ack_held(source).await?,
        }
        if let Some(log) = &mut self.metrics {
            log.write(&record("learner", self.state.step, self.state.version, &stats))?;
        }
        Ok(Some(stats))
    }

    /// The final checkpoint and publish, and the acks they release.
    pub async fn finish<S: GroupSource>(&mut self, source: &S) -> Result<()> {
        self.ack_owed(source).await?;
        self.publish().await?;
        if self.checkpoints.is_some() {
            self.checkpoint(source).await?;
        } else {
            self.ack_held(source).await?;
        }
        if let Some(handle) = self.publishing.take() {
            let announce =
                handle.await.map_err(|e| LearnerError::Task(format!("weight publishing: {e}")))??;
            tracing::info!("published version {}", announce.id());
        }
        Ok(())
    }

    /// Writes a checkpoint of the current step, then acknowledges the groups it covers.
    pub async fn checkpoint<S: GroupSource>(&mut self, source: &S) -> Result<PathBuf> {
        let Some(ckpts) = &self.checkpoints else {
            return Err(LearnerError::Checkpoint("no checkpoint directory configured".into()));
        };
        check_finite(&self.trainer, &mut self.checked_finite)?;
        let (state, trainer, tokenizer) = (&self.state, &self.trainer, self.tokenizer_dir.as_deref());
        let path =
            in_place(|| write_checkpoint(ckpts, state, trainer.model(), trainer.optimizer(), tokenizer))?;
        tracing::info!("checkpoint {} (version {})", path.display(), self.state.version);
        self.ack_held(source).await?;
        Ok(path)
    }

    /// Acknowledges what the restored checkpoint covered but had not acknowledged yet.
    async fn ack_owed<S: GroupSource>(&mut self, source: &S) -> Result<()> {
        if !self.owed.is_empty() {
            source.ack(&self.state.consumer, &self.owed).await?;
            self.owed.clear();
        }
        Ok(())
    }

    async fn ack_held<S: GroupSource>(&mut self, source: &S) -> Result<()> {
        if self.state.unacked.is_empty() {
            return Ok(());
        }
        source.ack(&self.state.consumer, &self.state.unacked).await?;
        self.state.unacked.clear();
        self.held.clear();
        Ok(())
    }

    /// Hands the current weights to the publisher (its casting and hashing run in the background;
    /// the previous publish's outcome is checked here).
    async fn publish(&mut self) -> Result<()> {
        let Some(publisher) = &self.publisher else { return Ok(()) };
        let lineage = self.lineage();
        if self.published == Some(lineage.now()) {
            return Ok(());
        }
        if let Some(prev) = self.publishing.take() {
            // A publish still preparing finishes on its own; subscribers move to the newer one.
            if prev.is_finished() {
                prev.await.map_err(|e| LearnerError::Task(format!("weight publishing: {e}")))??;
            }
        }
        check_finite(&self.trainer, &mut self.checked_finite)?;
        let snapshot = self
            .trainer
            .model()
            .to_host_tensors()
            .into_iter()
            .map(|(name, t)| SourceTensor::whole(name, t.shape, t.data))
            .collect();
        self.published = Some(lineage.now());
        self.publishing = Some(publisher.publish(lineage, snapshot));
        Ok(())
    }

    fn log_trained(&mut self, groups: &[Group]) -> Result<()> {
        let now = self.lineage().now();
        let Some(file) = &mut self.trained_log else { return Ok(()) };
        let groups: Vec<[u64; 3]> = groups
            .iter()
            .map(|g| {
                let b = g.samples.iter().map(|s| s.behavior()).min().unwrap_or_default();
                [g.group_id, b.epoch, b.version]
            })
            .collect();
        let line = serde_json::json!({
            "step": self.state.step + 1, "epoch": now.epoch, "version": now.version, "groups": groups,
        });
        use std::io::Write;
        writeln!(file, "{line}").map_err(|e| LearnerError::Checkpoint(format!("trained-groups log: {e}")))
    }

    /// Draws groups until the batch is full; `None` if stopped while waiting.
    async fn fill<S: GroupSource>(&mut self, source: &S) -> Result<Option<(Vec<Group>, StepStats)>> {
        let (cfg, rl) = (self.trainer.config(), self.trainer.rl());
        let want = rl.groups_per_step;
        let sampler = cfg.sampler;
        let fifo = matches!(sampler, Sampler::Fifo);
        let max_dropped = match cfg.max_zero_variance_dropped {
            0 => u64::MAX,
            n => n as u64,
        };
        let lineage = self.lineage();
        let mut groups: Vec<Group> = Vec::with_capacity(want);
        let mut taken: HashSet<u64> = HashSet::new();
        let (mut requests, mut dropped, mut duplicates, mut failed) = (0u64, 0u64, 0u64, 0u64);
        let mut orphaned = 0u64;
        let (mut episodes, mut failed_episodes) = (0u64, 0u64);
        let mut untrained = Vec::new();
        while groups.len() < want {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let drop_zero = cfg.drops_zero_variance() && dropped < max_dropped;
            let req = SampleRequest {
                sampler,
                groups: (want - groups.len()) as u32,
                learner: lineage.clone(),
                max_staleness: rl.max_staleness,
                consumer: cfg.consumer.clone(),
                drop_zero_variance: drop_zero,
                dedup: false,
                // A sampler other than fifo draws with replacement across requests.
                exclude: if fifo { Vec::new() } else { taken.iter().copied().collect() },
            };
            let (batch, info) = source.sample(&req).await?;
            requests += 1;
            dropped += info.zero_variance_dropped;
            episodes += info.zero_variance_rows;
            failed_episodes += info.zero_variance_failed;
            let drawn = if batch.num_rows() == 0 {
                Vec::new()
            } else {
                trajectory::batch_to_groups(&batch).map_err(|e| {
                    LearnerError::Batch(format!("the replay sent a batch that does not decode: {e}"))
                })?
            };
            let got = drawn.len();
            for g in drawn {
                if taken.contains(&g.group_id) || fifo && self.held.contains(&g.group_id) {
                    duplicates += 1;
                    continue;
                }
                let too_few_valid = g.too_few_valid();
                let orphan = g.samples.iter().any(|s| lineage.orphans(s.behavior()));
                if !orphan {
                    let failures = g.samples.iter().filter(|s| s.failed()).count();
                    episodes += g.samples.len() as u64;
                    failed_episodes += failures as u64;
                    self.budget.drawn(failures == g.samples.len(), cfg, want)?;
                }
                if orphan || too_few_valid || drop_zero && dropped < max_dropped && g.zero_variance() {
                    // Sampled by weights a resume threw away, no baseline (failed episodes), or no
                    // GRPO signal: consumed at once, untrained (no update to wait for a checkpoint
                    // of), and wasted for admission, so producers replace them.
                    if orphan {
                        orphaned += 1;
                    } else if too_few_valid {
                        failed += 1;
                    } else {
                        dropped += 1;
                    }
                    untrained.push(g.group_id);
                    continue;
                }
                taken.insert(g.group_id);
                groups.push(g);
            }
            if !untrained.is_empty() {
                source.ack_dropped(&cfg.consumer, &untrained).await?;
                untrained.clear();
            }
            if groups.len() < want && got == 0 {
                tokio::time::sleep(self.poll).await;
            }
        }
        self.budget.filled(failed_episodes, episodes, cfg)?;
        let mut data = StepStats::default();
        data.values.insert(metrics::FAILED_EPISODES, failed_episodes as f64);
        data.values.insert(metrics::FAILED_FRACTION, failed_episodes as f64 / episodes.max(1) as f64);
        data.values.insert(metrics::SAMPLE_REQUESTS, requests as f64);
        data.values.insert(metrics::ZERO_VARIANCE_DROPPED, dropped as f64);
        data.values.insert(metrics::DUPLICATES_SKIPPED, duplicates as f64);
        data.values.insert(metrics::FAILED_GROUPS_DROPPED, failed as f64);
        data.values.insert(metrics::ORPHANED_DROPPED, orphaned as f64);
        Ok(Some((groups, data)))
    }
}

/// The environment error budget's running counts (`learner.max_failed_fraction` and
/// `learner.max_failed_steps`; `docs/environments.md`, "Failures").
#[derive(Debug, Default)]
struct FailureBudget {
    /// Steps in a row in which more than the fraction of the drawn episodes failed.
    steps_over: u32,
    /// Groups drawn in a row, across steps, every episode of which failed.
    groups_all_failed: u64,
}

impl FailureBudget {
    /// Counts a drawn group; an error once every episode of `max_failed_steps` steps' worth of
    /// groups in a row failed (such a step never fills, so this is checked as groups come).
    fn drawn(&mut self, all_failed: bool, cfg: &LearnerConfig, groups_per_step: usize) -> Result<()> {
        self.groups_all_failed = if all_failed { self.groups_all_failed + 1 } else { 0 };
        let limit = u64::from(cfg.max_failed_steps) * groups_per_step as u64;
        if cfg.max_failed_steps > 0 && self.groups_all_failed >= limit {
            return Err(LearnerError::EnvFailures(format!(
                "every episode of the last {} groups drawn ({} steps' worth) failed; \
                 learner.max_failed_steps = {}",
                self.groups_all_failed, cfg.max_failed_steps, cfg.max_failed_steps
            )));
        }
        Ok(())
    }

    /// Counts a filled step of `drawn` episodes, `failed` of which failed; an error once
    /// `max_failed_steps` steps in a row went over the fraction.
    fn filled(&mut self, failed: u64, drawn: u64, cfg: &LearnerConfig) -> Result<()> {
        let over = failed as f64 > cfg.max_failed_fraction * drawn as f64;
        self.steps_over = if over { self.steps_over + 1 } else { 0 };
        if cfg.max_failed_steps > 0 && self.steps_over >= cfg.max_failed_steps {
            return Err(LearnerError::EnvFailures(format!(
                "more than {:.0}% of the episodes drawn for each of the last {} steps failed \
                 ({failed} of {drawn} in the last); learner.max_failed_fraction = {}, \
                 learner.max_failed_steps = {}",
                cfg.max_failed_fraction * 100.0,
                self.steps_over,
                cfg.max_failed_fraction,
                cfg.max_failed_steps
            )));
        }
        Ok(())
    }
}

/// Refuses non-finite weights before they leave the learner. Weights change only with the version,
/// so each version is checked once (`checked`: the version last found finite): a step's publish and
/// checkpoint share the check.
fn check_finite<B: AutodiffBackend>(trainer: &Trainer<B>, checked: &mut Option<u64>) -> Result<()> {
    let version = trainer.version();
    if *checked != Some(version) {
        in_place(|| trainer.check_finite())?;
        *checked = Some(version);
    }
    Ok(())
}

/// Runs CPU-heavy work without starving the runtime's other tasks.
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_budget_tolerates_a_bad_step_and_stops_a_failing_run() {
        let cfg = LearnerConfig { max_failed_fraction: 0.5, max_failed_steps: 3, ..Default::default() };
        let mut b = FailureBudget::default();
        // A crash: one step's draw loses two whole groups, then the run goes on.
        for all_failed in [true, true, false, false] {
            b.drawn(all_failed, &cfg, 2).unwrap();
        }
        b.filled(8, 16, &cfg).unwrap();
        // Two steps over the fraction, then one at it: the streak ends.
        b.filled(9, 16, &cfg).unwrap();
        b.filled(16, 16, &cfg).unwrap();
        b.filled(8, 16, &cfg).unwrap();
        b.filled(9, 16, &cfg).unwrap();
        b.filled(10, 16, &cfg).unwrap();
        let e = b.filled(12, 16, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("more than 50% of the episodes drawn for each of the last 3 steps failed (12 of 16"),
            "{e}"
        );
        // Every episode failing: the step never fills; three steps' worth of groups stops it.
        let mut b = FailureBudget::default();
        for _ in 0..5 {
            b.drawn(true, &cfg, 2).unwrap();
        }
        let e = b.drawn(true, &cfg, 2).unwrap_err().to_string();
        assert!(e.contains("every episode of the last 6 groups drawn (3 steps' worth) failed"), "{e}");
        // 0 turns the budget off.
        let off = LearnerConfig { max_failed_steps: 0, ..cfg };
        let mut b = FailureBudget::default();
        for _ in 0..100 {
            b.drawn(true, &off, 2).unwrap();
            b.filled(16, 16, &off).unwrap();
        }
    }
}
