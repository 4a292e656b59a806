//! Adaptive collections on both stores (the embedded qdrant-edge store and a real Qdrant
//! server, started here): re-nests at the threshold and at doubling, full-width results
//! untouched, searches during re-nests never mixing rotations, writes during re-nests kept,
//! and kill -9 mid re-nest followed by a restart. Synthetic vectors stand in for a model: the
//! nesting only sees full vectors.

// Shared with the root crate's end-to-end tests, which use more of it (clusters).
#[allow(dead_code)]
#[path = "../../tests/common/qdrant.rs"]
mod qdrant;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mrl_core::adapt::{Adapter, QueryEncoder, SearchQuery};
use mrl_core::store::{Adapt, CollectionSpec, Distance, EdgeStore, Hit, RemoteStore, VectorStore};
use mrl_core::Document;
use qdrant::QdrantServer;

const WIDTH: usize = 32;
const DIMS: [usize; 3] = [8, 16, WIDTH];

fn shared() -> PathBuf {
    qdrant::shared_dir(&qdrant::crate_dir().join(".."))
}

/// SplitMix64 with Box–Muller normals.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Document `i`'s full vector: near a few directions that depend on its phase (`i / 1000`),
/// so that fits on a collection as it grows differ, plus noise. Deterministic in `i`.
fn vector(i: usize) -> Vec<f32> {
    let phase = (i / 1000) as u64;
    let mut dirs = Rng(0xD1 + phase);
    let directions: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..WIDTH).map(|_| dirs.normal()).collect())
        .collect();
    let mut rng = Rng(i as u64 * 7919 + 1);
    (0..WIDTH)
        .map(|j| {
            let signal: f64 = directions
                .iter()
                .enumerate()
                .map(|(c, d)| d[j] * (rng.normal() * 3.0 / (c + 1) as f64))
                .sum();
            (signal + rng.normal() * 0.3) as f32
        })
        .collect()
}

/// Document `i`'s vector under the stand-in cheap profile: its full vector reversed and
/// negated, plus noise. A linear map away from the full vector that no prefix undoes: its
/// raw prefixes do not find document `i`, a fitted map does.
fn cheap(i: usize) -> Vec<f32> {
    let v = vector(i);
    let mut rng = Rng(i as u64 * 31 + 7);
    (0..WIDTH)
        .map(|j| -v[WIDTH - 1 - j] + (0.05 * rng.normal()) as f32)
        .collect()
}

/// A checkpoint with one other profile, `cheap`, that embeds `doc {i}` as `cheap(i)`.
struct Cheap;

impl QueryEncoder for Cheap {
    fn query_profiles(&self, documents: &str) -> Vec<String> {
        assert_eq!(documents, "full");
        vec!["cheap".into()]
    }

    fn encode(&self, texts: &[String], profile: &str) -> mrl_core::Result<Vec<Vec<f32>>> {
        assert_eq!(profile, "cheap");
        Ok(texts
            .iter()
            .map(|t| cheap(t.strip_prefix("doc ").unwrap().parse().unwrap()))
            .collect())
    }
}

fn docs(range: std::ops::Range<usize>) -> (Vec<Document>, Vec<Vec<f32>>) {
    range
        .map(|i| (Document::new(i.to_string(), format!("doc {i}")), vector(i)))
        .unzip()
}

fn spec(adapt: Option<usize>) -> CollectionSpec {
    CollectionSpec {
        dims: DIMS.to_vec(),
        profile: "full".into(),
        model: "synthetic".into(),
        precision: Default::default(),
        distance: Distance::Cosine,
        layout: Default::default(),
        adapt: adapt.map(|threshold| Adapt { threshold }),
        prompts: Default::default(),
    }
}

/// A fresh collection `name` with `adapt`'s threshold (`None`: generic), fitting maps for
/// the `cheap` profile.
fn fresh(store: &Arc<dyn VectorStore>, name: &str, adapt: Option<usize>) -> Arc<Adapter> {
    let _ = store.delete(name);
    store.create(name, &spec(adapt)).unwrap();
    open(store, name)
}

/// The collection as a process opens it, with the `cheap` profile's encoder.
fn open(store: &Arc<dyn VectorStore>, name: &str) -> Arc<Adapter> {
    let encoder: Arc<dyn QueryEncoder> = Arc::new(Cheap);
    Arc::new(Adapter::load(store.clone(), store.info(name).unwrap(), Some(encoder)).unwrap())
}

