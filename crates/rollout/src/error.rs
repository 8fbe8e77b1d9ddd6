//! What can go wrong in a rollout worker.

use sluice_model::ModelError;
use sluice_replay::ReplayError;
use sluice_weights_sync::SyncError;

/// A rollout worker's error.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// A setting is wrong; the message names the key.
    #[error("config: {0}")]
    Config(String),
    /// A task cannot be rolled out.
    #[error("task {task} (source {task_source}): {reason}")]
    Task {
        /// The task's id.
        task: String,
        /// Its source.
        task_source: String,
        /// What is wrong.
        reason: String,
    },
    /// The model refused a request or its weights.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The replay store refused or did not answer.
    #[error("replay: {0}")]
    Replay(#[from] ReplayError),
    /// Weight sync failed.
    #[error("weight sync: {0}")]
    Sync(#[from] SyncError),
    /// zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// A task source failed (not simply ran out): a remote environment nobody serves.
    #[error("task source {task_source}: {reason}")]
    Source {
        /// The source.
        task_source: String,
        /// What went wrong, naming what to check.
        reason: String,
    },
    /// A bug: an invariant of the worker broke.
    #[error("internal: {0}")]
    Internal(String),
}

/// Results of the rollout crate.
pub type Result<T, E = RolloutError> = std::result::Result<T, E>;
