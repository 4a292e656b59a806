//! HTTP routes: typed request bodies whose errors name the field, thin handlers over
//! mrl-core, and the routes every transport-level tool reads (`/health`, `/metrics`,
//! `/openapi.json`).
//!
//! A body is read as bytes under the size limit, checked to be a JSON object, then
//! deserialized into its request type through `serde_path_to_error`, so a bad field is reported
//! by its path (`inputs[1]`, `funnel.dim`). The rules beyond types live in mrl-core.

pub mod collections;
pub mod embed;
pub mod openai;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use mrl_core::{Collections, Embeddings};
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::ServeConfig;
use crate::error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub embeddings: Arc<Embeddings>,
    pub collections: Collections,
    pub metrics: PrometheusHandle,
    pub config: ServeConfig,
    /// The model's name in responses: its folder name.
    pub model_name: String,
    /// Whether the vector store answered its last probe (`server::probe`).
    pub store_up: Arc<std::sync::atomic::AtomicBool>,
}

/// How a route names its fields in errors: by their full path (`inputs[1]`), or by the
/// top-level key alone (a collection's create body, whose options are named as options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldNames {
    Path,
    TopLevel,
}

/// Parses a body into `T`: malformed JSON (not UTF-8, not JSON, not an object) is
/// `MalformedJson`; a field of the wrong type or a missing one is `InvalidField` naming it.
pub fn parse<T: DeserializeOwned>(body: &[u8], names: FieldNames) -> Result<T, ApiError> {
    let value = parse_object(body)?;
    from_value(value, names)
}

/// The body as a JSON object, or the error that says why not.
pub fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::MalformedJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// Deserializes an object into `T`, naming the field of the first error.
pub fn from_value<T: DeserializeOwned>(value: Value, names: FieldNames) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde reports a missing or unknown field at the object holding it; name the field
        // itself.
        let missing = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|m| m.split('`').next());
        let mut field = match (path.as_str(), missing) {
            (".", Some(m)) => m.to_string(),
            (p, Some(m)) if p == m || p.ends_with(&format!(".{m}")) => p.to_string(),
            (p, Some(m)) => format!("{p}.{m}"),
            (p, None) => p.to_string(),
        };
        if names == FieldNames::TopLevel {
            let end = field.find(['.', '[']).unwrap_or(field.len());
            field.truncate(end);
        }
        ApiError::field(&field, format!("{field}: {message}"))
    })
}

/// One text or a list of texts, as the embedding routes take them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Texts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Texts, E> {
                Ok(Texts::One(s.to_string()))
            }
            // Element by element, so an error is located at its index (`inputs[1]`).
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Texts::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Texts {
    /// The texts, checked: at least one, none blank; `field` names them. How many one request
    /// may bring is the core's policy (`Policy::max_inputs`).
    pub fn check(self, field: &str) -> Result<Vec<String>, ApiError> {
        let texts = match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        };
        if texts.is_empty() {
            return Err(ApiError::field(field, format!("{field} must not be empty")));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(ApiError::field(
                &format!("{field}[{i}]"),
                format!("{field}[{i}] is empty"),
            ));
        }
        Ok(texts)
    }
}

/// The native error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request`, `malformed_json`, `payload_too_large`, `input_too_long`,
    /// `unauthorized`, `not_found`, `conflict`, `overloaded`, `internal` or `unavailable`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The offending field's path, for `invalid_request` and `input_too_long`.
    pub field: Option<String>,
}

/// Runs a blocking core call (a store operation) on the blocking pool (mrl-core's
/// `collection::blocking`), its error in the service's terms.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, mrl_core::Error> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(mrl_core::collection::blocking(f).await?)
}

/// Reads the body up to the configured limit.
pub async fn body(payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::MalformedJson(format!(
            "cannot read the body: {e}"
        ))),
        Err(_) => Err(ApiError::PayloadTooLarge { limit }),
    }
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub model: String,
    /// Profiles by name: `full`, then the manifest's.
    pub profiles: Vec<String>,
    /// The checkpoint's nested dims.
    pub dims: Vec<usize>,
    /// Query profile → document profiles it may search besides its own.
    pub aligned_with: std::collections::BTreeMap<String, Vec<String>>,
    pub store: StoreStatus,
}

/// The vector store as `/health` sees it.
#[derive(Serialize, ToSchema)]
pub struct StoreStatus {
    /// `embedded` or `qdrant`.
    pub kind: String,
    /// Whether it answered its last probe (every 2 s for a Qdrant server): while it does
    /// not, the collection routes answer 503 with `Retry-After`, and the server keeps
    /// running until it does.
    pub available: bool,
}

/// The server is up; never needs the API key.
#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "the server is up", body = Health)))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let embedder = state.embeddings.embedder();
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        model: state.model_name.clone(),
        profiles: embedder.profile_names(),
        dims: embedder.nested_dims(),
        aligned_with: embedder
            .manifest()
            .map(|m| {
                m.profiles
                    .iter()
                    .filter(|p| !p.aligned_with.is_empty())
                    .map(|p| (p.name.clone(), p.aligned_with.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        store: StoreStatus {
            kind: state.collections.store().kind().into(),
            available: state.store_up.load(std::sync::atomic::Ordering::Relaxed),
        },
    })
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = 401, description = "missing or wrong API key", body = ErrorBody)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

pub async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    Err(
        ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()))
            .for_path(req.path()),
    )
}
