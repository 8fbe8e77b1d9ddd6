//! The in-memory replay store: groups in append order with indexes by group id, behavior version
//! and consumption; samplers, the `fifo` stream with leases, eviction and admission tickets.
//!
//! No I/O happens here; [`crate::Shard`] makes it durable. Time is passed in (`now`) so that
//! leases are tested without sleeping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use arrow_array::RecordBatch;
use rand::rngs::StdRng;
use rand::SeedableRng;
use sluice_core::{admission_limit, Lineage, PolicyId, PolicyVersion, RlConfig};

use crate::config::ReplayConfig;
use crate::error::{ReplayError, Result};
use crate::sampler::{self, Candidate, Sampler};
use crate::wire::{AckReply, SampleInfo, SampleRequest, Stats, TicketReply};

/// One stored group.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub group_id: u64,
    /// The group's rows only, in `sample_idx` order (a zero-copy slice of the appended batch).
    pub batch: RecordBatch,
    pub behavior_version: u64,
    /// The epoch of the weights that sampled it.
    pub behavior_epoch: u64,
    pub mean_reward: f64,
    /// All rewards equal ([`sluice_core::zero_variance`]).
    pub zero_variance: bool,
    /// Its failed episodes (`finish = error`).
    pub failed: u32,
    pub rows: u64,
    pub bytes: u64,
    /// The append log / parquet segment that holds it on disk.
    pub segment: u64,
}

impl Entry {
    /// The weights behind its oldest token.
    fn behavior(&self) -> PolicyId {
        PolicyId::new(self.behavior_epoch, self.behavior_version)
    }
}

#[derive(Debug, Clone)]
struct Lease {
    deadline: Instant,
    /// Kept for the stats and for debugging who holds what.
    #[allow(dead_code)]
    consumer: String,
}

#[derive(Debug, Clone)]
struct WorkerTickets {
    outstanding: u64,
    last_seen: Instant,
}

/// What a sample request produced.
#[derive(Debug)]
pub(crate) struct Sampled {
    pub batches: Vec<RecordBatch>,
    /// The groups drawn, in order (what the unit tests check).
    #[cfg_attr(not(test), allow(dead_code))]
    pub group_ids: Vec<u64>,
    pub info: SampleInfo,
    /// Groups the `fifo` stream consumed without delivering (zero variance): to persist as acks.
    pub auto_acked: Vec<u64>,
}

/// Why a group was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    Stale,
    Capacity,
}

/// The in-memory store of one shard.
pub struct Store {
    cfg: ReplayConfig,
    /// The run's shared settings: the staleness bound (eviction, admission) and the groups per
    /// learner step (admission).
    rl: RlConfig,
    /// Groups by append sequence number: append order is eviction and `fifo` order.
    entries: BTreeMap<u64, Entry>,
    /// group_id -> seq: duplicate appends (client retries) and acks by id.
    by_group: HashMap<u64, u64>,
    /// (behavior_version, seq): the stalest group is found without a scan.
    by_version: BTreeSet<(u64, u64)>,
    /// Groups acknowledged by a consumer and still held: evictable first when full.
    consumed: BTreeSet<u64>,
    /// `fifo` groups not delivered yet, in append order.
    pending: BTreeSet<u64>,
    /// `fifo` groups delivered and waiting for their ack.
    leased: HashMap<u64, Lease>,
    /// Who last held the lease of a group whose lease ended unacknowledged (expired, or a new
    /// epoch took it back): only that consumer may still acknowledge it.
    last_holder: HashMap<u64, String>,
    /// Groups whose append is being made durable: counted against capacity, refused as duplicates.
    reserved: HashMap<u64, (u64, u64)>,
    rows: u64,
    bytes: u64,
    next_seq: u64,
    /// The learner's lineage: its newest epoch, the highest version seen in it, and the ancestry
    /// that says which held data a resume orphaned; persisted.
    learner: Lineage,
    /// Producers' finished groups (redeemed tickets), for admission; persisted.
    tickets_completed: u64,
    /// Finished groups that left the `fifo` stream undelivered (zero-variance or stale): they
    /// will never feed a step, so admission does not count them (else dynamic sampling could
    /// starve the learner while the workers wait for tickets).
    wasted: u64,
    workers: BTreeMap<String, WorkerTickets>,
    /// Live groups per on-disk segment; a segment with none left can be deleted.
    segment_live: BTreeMap<u64, u64>,
    /// Segments that lost their last live group since the shard last looked.
    dead_segments: Vec<u64>,
    stats: Stats,
    rng: StdRng,
}

