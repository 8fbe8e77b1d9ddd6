//! The roles of a run, each usable alone (`sluice replay|learner|rollout CONFIG`) or all in one
//! process (`sluice run`): they meet only over zenoh, so the same code runs in both shapes.
//!
//! # Design
//! *Constraints.* Rollout workers come and go while a run goes on; a killed process of any role
//! must be restartable without losing acknowledged data; one process must own the run's metric
//! files. *Solution.* The replay role recovers its shards from the run directory; the learner
//! resumes from the newest sealed checkpoint in it (announcing so), owns `metrics.jsonl` and the
//! TensorBoard events, gathers the workers' reports published under
//! `sluice/{run}/metrics/rollout/{worker}`, and follows the workers' liveliness tokens
//! (`sluice/{run}/rollout/*`), logging joins and leaves; it never waits for a particular worker,
//! it waits for data. Workers start from the model on disk and move to the learner's weights
//! through weight sync (the staleness gate holds them until they have them). When the learner
//! reaches its step count it puts `sluice/{run}/done`, on which rollout and replay processes exit.
//! Peers do not route for one another, so every process that hears `done` puts it again once:
//! a worker whose link to the learner was down at that moment hears it from the replay.
//! *Cons:* a `done` put is not stored: a process that joins after it waits for a signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use sluice_core::{keys, PolicyId};
use sluice_learner::{resume_latest, AdamW, Checkpoints, Learner, MetricsLog, Trainer};
use sluice_model::Policy;
use sluice_replay::{ClientConfig, ReplayClient, ReplayService, Shard};
use sluice_rollout::{Runner, Worker, WorkerStats};
use sluice_weights_sync::{
    Destination, Publisher, PublisherConfig, StalenessGate, Subscriber, SubscriberConfig,
};
use zenoh::sample::{Locality, SampleKind};

use crate::config::RunConfig;
use crate::env_spec::Purpose;
use crate::fetch::resolve_model;
use crate::report::{rollout_record, Report, Summary};

/// The replay shards of a run, served on a session.
pub struct ReplayRole {
    services: Vec<ReplayService>,
    shards: Vec<Arc<Shard>>,
}

impl ReplayRole {
    /// Opens (recovering) every shard under `RUN_DIR/replay` and serves it.
    pub async fn start(cfg: &RunConfig, session: &zenoh::Session) -> Result<ReplayRole> {
        let mut role = ReplayRole { services: Vec::new(), shards: Vec::new() };
        let vocab = model_vocab(cfg)?;
        for k in 0..cfg.run.replay_shards {
            let dir = cfg.run.dir.join("replay").join(format!("shard-{k}"));
            let shard = Arc::new(
                Shard::open(&dir, k, cfg.replay.clone(), cfg.rl)
                    .with_context(|| format!("opening replay shard {}", dir.display()))?,
            );
            shard.set_vocab_size(vocab);
            let r = shard.recovery();
            tracing::info!(shard = k, "replay shard {} recovered: {r:?}", dir.display());
            role.services.push(ReplayService::start(session, &cfg.run.name, shard.clone()).await?);
            role.shards.push(shard);
        }
        Ok(role)
    }

