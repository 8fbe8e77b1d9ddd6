//! The learner side of weight sync (`docs/design.md`, "Weight sync").
//!
//! [`Publisher::publish`] takes a snapshot the learner has already copied out of its parameters
//! (that copy is the only time the training loop waits), and on the blocking pool casts it to the
//! transfer dtype, cuts it into checksummed chunks, builds the [`Manifest`], keeps it among the
//! latest `keep` versions and announces it. The chunks are served by a queryable each; with the
//! `shm` feature, chunks live in zenoh shared memory, so a subscriber on the same host maps them
//! instead of receiving them through a socket (zenoh falls back to the network by itself when
//! the two ends cannot share memory).
//!
//! One publisher serves every source holder's pieces of a version (a learner that runs as one
//! process, whatever its internal sharding). A learner split over processes, each serving only
//! its own holder's chunks under one manifest, is not built yet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{keys, Lineage, PolicyId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zenoh::bytes::ZBytes;
use zenoh::query::Query;

use crate::error::{Result, SyncError};
use crate::layout::Layout;
use crate::manifest::{DType, Manifest, Piece, TensorEntry};
use crate::wire::{self, Ack, Announce};

/// How a learner publishes.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The run.
    pub run: String,
    /// Element type on the wire (bf16 by default; f32 for bit-exact weights).
    pub transfer_dtype: DType,
    /// Largest chunk, in bytes (4 MiB by default).
    pub chunk_bytes: u64,
    /// Versions kept for subscribers still fetching (2 by default: the latest and the one before).
    pub keep: usize,
    /// Put chunks in zenoh shared memory (only with the `shm` feature; ignored otherwise).
    pub shm: bool,
}

impl PublisherConfig {
    /// Defaults for `run`.
    pub fn new(run: impl Into<String>) -> Self {
        PublisherConfig {
            run: run.into(),
            transfer_dtype: DType::Bf16,
            chunk_bytes: 4 << 20,
            keep: 2,
            shm: true,
        }
    }
}

/// One tensor of a snapshot: every source holder's local values (f32, as the learner trains).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTensor {
    /// Name as in the HF checkpoint.
    pub name: String,
    /// The checkpoint's dtype.
    pub dtype: DType,
    /// Full shape.
    pub shape: Vec<usize>,
    /// Each holder's layout.
    pub layouts: Vec<Layout>,
    /// Each holder's local values, in the order of `layouts`.
    pub pieces: Vec<Vec<f32>>,
}

impl SourceTensor {
    /// A tensor held whole by one holder.
    pub fn whole(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Self {
        SourceTensor {
            name: name.into(),
            dtype: DType::F32,
            shape,
            layouts: vec![Layout::Replicated],
            pieces: vec![values],
        }
    }
}

/// A version ready to serve.
struct Published {
    announce: Announce,
    manifest_json: ZBytes,
    chunks: Vec<ZBytes>,
}

struct Inner {
    session: zenoh::Session,
    cfg: PublisherConfig,
    versions: Mutex<VecDeque<Arc<Published>>>,
    acks: watch::Sender<BTreeMap<String, PolicyId>>,
    corrupt_replies: AtomicU32,
    stats: Mutex<PublisherStats>,
    #[cfg(feature = "shm")]
    shm: Mutex<ShmPool>,
}

/// What a publisher has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublisherStats {
    /// Versions announced.
    pub versions: u64,
    /// Chunks placed in shared memory.
    pub shm_chunks: u64,
    /// Chunks on the heap (no `shm` feature, shared memory off, or the pool full).
    pub heap_chunks: u64,
    /// Chunk requests answered.
    pub chunk_replies: u64,
    /// Requests answered with an error (unknown or dropped version, bad key).
    pub error_replies: u64,
}

/// The shared-memory pool, made on the first publish (its size depends on the snapshot's).
#[cfg(feature = "shm")]
enum ShmPool {
    Untried,
    Ready(Arc<zenoh::shm::ShmProvider<zenoh::shm::PosixShmProviderBackend>>),
    Unavailable,
}

