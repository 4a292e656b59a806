//! `POST /v1/embeddings`, the OpenAI embeddings API: `{input, model, dimensions?,
//! encoding_format?, user?}` → `{object: "list", data: [{object, index, embedding}], model,
//! usage}`. `model` is echoed but not used to pick a model; a `:profile` suffix
//! (`all-MiniLM-L6-v2:b50`) picks the sub-encoder, since OpenAI clients have no other field.

use actix_web::{web, HttpResponse};
use base64::Engine;
use mrl_encoder::head;
use serde_json::{json, Value};

use super::{body, opt_str, opt_usize, parse_object, texts, AppState};
use crate::error::{ApiError, OpenAiError};

/// The handler: every error in OpenAI's shape.
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
    let raw = body(payload, state.config.max_body_bytes).await?;
    let o = parse_object(&raw)?;
    if let Some(Value::Array(items)) = o.get("input") {
        if items.iter().any(|v| v.is_number() || v.is_array()) {
            return Err(ApiError::field(
                "input",
                "token-id inputs are not supported; send text",
            ));
        }
    }
    let input = texts(&o, "input", state.config.max_inputs)?;
    let model = opt_str(&o, "model")?
        .unwrap_or(&state.model_name)
        .to_string();
    let profile_name = model.rsplit_once(':').map(|(_, p)| p);
    let profile = state.profile(profile_name, "model")?;
    let dim = opt_usize(&o, "dimensions")?.unwrap_or(state.embedder.model().output_width(&profile));
    state.check_dim(dim, &profile, "dimensions")?;
    let base64 = match opt_str(&o, "encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", got {other:?}"),
            ))
        }
    };
    opt_str(&o, "user")?;
    let (vectors, tokens) = state.run(input, profile, "input").await?;
    let mut data = Vec::with_capacity(vectors.len());
    for (index, v) in vectors.iter().enumerate() {
        let v = head::nest(v, dim, true)
            .map_err(|e| ApiError::from_encoder(e, "dimensions", "model"))?;
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(v)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
