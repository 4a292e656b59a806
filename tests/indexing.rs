//! The batch indexing job (`mrl index`) and the library's `Index`: a kill -9 mid-run and a
//! rerun end with exactly the corpus's documents, malformed lines are reported by number
//! (or stop the job with --strict), and the library indexes and searches without a server.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::qdrant::QdrantServer;
use common::server::Server;
use mrl::{Document, Index, SearchOptions};
use mrl_core::store::{EdgeStore, VectorStore};
use serde_json::{json, Value};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrl-indexing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first `n` SciFact documents as BEIR lines, shortened so the test stays quick.
fn scifact_lines(n: usize) -> Vec<String> {
    let path = common::shared().join("data/scifact/corpus.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
        .lines()
        .take(n)
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let text: String = v["text"].as_str().unwrap().chars().take(300).collect();
            v["text"] = Value::String(text);
            v.to_string()
        })
        .collect()
}

/// Writes the corpus with malformed lines at known places; returns the valid ids and the
/// (1-based) numbers of the malformed lines.
fn corpus_with_bad_lines(path: &Path, n: usize) -> (HashSet<String>, Vec<usize>) {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut ids = HashSet::new();
    let mut bad = Vec::new();
    for (i, line) in scifact_lines(n).into_iter().enumerate() {
        let v: Value = serde_json::from_str(&line).unwrap();
        ids.insert(v["_id"].as_str().unwrap().to_string());
        out.push(line.into_bytes());
        match i {
            5 => out.push(b"{\"_id\": \"broken\", \"text\": ".to_vec()),
            70 => out.push(b"{\"_id\": \"no-text\", \"title\": \"t\"}".to_vec()),
            150 => out.push(b"\xff\xfe not utf-8".to_vec()),
            200 => out.push(Vec::new()), // a blank line is no document and no error
            _ => continue,
        }
        if i != 200 {
            bad.push(out.len());
        }
    }
    let mut bytes = out.join(&b'\n');
    bytes.push(b'\n');
    std::fs::write(path, bytes).unwrap();
    (ids, bad)
}

fn index_cmd(data: &Path, input: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mrl"));
    cmd.args(["index", "--collection", "docs", "--input"])
        .arg(input)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("MRL_MODEL", common::model_dir())
        .env("RUST_LOG", "warn");
    cmd
}

