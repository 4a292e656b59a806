//! Field reports replayed against `mrl serve` (a separate process): collection lifecycle races,
//! numbers out of float32's range, `has_id` filters in the caller's ids, a queue bounded by
//! work (and the heap gauges beside its own), and a seeded storm of mixed operations whose
//! acknowledged state must survive.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::{call, raw, Server};
use mrl_trainer::router::Rng;
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mrl-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn hit_ids(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {v}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every document id in `collection`, by an exact search wide enough to return them all.
fn stored_ids(s: &Server, collection: &str) -> BTreeSet<String> {
    let (status, info) = s.call("GET", &format!("/collections/{collection}"), None);
    assert_eq!(status, 200, "{info}");
    let count = info["count"].as_u64().unwrap() as usize;
    if count == 0 {
        return BTreeSet::new();
    }
    assert!(
        count <= 1000,
        "{count} documents: too many to list by search"
    );
    let v = s.ok(
        "POST",
        &format!("/collections/{collection}/search"),
        json!({"query": "anything", "limit": 1000, "exact": true}),
    );
    let ids: BTreeSet<String> = hit_ids(&v).into_iter().collect();
    assert_eq!(ids.len(), count, "search and count disagree");
    ids
}

/// One document write: (id, request start, request end, acknowledged).
type DocWrite = (String, Instant, Instant, bool);

/// Field report 1: two clients add one document at a time while a third deletes and
/// recreates the collection for as long as they write (each incarnation stays up until a write
/// lands in it, however slow the machine). Every answer is a success or a 404
/// (both happen), the process lives, and after a kill -9 and a restart the collection holds
/// every document acknowledged after its last recreation, nothing that was not acknowledged,
/// and nothing acknowledged before the last delete began.
#[test]
fn deleting_and_recreating_under_writes_never_kills_the_server() {
    let data = scratch("race");
    let mut s = Server::start(&data);
    s.ok("PUT", "/collections/race", json!({"dims": [64]}));
    let addr = s.addr;
    let writes = Arc::new(Mutex::new(Vec::<DocWrite>::new()));
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let writes = writes.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = format!("w{w}-{i}");
                    let start = Instant::now();
                    let (status, v) = call(
                        addr,
                        "POST",
                        "/collections/race/documents",
                        Some(json!({"documents": [{"id": id, "text": format!("note {i} of writer {w}")}]})),
                    );
                    assert!(status == 200 || status == 404, "add {id}: {status} {v}");
                    writes
                        .lock()
                        .unwrap()
                        .push((id, start, Instant::now(), status == 200));
                    if status == 404 {
                        // Refusals are quick: pause, so the writes spread over many cycles.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let churn = {
        let writing = writing.clone();
        let writes = writes.clone();
        std::thread::spawn(move || {
            let (mut last_delete, mut last_create) = (Instant::now(), Instant::now());
            let landed =
                |created: Instant| writes.lock().unwrap().iter().any(|w| w.3 && w.2 > created);
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                last_delete = Instant::now();
                let (status, v) = call(addr, "DELETE", "/collections/race", None);
                assert!(status == 200 || status == 404, "delete: {status} {v}");
                let (status, v) = call(
                    addr,
                    "PUT",
                    "/collections/race",
                    Some(json!({"dims": [64]})),
                );
                assert!(status == 200 || status == 201, "create: {status} {v}");
                last_create = Instant::now();
                // Leave the collection up a while between deletes, and until a write has landed
                // in it: on a loaded machine one write can take longer than any fixed pause, and
                // a storm where every write meets a delete would test nothing of the writes.
                std::thread::sleep(Duration::from_millis(20));
                while writing.load(std::sync::atomic::Ordering::SeqCst) && !landed(last_create) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            (last_delete, last_create)
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let (last_delete, last_create) = churn.join().unwrap();
    assert!(s.alive(), "the server died during the storm");
    assert_eq!(s.call("GET", "/health", None).0, 200);
    let before = stored_ids(&s, "race");
    s.kill();

    let s = Server::start(&data);
    let after = stored_ids(&s, "race");
    assert_eq!(before, after, "a restart changed the collection");
    let writes = writes.lock().unwrap();
    let acked = |keep: &dyn Fn(&DocWrite) -> bool| -> BTreeSet<String> {
        writes
            .iter()
            .filter(|w| w.3 && keep(w))
            .map(|w| w.0.clone())
            .collect()
    };
    assert!(writes.iter().any(|w| w.3), "no write succeeded");
    assert!(
        writes.iter().any(|w| !w.3),
        "no write met a deleted collection: the race did not happen"
    );
    assert!(
        after.is_subset(&acked(&|_| true)),
        "unacknowledged documents stored"
    );
    assert!(
        acked(&|w| w.1 > last_create).is_subset(&after),
        "acknowledged documents lost"
    );
    let gone = acked(&|w| w.2 < last_delete);
    assert!(
        after.is_disjoint(&gone),
        "documents of a deleted collection came back"
    );
    s.stop();
}

/// Field report 2: a query vector beyond float32's range is a 400 naming the value; finite
/// vectors of any magnitude rank exactly as their rescaled copy.
#[test]
fn query_vectors_beyond_float32_are_refused_and_any_finite_scale_ranks_alike() {
    let data = scratch("numbers");
    let s = Server::start(&data);
    s.ok("PUT", "/collections/r", json!({"dims": [64, 384]}));
    let docs: Vec<Value> = [
        "The cat sleeps on the warm windowsill.",
        "Interest rates rose again this quarter.",
        "A recipe for sourdough bread with a long ferment.",
        "The telescope resolved two distant galaxies.",
        "Tomatoes need full sun and regular watering.",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"id": format!("d{i}"), "text": t}))
    .collect();
    s.ok(
        "POST",
        "/collections/r/documents",
        json!({ "documents": docs }),
    );
    let emb = s.ok(
        "POST",
        "/embed",
        json!({"inputs": "where does the cat nap?", "dim": 64}),
    );
    let v: Vec<f64> = emb["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();

    let mut big = v.clone();
    big[0] = 1e39;
    let (status, e) = s.call(
        "POST",
        "/collections/r/search",
        Some(json!({"vector": big, "dim": 64})),
    );
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("vector[0]")),
        "{e}"
    );
    let (status, e) = s.call(
        "POST",
        "/collections/r/search",
        Some(json!({"vector": vec![0.0; 64], "dim": 64})),
    );
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("vector")),
        "{e}"
    );

    let search = |scale: f64| {
        let scaled: Vec<f64> = v.iter().map(|x| x * scale).collect();
        let r = s.ok(
            "POST",
            "/collections/r/search",
            json!({"vector": scaled, "dim": 64, "limit": 5, "exact": true}),
        );
        let hits = r["hits"].as_array().unwrap().clone();
        hits.iter()
            .map(|h| {
                let score = h["score"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("scale {scale}: score {h}"));
                (h["id"].as_str().unwrap().to_string(), score)
            })
            .collect::<Vec<_>>()
    };
    let reference = search(1.0);
    assert_eq!(reference.len(), 5);
    assert_eq!(reference[0].0, "d0");
    for scale in [1e30, 1e-30, 1e36] {
        let got = search(scale);
        assert_eq!(
            got.iter().map(|h| &h.0).collect::<Vec<_>>(),
            reference.iter().map(|h| &h.0).collect::<Vec<_>>(),
            "scale {scale}"
        );
        for (a, b) in got.iter().zip(&reference) {
            assert!(
                (a.1 - b.1).abs() < 1e-5,
                "scale {scale}: {got:?} vs {reference:?}"
            );
        }
    }
    // Other numbers callers send: a funnel's candidates and the limit have bounds.
    for (body, field) in [
        (
            json!({"query": "x", "dim": 384, "funnel": {"dim": 64, "candidates": 1u64 << 40}}),
            "funnel.candidates",
        ),
        (json!({"query": "x", "limit": 1e3}), "limit"),
        (json!({"query": "x", "limit": -1}), "limit"),
    ] {
        let (status, e) = s.call("POST", "/collections/r/search", Some(body.clone()));
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {e}"
        );
    }
    s.stop();
}

