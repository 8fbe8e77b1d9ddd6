//! The error type of `sluice-core`.

/// Errors from the shared vocabulary: trajectory batches, names and zenoh session setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A batch's schema is not the trajectory schema.
    #[error("trajectory schema mismatch: {0}")]
    Schema(String),
    /// A row of a trajectory batch breaks the contract.
    #[error("row {row} (group {group_id}): {reason}")]
    Row {
        /// Row index in the batch.
        row: usize,
        /// The row's group.
        group_id: u64,
        /// What is wrong.
        reason: String,
    },
    /// A payload is not a readable Arrow IPC stream.
    #[error("not a valid Arrow IPC stream: {0}")]
    Ipc(String),
    /// Arrow refused an operation.
    #[error("arrow: {0}")]
    Arrow(String),
    /// A name used in a zenoh key expression is not allowed.
    #[error("invalid {what} `{value}`: {reason}")]
    Name {
        /// What the name is for (run, worker...).
        what: &'static str,
        /// The name.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A setting is out of its range.
    #[error("{key}: {reason}")]
    Setting {
        /// The setting's key in the run config (`rl.group_size`).
        key: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// zenoh refused a configuration or failed to open a session.
    #[error("zenoh: {0}")]
    Zenoh(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
