//! The encoder's error type: every failure a caller of `mrl-encoder` can see.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, loading or running an encoder.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported model in {path}: {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("dim {dim} is not available: allowed range is 1..={max}")]
    InvalidDim { dim: usize, max: usize },
    #[error("unknown profile {name:?}: known profiles are {known:?}, or a spec such as \"layers=3\" (layers 1..={max_layers})")]
    UnknownProfile {
        name: String,
        known: Vec<String>,
        max_layers: usize,
    },
    #[error("invalid profile {spec:?}: {reason}")]
    InvalidProfile { spec: String, reason: String },
    #[error("query profile {query:?} is not aligned with the documents' profile {documents:?}: its vectors are not comparable; search with {documents:?} (or one of {aligned:?}, which the checkpoint declares aligned)")]
    NotAligned {
        query: String,
        documents: String,
        aligned: Vec<String>,
    },
    #[error("unknown precision {0:?}: use f32 or int8")]
    UnknownPrecision(String),
    #[error("model fetch failed: {0}")]
    Fetch(String),
    /// Vectors a rotation cannot be fitted on or applied to (none, zero, mixed widths).
    #[error("invalid vectors: {0}")]
    InvalidVectors(String),
    #[error("checksum mismatch for {path}: expected {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

pub type Result<T, E = EncoderError> = std::result::Result<T, E>;

impl EncoderError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
