//! mrl: elastic, Matryoshka-style text embeddings. This facade is what applications use:
//! load a model (fetching the default one on first use) and embed at any profile and size,
//! or keep documents in an [`Index`] (the embedded Qdrant store) and search them by text.
//! It is built on mrl-core alone: without the `server` feature (the CLI and the HTTP
//! service) nothing of actix-web is compiled.
//!
//! ```no_run
//! use mrl::{EmbedOptions, Embedder};
//! # fn main() -> Result<(), mrl::EncoderError> {
//! let embedder = mrl::load_model(None)?; // the shipped model, else the base one, fetched once
//! let vectors = embedder.embed(&["hello world"], &EmbedOptions::default().dim(128))?;
//! assert_eq!(vectors[0].len(), 128);
//! # Ok(()) }
//! ```

use std::path::Path;

mod index;

pub use index::{Error, Index, IndexConfig, SearchOptions};
pub use mrl_core::indexer::IndexSummary;
pub use mrl_core::store::{Hit, SearchParams};
pub use mrl_core::{DimPolicy, Document, EmbedSpec, Embeddings, Fields, Policy};

pub use mrl_encoder::{
    fetch, BertConfig, EmbedOptions, Embedder, EncoderError, Fetcher, ModelSpec, Profile,
    DEFAULT_MODEL,
};

/// The elastically trained checkpoint committed with the repository, under the models
/// folder (`configs/minilm-elastic.toml`, exported to f16).
pub const SHIPPED_MODEL: &str = "mrl-minilm-elastic";

/// Loads the model in `dir`; when `dir` is `None`, the shipped trained checkpoint
/// ([`SHIPPED_MODEL`] in `$MRL_MODELS_DIR`, else `./models`) if it is there, else the base
/// model (fetched into that folder the first time).
pub fn load_model(dir: Option<&Path>) -> Result<Embedder, EncoderError> {
    match dir {
        Some(d) => Embedder::load(d),
        None => {
            let shipped = fetch::default_models_dir().join(SHIPPED_MODEL);
            if shipped.join("model.safetensors").is_file() {
                Embedder::load(shipped)
            } else {
                Embedder::load(Fetcher::default().ensure(&DEFAULT_MODEL)?)
            }
        }
    }
}
