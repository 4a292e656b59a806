//! `POST /v1/embeddings`, the OpenAI embeddings API: `{input, model, dimensions?,
//! encoding_format?, user?}` → `{object: "list", data: [{object, index, embedding}], model,
//! usage}`. `model` is echoed but not used to pick a model; a `:profile` suffix
//! (`all-MiniLM-L6-v2:b50`) picks the sub-encoder, since OpenAI clients have no other field.

use actix_web::{web, HttpResponse};
use base64::Engine;
use mrl_core::{EmbedSpec, Fields};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{body, from_value, parse_object, AppState, FieldNames, Texts};
use crate::error::{ApiError, OpenAiError};

#[derive(Deserialize, ToSchema)]
pub struct OpenAiRequest {
    /// One text or a list of texts; token-id inputs are refused.
    pub input: Texts,
    /// Echoed; a `:profile` suffix picks the sub-encoder (`minilm-elastic:b50`).
    pub model: Option<String>,
    pub dimensions: Option<usize>,
    pub encoding_format: Option<EncodingFormat>,
    /// Accepted and ignored.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    /// Little-endian float32 bytes, base64.
    Base64,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiResponse {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<OpenAiEmbedding>,
    pub model: String,
    pub usage: OpenAiUsage,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiEmbedding {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// OpenAI's error body.
#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending field.
    pub param: Option<String>,
    /// The native error type (`invalid_api_key`, `rate_limit_exceeded` for 401 and 429).
    pub code: Option<String>,
}

/// The OpenAI embeddings API; every error in OpenAI's shape.
#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", request_body = OpenAiRequest,
    responses((status = 200, description = "OpenAI embedding list", body = OpenAiResponse),
              (status = 400, description = "malformed JSON or an invalid field", body = OpenAiErrorBody),
              (status = 401, description = "missing or wrong API key", body = OpenAiErrorBody),
              (status = 413, description = "body or input too long", body = OpenAiErrorBody),
              (status = 429, description = "the model queue is full", body = OpenAiErrorBody),
              (status = 500, description = "internal error", body = OpenAiErrorBody)))]
pub async fn embeddings(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, OpenAiError> {
    Ok(create(state, payload).await?)
}

async fn create(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let value = parse_object(&body(payload, state.config.max_body_bytes).await?)?;
    // OpenAI's API also takes token ids; say so rather than call them the wrong type.
    if let Some(Value::Array(items)) = value.get("input") {
        if items.iter().any(|v| v.is_number() || v.is_array()) {
            return Err(ApiError::field(
                "input",
                "token-id inputs are not supported; send text",
            ));
        }
    }
    let req: OpenAiRequest = from_value(value, FieldNames::Path)?;
    let input = req.input.check("input")?;
    let model = req.model.unwrap_or_else(|| state.model_name.clone());
    let spec = EmbedSpec {
        profile: model.rsplit_once(':').map(|(_, p)| p.to_string()),
        dim: req.dimensions,
        // OpenAI's embeddings are unit vectors.
        normalize: Some(true),
        ..EmbedSpec::default()
    };
    let out = state
        .embeddings
        .embed(input, &spec, &Fields::OPENAI)
        .await?;
    let base64 = req.encoding_format == Some(EncodingFormat::Base64);
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| OpenAiEmbedding {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(v)
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(OpenAiResponse {
        object: "list",
        data,
        model,
        usage: OpenAiUsage {
            prompt_tokens: out.tokens,
            total_tokens: out.tokens,
        },
    }))
}
