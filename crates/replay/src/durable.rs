//! Durability: the append log, its roll into parquet segments, and recovery.
//!
//! # Design
//! *Constraints.* An append may be acknowledged only once it survives the replay process dying
//! (SIGKILL) — or the machine, under `fsync` policies — and many producers append at once, so one
//! `fsync` per batch would cap throughput at the disk's sync rate. A restart must bring back every
//! acknowledged group exactly once, tolerate a half-written last record, and say what it found.
//! Disk use must stay bounded as groups are evicted.
//! *Solution.* One writer thread owns the files. Appenders send it a record and wait; it writes
//! every record that arrived since its last sync with one `write` and one `fsync`, at most one
//! sync per group-commit interval, then wakes them all (`fsync` policy: one sync per record;
//! `os-buffer`: no sync). Records are
//! `[magic u32][len u32][xxh3 u64][kind u8][payload]`; trajectory payloads are Arrow IPC streams of
//! whole groups. When a log holds `segment_rows` rows, the writer starts the next log and a roller
//! thread rewrites the full one as `seg-K.parquet` (temporary file, `fsync`, rename, directory
//! `fsync`) and deletes the log. Consumer acks, the learner version and the producers' finished
//! count go to `meta.log`, same record format. Recovery reads segments, then logs without a
//! segment (truncating a torn tail), then `meta.log`; a group seen twice (a crash between a
//! segment's rename and its log's deletion) is kept once. A segment whose groups were all evicted
//! is deleted.
//! *Pros:* ack latency ≈ interval + one sync, throughput ≈ disk bandwidth; parquet at rest is
//! readable by any tool. *Cons:* a segment is rewritten once (log, then parquet). `meta.log` grows
//! with acks (8 bytes a group) until it passes [`META_COMPACT_BYTES`]; the shard then writes a
//! snapshot (version, producers' count, acks of groups still held) over it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::config::Durability;
use crate::error::{ReplayError, Result};

const MAGIC: u32 = 0x534c_5243; // "SLRC"
const HEADER: usize = 4 + 4 + 8 + 1;
/// Longest record accepted when reading back (a corrupt length must not allocate terabytes).
const MAX_RECORD: usize = 1 << 31;

/// Size past which `meta.log` is replaced by a snapshot of what it says.
pub const META_COMPACT_BYTES: u64 = 4 << 20;

/// Record kinds.
pub(crate) mod kind {
    pub const GROUPS: u8 = 1;
    pub const ACK: u8 = 2;
    pub const VERSION: u8 = 3;
    pub const TICKETS_COMPLETED: u8 = 4;
    pub const WASTED: u8 = 5;
    /// The learner's lineage (JSON), written when a resumed learner starts a new epoch: it sets
    /// the version, which `VERSION` records after it move on.
    pub const LINEAGE: u8 = 6;
}

/// What a restart found on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Parquet segments read.
    pub segments: u32,
    /// Append logs replayed (not yet rolled into a segment).
    pub logs: u32,
    /// Groups recovered.
    pub groups: u64,
    /// Rows recovered.
    pub rows: u64,
    /// Groups found twice and kept once.
    pub duplicate_groups: u64,
    /// Bytes of half-written records dropped from the end of logs.
    pub torn_tail_bytes: u64,
    /// Consumer acks restored.
    pub acked: u64,
    /// Learner version restored.
    pub learner_version: u64,
    /// Milliseconds the recovery took.
    pub millis: u64,
}

pub(crate) fn wal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("wal-{id:08}.log"))
}

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:08}.parquet"))
}

pub(crate) fn meta_path(dir: &Path) -> PathBuf {
    dir.join("meta.log")
}

/// Encodes one record.
pub(crate) fn encode_record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind]);
    h.update(payload);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.digest().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Records of a log file as (kind, payload).
pub(crate) type Records = Vec<(u8, Vec<u8>)>;

/// Reads every whole, intact record of a file; returns them, the offset where they end, and the
/// file's length (the two differ when the tail is torn).
pub(crate) fn read_records(path: &Path) -> Result<(Records, u64, u64)> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(ReplayError::io(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let magic = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default()) as usize;
        let hash = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap_or_default());
        let kind = bytes[at + 16];
        if magic != MAGIC || len > MAX_RECORD || bytes.len() - at - HEADER < len {
            break;
        }
        let payload = &bytes[at + HEADER..at + HEADER + len];
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&[kind]);
        h.update(payload);
        if h.digest() != hash {
            break;
        }
        records.push((kind, payload.to_vec()));
        at += HEADER + len;
    }
    Ok((records, at as u64, bytes.len() as u64))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(ReplayError::io(dir))
}

