//! `mrl serve`: the REST service on the embedded store or a Qdrant server. Every default is
//! `ServeConfig`'s, so the flags and the library's server config cannot drift apart.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load, DimPolicyArg, ModelArg, QdrantArgs};
use super::heap::spawn_heap_upkeep;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Folder of the embedded Qdrant store's collections.
    #[arg(long, env = "MRL_DATA_DIR", default_value_os_t = mrl_service::ServeConfig::default().data_dir)]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    pub(crate) qdrant: QdrantArgs,
    #[arg(long, env = "MRL_HOST", default_value_t = mrl_service::ServeConfig::default().host)]
    pub(crate) host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, env = "MRL_PORT", default_value_t = mrl_service::ServeConfig::default().port)]
    pub(crate) port: u16,
    /// Require "Authorization: Bearer KEY" on every route but /health.
    #[arg(long, env = "MRL_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Accept any prefix size, not only the checkpoint's nested dims (the same as
    /// `--dim-policy any`).
    #[arg(long, env = "MRL_ALLOW_ANY_DIM")]
    pub(crate) allow_any_dim: bool,
    /// Which sizes requests may ask for.
    #[arg(long, value_enum, default_value_t = DimPolicyArg::of(mrl::Policy::SERVER.dims))]
    pub(crate) dim_policy: DimPolicyArg,
    /// Tokens per model batch.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().max_batch_tokens)]
    pub(crate) max_batch_tokens: usize,
    /// Requests waiting for the model before new ones get 429.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().queue_capacity)]
    pub(crate) queue_capacity: usize,
    /// Token ids waiting for the model (summed over requests) before new requests get 429.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().max_queued_tokens)]
    pub(crate) max_queued_tokens: usize,
    /// Texts per request.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().max_inputs)]
    pub(crate) max_inputs: usize,
    /// Bytes per request body.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().max_body_bytes)]
    pub(crate) max_body_bytes: usize,
    /// Reject inputs longer than the model's token limit (413) instead of truncating them.
    #[arg(long)]
    pub(crate) reject_long_inputs: bool,
    /// HTTP worker threads.
    #[arg(long, default_value_t = mrl_service::ServeConfig::default().workers)]
    pub(crate) workers: usize,
}

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let embedder = load(&args.model)?;
    let config = mrl_service::ServeConfig::new()
        .data_dir(args.data_dir)
        .qdrant(args.qdrant.qdrant_url, args.qdrant.qdrant_api_key)
        .host(args.host)
        .port(args.port)
        .api_key(args.api_key)
        .allow_any_dim(args.allow_any_dim || args.dim_policy == DimPolicyArg::Any)
        .max_batch_tokens(args.max_batch_tokens)
        .queue_capacity(args.queue_capacity)
        .max_queued_tokens(args.max_queued_tokens)
        .max_inputs(args.max_inputs)
        .max_body_bytes(args.max_body_bytes)
        .truncate(!args.reject_long_inputs)
        .workers(args.workers);
    actix_web::rt::System::new().block_on(async move {
        let running = mrl_service::start(embedder, config).context("starting the server")?;
        spawn_heap_upkeep().context("starting the heap upkeep thread")?;
        // Tests and scripts read this line to learn the port.
        println!("listening on http://{}", running.addr);
        std::io::stdout().flush()?;
        running.server.await.context("running the server")
    })
}
