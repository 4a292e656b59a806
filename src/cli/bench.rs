//! `mrl bench encode`: texts/s per profile and kind, printed as RESULT lines in the format of
//! `../shared/peers/bench_ort.py` so the two run side by side.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::sync::Arc;

use mrl::{EmbedSpec, Embeddings, Fields, Policy};

use super::common::{load, peak_rss_kib, profile_list, ModelArg};

#[derive(Args)]
pub(crate) struct BenchEncodeArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    #[arg(long, default_value_os_t = super::common::shared_path("bench/texts.jsonl"))]
    pub(crate) texts: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    #[arg(long, default_value = "short,long")]
    pub(crate) kinds: String,
    /// Profiles to measure, each a name or spec; separate several with ';'.
    #[arg(long, default_value = "full")]
    pub(crate) profiles: String,
}

pub(crate) fn run(args: BenchEncodeArgs) -> Result<()> {
    super::common::must_exist(&args.texts, "--texts")?;
    let embedder = Arc::new(load(&args.model)?);
    // The path every caller takes, texts to unit vectors, at the batch size asked for.
    let embeddings = Embeddings::inline(embedder.clone(), Policy::LIBRARY).batch_size(args.batch);
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
        let spec = EmbedSpec::default().profile(profile);
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
            embeddings.embed_blocking(
                &texts[..texts.len().min(args.batch)],
                &spec,
                &Fields::NATIVE,
            )?;
            let mut rates = Vec::new();
            for run in 0..args.runs.max(1) {
                let start = Instant::now();
                embeddings.embed_blocking(&texts, &spec, &Fields::NATIVE)?;
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
                 precision={} matmul={} median_texts_per_s={:.1} runs={:?}",
                texts.len(),
                args.batch,
                embedder.precision(),
                match embedder.precision() {
                    mrl::Precision::Int8 => mrl_encoder::int8::Kernel::best().name(),
                    mrl::Precision::F32 => mrl_encoder::kernels::matmul_backend(),
                },
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
