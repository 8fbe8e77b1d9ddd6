//! The rollout side of weight sync (`docs/design.md`, "Weight sync").
//!
//! A [`Subscriber`] learns of versions from announces and, on join and after a reconnect, from
//! the publisher's `latest` queryable (asked every `poll`). For the newest version it knows of
//! and has not staged, it fetches the manifest (its digest must match the announce's), plans its
//! own [`Destination`], fetches the chunks it needs with at most `parallel` requests in flight,
//! verifies each one (a mismatch is refetched; after `chunk_retries` refetches the version is
//! abandoned with an error and never handed out), writes them into staging buffers, and hands the
//! complete version to its owner ([`Subscriber::ready`], [`Subscriber::next_ready`]). The owner
//! swaps it in between generation steps and calls [`Subscriber::applied`], which moves the
//! [`StalenessGate`] and acknowledges the version on `ack/{worker}` (repeated every `poll`).
//!
//! Versions are handed out in increasing [`PolicyId`] order (epoch, then version: a resumed
//! learner's weights are newer than the orphaned ones a worker may hold, though their version
//! number is lower) and only whole; a version older than the one staged or applied is ignored, and
//! when several versions are announced while one is fetched, only the newest is fetched next (the
//! intermediate ones would only be staler).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_core::{keys, PolicyId};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use zenoh::bytes::ZBytes;

use crate::destination::{Destination, Placement, StagedTensor};
use crate::error::{Result, SyncError};
use crate::gate::StalenessGate;
use crate::manifest::{Chunk, DType, Manifest};
use crate::wire::{self, Ack, Announce};

/// How a rollout worker subscribes.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The run.
    pub run: String,
    /// This worker's name (its acks go to `ack/{worker}`).
    pub worker: String,
    /// Chunk requests in flight.
    pub parallel: usize,
    /// Refetches of one chunk that fails its checksum before the version is abandoned.
    pub chunk_retries: u32,
    /// How long one request waits for its reply.
    pub request_timeout: Duration,
    /// How often the publisher's latest version is asked for (join, reconnect, lost announces).
    pub poll: Duration,
    /// The model's tensors (checkpoint name, shape) when known: a manifest that lists others is
    /// refused before anything is allocated for it (a hostile or mistaken publisher could claim
    /// any size).
    pub expected_tensors: Option<Vec<(String, Vec<usize>)>>,
}

impl SubscriberConfig {
    /// Defaults for `worker` in `run`.
    pub fn new(run: impl Into<String>, worker: impl Into<String>) -> Self {
        SubscriberConfig {
            run: run.into(),
            worker: worker.into(),
            parallel: 8,
            chunk_retries: 3,
            request_timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            expected_tensors: None,
        }
    }
}

/// A complete, verified version in the destination's layout and the transfer dtype.
#[derive(Debug)]
pub struct Weights {
    /// The learner start that published it.
    pub epoch: u64,
    /// The version.
    pub version: u64,
    /// Element type of every buffer.
    pub dtype: DType,
    /// The tensors, in the order of `buffers`.
    pub tensors: Vec<StagedTensor>,
    /// Each tensor's bytes.
    pub buffers: Vec<Vec<u8>>,
}

impl Weights {
    /// Which version it is.
    pub fn id(&self) -> PolicyId {
        PolicyId::new(self.epoch, self.version)
    }

    /// The tensor called `name` and its bytes.
    pub fn tensor(&self, name: &str) -> Option<(&StagedTensor, &[u8])> {
        let i = self.tensors.iter().position(|t| t.name == name)?;
        Some((&self.tensors[i], &self.buffers[i]))
    }

    /// Tensor `name` as f32.
    pub fn values(&self, name: &str) -> Option<Vec<f32>> {
        self.tensor(name).map(|(_, b)| self.dtype.decode(b))
    }
}

