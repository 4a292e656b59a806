//! The trained checkpoint committed under models/mrl-minilm-elastic: it is what the CLI and
//! the service load by default, so it must load, list its trained sizes and profiles, run
//! every profile at every nested dim from the command line, and still tell related sentences
//! from unrelated ones at every size.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::root;
use mrl::{EmbedOptions, Embedder};

fn shipped() -> PathBuf {
    root().join("models").join(mrl::SHIPPED_MODEL)
}

#[test]
fn the_shipped_checkpoint_is_small_f16_and_lists_its_family() {
    let dir = shipped();
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::metadata(&weights).unwrap().len();
    assert!(bytes <= 50_000_000, "{bytes} bytes");
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
    assert_eq!(e.nested_dims(), vec![64, 128, 256, 384, 512]);
    assert_eq!(e.max_dim(), 512);
    assert_eq!(e.profile_names(), vec!["full", "b50", "b25"]);
    let m = e.manifest().unwrap();
    let budgets: Vec<(f64, &str)> = m
        .budgets
        .iter()
        .map(|b| (b.budget, b.profile.as_str()))
        .collect();
    assert_eq!(budgets, vec![(0.5, "b50"), (0.25, "b25")]);
    for p in &m.profiles {
        if p.name != "full" {
            assert!(
                p.relative_flops < 1.0,
                "{} costs {}",
                p.name,
                p.relative_flops
            );
        }
    }
}

#[test]
fn every_profile_and_size_ranks_a_paraphrase_above_an_unrelated_sentence() {
    let e = Embedder::load(shipped()).unwrap();
    let texts = [
        "A man is playing a guitar.",
        "Someone strums a guitar on stage.",
        "The stock market fell sharply on Monday.",
    ];
    for profile in e.profile_names() {
        for &dim in &e.nested_dims() {
            let opts = EmbedOptions::default().profile(profile.clone()).dim(dim);
            let v = e.embed(&texts, &opts).unwrap();
            let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            let (near, far) = (cos(&v[0], &v[1]), cos(&v[0], &v[2]));
            assert!(near > far + 0.1, "{profile}@{dim}: {near} vs {far}");
        }
    }
}

#[test]
fn the_cli_embeds_with_the_shipped_checkpoint_at_any_trained_profile_and_size() {
    let bin = env!("CARGO_BIN_EXE_mrl");
    for (profile, dim) in [("b50", "64"), ("b25", "128"), ("full", "512")] {
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
        .args(["--dim", "600", "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("512"));
}
