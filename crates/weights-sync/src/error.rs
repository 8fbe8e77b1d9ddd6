//! The error type of `sluice-weights-sync`.

/// Errors of weight sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A layout does not fit a tensor.
    #[error("tensor `{tensor}`: {reason}")]
    Layout {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// The sources do not cover what a destination needs.
    #[error(
        "tensor `{tensor}`: the sources do not cover elements {start}..{end} that the destination needs"
    )]
    Uncovered {
        /// The tensor.
        tensor: String,
        /// First element missing.
        start: u64,
        /// End of the missing run.
        end: u64,
    },
    /// A manifest is inconsistent with its pieces or fails its digest.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A setting or a call is invalid.
    #[error("weight sync: {0}")]
    Config(String),
    /// zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// A version could not be fetched whole and verified; it was abandoned, never applied.
    #[error("version {version} abandoned: {reason}")]
    Abandoned {
        /// The version.
        version: sluice_core::PolicyId,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`SyncError`].
pub type Result<T> = std::result::Result<T, SyncError>;
