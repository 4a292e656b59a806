//! mrl-core: the transport-free layer between the encoder and every shell (the HTTP service,
//! the CLI, the library facade). It owns the rules, each in one place:
//! - `embeddings` — the one path text → tokens (truncation policy) → forward pass (on the
//!   model thread, `batcher`, or inline) → prefix + renormalise;
//! - `dims` — the one dim policy;
//! - `collection` — collections and their documents and searches, every rule checked once;
//! - `adapt` — the one cut of a full vector into stored and searched sizes, and adaptive
//!   collections' re-nesting onto their own documents;
//! - `documents` — the one reader of documents as callers send them;
//! - `store` — the vector stores (embedded qdrant-edge, a Qdrant server) behind one trait;
//! - `indexer` — the resumable three-stage job that fills a collection from a JSONL file;
//! - `error` — the core's errors, which each shell maps to its own form once;
//! - `panic` — panics of called code turned into errors.

pub mod adapt;
pub mod batcher;
pub mod collection;
pub mod collections;
pub mod dims;
pub mod documents;
pub mod embeddings;
pub mod error;
pub mod indexer;
pub mod panic;
pub mod store;

pub use adapt::SearchQuery;
pub use batcher::QueueLimits;
pub use collection::{Added, Collection, FunnelRequest, SearchRequest};
pub use collections::{Collections, CreateRequest};
pub use dims::DimPolicy;
pub use documents::{Document, DocumentError};
pub use embeddings::{EmbedSpec, Embedded, Embeddings, Policy, Resolved, Tokens};
pub use error::{Error, Fields, Result};
pub use store::{Hit, VectorStore};
