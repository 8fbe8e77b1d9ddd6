//! The learner crate's one error type.

/// What can go wrong when computing an objective.
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
}

/// Result alias of this crate.
pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