/// Field report 3: `has_id` names documents by the caller's ids (strings, numbers, UUIDs),
/// as deletes and results do.
#[test]
fn has_id_filters_speak_the_callers_ids() {
    let data = scratch("has-id");
    let s = Server::start(&data);
    s.ok("PUT", "/collections/ids", json!({"dims": [64]}));
    let uuid = "0b8e1f8a-3c1e-4a53-9b7a-2f3c4d5e6f70";
    s.ok(
        "POST",
        "/collections/ids/documents",
        json!({"documents": [
            {"id": uuid, "text": "A note about the sea."},
            {"id": "plain-7", "text": "A note about the mountains."},
            {"id": 42, "text": "A note about the desert."},
            {"id": "other", "text": "A note about the forest."},
        ]}),
    );
    let search = |filter: Value| {
        let v = s.ok(
            "POST",
            "/collections/ids/search",
            json!({"query": "a note", "limit": 10, "filter": filter}),
        );
        let mut ids = hit_ids(&v);
        ids.sort();
        ids
    };
    assert_eq!(search(json!({"must": [{"has_id": [uuid]}]})), [uuid]);
    assert_eq!(
        search(json!({"must": [{"has_id": ["plain-7"]}]})),
        ["plain-7"]
    );
    assert_eq!(search(json!({"must": [{"has_id": [42]}]})), ["42"]);
    assert_eq!(
        search(json!({"must": [{"has_id": ["42", "absent"]}]})),
        ["42"]
    );
    assert_eq!(
        search(json!({"must_not": [{"has_id": [uuid, "plain-7"]}]})),
        ["42", "other"]
    );
    assert_eq!(
        search(json!({"should": [{"must": [{"has_id": ["other"]}]}]})),
        ["other"]
    );
    let (status, e) = s.call(
        "POST",
        "/collections/ids/search",
        Some(json!({"query": "a note", "filter": {"must": [{"has_id": "other"}]}})),
    );
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("filter")),
        "{e}"
    );
    s.ok(
        "DELETE",
        "/collections/ids/documents",
        json!({"ids": [42, uuid]}),
    );
    assert_eq!(
        search(json!({"must": [{"has_id": [42, uuid, "other"]}]})),
        ["other"]
    );
    s.stop();
}

