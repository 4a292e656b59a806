//! HTTP routes: request parsing with errors that name the field, and the handlers.
//!
//! Bodies are read as bytes under the size limit and parsed by hand rather than through a
//! derived extractor, so every bad field is reported by its own name.

pub mod collections;
pub mod embed;
pub mod openai;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use mrl_encoder::{head, Embedder, Profile};
use serde_json::{Map, Value};

use crate::batcher::Batcher;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::VectorStore;

/// What every handler shares.
pub struct AppState {
    pub embedder: Arc<Embedder>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn VectorStore>,
    pub config: ServeConfig,
    /// The model's name in responses: its folder name.
    pub model_name: String,
}

impl AppState {
    /// Resolves a profile name or spec; `field` names it in errors.
    pub fn profile(&self, spec: Option<&str>, field: &str) -> Result<Profile, ApiError> {
        self.embedder
            .profile(spec)
            .map_err(|e| ApiError::from_encoder(e, "dim", field))
    }

    /// Checks `dim` against the profile width and, unless any prefix is allowed, against the
    /// checkpoint's trained (nested) dims.
    pub fn check_dim(&self, dim: usize, profile: &Profile, field: &str) -> Result<(), ApiError> {
        let width = self.embedder.model().output_width(profile);
        head::check_dim(dim, width).map_err(|e| ApiError::field(field, e.to_string()))?;
        let allowed = self.embedder.nested_dims();
        if !self.config.allow_any_dim && !allowed.contains(&dim) {
            return Err(ApiError::field(
                field,
                format!(
                    "dim {dim} is not one this checkpoint was trained for; allowed: {allowed:?} \
                     (the server's --allow-any-dim accepts any prefix up to {width})",
                ),
            ));
        }
        Ok(())
    }

    /// Tokenizes on the blocking pool (not the async executor), applying the input limits,
    /// then embeds through the model thread. Returns raw pooled vectors and the token count.
    pub async fn run(
        &self,
        texts: Vec<String>,
        profile: Profile,
        field: &str,
    ) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
        let embedder = self.embedder.clone();
        let encoded = web::block(move || embedder.tokenizer().encode_checked(&texts))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !self.config.truncate {
            if let Some(i) = encoded.iter().position(|(_, cut)| *cut) {
                return Err(ApiError::InputTooLong {
                    field: format!("{field}[{i}]"),
                    message: format!(
                        "{field}[{i}] is longer than the model's {} tokens (the server rejects \
                         instead of truncating)",
                        self.embedder.tokenizer().max_len()
                    ),
                });
            }
        }
        let tokens: Vec<Vec<u32>> = encoded.into_iter().map(|(ids, _)| ids).collect();
        let count = tokens.iter().map(Vec::len).sum();
        let vectors = self.batcher.embed(profile, tokens).await?;
        Ok((vectors, count))
    }
}

/// The body as a JSON object, or the error that says why not.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::MalformedJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::MalformedJson(e.to_string())),
    }
}

/// A string or a non-empty array of strings, each non-empty, at most `max` of them.
pub fn texts(o: &Map<String, Value>, field: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let bad = |m: String| ApiError::field(field, m);
    let texts = match o.get(field) {
        None | Some(Value::Null) => return Err(bad(format!("{field} is required"))),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::field(
                    &format!("{field}[{i}]"),
                    format!("{field}[{i}] must be a string, got {}", type_name(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(bad(format!(
                "{field} must be a string or an array of strings, got {}",
                type_name(other)
            )))
        }
    };
    if texts.is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    if texts.len() > max {
        return Err(bad(format!(
            "{field} has {} texts; the limit is {max} per request",
            texts.len()
        )));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(ApiError::field(
            &format!("{field}[{i}]"),
            format!("{field}[{i}] is empty"),
        ));
    }
    Ok(texts)
}

pub fn opt_usize(o: &Map<String, Value>, field: &str) -> Result<Option<usize>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().map(|v| v as usize)),
        Some(other) => Err(ApiError::field(
            field,
            format!("{field} must be a positive integer, got {other}"),
        )),
    }
}

pub fn opt_str<'a>(o: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::field(
            field,
            format!("{field} must be a string, got {}", type_name(other)),
        )),
    }
}

pub fn opt_bool(o: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::field(
            field,
            format!("{field} must be true or false, got {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "status": "ok",
        "model": state.model_name,
        "profiles": state.embedder.profile_names(),
        "dims": state.embedder.nested_dims(),
        // Query profile → document profiles it may search besides its own.
        "aligned_with": state.embedder.manifest().map(|m| {
            m.profiles
                .iter()
                .filter(|p| !p.aligned_with.is_empty())
                .map(|p| (p.name.clone(), p.aligned_with.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        }).unwrap_or_default(),
    }))
}

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

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(openapi_document())
}

/// The OpenAPI description of the routes, written by hand to match the handlers.
pub fn openapi_document() -> Value {
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let openai_error = serde_json::json!({"$ref": "#/components/schemas/OpenAiError"});
    let errors = |codes: &[&str], schema: &Value| -> Value {
        codes
            .iter()
            .map(|c| (c.to_string(), serde_json::json!({"description": "error", "content": {"application/json": {"schema": schema.clone()}}})))
            .collect::<Map<String, Value>>()
            .into()
    };
    let mut embed_responses = errors(&["400", "401", "413", "429", "500"], &error);
    embed_responses["200"] = serde_json::json!({"description": "embeddings", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbedResponse"}}}});
    let mut openai_responses = errors(&["400", "401", "413", "429", "500"], &openai_error);
    openai_responses["200"] = serde_json::json!({"description": "OpenAI embedding list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiResponse"}}}});
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "mrl", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Elastic, Matryoshka-style text embeddings"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "type": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
                    "required": ["type", "message"]}}},
                "OpenAiError": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": "string", "nullable": true}, "code": {"type": "string", "nullable": true}},
                    "required": ["message", "type", "param", "code"]}}},
                "EmbedRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "inputs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "dim": {"type": "integer"}, "profile": {"type": "string"}, "normalize": {"type": "boolean"}}},
                "EmbedResponse": {"type": "object", "properties": {
                    "model": {"type": "string"}, "profile": {"type": "string"}, "dim": {"type": "integer"},
                    "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    "usage": {"type": "object", "properties": {"tokens": {"type": "integer"}}}}},
                "OpenAiRequest": {"type": "object", "required": ["input"], "properties": {
                    "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "model": {"type": "string", "description": "ignored, except a \":profile\" suffix"},
                    "dimensions": {"type": "integer"},
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "user": {"type": "string"}}},
                "OpenAiResponse": {"type": "object", "properties": {
                    "object": {"type": "string"}, "model": {"type": "string"},
                    "data": {"type": "array", "items": {"type": "object", "properties": {
                        "object": {"type": "string"}, "index": {"type": "integer"},
                        "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}}}},
                    "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"security": [], "responses": {"200": {"description": "the server is up"}}}},
            "/metrics": {"get": {"responses": {"200": {"description": "Prometheus text format"}}}},
            "/openapi.json": {"get": {"responses": {"200": {"description": "this document"}}}},
            "/embed": {"post": {"requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbedRequest"}}}},
                                 "responses": embed_responses}},
            "/v1/embeddings": {"post": {"requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAiRequest"}}}},
                                         "responses": openai_responses}}
        }
    })
}
