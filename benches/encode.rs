//! Encoder throughput (texts/s) on `../shared/bench/texts.jsonl`, short and long texts, per
//! profile. Criterion needs repeated samples, so each sample embeds a fixed slice of the file
//! (`MRL_BENCH_SHORT` / `MRL_BENCH_LONG` texts, default 256 / 64); `mrl bench encode` runs the
//! whole file in the peer script's format for side-by-side ratios.
//!
//! `MRL_MODEL` picks the checkpoint (default: the base model) and `MRL_BENCH_PROFILES` the
//! profiles, separated by ';' (default `all`: every profile of the checkpoint's manifest, or
//! `full;layers=3` for a plain checkpoint).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use mrl::{EmbedSpec, Embedder, Embeddings, Fetcher, Fields, Policy, DEFAULT_MODEL};

fn texts(kind: &str, limit: usize) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("MRL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("..").join("shared"));
    let path = shared.join("bench").join("texts.jsonl");
    let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    body.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("texts.jsonl is JSONL"))
        .filter(|v| v["kind"] == kind)
        .map(|v| v["text"].as_str().unwrap_or_default().to_string())
        .take(limit)
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn encode(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = match std::env::var_os("MRL_MODEL") {
        Some(d) => PathBuf::from(d),
        None => Fetcher::new(root.join("models"))
            .ensure(&DEFAULT_MODEL)
            .expect("fetching the default model"),
    };
    let embedder = Arc::new(Embedder::load(dir).expect("loading the model"));
    let embeddings = Embeddings::inline(embedder.clone(), Policy::LIBRARY);
    let spec = std::env::var("MRL_BENCH_PROFILES").unwrap_or_else(|_| "all".into());
    let profiles: Vec<String> = match spec.as_str() {
        "all" if embedder.manifest().is_some() => embedder.profile_names(),
        "all" => vec!["full".into(), "layers=3".into()],
        s => s.split(';').map(String::from).collect(),
    };
    for (kind, n) in [
        ("short", env_usize("MRL_BENCH_SHORT", 256)),
        ("long", env_usize("MRL_BENCH_LONG", 64)),
    ] {
        let batch = texts(kind, n);
        let mut group = c.benchmark_group(format!("encode/{kind}"));
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.sample_size(10);
        for profile in &profiles {
            let spec = EmbedSpec::default().profile(profile.clone());
            group.bench_with_input(BenchmarkId::from_parameter(profile), &batch, |b, t| {
                b.iter(|| {
                    embeddings
                        .embed_blocking(t, &spec, &Fields::NATIVE)
                        .expect("embedding")
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);