fn metric(s: &Server, name: &str) -> f64 {
    let (_, text) = raw(s.addr, "GET", "/metrics", b"");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls `done` every 5 ms until it holds or 20 s have passed (the caller's asserts judge).
fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Field report 4: the queue is bounded by the tokens waiting, not only by requests; past it
/// a request gets 429 with Retry-After. A request whose client hung up before its forward
/// pass is dropped and counted. The heap gauges the allocator feeds are on /metrics.
#[test]
fn the_queue_is_bounded_by_tokens_and_abandoned_requests_are_dropped() {
    let data = scratch("queue");
    // Room for many requests, but only ~4 long inputs' worth of tokens.
    let s = Server::start_with(
        &data,
        &[
            "--queue-capacity",
            "64",
            "--max-queued-tokens",
            "1024",
            "--max-batch-tokens",
            "256",
        ],
    );
    let addr = s.addr;
    let long = "many words in a long passage ".repeat(40);
    let body = json!({"inputs": [long.clone(), long.clone()]});
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || call(addr, "POST", "/embed", Some(body)))
        })
        .collect();
    let answers: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy = answers.iter().filter(|a| a.0 == 429).count();
    assert!(
        busy > 0,
        "8 requests of ~500 tokens against 1024 queued tokens: no 429"
    );
    for (status, v) in &answers {
        match status {
            429 => assert_eq!(v["error"]["type"], "overloaded"),
            200 => assert_eq!(v["embeddings"].as_array().unwrap().len(), 2),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(metric(&s, "mrl_queue_tokens"), 0.0);
    assert_eq!(metric(&s, "mrl_queue_depth"), 0.0);
    // The allocator's own figures reach /metrics: the weights alone are tens of MiB.
    let in_use = metric(&s, "mrl_heap_in_use_bytes");
    assert!(in_use > 16.0 * 1024.0 * 1024.0, "heap in use {in_use}");
    // Present (`metric` panics otherwise); zero is a fair value for it.
    let _free = metric(&s, "mrl_heap_free_bytes");

    // A long request occupies the model thread; meanwhile clients send requests and hang up.
    let before = metric(&s, "mrl_requests_abandoned_total");
    // Long enough that the hung-up requests are queued behind it on any machine.
    let busy_body = json!({"inputs": vec![long.clone(); 16]});
    let embedded = metric(&s, "mrl_tokens_total");
    let blocker = std::thread::spawn(move || call(addr, "POST", "/embed", Some(busy_body)));
    // The hang-ups go once the model thread has taken the blocker into its forward pass (it
    // counts the tokens then): earlier, the blocker still waits in the queue and, over the
    // token bound, refuses them (429); a fixed sleep lost this race either way on a loaded
    // machine.
    wait_until(|| metric(&s, "mrl_tokens_total") > embedded || blocker.is_finished());
    for queued in 1..=3 {
        let body = json!({"inputs": "a request nobody waits for"}).to_string();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Hang up once it waits in the queue, not before the server has read it.
        wait_until(|| metric(&s, "mrl_queue_depth") >= queued as f64 || blocker.is_finished());
        drop(stream);
    }
    assert_eq!(blocker.join().unwrap().0, 200);
    // The abandoned requests are discarded when the model thread next looks at its queue.
    wait_until(|| {
        let _ = call(addr, "POST", "/embed", Some(json!({"inputs": "tick"})));
        metric(&s, "mrl_requests_abandoned_total") >= before + 1.0
    });
    assert!(
        metric(&s, "mrl_requests_abandoned_total") >= before + 1.0,
        "no abandoned request was counted"
    );
    s.stop();
}

/// A uniform index below `n`, from the trainer's seeded SplitMix64 (a failing storm is
/// replayed by its seed).
fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

const THREADS: usize = 8;
const OPS: usize = 300;
const OWN_IDS: usize = 40;

/// One random operation of thread `t`; records in `model` what `stable` must hold.
/// Returns the status (asserting it is an allowed one).
fn storm_op(
    addr: std::net::SocketAddr,
    t: usize,
    rng: &mut Rng,
    model: &mut HashMap<String, bool>,
) {
    let own = |rng: &mut Rng| format!("t{t}-{}", below(rng, OWN_IDS));
    let (method, path, body, allowed): (&str, String, Option<Value>, &[u16]) = match below(rng, 12)
    {
        0..=2 => {
            let ids: BTreeSet<String> = (0..1 + below(rng, 3)).map(|_| own(rng)).collect();
            let docs: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "text": format!("document {id} about topic {}", below(rng, 7))}))
                .collect();
            let (status, v) = call(
                addr,
                "POST",
                "/collections/stable/documents",
                Some(json!({"documents": docs})),
            );
            assert_eq!(status, 200, "{v}");
            for id in ids {
                model.insert(id, true);
            }
            return;
        }
        3 => {
            let ids: Vec<String> = (0..1 + below(rng, 3)).map(|_| own(rng)).collect();
            let (status, v) = call(
                addr,
                "DELETE",
                "/collections/stable/documents",
                Some(json!({ "ids": ids })),
            );
            assert_eq!(status, 200, "{v}");
            for id in ids {
                model.insert(id, false);
            }
            return;
        }
        4 | 5 => {
            let filter = match below(rng, 3) {
                0 => Value::Null,
                1 => json!({"must": [{"has_id": [own(rng), own(rng)]}]}),
                _ => json!({"must_not": [{"key": "k", "match": {"value": "x"}}]}),
            };
            let body = match below(rng, 3) {
                0 => json!({"query": "topic 3", "limit": 5, "filter": filter}),
                1 => {
                    json!({"query": "document", "dim": 384, "funnel": {"dim": 64, "candidates": 20}, "filter": filter})
                }
                _ => json!({"query": "document", "dim": 64, "exact": true}),
            };
            (
                "POST",
                "/collections/stable/search".into(),
                Some(body),
                &[200],
            )
        }
        6 => match below(rng, 2) {
            0 => (
                "POST",
                "/embed".into(),
                Some(json!({"inputs": ["a", "b c"], "dim": 64})),
                &[200],
            ),
            _ => (
                "POST",
                "/v1/embeddings".into(),
                Some(json!({"input": "x", "dimensions": 64})),
                &[200],
            ),
        },
        7 => (
            "PUT",
            "/collections/churn".into(),
            Some(json!({"dims": [64, 384]})),
            &[200, 201],
        ),
        8 => ("DELETE", "/collections/churn".into(), None, &[200, 404]),
        9 => (
            "POST",
            "/collections/churn/documents".into(),
            Some(
                json!({"documents": [{"id": format!("c{t}-{}", rng.next_u64()), "text": "churn"}]}),
            ),
            &[200, 404],
        ),
        10 => match below(rng, 3) {
            0 => (
                "POST",
                "/collections/churn/search".into(),
                Some(json!({"query": "churn"})),
                &[200, 404],
            ),
            1 => ("GET", "/collections/churn".into(), None, &[200, 404]),
            _ => ("GET", "/collections".into(), None, &[200]),
        },
        _ => {
            // Malformed requests: refused, never a 5xx.
            let bodies = [
                json!({"query": "x", "dim": 7}),
                json!({"vector": [1e39], "dim": 64}),
                json!({"documents": [{"text": 5}]}),
                json!({"query": "x", "filter": {"must": [{"has_id": {}}]}}),
                json!([1, 2]),
            ];
            let body = bodies[below(rng, bodies.len())].clone();
            let path = [
                "/collections/stable/search",
                "/collections/stable/documents",
            ][below(rng, 2)];
            ("POST", path.into(), Some(body), &[400])
        }
    };
    let (status, v) = call(addr, method, &path, body.clone());
    assert!(
        allowed.contains(&status),
        "{method} {path} {body:?}: {status} {v}"
    );
}

