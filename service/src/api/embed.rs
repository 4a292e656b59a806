//! `POST /embed`: `{inputs, dim?, profile?, normalize?, prompt_name?, prompt?}` → `{model, profile, dim, embeddings,
//! usage}`.

use actix_web::{web, HttpResponse};
use mrl_core::{EmbedSpec, Fields};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{body, parse, AppState, ErrorBody, FieldNames, Texts};
use crate::error::ApiError;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// One text or a list of texts (at most the server's `--max-inputs`).
    pub inputs: Texts,
    /// Output size, a prefix of the profile's vector (default: its full width).
    pub dim: Option<usize>,
    /// A profile name (`full`, `b50`, …) or spec (`layers=3,heads=8`).
    pub profile: Option<String>,
    /// L2-normalise the cut prefix (default: as the model's `modules.json` says: true when
    /// it ends in a Normalize module, as the shipped models do).
    pub normalize: Option<bool>,
    /// One of the model's prompts by name (`config_sentence_transformers.json`), put before
    /// each input (default: the model's default prompt, if any); unknown names are a 400.
    pub prompt_name: Option<String>,
    /// A literal prompt put before each input, instead of a named one.
    pub prompt: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbedResponse {
    pub model: String,
    pub profile: String,
    pub dim: usize,
    /// One vector per input, in order.
    pub embeddings: Vec<Vec<f32>>,
    pub usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// Token ids the inputs took.
    pub tokens: usize,
}

/// Embeds texts at any profile and nested size.
#[utoipa::path(post, path = "/embed", tag = "embeddings", request_body = EmbedRequest,
    responses((status = 200, description = "embeddings", body = EmbedResponse),
              (status = 400, description = "malformed JSON or an invalid field", body = ErrorBody),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 413, description = "body or input too long", body = ErrorBody),
              (status = 429, description = "the model queue is full", body = ErrorBody),
              (status = 500, description = "internal error", body = ErrorBody)))]
pub async fn embed(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: EmbedRequest = parse(
        &body(payload, state.config.max_body_bytes).await?,
        FieldNames::Path,
    )?;
    let inputs = req.inputs.check("inputs")?;
    let spec = EmbedSpec {
        profile: req.profile,
        dim: req.dim,
        normalize: req.normalize,
        prompt_name: req.prompt_name,
        prompt: req.prompt,
    };
    let out = state
        .embeddings
        .embed(inputs, &spec, &Fields::NATIVE)
        .await?;
    Ok(HttpResponse::Ok().json(EmbedResponse {
        model: state.model_name.clone(),
        profile: out.profile,
        dim: out.dim,
        embeddings: out.vectors,
        usage: Usage { tokens: out.tokens },
    }))
}
