//! The error type of `sluice-envs`.

use std::path::PathBuf;

/// Why a task source or an environment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EnvsError {
    /// A setting is out of range; the message names the key.
    #[error("{0}")]
    Config(String),
    /// A task file's line is not a task.
    #[error("{origin}:{line}: {reason}")]
    Task {
        /// The file (or built-in source) the line comes from.
        origin: String,
        /// Its line number, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A task file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// `Result` with [`EnvsError`].
pub type Result<T, E = EnvsError> = std::result::Result<T, E>;