impl Store {
    /// An empty store.
    pub fn new(cfg: ReplayConfig, rl: RlConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        Store {
            cfg,
            rl,
            entries: BTreeMap::new(),
            by_group: HashMap::new(),
            by_version: BTreeSet::new(),
            consumed: BTreeSet::new(),
            pending: BTreeSet::new(),
            leased: HashMap::new(),
            last_holder: HashMap::new(),
            reserved: HashMap::new(),
            rows: 0,
            bytes: 0,
            next_seq: 0,
            learner: Lineage::default(),
            tickets_completed: 0,
            wasted: 0,
            workers: BTreeMap::new(),
            segment_live: BTreeMap::new(),
            dead_segments: Vec::new(),
            stats: Stats::default(),
            rng,
        }
    }

    /// The settings.
    pub fn config(&self) -> &ReplayConfig {
        &self.cfg
    }

    /// Whether a group is held (or being appended).
    pub fn contains(&self, group_id: u64) -> bool {
        self.by_group.contains_key(&group_id) || self.reserved.contains_key(&group_id)
    }

    /// The sequence number of a held group.
    pub fn seq_of(&self, group_id: u64) -> Option<u64> {
        self.by_group.get(&group_id).copied()
    }

    /// Groups held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The learner's version (in its newest epoch).
    pub fn learner_version(&self) -> u64 {
        self.learner.version
    }

    /// The learner's lineage.
    pub fn lineage(&self) -> &Lineage {
        &self.learner
    }

    /// Moves the learner's version forward within its epoch (a persisted `VERSION` record).
    pub(crate) fn set_learner_version(&mut self, v: u64) {
        self.learner.version = self.learner.version.max(v);
    }

    /// Restores a persisted lineage (a `LINEAGE` record), then drops what it orphans.
    pub(crate) fn set_lineage(&mut self, lineage: Lineage) {
        self.learner = lineage;
        self.drop_orphans();
    }

    /// Follows the learner's lineage from a sample request. A newer epoch (a learner that resumed
    /// from a checkpoint, possibly behind the versions held) replaces the lineage, version and
    /// all ([`Store::start_epoch`]); the same epoch moves the version forward; an older epoch is
    /// refused: a learner process of an earlier start is still asking for data. Returns whether
    /// the version moved and whether a new epoch began.
    pub(crate) fn follow(&mut self, lineage: &Lineage) -> Result<(bool, bool)> {
        self.check_reachable(lineage)?;
        if lineage.epoch < self.learner.epoch {
            return Err(ReplayError::Invalid(format!(
                "a learner of epoch {} asked for data, but the replay follows epoch {} (version {}): either \
                 a learner process of an earlier start is still running (stop it), or the run's \
                 checkpoints and their EPOCH file were removed while its replay directory was kept \
                 (remove both, or neither)",
                lineage.epoch, self.learner.epoch, self.learner.version
            )));
        }
        if lineage.epoch > self.learner.epoch {
            self.learner = lineage.clone();
            self.start_epoch();
            return Ok((true, true));
        }
        let moved = lineage.version > self.learner.version;
        if moved {
            self.learner.version = lineage.version;
        }
        Ok((moved, false))
    }

    /// Refuses a lineage no learner can have reached from the one followed: ancestry out of order,
    /// or a version or epoch more than `max_learner_jump` ahead (a learner moves one version per
    /// step and one epoch per start). Such a request would make every held group stale and
    /// admission unbounded, and the store persists what it follows. A store that never heard from
    /// a learner (epoch 0) takes any well-formed lineage.
    fn check_reachable(&mut self, lineage: &Lineage) -> Result<()> {
        let ordered = lineage.ancestry.windows(2).all(|w| w[0].0 < w[1].0)
            && lineage.ancestry.last().is_none_or(|&(e, _)| e < lineage.epoch);
        let (cur, jump) = (&self.learner, self.cfg.max_learner_jump);
        let why = if !ordered {
            Some(format!(
                "its ancestry {:?} is not in epoch order before epoch {}",
                lineage.ancestry, lineage.epoch
            ))
        } else if cur.epoch == 0 {
            None
        } else if lineage.epoch > cur.epoch.saturating_add(jump) {
            Some(format!("epoch {} is more than {jump} epochs past epoch {}", lineage.epoch, cur.epoch))
        } else if lineage.version > cur.version.saturating_add(jump) {
            Some(format!(
                "version {} is more than {jump} versions past version {}",
                lineage.version, cur.version
            ))
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some(why) => {
                self.stats.rejected_requests += 1;
                Err(ReplayError::Invalid(format!(
                    "refusing a sample request's learner lineage (epoch {}, version {}): {why}, which this \
                     shard follows; no learner can have got there (replay.max_learner_jump = {jump})",
                    lineage.epoch, lineage.version
                )))
            }
        }
    }

