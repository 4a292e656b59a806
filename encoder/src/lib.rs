//! mrl-encoder: a BERT-family encoder on candle that loads sentence-transformers checkpoints
//! and runs any elastic profile (a depth/width sub-network) at any nested output size.
//!
//! The pipeline: tokenize → encoder(profile) → mean pool → prefix(dim) → L2-normalise.

pub mod arch;
#[cfg(feature = "blas")]
pub mod blas;
pub mod config;
pub mod dense;
pub mod embedder;
pub mod error;
pub mod fetch;
pub mod int8;
pub mod kernels;
pub mod linear;
pub mod manifest;
pub mod model;
pub mod nested;
pub mod pooling;
pub mod profile;
pub mod rotation;
pub mod text;
pub mod tokenize;
mod weights;

pub use config::BertConfig;
pub use embedder::{Embedder, DEFAULT_BATCH_SIZE};
pub use error::{EncoderError, Result};
pub use fetch::{Fetcher, ModelSpec, ALL_MPNET_BASE_V2, DEFAULT_MODEL, KNOWN_MODELS};
pub use manifest::{Manifest, NamedProfile, Ranking, MANIFEST_FILE};
pub use model::{BertModel, Bridge, NoObserver, Observer, Precision};
pub use profile::Profile;
