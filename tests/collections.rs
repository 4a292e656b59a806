//! Collections end to end: lifecycle, documents embedded once and stored at every size,
//! search with filters and funnels, and durability across a clean restart and a kill -9 right
//! after a write was acknowledged (the server runs as a separate `mrl serve` process); the
//! same on a real Qdrant server (`--qdrant-url`), with restarts of mrl and of Qdrant.

mod common;

use std::path::PathBuf;

use common::qdrant::QdrantServer;
use common::server::Server;
use common::shared;
use serde_json::{json, Value};

/// Stores `(id, text)` documents in the `sci` collection.
fn add(s: &Server, docs: &[(String, String)]) {
    s.add_documents("sci", docs);
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mrl-coll-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The first `n` SciFact documents (title + text) with their ids.
fn hit_ids(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn collection_lifecycle_documents_search_and_errors() {
    let data = scratch("lifecycle");
    let s = Server::start(&data);
    lifecycle(&s);
    s.stop();
}

/// The same lifecycle with the collections on a real Qdrant server (`mrl serve
/// --qdrant-url`): the same answers, statuses and error fields as the embedded store.
#[test]
fn the_same_lifecycle_on_a_qdrant_server() {
    let Some(_) = common::needs(&["qdrant"]) else {
        return;
    };
    let qdrant = QdrantServer::start(&shared());
    let data = scratch("lifecycle-remote");
    let s = Server::start_with(&data, &["--qdrant-url", &qdrant.url()]);
    lifecycle(&s);
    s.stop();
}

/// SIGTERM drains: a request in flight when the signal arrives still gets its whole answer,
/// and the process then exits 0.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let data = scratch("sigterm");
    let s = Server::start(&data);
    let addr = s.addr;
    // About two seconds of embedding here: still running when the signal comes.
    let texts: Vec<String> = (0..256)
        .map(|i| format!("a long passage about topic {i} and its many details. ").repeat(12))
        .collect();
    let request = std::thread::spawn(move || {
        common::server::call(addr, "POST", "/embed", Some(json!({ "inputs": texts })))
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let exit = s.stop();
    let (status, v) = request.join().unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["embeddings"].as_array().map(Vec::len), Some(256));
    assert!(exit.success(), "{exit:?}");
}

/// Start order does not matter. `mrl serve --qdrant-url` starts while its Qdrant server is
/// down: `/health` answers at once and says the store is unavailable (`/metrics` too), the
/// collection routes answer 503, and once the server comes up they work without a restart.
/// `mrl index --qdrant-url` waits for the server a bounded time, then says why it gave up.
#[test]
fn a_server_started_before_its_qdrant_works_once_qdrant_is_up() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let mut qdrant = QdrantServer::start(&shared());
    qdrant.kill();
    let data = scratch("start-order");
    let s = Server::start_with(&data, &["--qdrant-url", &qdrant.url()]);
    let store_up = |want: &str| {
        let (_, text) = common::server::raw(s.addr, "GET", "/metrics", b"");
        text.lines().any(|l| l == format!("mrl_store_up {want}"))
    };
    let (status, health) = s.call("GET", "/health", None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(
        health["store"],
        json!({"kind": "qdrant", "available": false})
    );
    assert!(store_up("0"));
    let create = json!({"dims": [128, 384]});
    let (status, v) = s.call("PUT", "/collections/late", Some(create.clone()));
    assert_eq!(
        (status, v["error"]["type"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );

    let index = |wait: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mrl"))
            .args(["index", "--collection", "late", "--input"])
            .arg(shared().join("data/scifact/corpus.jsonl"))
            .args([
                "--qdrant-url",
                &qdrant.url(),
                "--qdrant-wait",
                wait,
                "--data-dir",
            ])
            .arg(data.join("job"))
            .env("MRL_MODEL", common::model_dir())
            .output()
            .unwrap()
    };
    let out = index("1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("waiting for the store"), "{err}");

    qdrant.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, v) = s.call("PUT", "/collections/late", Some(create.clone()));
        if status == 201 {
            break;
        }
        assert!(
            status == 503 && std::time::Instant::now() < deadline,
            "after Qdrant came up: {status} {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.add_documents("late", &common::scifact_corpus(5));
    while !(s.call("GET", "/health", None).1["store"]["available"] == true && store_up("1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the probe never saw Qdrant up"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.stop();
}

/// With the data on a Qdrant server: a restart of mrl finds every collection and document;
/// while Qdrant is down every request that needs it fails cleanly (503, type `unavailable`)
/// and mrl keeps running; once Qdrant is back the same mrl process answers as before and
/// takes writes again.
#[test]
fn restarts_of_mrl_and_of_qdrant_lose_nothing_and_outages_are_503() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let mut qdrant = QdrantServer::start(&shared());
    let data = scratch("remote-restarts");
    let args = ["--qdrant-url".to_string(), qdrant.url()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start_with(&data, &args);
    s.ok("PUT", "/collections/sci", json!({"dims": [128, 384]}));
    let docs = common::scifact_corpus(45);
    add(&s, &docs[..40]);
    let query = json!({"query": "vitamin D and bone density", "limit": 5, "funnel": {"dim": 128, "candidates": 20}});
    let before = hit_ids(&s.ok("POST", "/collections/sci/search", query.clone()));
    assert_eq!(before.len(), 5);
    s.stop();

    let mut s = Server::start_with(&data, &args);
    assert_eq!(s.ok("GET", "/collections/sci", Value::Null)["count"], 40);
    assert_eq!(
        hit_ids(&s.ok("POST", "/collections/sci/search", query.clone())),
        before
    );

    qdrant.kill();
    let batch: Vec<Value> = docs[40..]
        .iter()
        .map(|(id, t)| json!({"id": id, "text": t}))
        .collect();
    for (method, path, body) in [
        ("POST", "/collections/sci/search", Some(query.clone())),
        ("GET", "/collections/sci", None),
        ("GET", "/collections", None),
        (
            "POST",
            "/collections/sci/documents",
            Some(json!({ "documents": batch })),
        ),
    ] {
        let (st, v) = s.call(method, path, body);
        assert_eq!(
            (st, v["error"]["type"].as_str()),
            (503, Some("unavailable")),
            "{method} {path} while Qdrant is down: {v}"
        );
    }
    assert!(s.alive(), "mrl must outlive its store's outage");

    qdrant.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        let (st, v) = s.call("POST", "/collections/sci/search", Some(query.clone()));
        if st == 200 {
            break hit_ids(&v);
        }
        assert!(
            st == 503 && std::time::Instant::now() < deadline,
            "after Qdrant restarted: {st} {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(after, before);
    assert_eq!(s.ok("GET", "/collections/sci", Value::Null)["count"], 40);
    add(&s, &docs[40..]);
    assert_eq!(s.ok("GET", "/collections/sci", Value::Null)["count"], 45);
    s.stop();
}

/// Large-collection options in a create body: a Qdrant server takes them (and reports them
/// back), the embedded store refuses them with a 400 naming the option, and a bad value is a
/// 400 naming the option on both.
#[test]
fn large_collection_options_over_http() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let data = scratch("layout-embedded");
    let s = Server::start(&data);
    for (body, field) in [
        (json!({"dims": [64, 384], "shards": 2}), "shards"),
        (json!({"dims": [64, 384], "on_disk": true}), "on_disk"),
        (json!({"dims": [64, 384], "quantize": [128]}), "quantize"),
        (json!({"dims": [64, 384], "on_disk": "yes"}), "on_disk"),
        (
            json!({"dims": [64, 384], "hnsw": [{"dim": 384, "mm": 0}]}),
            "hnsw",
        ),
    ] {
        let (st, v) = s.call("PUT", "/collections/big", Some(body.clone()));
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    assert_eq!(s.call("GET", "/collections/big", None).0, 404);
    s.stop();

    let qdrant = QdrantServer::start(&shared());
    let data = scratch("layout-remote");
    let s = Server::start_with(&data, &["--qdrant-url", &qdrant.url()]);
    let layout = json!({"shards": 2, "replicas": 1, "on_disk": true, "quantize": [64],
                        "hnsw": [{"dim": 384, "m": 0}]});
    let mut body = layout.clone();
    body["dims"] = json!([64, 384]);
    let (st, v) = s.call("PUT", "/collections/sci", Some(body.clone()));
    assert_eq!((st, &v["layout"]), (201, &layout), "{v}");
    assert_eq!(s.call("PUT", "/collections/sci", Some(body)).0, 200);
    assert_eq!(
        s.ok("GET", "/collections/sci", Value::Null)["layout"],
        layout
    );
    let (st, v) = s.call(
        "PUT",
        "/collections/x",
        Some(json!({"dims": [64], "replicas": 0})),
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("replicas")),
        "{v}"
    );
    let docs = common::scifact_corpus(30);
    add(&s, &docs);
    let v = s.ok(
        "POST",
        "/collections/sci/search",
        json!({"query": docs[7].1, "dim": 384, "funnel": {"dim": 64, "candidates": 20}, "limit": 3}),
    );
    assert_eq!(hit_ids(&v)[0], docs[7].0, "{v}");
    s.stop();
}

/// Lifecycle, documents, search (dims, filter, funnel, exact), the errors of each, deletes.
fn lifecycle(s: &Server) {
    let spec = json!({"dims": [64, 384]});
    let (st, v) = s.call("PUT", "/collections/notes", Some(spec.clone()));
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["dims"], json!([64, 384]));
    assert_eq!(
        s.call("PUT", "/collections/notes", Some(spec)).0,
        200,
        "idempotent"
    );
    let (st, v) = s.call("PUT", "/collections/notes", Some(json!({"dims": [128]})));
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["type"], "conflict");
    let (st, v) = s.call(
        "PUT",
        "/collections/bad%20name",
        Some(json!({"dims": [64]})),
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("name")),
        "{v}"
    );
    let (st, v) = s.call("PUT", "/collections/x", Some(json!({"dims": [999]})));
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("dims")),
        "{v}"
    );

    let docs = json!({"documents": [
        {"id": "cat", "text": "The cat sleeps on the warm windowsill.", "payload": {"lang": "en", "n": 1}},
        {"id": "bank", "text": "The central bank raised interest rates again.", "payload": {"lang": "en", "n": 2}},
        {"id": "chat", "text": "Le chat dort sur le rebord de la fenêtre.", "payload": {"lang": "fr", "n": 3}},
        {"text": "Glaciers are retreating in the Alps."}
    ]});
    let v = s.ok("POST", "/collections/notes/documents", docs.clone());
    assert_eq!(v["ids"].as_array().unwrap().len(), 4);
    // Same ids again: replaced, not duplicated (the text-hash id too).
    s.ok("POST", "/collections/notes/documents", docs);
    let info = s.ok("GET", "/collections/notes", Value::Null);
    assert_eq!(info["count"], 4);
    assert_eq!(info["profile"], "full");
    assert_eq!(info["model"], "all-MiniLM-L6-v2");
    let list = s.ok("GET", "/collections", Value::Null);
    assert_eq!(list["collections"][0]["name"], "notes");

    for dim in [64, 384] {
        let v = s.ok(
            "POST",
            "/collections/notes/search",
            json!({"query": "where is the cat sleeping?", "dim": dim, "limit": 2}),
        );
        assert_eq!(hit_ids(&v)[0], "cat", "dim {dim}: {v}");
        assert_eq!(v["hits"][0]["payload"]["lang"], "en");
        assert!(v["hits"][0]["text"].as_str().unwrap().contains("cat"));
    }
    let v = s.ok(
        "POST",
        "/collections/notes/search",
        json!({"query": "where is the cat sleeping?", "filter": {"must": [{"key": "lang", "match": {"value": "fr"}}]}}),
    );
    assert_eq!(hit_ids(&v), ["chat"]);
    let v = s.ok(
        "POST",
        "/collections/notes/search",
        json!({"query": "interest rates", "dim": 384, "funnel": {"dim": 64, "candidates": 3}, "limit": 1}),
    );
    assert_eq!(hit_ids(&v), ["bank"]);
    let v = s.ok(
        "POST",
        "/collections/notes/search",
        json!({"query": "interest rates", "exact": true, "limit": 1}),
    );
    assert_eq!(hit_ids(&v), ["bank"]);

    for (body, status, field) in [
        (json!({"query": "x", "dim": 128}), 400, Some("dim")),
        (json!({"query": "x", "limit": 0}), 400, Some("limit")),
        (
            json!({"query": "x", "dim": 64, "funnel": {"dim": 384}}),
            400,
            Some("funnel.dim"),
        ),
        (
            json!({"vector": [0.1, 0.2], "dim": 64}),
            400,
            Some("vector"),
        ),
        (
            json!({"query": "x", "filter": {"bogus": 1}}),
            400,
            Some("filter"),
        ),
        (json!({}), 400, Some("query")),
        (json!({"query": "x", "exact": "yes"}), 400, Some("exact")),
    ] {
        let (st, v) = s.call("POST", "/collections/notes/search", Some(body.clone()));
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (status, field),
            "{body}: {v}"
        );
    }
    let (st, v) = s.call(
        "POST",
        "/collections/nope/search",
        Some(json!({"query": "x"})),
    );
    assert_eq!(
        (st, v["error"]["type"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, v) = s.call(
        "POST",
        "/collections/notes/documents",
        Some(json!({"documents": [{"text": ""}]})),
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("documents[0].text")),
        "{v}"
    );

    s.ok(
        "DELETE",
        "/collections/notes/documents",
        json!({"ids": ["cat", "bank"]}),
    );
    assert_eq!(s.ok("GET", "/collections/notes", Value::Null)["count"], 2);
    s.ok("DELETE", "/collections/notes", Value::Null);
    assert_eq!(s.call("GET", "/collections/notes", None).0, 404);
}

#[test]
fn acknowledged_writes_survive_restart_and_kill_9() {
    let Some(_) = common::needs(&["data/scifact"]) else {
        return;
    };
    let data = scratch("durable");
    let docs = common::scifact_corpus(40);
    let s = Server::start(&data);
    s.ok("PUT", "/collections/sci", json!({"dims": [128, 384]}));
    for chunk in docs.chunks(20) {
        add(&s, chunk);
    }
    let query = json!({"query": "vitamin D and bone density", "limit": 5});
    let before = hit_ids(&s.ok("POST", "/collections/sci/search", query.clone()));
    s.stop();

    let s = Server::start(&data);
    assert_eq!(s.ok("GET", "/collections/sci", Value::Null)["count"], 40);
    assert_eq!(
        hit_ids(&s.ok("POST", "/collections/sci/search", query.clone())),
        before
    );
    // One more acknowledged write, then kill -9 at once.
    add(&s, &common::scifact_corpus(45)[40..]);
    s.kill();

    let s = Server::start(&data);
    assert_eq!(s.ok("GET", "/collections/sci", Value::Null)["count"], 45);
    let after = hit_ids(&s.ok("POST", "/collections/sci/search", query));
    assert_eq!(after.len(), 5);
    s.stop();
}

/// A funnel (prefetch 100 on 256 dims, rescore at 384) against exact search at 384 on a SciFact
/// slice: the same top 10 for at least 99% of queries.
#[test]
fn funnel_search_matches_exact_search_on_scifact() {
    let Some(_) = common::needs(&["data/scifact"]) else {
        return;
    };
    let data = scratch("funnel");
    let s = Server::start(&data);
    s.ok("PUT", "/collections/sci", json!({"dims": [256, 384]}));
    let docs = common::scifact_corpus(300);
    for chunk in docs.chunks(100) {
        add(&s, chunk);
    }
    let queries = common::scifact_queries(60);
    let mut same = 0;
    for q in &queries {
        let exact = hit_ids(&s.ok(
            "POST",
            "/collections/sci/search",
            json!({"query": q, "dim": 384, "limit": 10, "exact": true}),
        ));
        let funnel = hit_ids(&s.ok(
            "POST",
            "/collections/sci/search",
            json!({"query": q, "dim": 384, "limit": 10, "funnel": {"dim": 256, "candidates": 100}}),
        ));
        assert_eq!(exact.len(), 10);
        if exact != funnel {
            eprintln!("DIFF\n{exact:?}\n{funnel:?}");
        }
        same += usize::from(exact == funnel);
    }
    let share = same as f64 / queries.len() as f64;
    assert!(
        share >= 0.99,
        "funnel top-10 equals exact for {same} of {} queries",
        queries.len()
    );
    s.stop();
}

/// `params.hnsw_ef` (Qdrant's search-time HNSW candidates) is taken by both stores and changes
/// nothing a small collection returns; a bad value or an unknown knob is a 400 naming it.
#[test]
fn search_params_reach_both_stores() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let qdrant = QdrantServer::start(&shared());
    for (label, extra) in [
        ("embedded", vec![]),
        ("remote", vec!["--qdrant-url", &qdrant.url()]),
    ] {
        let s = Server::start_with(&scratch(&format!("params-{label}")), &extra);
        s.ok("PUT", "/collections/sci", json!({"dims": [64, 384]}));
        add(&s, &common::scifact_corpus(40));
        let query = json!({"query": "vitamin D and bone density", "limit": 5});
        let plain = hit_ids(&s.ok("POST", "/collections/sci/search", query.clone()));
        for ef in [8, 128] {
            let mut q = query.clone();
            q["params"] = json!({ "hnsw_ef": ef });
            let hits = hit_ids(&s.ok("POST", "/collections/sci/search", q));
            assert_eq!(hits, plain, "{label}: hnsw_ef {ef}");
        }
        for (params, field) in [
            (json!({"hnsw_ef": "many"}), "params.hnsw_ef"),
            (json!({"hnsw_ef": -1}), "params.hnsw_ef"),
            (json!({"hnsw": 8}), "params.hnsw"),
        ] {
            let mut q = query.clone();
            q["params"] = params.clone();
            let (status, v) = s.call("POST", "/collections/sci/search", Some(q));
            assert_eq!(
                (status, v["error"]["field"].as_str()),
                (400, Some(field)),
                "{label} {params}: {v}"
            );
        }
        s.stop();
    }
}

