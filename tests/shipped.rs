//! The trained checkpoint committed under models/mrl-minilm-elastic: it is what the CLI and
//! the service load by default, so it must load, list its trained sizes and profiles, run
//! every profile at every nested dim from the command line, and still tell related sentences
//! from unrelated ones at every size.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::{embed, root};
use mrl::{EmbedSpec, Embedder};

fn shipped() -> PathBuf {
    root().join("models").join(mrl::SHIPPED_MODEL)
}

#[test]
fn the_shipped_checkpoint_is_small_f16_and_lists_its_family() {
    let dir = shipped();
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::metadata(&weights).unwrap().len();
    // The safetensors header: an 8-byte little-endian length, then JSON naming each dtype.
    let raw = std::fs::read(&weights).unwrap();
    let len = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&raw[8..8 + len]).unwrap();
    let dtypes: Vec<&str> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap())
        .collect();
    assert!(
        dtypes.len() > 100 && dtypes.iter().all(|d| *d == "F16"),
        "{dtypes:?}"
    );
    let e = Embedder::load(&dir).unwrap();
    // Real widths only: the heads' rows past 384 in the file are zeros, which are not dims.
    assert_eq!(e.nested_dims(), vec![64, 128, 256, 384]);
    assert_eq!(e.max_dim(), 384);
    for p in &e.manifest().unwrap().profiles {
        assert_eq!(e.model().output_width(&p.profile), 384, "{}", p.name);
    }
    assert_eq!(e.profile_names(), vec!["full", "b50", "b25"]);
    let m = e.manifest().unwrap();
    // One copy of the parent (f16) plus what the children own (heads, bridges, own layers):
    // at most a quarter more; separate b50 and b25 models would add about 140%.
    let parent = m.profiles[0].params as f64 * 2.0;
    assert!(
        (bytes as f64) <= 1.25 * parent,
        "{bytes} bytes, {:.1}% of the parent's {parent}",
        100.0 * bytes as f64 / parent
    );
    let budgets: Vec<(f64, &str)> = m
        .budgets
        .iter()
        .map(|b| (b.budget, b.profile.as_str()))
        .collect();
    assert_eq!(budgets, vec![(0.5, "b50"), (0.25, "b25")]);
    for p in &m.profiles {
        // The recorded cost is the encoder's, bridges included.
        let flops = e
            .model()
            .relative_flops(&p.profile, mrl_encoder::manifest::COST_SEQ_LEN);
        assert!(
            (flops - p.relative_flops).abs() < 1e-9,
            "{}: {flops}",
            p.name
        );
        if p.name != "full" {
            assert!(
                p.relative_flops < 1.0,
                "{} costs {}",
                p.name,
                p.relative_flops
            );
            // Each sub-encoder runs its layer bridges (trainer/src/bridge.rs), loaded from
            // the weights and bound by name: one at least where it skips layers, none after
            // its last layer.
            assert_eq!(p.bridges.as_deref(), Some(p.name.as_str()));
            let after: Vec<usize> = e
                .model()
                .bridges_of(&p.profile)
                .iter()
                .map(|b| b.after)
                .collect();
            let layers = &p.profile.layers;
            for w in layers.windows(2).filter(|w| w[1] > w[0] + 1) {
                assert!(
                    after.contains(&w[0]),
                    "{}: no bridge after {}",
                    p.name,
                    w[0]
                );
            }
            assert!(
                after.iter().all(|a| layers[..layers.len() - 1].contains(a)),
                "{}: {after:?}",
                p.name
            );
            // Each trained its own layers (trainer/src/children): every layer it runs is its
            // own, merged from `own_layers.NAME.*` at load.
            assert_eq!(p.own_layers.as_deref(), Some(p.name.as_str()));
            assert_eq!(&e.model().own_layers_of(&p.profile), layers, "{}", p.name);
        } else {
            assert_eq!(p.bridges, None);
            assert!(e.model().bridges_of(&p.profile).is_empty());
            assert_eq!(p.own_layers, None);
            assert!(e.model().own_layers_of(&p.profile).is_empty());
        }
    }
}

