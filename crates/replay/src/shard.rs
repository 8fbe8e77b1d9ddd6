//! One replay shard: the in-memory [`Store`] made durable by the append log ([`crate::durable`]).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use arrow_array::{RecordBatch, UInt32Array};
use sluice_core::trajectory::{self, GroupSpan};
use sluice_core::{PolicyId, RlConfig};

use crate::config::ReplayConfig;
use crate::durable::{self, kind, RecoveryReport, Wal};
use crate::error::{ReplayError, Result};
use crate::store::{Entry, Store};
use crate::wire::{
    AckReply, AckRequest, AppendAck, SampleInfo, SampleRequest, Stats, TicketReply, TicketRequest,
};

/// A durable replay shard living in one directory.
pub struct Shard {
    id: u32,
    dir: PathBuf,
    /// Held (flock) for the shard's lifetime: a second process on the same directory would
    /// interleave its log with ours. The OS releases it when the process dies, even by SIGKILL.
    _lock: std::fs::File,
    store: Mutex<Store>,
    wal: Wal,
    recovery: RecoveryReport,
    /// The model's vocabulary size when known: appended token ids must be below it (0: unknown).
    vocab: std::sync::atomic::AtomicU32,
}

/// The longest consumer or worker name a request may carry.
pub const MAX_NAME_LEN: usize = 256;

/// Splits a validated batch into per-group entries, rows in `sample_idx` order. One `take` when
/// the batch is not already in that order (or holds rows of other groups); each group is then a
/// zero-copy slice. Also says whether the batch was used as it is.
fn split_groups(batch: &RecordBatch, spans: &[GroupSpan], segment: u64) -> Result<(Vec<Entry>, bool)> {
    let in_order = spans.iter().flat_map(|s| &s.rows).enumerate().all(|(i, &r)| i as u32 == r)
        && spans.iter().map(|s| s.rows.len()).sum::<usize>() == batch.num_rows();
    let ordered = if in_order {
        batch.clone()
    } else {
        let idx = UInt32Array::from(spans.iter().flat_map(|s| s.rows.iter().copied()).collect::<Vec<_>>());
        arrow_select::take::take_record_batch(batch, &idx).map_err(ReplayError::format)?
    };
    let mut at = 0;
    let entries = spans
        .iter()
        .map(|s| {
            let n = s.rows.len();
            let e = Entry {
                group_id: s.group_id,
                batch: ordered.slice(at, n),
                behavior_version: s.behavior_version,
                behavior_epoch: s.behavior_epoch,
                mean_reward: s.mean_reward,
                zero_variance: s.zero_variance,
                failed: s.failed,
                rows: n as u64,
                bytes: s.bytes,
                segment,
            };
            at += n;
            e
        })
        .collect();
    Ok((entries, in_order))
}

fn concat(batches: &[RecordBatch]) -> Result<RecordBatch> {
    arrow_select::concat::concat_batches(&trajectory::trajectory_schema(), batches)
        .map_err(ReplayError::format)
}