/// A seeded storm: 8 threads × 300 mixed operations (writes and deletes of their own documents
/// in one collection, searches, embeddings, lifecycle churn of another collection, malformed
/// requests). Every answer is an allowed one (no 5xx), the process lives, and the stable
/// collection holds exactly what was acknowledged, before and after a kill -9.
/// `MRL_STORM_SEED` replays a seed.
#[test]
fn seeded_storm_of_mixed_operations_keeps_exactly_what_was_acknowledged() {
    let seed: u64 = std::env::var("MRL_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129);
    eprintln!("storm seed {seed} (MRL_STORM_SEED replays it)");
    let data = scratch("storm");
    let mut s = Server::start(&data);
    s.ok("PUT", "/collections/stable", json!({"dims": [64, 384]}));
    let addr = s.addr;
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0xA076_1D64_78BD_642F));
                let mut model = HashMap::new();
                for _ in 0..OPS {
                    storm_op(addr, t, &mut rng, &mut model);
                }
                model
            })
        })
        .collect();
    let mut expected = BTreeSet::new();
    for th in threads {
        let model = th
            .join()
            .expect("a storm thread failed; see its message above");
        expected.extend(
            model
                .into_iter()
                .filter(|(_, present)| *present)
                .map(|(id, _)| id),
        );
    }
    eprintln!(
        "storm: {} operations in {:.1} s, {} documents expected",
        THREADS * OPS,
        start.elapsed().as_secs_f64(),
        expected.len()
    );
    assert!(s.alive(), "the server died during the storm");
    assert_eq!(stored_ids(&s, "stable"), expected);
    s.kill();
    let s = Server::start(&data);
    assert_eq!(stored_ids(&s, "stable"), expected, "after kill -9");
    s.stop();
}