/// The full profile is the parent: on the bench texts, each of its vectors mapped back
/// through the shared head (orthogonal on its first 384 rows, no bias) and the calibration's
/// channel order has cosine ≥ 0.99999 to all-MiniLM-L6-v2's own, f16 weights and the
/// children's own layers in the same file (asserted in the test above) notwithstanding.
#[test]
fn the_full_profile_is_the_parent_on_the_bench_texts() {
    let Some(shared) = common::needs(&["bench/texts.jsonl"]) else {
        return;
    };
    let texts: Vec<String> = std::fs::read_to_string(shared.join("bench/texts.jsonl"))
        .unwrap()
        .lines()
        .step_by(10)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let model = Arc::new(Embedder::load(shipped()).unwrap());
    let ours = embed(&model, &texts, &EmbedSpec::default()).unwrap();
    let base = embed(common::embedder(), &texts, &EmbedSpec::default()).unwrap();
    let weights = candle_core::safetensors::load(
        shipped().join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let f32s = |name: &str| -> Vec<f32> {
        weights[name]
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (head, bias) = (f32s("head.weight"), f32s("head.bias"));
    assert!(bias.iter().all(|b| *b == 0.0));
    let order = &model
        .manifest()
        .unwrap()
        .ranking
        .as_ref()
        .unwrap()
        .hidden_order;
    let h = order.len();
    let mut worst = 1f64;
    for (v, b) in ours.iter().zip(&base) {
        // v = W p: p = Wᵀ v, and channel i of p is the parent's channel order[i].
        let mut restored = vec![0f32; h];
        for (i, &o) in order.iter().enumerate() {
            restored[o] = (0..h).map(|r| head[r * h + i] * v[r]).sum();
        }
        worst = worst.min(common::cosine(&restored, b));
    }
    assert!(
        worst >= 0.99999,
        "lowest cosine {worst} over {} texts",
        texts.len()
    );
}

/// The shipped head keeps the full width exact: its first 384 rows are an orthogonal map of
/// the parent's output, and the parent is the base model with its channels permuted, so
/// full-width cosines are the base model's (to f16 rounding of the weights).
#[test]
fn full_width_cosines_are_the_base_models() {
    let shipped = Arc::new(Embedder::load(shipped()).unwrap());
    let base = common::embedder();
    let texts = [
        "A man is playing a guitar.",
        "Someone strums a guitar on stage.",
        "The stock market fell sharply on Monday.",
        "Vitamin D is made in the skin under sunlight.",
        "Qdrant stores vectors with payloads.",
    ];
    let ours = embed(&shipped, &texts, &EmbedSpec::default()).unwrap();
    let at384 = embed(&shipped, &texts, &EmbedSpec::default().dim(384)).unwrap();
    let theirs = embed(base, &texts, &EmbedSpec::default()).unwrap();
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for i in 0..texts.len() {
        assert_eq!(ours[i].len(), 384);
        for j in i + 1..texts.len() {
            let (a, b, c) = (
                cos(&ours[i], &ours[j]),
                cos(&at384[i], &at384[j]),
                cos(&theirs[i], &theirs[j]),
            );
            assert!(
                (a - c).abs() < 2e-3 && (b - c).abs() < 2e-3,
                "{i},{j}: {a} {b} {c}"
            );
        }
    }
}

#[test]
fn every_profile_and_size_ranks_a_paraphrase_above_an_unrelated_sentence() {
    let e = Arc::new(Embedder::load(shipped()).unwrap());
    let texts = [
        "A man is playing a guitar.",
        "Someone strums a guitar on stage.",
        "The stock market fell sharply on Monday.",
    ];
    for profile in e.profile_names() {
        for &dim in &e.nested_dims() {
            let opts = EmbedSpec::default().profile(profile.clone()).dim(dim);
            let v = embed(&e, &texts, &opts).unwrap();
            let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let (near, far) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
            assert!(near > far + 0.1, "{profile}@{dim}: {near} vs {far}");
        }
    }
}

/// The shipped checkpoint in int8 stays within cosine 0.99 (mean) of its f32 self at every
/// profile and nested size, heads included.
#[test]
fn int8_keeps_every_profile_and_size_of_the_shipped_checkpoint() {
    let Some(_) = common::needs(&["data/scifact"]) else {
        return;
    };
    let f32 = Arc::new(Embedder::load(shipped()).unwrap());
    let int8 = Arc::new(Embedder::load_with(shipped(), mrl::Precision::Int8).unwrap());
    let texts: Vec<String> = common::scifact_queries(40);
    for profile in f32.profile_names() {
        for &dim in &f32.nested_dims() {
            let spec = EmbedSpec::default().profile(profile.clone()).dim(dim);
            let a = embed(&f32, &texts, &spec).unwrap();
            let b = embed(&int8, &texts, &spec).unwrap();
            let mean = a
                .iter()
                .zip(&b)
                .map(|(x, y)| common::cosine(x, y))
                .sum::<f64>()
                / texts.len() as f64;
            assert!(mean >= 0.99, "{profile}@{dim}: mean cosine {mean}");
        }
    }
}

#[test]
fn the_cli_embeds_with_the_shipped_checkpoint_at_any_trained_profile_and_size() {
    let bin = env!("CARGO_BIN_EXE_mrl");
    for (profile, dim) in [("b50", "64"), ("b25", "128"), ("full", "384")] {
        let out = Command::new(bin)
            .args(["embed", "--model"])
            .arg(shipped())
            .args(["--profile", profile, "--dim", dim, "hello world"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let v: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
        assert_eq!(v.len(), dim.parse::<usize>().unwrap());
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let out = Command::new(bin)
        .args(["embed", "--model"])
        .arg(shipped())
        .args(["--dim", "512", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The error names the real width (not the start-up line, which lists the dims).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("512") && l.contains("384") && !l.contains("profiles")),
        "{stderr}"
    );
}

/// Queries may search another profile's documents only where `mrl.json` declares the two
/// aligned. The judge (`mrl judge --write`, `trainer/src/judge.rs`) declares a sub-encoder
/// aligned with `full` only when it earned it on the zero-shot dev sets, and records every
/// verdict in the provenance; the library and HTTP refuse the rest with an error naming both
/// profiles.
#[test]
fn only_declared_query_profiles_search_another_profiles_documents() {
    use common::server::Server;
    use mrl::{Document, IndexConfig, SearchOptions};
    use serde_json::json;
    use std::sync::Arc;

    let e = Embedder::load(shipped()).unwrap();
    let m = e.manifest().unwrap();
    let verdicts = m.provenance["alignment"]
        .as_array()
        .expect("judged")
        .clone();
    let (mut declared, mut refused) = (Vec::new(), Vec::new());
    for p in m.profiles.iter().filter(|p| p.name != "full") {
        let verdict = verdicts
            .iter()
            .find(|v| v["profile"] == p.name.as_str())
            .unwrap_or_else(|| panic!("{} was not judged", p.name));
        if verdict["earned"] == true {
            assert_eq!(p.aligned_with, ["full"], "{}", p.name);
            assert!(e.check_aligned(&p.name, "full").is_ok());
            declared.push(p.name.clone());
        } else {
            assert!(p.aligned_with.is_empty(), "{} did not earn it", p.name);
            assert!(e.check_aligned(&p.name, "full").is_err());
            refused.push(p.name.clone());
        }
        assert!(e.check_aligned("full", &p.name).is_err());
    }
    assert_eq!(declared.len() + refused.len(), 2, "b50 and b25 are judged");
    assert!(e.check_aligned("b50", "b25").is_err());
    assert!(e.check_aligned("layers=3", "full").is_err());
    // A spec that resolves to the documents' own profile is that profile.
    assert!(e.check_aligned("full", "layers=0+1+2+3+4+5").is_ok());

    // The library.
    let data = std::env::temp_dir().join(format!("mrl-aligned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let docs = [
        Document::new("sun", "Vitamin D is made in the skin under sunlight."),
        Document::new("qdrant", "Qdrant stores vectors with payloads."),
    ];
    let index = IndexConfig::new(data.join("lib"), "docs")
        .open(Arc::new(e))
        .unwrap();
    index.add_documents(docs.clone()).unwrap();
    for p in &declared {
        let hits = index
            .search_with(
                "sunlight and vitamins",
                &SearchOptions::new(64, 2).profile(p.clone()),
            )
            .unwrap();
        assert_eq!(hits[0].id, "sun");
    }
    for p in &refused {
        let err = index
            .search_with("sunlight", &SearchOptions::new(64, 2).profile(p.clone()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(p.as_str()) && err.contains("full"), "{err}");
    }
    let err = index
        .search_with("sunlight", &SearchOptions::new(64, 2).profile("layers=3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers=3") && err.contains("full"), "{err}");

    // HTTP.
    let shipped_dir = shipped();
    let s = Server::start_with(
        &data.join("http"),
        &["--model", shipped_dir.to_str().unwrap()],
    );
    let (_, health) = s.call("GET", "/health", None);
    for p in &declared {
        assert_eq!(health["aligned_with"][p], json!(["full"]), "{health}");
    }
    for (name, profile) in [("full_docs", "full"), ("b50_docs", "b50")] {
        s.ok(
            "PUT",
            &format!("/collections/{name}"),
            json!({"dims": [64, 384], "profile": profile}),
        );
        let batch: Vec<_> = docs
            .iter()
            .map(|d| json!({"id": d.id, "text": d.text}))
            .collect();
        s.ok(
            "POST",
            &format!("/collections/{name}/documents"),
            json!({ "documents": batch }),
        );
    }
    let search = |name: &str, profile: &str| {
        s.call(
            "POST",
            &format!("/collections/{name}/search"),
            Some(json!({"query": "sunlight and vitamins", "dim": 64, "limit": 2, "profile": profile})),
        )
    };
    let mut allowed = vec![("full_docs", "full"), ("b50_docs", "b50")];
    allowed.extend(declared.iter().map(|p| ("full_docs", p.as_str())));
    for (name, profile) in allowed {
        let (st, v) = search(name, profile);
        assert_eq!(st, 200, "{name} with {profile}: {v}");
        assert_eq!(v["hits"][0]["id"], "sun", "{name} with {profile}: {v}");
    }
    let mut forbidden = vec![
        ("b50_docs", "b25", "b50"),
        ("b50_docs", "full", "b50"),
        ("full_docs", "layers=2", "full"),
    ];
    forbidden.extend(refused.iter().map(|p| ("full_docs", p.as_str(), "full")));
    for (name, profile, docs_profile) in forbidden {
        let (st, v) = search(name, profile);
        assert_eq!(st, 400, "{name} with {profile}: {v}");
        assert_eq!(v["error"]["field"], "profile", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{profile:?}")) && msg.contains(&format!("{docs_profile:?}")),
            "{msg}"
        );
    }
    s.stop();
    let _ = std::fs::remove_dir_all(&data);
}

/// An adaptive collection of the shipped checkpoint's `full` documents maps its cheap
/// profiles on its own text (`core/src/adapt/maps.rs`), over HTTP: before the first fit a
/// `b25` query is refused (the checkpoint declares no alignment); after it `GET` lists `b50`
/// and `b25` with held-out figures where the map agrees better than the raw profile, and a
/// `b25` search at 64 dims finds documents by their titles.
#[test]
fn an_adaptive_collection_maps_the_cheap_profiles_onto_its_documents() {
    let Some(_) = common::needs(&["data/scifact"]) else {
        return;
    };
    use common::server::Server;
    use serde_json::{json, Value};

    let data = std::env::temp_dir().join(format!("mrl-mapped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let shipped_dir = shipped();
    let s = Server::start_with(&data, &["--model", shipped_dir.to_str().unwrap()]);
    s.ok(
        "PUT",
        "/collections/ad",
        json!({"dims": [64, 128], "adapt": true, "adapt_threshold": 240}),
    );
    let docs = common::scifact_corpus(240);
    let search = |query: &str, profile: &str| {
        s.call(
            "POST",
            "/collections/ad/search",
            Some(json!({"query": query, "dim": 64, "limit": 3, "profile": profile})),
        )
    };
    s.add_documents("ad", &docs[..100]);
    let (st, v) = search("vitamin D", "b25");
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("profile")),
        "{v}"
    );
    s.add_documents("ad", &docs[100..]);
    let start = std::time::Instant::now();
    let info = loop {
        let info = s.ok("GET", "/collections/ad", Value::Null);
        if info["rotation"]["version"] == 1 && info.get("renest").is_none() {
            break info;
        }
        assert!(start.elapsed().as_secs() < 120, "no re-nest: {info}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let queries = info["rotation"]["queries"].as_array().expect("query maps");
    let profiles: Vec<&str> = queries
        .iter()
        .map(|q| q["profile"].as_str().unwrap())
        .collect();
    assert_eq!(profiles, ["b50", "b25"], "{info}");
    for q in queries {
        let f = |k: &str| q[k].as_f64().unwrap();
        assert!(q["held_out"].as_u64().unwrap() >= 64, "{q}");
        assert!(f("mean_cosine") > 0.5, "{q}");
        assert!(f("neighbour_overlap") > f("unmapped_overlap"), "{q}");
    }
    assert!(info["rotation"]["nesting"]["kept"].is_string(), "{info}");
    let mut found = 0;
    for (id, text) in docs.iter().step_by(12) {
        let title: String = text
            .split_whitespace()
            .take(12)
            .collect::<Vec<_>>()
            .join(" ");
        let (st, v) = search(&title, "b25");
        assert_eq!(st, 200, "{v}");
        found += usize::from(
            v["hits"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["id"] == id.as_str()),
        );
    }
    assert!(found >= 16, "b25 titles found {found} of 20 documents");
    s.stop();
    let _ = std::fs::remove_dir_all(&data);
}

/// `mrl` run from a folder with no `models/` (as after `cargo install --path .`) finds the
/// shipped default in the checkout it was built from, says so on stderr, and serves its
/// family at real widths only; mrl's own bodies refuse a misspelt field by name, while the
/// OpenAI route takes the extras OpenAI clients send.
#[test]
fn an_installed_mrl_serves_the_shipped_default_from_any_folder_at_real_widths() {
    use common::server::Server;
    use serde_json::json;
    use std::io::BufRead;

    let elsewhere = std::env::temp_dir().join(format!("mrl-elsewhere-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&elsewhere);
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut cmd = Server::command(&elsewhere.join("data"));
    cmd.current_dir(&elsewhere)
        .env_remove("MRL_MODEL")
        .env_remove("MRL_MODELS_DIR")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut s = Server::launch(cmd);
    // Read to its end on a thread of its own: a closed pipe would fail the server's writes.
    let stderr = std::io::BufReader::new(s.take_stderr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(" model ") {
                let _ = tx.send(line);
            }
        }
    });
    let said = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a log line naming the model");
    assert!(
        said.contains(&shipped().display().to_string())
            && said.contains("profiles full, b50, b25")
            && said.contains("dims [64, 128, 256, 384]")
            && said.contains("precision f32"),
        "{said}"
    );
    assert!(
        !elsewhere.join("models").exists(),
        "fetched a model instead"
    );

    let (status, health) = s.call("GET", "/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["model"], mrl::SHIPPED_MODEL, "{health}");
    assert_eq!(
        health["profiles"],
        json!(["full", "b50", "b25"]),
        "{health}"
    );
    assert_eq!(health["dims"], json!([64, 128, 256, 384]), "{health}");
    let v = s.ok(
        "POST",
        "/embed",
        json!({"inputs": ["A man is playing a guitar."], "dim": 128, "profile": "b50"}),
    );
    assert_eq!(v["embeddings"][0].as_array().unwrap().len(), 128);

    let refused = |method: &str, path: &str, body: serde_json::Value, field: &str| {
        let (status, v) = s.call(method, path, Some(body));
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert_eq!(v["error"]["field"], field, "{method} {path}: {v}");
    };
    refused(
        "POST",
        "/embed",
        json!({"inputs": ["hi"], "dim": 512}),
        "dim",
    );
    refused(
        "POST",
        "/embed",
        json!({"inputs": ["hi"], "dimm": 64}),
        "dimm",
    );
    refused(
        "PUT",
        "/collections/notes",
        json!({"dims": [64, 512]}),
        "dims",
    );
    refused(
        "PUT",
        "/collections/notes",
        json!({"dims": [64, 384], "adpat": true}),
        "adpat",
    );
    s.ok("PUT", "/collections/notes", json!({"dims": [64, 384]}));
    refused(
        "POST",
        "/collections/notes/documents",
        json!({"documents": [{"id": "1", "text": "Vitamin D"}], "upsert": true}),
        "upsert",
    );
    s.add_documents(
        "notes",
        &[("1".into(), "Vitamin D is made in the skin.".into())],
    );
    refused(
        "POST",
        "/collections/notes/search",
        json!({"query": "sunlight", "limt": 3}),
        "limt",
    );
    refused(
        "POST",
        "/collections/notes/search",
        json!({"query": "sunlight", "funnel": {"dim": 64, "candidatse": 9}}),
        "funnel.candidatse",
    );
    refused(
        "DELETE",
        "/collections/notes/documents",
        json!({"ids": ["1"], "all": true}),
        "all",
    );
    let hits = s.ok(
        "POST",
        "/collections/notes/search",
        json!({"query": "sunlight", "limit": 3}),
    );
    assert_eq!(hits["hits"][0]["id"], "1", "{hits}");

    let v = s.ok(
        "POST",
        "/v1/embeddings",
        json!({"input": "hello", "model": "x", "user": "u-1",
               "metadata": {"k": "v"}, "vendor_extra": 1}),
    );
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    s.stop();
    let _ = std::fs::remove_dir_all(&elsewhere);
}

/// A collection made when the shipped default still offered 512 (its heads' zero rows) keeps
/// opening, adding and searching: its 512 is the 384-wide vector zero-padded, as stored then,
/// so scores at 512 are those at 384; new collections may not ask for 512.
#[test]
fn collections_made_with_512_keep_working() {
    use mrl_core::{Collections, CreateRequest, Document, SearchRequest};

    let data = std::env::temp_dir().join(format!("mrl-legacy-512-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let store = mrl_core::store::open(&data, None, None).unwrap();
    let model = Arc::new(Embedder::load(shipped()).unwrap());
    let collections = Collections::new(
        store.clone(),
        Arc::new(mrl::Embeddings::inline(model, mrl::Policy::LIBRARY)),
    );
    let asked = |dims: Vec<usize>| CreateRequest {
        dims: Some(dims),
        ..Default::default()
    };
    match collections
        .create("new", &asked(vec![64, 512]))
        .unwrap_err()
    {
        mrl_core::Error::InvalidField { field, .. } => assert_eq!(field, "dims"),
        other => panic!("{other:?}"),
    }
    // As the earlier default wrote it: the spec of today's sizes, with 512 as the widest.
    let mut old = collections.spec("old", &asked(vec![64, 384])).unwrap();
    old.dims = vec![64, 512];
    store.create("old", &old).unwrap();
    collections.create("now", &asked(vec![64, 384])).unwrap();

    let docs = || {
        vec![
            Document::new("sun", "Vitamin D is made in the skin under sunlight."),
            Document::new("guitar", "A man is playing a guitar on stage."),
            Document::new("market", "The stock market fell sharply on Monday."),
        ]
    };
    // The same create again is a no-op, as it was.
    let (spec, created) = collections.create("old", &asked(vec![64, 512])).unwrap();
    assert!(!created);
    assert_eq!(spec, old);
    let (legacy, created) = collections
        .open_or_create("old", &CreateRequest::default())
        .unwrap();
    assert!(!created);
    assert_eq!(legacy.spec().dims, vec![64, 512]);
    legacy.add_documents_blocking(docs()).unwrap();
    let now = collections.open("now").unwrap();
    now.add_documents_blocking(docs()).unwrap();
    let search = |c: &mrl_core::Collection, dim| {
        c.search_blocking(SearchRequest {
            query: Some("sunlight and vitamins".into()),
            dim: Some(dim),
            ..Default::default()
        })
        .unwrap()
    };
    for (legacy_dim, dim) in [(512, 384), (64, 64)] {
        let (a, b) = (search(&legacy, legacy_dim), search(&now, dim));
        assert_eq!(a[0].id, "sun");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.id, y.id);
            assert!(
                (x.score - y.score).abs() < 1e-5,
                "{legacy_dim}: {x:?} {y:?}"
            );
        }
    }
    drop((legacy, now, collections, store));
    let _ = std::fs::remove_dir_all(&data);
}
