//! The `mrl` binary as a user runs it: help, embed from arguments and stdin, errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// A BEIR folder in `dir`: document `d{i}` and query `q{i}` from `pairs[i]`, each query
/// judging its own document relevant (split `test`).
fn write_beir(dir: &std::path::Path, pairs: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let (mut corpus, mut queries) = (String::new(), String::new());
    let mut qrels = String::from("query-id\tcorpus-id\tscore\r\n");
    for (i, (doc, query)) in pairs.iter().enumerate() {
        let d = serde_json::json!({"_id": format!("d{i}"), "title": "", "text": doc});
        let q = serde_json::json!({"_id": format!("q{i}"), "text": query});
        corpus.push_str(&format!("{d}\n"));
        queries.push_str(&format!("{q}\n"));
        qrels.push_str(&format!("q{i}\td{i}\t1\r\n"));
    }
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels").join("test.tsv"), qrels).unwrap();
}

fn mrl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mrl"))
        .args(args)
        .env("MRL_MODEL", common::model_dir())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning mrl");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "mrl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["embed", "--help"],
        vec!["model", "--help"],
        vec!["model", "fetch", "--help"],
        vec!["bench", "encode", "--help"],
        vec!["bench", "retrieval", "--help"],
        vec!["bench", "train", "--help"],
        vec!["calibrate", "--help"],
        vec!["index", "--help"],
        vec!["serve", "--help"],
    ] {
        let out = mrl(&args, None);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

/// `--precision int8` runs the quantized encoder: its vector is the f32 one within the
/// quantization's cosine bound; an unknown precision is refused naming the flag.
#[test]
fn int8_precision_embeds_close_to_f32_and_a_bad_one_names_the_flag() {
    let text = "Vitamin D is made in the skin under sunlight.";
    let vector = |precision: &str| -> Vec<f32> {
        let rows = lines(&mrl(&["embed", "--precision", precision, text], None));
        rows[0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let (f32, int8) = (vector("f32"), vector("int8"));
    let c = common::cosine(&f32, &int8);
    assert!(
        c > 0.99 && c < 0.999999,
        "cosine {c}: int8 ran, and stayed close"
    );
    let out = mrl(&["embed", "--precision", "fp16", text], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--precision") && err.contains("int8"), "{err}");
    // Calibration ranks the f32 model: int8 is refused, not ignored.
    let out = mrl(
        &[
            "calibrate",
            "--precision",
            "int8",
            "--texts",
            "t.jsonl",
            "--out",
            "/nonexistent/x",
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--precision int8"), "{err}");
}

#[test]
fn embeds_arguments_at_the_asked_dim() {
    let out = mrl(&["embed", "--dim", "64", "hello", "world"], None);
    let rows = lines(&out);
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i);
        assert_eq!(row["dim"], 64);
        assert_eq!(row["embedding"].as_array().unwrap().len(), 64);
    }
}

#[test]
fn embeds_stdin_lines_plain_and_jsonl_matching_the_library() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let input = b"A man is playing a guitar.\n{\"id\": \"q7\", \"text\": \"What is the capital of France?\"}\n\"hello\"\r\n";
    let rows = lines(&mrl(&["embed"], Some(input)));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["id"], "q7");
    let refs = common::references();
    let by_text = |t: &str| refs.iter().find(|r| r.text == t).unwrap();
    for (row, text) in rows.iter().zip([
        "A man is playing a guitar.",
        "What is the capital of France?",
        "hello",
    ]) {
        let v: Vec<f32> = row["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(
            common::cosine(&v, &by_text(text).embedding) > 0.9999,
            "{text}"
        );
    }
}

#[test]
fn errors_are_clear_and_nonzero() {
    for (args, stdin, needle) in [
        (vec!["embed", "--dim", "0", "x"], None, "dim 0"),
        (vec!["embed", "--dim", "1000", "x"], None, "1..=384"),
        (vec!["embed", "--profile", "nope", "x"], None, "\"nope\""),
        (
            vec!["embed"],
            Some(&b"ok\n\xff\xfe\n"[..]),
            "line 2 is not valid UTF-8",
        ),
        (vec!["embed"], Some(&b"{\"txt\": 1}\n"[..]), "\"text\""),
        (vec!["calibrate", "--out", "/tmp/x"], None, "--texts"),
        (
            vec![
                "calibrate",
                "--texts",
                "/nonexistent.jsonl",
                "--out",
                "/tmp/mrl-never",
            ],
            None,
            "/nonexistent.jsonl",
        ),
        (
            vec!["bench", "retrieval", "--dataset", "/nonexistent-beir"],
            None,
            "/nonexistent-beir",
        ),
    ] {
        let out = mrl(&args, stdin);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Nothing to embed is not an error.
    assert!(lines(&mrl(&["embed"], Some(b""))).is_empty());
}

/// A hand-made BEIR folder where each query matches one document word for word, so exact
/// search must rank it first.
#[test]
fn bench_retrieval_scores_a_tiny_beir_set_and_writes_json() {
    let dir = std::env::temp_dir().join(format!("mrl-cli-beir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let topics = [
        "The cat sat on the warm windowsill all afternoon.",
        "Quarterly revenue grew by twelve percent in Europe.",
        "Mitochondria produce most of the cell's chemical energy.",
        "The orchestra rehearsed Beethoven's ninth symphony.",
        "A new vaccine reduced influenza hospitalisations.",
        "Glaciers in the Alps are retreating every summer.",
    ];
    let pairs: Vec<(&str, &str)> = topics.iter().map(|t| (*t, *t)).collect();
    write_beir(&dir, &pairs);
    let out_dir = dir.join("out");
    let json = out_dir.join("retrieval.json");
    let index = dir.join("index");
    let args = [
        "bench",
        "retrieval",
        "--dataset",
        dir.to_str().unwrap(),
        "--profiles",
        "full;layers=2",
        "--dims",
        "64,384",
        "--funnel",
        "64:6",
        "--data-dir",
        index.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ];
    for _ in 0..2 {
        // The second run reuses the Qdrant indexes and must agree.
        let out = mrl(&args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(
            table.contains("| full | 1.000 | 384 | - | 1.0000 |"),
            "{table}"
        );
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        // Per profile: 64, 384 and the 64 → 384 funnel.
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0]["dim"], 64);
        assert_eq!(rows[1]["ndcg_at_10"], 1.0);
        assert_eq!(rows[1]["queries"], 6);
        assert_eq!(rows[1]["search"], "hnsw");
        assert_eq!(rows[2]["funnel"], "64:6");
        assert_eq!(rows[5]["profile"], "layers=2");
        assert!(
            rows[1]["search_p99_ms"].as_f64().unwrap()
                >= rows[1]["search_p50_ms"].as_f64().unwrap()
        );
        let svg = std::fs::read_to_string(out_dir.join("retrieval.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("layers=2"), "{svg}");
        assert!(std::fs::read_to_string(out_dir.join("retrieval.md"))
            .unwrap()
            .contains("| 64:6 |"));
    }
    // One collection per (model, profile): both runs used the same two.
    let collections = std::fs::read_dir(index.join("collections"))
        .unwrap()
        .count();
    assert_eq!(collections, 2);
}

/// `mrl bench train` at tiny shapes on the shipped checkpoint: both kernel sets run the same
/// steps to the same losses (fused vs primitive within 1e-3, gated profile included), the
/// table and JSON are written, a rerun measures nothing twice, and a bad kernel name is an
/// error naming the flag.
#[test]
fn bench_train_measures_both_kernel_sets_to_the_same_losses_and_resumes() {
    let Some(_) = common::needs(&["data/scifact"]) else {
        return;
    };
    let out_dir = std::env::temp_dir().join(format!("mrl-cli-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let model = common::root().join("models/mrl-minilm-elastic");
    let data = common::shared().join("data/scifact");
    let args = |kernels: &str| {
        vec![
            "bench".to_string(),
            "train".into(),
            "--model".into(),
            model.display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--batch".into(),
            "4".into(),
            "--max-tokens".into(),
            "24".into(),
            "--steps".into(),
            "1".into(),
            "--warmup".into(),
            "1".into(),
            "--profiles".into(),
            "full,b50".into(),
            "--kernels".into(),
            kernels.into(),
            "--out".into(),
            out_dir.display().to_string(),
        ]
    };
    let run = |kernels: &str| {
        let a = args(kernels);
        mrl(&a.iter().map(String::as_str).collect::<Vec<_>>(), None)
    };
    let out = run("fused,primitive");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "| full | mrl fused |",
        "| full | mrl primitive |",
        "| b50 | mrl fused |",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("train.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for profile in ["full", "b50"] {
        let losses = |engine: &str| -> Vec<f64> {
            let row = rows
                .iter()
                .find(|r| r["engine"] == engine && r["profile"] == profile)
                .unwrap_or_else(|| panic!("no {engine} {profile} row"));
            serde_json::from_value(row["losses"].clone()).unwrap()
        };
        let (fused, primitive) = (losses("mrl fused"), losses("mrl primitive"));
        assert_eq!(fused.len(), 2, "warm-up and timed step");
        for (a, b) in fused.iter().zip(&primitive) {
            assert!(
                (a - b).abs() < 1e-3,
                "{profile}: fused {a} vs primitive {b}"
            );
        }
    }
    let measured = || {
        std::fs::read_to_string(out_dir.join("rows.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(measured(), 4);
    let again = run("fused,primitive");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(measured(), 4, "a rerun re-measured rows it had");
    let bad = run("fused,turbo");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--kernels"));
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `mrl judge` end to end on a small set: every profile is scored symmetric and against
/// `full` documents beside the base model and its rotation baseline, full width matches the
/// base model (the shipped head is orthogonal), and `--write` declares exactly the
/// sub-encoders that met their threshold and clears the others; bad rules name the flag.
#[test]
fn judge_scores_every_profile_and_writes_only_earned_alignment() {
    let tmp = std::env::temp_dir().join(format!("mrl-cli-judge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let set = tmp.join("set");
    write_beir(
        &set,
        &[
            (
                "Vitamin D is made in the skin under sunlight.",
                "How do we get vitamin D?",
            ),
            (
                "A man plays an acoustic guitar on a stage.",
                "Someone playing music",
            ),
            (
                "The stock market fell sharply on Monday.",
                "Shares dropped this week",
            ),
            (
                "Heavy rain flooded the streets of the city.",
                "Storm causes flooding",
            ),
            (
                "The compiler rejects programs with type errors.",
                "Why won't my program build?",
            ),
            (
                "Green tea contains caffeine and antioxidants.",
                "Is there caffeine in tea?",
            ),
        ],
    );
    let sts = tmp.join("sts.csv");
    let pairs = [
        (5.0, "A man is playing a guitar.", "A man plays the guitar."),
        (0.2, "A man is playing a guitar.", "The stock market fell."),
        (4.0, "It is raining in the city.", "Rain falls on the town."),
        (
            0.5,
            "Green tea has caffeine.",
            "The compiler found an error.",
        ),
        (
            3.2,
            "Vitamin D comes from sunlight.",
            "Sunshine helps the body make vitamins.",
        ),
        (1.0, "A dog runs in the park.", "Shares dropped on Monday."),
    ];
    let lines: Vec<String> = pairs
        .iter()
        .map(|(s, a, b)| format!("main\tx\t2012\t1\t{s}\t{a}\t{b}"))
        .collect();
    std::fs::write(&sts, lines.join("\n")).unwrap();
    // A copy of the shipped checkpoint, so --write touches nothing of the repository.
    let model = tmp.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let shipped = common::root().join("models/mrl-minilm-elastic");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
    std::fs::copy(
        shipped.join("1_Pooling/config.json"),
        model.join("1_Pooling/config.json"),
    )
    .unwrap();
    let judge = |align: &[&str]| {
        let (m, b, c) = (
            model.display().to_string(),
            common::model_dir().display().to_string(),
            tmp.join("cache").display().to_string(),
        );
        let (beir, sts, out) = (
            format!("{}:test", set.display()),
            sts.display().to_string(),
            tmp.join("judge.json").display().to_string(),
        );
        let mut args = vec![
            "judge", "--model", &m, "--base", &b, "--beir", &beir, "--sts", &sts, "--cache", &c,
            "--out", &out, "--write",
        ];
        for a in align {
            args.extend(["--align", a]);
        }
        mrl(&args, None)
    };
    let out = judge(&["b50=0", "b25=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("b50 -> full") && table.contains("not aligned"),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.join("judge.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let find = |set: &str, model: &str, q: &str, d: &str, dim: u64| {
        rows.iter()
            .find(|r| {
                r["set"].as_str().unwrap().starts_with(set)
                    && r["model"] == model
                    && r["query_profile"] == q
                    && r["profile"] == d
                    && r["dim"] == dim
            })
            .unwrap_or_else(|| panic!("no {set} {model} {q} -> {d} at {dim}"))
            .clone()
    };
    for s in ["set/test", "sts.csv"] {
        // Full width is the base model's.
        let full = find(s, "model", "full", "full", 384)["share_of_base"]
            .as_f64()
            .unwrap();
        assert!((full - 1.0).abs() < 0.02, "{s}: {full}");
        assert_eq!(find(s, "base", "full", "full", 384)["share_of_base"], 1.0);
        for (q, d) in [("b50", "b50"), ("b50", "full"), ("b25", "full")] {
            let r = find(s, "model", q, d, 64);
            assert!(r["score"].as_f64().unwrap().is_finite(), "{r}");
        }
        find(s, "rotation", "full", "full", 64);
    }
    let manifest = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("mrl.json")).unwrap()).unwrap()
    };
    let aligned = |name: &str| {
        let m = manifest(&model);
        let p = m["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone();
        p.get("aligned_with").cloned()
    };
    // Each judged profile is declared exactly when its recorded verdict says it earned it.
    let follows_verdicts = || {
        let m = manifest(&model);
        for v in m["provenance"]["alignment"].as_array().unwrap() {
            let p = v["profile"].as_str().unwrap();
            let declared = aligned(p) == Some(serde_json::json!(["full"]));
            assert_eq!(declared, v["earned"] == true, "{p}: {v}");
        }
    };
    assert_eq!(
        aligned("b50"),
        Some(serde_json::json!(["full"])),
        "a rule of 0 is met"
    );
    assert_eq!(
        aligned("b25"),
        None,
        "b25 kept less than all of full's score somewhere"
    );
    follows_verdicts();
    // Another judgement rewrites only the profiles it has rules for.
    let out = judge(&["b50=1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    follows_verdicts();
    assert_eq!(aligned("b25"), None);
    // Bad rules are errors naming the flag or the profile.
    let err = judge(&["b50"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--align"));
    for bad in [&["b75=0.9"][..], &["b50=1.5"], &["b50=0.9", "b50=0.5"]] {
        let err = judge(bad);
        assert!(!err.status.success(), "{bad:?}");
        let msg = String::from_utf8_lossy(&err.stderr);
        assert!(msg.contains(bad[0].split('=').next().unwrap()), "{msg}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
