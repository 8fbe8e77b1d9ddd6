//! Replay store settings, with their defaults in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When an append counts as durable (the ack waits for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum Durability {
    /// `fsync` after every appended batch: survives power loss, slowest.
    Fsync,
    /// Batches arriving within `interval_ms` share one `fsync`: survives power loss, each ack
    /// waits up to the interval.
    GroupCommit {
        /// How long the writer gathers batches before one `fsync`.
        interval_ms: u64,
    },
    /// `write(2)` only: survives the replay process being killed, not the machine losing power.
    OsBuffer,
}

impl Durability {
    /// Parses `fsync`, `group-commit` (5 ms), `group-commit=MS` or `os-buffer`.
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "fsync" => Some(Durability::Fsync),
            "os-buffer" => Some(Durability::OsBuffer),
            "group-commit" => Some(Durability::GroupCommit { interval_ms: 5 }),
            _ => s
                .strip_prefix("group-commit=")
                .and_then(|ms| ms.trim_end_matches("ms").parse().ok())
                .map(|interval_ms| Durability::GroupCommit { interval_ms }),
        }
    }
}

/// Settings of one replay shard (the staleness bound and groups per step it admits by are the
/// run's, [`sluice_core::RlConfig`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Most rows (samples) held in memory.
    pub capacity_rows: u64,
    /// Most bytes held in memory (estimated from the token lists).
    pub capacity_bytes: u64,
    /// When an append is acknowledged.
    pub durability: Durability,
    /// Rows per append log before it is rolled into a parquet segment.
    pub segment_rows: u64,
    /// How long a `fifo` delivery waits for its ack before the group is redelivered. The learner
    /// acknowledges at checkpoints, so the lease outlasts the time between two of them.
    pub fifo_lease_ms: u64,
    /// How long a producer's unreported tickets stay reserved after its last ticket request.
    pub ticket_lease_ms: u64,
    /// Whether a full store may evict groups nobody has consumed yet (a ring buffer for off-policy
    /// replay). When false, producers get backpressure instead.
    pub evict_unconsumed: bool,
    /// Seed of the samplers' random draws.
    pub seed: u64,
    /// Most bytes of one request (an append's Arrow payload, a sample or ack request's JSON);
    /// larger ones are refused before they are decoded.
    pub max_request_bytes: u64,
    /// How far ahead of the lineage this shard follows a sample request's may be, in versions and
    /// in run epochs. A learner moves one version per step and one epoch per start, so a bigger
    /// jump is a forged request (it would make every held group stale and admission unbounded)
    /// and is refused. A store that never heard from a learner takes any lineage.
    pub max_learner_jump: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            capacity_rows: 1 << 20,
            capacity_bytes: 4 << 30,
            durability: Durability::GroupCommit { interval_ms: 5 },
            segment_rows: 1 << 16,
            fifo_lease_ms: 600_000,
            ticket_lease_ms: 600_000,
            evict_unconsumed: false,
            seed: 0,
            max_request_bytes: 64 << 20,
            max_learner_jump: 64,
        }
    }
}

impl ReplayConfig {
    pub(crate) fn fifo_lease(&self) -> Duration {
        Duration::from_millis(self.fifo_lease_ms)
    }

    pub(crate) fn ticket_lease(&self) -> Duration {
        Duration::from_millis(self.ticket_lease_ms)
    }
}