/// What a subscriber has done.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubscriberStats {
    /// Versions fetched whole and handed out.
    pub versions_staged: u64,
    /// Versions given up after checksum failures or an unusable manifest.
    pub versions_abandoned: u64,
    /// Announces of versions older than the one staged or applied.
    pub older_ignored: u64,
    /// Fetches interrupted by silence or a version no longer held (retried later).
    pub fetch_failures: u64,
    /// Chunks received intact.
    pub chunks_fetched: u64,
    /// Chunk replies that failed their checksum and were fetched again.
    pub chunk_refetches: u64,
    /// Bytes of intact chunks.
    pub bytes_fetched: u64,
    /// Versions staged into the previous version's buffers (no allocation).
    pub staging_reused: u64,
    /// The newest version staged.
    pub staged_version: Option<PolicyId>,
    /// Milliseconds from seeing the last staged version to having it whole.
    pub last_sync_ms: f64,
    /// The last error.
    pub last_error: Option<String>,
}

struct Inner {
    session: zenoh::Session,
    cfg: SubscriberConfig,
    dest: Destination,
    gate: StalenessGate,
    ready: watch::Sender<Option<Arc<Weights>>>,
    stats: Mutex<SubscriberStats>,
    applied: Mutex<PolicyId>,
}

/// Keeps one worker's weights current. Dropping it stops fetching.
pub struct Subscriber {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

/// Why a fetch stopped.
enum Failure {
    /// The bytes or the manifest are wrong, or the destination cannot hold it: never retried.
    Integrity(String),
    /// Silence or a version no longer held: retried while it is the newest.
    Transient(String),
}

impl Subscriber {
    /// Subscribes `cfg.worker` on `session`; `gate` holds the version it starts from.
    pub async fn start(
        session: &zenoh::Session,
        cfg: SubscriberConfig,
        dest: Destination,
        gate: StalenessGate,
    ) -> Result<Subscriber> {
        keys::check_name("run", &cfg.run).map_err(|e| SyncError::Config(e.to_string()))?;
        keys::check_name("worker", &cfg.worker).map_err(|e| SyncError::Config(e.to_string()))?;
        if cfg.parallel == 0 {
            return Err(SyncError::Config("subscriber parallel must be at least 1".into()));
        }
        let key = wire::announce_key(&cfg.run);
        let announces =
            session.declare_subscriber(&key).await.map_err(|e| SyncError::Zenoh(format!("{key}: {e}")))?;
        let (ready, _) = watch::channel(None);
        let applied = Mutex::new(gate.versions().1);
        let inner = Arc::new(Inner {
            session: session.clone(),
            cfg,
            dest,
            gate,
            ready,
            stats: Mutex::new(SubscriberStats::default()),
            applied,
        });
        let task = tokio::spawn(inner.clone().run(announces));
        Ok(Subscriber { inner, task })
    }

    /// The staleness gate this subscriber moves.
    pub fn gate(&self) -> &StalenessGate {
        &self.inner.gate
    }

    /// The newest staged version not applied yet.
    pub fn ready(&self) -> Option<Arc<Weights>> {
        let applied = self.inner.applied();
        self.inner.ready.borrow().as_ref().filter(|w| w.id() > applied).cloned()
    }

    /// Waits for a staged version newer than the one applied.
    pub async fn next_ready(&self) -> Arc<Weights> {
        let mut rx = self.inner.ready.subscribe();
        loop {
            if let Some(w) = self.ready() {
                return w;
            }
            // The sender lives in `self.inner`, so the channel stays open.
            let _ = rx.changed().await;
        }
    }

    /// Records that the owner now generates with `version` and acknowledges it.
    pub async fn applied(&self, version: PolicyId) -> Result<()> {
        {
            let mut applied = self.inner.applied.lock().unwrap_or_else(|e| e.into_inner());
            *applied = (*applied).max(version);
        }
        self.inner.gate.set_applied(version);
        self.inner.ack().await
    }

