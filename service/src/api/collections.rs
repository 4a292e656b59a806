//! Collections: `PUT/GET/DELETE /collections/{name}`, `GET /collections`,
//! `POST/DELETE /collections/{name}/documents` and `POST /collections/{name}/search`.
//!
//! Handlers parse, make one call into mrl-core's `Collections` (whose rules answer for every
//! field; it awaits the model thread and runs store calls on the blocking pool) and
//! serialize what it answers.

use actix_web::{web, HttpResponse};
use mrl_core::store::{Adapt, CollectionInfo, CollectionPrompts, Distance, Hit, HnswSize, Layout};
use mrl_core::{CreateRequest, SearchRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{blocking, body, parse, AppState, ErrorBody, FieldNames};
use crate::error::ApiError;

/// `PUT /collections/{name}`: the sizes to store, the documents' profile, and (on a Qdrant
/// server) the large-collection layout options.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Sizes to store, each one named vector `d{dim}`.
    pub dims: Vec<usize>,
    /// The profile that embeds the documents (default `full`).
    pub profile: Option<String>,
    /// `cosine` (default), `dot` or `euclid`, any case.
    pub distance: Option<String>,
    pub shards: Option<u32>,
    pub replicas: Option<u32>,
    pub write_consistency: Option<u32>,
    pub on_disk: Option<bool>,
    pub quantize: Option<Vec<usize>>,
    pub hnsw: Option<Vec<HnswSize>>,
    /// Re-nest the sizes below the full width onto the collection's own documents' principal
    /// axes as it grows (no labels; full-width results unchanged); the full width is stored
    /// too.
    pub adapt: Option<bool>,
    /// Documents before an adaptive collection's first fit (at least 1; default 1000); it
    /// re-nests again whenever it has doubled since.
    pub adapt_threshold: Option<usize>,
    /// The model's prompt (`config_sentence_transformers.json`) put before each document, by
    /// name; default: the first of `document`, `passage`, `corpus` the model has, else its
    /// default prompt, else none (sentence-transformers' `encode_document`). Unknown names
    /// are a 400.
    pub document_prompt_name: Option<String>,
    /// A literal prompt put before each document, instead of a named one (`""`: none).
    pub document_prompt: Option<String>,
    /// The prompt put before each text query, by name; default: `query`, else the model's
    /// default prompt, else none (`encode_query`).
    pub query_prompt_name: Option<String>,
    /// A literal prompt put before each text query, instead of a named one (`""`: none).
    pub query_prompt: Option<String>,
}

impl CreateBody {
    fn into_request(self) -> Result<CreateRequest, ApiError> {
        let distance = match self.distance.map(|d| d.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("cosine") => Some(Distance::Cosine),
            Some("dot") => Some(Distance::Dot),
            Some("euclid") => Some(Distance::Euclid),
            Some(other) => {
                return Err(ApiError::field(
                    "distance",
                    format!("distance must be cosine, dot or euclid, got {other:?}"),
                ))
            }
        };
        Ok(CreateRequest {
            dims: Some(self.dims),
            profile: self.profile,
            distance,
            layout: Layout {
                shards: self.shards,
                replicas: self.replicas,
                write_consistency: self.write_consistency,
                on_disk: self.on_disk.unwrap_or(false),
                quantize: self.quantize.unwrap_or_default(),
                hnsw: self.hnsw.unwrap_or_default(),
            },
            adapt: self.adapt.unwrap_or(false),
            adapt_threshold: self.adapt_threshold,
            document_prompt_name: self.document_prompt_name,
            document_prompt: self.document_prompt,
            query_prompt_name: self.query_prompt_name,
            query_prompt: self.query_prompt,
        })
    }
}

/// What a create answers: the collection's spec and whether this call created it.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub name: String,
    pub dims: Vec<usize>,
    pub profile: String,
    pub model: String,
    pub distance: Distance,
    pub created: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapt: Option<Adapt>,
    /// The prompts the collection's documents and text queries get, resolved to their text.
    #[serde(flatten)]
    pub prompts: CollectionPrompts,
}

#[derive(Serialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    pub name: String,
    pub deleted: bool,
}

/// `POST /collections/{name}/documents`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDocuments {
    /// `{id?, text, payload?}` objects, or BEIR corpus lines `{_id, title, text, metadata}`.
    #[schema(value_type = Vec<DocumentBody>)]
    pub documents: Vec<Value>,
}

