//! Weight sync (`docs/design.md`, "Weight sync" and "Versions and staleness"): versioned,
//! checksummed, resharded parameter transfer over zenoh, and the staleness gate that keeps rollout
//! workers within `max_staleness` of the learner.
//!
//! - [`Layout`]s say which part of a tensor a holder keeps; the pure [`planner`] turns source and
//!   destination layouts into byte-range copies.
//! - [`Manifest`]: every tensor, the chunk table with xxh3 checksums, a digest over all of it.
//! - [`Publisher`] (learner): snapshot -> transfer dtype -> chunks -> announce; serves the latest
//!   versions as zenoh queryables (in shared memory with the `shm` feature).
//! - [`Subscriber`] (rollout worker): fetches, verifies and stages versions for its
//!   [`Destination`]; the owner swaps them in and acknowledges.
//! - [`StalenessGate`]: may this worker start new work at the learner's version?

mod destination;
mod error;
mod gate;
mod layout;
mod manifest;
pub mod planner;
mod publisher;
mod subscriber;
pub mod synthetic;
pub mod wire;

pub use destination::{local_shape, Destination, Place, Placement, StagedTensor};
pub use error::{Result, SyncError};
pub use gate::StalenessGate;
pub use layout::{Layout, Range};
pub use manifest::{Chunk, DType, Manifest, Piece, TensorEntry};
pub use planner::{apply, plan_fused, plan_tensor, Copy, Fused, PartCopies};
pub use publisher::{Publisher, PublisherConfig, PublisherStats, SourceTensor};
pub use subscriber::{Subscriber, SubscriberConfig, SubscriberStats, Weights};
pub use wire::{Ack, Announce};
