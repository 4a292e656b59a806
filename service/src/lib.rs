//! mrl-service: the REST service. A request is validated (`api`), tokenized on the blocking
//! pool, queued to the one model thread (`batcher`), which batches queued requests by token
//! budget and profile, and answered in the native or the OpenAI shape; `metrics` counts it all.
//! `indexer` is the batch job that fills a collection from a JSONL file without the server.

pub mod api;
pub mod batcher;
pub mod config;
pub mod documents;
pub mod error;
pub mod indexer;
pub mod metrics;
mod server;
pub mod store;

pub use config::ServeConfig;
pub use error::ApiError;
pub use server::{start, Running};
