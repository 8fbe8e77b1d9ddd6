//! The error type of `sluice-replay`.

use std::path::PathBuf;

/// Errors of the replay store, its service and its client.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A batch or request was refused as invalid (bad schema, bad row, unknown sampler...).
    /// Retrying the same input cannot succeed.
    #[error("rejected: {0}")]
    Invalid(String),
    /// The store is full of groups it may not evict; the producer should retry later.
    #[error("replay store is full ({rows} rows, {bytes} bytes held; capacity {capacity_rows} rows, {capacity_bytes} bytes); retry later")]
    Backpressure {
        /// Rows held.
        rows: u64,
        /// Bytes held.
        bytes: u64,
        /// Row capacity.
        capacity_rows: u64,
        /// Byte capacity.
        capacity_bytes: u64,
    },
    /// A transient conflict (a retried append racing its original); retry.
    #[error("busy: {0}")]
    Busy(String),
    /// A file of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file of the store is damaged beyond the tolerated torn tail.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Parquet or Arrow refused an operation.
    #[error("{0}")]
    Format(String),
    /// No shard answered within the client's timeout, after its retries.
    #[error("replay shard {shard} did not answer `{op}` within {timeout_ms} ms ({attempts} attempts)")]
    Timeout {
        /// The shard.
        shard: u32,
        /// The operation.
        op: &'static str,
        /// The timeout per attempt.
        timeout_ms: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The store's writer thread is gone (the store is shutting down).
    #[error("the replay store is shut down")]
    Closed,
}

impl From<sluice_core::Error> for ReplayError {
    fn from(e: sluice_core::Error) -> Self {
        match e {
            sluice_core::Error::Zenoh(m) => ReplayError::Zenoh(m),
            other => ReplayError::Invalid(other.to_string()),
        }
    }
}

impl ReplayError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ReplayError {
        let path = path.into();
        move |source| ReplayError::Io { path, source }
    }

    pub(crate) fn format(e: impl std::fmt::Display) -> ReplayError {
        ReplayError::Format(e.to_string())
    }
}

/// `Result` with [`ReplayError`].
pub type Result<T> = std::result::Result<T, ReplayError>;