/// Serves the latest versions of one run's weights. Dropping it stops serving.
pub struct Publisher {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Publisher {
    /// Declares the queryables and the ack subscriber of `cfg.run` on `session`.
    pub async fn start(session: &zenoh::Session, cfg: PublisherConfig) -> Result<Publisher> {
        keys::check_name("run", &cfg.run).map_err(|e| SyncError::Config(e.to_string()))?;
        if cfg.keep == 0 || cfg.chunk_bytes == 0 {
            return Err(SyncError::Config(format!(
                "publisher keep = {} and chunk_bytes = {} must both be at least 1",
                cfg.keep, cfg.chunk_bytes
            )));
        }
        let (acks, _) = watch::channel(BTreeMap::new());
        let inner = Arc::new(Inner {
            session: session.clone(),
            cfg,
            versions: Mutex::new(VecDeque::new()),
            acks,
            corrupt_replies: AtomicU32::new(0),
            stats: Mutex::new(PublisherStats::default()),
            #[cfg(feature = "shm")]
            shm: Mutex::new(ShmPool::Untried),
        });
        let run = inner.cfg.run.clone();
        let mut tasks = Vec::new();
        for (key, serve) in [
            (wire::latest_key(&run), Serve::Latest),
            (keys::weights(&run, "manifest/*/*"), Serve::Manifest),
            (keys::weights(&run, "chunk/*/*/*"), Serve::Chunk),
        ] {
            let queryable = session.declare_queryable(&key).await.map_err(|e| zerr(&key, e))?;
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(query) = queryable.recv_async().await {
                    let inner = inner.clone();
                    tokio::spawn(async move { inner.serve(serve, query).await });
                }
            }));
        }
        let key = keys::weights(&run, "ack/*");
        let acks = session.declare_subscriber(&key).await.map_err(|e| zerr(&key, e))?;
        let ack_inner = inner.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(sample) = acks.recv_async().await {
                let Ok(ack) = serde_json::from_slice::<Ack>(&sample.payload().to_bytes()) else {
                    tracing::warn!("weights: ignoring a malformed ack on {}", sample.key_expr());
                    continue;
                };
                ack_inner.acks.send_modify(|m| {
                    let v = m.entry(ack.worker).or_default();
                    *v = (*v).max(PolicyId::new(ack.epoch, ack.version));
                });
            }
        }));
        Ok(Publisher { inner, tasks })
    }

    /// Publishes `snapshot` as the current version of `lineage` in the background; the handle
    /// resolves once it is announced. It must be newer ([`PolicyId`] order) than every version
    /// published before.
    pub fn publish(&self, lineage: Lineage, snapshot: Vec<SourceTensor>) -> JoinHandle<Result<Announce>> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let worker = inner.clone();
            let id = lineage.now();
            let published = tokio::task::spawn_blocking(move || worker.prepare(lineage, snapshot))
                .await
                .map_err(|e| SyncError::Config(format!("preparing version {id}: {e}")))??;
            inner.install(published).await
        })
    }

    /// The newest version announced.
    pub fn latest(&self) -> Option<Announce> {
        self.inner.newest().map(|p| p.announce.clone())
    }

    /// The version each worker has acknowledged.
    pub fn acks(&self) -> BTreeMap<String, PolicyId> {
        self.inner.acks.borrow().clone()
    }

    /// Waits until `workers` workers have acknowledged `version` or newer; false on timeout.
    pub async fn wait_for_acks(&self, version: PolicyId, workers: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.acks.subscribe();
        let done =
            async { rx.wait_for(|m| m.values().filter(|&&v| v >= version).count() >= workers).await.is_ok() };
        tokio::time::timeout(timeout, done).await.unwrap_or(false)
    }

    /// The counters.
    pub fn stats(&self) -> PublisherStats {
        self.inner.stats().clone()
    }

    /// Fault injection for tests: the next `n` chunk replies carry one flipped byte.
    pub fn corrupt_next_replies(&self, n: u32) {
        self.inner.corrupt_replies.store(n, Ordering::SeqCst);
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Serve {
    Latest,
    Manifest,
    Chunk,
}

impl Inner {
    fn stats(&self) -> std::sync::MutexGuard<'_, PublisherStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn newest(&self) -> Option<Arc<Published>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner()).back().cloned()
    }

    fn find(&self, id: PolicyId) -> Option<Arc<Published>> {
        let versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        versions.iter().find(|p| p.announce.id() == id).cloned()
    }

    /// Casts, chunks and checksums a snapshot (CPU work, on the blocking pool).
    fn prepare(&self, lineage: Lineage, snapshot: Vec<SourceTensor>) -> Result<Published> {
        let version = lineage.now();
        let dt = self.cfg.transfer_dtype;
        let mut entries = Vec::with_capacity(snapshot.len());
        let mut encoded: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        for (t, s) in snapshot.into_iter().enumerate() {
            if s.pieces.len() != s.layouts.len() {
                return Err(SyncError::Manifest(format!(
                    "tensor `{}`: {} pieces for {} layouts",
                    s.name,
                    s.pieces.len(),
                    s.layouts.len()
                )));
            }
            for (h, values) in s.pieces.iter().enumerate() {
                encoded.push((t, h, dt.encode(values)));
            }
            entries.push(TensorEntry { name: s.name, dtype: s.dtype, shape: s.shape, layouts: s.layouts });
        }
        let pieces: Vec<Piece<'_>> =
            encoded.iter().map(|(t, h, b)| Piece { tensor: *t, holder: *h, bytes: b }).collect();
        let manifest = Manifest::build(version, dt, entries, &pieces, self.cfg.chunk_bytes)?;
        let by_piece: BTreeMap<(usize, usize), &[u8]> =
            encoded.iter().map(|(t, h, b)| ((*t, *h), b.as_slice())).collect();
        let chunks = manifest
            .chunks
            .iter()
            .map(|c| {
                let piece = by_piece[&(c.tensor as usize, c.holder as usize)];
                self.chunk_buffer(
                    &piece[c.start as usize..(c.start + c.len) as usize],
                    manifest.total_bytes(),
                )
            })
            .collect();
        let manifest_json = serde_json::to_vec(&manifest)
            .map_err(|e| SyncError::Manifest(format!("serializing version {version}: {e}")))?;
        Ok(Published {
            announce: Announce { lineage, digest: manifest.digest, bytes: manifest.total_bytes() },
            manifest_json: ZBytes::from(manifest_json),
            chunks,
        })
    }

    /// The bytes of one chunk as zenoh will send them: in shared memory when it can be had.
    fn chunk_buffer(&self, bytes: &[u8], version_bytes: u64) -> ZBytes {
        #[cfg(feature = "shm")]
        if self.cfg.shm {
            if let Some(buf) = self.shm_copy(bytes, version_bytes) {
                self.stats().shm_chunks += 1;
                return buf;
            }
        }
        let _ = version_bytes;
        self.stats().heap_chunks += 1;
        ZBytes::from(bytes.to_vec())
    }

    /// A copy of `bytes` in shared memory; None when the pool is exhausted (the chunk then goes
    /// on the heap, and zenoh sends it over the network).
    #[cfg(feature = "shm")]
    fn shm_copy(&self, bytes: &[u8], version_bytes: u64) -> Option<ZBytes> {
        use zenoh::shm::{GarbageCollect, ShmProviderBuilder};
        use zenoh::Wait;
        let provider = {
            let mut pool = self.shm.lock().unwrap_or_else(|e| e.into_inner());
            if let ShmPool::Untried = *pool {
                // Room for `keep + 1` versions: those served and the one being prepared.
                let size = (version_bytes as usize + (1 << 20)) * (self.cfg.keep + 1);
                *pool = match ShmProviderBuilder::default_backend(size).wait() {
                    Ok(p) => ShmPool::Ready(Arc::new(p)),
                    Err(e) => {
                        tracing::warn!(
                            "weights: no shared memory pool of {size} bytes ({e}); chunks go on the heap"
                        );
                        ShmPool::Unavailable
                    }
                };
            }
            match &*pool {
                ShmPool::Ready(p) => p.clone(),
                _ => return None,
            }
        };
        let mut buf = provider.alloc(bytes.len()).with_policy::<GarbageCollect>().wait().ok()?;
        AsMut::<[u8]>::as_mut(&mut buf).copy_from_slice(bytes);
        Some(ZBytes::from(buf))
    }

    async fn install(&self, published: Published) -> Result<Announce> {
        let announce = published.announce.clone();
        {
            let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(newest) = versions.back() {
                if newest.announce.id() >= announce.id() {
                    return Err(SyncError::Config(format!(
                        "version {} published after version {}: versions must increase",
                        announce.id(),
                        newest.announce.id()
                    )));
                }
            }
            versions.push_back(Arc::new(published));
            while versions.len() > self.cfg.keep {
                versions.pop_front();
            }
        }
        self.stats().versions += 1;
        let key = wire::announce_key(&self.cfg.run);
        let body = serde_json::to_vec(&announce).unwrap_or_default();
        self.session.put(&key, body).await.map_err(|e| zerr(&key, e))?;
        tracing::debug!("weights: announced version {} ({} bytes)", announce.id(), announce.bytes);
        Ok(announce)
    }

    async fn serve(&self, serve: Serve, query: Query) {
        let key = query.key_expr().to_string();
        let reply: std::result::Result<ZBytes, String> = match serve {
            Serve::Latest => match self.newest() {
                Some(p) => Ok(ZBytes::from(serde_json::to_vec(&p.announce).unwrap_or_default())),
                None => Err("nothing published yet".to_string()),
            },
            Serve::Manifest => match wire::trailing_numbers::<2>(&key) {
                Some([e, v]) => match self.find(PolicyId::new(e, v)) {
                    Some(p) => Ok(p.manifest_json.clone()),
                    None => Err(self.gone(PolicyId::new(e, v))),
                },
                None => Err(format!("`{key}` does not name an epoch and a version")),
            },
            Serve::Chunk => match wire::trailing_numbers::<3>(&key) {
                Some([e, v, i]) => match self.find(PolicyId::new(e, v)) {
                    Some(p) => match p.chunks.get(i as usize) {
                        Some(c) => Ok(self.maybe_corrupt(c)),
                        None => Err(format!("version {v} has {} chunks, not chunk {i}", p.chunks.len())),
                    },
                    None => Err(self.gone(PolicyId::new(e, v))),
                },
                None => Err(format!("`{key}` does not name an epoch, a version and a chunk")),
            },
        };
        let sent = match reply {
            Ok(body) => {
                if let Serve::Chunk = serve {
                    self.stats().chunk_replies += 1;
                }
                query.reply(query.key_expr().clone(), body).await
            }
            Err(message) => {
                self.stats().error_replies += 1;
                query.reply_err(message).await
            }
        };
        if let Err(e) = sent {
            tracing::warn!("weights: replying to {key}: {e}");
        }
    }

    fn gone(&self, version: PolicyId) -> String {
        let versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let held: Vec<String> = versions.iter().map(|p| p.announce.id().to_string()).collect();
        format!("version {version} is not held (held: {held:?})")
    }

    fn maybe_corrupt(&self, chunk: &ZBytes) -> ZBytes {
        let take =
            self.corrupt_replies.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if take.is_err() || chunk.is_empty() {
            return chunk.clone();
        }
        let mut bytes = chunk.to_bytes().into_owned();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        ZBytes::from(bytes)
    }
}

fn zerr(key: &str, e: zenoh::Error) -> SyncError {
    SyncError::Zenoh(format!("{key}: {e}"))
}