/// An adaptive collection over HTTP, on the embedded store and on a Qdrant server: bad
/// options are 400s naming the field; at its threshold it re-nests (`GET` shows the rotation,
/// `/metrics` counts it); its full-width results are a generic twin's; a vector query sends
/// the full vector.
fn adaptive(s: &Server) {
    for (body, field) in [
        (json!({"dims": [64], "adapt": "yes"}), "adapt"),
        (
            json!({"dims": [64], "adapt": true, "adapt_threshold": 0}),
            "adapt_threshold",
        ),
        (
            json!({"dims": [64], "adapt_threshold": 5}),
            "adapt_threshold",
        ),
        (
            json!({"dims": [64], "adapt": true, "adapt_threshold": -3}),
            "adapt_threshold",
        ),
        (json!({"dims": [384], "adapt": true}), "dims"),
    ] {
        let (st, v) = s.call("PUT", "/collections/bad", Some(body.clone()));
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    assert_eq!(s.call("GET", "/collections/bad", None).0, 404);

    let (st, v) = s.call(
        "PUT",
        "/collections/ad",
        Some(json!({"dims": [64, 128], "adapt": true, "adapt_threshold": 30})),
    );
    assert_eq!((st, &v["adapt"]["threshold"]), (201, &json!(30)), "{v}");
    assert_eq!(
        v["dims"],
        json!([64, 128, 384]),
        "the full width is stored too"
    );
    s.ok("PUT", "/collections/gen", json!({"dims": [64, 128, 384]}));
    let docs = common::scifact_corpus(30);
    let batch: Vec<Value> = docs
        .iter()
        .map(|(id, t)| json!({"id": id, "text": t}))
        .collect();
    for c in ["ad", "gen"] {
        s.ok(
            "POST",
            &format!("/collections/{c}/documents"),
            json!({ "documents": batch.clone() }),
        );
    }
    let start = std::time::Instant::now();
    let info = loop {
        let info = s.ok("GET", "/collections/ad", Value::Null);
        if info["rotation"]["version"] == 1 && info.get("renest").is_none() {
            break info;
        }
        assert!(start.elapsed().as_secs() < 60, "no re-nest: {info}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(info["rotation"]["points"], 30, "{info}");
    assert!(
        info["rotation"]["fitted_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'),
        "{info}"
    );
    let (_, metrics) = common::server::raw(s.addr, "GET", "/metrics", b"");
    let renests: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mrl_renests_total "))
        .unwrap_or_else(|| panic!("no mrl_renests_total in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(renests >= 1.0, "{renests}");

    let query = json!({"query": "vitamin D and bone density", "limit": 10});
    let hits = |c: &str, q: &Value| s.ok("POST", &format!("/collections/{c}/search"), q.clone());
    let (a, g) = (hits("ad", &query), hits("gen", &query));
    assert_eq!(hit_ids(&a), hit_ids(&g));
    for (x, y) in a["hits"]
        .as_array()
        .unwrap()
        .iter()
        .zip(g["hits"].as_array().unwrap())
    {
        let (x, y) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
    }
    // At 64 dims (the rotated slot) a document's own text finds it first: the query and the
    // points are under one rotation.
    for (id, text) in docs.iter().step_by(7) {
        let own = json!({"query": text, "dim": 64, "limit": 3});
        assert_eq!(&hit_ids(&hits("ad", &own))[0], id);
    }
    let (st, v) = s.call(
        "POST",
        "/collections/ad/search",
        Some(json!({"vector": vec![0.1; 64], "dim": 64})),
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("vector")),
        "{v}"
    );
    let (st, v) = s.call(
        "POST",
        "/collections/ad/search",
        Some(json!({"vector": vec![0.1; 384], "dim": 64, "limit": 3})),
    );
    assert_eq!(
        (st, v["hits"].as_array().map(Vec::len)),
        (200, Some(3)),
        "{v}"
    );
}

#[test]
fn adaptive_collections_over_http_on_both_stores() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let data = scratch("adapt-embedded");
    let s = Server::start(&data);
    adaptive(&s);
    s.stop();
    let qdrant = QdrantServer::start(&shared());
    let data = scratch("adapt-remote");
    let s = Server::start_with(&data, &["--qdrant-url", &qdrant.url()]);
    adaptive(&s);
    s.stop();
}
