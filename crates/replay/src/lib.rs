//! Streaming replay store: segments, index, samplers, staleness filter, durability (log +
//! parquet), zenoh service and client.
//!
//! Rollout workers append whole groups (the trajectory schema of `sluice_core::trajectory`);
//! learners sample them by a named sampler under the staleness filter (on the learner's lineage and
//! `learner_version - behavior_version <= max_staleness`: [`sluice_core::Lineage::admits`]), and
//! acknowledge what a `fifo` stream
//! delivered. Producers ask for admission tickets (`(v + max_staleness + 1) * groups_per_step`).
//! Memory is bounded (stale groups evicted first, then consumed ones; otherwise backpressure);
//! every acknowledged append is durable ([`durable`] explains how). [`Shard`] is one store in
//! one directory, [`ReplayService`] serves it over zenoh, [`ReplayClient`] reaches any number of
//! shards.
//!
//! # Design
//! *Constraints.* Producers and consumers run at different speeds in different processes; the
//! learner needs whole groups under a staleness bound; nothing acknowledged may be lost, and a
//! hostile or broken producer must not take the store down.
//! *Solution.* Validate at the door ([`sluice_core::trajectory::validate_batch`]), keep groups as
//! zero-copy Arrow slices indexed by append order, version and consumption, log before
//! acknowledging, and serve each shard as a set of zenoh queryables. Decisions beyond
//! `docs/design.md` ("Replay"):
//! - Eviction uses the shard's configured `max_staleness`; each sample request filters with its
//!   own bound. When full, stale groups go first, then consumed ones; unconsumed groups are only
//!   evicted when `evict_unconsumed` (a ring buffer), otherwise producers get backpressure.
//! - Appends are idempotent by `group_id`, so a client may retry any append whose reply it lost.
//! - Admission: shard 0 is the authority. A producer reports the groups it finished with its next
//!   ticket request; a producer silent for longer than the ticket lease loses its outstanding
//!   tickets, so a dead worker does not hold admission forever.
//! - Across shards every non-stream sampler draws each shard's share of the request (stratified by
//!   shard), then tops up from shards that had more; `reward` is therefore a softmax within each
//!   shard.
//! - `dedup` drops repeated completions from a returned group, so its `sample_idx` may have gaps.
//!
//! *Pros:* one code path from a laptop to many hosts; retries are safe; memory and disk stay
//! bounded. *Cons:* a sample reply carries every column (the learner needs most of them), and
//! stratified cross-shard sampling is not one global draw.
//!
//! ```
//! use sluice_core::trajectory::groups_to_batch;
//! use sluice_core::{Finish, Group, Sample};
//! use sluice_core::{Lineage, RlConfig};
//! use sluice_replay::{AckRequest, ReplayConfig, SampleRequest, Sampler, Shard};
//!
//! let dir = std::env::temp_dir().join(format!("sluice-doc-{}", std::process::id()));
//! let rl = RlConfig { group_size: 2, ..RlConfig::default() }; // groups must be of the run's size
//! let shard = Shard::open(&dir, 0, ReplayConfig::default(), rl).unwrap();
//! let sample = |i: u16, reward: f32| Sample {
//!     run_id: "doc".into(), group_id: 1, sample_idx: i, task_id: "1+1".into(), source: "arithmetic".into(),
//!     prompt_tokens: vec![1, 2], completion_tokens: vec![3, 4], loss_mask: vec![1, 1],
//!     behavior_logprobs: vec![-0.2, -0.3], token_versions: vec![0, 0], behavior_version: 0, behavior_epoch: 0,
//!     reward, reward_parts: Default::default(), finish: Finish::Stop, num_turns: 1, created_at_us: 0,
//! };
//! let group = Group { group_id: 1, samples: vec![sample(0, 1.0), sample(1, 0.0)] };
//! let ack = shard.append(&groups_to_batch(&[group]).unwrap()).unwrap(); // durable when it returns
//! assert_eq!(ack.new_groups, 1);
//! let req = SampleRequest {
//!     sampler: Sampler::Fifo, groups: 8, learner: Lineage::default().at(1), max_staleness: 1,
//!     consumer: "learner-0".into(), drop_zero_variance: true, dedup: false, exclude: Vec::new(),
//! };
//! let (batch, info) = shard.sample(&req).unwrap();
//! assert_eq!((batch.num_rows(), info.groups), (2, 1));
//! shard.ack(&AckRequest { consumer: "learner-0".into(), group_ids: vec![1], dropped: false }).unwrap();
//! shard.close();
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod client;
mod config;
pub mod durable;
mod error;
mod export;
pub mod sampler;
mod service;
mod shard;
mod store;
#[cfg(test)]
mod testing;
mod wire;

pub use client::{shard_of, ClientConfig, ReplayClient, Sampled};
pub use config::{Durability, ReplayConfig};
pub use durable::RecoveryReport;
pub use error::{ReplayError, Result};
pub use export::{export, export_with, shard_dirs, Decode};
pub use sampler::{spec as sampler_spec, Sampler};
pub use service::{frame_sample, unframe_sample, Op, ReplayService, MAX_IN_FLIGHT};
pub use shard::Shard;
pub use store::Store;
pub use wire::{
    AckReply, AckRequest, AppendAck, ErrorKind, ErrorReply, SampleInfo, SampleRequest, Stats, TicketReply,
    TicketRequest,
};