    /// The counters.
    pub fn stats(&self) -> SubscriberStats {
        self.inner.stats().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    fn stats(&self) -> std::sync::MutexGuard<'_, SubscriberStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applied(&self) -> PolicyId {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest version staged or applied.
    fn have(&self) -> PolicyId {
        let staged = self.ready.borrow().as_ref().map_or(PolicyId::default(), |w| w.id());
        staged.max(self.applied())
    }

    async fn run(
        self: Arc<Self>,
        announces: zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<zenoh::sample::Sample>>,
    ) {
        let mut newest: Option<(Announce, Instant)> = None;
        let mut abandoned: BTreeSet<PolicyId> = BTreeSet::new();
        let mut poll = tokio::time::interval(self.cfg.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let heard = tokio::select! {
                sample = announces.recv_async() => match sample {
                    Ok(s) => serde_json::from_slice::<Announce>(&s.payload().to_bytes()).ok().map(|a| (a, true)),
                    Err(_) => break,
                },
                _ = poll.tick() => self.ask_latest().await.map(|a| (a, false)),
            };
            if let Some((a, announced)) = heard {
                self.gate.set_learner(&a.lineage);
                if announced && a.id() < self.have() {
                    self.stats().older_ignored += 1;
                }
                if newest.as_ref().is_none_or(|(n, _)| a.id() > n.id()) {
                    newest = Some((a, Instant::now()));
                }
            }
            let Some((target, seen)) = newest.as_ref().map(|(a, t)| (a.clone(), *t)) else { continue };
            let id = target.id();
            if id <= self.have() || abandoned.contains(&id) {
                continue;
            }
            match self.fetch(target).await {
                Ok(weights) => {
                    let mut stats = self.stats();
                    stats.versions_staged += 1;
                    stats.staged_version = Some(id);
                    stats.last_sync_ms = seen.elapsed().as_secs_f64() * 1e3;
                    drop(stats);
                    self.ready.send_replace(Some(Arc::new(weights)));
                }
                Err(Failure::Integrity(reason)) => {
                    let e = SyncError::Abandoned { version: id, reason };
                    tracing::error!("weights ({}): {e}", self.cfg.worker);
                    abandoned.insert(id);
                    let mut stats = self.stats();
                    stats.versions_abandoned += 1;
                    stats.last_error = Some(e.to_string());
                }
                Err(Failure::Transient(reason)) => {
                    tracing::warn!("weights ({}): fetching version {id}: {reason}", self.cfg.worker);
                    let mut stats = self.stats();
                    stats.fetch_failures += 1;
                    stats.last_error = Some(reason);
                }
            }
        }
    }

    /// Acknowledges the applied version (also repeated every `poll`, so a publisher that starts
    /// or restarts later learns who is there and what they run).
    async fn ack(&self) -> Result<()> {
        let key = wire::ack_key(&self.cfg.run, &self.cfg.worker);
        let applied = self.applied();
        let ack = Ack { worker: self.cfg.worker.clone(), epoch: applied.epoch, version: applied.version };
        let body = serde_json::to_vec(&ack).unwrap_or_default();
        self.session.put(&key, body).await.map_err(|e| SyncError::Zenoh(format!("{key}: {e}")))
    }

    async fn ask_latest(&self) -> Option<Announce> {
        if let Err(e) = self.ack().await {
            tracing::warn!("weights ({}): {e}", self.cfg.worker);
        }
        let body = self.get(&wire::latest_key(&self.cfg.run)).await.ok()?;
        serde_json::from_slice(&body.to_bytes()).ok()
    }

    /// The first reply's payload, or its error message.
    async fn get(&self, key: &str) -> std::result::Result<ZBytes, String> {
        let replies = self
            .session
            .get(key)
            .timeout(self.cfg.request_timeout)
            .await
            .map_err(|e| format!("querying {key}: {e}"))?;
        match replies.recv_async().await {
            Ok(reply) => match reply.result() {
                Ok(sample) => Ok(sample.payload().clone()),
                Err(err) => Err(format!("{key}: {}", String::from_utf8_lossy(&err.payload().to_bytes()))),
            },
            Err(_) => Err(format!("{key}: no reply within {:?}", self.cfg.request_timeout)),
        }
    }

    async fn fetch(self: &Arc<Self>, target: Announce) -> std::result::Result<Weights, Failure> {
        let v = target.id();
        let body = self.get(&wire::manifest_key(&self.cfg.run, v)).await.map_err(Failure::Transient)?;
        let manifest: Manifest = serde_json::from_slice(&body.to_bytes())
            .map_err(|e| Failure::Integrity(format!("manifest is not valid JSON: {e}")))?;
        manifest.verify().map_err(|e| Failure::Integrity(e.to_string()))?;
        if manifest.id() != v || manifest.digest != target.digest {
            return Err(Failure::Integrity(format!(
                "manifest is version {} digest {:016x}, the announce said version {v} digest {:016x}",
                manifest.id(),
                manifest.digest,
                target.digest
            )));
        }
        if let Some(expected) = &self.cfg.expected_tensors {
            check_tensors(&manifest, expected).map_err(Failure::Integrity)?;
        }
        let placement = self.dest.place(&manifest).map_err(|e| Failure::Integrity(e.to_string()))?;
        let buffers: Arc<Vec<Mutex<Vec<u8>>>> =
            Arc::new(self.staging(&placement).into_iter().map(Mutex::new).collect());
        let (manifest, placement) = (Arc::new(manifest), Arc::new(placement));
        let mut pending = placement.by_chunk.keys().copied();
        // Each task fetches, verifies and writes its chunk, so hashing and copying use every core.
        let mut set: JoinSet<std::result::Result<(), Failure>> = JoinSet::new();
        loop {
            while set.len() < self.cfg.parallel {
                let Some(index) = pending.next() else { break };
                let (me, chunk) = (self.clone(), manifest.chunks[index]);
                let (placement, buffers) = (placement.clone(), buffers.clone());
                set.spawn(async move {
                    let bytes = me.fetch_chunk(v, index, chunk).await?;
                    let parts: Vec<&[u8]> = bytes.slices().collect();
                    placement.write_parts(index, &parts, &buffers);
                    Ok(())
                });
            }
            let Some(done) = set.join_next().await else { break };
            done.map_err(|e| Failure::Transient(format!("chunk task failed: {e}")))??;
        }
        let buffers = Arc::try_unwrap(buffers)
            .map_err(|_| Failure::Transient("a chunk task outlived its fetch".into()))?
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let tensors = Arc::try_unwrap(placement).map_or_else(|p| p.tensors.clone(), |p| p.tensors);
        Ok(Weights { epoch: v.epoch, version: v.version, dtype: manifest.transfer_dtype, tensors, buffers })
    }

    /// Staging buffers for `placement`: the last version's, when its owner has let go of them and
    /// they have the same sizes, else fresh ones.
    fn staging(&self, placement: &Placement) -> Vec<Vec<u8>> {
        let applied = self.applied();
        let consumed = self.ready.borrow().as_ref().is_some_and(|w| w.id() <= applied);
        if consumed {
            if let Some(old) = self.ready.send_replace(None).and_then(|w| Arc::try_unwrap(w).ok()) {
                let same = old.buffers.len() == placement.tensors.len()
                    && old.buffers.iter().zip(&placement.tensors).all(|(b, t)| b.len() as u64 == t.bytes);
                if same {
                    self.stats().staging_reused += 1;
                    return old.buffers;
                }
            }
        }
        placement.tensors.iter().map(|t| vec![0u8; t.bytes as usize]).collect()
    }

    async fn fetch_chunk(
        &self,
        version: PolicyId,
        index: usize,
        chunk: Chunk,
    ) -> std::result::Result<ZBytes, Failure> {
        let key = wire::chunk_key(&self.cfg.run, version, index);
        let mut bad = 0;
        loop {
            let bytes = self.get(&key).await.map_err(Failure::Transient)?;
            let parts: Vec<&[u8]> = bytes.slices().collect();
            if Manifest::check_chunk_parts(&chunk, &parts) {
                let mut stats = self.stats();
                stats.chunks_fetched += 1;
                stats.bytes_fetched += chunk.len;
                return Ok(bytes);
            }
            bad += 1;
            if bad > self.cfg.chunk_retries {
                return Err(Failure::Integrity(format!(
                    "chunk {index} failed its checksum {bad} times ({} refetches allowed)",
                    self.cfg.chunk_retries
                )));
            }
            self.stats().chunk_refetches += 1;
        }
    }
}

/// Whether `manifest` lists exactly the model's tensors, each with its shape; else what differs
/// (with the bytes the manifest claims, counted without overflow).
fn check_tensors(manifest: &Manifest, expected: &[(String, Vec<usize>)]) -> std::result::Result<(), String> {
    let elem = manifest.transfer_dtype.size() as u128;
    let claimed: u128 = manifest
        .tensors
        .iter()
        .map(|t| t.shape.iter().fold(elem, |acc, &d| acc.saturating_mul(d as u128)))
        .fold(0u128, u128::saturating_add);
    let want: std::collections::BTreeMap<&str, &Vec<usize>> =
        expected.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let first_wrong = manifest.tensors.iter().find(|t| want.get(t.name.as_str()) != Some(&&t.shape));
    if manifest.tensors.len() == expected.len() && first_wrong.is_none() {
        return Ok(());
    }
    let which = match first_wrong {
        Some(t) => match want.get(t.name.as_str()) {
            Some(shape) => format!("tensor {} of shape {:?} (the model's is {shape:?})", t.name, t.shape),
            None => format!("tensor {}, which the model does not have", t.name),
        },
        None => format!("{} tensors (the model has {})", manifest.tensors.len(), expected.len()),
    };
    Err(format!(
        "manifest of version {} does not fit the model: {which}; it claims {claimed} bytes; nothing was allocated",
        manifest.id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::TensorEntry;
    use crate::DType;

    #[test]
    fn a_manifest_claiming_two_tebibytes_is_refused_before_anything_is_allocated() {
        let entry = |name: &str, shape: Vec<usize>| TensorEntry {
            name: name.into(),
            dtype: DType::F32,
            shape,
            layouts: Vec::new(),
        };
        let expected = vec![("a".to_string(), vec![2, 2]), ("b".to_string(), vec![3])];
        let manifest = |tensors| Manifest {
            epoch: 1,
            version: 7,
            transfer_dtype: DType::Bf16,
            tensors,
            chunks: Vec::new(),
            digest: 0,
        };
        assert!(
            check_tensors(&manifest(vec![entry("b", vec![3]), entry("a", vec![2, 2])]), &expected).is_ok()
        );
        let huge = manifest(vec![entry("a", vec![1 << 20, 1 << 20]), entry("b", vec![3])]);
        let e = check_tensors(&huge, &expected).unwrap_err();
        assert!(
            e.contains("tensor a of shape [1048576, 1048576]") && e.contains("claims 2199023255558 bytes"),
            "{e}"
        );
        // Shapes whose product overflows are counted without wrapping.
        let wrapping = manifest(vec![entry("a", vec![usize::MAX, usize::MAX]), entry("b", vec![3])]);
        assert!(check_tensors(&wrapping, &expected).unwrap_err().contains("does not fit the model"));
        let extra = manifest(vec![entry("a", vec![2, 2]), entry("b", vec![3]), entry("c", vec![1])]);
        assert!(check_tensors(&extra, &expected)
            .unwrap_err()
            .contains("tensor c, which the model does not have"));
    }
}
