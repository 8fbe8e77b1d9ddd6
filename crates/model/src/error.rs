//! The model crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a policy model.
///
/// Every variant names the input it is about (file, tensor, key) so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (config.json, tokenizer_config.json, an index) is not what we expect.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The model config names an architecture we do not implement.
    #[error("{path}: unsupported architecture {architecture:?} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What it asked for.
        architecture: String,
        /// What we can load.
        supported: &'static str,
    },
    /// A config value is missing or inconsistent.
    #[error("{path}: invalid config: {reason}")]
    InvalidConfig {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A weights file is malformed (bad header, truncated data, unknown dtype...).
    #[error("{path}: malformed weights: {reason}")]
    MalformedWeights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: missing tensor {name:?}")]
    MissingTensor {
        /// The checkpoint (file or directory).
        path: PathBuf,
        /// The checkpoint name of the tensor.
        name: String,
    },
    /// A tensor has the wrong shape for the configured architecture.
    #[error("{path}: tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The checkpoint name of the tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A GGUF file is malformed or uses something we do not read.
    #[error("{path}: GGUF: {reason}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer ({what}): {reason}")]
    Tokenizer {
        /// Which tokenizer source or operation.
        what: String,
        /// The reason.
        reason: String,
    },
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A request to the sampler or scorer is invalid (empty prompt, token out of vocab...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json { path: path.into(), source }
    }
    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::MalformedWeights { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn gguf(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Gguf { path: path.into(), reason: reason.into() }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig { path: path.into(), reason: reason.into() }
    }
}
