//! Assembles the app: shared state, the guard middleware (API key, metrics), the routes, and
//! the HTTP server bound to its address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, FromRequest, Handler, HttpServer, Responder, Route};
use mrl_core::store::{StoreError, VectorStore};
use mrl_core::{Collections, Embeddings, QueueLimits};
use mrl_encoder::Embedder;

use crate::api::{self, collections, AppState};
use crate::config::ServeConfig;
use crate::error::ApiError;

/// A bound server: await `server` to run it; `addr` is where it listens.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Server,
}

/// Every route: method, path pattern and handler. The app registers exactly these, and the
/// OpenAPI document is checked against them (`tests/service.rs`).
pub fn routes() -> Vec<(Method, &'static str, Route)> {
    use Method as M;
    vec![
        at(M::GET, "/health", api::health),
        at(M::GET, "/metrics", api::metrics),
        at(M::GET, "/openapi.json", crate::openapi::serve),
        at(M::POST, "/embed", api::embed::embed),
        at(M::POST, "/v1/embeddings", api::openai::embeddings),
        at(M::GET, "/collections", collections::list),
        at(M::PUT, "/collections/{name}", collections::create),
        at(M::GET, "/collections/{name}", collections::info),
        at(M::DELETE, "/collections/{name}", collections::delete),
        at(
            M::POST,
            "/collections/{name}/documents",
            collections::add_documents,
        ),
        at(
            M::DELETE,
            "/collections/{name}/documents",
            collections::delete_documents,
        ),
        at(M::POST, "/collections/{name}/search", collections::search),
    ]
}

fn at<F, Args>(method: Method, path: &'static str, handler: F) -> (Method, &'static str, Route)
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    (method.clone(), path, web::method(method).to(handler))
}

/// Starts the model thread and binds the HTTP server. Call it inside an actix system
/// (`actix_web::rt::System`), which then runs the returned server.
pub fn start(embedder: Embedder, config: ServeConfig) -> std::io::Result<Running> {
    let metrics = crate::metrics::handle().map_err(std::io::Error::other)?;
    let embeddings = Arc::new(Embeddings::with_model_thread(
        Arc::new(embedder),
        config.policy(),
        config.max_batch_tokens,
        QueueLimits {
            requests: config.queue_capacity,
            tokens: config.max_queued_tokens,
        },
    )?);
    let model_name = embeddings.model_name();
    let store = mrl_core::store::open(
        &config.data_dir,
        config.qdrant_url.as_deref(),
        config.qdrant_api_key.clone(),
    )
    .map_err(std::io::Error::other)?;
    let (host, port, workers) = (config.host.clone(), config.port, config.workers);
    let store_up = probe(store.clone())?;
    let collections = Collections::new(store, embeddings.clone());
    let resuming = collections.clone();
    // Off the start path: a Qdrant server may be slow to list, or not up yet (then this
    // waits for it), and nothing waits for this.
    std::thread::Builder::new()
        .name("mrl-resume".into())
        .spawn(move || loop {
            match resuming.resume_adapting() {
                Err(mrl_core::Error::Store(StoreError::Unavailable(e))) => {
                    tracing::warn!("resuming adaptive collections waits for the store: {e}");
                    std::thread::sleep(Duration::from_secs(5));
                }
                Err(e) => break tracing::warn!("resuming adaptive collections: {e}"),
                Ok(()) => break,
            }
        })?;
    let state = web::Data::new(AppState {
        collections,
        embeddings,
        metrics,
        config,
        model_name,
        store_up,
    });
    let server = HttpServer::new(move || {
        let mut app = App::new().app_data(state.clone()).wrap(from_fn(guard));
        for (_, path, route) in routes() {
            app = app.route(path, route);
        }
        app.default_service(web::to(api::not_found))
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
            crate::metrics::request("unauthorized", 401, start.elapsed().as_secs_f64());
            return Err(ApiError::Unauthorized.for_path(req.path()));
        }
    }
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    crate::metrics::request(&route, res.status().as_u16(), start.elapsed().as_secs_f64());
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

/// Whether the store answers, kept current: a Qdrant server is probed every 2 s by a thread
/// of its own (so `/health` never waits on it) and `mrl_store_up` follows; the embedded store
/// always answers.
fn probe(store: Arc<dyn VectorStore>) -> std::io::Result<Arc<AtomicBool>> {
    let embedded = store.kind() == "embedded";
    let up = Arc::new(AtomicBool::new(embedded));
    metrics::gauge!("mrl_store_up").set(if embedded { 1.0 } else { 0.0 });
    if embedded {
        return Ok(up);
    }
    let flag = up.clone();
    std::thread::Builder::new()
        .name("mrl-store-probe".into())
        .spawn(move || loop {
            let ok = store.health().is_ok();
            flag.store(ok, Ordering::Relaxed);
            metrics::gauge!("mrl_store_up").set(if ok { 1.0 } else { 0.0 });
            std::thread::sleep(Duration::from_secs(2));
        })?;
    Ok(up)
}
