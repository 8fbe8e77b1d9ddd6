//! `ReplayClient`: what rollout workers and learners use to reach the replay shards.
//!
//! Groups are placed on shard `mix(group_id) % shards`; `sample` asks every shard for its share of
//! the request at once (so each learns the learner's version) and tops up from shards that had
//! more; `ack` goes to the shards that hold the groups; `tickets` asks shard 0, the admission
//! authority. Every request is retried on silence and on backpressure until `retry_for` has
//! passed; an invalid request is not retried. Appends are idempotent (a group already stored is
//! acknowledged again, not stored twice), so a retry after a lost reply is safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{RecordBatch, UInt32Array};
use sluice_core::keys;
use sluice_core::trajectory::{self, Group};
use tokio::task::JoinSet;

use crate::error::{ReplayError, Result};
use crate::service::Op;
use crate::wire::{
    AckReply, AckRequest, AppendAck, ErrorKind, ErrorReply, SampleInfo, SampleRequest, Stats, TicketReply,
    TicketRequest,
};

/// How a client reaches the shards.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The run.
    pub run: String,
    /// Number of shards.
    pub shards: u32,
    /// How long one attempt waits for its reply.
    pub request_timeout: Duration,
    /// How long a request keeps being retried (silence, backpressure) before it fails.
    pub retry_for: Duration,
}

