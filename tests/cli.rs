//! The `mrl` binary as a user runs it: help, embed from arguments and stdin, errors.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

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
    ] {
        let out = mrl(&args, None);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
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
    ] {
        let out = mrl(&args, stdin);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Nothing to embed is not an error.
    assert!(lines(&mrl(&["embed"], Some(b""))).is_empty());
}
