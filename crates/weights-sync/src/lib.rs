//! Weight sync: manifest, shard layouts and reshard planner, publisher, subscriber, staleness gate.
//!
//! Built so far: shard [`Layout`]s and the pure reshard [`planner`] (issue 4's first step). The
//! manifest, publisher, subscriber and staleness gate are not built yet.

mod error;
mod layout;
pub mod planner;

pub use error::{Result, SyncError};
pub use layout::{Layout, Range};
pub use planner::{apply, plan_fused, plan_tensor, Copy, Fused, PartCopies};
