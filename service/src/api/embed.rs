//! `POST /embed`: `{inputs, dim?, profile?, normalize?}` → `{model, profile, dim, embeddings,
//! usage}`.

use actix_web::{web, HttpResponse};
use mrl_encoder::head;
use serde_json::json;

use super::{body, opt_bool, opt_str, opt_usize, parse_object, texts, AppState};
use crate::error::ApiError;

pub async fn embed(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let raw = body(payload, state.config.max_body_bytes).await?;
    let o = parse_object(&raw)?;
    let inputs = texts(&o, "inputs", state.config.max_inputs)?;
    let profile_name = opt_str(&o, "profile")?;
    let profile = state.profile(profile_name, "profile")?;
    let dim = opt_usize(&o, "dim")?.unwrap_or(state.embedder.model().output_width(&profile));
    state.check_dim(dim, &profile, "dim")?;
    let normalize = opt_bool(&o, "normalize")?.unwrap_or(true);
    let (vectors, tokens) = state.run(inputs, profile, "inputs").await?;
    let embeddings = vectors
        .iter()
        .map(|v| head::nest(v, dim, normalize))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::from_encoder(e, "dim", "profile"))?;
    Ok(HttpResponse::Ok().json(json!({
        "model": state.model_name,
        "profile": profile_name.unwrap_or("full"),
        "dim": dim,
        "embeddings": embeddings,
        "usage": {"tokens": tokens},
    })))
}