fn u64s(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

impl Shard {
    /// Opens (creating or recovering) the shard stored in `dir`, under the run's shared settings
    /// `rl` (staleness bound and groups per step: eviction and admission).
    pub fn open(dir: impl AsRef<Path>, id: u32, cfg: ReplayConfig, rl: RlConfig) -> Result<Shard> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(ReplayError::io(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ReplayError::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(ReplayError::Invalid(format!(
                "replay shard directory {} is in use by another process",
                dir.display()
            )));
        }
        let started = Instant::now();
        let Recovered { mut store, mut report, next_log: next_id, to_roll } = recover(&dir, cfg.clone(), rl)?;
        let wal = Wal::start(&dir, cfg.durability, cfg.segment_rows, next_id, to_roll)?;
        report.millis = started.elapsed().as_millis() as u64;
        store.stats_mut().shard = id;
        store.stats_mut().recovery = Some(report.clone());
        let dead = store.take_dead_segments();
        wal.delete_segments(dead);
        let vocab = std::sync::atomic::AtomicU32::new(0);
        Ok(Shard { id, dir, _lock: lock, store: Mutex::new(store), wal, recovery: report, vocab })
    }

    /// Refuses appended groups holding token ids at or above `vocab` (the model's vocabulary
    /// size; the learner would index its embedding with them).
    pub fn set_vocab_size(&self, vocab: u32) {
        self.vocab.store(vocab, std::sync::atomic::Ordering::Relaxed);
    }

    /// The shard's number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening it recovered.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves counters at worst; the data structures are only
        // changed by code that does not panic, so keep serving.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes an Arrow IPC payload and appends it. A payload that is not a trajectory batch is
    /// counted and refused. Owned, so that a payload already in order goes to the log uncopied.
    pub fn append_ipc(&self, payload: Vec<u8>) -> Result<AppendAck> {
        match trajectory::decode_ipc(&payload) {
            Ok(batch) => self.append_inner(&batch, Some(payload)),
            Err(e) => {
                self.store().stats_mut().rejected_payloads += 1;
                Err(ReplayError::Invalid(e.to_string()))
            }
        }
    }

    /// Appends whole groups; returns once they are durable. A batch with any invalid row is
    /// refused whole; groups already held are acknowledged again without being stored twice.
    pub fn append(&self, batch: &RecordBatch) -> Result<AppendAck> {
        self.append_inner(batch, None)
    }

    /// `encoded` is the batch's own IPC encoding when it arrived as one: logged as is when the
    /// batch needs no reordering and holds no duplicate, saving a re-encode.
    fn append_inner(&self, batch: &RecordBatch, encoded: Option<Vec<u8>>) -> Result<AppendAck> {
        let spans = match self.validate(batch) {
            Ok(s) => s,
            Err(e) => {
                self.store().stats_mut().rejected_batches += 1;
                return Err(ReplayError::Invalid(e));
            }
        };
        let (spans, orphaned, wasted) = {
            let mut store = self.store();
            let (kept, orphaned): (Vec<GroupSpan>, Vec<GroupSpan>) = spans
                .into_iter()
                .partition(|s| store.admits_append(PolicyId::new(s.behavior_epoch, s.behavior_version)));
            (kept, orphaned.into_iter().map(|s| s.group_id).collect::<Vec<u64>>(), store.wasted())
        };
        if !orphaned.is_empty() {
            self.wal.meta(kind::WASTED, &wasted.to_le_bytes(), false)?;
        }
        let sizes: Vec<(u64, u64, u64)> =
            spans.iter().map(|s| (s.group_id, s.rows.len() as u64, s.bytes)).collect();
        let fresh = {
            let mut store = self.store();
            let fresh = store.reserve(&sizes)?;
            // A retry racing the original append: answer only once the original is durable.
            if let Some(s) = spans.iter().zip(&fresh).find(|(s, &f)| !f && store.seq_of(s.group_id).is_none())
            {
                let gid = s.0.group_id;
                let new: Vec<u64> =
                    spans.iter().zip(&fresh).filter(|(_, &f)| f).map(|(s, _)| s.group_id).collect();
                store.release(&new);
                return Err(ReplayError::Busy(format!(
                    "group {gid} is being appended by another request; retry"
                )));
            }
            fresh
        };
        let new_spans: Vec<GroupSpan> =
            spans.iter().zip(&fresh).filter(|(_, &f)| f).map(|(s, _)| s.clone()).collect();
        let new_ids: Vec<u64> = new_spans.iter().map(|s| s.group_id).collect();
        let written = (|| -> Result<Vec<Entry>> {
            if new_spans.is_empty() {
                return Ok(Vec::new());
            }
            let (mut entries, in_order) = split_groups(batch, &new_spans, 0)?;
            let payload = match encoded {
                Some(bytes) if in_order => bytes,
                _ => {
                    let normalized = concat(&entries.iter().map(|e| e.batch.clone()).collect::<Vec<_>>())?;
                    trajectory::encode_ipc(&[normalized]).map_err(ReplayError::format)?
                }
            };
            let rows = entries.iter().map(|e| e.rows).sum();
            let segment = self.wal.append(payload, rows)?;
            for e in &mut entries {
                e.segment = segment;
            }
            Ok(entries)
        })();
        let mut store = self.store();
        let entries = match written {
            Ok(e) => e,
            Err(e) => {
                store.release(&new_ids);
                return Err(e);
            }
        };
        let mut ack = AppendAck { new_groups: entries.len() as u32, orphaned, ..Default::default() };
        let mut entries = entries.into_iter();
        for (span, &f) in spans.iter().zip(&fresh) {
            if f {
                let e = entries.next().ok_or_else(|| ReplayError::Format("entry count mismatch".into()))?;
                ack.rows += e.rows;
                ack.seqs.push(store.insert(e));
            } else {
                ack.duplicates += 1;
                ack.seqs.push(store.seq_of(span.group_id).unwrap_or(u64::MAX));
            }
        }
        store.stats_mut().duplicate_groups += ack.duplicates as u64;
        Ok(ack)
    }

    /// The batch's groups, each whole, of the run's group size, and with token ids inside the
    /// model's vocabulary; else what is wrong.
    fn validate(&self, batch: &RecordBatch) -> std::result::Result<Vec<GroupSpan>, String> {
        let spans = trajectory::validate_batch(batch).map_err(|e| e.to_string())?;
        let group_size = self.store().rl().group_size;
        if let Some(s) = spans.iter().find(|s| s.rows.len() != group_size) {
            return Err(format!(
                "group {} has {} samples; the run's groups have {group_size} (rl.group_size)",
                s.group_id,
                s.rows.len()
            ));
        }
        let vocab = self.vocab.load(std::sync::atomic::Ordering::Relaxed);
        if vocab > 0 {
            trajectory::check_token_ids(batch, vocab).map_err(|e| e.to_string())?;
        }
        Ok(spans)
    }

    /// Refuses, and counts, a request for what no honest peer asks.
    fn refuse(&self, why: String) -> ReplayError {
        self.store().stats_mut().rejected_requests += 1;
        ReplayError::Invalid(why)
    }

    /// Refuses a request payload over `replay.max_request_bytes` before it is decoded.
    pub fn check_request_size(&self, op: &str, bytes: usize) -> Result<()> {
        let max = self.store().config().max_request_bytes;
        if bytes as u64 > max {
            return Err(self
                .refuse(format!("{op} request of {bytes} bytes is over replay.max_request_bytes = {max}")));
        }
        Ok(())
    }

    /// Draws groups. Returns one batch (whole groups, in the order drawn) and what happened.
    pub fn sample(&self, req: &SampleRequest) -> Result<(RecordBatch, SampleInfo)> {
        if let Err(e) = req.sampler.check() {
            self.count_rejected_payload();
            return Err(e);
        }
        let most = {
            let store = self.store();
            (store.config().capacity_rows / store.rl().group_size.max(1) as u64).max(1)
        };
        if u64::from(req.groups) > most || req.exclude.len() as u64 > most {
            return Err(self.refuse(format!(
                "a sample request for {} groups excluding {}: this shard holds at most {most} groups \
                 (replay.capacity_rows / rl.group_size)",
                req.groups,
                req.exclude.len()
            )));
        }
        if req.consumer.len() > MAX_NAME_LEN {
            return Err(self.refuse(format!(
                "a consumer name of {} bytes (at most {MAX_NAME_LEN})",
                req.consumer.len()
            )));
        }
        let (sampled, lineage, version, wasted) = {
            let mut store = self.store();
            let (before, wasted_before) = (store.lineage().now(), store.wasted());
            let sampled = store.sample(req, Instant::now());
            let dead = store.take_dead_segments();
            self.wal.delete_segments(dead);
            let wasted = (store.wasted() > wasted_before).then_some(store.wasted());
            let now = store.lineage().now();
            // A new epoch is persisted whole (it may set the version back); a version moved
            // forward within the epoch as one word.
            let lineage = (now.epoch != before.epoch).then(|| store.lineage().clone());
            let version = (now.epoch == before.epoch && now.version > before.version).then_some(now.version);
            (sampled?, lineage, version, wasted)
        };
        if let Some(l) = lineage {
            tracing::info!(
                shard = self.id,
                "the learner started run epoch {} at version {} (ancestry {:?}); {} groups held so far were \
                 sampled by versions it orphaned and are dropped",
                l.epoch,
                l.version,
                l.ancestry,
                self.stats().evicted_orphaned
            );
            self.wal.meta(kind::LINEAGE, &serde_json::to_vec(&l).map_err(ReplayError::format)?, true)?;
        }
        if let Some(v) = version {
            self.wal.meta(kind::VERSION, &v.to_le_bytes(), false)?;
        }
        if let Some(w) = wasted {
            self.wal.meta(kind::WASTED, &w.to_le_bytes(), false)?;
        }
        if !sampled.auto_acked.is_empty() {
            self.wal.meta(kind::ACK, &u64s(&sampled.auto_acked), false)?;
        }
        let batch = concat(&sampled.batches)?;
        Ok((batch, sampled.info))
    }

    /// Marks `fifo` deliveries consumed; returns once that is durable.
    pub fn ack(&self, req: &AckRequest) -> Result<AckReply> {
        let (fresh, reply, wasted) = {
            let mut store = self.store();
            let (fresh, reply) = store.ack(&req.consumer, &req.group_ids, req.dropped)?;
            (fresh, reply, store.wasted())
        };
        if !fresh.is_empty() {
            if req.dropped {
                self.wal.meta(kind::WASTED, &wasted.to_le_bytes(), false)?;
            }
            self.wal.meta(kind::ACK, &u64s(&fresh), true)?;
        }
        self.maybe_compact_meta(durable::META_COMPACT_BYTES)?;
        Ok(reply)
    }

    /// Replaces `meta.log` by a snapshot once it holds more than `threshold` bytes and twice what
    /// a snapshot would. The snapshot is queued while the store is locked: a record about a change
    /// made after the snapshot is queued after it, one made before is in it.
    pub(crate) fn maybe_compact_meta(&self, threshold: u64) -> Result<bool> {
        let len = self.wal.meta_len();
        if len <= threshold {
            return Ok(false);
        }
        let store = self.store();
        let consumed = store.consumed_ids();
        if len <= 2 * (4 * 17 + 16 + consumed.len() as u64 * 8) {
            return Ok(false);
        }
        let mut records = Vec::new();
        let lineage = serde_json::to_vec(store.lineage()).map_err(ReplayError::format)?;
        durable::encode_record(kind::LINEAGE, &lineage, &mut records);
        durable::encode_record(kind::VERSION, &store.learner_version().to_le_bytes(), &mut records);
        durable::encode_record(
            kind::TICKETS_COMPLETED,
            &store.tickets_completed().to_le_bytes(),
            &mut records,
        );
        durable::encode_record(kind::WASTED, &store.wasted().to_le_bytes(), &mut records);
        durable::encode_record(kind::ACK, &u64s(&consumed), &mut records);
        self.wal.compact_meta(records)?;
        Ok(true)
    }

    /// Admission control: how many groups a producer may start.
    pub fn tickets(&self, req: &TicketRequest) -> Result<TicketReply> {
        if req.worker.len() > MAX_NAME_LEN {
            return Err(
                self.refuse(format!("a worker name of {} bytes (at most {MAX_NAME_LEN})", req.worker.len()))
            );
        }
        let (reply, completed) = {
            let mut store = self.store();
            let reply = store.tickets(&req.worker, req.want, req.redeemed, Instant::now());
            (reply, store.tickets_completed())
        };
        if req.redeemed > 0 {
            self.wal.meta(kind::TICKETS_COMPLETED, &completed.to_le_bytes(), false)?;
        }
        Ok(reply)
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        self.store().stats()
    }

    /// Counts a payload refused before it reached the store (bad JSON, oversize...).
    pub fn count_rejected_payload(&self) {
        self.store().stats_mut().rejected_payloads += 1;
    }

    /// Every held group in append order, as one batch (export, tests).
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let batches: Vec<RecordBatch> = self.store().batches().cloned().collect();
        concat(&batches)
    }

    /// Group ids held, in append order.
    pub fn group_ids(&self) -> Vec<u64> {
        self.store().group_ids()
    }

    /// Flushes the log and stops the writer threads.
    pub fn close(mut self) {
        self.wal.close();
    }
}