/// Cuts a file back to its last intact record (`end` of `len` bytes); returns the bytes dropped.
pub(crate) fn drop_torn_tail(path: &Path, end: u64, len: u64) -> Result<u64> {
    if end >= len {
        return Ok(0);
    }
    tracing::warn!("replay: {} has a torn tail of {} bytes; dropped", path.display(), len - end);
    let f = OpenOptions::new().write(true).open(path).map_err(ReplayError::io(path))?;
    f.set_len(end).and_then(|_| f.sync_all()).map_err(ReplayError::io(path))?;
    Ok(len - end)
}

/// Writes batches as a parquet file atomically (temporary name, fsync, rename, directory fsync).
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let schema =
        batches.first().map(|b| b.schema()).unwrap_or_else(sluice_core::trajectory::trajectory_schema);
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(ReplayError::io(&tmp))?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(ReplayError::format)?;
    for b in batches {
        writer.write(b).map_err(ReplayError::format)?;
    }
    let file = writer.into_inner().map_err(ReplayError::format)?;
    file.sync_all().map_err(ReplayError::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(ReplayError::io(path))?;
    // A bare file name's parent is "": the current directory.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Reads every batch of a parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(ReplayError::io(path))?;
    let corrupt =
        |e: parquet::errors::ParquetError| ReplayError::Corrupt { path: path.into(), reason: e.to_string() };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?.build().map_err(corrupt)?;
    // Segments written before `behavior_epoch` existed read with it as 0.
    let corrupt = |reason: String| ReplayError::Corrupt { path: path.into(), reason };
    reader
        .map(|b| {
            let b = b.map_err(|e| corrupt(e.to_string()))?;
            sluice_core::trajectory::upgrade(b).map_err(|e| corrupt(e.to_string()))
        })
        .collect()
}

/// The trajectory batches of an append log.
pub(crate) fn read_log_batches(path: &Path) -> Result<(Vec<RecordBatch>, u64, u64)> {
    let (records, end, len) = read_records(path)?;
    let mut batches = Vec::new();
    for (k, payload) in records {
        if k == kind::GROUPS {
            let batch = sluice_core::trajectory::decode_ipc(&payload)
                .map_err(|e| ReplayError::Corrupt { path: path.into(), reason: e.to_string() })?;
            batches.push(batch);
        }
    }
    Ok((batches, end, len))
}

enum Op {
    /// A trajectory record; answered with the id of the log it landed in, once durable.
    Groups { payload: Vec<u8>, rows: u64, done: SyncSender<Result<u64>> },
    /// A `meta.log` record; answered once durable when someone waits.
    Meta { record: Vec<u8>, done: Option<SyncSender<Result<u64>>> },
    /// Replace `meta.log` by these records (a snapshot of everything it said).
    CompactMeta { records: Vec<u8> },
}

enum RollerOp {
    Roll(u64),
    Delete(u64),
}

/// Handle to the writer and roller threads of one shard directory.
pub(crate) struct Wal {
    tx: Option<SyncSender<Op>>,
    meta_len: Arc<AtomicU64>,
    roller_tx: Option<SyncSender<RollerOp>>,
    writer: Option<JoinHandle<()>>,
    roller: Option<JoinHandle<()>>,
}

struct Writer {
    dir: PathBuf,
    policy: Durability,
    segment_rows: u64,
    wal: File,
    wal_id: u64,
    wal_rows: u64,
    meta: File,
    /// Bytes in `meta.log`, read by the shard to decide when to compact it.
    meta_len: Arc<AtomicU64>,
    current: Arc<AtomicU64>,
    roller_tx: SyncSender<RollerOp>,
}

