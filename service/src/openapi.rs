//! The OpenAPI document, generated (utoipa) from the handlers' annotations and the request
//! and response types they parse and send; `server::routes` registers the same handlers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use actix_web::HttpResponse;

use crate::api::{self, collections, embed, openai, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(title = "mrl", description = "Elastic, Matryoshka-style text embeddings"),
    paths(
        api::health,
        api::metrics,
        serve,
        embed::embed,
        openai::embeddings,
        collections::list,
        collections::create,
        collections::info,
        collections::delete,
        collections::add_documents,
        collections::delete_documents,
        collections::search,
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Every route but `/health` takes `Authorization: Bearer KEY` when the server has a key.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document of every route, as `GET /openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

// Served from here, not from `api`, so that the document depends on the handlers it
// describes and not the other way round (no import circle).
/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", operation_id = "openapi",
    responses((status = 200, description = "the OpenAPI document of every route", body = Object),
              (status = 401, description = "missing or wrong API key", body = ErrorBody)))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
