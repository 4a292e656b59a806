//! Retrieval for a RAG app with the `mrl` library alone (no server): index SciFact's corpus
//! into the embedded Qdrant store, then answer a few of its test queries with the passages a
//! generator would get, at two sizes and through a funnel.
//!
//! ```text
//! cargo run --release --example rag -- [BEIR_DIR] [DATA_DIR]
//! ```
//! Defaults: `data/scifact` of `$MRL_SHARED_DIR` (else `../shared`) and `./data-rag`. Indexing is the resumable batch job:
//! interrupt it and rerun to continue; a finished index is reused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use mrl::{Index, IndexConfig, SearchOptions};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let beir = args.next().map_or_else(
        || {
            std::env::var_os("MRL_SHARED_DIR")
                .map_or_else(|| PathBuf::from("../shared"), PathBuf::from)
                .join("data/scifact")
        },
        PathBuf::from,
    );
    anyhow::ensure!(
        beir.join("corpus.jsonl").is_file(),
        "no corpus.jsonl in {} (give BEIR_DIR, or set MRL_SHARED_DIR)",
        beir.display()
    );
    let data = PathBuf::from(args.next().unwrap_or_else(|| "data-rag".into()));

    let embedder = Arc::new(mrl::load_model(
        std::env::var_os("MRL_MODEL")
            .as_deref()
            .map(std::path::Path::new),
    )?);
    // Store the smallest and the largest size: 64 dims for a cheap first pass, the full
    // width to rescore.
    let full = embedder.max_dim();
    let index: Index = IndexConfig::new(&data, "scifact")
        .dims(vec![64, full])
        .open(embedder)?;
    let progress = indicatif::ProgressBar::new(0);
    let summary = index.index_file(&beir.join("corpus.jsonl"), &progress)?;
    progress.finish_and_clear();
    println!(
        "{} documents in the index ({} added now, {:.1} docs/s)",
        summary.count, summary.indexed_now, summary.docs_per_s
    );

    // A few test queries with their judged documents, to mark the relevant passages.
    let queries = std::fs::read_to_string(beir.join("queries.jsonl"))
        .with_context(|| format!("reading {}", beir.display()))?;
    let qrels = std::fs::read_to_string(beir.join("qrels").join("test.tsv"))?;
    let mut relevant: HashMap<String, Vec<String>> = HashMap::new();
    for line in qrels.lines().skip(1) {
        let cols: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if let [q, d, _] = cols[..] {
            relevant.entry(q.into()).or_default().push(d.into());
        }
    }
    let picked = queries
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|q| relevant.contains_key(q["_id"].as_str().unwrap_or_default()))
        .take(3);
    for q in picked {
        let (id, text) = (
            q["_id"].as_str().unwrap_or_default(),
            q["text"].as_str().unwrap_or_default(),
        );
        println!("\nquery {id}: {text}");
        for (label, opts) in [
            (format!("{full} dims"), SearchOptions::new(full, 3)),
            ("64 dims".to_string(), SearchOptions::new(64, 3)),
            (
                format!("64 → {full} funnel"),
                SearchOptions::new(full, 3).funnel(64, 100),
            ),
        ] {
            let start = Instant::now();
            let hits = index.search_with(text, &opts)?;
            println!("  {label} ({:.1} ms):", start.elapsed().as_secs_f64() * 1e3);
            for h in hits {
                let mark = if relevant[id].contains(&h.id) {
                    "*"
                } else {
                    " "
                };
                let snippet: String = h.text.chars().take(90).collect();
                println!("   {mark} {:.3} [{}] {snippet}…", h.score, h.id);
            }
        }
    }
    println!("\n* = judged relevant in SciFact's test qrels");
    Ok(())
}