    /// The shards.
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    /// Stops serving and closes the shards (flushing their logs), once the requests in flight
    /// have let go of them (up to a second).
    pub async fn stop(self) {
        for s in self.services {
            s.stop();
        }
        for mut shard in self.shards {
            for _ in 0..50 {
                match Arc::try_unwrap(shard) {
                    Ok(s) => {
                        s.close();
                        break;
                    }
                    Err(s) => shard = s,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The vocabulary size of the run's model (a known model's without fetching it, else its config's):
/// appended token ids must be below it.
pub fn model_vocab(cfg: &RunConfig) -> Result<u32> {
    if let Some(known) = crate::fetch::KNOWN_MODELS.iter().find(|m| m.name == cfg.model.path) {
        return Ok(known.vocab_size);
    }
    let path = resolve_model(&cfg.model.path)?;
    let info = sluice_model::model_info(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(u32::try_from(info.config.vocab_size).unwrap_or(u32::MAX))
}

/// Runs until SIGINT, SIGTERM, the stop flag, or the run's `done` put.
pub async fn until_stopped(session: &zenoh::Session, run: &str, stop: &AtomicBool) -> Result<()> {
    let done = session
        .declare_subscriber(keys::done(run))
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", keys::done(run)))?;
    let signal = signalled();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => return r,
            // The run's end, or the session closing under us: either way, stop.
            r = done.recv_async() => {
                if let Ok(sample) = r {
                    relay_done(session, run, sample.payload().to_bytes().into_owned()).await;
                }
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) { return Ok(()) }
            }
        }
    }
}

/// Puts the run's `done` again, once, for this process's peers. Peers do not route for one
/// another, so a worker whose link to the learner was down when it put `done` (reconnecting to a
/// restarted learner, say) hears it from the replay or another peer it is linked to. Each process
/// passes it on once, to remote peers only, and stops listening, so relays end.
async fn relay_done(session: &zenoh::Session, run: &str, payload: Vec<u8>) {
    if let Err(e) = session.put(keys::done(run), payload).allowed_destination(Locality::Remote).await {
        tracing::warn!("passing on {}: {e}", keys::done(run));
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signalled() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Sets `stop` on SIGINT or SIGTERM.
pub fn stop_on_signal(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if let Err(e) = signalled().await {
            tracing::warn!("signal handling: {e}");
            return;
        }
        eprintln!("stopping: the learner checkpoints at its next wait for data");
        stop.store(true, Ordering::Relaxed);
    });
}

/// What the learner role did.
pub struct LearnerOutcome {
    /// The step it resumed from (0 for a fresh run).
    pub resumed_from: u64,
    /// The step it ended at.
    pub step: u64,
    /// The summary of this process's part of the run.
    pub summary: Summary,
    /// Why the run stopped before its last step, when the environments spent the error budget
    /// (the caller prints the summary, then fails with it).
    pub budget_spent: Option<String>,
}

impl LearnerOutcome {
    /// An error when the run stopped on the environment error budget.
    pub fn check_budget(&self) -> Result<()> {
        match &self.budget_spent {
            Some(why) => anyhow::bail!(
                "the run stopped at step {}: {why}. The summary above lists the environment failures by \
                 kind with the first message of each; the rollout workers' logs have the rest",
                self.step
            ),
            None => Ok(()),
        }
    }
}

/// Writes the tokenizer files of `policy` where checkpoints copy them from.
fn tokenizer_dir<B: Backend>(dir: &Path, policy: &Policy<B>) -> Result<PathBuf> {
    let tok = dir.join("tokenizer");
    std::fs::create_dir_all(&tok).with_context(|| format!("creating {}", tok.display()))?;
    policy.tokenizer.save(&tok).with_context(|| format!("writing the tokenizer into {}", tok.display()))?;
    Ok(tok)
}

/// The learner: resumes from the newest checkpoint of the run directory (or starts from the model),
/// publishes weights, trains `learner.total_steps`, checkpoints, writes the metrics, follows the
/// workers' liveliness, and puts `done` at the end.
pub async fn learner<B: AutodiffBackend>(
    cfg: &RunConfig,
    session: &zenoh::Session,
    stop: Arc<AtomicBool>,
    device: B::Device,
) -> Result<LearnerOutcome> {
    let run = &cfg.run.name;
    let path = resolve_model(&cfg.model.path)?;
    let policy = Policy::<B>::load(&path, &device).with_context(|| format!("loading {}", path.display()))?;
    let tok_dir = tokenizer_dir(&cfg.run.dir, &policy)?;
    let lc = cfg.learner.clone();
    let reference = lc.needs_reference().then(|| policy.model.valid());
    let checkpoints = Checkpoints::new(cfg.run.dir.join("checkpoints"), lc.keep_checkpoints);
    let learner = match resume_latest::<B>(&checkpoints, &device) {
        Some(restored) => Learner::resume(lc.clone(), cfg.rl, restored, reference)?,
        None => {
            Learner::new(Trainer::new(lc.clone(), cfg.rl, policy.model, reference, AdamW::new(lc.optimizer))?)
        }
    };
    let resumed_from = learner.state().step;
    let epoch = checkpoints.next_epoch(learner.state().epoch)?;
    let learner = learner.start_epoch(epoch)?;
    let report = Report::open(&cfg.run.dir, resumed_from, lc.total_steps)?;
    if resumed_from > 0 {
        report.println(&format!(
            "resuming from the checkpoint of step {resumed_from} (version {}, {} groups trained) as run epoch \
             {epoch}",
            learner.state().version,
            learner.state().groups_consumed
        ));
    }
    let publisher = Publisher::start(
        session,
        PublisherConfig {
            shm: cfg.weights.shm,
            transfer_dtype: cfg.weights.transfer_dtype,
            ..PublisherConfig::new(run.clone())
        },
    )
    .await?;
    let learner = if lc.log_trained_groups {
        let path = cfg.run.dir.join("trained.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        learner.with_trained_log(file)
    } else {
        learner
    };
    let mut learner = learner
        .with_checkpoints(checkpoints)
        .with_publisher(publisher)
        .with_metrics(MetricsLog::sink(report.sink()))
        .with_tokenizer_dir(&tok_dir)
        .with_stop_flag(stop);

    let zerr = |what: String| move |e: zenoh::Error| anyhow::anyhow!("{what}: {e}");
    let token =
        session.liveliness().declare_token(keys::learner(run)).await.map_err(zerr(keys::learner(run)))?;
    let watchers = [
        tokio::spawn(follow_workers(session.clone(), run.clone(), report.clone())),
        tokio::spawn(gather_reports(session.clone(), run.clone(), report.clone())),
    ];
    let client = ReplayClient::new(session.clone(), ClientConfig::new(run.clone(), cfg.run.replay_shards))?;
    let result = learner.run(&client).await;
    for w in watchers {
        w.abort();
    }
    let _ = token.undeclare().await;
    let budget_spent = match result {
        Err(e @ sluice_learner::LearnerError::EnvFailures(_)) => Some(e.to_string()),
        r => {
            r?;
            None
        }
    };
    let step = learner.state().step;
    if step >= lc.total_steps {
        let state = serde_json::to_vec(learner.state())?;
        session.put(keys::done(run), state).await.map_err(zerr(keys::done(run)))?;
    }
    Ok(LearnerOutcome { resumed_from, step, summary: report.finish(), budget_spent })
}

/// Records workers joining and leaving (their liveliness tokens).
async fn follow_workers(session: zenoh::Session, run: String, report: Report) -> Result<()> {
    let key = keys::rollout_worker(&run, "*");
    let sub = session
        .liveliness()
        .declare_subscriber(&key)
        .history(true)
        .await
        .map_err(|e| anyhow::anyhow!("liveliness {key}: {e}"))?;
    let mut alive = std::collections::BTreeSet::new();
    while let Ok(sample) = sub.recv_async().await {
        let worker = sample.key_expr().as_str().rsplit('/').next().unwrap_or("").to_string();
        let event = match sample.kind() {
            SampleKind::Put if alive.insert(worker.clone()) => "worker_joined",
            SampleKind::Delete if alive.remove(&worker) => "worker_left",
            _ => continue,
        };
        let step = report.step();
        report.println(&format!("{event}: {worker} (at step {step}; {} alive)", alive.len()));
        let rec = serde_json::json!({"role": "learner", "event": event, "worker": worker, "step": step,
            "rollout/workers_alive": alive.len()});
        if let Err(e) = report.write(&rec) {
            tracing::warn!("metrics: {e}");
        }
    }
    Ok(())
}

/// Writes the workers' reports into the run's metrics.
async fn gather_reports(session: zenoh::Session, run: String, report: Report) -> Result<()> {
    let key = keys::metrics(&run, "rollout", "*");
    let sub = session.declare_subscriber(&key).await.map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    while let Ok(sample) = sub.recv_async().await {
        let worker = sample.key_expr().as_str().rsplit('/').next().unwrap_or("").to_string();
        match serde_json::from_slice::<serde_json::Value>(&sample.payload().to_bytes()) {
            Ok(stats) => {
                if let Err(e) = report.write(&rollout_record(&worker, report.step(), &stats)) {
                    tracing::warn!("metrics: {e}");
                }
            }
            Err(e) => tracing::warn!("a report from {worker} that is not JSON: {e}"),
        }
    }
    Ok(())
}

/// Rollout workers named `names` in this process: each with its own model copy, weight-sync
/// subscriber and task sources, until `stop` (or the run's `done`). Returns each worker's counters.
/// `append_log`, when given, receives a JSON line per acknowledged batch (see
/// [`Worker::with_append_log`]).
pub async fn rollout<B: Backend>(
    cfg: &RunConfig,
    session: &zenoh::Session,
    names: &[String],
    stop: Arc<AtomicBool>,
    append_log: Option<&Path>,
    device: B::Device,
) -> Result<Vec<(String, WorkerStats)>> {
    let run = &cfg.run.name;
    let path = resolve_model(&cfg.model.path)?;
    let policy = Policy::<B>::load(&path, &device).with_context(|| format!("loading {}", path.display()))?;
    let mut handles = Vec::new();
    for name in names {
        let sub_cfg = SubscriberConfig {
            expected_tensors: Some(policy.model.config().tensor_shapes()),
            ..SubscriberConfig::new(run.clone(), name.clone())
        };
        let gate = StalenessGate::new(cfg.rl.max_staleness, PolicyId::default());
        let sub = Subscriber::start(session, sub_cfg, Destination::REPLICATED, gate).await?;
        let runner = Runner::new(
            run,
            name,
            cfg.rollout.clone(),
            cfg.rl,
            policy.tokenizer.clone(),
            policy.stop_token_ids(),
        )?;
        let mix = sluice_core::fnv1a64(name.as_bytes());
        let sources = cfg
            .envs
            .iter()
            .map(|e| {
                e.build(Purpose::Train(mix), session, run, Duration::from_secs_f64(cfg.rollout.env_timeout_s))
            })
            .collect::<Result<Vec<_>>>()?;
        let replay =
            ReplayClient::new(session.clone(), ClientConfig::new(run.clone(), cfg.run.replay_shards))?;
        let (tx, mut rx) = tokio::sync::watch::channel(WorkerStats::default());
        let mut worker = Worker::new(
            session.clone(),
            replay,
            name,
            runner,
            policy.model.clone(),
            PolicyId::default(),
            sources,
        )?
        .with_subscriber(sub)
        .with_reports(tx)
        .with_stop_flag(stop.clone());
        if let Some(path) = append_log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the append log {}", path.display()))?;
            worker = worker.with_append_log(file);
        }
        let (s, key) = (session.clone(), keys::metrics(run, "rollout", name));
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let stats = rx.borrow_and_update().clone();
                if let Ok(body) = serde_json::to_vec(&stats) {
                    if let Err(e) = s.put(&key, body).await {
                        tracing::warn!("{key}: {e}");
                    }
                }
            }
        });
        let name = name.clone();
        handles.push(tokio::spawn(async move {
            let r = worker.run(None).await;
            (name, r)
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        let (name, r) = h.await.context("a rollout worker panicked")?;
        out.push((name.clone(), r.with_context(|| format!("rollout worker {name}"))?));
    }
    Ok(out)
}

/// The learner backend for `run.device`, with its device.
#[macro_export]
macro_rules! with_device {
    ($device:expr, |$b:ident, $ad:ident, $dev:ident| $body:expr) => {
        match $device {
            #[cfg(feature = "cuda")]
            "cuda" => {
                type $b = sluice_model::Cuda;
                type $ad = burn::backend::Autodiff<sluice_model::Cuda>;
                let $dev = Default::default();
                $body
            }
            _ => {
                type $b = sluice_model::Cpu;
                type $ad = sluice_model::CpuAutodiff;
                let $dev = Default::default();
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{free_local_port, ZenohOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_linked_to_the_replay_only_hears_the_runs_end_through_it() {
        // Peers do not route for one another: a worker whose link to the learner is down when the
        // learner puts `done` (it was reconnecting to a restarted learner) hears it only if the
        // replay, which it is linked to, passes it on. Before, such a worker waited for good.
        let replay_ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
        let replay = ZenohOptions::listen_on(&replay_ep).open().await.unwrap();
        let worker = ZenohOptions::connect_to(&replay_ep).open().await.unwrap();
        let learner = ZenohOptions::connect_to(&replay_ep).open().await.unwrap();
        let run = "relay";
        let (r, w) = (replay.clone(), worker.clone());
        let replay_role = tokio::spawn(async move { until_stopped(&r, run, &AtomicBool::new(false)).await });
        let worker_role = tokio::spawn(async move { until_stopped(&w, run, &AtomicBool::new(false)).await });
        // Both subscribers are declared and known to the learner's session before it puts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        learner.put(keys::done(run), "{}").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), replay_role).await.unwrap().unwrap().unwrap();
        let heard = tokio::time::timeout(Duration::from_secs(10), worker_role).await;
        assert!(heard.is_ok(), "the worker never heard that the run ended");
        heard.unwrap().unwrap().unwrap();
    }
}
