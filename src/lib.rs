//! mrl: elastic, Matryoshka-style text embeddings. This facade is what applications use:
//! load a model (fetching the default one on first use) and embed at any profile and size,
//! or keep documents in an [`Index`] (the embedded Qdrant store) and search them by text.
//!
//! ```no_run
//! use mrl::{EmbedOptions, Embedder};
//! # fn main() -> Result<(), mrl::EncoderError> {
//! let embedder = mrl::load_model(None)?; // the default model, fetched once
//! let vectors = embedder.embed(&["hello world"], &EmbedOptions::default().dim(128))?;
//! assert_eq!(vectors[0].len(), 128);
//! # Ok(()) }
//! ```

use std::path::Path;

mod index;

pub use index::{Error, Index, IndexConfig, SearchOptions};
pub use mrl_service::documents::Document;
pub use mrl_service::indexer::IndexSummary;
pub use mrl_service::store::Hit;

pub use mrl_encoder::{
    fetch, BertConfig, EmbedOptions, Embedder, EncoderError, Fetcher, ModelSpec, Profile,
    DEFAULT_MODEL,
};

/// Loads the model in `dir`, or the default model (fetched into `$MRL_MODELS_DIR`, else
/// `./models`, the first time) when `dir` is `None`.
pub fn load_model(dir: Option<&Path>) -> Result<Embedder, EncoderError> {
    match dir {
        Some(d) => Embedder::load(d),
        None => Embedder::load(Fetcher::default().ensure(&DEFAULT_MODEL)?),
    }
}