fn search(a: &Adapter, full: Vec<f32>, dim: usize, limit: usize) -> Vec<Hit> {
    search_by(a, full, dim, limit, None).unwrap()
}

/// A search whose query vector is of `profile` (`None`: the documents' own).
fn search_by(
    a: &Adapter,
    full: Vec<f32>,
    dim: usize,
    limit: usize,
    profile: Option<&str>,
) -> mrl_core::Result<Vec<Hit>> {
    a.search(&SearchQuery {
        full,
        dim,
        limit,
        funnel: None,
        filter: None,
        exact: true,
        params: Default::default(),
        profile: profile.map(str::to_string),
    })
}

/// Whether a `cheap` query for document `i` through the collection's map finds it first.
fn cheap_finds_itself(a: &Adapter, i: usize, dim: usize) -> Result<(), String> {
    let hits = search_by(a, cheap(i), dim, 1, Some("cheap")).map_err(|e| e.to_string())?;
    match hits.first() {
        Some(h) if h.id == i.to_string() && h.score >= 0.9 => Ok(()),
        other => Err(format!("cheap query {i} at {dim}: top hit {other:?}")),
    }
}

fn version(a: &Adapter) -> u64 {
    a.info().unwrap().rotation.map_or(0, |r| r.version)
}

/// Whether a search for document `i`'s own vector at `dim` finds it first at cosine 1: what
/// holds when the query and every stored point are under one rotation, and fails when the
/// query's rotation differs from the point's (or the point is missing from the slot).
fn finds_itself(a: &Adapter, i: usize, dim: usize) -> Result<(), String> {
    let hits = search(a, vector(i), dim, 1);
    match hits.first() {
        Some(h) if h.id == i.to_string() && h.score >= 1.0 - 1e-4 => Ok(()),
        other => Err(format!("doc {i} at {dim}: top hit {other:?}")),
    }
}

/// Recall@10 of the full-width neighbours of `queries` documents when searching at `dim`.
fn recall_at(a: &Adapter, n: usize, dim: usize) -> f64 {
    let mut found = 0;
    for q in (0..n).step_by(n / 40) {
        let truth: HashSet<String> = search(a, vector(q), WIDTH, 10)
            .into_iter()
            .map(|h| h.id)
            .collect();
        found += search(a, vector(q), dim, 10)
            .into_iter()
            .filter(|h| truth.contains(&h.id))
            .count();
    }
    found as f64 / (10 * n.div_ceil(n / 40)) as f64
}

/// Re-nests at the threshold and at each doubling, not before; full-width results are those
/// of a generic twin (same ids, scores within 1e-5); the rotated short prefix finds the
/// full-width neighbours better than the generic one.
fn threshold_doubling_and_full_width(store: Arc<dyn VectorStore>, tag: &str) {
    let name = format!("adapt-grow-{tag}");
    let a = fresh(&store, &name, Some(100));
    let generic = fresh(&store, &format!("{name}-generic"), None);
    let (d, v) = docs(0..99);
    a.store(d.clone(), v.clone()).unwrap();
    generic.store(d, v).unwrap();
    a.finish().unwrap();
    assert_eq!(version(&a), 0, "99 documents: below the threshold");
    let (d, v) = docs(99..100);
    a.store(d.clone(), v.clone()).unwrap();
    generic.store(d, v).unwrap();
    // Full-width results do not depend on the rotation, whenever they are taken (here while
    // the re-nest the last write started may be running).
    let during: Vec<Vec<Hit>> = (0..20)
        .map(|q| search(&a, vector(q * 5), WIDTH, 10))
        .collect();
    a.finish().unwrap();
    let info = a.info().unwrap();
    let rotation = info.rotation.clone().expect("a fit at the threshold");
    assert_eq!((rotation.version, rotation.points), (1, 100));
    assert_eq!(rotation.sample, 100);
    assert!(info.renest.is_none());
    for (q, during) in during.iter().enumerate() {
        let after = search(&a, vector(q * 5), WIDTH, 10);
        let twin = search(&generic, vector(q * 5), WIDTH, 10);
        for run in [during, &twin] {
            let ids = |h: &[Hit]| h.iter().map(|h| h.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&after), ids(run), "query {q}");
            for (x, y) in after.iter().zip(run) {
                assert!(
                    (x.score - y.score).abs() <= 1e-5,
                    "{} vs {}",
                    x.score,
                    y.score
                );
            }
        }
    }
    let (adapted, plain) = (recall_at(&a, 100, 8), recall_at(&generic, 100, 8));
    assert!(
        adapted > plain + 0.05,
        "recall@10 at 8 dims: adapted {adapted:.3}, generic {plain:.3}"
    );
    for i in [0, 42, 99] {
        finds_itself(&a, i, 8).unwrap();
    }

    let (d, v) = docs(100..199);
    a.store(d, v).unwrap();
    a.finish().unwrap();
    assert_eq!(version(&a), 1, "199 documents: not yet doubled");
    let (d, v) = docs(199..200);
    a.store(d, v).unwrap();
    a.finish().unwrap();
    let rotation = a.info().unwrap().rotation.unwrap();
    assert_eq!((rotation.version, rotation.points), (2, 200));
    for i in [0, 150, 199] {
        finds_itself(&a, i, 8).unwrap();
        finds_itself(&a, i, 16).unwrap();
    }
    // Reopened (as after a restart), the collection is under the same rotation.
    let again = open(&store, &name);
    assert_eq!(version(&again), 2);
    finds_itself(&again, 7, 8).unwrap();
    assert_eq!(
        store.ids(&name).unwrap().len(),
        200,
        "the rotation is no document"
    );
    // A re-nest on demand, whatever the size; a generic collection has none.
    let now = again.renest_now().unwrap();
    assert_eq!((now.version, now.points), (3, 200));
    assert!(now.seconds > 0.0 && now.fitted_at.ends_with('Z'), "{now:?}");
    finds_itself(&again, 7, 16).unwrap();
    assert!(generic.renest_now().is_err());
    store.delete(&name).unwrap();
    store.delete(&format!("{name}-generic")).unwrap();
}