/// A document as sent (read by mrl-core's one document reader).
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct DocumentBody {
    /// A non-empty string or a number (default: the text's SHA-256, so re-sending replaces).
    #[schema(value_type = Option<String>)]
    id: Option<Value>,
    text: String,
    /// Joined before the text (`title + " " + text`) and kept in the payload.
    title: Option<String>,
    /// Keys must not start with `_`.
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Added {
    pub ids: Vec<String>,
    pub usage: super::embed::Usage,
}

/// `DELETE /collections/{name}/documents`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteDocuments {
    /// The callers' ids (strings or numbers).
    #[schema(value_type = Vec<String>)]
    pub ids: Vec<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct DocumentsDeleted {
    pub deleted: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Hits {
    pub hits: Vec<Hit>,
}

/// Creates a collection (the same spec again is a no-op, another one a 409).
#[utoipa::path(put, path = "/collections/{name}", tag = "collections", request_body = CreateBody,
    params(("name" = String, Path, description = "1 to 64 letters, digits, '-' or '_'")),
    responses((status = 201, description = "created", body = Created),
              (status = 200, description = "exists with this spec", body = Created),
              (status = 400, description = "an invalid field or option", body = ErrorBody),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 409, description = "exists with another spec", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = name.into_inner();
    let req = parse::<CreateBody>(
        &body(payload, state.config.max_body_bytes).await?,
        FieldNames::TopLevel,
    )?
    .into_request()?;
    let collections = state.collections.clone();
    let n = name.clone();
    let (spec, created) = blocking(move || collections.create(&n, &req)).await?;
    let answer = Created {
        name,
        dims: spec.dims,
        profile: spec.profile,
        model: spec.model,
        distance: spec.distance,
        created,
        layout: (!spec.layout.is_default()).then_some(spec.layout),
        adapt: spec.adapt,
        prompts: spec.prompts,
    };
    Ok(if created {
        HttpResponse::Created().json(answer)
    } else {
        HttpResponse::Ok().json(answer)
    })
}

/// Every collection with its spec and count.
#[utoipa::path(get, path = "/collections", tag = "collections",
    responses((status = 200, description = "collections", body = CollectionList),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let collections = state.collections.clone();
    let all = blocking(move || collections.list()).await?;
    Ok(HttpResponse::Ok().json(CollectionList { collections: all }))
}

/// One collection's spec and count; an adaptive one's rotation (version, when it was fitted,
/// on how many points) and a re-nest running now.
#[utoipa::path(get, path = "/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "the collection")),
    responses((status = 200, description = "the collection", body = CollectionInfo),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 404, description = "no such collection", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn info(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collections = state.collections.clone();
    let info = blocking(move || collections.open(&name)?.info()).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Deletes a collection and its documents.
#[utoipa::path(delete, path = "/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "the collection")),
    responses((status = 200, description = "deleted", body = Deleted),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 404, description = "no such collection", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let collections = state.collections.clone();
    let n = name.into_inner();
    let shown = n.clone();
    blocking(move || collections.delete(&n)).await?;
    Ok(HttpResponse::Ok().json(Deleted {
        name: shown,
        deleted: true,
    }))
}

/// Embeds each document once with the collection's profile and stores every size.
#[utoipa::path(post, path = "/collections/{name}/documents", tag = "collections",
    request_body = AddDocuments,
    params(("name" = String, Path, description = "the collection")),
    responses((status = 200, description = "stored (durable)", body = Added),
              (status = 400, description = "malformed JSON or an invalid field", body = ErrorBody),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 404, description = "no such collection", body = ErrorBody),
              (status = 413, description = "body or input too long", body = ErrorBody),
              (status = 429, description = "the model queue is full", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn add_documents(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: AddDocuments = parse(
        &body(payload, state.config.max_body_bytes).await?,
        FieldNames::Path,
    )?;
    let added = state
        .collections
        .add_documents(&name, &req.documents)
        .await?;
    Ok(HttpResponse::Ok().json(Added {
        ids: added.ids,
        usage: super::embed::Usage {
            tokens: added.tokens,
        },
    }))
}

/// Deletes documents by the callers' ids.
#[utoipa::path(delete, path = "/collections/{name}/documents", tag = "collections",
    request_body = DeleteDocuments,
    params(("name" = String, Path, description = "the collection")),
    responses((status = 200, description = "deleted (durable)", body = DocumentsDeleted),
              (status = 400, description = "malformed JSON or an invalid field", body = ErrorBody),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 404, description = "no such collection", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn delete_documents(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: DeleteDocuments = parse(
        &body(payload, state.config.max_body_bytes).await?,
        FieldNames::TopLevel,
    )?;
    let deleted = state.collections.delete_documents(&name, &req.ids).await?;
    Ok(HttpResponse::Ok().json(DocumentsDeleted { deleted }))
}

/// Nearest documents at a stored size, optionally through a funnel (prefetch + rescore).
#[utoipa::path(post, path = "/collections/{name}/search", tag = "collections",
    request_body = SearchRequest,
    params(("name" = String, Path, description = "the collection")),
    responses((status = 200, description = "hits, best first", body = Hits),
              (status = 400, description = "malformed JSON or an invalid field", body = ErrorBody),
              (status = 401, description = "missing or wrong API key", body = ErrorBody),
              (status = 404, description = "no such collection", body = ErrorBody),
              (status = 409, description = "the collection was redefined meanwhile", body = ErrorBody),
              (status = 429, description = "the model queue is full", body = ErrorBody),
              (status = 503, description = "the Qdrant server is unreachable", body = ErrorBody)))]
pub async fn search(
    state: web::Data<AppState>,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let req: SearchRequest = parse(
        &body(payload, state.config.max_body_bytes).await?,
        FieldNames::Path,
    )?;
    let hits = state.collections.search(&name, req).await?;
    Ok(HttpResponse::Ok().json(Hits { hits }))
}
