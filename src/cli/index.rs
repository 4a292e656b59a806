//! `mrl index`: the resumable indexing job (mrl-core's `indexer`) from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mrl::{Embeddings, IndexBar, Policy};

use super::common::{bar, load, DimPolicyArg, ModelArg, QdrantArgs};

#[derive(Args)]
pub(crate) struct IndexArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Collection to fill (created if missing).
    #[arg(long)]
    pub(crate) collection: String,
    /// The JSONL file to index.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Sizes to store, for a new collection (default: the model's nested dims).
    #[arg(long, value_delimiter = ',')]
    pub(crate) dims: Vec<usize>,
    /// Profile that embeds the documents, for a new collection (default: full).
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Documents per upsert and per progress record.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch: usize,
    /// Stop at the first malformed line instead of reporting and skipping it.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Index only part I of N of the input (line k, counted from 0, belongs to part
    /// k mod N + 1), so N workers can fill one collection on a Qdrant server together;
    /// each part resumes on its own. On the embedded store, run the parts one after another.
    #[arg(long, value_name = "I/N")]
    pub(crate) part: Option<mrl_core::indexer::Part>,
    /// Folder of the embedded store (the same as `mrl serve --data-dir`; do not index into a
    /// folder a running server has open), and of the job's progress record.
    #[arg(long, env = "MRL_DATA_DIR", default_value = "data")]
    pub(crate) data_dir: PathBuf,
    #[command(flatten)]
    pub(crate) qdrant: QdrantArgs,
    /// Seconds to wait for the Qdrant server to answer before giving up (checked every
    /// second, each miss logged), so the job may start before its server.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) qdrant_wait: u64,
    /// Which sizes --dims may name, for a new collection.
    #[arg(long, value_enum, default_value_t = DimPolicyArg::of(Policy::LIBRARY.dims))]
    pub(crate) dim_policy: DimPolicyArg,
    /// Make a new collection adaptive: its sizes below the full width are re-nested onto its
    /// own documents' principal axes as it grows (the full width is stored too).
    #[arg(long)]
    pub(crate) adapt: bool,
    /// Documents an adaptive collection holds before its first fit.
    #[arg(long, value_name = "N", requires = "adapt")]
    pub(crate) adapt_threshold: Option<usize>,
    /// The model's prompt put before each document of a new collection, by name (default:
    /// `document`, `passage` or `corpus` if the model has one, else its default prompt).
    #[arg(long, value_name = "NAME")]
    pub(crate) document_prompt_name: Option<String>,
    /// The prompt a new collection puts before text queries, by name (default: `query` if
    /// the model has it, else its default prompt).
    #[arg(long, value_name = "NAME")]
    pub(crate) query_prompt_name: Option<String>,
}

pub(crate) fn run(args: IndexArgs) -> Result<()> {
    let policy = Policy {
        dims: args.dim_policy.into(),
        ..Policy::LIBRARY
    };
    let embeddings = Arc::new(Embeddings::inline(Arc::new(load(&args.model)?), policy));
    let store = mrl_core::store::open(
        &args.data_dir,
        args.qdrant.qdrant_url.as_deref(),
        args.qdrant.qdrant_api_key,
    )
    .context("opening the store")?;
    mrl_core::store::wait_until_available(
        store.as_ref(),
        std::time::Duration::from_secs(args.qdrant_wait),
    )
    .context("waiting for the store")?;
    let opts = mrl_core::indexer::IndexOptions::new(args.data_dir.join("jobs"))
        .dims((!args.dims.is_empty()).then_some(args.dims))
        .profile(args.profile)
        .batch(args.batch)
        .strict(args.strict)
        .part(args.part)
        .adapt(args.adapt, args.adapt_threshold)
        .prompt_names(args.document_prompt_name, args.query_prompt_name);
    let progress = bar(&args.collection, 0);
    let collections = mrl_core::Collections::new(store, embeddings.clone());
    let s = mrl_core::indexer::index_file(
        &collections,
        &args.collection,
        &args.input,
        &opts,
        &IndexBar(&progress),
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
        embeddings.embedder().tokenizer().max_len(),
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
