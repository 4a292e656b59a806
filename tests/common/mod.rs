//! Helpers shared by the end-to-end tests: the real model (fetched once into the repo's
//! `models/`) and the paths of `../shared`.

#![allow(dead_code)]

pub mod qdrant;
pub mod server;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use mrl::{EmbedSpec, Embedder, Embeddings, Fetcher, Fields, Policy, DEFAULT_MODEL};

/// The checkout (the root crate's folder as the test runs).
pub fn root() -> PathBuf {
    qdrant::crate_dir()
}

/// `$MRL_SHARED_DIR`, else the `shared/` folder beside the checkout.
pub fn shared() -> PathBuf {
    qdrant::shared_dir(&root())
}

/// `../shared` when it holds every one of `rels`; else `None` after one line saying the test
/// is skipped (a failure under `CI=true`): `let Some(_) = common::needs(&["data/scifact"])
/// else { return };` opens a test that reads it.
pub fn needs(rels: &[&str]) -> Option<PathBuf> {
    qdrant::needs_shared(&root(), rels)
}

/// The texts of SciFact's first `n` queries (in `queries.jsonl` order).
pub fn scifact_queries(n: usize) -> Vec<String> {
    let path = shared().join("data/scifact/queries.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// SciFact's first `n` documents (in `corpus.jsonl` order) as (id, "title text").
pub fn scifact_corpus(n: usize) -> Vec<(String, String)> {
    let path = shared().join("data/scifact/corpus.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .lines()
        .take(n)
        .map(id_and_text)
        .collect()
}

/// `(id, text)` of a BEIR line as the indexer makes them (title and text joined).
pub fn id_and_text(line: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let text = format!(
        "{} {}",
        v["title"].as_str().unwrap(),
        v["text"].as_str().unwrap()
    );
    (
        v["_id"].as_str().unwrap().to_string(),
        text.trim().to_string(),
    )
}

/// `python3` with `packages` (pinned, `name==version`) importable: pip installs them once into
/// the mrl cache (`$MRL_CACHE_DIR`, else `~/.cache/mrl`, folder `python/`, one folder per
/// interpreter version, since wheels carry compiled code), as the model is fetched with pip,
/// so the test command needs nothing beforehand but python3 with pip. An install goes to a
/// folder of its own, renamed into place whole, so concurrent test processes never share a
/// half-written one.
pub fn python_with(packages: &[&str]) -> std::process::Command {
    let tag = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.implementation.cache_tag)"])
        .output()
        .expect("running python3 (a prerequisite)");
    let tag = String::from_utf8_lossy(&tag.stdout).trim().to_string();
    let dir = mrl::fetch::default_cache_dir()
        .join("python")
        .join(format!("{tag}-{}", packages.join("+")));
    if !dir.is_dir() {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let staging = dir.with_file_name(format!("{name}.part-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let out = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-warn-conflicts", "--no-warn-script-location"])
            .arg("--target")
            .arg(&staging)
            .args(packages)
            .output()
            .expect("running python3 -m pip (python3 with pip is a prerequisite)");
        assert!(
            out.status.success(),
            "pip install {packages:?} into {staging:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another process may have put its copy in place first; then this one is spare.
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
            assert!(dir.is_dir(), "could not move {staging:?} to {dir:?}");
        }
    }
    let old = std::env::var_os("PYTHONPATH").unwrap_or_default();
    // An empty entry would put the working folder on the path.
    let rest = std::env::split_paths(&old).filter(|p| !p.as_os_str().is_empty());
    let path = std::env::join_paths(std::iter::once(dir).chain(rest))
        .expect("the cache folder's path holds no path separator");
    let mut cmd = std::process::Command::new("python3");
    cmd.env("PYTHONPATH", path);
    cmd
}

pub fn model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        Fetcher::new(root().join("models"))
            .ensure(&DEFAULT_MODEL)
            .expect("fetching the default model")
    })
    .clone()
}

pub fn embedder() -> &'static Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| Arc::new(Embedder::load(model_dir()).expect("loading the default model")))
}

/// Vectors of `texts` by `e` through the one text → vector path every caller takes
/// (mrl-core's `Embeddings`, the library's policy).
pub fn embed<S: AsRef<str> + Sync>(
    e: &Arc<Embedder>,
    texts: &[S],
    spec: &EmbedSpec,
) -> Result<Vec<Vec<f32>>, mrl_core::Error> {
    Ok(Embeddings::inline(e.clone(), Policy::LIBRARY)
        .embed_blocking(texts, spec, &Fields::NATIVE)?
        .vectors)
}

pub struct Reference {
    pub text: String,
    pub input_ids: Vec<u32>,
    pub embedding: Vec<f32>,
    pub unnormalized: Vec<f32>,
}

pub fn references() -> Vec<Reference> {
    let path = shared()
        .join("fixtures")
        .join("all-minilm-l6-v2.reference.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let floats = |k: &str| -> Vec<f32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            };
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                input_ids: v["input_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                embedding: floats("embedding"),
                unnormalized: floats("embedding_unnormalized"),
            }
        })
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
