//! mrl-service: the REST service, HTTP only. Requests are parsed into typed bodies (`api`),
//! handed to mrl-core (`Embeddings` on its model thread, `Collections`), and answered in the
//! native or the OpenAI shape (`error`, the one mapping to HTTP); `openapi` is generated from
//! the same types, `metrics` renders the core's and the guard's series for Prometheus.

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
mod server;

pub use config::ServeConfig;
pub use error::ApiError;
pub use server::{routes, start, Running};