impl ClientConfig {
    /// Defaults: 10 s per attempt, retried for 60 s.
    pub fn new(run: impl Into<String>, shards: u32) -> Self {
        ClientConfig {
            run: run.into(),
            shards: shards.max(1),
            request_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// The shard a group lives on (splitmix64 finalizer: sequential ids spread evenly).
pub fn shard_of(group_id: u64, shards: u32) -> u32 {
    (sluice_core::splitmix64(group_id) % shards.max(1) as u64) as u32
}

/// A sampled batch of whole groups.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The rows, group after group.
    pub batch: RecordBatch,
    /// What the shards reported, summed.
    pub info: SampleInfo,
}

impl Sampled {
    /// The groups, decoded.
    pub fn groups(&self) -> Result<Vec<Group>> {
        Ok(trajectory::batch_to_groups(&self.batch)?)
    }

    /// The distinct group ids, in order.
    pub fn group_ids(&self) -> Vec<u64> {
        group_ids(&self.batch)
    }
}

struct Inner {
    session: zenoh::Session,
    cfg: ClientConfig,
    /// Groups appended since the last ticket request (credited to admission then).
    redeemed: AtomicU64,
    /// Rotates which shard gets the remainder of an uneven sample split.
    rotation: AtomicU64,
}

/// Client of the replay shards of one run. Cheap to clone.
#[derive(Clone)]
pub struct ReplayClient {
    inner: Arc<Inner>,
}

impl ReplayClient {
    /// A client on an open session.
    pub fn new(session: zenoh::Session, cfg: ClientConfig) -> Result<Self> {
        keys::check_name("run", &cfg.run)?;
        Ok(ReplayClient {
            inner: Arc::new(Inner { session, cfg, redeemed: AtomicU64::new(0), rotation: AtomicU64::new(0) }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Appends groups; returns once every shard holding them made them durable.
    pub async fn append(&self, groups: &[Group]) -> Result<AppendAck> {
        let batch = trajectory::groups_to_batch(groups)?;
        self.append_batch(&batch).await
    }

    /// Appends a batch of whole groups (rows are routed to their shards).
    pub async fn append_batch(&self, batch: &RecordBatch) -> Result<AppendAck> {
        let shards = self.inner.cfg.shards;
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); shards as usize];
        let ids = batch.column(1).as_primitive::<UInt64Type>();
        for (row, &g) in ids.values().iter().enumerate() {
            parts[shard_of(g, shards) as usize].push(row as u32);
        }
        let mut set = JoinSet::new();
        for (shard, rows) in parts.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let part = if rows.len() == batch.num_rows() {
                batch.clone()
            } else {
                arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))
                    .map_err(ReplayError::format)?
            };
            let payload = trajectory::encode_ipc(&[part])?;
            let this = self.clone();
            set.spawn(async move { this.request(shard as u32, Op::Append, payload).await });
        }
        let mut total = AppendAck::default();
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            match res.map_err(|e| ReplayError::Format(e.to_string())).and_then(|r| r) {
                Ok(body) => {
                    let ack: AppendAck = serde_json::from_slice(&body).map_err(ReplayError::format)?;
                    total.seqs.extend(ack.seqs);
                    total.new_groups += ack.new_groups;
                    total.duplicates += ack.duplicates;
                    total.rows += ack.rows;
                    total.orphaned.extend(ack.orphaned);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Every finished group redeems its ticket, stored or not (an orphaned one counts as wasted).
        let finished = total.new_groups + total.duplicates + total.orphaned.len() as u32;
        self.inner.redeemed.fetch_add(finished as u64, Ordering::Relaxed);
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Draws `req.groups` groups across the shards: each shard its share, then a top-up from the
    /// shards that filled theirs, excluding every group drawn so far (no group twice in a batch).
    pub async fn sample(&self, req: &SampleRequest) -> Result<Sampled> {
        req.sampler.check()?;
        let shards = self.inner.cfg.shards;
        let n = req.groups;
        let start = self.inner.rotation.fetch_add(1, Ordering::Relaxed) as u32;
        let share = |s: u32| n / shards + u32::from((s + shards - start % shards) % shards < n % shards);
        let mut set = JoinSet::new();
        for s in 0..shards {
            let mut r = req.clone();
            r.groups = share(s);
            let this = self.clone();
            set.spawn(async move { (s, r.groups, this.sample_shard(s, &r).await) });
        }
        let mut parts: Vec<(u32, RecordBatch, SampleInfo, bool)> = Vec::new();
        while let Some(res) = set.join_next().await {
            let (s, asked, out) = res.map_err(|e| ReplayError::Format(e.to_string()))?;
            let (batch, info) = out?;
            let full = info.groups >= asked;
            parts.push((s, batch, info, full));
        }
        parts.sort_by_key(|p| p.0);
        let mut got: u32 = parts.iter().map(|p| p.2.groups).sum();
        // Top up from shards that filled their share (they may hold more).
        let more: Vec<u32> = parts.iter().filter(|p| p.3).map(|p| p.0).collect();
        for s in more {
            if got >= n {
                break;
            }
            let mut r = req.clone();
            r.groups = n - got;
            r.exclude.extend(parts.iter().flat_map(|p| group_ids(&p.1)));
            let (batch, info) = self.sample_shard(s, &r).await?;
            got += info.groups;
            parts.push((s, batch, info, false));
        }
        let mut info = SampleInfo::default();
        for p in &parts {
            info.groups += p.2.groups;
            info.rows += p.2.rows;
            info.admissible += p.2.admissible;
            info.stale_skipped += p.2.stale_skipped;
            info.zero_variance_dropped += p.2.zero_variance_dropped;
            info.zero_variance_rows += p.2.zero_variance_rows;
            info.zero_variance_failed += p.2.zero_variance_failed;
            info.duplicate_rows_dropped += p.2.duplicate_rows_dropped;
            info.redelivered += p.2.redelivered;
        }
        let mut batches: Vec<RecordBatch> =
            parts.into_iter().map(|p| p.1).filter(|b| b.num_rows() > 0).collect();
        let batch = if batches.len() == 1 {
            batches.remove(0)
        } else {
            arrow_select::concat::concat_batches(&trajectory::trajectory_schema(), &batches)
                .map_err(ReplayError::format)?
        };
        Ok(Sampled { batch, info })
    }

    async fn sample_shard(&self, shard: u32, req: &SampleRequest) -> Result<(RecordBatch, SampleInfo)> {
        let payload = serde_json::to_vec(req).map_err(ReplayError::format)?;
        let body = self.request(shard, Op::Sample, payload).await?;
        let (info, ipc) = crate::service::unframe_sample(&body)
            .ok_or_else(|| ReplayError::Format(format!("shard {shard} sent a truncated sample reply")))?;
        let info: SampleInfo = serde_json::from_slice(info).map_err(ReplayError::format)?;
        let batch = trajectory::decode_ipc(ipc)
            .map_err(|e| ReplayError::Format(format!("shard {shard} sent an unreadable sample: {e}")))?;
        Ok((batch, info))
    }

    /// Acknowledges `fifo` deliveries.
    pub async fn ack(&self, consumer: &str, group_ids: &[u64]) -> Result<AckReply> {
        self.ack_as(consumer, group_ids, false).await
    }

    /// Acknowledges groups `consumer` drops untrained ([`AckRequest::dropped`]).
    pub async fn ack_dropped(&self, consumer: &str, group_ids: &[u64]) -> Result<AckReply> {
        self.ack_as(consumer, group_ids, true).await
    }

    async fn ack_as(&self, consumer: &str, group_ids: &[u64], dropped: bool) -> Result<AckReply> {
        let shards = self.inner.cfg.shards;
        let mut per: Vec<Vec<u64>> = vec![Vec::new(); shards as usize];
        for &g in group_ids {
            per[shard_of(g, shards) as usize].push(g);
        }
        let mut total = AckReply::default();
        for (s, ids) in per.into_iter().enumerate() {
            if ids.is_empty() {
                continue;
            }
            let payload =
                serde_json::to_vec(&AckRequest { consumer: consumer.to_string(), group_ids: ids, dropped })
                    .map_err(ReplayError::format)?;
            let body = self.request(s as u32, Op::Ack, payload).await?;
            let r: AckReply = serde_json::from_slice(&body).map_err(ReplayError::format)?;
            total.acked += r.acked;
            total.unknown += r.unknown;
        }
        Ok(total)
    }

    /// Asks how many groups `worker` may start (crediting the groups appended since last time).
    pub async fn tickets(&self, worker: &str, want: u64) -> Result<TicketReply> {
        let redeemed = self.inner.redeemed.swap(0, Ordering::Relaxed);
        let payload = serde_json::to_vec(&TicketRequest { worker: worker.to_string(), want, redeemed })
            .map_err(ReplayError::format)?;
        match self.request(0, Op::Tickets, payload).await {
            Ok(body) => serde_json::from_slice(&body).map_err(ReplayError::format),
            Err(e) => {
                self.inner.redeemed.fetch_add(redeemed, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Every shard's counters.
    pub async fn stats(&self) -> Result<Vec<Stats>> {
        let mut out = Vec::new();
        for s in 0..self.inner.cfg.shards {
            let body = self.request(s, Op::Stats, Vec::new()).await?;
            out.push(serde_json::from_slice(&body).map_err(ReplayError::format)?);
        }
        Ok(out)
    }

    /// Sends raw bytes to one shard's operation (tests of the service's input handling use it).
    pub async fn request(&self, shard: u32, op: Op, payload: Vec<u8>) -> Result<Vec<u8>> {
        let cfg = &self.inner.cfg;
        let key = keys::replay(&cfg.run, shard, op.name());
        let deadline = Instant::now() + cfg.retry_for;
        let mut backoff = Duration::from_millis(20);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let replies = self
                .inner
                .session
                .get(&key)
                .payload(payload.clone())
                .timeout(cfg.request_timeout)
                .await
                .map_err(|e| ReplayError::Zenoh(format!("querying {key}: {e}")))?;
            if let Ok(reply) = replies.recv_async().await {
                match reply.result() {
                    Ok(sample) => {
                        return Ok(sample.payload().to_bytes().into_owned());
                    }
                    Err(err) => {
                        let bytes = err.payload().to_bytes();
                        let reply: ErrorReply = serde_json::from_slice(&bytes).unwrap_or(ErrorReply {
                            kind: ErrorKind::Internal,
                            message: String::from_utf8_lossy(&bytes).into_owned(),
                        });
                        match reply.kind {
                            ErrorKind::Invalid => return Err(ReplayError::Invalid(reply.message)),
                            ErrorKind::Internal => return Err(ReplayError::Format(reply.message)),
                            ErrorKind::Backpressure if Instant::now() + backoff >= deadline => {
                                return Err(ReplayError::Busy(reply.message))
                            }
                            ErrorKind::Backpressure => {}
                        }
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(ReplayError::Timeout {
                    shard,
                    op: op.name(),
                    timeout_ms: cfg.request_timeout.as_millis() as u64,
                    attempts,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// The group ids of a decoded sample reply (a group's rows are contiguous), in order.
fn group_ids(batch: &RecordBatch) -> Vec<u64> {
    let Some(ids) =
        batch.column_by_name(trajectory::col::GROUP_ID).and_then(|c| c.as_primitive_opt::<UInt64Type>())
    else {
        return Vec::new();
    };
    let mut out: Vec<u64> = ids.values().to_vec();
    out.dedup();
    out
}
