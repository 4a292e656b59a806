//! Collections: `PUT/GET/DELETE /collections/{name}`, `GET /collections`,
//! `POST/DELETE /collections/{name}/documents` and `POST /collections/{name}/search`.
//!
//! A document is embedded once with the collection's profile; every stored size is a prefix of
//! that one vector. Store calls run on the blocking pool.

use std::collections::HashSet;

use actix_web::{web, HttpResponse};
use serde_json::{json, Map, Value};

use super::{body, opt_str, opt_usize, parse_object, AppState};
use crate::documents::Document;
use crate::error::ApiError;
use crate::store::{caller_id, check_name, CollectionSpec, Distance, Layout, VectorQuery};

/// Runs a store call off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

fn usize_list(o: &Map<String, Value>, field: &str) -> Result<Vec<usize>, ApiError> {
    let bad = || {
        ApiError::field(
            field,
            format!("{field} must be a non-empty array of positive integers"),
        )
    };
    let items = o.get(field).and_then(Value::as_array).ok_or_else(bad)?;
    let mut out: Vec<usize> = items
        .iter()
        .map(|v| {
            v.as_u64()
                .filter(|&d| d > 0)
                .map(|d| d as usize)
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err(bad());
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

async fn collection_info(
    state: &AppState,
    name: &str,
) -> Result<crate::store::CollectionInfo, ApiError> {
    let store = state.store.clone();
    let n = name.to_string();
    blocking(move || store.info(&n)).await
}

/// The large-collection options of a create body (`Layout`'s fields at its top level), each
/// parsed on its own so that an error names the option.
fn layout(o: &Map<String, Value>) -> Result<Layout, ApiError> {
    let mut set = Map::new();
    for key in Layout::OPTIONS {
        if let Some(v) = o.get(key).filter(|v| !v.is_null()) {
            let one = Value::Object(Map::from_iter([(key.to_string(), v.clone())]));
            serde_json::from_value::<Layout>(one)
                .map_err(|e| ApiError::field(key, format!("{key}: {e}")))?;
            set.insert(key.to_string(), v.clone());
        }
    }
    serde_json::from_value(Value::Object(set)).map_err(|e| ApiError::Internal(e.to_string()))
}

pub async fn create(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    check_name(&name)?;
    let o = parse_object(&body(payload, state.config.max_body_bytes).await?)?;
    let dims = usize_list(&o, "dims")?;
    let profile_name = opt_str(&o, "profile")?.unwrap_or("full").to_string();
    let profile = state.profile(Some(&profile_name), "profile")?;
    for &d in &dims {
        state.check_dim(d, &profile, "dims")?;
    }
    let distance = match opt_str(&o, "distance")?
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("cosine") => Distance::Cosine,
        Some("dot") => Distance::Dot,
        Some("euclid") => Distance::Euclid,
        Some(other) => {
            return Err(ApiError::field(
                "distance",
                format!("distance must be cosine, dot or euclid, got {other:?}"),
            ))
        }
    };
    let spec = CollectionSpec {
        dims,
        profile: profile_name,
        model: state.model_name.clone(),
        distance,
        layout: layout(&o)?,
    };
    let store = state.store.clone();
    let (n, s) = (name.clone(), spec.clone());
    let created = blocking(move || store.create(&n, &s)).await?;
    let mut body = json!({"name": name, "dims": spec.dims, "profile": spec.profile,
                      "model": spec.model, "distance": spec.distance, "created": created});
    if !spec.layout.is_default() {
        body["layout"] = json!(spec.layout);
    }
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let all = blocking(move || store.list()).await?;
    Ok(HttpResponse::Ok().json(json!({ "collections": all })))
}

pub async fn info(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let info = blocking(move || store.info(&name)).await?;
    Ok(HttpResponse::Ok().json(info))
}

pub async fn delete(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.clone();
    let n = name.into_inner();
    let shown = n.clone();
    blocking(move || store.delete(&n)).await?;
    Ok(HttpResponse::Ok().json(json!({"name": shown, "deleted": true})))
}

pub async fn add_documents(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let info = collection_info(&state, &name).await?;
    let o = parse_object(&body(payload, state.config.max_body_bytes).await?)?;
    let docs = o
        .get("documents")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::field("documents", "documents must be a non-empty array"))?;
    if docs.len() > state.config.max_inputs {
        return Err(ApiError::field(
            "documents",
            format!(
                "{} documents; the limit is {} per request",
                docs.len(),
                state.config.max_inputs
            ),
        ));
    }
    let mut parsed = Vec::with_capacity(docs.len());
    let mut seen = HashSet::new();
    for (i, d) in docs.iter().enumerate() {
        let field = |k: &str| format!("documents[{i}].{k}");
        let doc = Document::from_json(d).map_err(|e| {
            let f = if e.field == "document" {
                format!("documents[{i}]")
            } else {
                field(e.field)
            };
            ApiError::field(&f, format!("{f}: {}", e.message))
        })?;
        let id = doc.id.clone();
        if !seen.insert(id.clone()) {
            return Err(ApiError::field(
                &field("id"),
                format!("id {id:?} appears twice in this request"),
            ));
        }
        parsed.push(doc);
    }
    let profile = state.profile(Some(&info.spec.profile), "profile")?;
    let texts: Vec<String> = parsed.iter().map(|d| d.text.clone()).collect();
    let (vectors, tokens) = state.run(texts, profile, "documents").await?;
    let ids: Vec<String> = parsed.iter().map(|d| d.id.clone()).collect();
    let stored = parsed
        .into_iter()
        .zip(vectors)
        .map(|(d, v)| d.into_stored(&v, &info.spec.dims))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let store = state.store.clone();
    blocking(move || store.upsert(&name, stored)).await?;
    Ok(HttpResponse::Ok().json(json!({"ids": ids, "usage": {"tokens": tokens}})))
}

pub async fn delete_documents(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let o = parse_object(&body(payload, state.config.max_body_bytes).await?)?;
    let ids = o
        .get("ids")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::field("ids", "ids must be a non-empty array"))?
        .iter()
        .map(|v| {
            caller_id(v)
                .ok_or_else(|| ApiError::field("ids", "ids must be non-empty strings or numbers"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let store = state.store.clone();
    let n = ids.len();
    blocking(move || store.delete_documents(&name, &ids)).await?;
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}

/// The most candidates a funnel's prefetch may ask for: each is scored and held in memory.
const MAX_CANDIDATES: usize = 100_000;

/// A query vector as sent: every value a number that is finite as f32 (what the store
/// computes in). Any finite magnitude is fine: the vector is re-normalised before it is used.
fn query_vector(items: &[Value]) -> Result<Vec<f32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    ApiError::field(
                        &format!("vector[{i}]"),
                        format!(
                            "vector[{i}] must be a number within float32's range (±3.4e38), got {x}"
                        ),
                    )
                })
        })
        .collect()
}