    /// A resumed learner's first request: groups sampled by weights it orphaned are dropped, the
    /// groups leased to the learner that died come back to the `fifo` stream at once (its
    /// checkpoint did not cover them), and admission is counted again from where the resumed
    /// learner is: as if it had consumed `version * groups_per_step` groups and every held group
    /// were still to come, so that workers may start `(max_staleness + 1)` steps' worth beyond
    /// what is held, as they could before.
    fn start_epoch(&mut self) {
        for (seq, lease) in self.leased.drain() {
            self.pending.insert(seq);
            self.last_holder.insert(seq, lease.consumer);
        }
        self.drop_orphans();
        let expected =
            self.learner.version.saturating_mul(self.rl.groups_per_step as u64) + self.pending.len() as u64;
        self.wasted = self.wasted.max(self.tickets_completed.saturating_sub(expected));
    }

    /// Drops every held group the lineage orphans.
    fn drop_orphans(&mut self) {
        let orphans: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| self.learner.orphans(e.behavior()))
            .map(|(&s, _)| s)
            .collect();
        self.stats.evicted_orphaned += orphans.len() as u64;
        for seq in orphans {
            self.remove(seq);
        }
    }

    /// Whether a group sampled by `behavior` may be stored: not orphaned by the learner's lineage.
    /// A refused group is counted (`evicted_orphaned`) and, for admission, as wasted.
    pub(crate) fn admits_append(&mut self, behavior: PolicyId) -> bool {
        let ok = !self.learner.orphans(behavior);
        if !ok {
            self.stats.evicted_orphaned += 1;
            self.wasted += 1;
        }
        ok
    }

    pub(crate) fn set_tickets_completed(&mut self, n: u64) {
        self.tickets_completed = self.tickets_completed.max(n);
    }

    /// Groups that left the stream undelivered (see the field).
    pub fn wasted(&self) -> u64 {
        self.wasted
    }

    pub(crate) fn set_wasted(&mut self, n: u64) {
        self.wasted = self.wasted.max(n);
    }

    /// The run's shared settings.
    pub(crate) fn rl(&self) -> &RlConfig {
        &self.rl
    }

    pub(crate) fn stats_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }

    /// Every held group in append order (for export and tests).
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.entries.values().map(|e| &e.batch)
    }

    /// Group ids in append order.
    pub fn group_ids(&self) -> Vec<u64> {
        self.entries.values().map(|e| e.group_id).collect()
    }

    /// Reserves room for new groups `(group_id, rows, bytes)`, evicting as the policy allows.
    /// Returns, per group, whether it is new (false: already held or being appended). Nothing is
    /// reserved when any group cannot be placed.
    pub(crate) fn reserve(&mut self, groups: &[(u64, u64, u64)]) -> Result<Vec<bool>> {
        let mut seen = HashSet::new();
        let fresh: Vec<bool> = groups.iter().map(|g| !self.contains(g.0) && seen.insert(g.0)).collect();
        let (need_rows, need_bytes) =
            groups.iter().zip(&fresh).filter(|(_, &f)| f).fold((0, 0), |(r, b), (g, _)| (r + g.1, b + g.2));
        if need_rows > self.cfg.capacity_rows || need_bytes > self.cfg.capacity_bytes {
            return Err(ReplayError::Invalid(format!(
                "the batch needs {need_rows} rows / {need_bytes} bytes, more than the store's whole capacity \
                 ({} rows / {} bytes); send smaller batches",
                self.cfg.capacity_rows, self.cfg.capacity_bytes
            )));
        }
        while self.rows + need_rows > self.cfg.capacity_rows
            || self.bytes + need_bytes > self.cfg.capacity_bytes
        {
            if self.evict_one().is_none() {
                self.stats.backpressured += 1;
                return Err(ReplayError::Backpressure {
                    rows: self.rows,
                    bytes: self.bytes,
                    capacity_rows: self.cfg.capacity_rows,
                    capacity_bytes: self.cfg.capacity_bytes,
                });
            }
        }
        for (g, &f) in groups.iter().zip(&fresh) {
            if f {
                self.reserved.insert(g.0, (g.1, g.2));
                self.rows += g.1;
                self.bytes += g.2;
            }
        }
        Ok(fresh)
    }

    /// Releases reservations whose append failed.
    pub(crate) fn release(&mut self, group_ids: &[u64]) {
        for gid in group_ids {
            if let Some((r, b)) = self.reserved.remove(gid) {
                self.rows -= r;
                self.bytes -= b;
            }
        }
    }

    /// Stores a group (reserved before, or recovered from disk) and returns its sequence number.
    pub(crate) fn insert(&mut self, entry: Entry) -> u64 {
        if let Some((r, b)) = self.reserved.remove(&entry.group_id) {
            self.rows -= r;
            self.bytes -= b;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.rows += entry.rows;
        self.bytes += entry.bytes;
        self.stats.appended_rows += entry.rows;
        self.stats.appended_groups += 1;
        self.by_group.insert(entry.group_id, seq);
        self.by_version.insert((entry.behavior_version, seq));
        *self.segment_live.entry(entry.segment).or_default() += 1;
        self.pending.insert(seq);
        self.entries.insert(seq, entry);
        seq
    }

    /// Marks groups consumed (a consumer's ack, or persisted acks at recovery). Returns the ids
    /// newly consumed (what to persist) and the reply.
    /// Marks groups consumed. Refused whole, and counted, when any of them was delivered to (is
    /// leased by, or last was) another consumer: a consumer acknowledges what it drew. A group
    /// never delivered since this process started has no holder and may be acknowledged by any
    /// consumer (recovery replays acks that way; see `docs/security.md`).
    pub(crate) fn ack(
        &mut self,
        consumer: &str,
        group_ids: &[u64],
        dropped: bool,
    ) -> Result<(Vec<u64>, AckReply)> {
        let holder = |s: &Self, seq: u64| -> Option<String> {
            s.leased.get(&seq).map(|l| l.consumer.clone()).or_else(|| s.last_holder.get(&seq).cloned())
        };
        let foreign: Vec<(u64, String)> = group_ids
            .iter()
            .filter_map(|gid| self.by_group.get(gid).map(|&seq| (*gid, seq)))
            .filter_map(|(gid, seq)| holder(self, seq).filter(|h| h != consumer).map(|h| (gid, h)))
            .collect();
        if !foreign.is_empty() {
            self.stats.refused_acks += foreign.len() as u64;
            let shown: Vec<String> =
                foreign.iter().take(5).map(|(g, h)| format!("{g} (delivered to {h:?})")).collect();
            return Err(ReplayError::Invalid(format!(
                "{consumer:?} acknowledged {} groups delivered to another consumer: {}{}; nothing was acknowledged",
                foreign.len(),
                shown.join(", "),
                if foreign.len() > 5 { ", ..." } else { "" }
            )));
        }
        let mut fresh = Vec::new();
        let mut reply = AckReply::default();
        for &gid in group_ids {
            match self.by_group.get(&gid) {
                Some(&seq) => {
                    self.pending.remove(&seq);
                    self.leased.remove(&seq);
                    self.last_holder.remove(&seq);
                    if self.consumed.insert(seq) {
                        fresh.push(gid);
                    }
                }
                None => reply.unknown += 1,
            }
        }
        reply.acked = fresh.len() as u32;
        if dropped {
            self.wasted += fresh.len() as u64;
        }
        Ok((fresh, reply))
    }

    /// Evicts one group: the stalest stale one, else the oldest consumed one (or the oldest of all
    /// when `evict_unconsumed`). None when nothing may go.
    pub(crate) fn evict_one(&mut self) -> Option<(u64, Eviction)> {
        if let Some(&(_, seq)) = self.by_version.first() {
            if !self.learner.admits(self.entries[&seq].behavior(), self.rl.max_staleness) {
                self.remove(seq);
                self.stats.evicted_stale += 1;
                return Some((seq, Eviction::Stale));
            }
        }
        let victim =
            if self.cfg.evict_unconsumed { self.entries.keys().next() } else { self.consumed.iter().next() };
        let seq = *victim?;
        self.remove(seq);
        self.stats.evicted_capacity += 1;
        Some((seq, Eviction::Capacity))
    }

    /// Evicts until within capacity (after recovery, or after the capacity shrank).
    pub(crate) fn enforce_capacity(&mut self) {
        while self.rows > self.cfg.capacity_rows || self.bytes > self.cfg.capacity_bytes {
            if self.evict_one().is_none() {
                break;
            }
        }
    }

    fn remove(&mut self, seq: u64) {
        let Some(e) = self.entries.remove(&seq) else { return };
        self.by_group.remove(&e.group_id);
        self.by_version.remove(&(e.behavior_version, seq));
        self.consumed.remove(&seq);
        self.pending.remove(&seq);
        self.leased.remove(&seq);
        self.last_holder.remove(&seq);
        self.rows -= e.rows;
        self.bytes -= e.bytes;
        if let Some(live) = self.segment_live.get_mut(&e.segment) {
            *live -= 1;
            if *live == 0 {
                self.segment_live.remove(&e.segment);
                self.dead_segments.push(e.segment);
            }
        }
    }

    /// Segments with no live group left since the last call.
    pub(crate) fn take_dead_segments(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dead_segments)
    }

    /// Answers a sample request. The caller validated `req.sampler`. Refused when the request's
    /// lineage is of an older epoch than the one followed ([`Store::follow`]).
    pub(crate) fn sample(&mut self, req: &SampleRequest, now: Instant) -> Result<Sampled> {
        self.follow(&req.learner)?;
        let admissible = |e: &Entry| req.learner.admits(e.behavior(), req.max_staleness);
        let mut info = SampleInfo::default();
        let mut auto_acked = Vec::new();
        let n = req.groups as usize;
        let chosen: Vec<u64> = if req.sampler == Sampler::Fifo {
            // Expired leases go back to the stream, in append order.
            let expired: Vec<u64> =
                self.leased.iter().filter(|(_, l)| l.deadline <= now).map(|(&s, _)| s).collect();
            for seq in expired {
                if let Some(lease) = self.leased.remove(&seq) {
                    self.last_holder.insert(seq, lease.consumer);
                }
                self.pending.insert(seq);
                info.redelivered += 1;
            }
            let mut chosen = Vec::with_capacity(n);
            let mut stale = Vec::new();
            let mut zero_variance = Vec::new();
            for &seq in &self.pending {
                if chosen.len() == n {
                    break;
                }
                let e = &self.entries[&seq];
                if !admissible(e) {
                    // Stale for this learner for good (versions only grow): leave the stream.
                    stale.push(seq);
                } else if req.drop_zero_variance && e.zero_variance && zero_variance.len() < n {
                    // Consumed without delivery: no consumer will ever want it. At most as many
                    // as asked for per request, so a learner can bound what it drops per step.
                    zero_variance.push(seq);
                } else {
                    chosen.push(seq);
                }
            }
            info.stale_skipped = stale.len() as u64;
            info.zero_variance_dropped = zero_variance.len() as u64;
            for seq in &zero_variance {
                let e = &self.entries[seq];
                (info.zero_variance_rows, info.zero_variance_failed) =
                    (info.zero_variance_rows + e.rows, info.zero_variance_failed + u64::from(e.failed));
            }
            self.wasted += (stale.len() + zero_variance.len()) as u64;
            info.admissible = (self.pending.len() - stale.len() - zero_variance.len()) as u64;
            for seq in stale.iter().chain(&zero_variance).chain(&chosen) {
                self.pending.remove(seq);
            }
            for &seq in &zero_variance {
                self.consumed.insert(seq);
                auto_acked.push(self.entries[&seq].group_id);
            }
            let deadline = now + self.cfg.fifo_lease();
            for &seq in &chosen {
                self.leased.insert(seq, Lease { deadline, consumer: req.consumer.clone() });
            }
            chosen
        } else {
            let exclude: HashSet<u64> = req.exclude.iter().copied().collect();
            let mut cands = Vec::new();
            for (&seq, e) in &self.entries {
                if exclude.contains(&e.group_id) {
                    continue;
                }
                if !admissible(e) {
                    info.stale_skipped += 1;
                } else if req.drop_zero_variance && e.zero_variance {
                    info.zero_variance_dropped += 1;
                    info.zero_variance_rows += e.rows;
                    info.zero_variance_failed += u64::from(e.failed);
                } else {
                    cands.push(Candidate {
                        seq,
                        behavior_version: e.behavior_version,
                        mean_reward: e.mean_reward,
                    });
                }
            }
            info.admissible = cands.len() as u64;
            let newest = self.next_seq.saturating_sub(1);
            sampler::draw(req.sampler, &cands, n, newest, &mut self.rng)
                .into_iter()
                .map(|i| cands[i].seq)
                .collect()
        };
        let mut batches = Vec::with_capacity(chosen.len());
        let mut group_ids = Vec::with_capacity(chosen.len());
        for seq in chosen {
            let e = &self.entries[&seq];
            let batch = if req.dedup {
                dedup_rows(&e.batch, &mut info.duplicate_rows_dropped)
            } else {
                e.batch.clone()
            };
            info.rows += batch.num_rows() as u64;
            batches.push(batch);
            group_ids.push(e.group_id);
        }
        info.groups = batches.len() as u32;
        Ok(Sampled { batches, group_ids, info, auto_acked })
    }

    /// Grants a producer up to `want` tickets under `(v + max_staleness + 1) * groups_per_step`,
    /// after crediting `redeemed` finished groups; groups the stream dropped undelivered
    /// (zero-variance, stale) do not count. Producers silent for longer than the ticket lease
    /// lose their outstanding tickets (a dead worker does not hold admission forever).
    pub(crate) fn tickets(&mut self, worker: &str, want: u64, redeemed: u64, now: Instant) -> TicketReply {
        let lease = self.cfg.ticket_lease();
        self.workers.retain(|_, w| now.saturating_duration_since(w.last_seen) < lease);
        let w = self
            .workers
            .entry(worker.to_string())
            .or_insert(WorkerTickets { outstanding: 0, last_seen: now });
        w.outstanding -= redeemed.min(w.outstanding);
        w.last_seen = now;
        self.tickets_completed += redeemed;
        let limit = admission_limit(
            PolicyVersion(self.learner.version),
            self.rl.max_staleness,
            self.rl.groups_per_step as u64,
        );
        let outstanding: u64 = self.workers.values().map(|w| w.outstanding).sum();
        let started = (self.tickets_completed + outstanding).saturating_sub(self.wasted);
        let granted = want.min(limit.saturating_sub(started));
        if let Some(w) = self.workers.get_mut(worker) {
            w.outstanding += granted;
        }
        TicketReply { granted, limit, started: started + granted, learner: self.learner.clone() }
    }

    /// Group ids of consumed groups still held (the acks a `meta.log` snapshot keeps).
    pub(crate) fn consumed_ids(&self) -> Vec<u64> {
        self.consumed.iter().filter_map(|s| self.entries.get(s)).map(|e| e.group_id).collect()
    }

    /// Finished groups credited to producers so far.
    pub fn tickets_completed(&self) -> u64 {
        self.tickets_completed
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.groups = self.entries.len() as u64;
        s.rows = self.rows;
        s.bytes = self.bytes;
        s.learner_version = self.learner.version;
        s.learner_epoch = self.learner.epoch;
        s.fifo_pending = self.pending.len() as u64;
        s.fifo_leased = self.leased.len() as u64;
        s.consumed = self.consumed.len() as u64;
        s.tickets_completed = self.tickets_completed;
        s.tickets_outstanding = self.workers.values().map(|w| w.outstanding).sum();
        s
    }
}

