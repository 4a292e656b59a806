//! Qdrant at scale: `cargo bench --bench qdrant_scale [-- POINTS]` (default 200,000) loads
//! synthetic clustered points with nested sizes 64/128/256/512 into the Qdrant server shipped in
//! `../shared/qdrant` (a fresh server per layout), in two layouts:
//! - `float`: every size as floats in RAM with an HNSW graph (a collection's default);
//! - `funnel`: the small sizes also as scalar int8 in RAM, the widest on disk without a graph
//!   (used only to rescore): `{"quantize": [64, 128, 256], "on_disk": true, "hnsw": [{"dim":
//!   512, "m": 0}]}`, the Matryoshka funnel of Qdrant's docs.
//!
//! For each it reports the server's RSS (after its optimizers are idle) and disk, and for 200
//! queries a funnel search (prefetch 100 at 64, rescore at 512): recall@10 against exact search
//! at 512, and p50/p99 latency through the store client. Writes a Markdown table to stdout and
//! JSON to `bench-results/qdrant-scale.json`.

#[allow(dead_code)]
#[path = "../tests/common/qdrant.rs"]
mod qdrant;

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::synthetic::{centroids, nested, vector, Rng};
use indicatif::{ProgressBar, ProgressStyle};
use mrl_core::store::{
    CollectionSpec, Distance, HnswSize, Layout, RemoteStore, StoredDocument, VectorQuery,
    VectorStore,
};
use qdrant::QdrantServer;
use serde_json::{json, Map, Value};

const DIMS: [usize; 4] = [64, 128, 256, 512];
const WIDEST: usize = 512;
const NAME: &str = "scale";
const QUERIES: usize = 200;

fn layouts() -> Vec<(&'static str, Layout)> {
    vec![
        ("float", Layout::default()),
        (
            "funnel",
            Layout {
                on_disk: true,
                quantize: vec![64, 128, 256],
                hnsw: vec![HnswSize {
                    dim: WIDEST,
                    m: Some(0),
                    ef_construct: None,
                }],
                ..Layout::default()
            },
        ),
    ]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn disk_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let points: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let shared = qdrant::shared_dir(Path::new(env!("CARGO_MANIFEST_DIR")));
    let mut rng = Rng(7);
    let cents = centroids(&mut rng, 1000, WIDEST);
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|i| {
            vector(
                &mut Rng(1000 + i as u64),
                &cents[(i * 37) % cents.len()],
                0.6,
            )
        })
        .collect();
    let mut rows = Vec::new();
    for (label, layout) in layouts() {
        let server = QdrantServer::start(&shared);
        let store = RemoteStore::connect(&server.url(), None).expect("connecting");
        let spec = CollectionSpec {
            dims: DIMS.to_vec(),
            profile: "synthetic".into(),
            model: "synthetic".into(),
            precision: Default::default(),
            distance: Distance::Cosine,
            layout: layout.clone(),
            adapt: None,
            prompts: Default::default(),
        };
        store.create(NAME, &spec).expect("creating");
        let bar = ProgressBar::new(points as u64).with_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {per_sec} eta {eta}")
                .expect("a valid template"),
        );
        bar.set_message(format!("{label}: upserting"));
        let start = Instant::now();
        let mut data_rng = Rng(11);
        for chunk in (0..points).step_by(1000) {
            let docs = (chunk..(chunk + 1000).min(points))
                .map(|i| StoredDocument {
                    id: i.to_string(),
                    text: String::new(),
                    payload: Map::new(),
                    vectors: nested(&vector(&mut data_rng, &cents[i % cents.len()], 0.6), &DIMS),
                })
                .collect::<Vec<_>>();
            let n = docs.len() as u64;
            store.upsert(NAME, docs).expect("upserting");
            bar.inc(n);
        }
        let upsert_s = start.elapsed().as_secs_f64();
        bar.set_message(format!("{label}: waiting for the optimizers"));
        // Green twice in a row: the optimizers have finished (indexes built, segments merged).
        let mut greens = 0;
        let deadline = Instant::now() + Duration::from_secs(3600);
        while greens < 2 {
            assert!(
                Instant::now() < deadline,
                "the optimizers of {label} are still busy after an hour"
            );
            std::thread::sleep(Duration::from_secs(2));
            let status = server.get(&format!("/collections/{NAME}"))["result"]["status"].clone();
            greens = if status == "green" { greens + 1 } else { 0 };
        }
        let ready_s = start.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let pid = server.pid().expect("the server runs");
        let (rss, disk) = (rss_mib(pid), disk_mib(server.dir()));

        let mut recall = 0.0;
        let mut ms = Vec::with_capacity(QUERIES);
        for q in &queries {
            let mut exact = VectorQuery::nested(q, WIDEST, 10, None).expect("nested");
            exact.exact = true;
            let truth: Vec<String> = store
                .search(NAME, &exact)
                .expect("exact search")
                .into_iter()
                .map(|h| h.id)
                .collect();
            let funnel = VectorQuery::nested(q, WIDEST, 10, Some((64, 100))).expect("nested");
            let t = Instant::now();
            let hits = store.search(NAME, &funnel).expect("funnel search");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            recall += hits.iter().filter(|h| truth.contains(&h.id)).count() as f64 / 10.0;
        }
        ms.sort_by(f64::total_cmp);
        let row = json!({
            "layout": label, "spec": layout, "points": points, "dims": DIMS,
            "rss_mib": rss, "disk_mib": disk,
            "funnel": "64:100 → 512", "recall_at_10": recall / QUERIES as f64,
            "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99),
            "upsert_s": upsert_s, "ready_s": ready_s,
        });
        eprintln!("{row}");
        rows.push(row);
    }
    println!("| layout | points | Qdrant RSS (MiB) | disk (MiB) | funnel recall@10 | p50 / p99 (ms) | upsert / ready (s) |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} | {:.0} / {:.0} |",
            r["layout"].as_str().unwrap_or("?"),
            r["points"],
            r["rss_mib"].as_f64().unwrap_or(f64::NAN),
            r["disk_mib"].as_f64().unwrap_or(f64::NAN),
            r["recall_at_10"].as_f64().unwrap_or(f64::NAN),
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["upsert_s"].as_f64().unwrap_or(f64::NAN),
            r["ready_s"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let out = PathBuf::from("bench-results");
    std::fs::create_dir_all(&out).expect("creating bench-results");
    std::fs::write(
        out.join("qdrant-scale.json"),
        serde_json::to_vec_pretty(&Value::Array(rows)).expect("JSON"),
    )
    .expect("writing bench-results/qdrant-scale.json");
}