pub async fn search(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let info = collection_info(&state, &name).await?;
    let o = parse_object(&body(payload, state.config.max_body_bytes).await?)?;
    let dims = &info.spec.dims;
    let dim = opt_usize(&o, "dim")?
        .unwrap_or(*dims.last().expect("collections have dims; this is a bug"));
    if !dims.contains(&dim) {
        return Err(ApiError::field(
            "dim",
            format!("dim {dim} is not stored in {name:?}; stored: {dims:?}"),
        ));
    }
    let limit = opt_usize(&o, "limit")?.unwrap_or(10);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::field("limit", "limit must be in 1..=1000"));
    }
    let funnel = match o.get("funnel") {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => {
            let fdim = opt_usize(f, "dim")?
                .ok_or_else(|| ApiError::field("funnel.dim", "funnel.dim is required"))?;
            if !dims.contains(&fdim) || fdim >= dim {
                return Err(ApiError::field(
                    "funnel.dim",
                    format!("funnel.dim must be a stored size below dim {dim}; stored: {dims:?}"),
                ));
            }
            let candidates = opt_usize(f, "candidates")?.unwrap_or(limit * 10);
            if !(limit..=MAX_CANDIDATES).contains(&candidates) {
                return Err(ApiError::field(
                    "funnel.candidates",
                    format!(
                        "funnel.candidates must be in limit..={MAX_CANDIDATES} (limit is {limit})"
                    ),
                ));
            }
            Some((fdim, candidates))
        }
        Some(_) => {
            return Err(ApiError::field(
                "funnel",
                "funnel must be an object {dim, candidates}",
            ))
        }
    };
    // The full query vector: embedded text, or one given at `dim`.
    let full: Vec<f32> = match (o.get("query"), o.get("vector")) {
        (Some(Value::String(q)), None) if !q.trim().is_empty() => {
            let profile_name = opt_str(&o, "profile")?
                .unwrap_or(&info.spec.profile)
                .to_string();
            let profile = state.profile(Some(&profile_name), "profile")?;
            state
                .embedder
                .check_aligned(&profile_name, &info.spec.profile)
                .map_err(|e| ApiError::from_encoder(e, "dim", "profile"))?;
            let width = state.embedder.model().output_width(&profile);
            if width < dim {
                return Err(ApiError::field(
                    "profile",
                    format!("profile {profile_name:?} is {width} wide, below dim {dim}"),
                ));
            }
            let (mut v, _) = state.run(vec![q.clone()], profile, "query").await?;
            v.pop().unwrap_or_default()
        }
        (None, Some(Value::Array(items))) => {
            let v = query_vector(items)?;
            if v.len() != dim {
                return Err(ApiError::field(
                    "vector",
                    format!("vector has {} values; dim is {dim}", v.len()),
                ));
            }
            v
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::field("query", "give query or vector, not both"))
        }
        (Some(_), None) => {
            return Err(ApiError::field("query", "query must be a non-empty string"))
        }
        _ => {
            return Err(ApiError::field(
                "query",
                "query (text) or vector is required",
            ))
        }
    };
    // Every size the query searches needs a direction to rank by: a zero prefix has none.
    for d in std::iter::once(dim).chain(funnel.map(|(fdim, _)| fdim)) {
        if full[..d].iter().all(|&x| x == 0.0) {
            return Err(ApiError::field(
                "vector",
                format!("the query's first {d} values are all zero (as float32)"),
            ));
        }
    }
    let exact = super::opt_bool(&o, "exact")?.unwrap_or(false);
    let mut query = VectorQuery::nested(&full, dim, limit, funnel)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    query.filter = o.get("filter").filter(|f| !f.is_null()).cloned();
    query.exact = exact;
    let store = state.store.clone();
    let hits = blocking(move || store.search(&name, &query)).await?;
    Ok(HttpResponse::Ok().json(json!({ "hits": hits })))
}
