//! Messages between the replay service and its clients (JSON; trajectory data travels as Arrow IPC).

use serde::{Deserialize, Serialize};
use sluice_core::Lineage;

use crate::sampler::Sampler;

/// A request for groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    /// Which sampler draws.
    pub sampler: Sampler,
    /// How many groups.
    pub groups: u32,
    /// The learner's lineage: its epoch, version and ancestry (also tells the store how far
    /// training has got, and, after a resume, which data the resume orphaned).
    pub learner: Lineage,
    /// Staleness bound of the admissibility filter.
    pub max_staleness: u64,
    /// Who consumes (a `fifo` lease is held in this name).
    pub consumer: String,
    /// Skip groups whose rewards are all equal (they carry no GRPO signal); a `fifo` request
    /// skips at most `groups` of them.
    #[serde(default)]
    pub drop_zero_variance: bool,
    /// Drop rows whose completion repeats an earlier row of the same group.
    #[serde(default)]
    pub dedup: bool,
    /// Groups not to draw: those the consumer already holds for this batch (a client's top-up
    /// from a second shard, or a learner's next request while filling one batch), so that a
    /// batch of a sampler other than `fifo` never holds a group twice. `fifo` never delivers a
    /// group twice while it is leased, and ignores this.
    #[serde(default)]
    pub exclude: Vec<u64>,
}

/// What a sample reply holds besides the rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// Groups returned.
    pub groups: u32,
    /// Rows returned.
    pub rows: u64,
    /// Admissible groups the sampler chose from (for `fifo`: undelivered ones).
    pub admissible: u64,
    /// Groups passed over because they were stale.
    pub stale_skipped: u64,
    /// Groups passed over for zero reward variance.
    pub zero_variance_dropped: u64,
    /// Their rows, and the failed episodes (`finish = error`) among them: the consumer's error
    /// budget counts the episodes it never saw.
    #[serde(default)]
    pub zero_variance_rows: u64,
    /// See `zero_variance_rows`.
    #[serde(default)]
    pub zero_variance_failed: u64,
    /// Rows dropped as duplicate completions.
    pub duplicate_rows_dropped: u64,
    /// `fifo` groups delivered again after an expired lease.
    pub redelivered: u64,
}

/// The answer to an append.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AppendAck {
    /// One sequence number per group of the batch that is held, in order of first appearance. A
    /// group already present (a retried append) keeps the sequence number it was first stored
    /// under; an orphaned group has none.
    pub seqs: Vec<u64>,
    /// Groups stored by this append.
    pub new_groups: u32,
    /// Groups that were already present.
    pub duplicates: u32,
    /// Rows stored by this append.
    pub rows: u64,
    /// The groups not stored because the weights that sampled them are not on the learner's lineage
    /// (sampled by a version a resumed learner threw away): never trainable.
    #[serde(default)]
    pub orphaned: Vec<u64>,
}

/// Acknowledges `fifo` deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Who consumed them.
    pub consumer: String,
    /// The groups consumed.
    pub group_ids: Vec<u64>,
    /// The consumer drops these groups untrained (failed episodes, no reward spread, orphaned):
    /// for admission they are wasted, like the groups the replay drops itself, so producers may
    /// start as many again.
    #[serde(default)]
    pub dropped: bool,
}

/// The answer to an ack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AckReply {
    /// Groups newly marked consumed.
    pub acked: u32,
    /// Ids this shard does not hold (evicted, or never here).
    pub unknown: u32,
}

/// A producer asks to start groups (admission control, `docs/design.md`, "Versions and staleness").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// The producer.
    pub worker: String,
    /// Groups it would like to start.
    pub want: u64,
    /// Groups it finished (appended) since its previous request.
    pub redeemed: u64,
}

/// How many groups a producer may start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TicketReply {
    /// Groups it may start now.
    pub granted: u64,
    /// `(v + max_staleness + 1) * groups_per_step`.
    pub limit: u64,
    /// Groups started so far (finished plus outstanding tickets).
    pub started: u64,
    /// The learner's lineage the limit was computed for: often ahead of the publisher's announce
    /// a worker has heard (the learner asks for its next batch as soon as it publishes), and of a
    /// newer epoch with a lower version after the learner resumed from an older checkpoint. What a
    /// worker's staleness gate follows.
    pub learner: Lineage,
}

/// Why a request failed, as the service replies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is wrong; retrying it cannot succeed.
    Invalid,
    /// The store is full; retry later.
    Backpressure,
    /// The store failed (disk...).
    Internal,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Retry or not.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
}

/// Counters and gauges of one shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The shard.
    pub shard: u32,
    /// Groups held.
    pub groups: u64,
    /// Rows held.
    pub rows: u64,
    /// Estimated bytes held.
    pub bytes: u64,
    /// The learner's version (of its newest epoch).
    pub learner_version: u64,
    /// The learner's epoch.
    pub learner_epoch: u64,
    /// `fifo` groups not yet delivered.
    pub fifo_pending: u64,
    /// `fifo` groups delivered and awaiting their ack.
    pub fifo_leased: u64,
    /// Groups consumed (acknowledged) and still held.
    pub consumed: u64,
    /// Groups stored since this process started, recovered ones included.
    pub appended_groups: u64,
    /// Rows stored since this process started.
    pub appended_rows: u64,
    /// Appends of groups already present (retries).
    pub duplicate_groups: u64,
    /// Batches refused as invalid.
    pub rejected_batches: u64,
    /// Payloads refused before they were a batch (not Arrow, truncated, wrong schema, bad JSON).
    pub rejected_payloads: u64,
    /// Requests refused for what they asked (well-formed but impossible or hostile): a sample of
    /// more groups than the shard can hold, a learner lineage no learner can have reached, a
    /// payload over `replay.max_request_bytes`, a name too long.
    #[serde(default)]
    pub rejected_requests: u64,
    /// Groups whose acknowledgement was refused: delivered to another consumer.
    #[serde(default)]
    pub refused_acks: u64,
    /// Appends refused for lack of space.
    pub backpressured: u64,
    /// Groups evicted because they went stale.
    pub evicted_stale: u64,
    /// Groups evicted to make room.
    pub evicted_capacity: u64,
    /// Groups dropped because a resumed learner orphaned the weights that sampled them (held ones
    /// when the new epoch arrived, and appends that came later).
    pub evicted_orphaned: u64,
    /// Groups finished by producers (redeemed tickets), for admission.
    pub tickets_completed: u64,
    /// Tickets granted and not yet redeemed.
    pub tickets_outstanding: u64,
    /// What the last restart recovered.
    pub recovery: Option<crate::durable::RecoveryReport>,
}