/// Readers search for known documents at both rotated sizes while a writer grows the
/// collection through three re-nests with documents whose structure changes (so the
/// rotations differ): every search finds its document first at cosine 1 — a search whose
/// query and points were under different rotations, or a point missing from the slot, would
/// not — including documents written while a re-nest ran.
fn searches_during_renests_never_mix(store: Arc<dyn VectorStore>, tag: &str) {
    let name = format!("adapt-mix-{tag}");
    let a = fresh(&store, &name, Some(500));
    let (d, v) = docs(0..500);
    a.store(d, v).unwrap();
    a.finish().unwrap();
    assert_eq!(version(&a), 1);
    let acked = Arc::new(AtomicUsize::new(500));
    let writing = Arc::new(AtomicBool::new(true));
    let during = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (a, acked, writing, during, failures) = (
                a.clone(),
                acked.clone(),
                writing.clone(),
                during.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(r + 5);
                while writing.load(Ordering::SeqCst) {
                    let renesting = a.info().unwrap().renest.is_some();
                    let n = acked.load(Ordering::SeqCst);
                    // Half the time one of the newest documents, written during a re-nest.
                    let i = if rng.uniform() < 0.5 {
                        n - 1 - (rng.uniform() * 50.0) as usize
                    } else {
                        (rng.uniform() * n as f64) as usize
                    };
                    let dim = if rng.uniform() < 0.5 { 8 } else { 16 };
                    let found = if rng.uniform() < 0.3 {
                        cheap_finds_itself(&a, i, dim)
                    } else {
                        finds_itself(&a, i, dim)
                    };
                    if let Err(e) = found {
                        failures.lock().unwrap().push(e);
                    }
                    if renesting {
                        during.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    // 500 → 4,000 documents, in batches of 100: re-nests at 1,000, 2,000 and 4,000.
    for start in (500..4000).step_by(100) {
        let (d, v) = docs(start..start + 100);
        a.store(d, v).unwrap();
        acked.store(start + 100, Ordering::SeqCst);
    }
    a.finish().unwrap();
    // Readers keep going over the final state a moment.
    std::thread::sleep(std::time::Duration::from_millis(200));
    writing.store(false, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} mixed searches: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // A fit counts the documents when it starts, and writes go on meanwhile: at least three
    // re-nests (from 1,000 documents, doubling), and none left due.
    let last = a.info().unwrap().rotation.unwrap();
    assert!(last.version >= 3 && 2 * last.points > 4000, "{last:?}");
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "no search ran during a re-nest: the race did not happen"
    );
    assert_eq!(store.ids(&name).unwrap().len(), 4000);
    for i in (0..4000).step_by(97) {
        finds_itself(&a, i, 8).unwrap();
    }
    store.delete(&name).unwrap();
}

/// A fit maps the checkpoint's other profile into the documents' space on the collection's
/// own texts: `GET` shows it with held-out figures; a search by that profile embeds, maps and
/// finds each document first at every size, where the same vector unmapped does not (a
/// skipped map fails here); the map survives a reopen without an encoder; a profile with no
/// map is refused by name.
fn cheap_queries_use_the_fitted_map(store: Arc<dyn VectorStore>, tag: &str) {
    let name = format!("adapt-map-{tag}");
    let a = fresh(&store, &name, Some(400));
    assert!(
        search_by(&a, cheap(3), 8, 1, Some("cheap")).is_err(),
        "no map before the first fit"
    );
    let (d, v) = docs(0..400);
    a.store(d, v).unwrap();
    a.finish().unwrap();
    let rotation = a.info().unwrap().rotation.expect("a fit at the threshold");
    let [map] = rotation.queries.as_slice() else {
        panic!("one query map: {:?}", rotation.queries)
    };
    assert_eq!(map.profile, "cheap");
    assert_eq!((map.sample, map.held_out), (300, 50));
    assert!(map.mean_cosine > 0.95, "{map:?}");
    assert!(map.neighbour_overlap > 0.7, "{map:?}");
    assert!(map.unmapped_overlap < 0.2, "{map:?}");
    assert_eq!(
        (a.maps_queries_of("cheap"), a.maps_queries_of("full")),
        (Some(WIDTH), None)
    );
    let mut unmapped_found = 0;
    for i in (0..400).step_by(20) {
        for dim in DIMS {
            cheap_finds_itself(&a, i, dim).unwrap();
        }
        let raw = search_by(&a, cheap(i), WIDTH, 1, None).unwrap();
        unmapped_found += usize::from(raw[0].id == i.to_string());
    }
    assert!(
        unmapped_found <= 2,
        "unmapped cheap vectors found {unmapped_found} of 20"
    );
    let err = search_by(&a, cheap(3), 8, 1, Some("other")).unwrap_err();
    assert!(err.to_string().contains("other"), "{err}");
    let reopened =
        Arc::new(Adapter::load(store.clone(), store.info(&name).unwrap(), None).unwrap());
    for i in [0, 199, 399] {
        cheap_finds_itself(&reopened, i, 8).unwrap();
    }
    // A fit an older version stored (no nesting record, no maps) still opens, and is fitted
    // again at the next finish, maps included.
    let mut old = store.rotation(&name).unwrap().unwrap();
    old.info.nesting = None;
    old.info.queries.clear();
    old.maps.clear();
    store.set_rotation(&name, &old).unwrap();
    let upgraded = open(&store, &name);
    assert_eq!(upgraded.maps_queries_of("cheap"), None);
    upgraded.finish().unwrap();
    let fit = upgraded.info().unwrap().rotation.unwrap();
    assert_eq!(fit.version, old.info.version + 1);
    assert!(fit.nesting.is_some() && fit.queries.len() == 1, "{fit:?}");
    cheap_finds_itself(&upgraded, 5, 8).unwrap();
    store.delete(&name).unwrap();
}

#[test]
fn embedded_store_maps_cheap_queries() {
    let dir = std::env::temp_dir().join(format!("mrl-adapt-map-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cheap_queries_use_the_fitted_map(Arc::new(EdgeStore::open(&dir).unwrap()), "edge");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_store_renests_at_threshold_and_doubling() {
    let dir = std::env::temp_dir().join(format!("mrl-adapt-grow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    threshold_doubling_and_full_width(Arc::new(EdgeStore::open(&dir).unwrap()), "edge");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_store_searches_during_renests_never_mix() {
    let dir = std::env::temp_dir().join(format!("mrl-adapt-mix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    searches_during_renests_never_mix(Arc::new(EdgeStore::open(&dir).unwrap()), "edge");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qdrant_server_renests_like_the_embedded_store() {
    let Some(_) = qdrant::needs_shared(&qdrant::crate_dir().join(".."), &["qdrant"]) else {
        return;
    };
    let server = QdrantServer::start(&shared());
    let store: Arc<dyn VectorStore> = Arc::new(RemoteStore::connect(&server.url(), None).unwrap());
    threshold_doubling_and_full_width(store.clone(), "remote");
    cheap_queries_use_the_fitted_map(store.clone(), "remote");
    searches_during_renests_never_mix(store, "remote");
}

/// The writer that `kill9_*` tests kill: with `MRL_ADAPT_CHILD` set (a data folder, or a
/// Qdrant URL), it fills an adaptive collection in batches of 500 and prints `acked N` after
/// each durable write and `renest DONE TOTAL` while a re-nest runs, until it is killed.
/// Without the variable it only checks that it was not started by mistake.
#[test]
fn kill9_child_writer() {
    let Ok(target) = std::env::var("MRL_ADAPT_CHILD") else {
        assert!(std::env::var("MRL_ADAPT_CHILD_NAME").is_err());
        return;
    };
    let name = std::env::var("MRL_ADAPT_CHILD_NAME").unwrap();
    let store: Arc<dyn VectorStore> = if target.starts_with("http") {
        Arc::new(RemoteStore::connect(&target, None).unwrap())
    } else {
        Arc::new(EdgeStore::open(std::path::Path::new(&target)).unwrap())
    };
    let a = fresh(&store, &name, Some(1000));
    let watcher = {
        let a = a.clone();
        std::thread::spawn(move || loop {
            if let Some(p) = a.info().unwrap().renest {
                println!("renest {} {}", p.done, p.total);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        })
    };
    for start in (0..200_000).step_by(500) {
        let (d, v) = docs(start..start + 500);
        a.store(d, v).unwrap();
        println!("acked {}", start + 500);
    }
    watcher.join().unwrap();
}

/// Kill -9 of a writer in the middle of a re-nest (after it has rewritten some points and
/// while it still writes documents), then a restart: the collection answers under one
/// rotation, every acknowledged document is there, and the re-nest runs again to the end.
fn kill9_mid_renest(target: &str, store: impl Fn() -> Arc<dyn VectorStore>, tag: &str) {
    let name = format!("adapt-kill-{tag}");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill9_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MRL_ADAPT_CHILD", target)
        .env("MRL_ADAPT_CHILD_NAME", &name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = 0usize;
    let mut killed_at = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["acked", n] => acked = n.parse().unwrap(),
            ["renest", done, total] => {
                let (done, total): (usize, usize) = (done.parse().unwrap(), total.parse().unwrap());
                if total >= 4000 && done > 0 && done < total {
                    child.kill().unwrap();
                    killed_at = Some((done, total));
                    break;
                }
            }
            _ => {}
        }
        assert!(
            acked < 200_000,
            "the writer finished before a re-nest could be killed"
        );
    }
    child.wait().unwrap();
    let (done, total) = killed_at.expect("killed during a re-nest");
    eprintln!(
        "{tag}: killed at {done}/{total} points of a re-nest, {acked} documents acknowledged"
    );

    let store = store();
    let a = open(&store, &name);
    let before = version(&a);
    let ids: HashSet<String> = store.ids(&name).unwrap().into_iter().collect();
    let lost: Vec<usize> = (0..acked)
        .filter(|i| !ids.contains(&i.to_string()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged documents lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let count = ids.len();
    for i in (0..acked).step_by(acked / 50) {
        finds_itself(&a, i, 8).unwrap();
        finds_itself(&a, i, 16).unwrap();
        cheap_finds_itself(&a, i, 16).unwrap();
    }
    // The interrupted re-nest is due again and completes.
    a.finish().unwrap();
    let after = a.info().unwrap().rotation.unwrap();
    assert!(
        after.version > before && after.points == count,
        "{before} → {after:?}"
    );
    for i in (0..acked).step_by(acked / 50) {
        finds_itself(&a, i, 8).unwrap();
        cheap_finds_itself(&a, i, 8).unwrap();
    }
    store.delete(&name).unwrap();
}

#[test]
fn embedded_store_survives_kill9_mid_renest() {
    let dir = std::env::temp_dir().join(format!("mrl-adapt-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.clone();
    kill9_mid_renest(
        dir.to_str().unwrap(),
        move || Arc::new(EdgeStore::open(&d).unwrap()),
        "edge",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn qdrant_server_survives_kill9_mid_renest() {
    let Some(_) = qdrant::needs_shared(&qdrant::crate_dir().join(".."), &["qdrant"]) else {
        return;
    };
    let server = QdrantServer::start(&shared());
    let url = server.url();
    kill9_mid_renest(
        &url,
        || Arc::new(RemoteStore::connect(&server.url(), None).unwrap()),
        "remote",
    );
}
