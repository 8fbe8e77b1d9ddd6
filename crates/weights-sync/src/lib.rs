//! Weight sync: manifest, shard layouts and reshard planner, publisher, subscriber, staleness gate.
//!
//! Built so far: shard [`Layout`]s, the pure reshard [`planner`], the checksummed [`Manifest`]
//! and the [`StalenessGate`] (issue 4's first steps). The publisher and subscriber (zenoh) are not
//! built yet.

mod error;
mod gate;
mod layout;
mod manifest;
pub mod planner;

pub use error::{Result, SyncError};
pub use gate::StalenessGate;
pub use layout::{Layout, Range};
pub use manifest::{Chunk, DType, Manifest, Piece, TensorEntry};
pub use planner::{apply, plan_fused, plan_tensor, Copy, Fused, PartCopies};