impl Wal {
    /// Starts the threads; new records go to log `first_id`. `to_roll` are recovered logs that
    /// still need their parquet segment.
    pub(crate) fn start(
        dir: &Path,
        policy: Durability,
        segment_rows: u64,
        first_id: u64,
        to_roll: Vec<u64>,
    ) -> Result<Wal> {
        let wal_file = wal_path(dir, first_id);
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_file)
            .map_err(ReplayError::io(&wal_file))?;
        let meta_file = meta_path(dir);
        let meta = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&meta_file)
            .map_err(ReplayError::io(&meta_file))?;
        let meta_len = Arc::new(AtomicU64::new(meta.metadata().map(|m| m.len()).unwrap_or(0)));
        sync_dir(dir)?;
        let current = Arc::new(AtomicU64::new(first_id));
        // Bounded: appenders block (backpressure) rather than queue without limit.
        let (tx, rx) = mpsc::sync_channel::<Op>(1024);
        let (roller_tx, roller_rx) = mpsc::sync_channel::<RollerOp>(1024);
        for id in to_roll {
            let _ = roller_tx.try_send(RollerOp::Roll(id));
        }
        let roller_dir = dir.to_path_buf();
        let roller_current = current.clone();
        let roller = std::thread::Builder::new()
            .name("replay-roller".into())
            .spawn(move || roller_loop(&roller_dir, roller_rx, roller_current))
            .map_err(ReplayError::io(dir))?;
        let writer = Writer {
            dir: dir.to_path_buf(),
            policy,
            segment_rows: segment_rows.max(1),
            wal,
            wal_id: first_id,
            wal_rows: 0,
            meta,
            meta_len: meta_len.clone(),
            current,
            roller_tx: roller_tx.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("replay-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(ReplayError::io(dir))?;
        Ok(Wal {
            tx: Some(tx),
            meta_len,
            roller_tx: Some(roller_tx),
            writer: Some(writer),
            roller: Some(roller),
        })
    }

    /// Writes a trajectory record; returns once it is durable, with the log id it landed in.
    pub(crate) fn append(&self, payload: Vec<u8>, rows: u64) -> Result<u64> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .ok_or(ReplayError::Closed)?
            .send(Op::Groups { payload, rows, done })
            .map_err(|_| ReplayError::Closed)?;
        wait.recv().map_err(|_| ReplayError::Closed)?
    }

    /// Writes a `meta.log` record; waits for durability when `wait`.
    pub(crate) fn meta(&self, kind: u8, payload: &[u8], wait: bool) -> Result<()> {
        let mut record = Vec::with_capacity(HEADER + payload.len());
        encode_record(kind, payload, &mut record);
        let tx = self.tx.as_ref().ok_or(ReplayError::Closed)?;
        if wait {
            let (done, rx) = mpsc::sync_channel(1);
            tx.send(Op::Meta { record, done: Some(done) }).map_err(|_| ReplayError::Closed)?;
            rx.recv().map_err(|_| ReplayError::Closed)?.map(|_| ())
        } else {
            tx.send(Op::Meta { record, done: None }).map_err(|_| ReplayError::Closed)
        }
    }

    /// Bytes in `meta.log` now.
    pub(crate) fn meta_len(&self) -> u64 {
        self.meta_len.load(Ordering::Acquire)
    }

    /// Queues a snapshot to replace `meta.log` (ordered after everything sent before it).
    pub(crate) fn compact_meta(&self, records: Vec<u8>) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or(ReplayError::Closed)?
            .send(Op::CompactMeta { records })
            .map_err(|_| ReplayError::Closed)
    }

    /// Deletes the files of segments whose groups were all evicted (not the log being written).
    pub(crate) fn delete_segments(&self, ids: Vec<u64>) {
        // The roller skips the log being written (it knows the current one when it gets there).
        if let Some(tx) = &self.roller_tx {
            for id in ids {
                let _ = tx.try_send(RollerOp::Delete(id));
            }
        }
    }

    /// Flushes and stops both threads.
    pub(crate) fn close(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.roller_tx.take();
        if let Some(r) = self.roller.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        // Group commit syncs at most once per interval, timed from the previous sync's start: a
        // lone append after a quiet spell is synced at once; under load the records that arrive
        // during one sync ride the next.
        let mut last_sync = Instant::now() - Duration::from_secs(3600);
        while let Ok(first) = rx.recv() {
            let mut ops = vec![first];
            match self.policy {
                Durability::GroupCommit { interval_ms } => {
                    let deadline = last_sync + Duration::from_millis(interval_ms);
                    ops.extend(rx.try_iter().take(4095));
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(op) => ops.push(op),
                            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                }
                // Whatever is already queued shares the write; under `fsync` each record still
                // gets its own sync below.
                Durability::OsBuffer | Durability::Fsync => ops.extend(rx.try_iter().take(255)),
            }
            last_sync = Instant::now();
            self.commit(ops);
            if self.wal_rows >= self.segment_rows {
                if let Err(e) = self.roll() {
                    tracing::error!("replay: rolling log {} failed: {e}", self.wal_id);
                }
            }
        }
        let _ = self.wal.sync_all();
        let _ = self.meta.sync_all();
    }

    fn commit(&mut self, ops: Vec<Op>) {
        let per_record_sync = self.policy == Durability::Fsync;
        let mut wal_buf = Vec::new();
        let mut meta_buf = Vec::new();
        let mut waiting: Vec<SyncSender<Result<u64>>> = Vec::new();
        let mut outcome: Result<()> = Ok(());
        for op in ops {
            match op {
                Op::Groups { payload, rows, done } => {
                    encode_record(kind::GROUPS, &payload, &mut wal_buf);
                    self.wal_rows += rows;
                    waiting.push(done);
                }
                Op::Meta { record, done } => {
                    meta_buf.extend_from_slice(&record);
                    waiting.extend(done);
                }
                Op::CompactMeta { records } => {
                    // Records queued before the snapshot are in it: drop them with the old file.
                    meta_buf.clear();
                    if let Err(e) = self.compact_meta(&records) {
                        tracing::error!("replay: compacting meta.log failed (it keeps growing): {e}");
                    }
                }
            }
            if per_record_sync && outcome.is_ok() {
                outcome = self.flush(&mut wal_buf, &mut meta_buf, true);
            }
        }
        if outcome.is_ok() {
            outcome = self.flush(&mut wal_buf, &mut meta_buf, self.policy != Durability::OsBuffer);
        }
        for done in waiting {
            let reply = match &outcome {
                Ok(()) => Ok(self.wal_id),
                Err(e) => Err(ReplayError::Format(format!("append log write failed: {e}"))),
            };
            let _ = done.send(reply);
        }
    }

    /// Writes the snapshot beside `meta.log`, syncs it and renames it over the log.
    fn compact_meta(&mut self, records: &[u8]) -> Result<()> {
        let path = meta_path(&self.dir);
        let tmp = path.with_extension("log.tmp");
        let mut f = File::create(&tmp).map_err(ReplayError::io(&tmp))?;
        f.write_all(records).and_then(|_| f.sync_all()).map_err(ReplayError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(ReplayError::io(&path))?;
        sync_dir(&self.dir)?;
        self.meta = OpenOptions::new().append(true).open(&path).map_err(ReplayError::io(&path))?;
        self.meta_len.store(records.len() as u64, Ordering::Release);
        Ok(())
    }

    fn flush(&mut self, wal_buf: &mut Vec<u8>, meta_buf: &mut Vec<u8>, sync: bool) -> Result<()> {
        if !wal_buf.is_empty() {
            let path = wal_path(&self.dir, self.wal_id);
            self.wal.write_all(wal_buf).map_err(ReplayError::io(&path))?;
            if sync {
                self.wal.sync_data().map_err(ReplayError::io(&path))?;
            }
            wal_buf.clear();
        }
        if !meta_buf.is_empty() {
            let path = meta_path(&self.dir);
            self.meta.write_all(meta_buf).map_err(ReplayError::io(&path))?;
            self.meta_len.fetch_add(meta_buf.len() as u64, Ordering::AcqRel);
            if sync {
                self.meta.sync_data().map_err(ReplayError::io(&path))?;
            }
            meta_buf.clear();
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<()> {
        let next = self.wal_id + 1;
        let path = wal_path(&self.dir, next);
        let file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(ReplayError::io(&path))?;
        self.wal.sync_all().map_err(ReplayError::io(wal_path(&self.dir, self.wal_id)))?;
        sync_dir(&self.dir)?;
        let full = self.wal_id;
        self.wal = file;
        self.wal_id = next;
        self.wal_rows = 0;
        self.current.store(next, Ordering::Release);
        // Blocking send: the roller is bounded, the writer waits rather than drop a roll.
        let _ = self.roller_tx.send(RollerOp::Roll(full));
        Ok(())
    }
}

fn roller_loop(dir: &Path, rx: Receiver<RollerOp>, current: Arc<AtomicU64>) {
    while let Ok(op) = rx.recv() {
        match op {
            RollerOp::Roll(id) => {
                if let Err(e) = roll_log(dir, id) {
                    // The log stays; recovery replays it.
                    tracing::error!("replay: rolling log {id} into parquet failed: {e}");
                }
            }
            RollerOp::Delete(id) if id < current.load(Ordering::Acquire) => {
                for path in [segment_path(dir, id), wal_path(dir, id)] {
                    if let Err(e) = fs::remove_file(&path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!("replay: deleting {}: {e}", path.display());
                        }
                    }
                }
            }
            RollerOp::Delete(_) => {}
        }
    }
}

fn roll_log(dir: &Path, id: u64) -> Result<()> {
    let log = wal_path(dir, id);
    if !log.exists() {
        return Ok(());
    }
    let (batches, _, _) = read_log_batches(&log)?;
    write_parquet(&segment_path(dir, id), &batches)?;
    fs::remove_file(&log).map_err(ReplayError::io(&log))?;
    sync_dir(dir)
}

/// The numbered files of a shard directory: (segment ids, log ids), sorted.
pub(crate) fn list_files(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut segs = Vec::new();
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir).map_err(ReplayError::io(dir))? {
        let entry = entry.map_err(ReplayError::io(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            // A segment whose rename never happened; its log is still there.
            let _ = fs::remove_file(entry.path());
        } else if let Some(id) = name.strip_prefix("seg-").and_then(|s| s.strip_suffix(".parquet")) {
            segs.extend(id.parse::<u64>().ok());
        } else if let Some(id) = name.strip_prefix("wal-").and_then(|s| s.strip_suffix(".log")) {
            logs.extend(id.parse::<u64>().ok());
        }
    }
    segs.sort_unstable();
    logs.sort_unstable();
    Ok((segs, logs))
}
