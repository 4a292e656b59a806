//! Assembles the app: shared state, the guard middleware (API key, metrics), the routes, and
//! the HTTP server bound to its address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};
use mrl_encoder::Embedder;

use crate::api::{self, collections, AppState};
use crate::batcher::{Batcher, QueueLimits};
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// A bound server: await `server` to run it; `addr` is where it listens.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Server,
}

/// Starts the model thread and binds the HTTP server. Call it inside an actix system
/// (`actix_web::rt::System`), which then runs the returned server.
pub fn start(embedder: Embedder, config: ServeConfig) -> std::io::Result<Running> {
    let embedder = Arc::new(embedder);
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::spawn(
        embedder.clone(),
        config.max_batch_tokens,
        QueueLimits {
            requests: config.queue_capacity,
            tokens: config.max_queued_tokens,
        },
        metrics.clone(),
    )?;
    let model_name = embedder
        .dir()
        .file_name()
        .map_or_else(|| "mrl".into(), |n| n.to_string_lossy().into_owned());
    let store = crate::store::open(
        &config.data_dir,
        config.qdrant_url.as_deref(),
        config.qdrant_api_key.clone(),
    )
    .map_err(std::io::Error::other)?;
    let (host, port, workers) = (config.host.clone(), config.port, config.workers);
    let state = web::Data::new(AppState {
        embedder,
        batcher,
        metrics,
        store,
        config,
        model_name,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(guard))
            .route("/health", web::get().to(api::health))
            .route("/metrics", web::get().to(api::metrics))
            .route("/openapi.json", web::get().to(api::openapi))
            .route("/embed", web::post().to(api::embed::embed))
            .route("/v1/embeddings", web::post().to(api::openai::embeddings))
            .route("/collections", web::get().to(collections::list))
            .route("/collections/{name}", web::put().to(collections::create))
            .route("/collections/{name}", web::get().to(collections::info))
            .route("/collections/{name}", web::delete().to(collections::delete))
            .route(
                "/collections/{name}/documents",
                web::post().to(collections::add_documents),
            )
            .route(
                "/collections/{name}/documents",
                web::delete().to(collections::delete_documents),
            )
            .route(
                "/collections/{name}/search",
                web::post().to(collections::search),
            )
            .default_service(web::to(api::not_found))
    })
    .workers(workers)
    // A client that closes its connection is gone: its request future is dropped, so the
    // model thread can discard the request instead of embedding it for nobody (a half-closed
    // connection, a rarity among HTTP clients, counts as gone too).
    .h1_allow_half_closed(false)
    .bind((host.as_str(), port))?;
    let addr = server.addrs()[0];
    Ok(Running {
        addr,
        server: server.run(),
    })
}

/// Checks the API key (every route but `/health`) and records each request's route, status
/// and latency.
async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("the app always carries its state; this is a bug")
        .clone();
    let start = Instant::now();
    if let Some(key) = &state.config.api_key {
        if req.path() != "/health" && !bearer_matches(&req, key) {
            state
                .metrics
                .request("unauthorized", 401, start.elapsed().as_secs_f64());
            return Err(ApiError::Unauthorized.for_path(req.path()));
        }
    }
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    state
        .metrics
        .request(&route, res.status().as_u16(), start.elapsed().as_secs_f64());
    Ok(res)
}

/// Compares in time independent of where the first difference is.
fn bearer_matches(req: &ServiceRequest, key: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}
