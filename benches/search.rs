//! Search latency in the embedded Qdrant store on a synthetic collection of
//! `MRL_BENCH_POINTS` points (default 100,000) with nested sizes 64/128/256/384: HNSW search per
//! size, funnels (prefetch at a small size, rescore at 384), and brute force for reference.
//!
//! The collection is built once (the first run takes minutes: upserts plus the HNSW build) and
//! kept under `$CARGO_TARGET_DIR/mrl-bench/` for later runs. Vectors are clustered and their
//! variance decays along the coordinates, so prefixes carry most of the signal, as in a
//! Matryoshka model; the latencies, not the rankings, are what this measures.

use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mrl_core::store::{
    CollectionSpec, Distance, EdgeStore, StoredDocument, VectorQuery, VectorStore,
};
use serde_json::Map;

const DIMS: [usize; 4] = [64, 128, 256, 384];
const FULL: usize = 384;
const NAME: &str = "synthetic";

mod common;

use common::synthetic::{centroids, vector, Rng};

fn nested(v: &[f32]) -> Vec<(String, Vec<f32>)> {
    common::synthetic::nested(v, &DIMS)
}

fn store_dir(points: usize) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("mrl-bench").join(format!("search-{points}"))
}

/// Opens the synthetic collection, building it first if it is missing or incomplete.
fn open(points: usize) -> EdgeStore {
    let dir = store_dir(points);
    let store = EdgeStore::open(&dir).expect("opening the bench store");
    if store.info(NAME).map(|i| i.count).ok() == Some(points) {
        return store;
    }
    let _ = store.delete(NAME);
    let spec = CollectionSpec {
        dims: DIMS.to_vec(),
        profile: "synthetic".into(),
        model: "synthetic".into(),
        precision: Default::default(),
        distance: Distance::Cosine,
        layout: Default::default(),
        adapt: None,
        prompts: Default::default(),
    };
    store
        .create(NAME, &spec)
        .expect("creating the bench collection");
    let mut rng = Rng(7);
    let cents = centroids(&mut rng, 1000, FULL);
    let start = Instant::now();
    for chunk in 0..points.div_ceil(2000) {
        let docs = (chunk * 2000..((chunk + 1) * 2000).min(points))
            .map(|i| {
                let v = vector(&mut rng, &cents[i % cents.len()], 0.6);
                StoredDocument {
                    id: i.to_string(),
                    text: String::new(),
                    payload: Map::new(),
                    vectors: nested(&v),
                }
            })
            .collect();
        store.upsert(NAME, docs).expect("upserting");
    }
    eprintln!(
        "upserted {points} points in {:.0}s",
        start.elapsed().as_secs_f64()
    );
    store.optimize(NAME).expect("optimizing");
    eprintln!(
        "built the indexes in {:.0}s in all",
        start.elapsed().as_secs_f64()
    );
    store
}

fn search(c: &mut Criterion) {
    let points = std::env::var("MRL_BENCH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let store = open(points);
    let mut rng = Rng(99);
    let cents = centroids(&mut Rng(7), 1000, FULL);
    let queries: Vec<Vec<f32>> = (0..256)
        .map(|i| vector(&mut rng, &cents[(i * 37) % cents.len()], 0.6))
        .collect();
    let mut group = c.benchmark_group(format!("search_{points}"));
    group.throughput(Throughput::Elements(1));
    let mut run = |id: BenchmarkId, dim: usize, funnel: Option<(usize, usize)>, exact: bool| {
        let prepared: Vec<VectorQuery> = queries
            .iter()
            .map(|q| {
                let mut vq = VectorQuery::nested(q, dim, 10, funnel).expect("valid sizes");
                vq.exact = exact;
                vq
            })
            .collect();
        let mut i = 0;
        group.bench_function(id, |b| {
            b.iter(|| {
                i = (i + 1) % prepared.len();
                store.search(NAME, &prepared[i]).expect("searching")
            })
        });
    };
    for dim in DIMS {
        run(BenchmarkId::new("hnsw", dim), dim, None, false);
    }
    run(
        BenchmarkId::new("funnel", "64to384_k100"),
        FULL,
        Some((64, 100)),
        false,
    );
    run(
        BenchmarkId::new("funnel", "128to384_k200"),
        FULL,
        Some((128, 200)),
        false,
    );
    run(BenchmarkId::new("exact", FULL), FULL, None, true);
    run(BenchmarkId::new("exact", 64), 64, None, true);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = search
}
criterion_main!(benches);