/// What [`recover`] rebuilt from a shard directory.
pub(crate) struct Recovered {
    pub store: Store,
    pub report: RecoveryReport,
    /// The id of the next append log.
    pub next_log: u64,
    /// Logs that still need rolling into parquet.
    pub to_roll: Vec<u64>,
}

/// Rebuilds the store from a shard directory.
pub(crate) fn recover(dir: &Path, cfg: ReplayConfig, rl: RlConfig) -> Result<Recovered> {
    let mut store = Store::new(cfg, rl);
    let mut report = RecoveryReport::default();
    let (segs, logs) = durable::list_files(dir)?;
    let mut ids: Vec<u64> = segs.iter().chain(&logs).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut to_roll = Vec::new();
    for &id in &ids {
        let batches = if segs.binary_search(&id).is_ok() {
            report.segments += 1;
            let log = durable::wal_path(dir, id);
            if log.exists() {
                // The crash fell between the segment's rename and the log's deletion.
                std::fs::remove_file(&log).map_err(ReplayError::io(&log))?;
            }
            durable::read_parquet(&durable::segment_path(dir, id))?
        } else {
            report.logs += 1;
            let path = durable::wal_path(dir, id);
            let (batches, end, len) = durable::read_log_batches(&path)?;
            report.torn_tail_bytes += durable::drop_torn_tail(&path, end, len)?;
            if batches.is_empty() {
                std::fs::remove_file(&path).map_err(ReplayError::io(&path))?;
            } else {
                to_roll.push(id);
            }
            batches
        };
        for batch in batches {
            let spans = trajectory::validate_batch(&batch).map_err(|e| ReplayError::Corrupt {
                path: durable::segment_path(dir, id),
                reason: e.to_string(),
            })?;
            for entry in split_groups(&batch, &spans, id)?.0 {
                if store.contains(entry.group_id) {
                    report.duplicate_groups += 1;
                } else {
                    report.groups += 1;
                    report.rows += entry.rows;
                    store.insert(entry);
                }
            }
        }
    }
    let meta = durable::meta_path(dir);
    if meta.exists() {
        let (records, end, len) = durable::read_records(&meta)?;
        report.torn_tail_bytes += durable::drop_torn_tail(&meta, end, len)?;
        let word =
            |p: &[u8]| u64::from_le_bytes(p.get(..8).and_then(|b| b.try_into().ok()).unwrap_or_default());
        for (k, payload) in records {
            match k {
                kind::ACK => {
                    let ids: Vec<u64> = payload.chunks_exact(8).map(word).collect();
                    // No lease survives a restart: nobody holds these, so any consumer may.
                    report.acked += store.ack("", &ids, false).map_or(0, |(_, r)| r.acked as u64);
                }
                kind::VERSION => store.set_learner_version(word(&payload)),
                kind::LINEAGE => match serde_json::from_slice(&payload) {
                    Ok(lineage) => store.set_lineage(lineage),
                    Err(e) => {
                        return Err(ReplayError::Corrupt {
                            path: meta.clone(),
                            reason: format!("a lineage record that does not parse: {e}"),
                        })
                    }
                },
                kind::TICKETS_COMPLETED => store.set_tickets_completed(word(&payload)),
                kind::WASTED => store.set_wasted(word(&payload)),
                _ => {}
            }
        }
    }
    report.learner_version = store.learner_version();
    store.enforce_capacity();
    let next_id = ids.last().map_or(0, |&i| i + 1);
    Ok(Recovered { store, report, next_log: next_id, to_roll })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Durability;
    use crate::sampler::Sampler;

    #[test]
    fn meta_log_compaction_keeps_acks_and_versions() {
        let dir = std::env::temp_dir().join(format!(
            "sluice-compact-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let cfg = ReplayConfig { durability: Durability::Fsync, ..Default::default() };
        let group = |gid: u64| crate::testing::two_sample_group(gid, 3);
        let req = |n| SampleRequest {
            sampler: Sampler::Fifo,
            groups: n,
            learner: sluice_core::Lineage::default().at(4),
            max_staleness: 1,
            consumer: "c".into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        };
        {
            let shard =
                Shard::open(&dir, 0, cfg.clone(), RlConfig { group_size: 2, ..Default::default() }).unwrap();
            let gs: Vec<_> = (0..30).map(group).collect();
            shard.append(&trajectory::groups_to_batch(&gs).unwrap()).unwrap();
            shard.sample(&req(30)).unwrap();
            for gid in 0..20 {
                shard
                    .ack(&AckRequest { consumer: "c".into(), group_ids: vec![gid], dropped: false })
                    .unwrap();
            }
            let before = std::fs::metadata(durable::meta_path(&dir)).unwrap().len();
            assert!(shard.maybe_compact_meta(0).unwrap());
            // Acks after the snapshot land in the new file.
            for gid in 20..25 {
                shard
                    .ack(&AckRequest { consumer: "c".into(), group_ids: vec![gid], dropped: false })
                    .unwrap();
            }
            let after = std::fs::metadata(durable::meta_path(&dir)).unwrap().len();
            assert!(after < before, "meta.log shrank from {before} to {after} bytes");
            shard.close();
        }
        let shard = Shard::open(&dir, 0, cfg, RlConfig { group_size: 2, ..Default::default() }).unwrap();
        assert_eq!(shard.recovery().acked, 25);
        assert_eq!(shard.recovery().learner_version, 4);
        let (batch, _) = shard.sample(&req(30)).unwrap();
        assert_eq!(batch.num_rows(), 10, "only the 5 unacknowledged groups are delivered again");
        shard.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resumed_learners_lineage_survives_a_replay_restart() {
        let dir = std::env::temp_dir().join(format!(
            "sluice-lineage-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let cfg = ReplayConfig { durability: Durability::Fsync, ..Default::default() };
        let rl = RlConfig { group_size: 2, groups_per_step: 2, max_staleness: 1, ..Default::default() };
        let group = |gid: u64, v: u64| {
            let mut g = crate::testing::two_sample_group(gid, v);
            g.samples.iter_mut().for_each(|s| s.behavior_epoch = 1);
            g
        };
        let req = |learner: sluice_core::Lineage| SampleRequest {
            sampler: Sampler::Uniform,
            groups: 0,
            learner,
            max_staleness: 1,
            consumer: "c".into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        };
        let e1 = sluice_core::Lineage::start(1);
        {
            let shard = Shard::open(&dir, 0, cfg.clone(), rl).unwrap();
            let gs = vec![group(1, 5), group(2, 7)];
            shard.append(&trajectory::groups_to_batch(&gs).unwrap()).unwrap();
            shard.sample(&req(e1.clone().at(8))).unwrap();
            shard.sample(&req(e1.clone().at(5).fork(2))).unwrap();
            shard.sample(&req(e1.clone().at(5).fork(2).at(6))).unwrap();
            let late = shard.append(&trajectory::groups_to_batch(&[group(3, 8)]).unwrap()).unwrap();
            assert_eq!((late.new_groups, late.orphaned), (0, vec![3]), "sampled by a thrown-away version");
            assert_eq!(shard.group_ids(), vec![1]);
            shard.close();
        }
        // The orphaned group is still in its log on disk; the restored lineage drops it again, and
        // the version is the resumed learner's, not the highest ever seen.
        let shard = Shard::open(&dir, 0, cfg, rl).unwrap();
        assert_eq!((shard.recovery().learner_version, shard.stats().learner_epoch), (6, 2));
        assert_eq!(shard.group_ids(), vec![1]);
        shard.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
