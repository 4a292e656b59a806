//! The core's errors, named by what the caller did wrong or what failed; every shell maps them
//! to its own form once (HTTP statuses and bodies: `mrl-service`'s `error.rs`).

use mrl_encoder::EncoderError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is missing, has the wrong type or an unacceptable value; `field` is its name as
    /// the caller spelled it (`dim`, `dimensions`, `documents[2].id`, `funnel.candidates`).
    #[error("{message}")]
    InvalidField { field: String, message: String },
    /// An input is longer than the model's token limit and the policy rejects instead of
    /// truncating.
    #[error("{message}")]
    InputTooLong { field: String, message: String },
    /// Admitting the request would exceed the model queue's limits.
    #[error(
        "the model queue is full (at most {requests} requests or {tokens} tokens wait); retry \
         shortly"
    )]
    QueueFull { requests: usize, tokens: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or a failure the caller cannot fix (the model thread stopped, a forward pass
    /// failed).
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// An encoder error raised by a request's options, attributed to the request's own field
    /// names (`dim` vs `dimensions`, `profile` vs `model`).
    pub fn from_encoder(e: EncoderError, dim_field: &str, profile_field: &str) -> Self {
        match e {
            EncoderError::InvalidDim { .. } => Self::field(dim_field, e.to_string()),
            EncoderError::UnknownProfile { .. }
            | EncoderError::InvalidProfile { .. }
            | EncoderError::NotAligned { .. } => Self::field(profile_field, e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// What a caller calls the fields the core checks, so an error names the caller's own field:
/// the native API says `inputs`/`dim`/`profile`, OpenAI's `input`/`dimensions`/`model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub texts: &'static str,
    pub dim: &'static str,
    pub profile: &'static str,
}

impl Fields {
    pub const NATIVE: Self = Self {
        texts: "inputs",
        dim: "dim",
        profile: "profile",
    };
    pub const OPENAI: Self = Self {
        texts: "input",
        dim: "dimensions",
        profile: "model",
    };
}
