//! Streaming replay store: segments, index, samplers, staleness filter, durability (log +
//! parquet), zenoh service and client.
//!
//! Rollout workers append whole groups (the trajectory schema of `sluice_core::trajectory`);
//! learners sample them by a named sampler under the staleness filter
//! `learner_version - behavior_version <= max_staleness`, and acknowledge what a `fifo` stream
//! delivered. Producers ask for admission tickets (`(v + max_staleness + 1) * groups_per_step`).
//! Memory is bounded (stale groups evicted first, then consumed ones; otherwise backpressure);
//! every acknowledged append is durable ([`durable`] explains how). [`Shard`] is one store in
//! one directory, [`ReplayService`] serves it over zenoh, [`ReplayClient`] reaches any number of
//! shards.

mod client;
mod config;
pub mod durable;
mod error;
mod export;
pub mod sampler;
mod service;
mod shard;
mod store;
mod wire;

pub use client::{shard_of, ClientConfig, ReplayClient, Sampled};
pub use config::{Durability, ReplayConfig};
pub use durable::RecoveryReport;
pub use error::{ReplayError, Result};
pub use export::{export, shard_dirs};
pub use sampler::Sampler;
pub use service::{Op, ReplayService, MAX_IN_FLIGHT};
pub use shard::Shard;
pub use store::Store;
pub use wire::{
    AckReply, AckRequest, AppendAck, ErrorKind, ErrorReply, SampleInfo, SampleRequest, Stats, TicketReply,
    TicketRequest,
};