/// Drops rows whose completion tokens repeat an earlier row's.
fn dedup_rows(batch: &RecordBatch, dropped: &mut u64) -> RecordBatch {
    let mut seen = HashSet::new();
    let keep: Vec<bool> = (0..batch.num_rows())
        .map(|r| seen.insert(sluice_core::trajectory::completion_tokens(batch, r)))
        .collect();
    if keep.iter().all(|&k| k) {
        return batch.clone();
    }
    *dropped += keep.iter().filter(|&&k| !k).count() as u64;
    let mask = arrow_array::BooleanArray::from(keep);
    // Both come from the same batch: the filter cannot fail.
    arrow_select::filter::filter_record_batch(batch, &mask).unwrap_or_else(|_| batch.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use sluice_core::trajectory::{groups_to_batch, validate_batch};

    fn insert(store: &mut Store, g: sluice_core::Group) {
        let group_id = g.group_id;
        let batch = groups_to_batch(&[g]).unwrap();
        let span = validate_batch(&batch).unwrap().remove(0);
        store.insert(Entry {
            group_id,
            batch,
            behavior_version: span.behavior_version,
            behavior_epoch: span.behavior_epoch,
            mean_reward: span.mean_reward,
            zero_variance: span.zero_variance,
            failed: span.failed,
            rows: 2,
            bytes: span.bytes,
            segment: 0,
        });
    }

    fn store_with(n: u64, cfg: ReplayConfig, rl: RlConfig) -> Store {
        let mut store = Store::new(cfg, rl);
        for gid in 0..n {
            insert(&mut store, crate::testing::two_sample_group(gid, 0));
        }
        store
    }

    fn fifo(n: u32) -> SampleRequest {
        SampleRequest {
            sampler: Sampler::Fifo,
            groups: n,
            learner: Lineage::default(),
            max_staleness: 0,
            consumer: "c".into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        }
    }

    #[test]
    fn unacknowledged_fifo_groups_are_redelivered_after_their_lease() {
        let mut store =
            store_with(4, ReplayConfig { fifo_lease_ms: 1000, ..Default::default() }, RlConfig::default());
        let t0 = Instant::now();
        assert_eq!(store.sample(&fifo(3), t0).unwrap().group_ids, vec![0, 1, 2]);
        store.ack("c", &[1], false).unwrap();
        // Before the lease ends nothing but group 3 is left.
        assert_eq!(store.sample(&fifo(3), t0 + Duration::from_millis(999)).unwrap().group_ids, vec![3]);
        // After it, the unacknowledged 0 and 2 come back (3 is still leased).
        let again = store.sample(&fifo(3), t0 + Duration::from_millis(1000)).unwrap();
        assert_eq!(again.group_ids, vec![0, 2]);
        assert_eq!(again.info.redelivered, 2);
        // Group 3's lease started at 999 ms and ends first.
        let last = store.sample(&fifo(3), t0 + Duration::from_millis(1999)).unwrap();
        assert_eq!(last.group_ids, vec![3]);
    }

    #[test]
    fn a_silent_producer_loses_its_tickets_after_the_lease() {
        let rl = RlConfig { groups_per_step: 2, max_staleness: 0, ..Default::default() };
        let mut store = store_with(0, ReplayConfig { ticket_lease_ms: 500, ..Default::default() }, rl);
        let t0 = Instant::now();
        assert_eq!(store.tickets("dead", 2, 0, t0).granted, 2);
        assert_eq!(store.tickets("alive", 2, 0, t0 + Duration::from_millis(499)).granted, 0);
        let r = store.tickets("alive", 2, 0, t0 + Duration::from_millis(500));
        assert_eq!((r.granted, r.started), (2, 2));
    }

    #[test]
    fn groups_dropped_undelivered_do_not_hold_admission() {
        // Two groups per step, no staleness: two tickets before the first step. Both groups come
        // back with equal rewards and are dropped by dynamic sampling: without the credit the
        // workers would wait for tickets while the learner waits for data, for ever.
        let rl = RlConfig { groups_per_step: 2, max_staleness: 0, ..Default::default() };
        let mut store = Store::new(ReplayConfig::default(), rl);
        let t0 = Instant::now();
        assert_eq!(store.tickets("w", 2, 0, t0).granted, 2);
        for gid in 0..2 {
            let mut g = crate::testing::two_sample_group(gid, 0);
            g.samples.iter_mut().for_each(|s| s.reward = 0.0);
            insert(&mut store, g);
        }
        assert_eq!(store.tickets("w", 2, 2, t0).granted, 0, "the budget is spent");
        let got = store.sample(&SampleRequest { drop_zero_variance: true, ..fifo(2) }, t0).unwrap();
        assert_eq!((got.batches.len(), got.info.zero_variance_dropped), (0, 2));
        assert_eq!(store.wasted(), 2);
        assert_eq!(store.tickets("w", 2, 0, t0).granted, 2, "dropped groups give their tickets back");
    }

    #[test]
    fn groups_the_learner_drops_untrained_do_not_hold_admission() {
        // Failed episodes: delivered (the learner counts them for its error budget), then dropped
        // by the learner. Before, it held them until a checkpoint no step ever reached, and the
        // workers waited for tickets while the learner waited for data.
        let rl = RlConfig { groups_per_step: 2, max_staleness: 0, ..Default::default() };
        let mut store = Store::new(ReplayConfig::default(), rl);
        let t0 = Instant::now();
        assert_eq!(store.tickets("w", 2, 0, t0).granted, 2);
        for gid in 0..2 {
            let mut g = crate::testing::two_sample_group(gid, 0);
            g.samples.iter_mut().for_each(|s| s.finish = sluice_core::Finish::Error);
            insert(&mut store, g);
        }
        let got = store.sample(&SampleRequest { drop_zero_variance: true, ..fifo(2) }, t0).unwrap();
        assert_eq!(got.group_ids, vec![0, 1], "failed groups are delivered, not dropped as flat");
        assert_eq!(store.tickets("w", 2, 2, t0).granted, 0, "the budget is spent");
        let (fresh, _) = store.ack("c", &[0, 1], true).unwrap();
        assert_eq!((fresh.len(), store.wasted()), (2, 2));
        store.ack("c", &[0, 1], true).unwrap();
        assert_eq!(store.wasted(), 2, "a group is wasted once");
        assert_eq!(store.tickets("w", 2, 0, t0).granted, 2, "dropped groups give their tickets back");
    }

    #[test]
    fn a_resumed_learner_drops_what_it_orphaned_takes_back_its_leases_and_resets_admission() {
        // Two groups per step, staleness 1. Epoch 1 trained to version 8; its learner died holding
        // leases, and epoch 2 resumed from its checkpoint at version 5.
        let rl = RlConfig { groups_per_step: 2, max_staleness: 1, ..Default::default() };
        let mut store = Store::new(ReplayConfig::default(), rl);
        let t0 = Instant::now();
        let e1 = Lineage::start(1);
        let at = |epoch: u64, v: u64, gid: u64| {
            let mut g = crate::testing::two_sample_group(gid, v);
            g.samples.iter_mut().for_each(|s| s.behavior_epoch = epoch);
            g
        };
        store.sample(&SampleRequest { learner: e1.clone().at(8), ..fifo(0) }, t0).unwrap();
        // Finished groups as workers redeem them: 20 (admission allows (8 + 2) * 2).
        assert_eq!(store.tickets("w", 20, 0, t0).granted, 20);
        store.tickets("w", 0, 20, t0);
        for (gid, v) in [(1, 4), (2, 5), (3, 7), (4, 8)] {
            insert(&mut store, at(1, v, gid));
        }
        insert(&mut store, at(0, 0, 5)); // the initial weights: on every lineage
        let leased =
            store.sample(&SampleRequest { learner: e1.clone().at(8), max_staleness: 8, ..fifo(1) }, t0);
        assert_eq!(leased.unwrap().group_ids, vec![1], "leased to the learner that dies");
        assert_eq!(store.tickets("w", 1, 0, t0).granted, 0, "admission is spent at version 8");

        let resumed = e1.at(5).fork(2);
        let got = store
            .sample(&SampleRequest { learner: resumed.clone(), max_staleness: 5, ..fifo(8) }, t0)
            .unwrap();
        // Groups 3 and 4 were sampled by versions 7 and 8 of epoch 1, which the resume threw away;
        // group 1 comes back at once though its lease has not ended.
        assert_eq!(got.group_ids, vec![1, 2, 5]);
        assert_eq!(store.stats().evicted_orphaned, 2);
        assert_eq!((store.learner_version(), store.stats().learner_epoch), (5, 2), "the version went back");
        // Admission counts from version 5 with the three held groups still to come: (5 + 2) * 2
        // - (5 * 2 + 3) = 1 group may start (none without the reset: the limit stayed at 20).
        let r = store.tickets("w", 4, 0, t0);
        assert_eq!((r.granted, r.learner.now()), (1, PolicyId::new(2, 5)));
        // Late appends of orphaned weights are refused; the resumed lineage's are kept.
        assert!(!store.admits_append(PolicyId::new(1, 6)));
        assert!(store.admits_append(PolicyId::new(1, 5)) && store.admits_append(PolicyId::new(2, 6)));
        // A learner of the dead epoch still asking is refused, and changes nothing.
        let err =
            store.sample(&SampleRequest { learner: Lineage::start(1).at(9), ..fifo(1) }, t0).unwrap_err();
        assert!(err.to_string().contains("epoch 1 asked for data, but the replay follows epoch 2"), "{err}");
        assert_eq!(store.learner_version(), 5);
    }

    #[test]
    fn a_lineage_no_learner_can_have_reached_is_refused_and_changes_nothing() {
        // Before, one request with version u64::MAX made every held group stale and admission
        // unbounded, and the store persisted it.
        let rl = RlConfig { group_size: 2, groups_per_step: 2, max_staleness: 1, ..Default::default() };
        let mut store = Store::new(ReplayConfig::default(), rl);
        let t0 = Instant::now();
        let e1 = Lineage::start(1);
        // A store that never heard from a learner takes any lineage: a resumed learner may come
        // to a fresh replay directory far along.
        store.sample(&SampleRequest { learner: e1.clone().at(500), ..fifo(0) }, t0).unwrap();
        insert(&mut store, crate::testing::two_sample_group(1, 500));
        let forged = [
            e1.clone().at(u64::MAX),
            e1.clone().at(565),
            Lineage::start(u64::MAX),
            e1.clone().at(500).fork(66),
            Lineage { epoch: 3, version: 500, ancestry: vec![(2, 1), (1, 1)] },
        ];
        for learner in forged {
            let err = store.sample(&SampleRequest { learner: learner.clone(), ..fifo(1) }, t0).unwrap_err();
            assert!(err.to_string().contains("no learner can have got there"), "{learner:?}: {err}");
        }
        assert_eq!(store.stats().rejected_requests, 5);
        assert_eq!((store.lineage().epoch, store.learner_version()), (1, 500), "nothing moved");
        assert_eq!(store.len(), 1, "nothing was evicted as stale");
        assert_eq!(store.tickets("w", 5000, 0, t0).granted, 1004, "admission stays (500 + 1 + 1) * 2");
        // The real learner's next steps, and a resume, are within reach.
        store.sample(&SampleRequest { learner: e1.clone().at(564), ..fifo(0) }, t0).unwrap();
        store.sample(&SampleRequest { learner: e1.at(560).fork(3), ..fifo(0) }, t0).unwrap();
        assert_eq!(store.lineage().epoch, 3);
    }

    #[test]
    fn only_the_consumer_a_group_was_delivered_to_may_acknowledge_it() {
        let mut store =
            Store::new(ReplayConfig { fifo_lease_ms: 0, ..Default::default() }, RlConfig::default());
        let t0 = Instant::now();
        for gid in 0..3 {
            insert(&mut store, crate::testing::two_sample_group(gid, 0));
        }
        let got =
            store.sample(&SampleRequest { groups: 2, consumer: "learner".into(), ..fifo(2) }, t0).unwrap();
        assert_eq!(got.group_ids, vec![0, 1]);
        // Another consumer's ack of the learner's groups is refused whole and counted, group 2
        // (never delivered, so nobody holds it) included.
        let err = store.ack("intruder", &[2, 0, 1], false).unwrap_err().to_string();
        assert!(err.contains("\"intruder\" acknowledged 2 groups delivered to another consumer: 0"), "{err}");
        assert_eq!(store.stats().refused_acks, 2);
        assert_eq!(store.stats().consumed, 0, "nothing was acknowledged");
        // The lease ends (fifo_lease_ms = 0) and the groups go back to the stream: still only the
        // learner may acknowledge them.
        let again =
            store.sample(&SampleRequest { groups: 1, consumer: "learner".into(), ..fifo(1) }, t0).unwrap();
        assert_eq!(again.info.redelivered, 2);
        assert!(store.ack("intruder", &[1], false).is_err());
        let (fresh, reply) = store.ack("learner", &[0, 1], false).unwrap();
        assert_eq!((fresh, reply.acked), (vec![0, 1], 2));
    }
}
