//! mrl: elastic, Matryoshka-style text embeddings. This facade is what applications use:
//! load a model (fetching the default one on first use) and embed at any profile and size,
//! or keep documents in an [`Index`] (the embedded Qdrant store) and search them by text.
//! Both go through mrl-core's one path (the server's too): [`Embeddings`] for text →
//! vectors, `Collection` for documents and searches. Without the `server` feature (the CLI
//! and the HTTP service) nothing of actix-web is compiled.
//!
//! ```no_run
//! use mrl::{EmbedSpec, Fields};
//! # fn main() -> Result<(), mrl::Error> {
//! let embeddings = mrl::embeddings(None)?; // the shipped model, else the base one, fetched once
//! let spec = EmbedSpec::default().dim(128); // `.profile("b50")`: a sub-encoder of the shipped model
//! let out = embeddings.embed_blocking(&["hello world"], &spec, &Fields::NATIVE)?;
//! assert_eq!(out.vectors[0].len(), 128);
//! # Ok(()) }
//! ```

use std::path::Path;

mod index;

pub use index::{Error, Index, IndexConfig, SearchOptions};
pub use mrl_core::indexer::IndexSummary;
pub use mrl_core::store::{Hit, SearchParams};
pub use mrl_core::{DimPolicy, Document, EmbedSpec, Embeddings, Fields, Policy};

pub use mrl_encoder::{
    fetch, BertConfig, Embedder, EncoderError, Fetcher, ModelSpec, Precision, Profile,
    ALL_MPNET_BASE_V2, DEFAULT_MODEL, KNOWN_MODELS,
};

/// The elastically trained checkpoint committed with the repository, under the models
/// folder (`configs/minilm-elastic.toml`, exported to f16).
pub const SHIPPED_MODEL: &str = "mrl-minilm-elastic";

/// Loads the model in `dir`; when `dir` is `None`, the shipped trained checkpoint
/// ([`SHIPPED_MODEL`] in `$MRL_MODELS_DIR`, else `./models`) if it is there, else the base
/// model (fetched into that folder the first time).
pub fn load_model(dir: Option<&Path>) -> Result<Embedder, EncoderError> {
    load_model_with(dir, Precision::F32)
}

/// [`load_model`] with the dense layers at `precision` (`Int8`: quantized once, here).
pub fn load_model_with(dir: Option<&Path>, precision: Precision) -> Result<Embedder, EncoderError> {
    match dir {
        Some(d) => Embedder::load_with(d, precision),
        None => {
            let shipped = fetch::default_models_dir().join(SHIPPED_MODEL);
            if shipped.join("model.safetensors").is_file() {
                Embedder::load_with(shipped, precision)
            } else {
                Embedder::load_with(Fetcher::default().ensure(&DEFAULT_MODEL)?, precision)
            }
        }
    }
}

/// The model in `dir` (as [`load_model`] finds it) behind the library's policy
/// ([`Policy::LIBRARY`]: any prefix size, long texts truncated), embedding on the caller's
/// thread: the one text → vector path, as the server takes it.
///
/// Errors: the model cannot be fetched or loaded.
pub fn embeddings(dir: Option<&Path>) -> Result<Embeddings, EncoderError> {
    Ok(Embeddings::inline(
        std::sync::Arc::new(load_model(dir)?),
        Policy::LIBRARY,
    ))
}
