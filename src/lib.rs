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

use std::path::{Path, PathBuf};

mod index;

pub use index::{Error, Index, IndexBar, IndexConfig, SearchOptions};
pub use mrl_core::indexer::IndexSummary;
pub use mrl_core::store::{Hit, SearchParams};
pub use mrl_core::{DimPolicy, Document, EmbedSpec, Embeddings, Fields, Policy};

pub use mrl_encoder::{
    fetch, BertConfig, Embedder, EncoderError, Fetcher, ModelSpec, Precision, Profile,
    ALL_MPNET_BASE_V2, DEFAULT_MODEL, KNOWN_MODELS,
};

/// The elastically trained checkpoint committed with the repository, under the models
/// folder (`configs/minilm-generic.toml`, exported to f16).
pub const SHIPPED_MODEL: &str = "mrl-minilm-elastic";

/// Where the shipped checkpoint is looked for, in order: the models folder
/// (`$MRL_MODELS_DIR`, else `./models`), the checkout cargo runs this from (`cargo run`,
/// `cargo test`: its run-time `CARGO_MANIFEST_DIR`; a binary reused through a target dir
/// shared by two checkouts carries the other's path), then the checkout this build was made
/// from, so an installed `mrl` (`cargo install --path .`) finds it from any folder.
pub fn shipped_model_candidates() -> Vec<PathBuf> {
    let checkouts = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(env!("CARGO_MANIFEST_DIR"))]);
    let mut dirs = vec![fetch::default_models_dir().join(SHIPPED_MODEL)];
    for dir in checkouts.map(|c| c.join("models").join(SHIPPED_MODEL)) {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// The shipped checkpoint's folder: the first of [`shipped_model_candidates`] that holds its
/// weights.
///
/// Errors: the candidates looked in, none of which has it.
pub fn find_shipped_model() -> Result<PathBuf, Vec<PathBuf>> {
    let candidates = shipped_model_candidates();
    candidates
        .iter()
        .find(|d| d.join("model.safetensors").is_file())
        .cloned()
        .ok_or(candidates)
}

/// Loads the model in `dir`; when `dir` is `None`, the shipped trained checkpoint (see
/// [`find_shipped_model`]) if it is there, else the base model (fetched into the models
/// folder the first time), with a warning naming where the shipped one was looked for.
pub fn load_model(dir: Option<&Path>) -> Result<Embedder, EncoderError> {
    load_model_with(dir, Precision::F32)
}

/// [`load_model`] with the dense layers at `precision` (`Int8`: quantized once, here).
pub fn load_model_with(dir: Option<&Path>, precision: Precision) -> Result<Embedder, EncoderError> {
    match dir {
        Some(d) => Embedder::load_with(d, precision),
        None => match find_shipped_model() {
            Ok(shipped) => Embedder::load_with(shipped, precision),
            Err(looked) => {
                tracing::warn!(
                    "the shipped checkpoint {SHIPPED_MODEL} is in none of {looked:?}; loading \
                     the base model {} instead (no sub-encoders such as b50, b25)",
                    DEFAULT_MODEL.name
                );
                Embedder::load_with(Fetcher::default().ensure(&DEFAULT_MODEL)?, precision)
            }
        },
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
