//! The learner crate's one error type.

/// What can go wrong in the learner.
#[derive(Debug, thiserror::Error)]
pub enum LearnerError {
    /// A batch does not consist of whole groups of the configured size.
    #[error("{rows} rows do not split into groups of {group_size}")]
    RaggedGroups {
        /// Rows in the batch.
        rows: usize,
        /// The configured group size.
        group_size: usize,
    },
    /// A value that must be finite is not.
    #[error("{what} at row {row} is not finite ({value})")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row index.
        row: usize,
        /// The value.
        value: f32,
    },
    /// Weights about to be published or checkpointed hold a NaN or an infinity.
    #[error("the weights of version {version} are not finite (parameter {param}): not publishing or checkpointing them")]
    NonFiniteWeights {
        /// The first parameter path found.
        param: String,
        /// The version.
        version: u64,
    },
    /// A hyperparameter is out of its range.
    #[error("invalid {name}: {reason}")]
    InvalidConfig {
        /// The config key.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A checkpoint could not be written, or is incomplete or corrupt.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A batch of groups the learner cannot train on.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The model failed (scoring, loading, saving).
    #[error(transparent)]
    Model(#[from] sluice_model::ModelError),
    /// The replay store failed.
    #[error("replay: {0}")]
    Replay(#[from] sluice_replay::ReplayError),
    /// Weight sync failed.
    #[error("weight sync: {0}")]
    Sync(#[from] sluice_weights_sync::SyncError),
    /// The environments failed more than the error budget allows (`learner.max_failed_fraction`,
    /// `learner.max_failed_steps`): the run stops rather than train on what is left.
    #[error("environment error budget spent: {0}")]
    EnvFailures(String),
    /// The learner ranks' collective failed: a rank did not join or answer in time, or the
    /// engine refused a call.
    #[error("collective: {0}")]
    Collective(String),
    /// A background task died.
    #[error("background task failed: {0}")]
    Task(String),
    /// A file of the run could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