fn summary(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "mrl index failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

fn stored_ids(data: &Path) -> Vec<String> {
    EdgeStore::open(data).unwrap().ids("docs").unwrap()
}

#[test]
fn a_killed_job_resumes_to_exactly_the_corpus_with_bad_lines_reported() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let dir = scratch("resume");
    let (input, data) = (dir.join("corpus.jsonl"), dir.join("data"));
    let (ids, bad) = corpus_with_bad_lines(&input, 600);

    let mut child = index_cmd(&data, &input, &["--batch", "16", "--dims", "64,384"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once a few chunks are durable but well before the end.
    let record = data.join("jobs").join("docs.index.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    let killed_at = loop {
        assert!(Instant::now() < deadline, "the job made no progress");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the job finished ({status}) before it could be killed");
        }
        let indexed = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["indexed"].as_u64())
            .unwrap_or(0);
        if indexed >= 64 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break indexed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!((killed_at as usize) < ids.len());

    let s = summary(
        &index_cmd(&data, &input, &["--batch", "16"])
            .output()
            .unwrap(),
    );
    assert!(s["resumed_at_line"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["indexed"], ids.len(), "{s}");
    assert_eq!(s["count"], ids.len(), "{s}");
    assert_eq!(s["spec"]["dims"], json!([64, 384]));
    let skipped: Vec<u64> = s["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["line"].as_u64().unwrap())
        .collect();
    assert_eq!(skipped, bad.iter().map(|&l| l as u64).collect::<Vec<_>>());
    assert_eq!(s["skipped_count"], bad.len());
    let reasons = s["skipped"].to_string();
    for needle in ["malformed JSON", "\\\"text\\\"", "UTF-8"] {
        assert!(reasons.contains(needle), "{needle}: {reasons}");
    }

    // No duplicates and nothing missing: the stored ids are exactly the corpus's.
    let stored = stored_ids(&data);
    assert_eq!(stored.len(), ids.len());
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), ids);

    // A finished job reruns as a no-op.
    let again = summary(&index_cmd(&data, &input, &[]).output().unwrap());
    assert_eq!(again["indexed_now"], 0);
    assert_eq!(again["count"], ids.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--part i/n`: n jobs over one input index every document once between them, each
/// reports only its own malformed lines, keeps its own progress record and reruns as a no-op.
#[test]
fn parts_index_an_input_disjointly_and_completely() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let dir = scratch("parts");
    let (input, data) = (dir.join("corpus.jsonl"), dir.join("data"));
    let (ids, bad) = corpus_with_bad_lines(&input, 160);
    let mut indexed = 0;
    let mut skipped = Vec::new();
    for part in ["1/3", "2/3", "3/3"] {
        let s = summary(
            &index_cmd(&data, &input, &["--part", part, "--dims", "64,384"])
                .output()
                .unwrap(),
        );
        assert_eq!(
            s["part"],
            json!({"index": part[..1].parse::<u64>().unwrap(), "count": 3})
        );
        let n = s["indexed"].as_u64().unwrap();
        assert!(n > 40 && n < 60, "part {part} indexed {n}: {s}");
        indexed += n;
        skipped.extend(
            s["skipped"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["line"].as_u64().unwrap() as usize),
        );
        let record = format!("docs.part-{}-of-3.index.json", &part[..1]);
        assert!(data.join("jobs").join(record).exists());
    }
    assert_eq!(indexed as usize, ids.len());
    skipped.sort_unstable();
    assert_eq!(skipped, bad);
    let stored = stored_ids(&data);
    assert_eq!(stored.len(), ids.len());
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), ids);
    let again = summary(
        &index_cmd(&data, &input, &["--part", "2/3"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["indexed_now"], 0);
    assert_eq!(again["count"], ids.len());
    for bad_part in ["0/3", "4/3", "3"] {
        let out = index_cmd(&data, &input, &["--part", bad_part])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad_part}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("i/n"),
            "{bad_part}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 3-node Qdrant cluster on loopback: a collection of 3 shards × 2 replicas filled by two
/// `mrl index --part` workers at once; with one node SIGKILLed every query returns the same
/// top 10 and the count stays exact; the node restarted, the count is still exact.
#[test]
fn a_three_node_cluster_filled_by_two_workers_survives_a_killed_node() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let dir = scratch("cluster");
    let mut nodes = QdrantServer::start_cluster(&common::shared(), 3);
    let url = nodes[0].url();
    let s = Server::start_with(&dir.join("serve"), &["--qdrant-url", &url]);
    s.ok(
        "PUT",
        "/collections/docs",
        json!({"dims": [64, 384], "shards": 3, "replicas": 2}),
    );
    let input = dir.join("corpus.jsonl");
    let lines = scifact_lines(300);
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let workers: Vec<_> = ["1/2", "2/2"]
        .iter()
        .map(|part| {
            index_cmd(
                &dir.join("jobs"),
                &input,
                &["--part", part, "--qdrant-url", &url],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let indexed: u64 = workers
        .into_iter()
        .map(|w| {
            summary(&w.wait_with_output().unwrap())["indexed"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(indexed, 300);
    let count = |s: &Server| s.ok("GET", "/collections/docs", Value::Null)["count"].clone();
    assert_eq!(count(&s), 300);
    let info = nodes[0].get("/collections/docs")["result"]["config"]["params"].clone();
    assert_eq!(
        (
            info["shard_number"].as_u64(),
            info["replication_factor"].as_u64()
        ),
        (Some(3), Some(2)),
        "{info}"
    );

    let queries = common::scifact_queries(8);
    let top10 = |s: &Server| -> Vec<Value> {
        queries
            .iter()
            .map(|q| {
                let v = s.ok(
                    "POST",
                    "/collections/docs/search",
                    json!({"query": q, "limit": 10, "exact": true}),
                );
                let ids: Vec<Value> = v["hits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h["id"].clone())
                    .collect();
                assert_eq!(ids.len(), 10, "{v}");
                Value::Array(ids)
            })
            .collect()
    };
    let before = top10(&s);
    // The node about to die holds replicas, so the others must answer for them.
    let local = nodes[2].get("/collections/docs/cluster")["result"]["local_shards"].clone();
    assert!(!local.as_array().unwrap().is_empty(), "{local}");
    nodes[2].kill();
    assert_eq!(top10(&s), before, "with one node of three killed");
    assert_eq!(count(&s), 300);
    nodes[2].restart();
    assert_eq!(count(&s), 300);
    assert_eq!(top10(&s), before);
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two processes share one adaptive collection on a Qdrant server through its re-nests:
/// `mrl index --part 1/2` fills half a corpus while `mrl serve` takes the other half over HTTP
/// and answers searches, and either may re-nest (from 16 documents, then each time the
/// documents a process has seen double: three times at least). A search for an acknowledged document's own text at a rotated size
/// finds it with cosine 1: a point whose rotated vector was cut under another rotation, or is
/// missing from the slot searched, would not be. At the end the collection holds every
/// document, each found so, under the rotation both processes agree on.
#[test]
fn two_processes_share_an_adaptive_collection_through_its_re_nests() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let dir = scratch("shared-renest");
    let qdrant = QdrantServer::start(&common::shared());
    let url = qdrant.url();
    let s = Server::start_with(&dir.join("serve"), &["--qdrant-url", &url]);
    s.ok(
        "PUT",
        "/collections/docs",
        json!({"dims": [64, 384], "adapt": true, "adapt_threshold": 16}),
    );
    let lines = scifact_lines(480);
    let input = dir.join("corpus.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let docs: Vec<(String, String)> = lines.iter().map(|l| common::id_and_text(l)).collect();
    let worker = index_cmd(
        &dir.join("job"),
        &input,
        &["--part", "1/2", "--batch", "8", "--qdrant-url", &url],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Found by its own text at 64 dims (rotated), as the top hit with cosine 1.
    let found = |(id, text): &(String, String)| {
        let v = s.ok(
            "POST",
            "/collections/docs/search",
            json!({"query": text, "dim": 64, "limit": 1, "exact": true}),
        );
        let hit = &v["hits"][0];
        assert_eq!(hit["id"].as_str(), Some(id.as_str()), "{id}: {v}");
        let score = hit["score"].as_f64().unwrap();
        assert!(
            score > 0.999,
            "{id} scores {score} against its own text: {v}"
        );
    };
    let mine: Vec<&(String, String)> = docs.iter().skip(1).step_by(2).collect();
    let mut acknowledged: Vec<&(String, String)> = Vec::new();
    for (i, batch) in mine.chunks(8).enumerate() {
        let batch: Vec<(String, String)> = batch.iter().map(|d| (*d).clone()).collect();
        s.add_documents("docs", &batch);
        acknowledged.extend(mine.iter().skip(i * 8).take(batch.len()));
        // An early document and the latest, while the other process writes and re-nests.
        found(acknowledged[(i * 5) % acknowledged.len()]);
        found(acknowledged[acknowledged.len() - 1]);
    }
    let out = worker.wait_with_output().unwrap();
    assert_eq!(summary(&out)["indexed"], 240);
    // Settled: the worker is gone, and the server runs no re-nest (twice, 300 ms apart).
    let start = Instant::now();
    let mut last = Value::Null;
    let info = loop {
        let info = s.ok("GET", "/collections/docs", Value::Null);
        if info.get("renest").is_none() && info["rotation"] == last["rotation"] {
            break info;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{info}");
        last = info;
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(info["count"], 480, "{info}");
    assert!(info["rotation"]["version"].as_u64() >= Some(3), "{info}");
    for d in &docs {
        found(d);
    }

    // A third process (this one) re-nests; the server learns of it from its next write, which
    // fills the new rotation's slot: a process that searches afresh finds what it wrote.
    let third = mrl::IndexConfig::new(dir.join("third"), "docs")
        .qdrant(&url, None)
        .dims(vec![64, 384])
        .adapt(Some(16))
        .open(common::embedder().clone())
        .unwrap();
    let before = info["rotation"]["version"].as_u64().unwrap();
    // Newer than any rotation seen (a re-nest the index job's last writes were due may land
    // between that read and this one, so not always exactly the next).
    let renested = third.collection().renest_now().unwrap().version;
    assert!(
        renested > before,
        "re-nest gave version {renested}, seen {before}"
    );
    let late: Vec<(String, String)> = scifact_lines(496)[480..]
        .iter()
        .map(|l| common::id_and_text(l))
        .collect();
    s.add_documents("docs", &late);
    let opts = mrl::SearchOptions::new(64, 1).exact(true);
    for (id, text) in late.iter().chain(docs.iter().step_by(16)) {
        let hits = third.search_with(text, &opts).unwrap();
        assert_eq!(hits[0].id, *id, "{hits:?}");
        assert!(hits[0].score > 0.999, "{id}: {hits:?}");
    }
    s.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn strict_stops_at_the_first_malformed_line_and_bad_options_fail_early() {
    let Some(_) = common::needs(&["qdrant", "data/scifact"]) else {
        return;
    };
    let dir = scratch("strict");
    let (input, data) = (dir.join("corpus.jsonl"), dir.join("data"));
    let (_, bad) = corpus_with_bad_lines(&input, 20);
    let out = index_cmd(&data, &input, &["--strict"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("line {}", bad[0])), "{err}");
    assert!(err.contains("malformed JSON"), "{err}");

    for (args, needle) in [
        (vec!["--dims", "999"], "999"),
        (vec!["--profile", "nope"], "nope"),
    ] {
        let out = index_cmd(&dir.join("other"), &input, &args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = index_cmd(&data, &dir.join("missing.jsonl"), &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_library_index_adds_searches_funnels_and_reopens() {
    let dir = scratch("library");
    let embedder = Arc::new(mrl::Embedder::load(common::model_dir()).unwrap());
    let docs = [
        (
            "sun",
            "Vitamin D is made in the skin when sunlight hits it.",
        ),
        ("db", "Qdrant stores vectors together with a JSON payload."),
        ("cook", "Simmer the tomato sauce for twenty minutes."),
    ];
    {
        let index = Index::open(&dir, "notes", embedder.clone()).unwrap();
        assert_eq!(index.spec().dims, [384]);
        let n = index
            .add_documents(docs.iter().map(|(id, t)| Document::new(*id, *t)))
            .unwrap();
        assert_eq!(n, 3);
        let hits = index
            .search("how does sunlight give us vitamins", 384, 2)
            .unwrap();
        assert_eq!(hits[0].id, "sun");
        assert_eq!(hits[0].text, docs[0].1);
        assert!(index.search("x", 64, 2).is_err(), "64 is not stored");
        assert!(index.search("  ", 384, 2).is_err());
    }
    // Two sizes, a funnel, a payload filter, and the data survive a reopen.
    let index = mrl::IndexConfig::new(&dir, "nested")
        .dims(vec![64, 384])
        .open(embedder.clone())
        .unwrap();
    let tagged = docs.iter().enumerate().map(|(i, (id, t))| {
        let payload = json!({"even": i % 2 == 0}).as_object().unwrap().clone();
        Document::new(*id, *t).payload(payload)
    });
    index.add_documents(tagged).unwrap();
    drop(index);
    let index = Index::open(&dir, "nested", embedder).unwrap();
    assert_eq!(index.count().unwrap(), 3);
    let opts = SearchOptions::new(384, 1).funnel(64, 3);
    assert_eq!(
        index.search_with("vector database", &opts).unwrap()[0].id,
        "db"
    );
    let opts = SearchOptions::new(384, 3)
        .filter(json!({"must": [{"key": "even", "match": {"value": true}}]}));
    let ids: HashSet<String> = index
        .search_with("anything", &opts)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids, HashSet::from(["sun".to_string(), "cook".to_string()]));
    index.delete(&["sun".to_string()]).unwrap();
    assert_eq!(index.count().unwrap(), 2);
    // Closed before its folder goes: closing flushes the shards.
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A collection records the precision its documents were embedded with. An int8 model does
/// not reopen a collection of f32 documents, nor embed queries or documents for one; a
/// collection it makes records int8 and searches.
#[test]
fn a_collection_keeps_the_precision_its_documents_were_embedded_with() {
    use mrl::Precision;
    let dir = scratch("precision");
    let f32 = Arc::new(mrl::Embedder::load(common::model_dir()).unwrap());
    let int8 = Arc::new(mrl::Embedder::load_with(common::model_dir(), Precision::Int8).unwrap());
    let doc = || {
        Document::new(
            "sun",
            "Vitamin D is made in the skin when sunlight hits it.",
        )
    };
    let index = Index::open(&dir, "f32", f32).unwrap();
    index.add_documents([doc()]).unwrap();
    assert_eq!(index.spec().precision, Precision::F32);
    drop(index);
    let refused = Index::open(&dir, "f32", int8.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("f32") && refused.contains("int8"),
        "{refused}"
    );
    // Through the core, as the server reaches it: a 400 naming `precision`.
    let store = mrl_core::store::open(&dir, None, None).unwrap();
    let embeddings = Arc::new(mrl::Embeddings::inline(int8.clone(), mrl::Policy::LIBRARY));
    let collection = mrl_core::Collections::new(store, embeddings)
        .open("f32")
        .unwrap();
    let query = mrl_core::SearchRequest {
        query: Some("sunlight".into()),
        ..Default::default()
    };
    for err in [
        collection.search_blocking(query).unwrap_err(),
        collection.add_documents_blocking(vec![doc()]).unwrap_err(),
    ] {
        match err {
            mrl_core::Error::InvalidField { field, message } => {
                assert_eq!(field, "precision");
                assert!(
                    message.contains("f32") && message.contains("int8"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let index = Index::open(&dir, "int8", int8).unwrap();
    index.add_documents([doc()]).unwrap();
    assert_eq!(index.spec().precision, Precision::Int8);
    assert_eq!(index.search("sunlight", 384, 1).unwrap()[0].id, "sun");
    std::fs::remove_dir_all(&dir).unwrap();
}
