//! One dim policy (mrl-core's `DimPolicy`) for every shell: under the same policy the HTTP
//! service, the CLI and the library accept exactly the same output sizes, for embeddings and
//! for a collection's stored sizes.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::server::Server;
use mrl::{DimPolicy, EmbedSpec, Embeddings, Fields, IndexConfig, Policy};
use serde_json::json;

/// Out of range on both sides, nested only for the base model (its native 384), and prefixes
/// that only `any` accepts.
const DIMS: [usize; 5] = [0, 64, 100, 384, 385];

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mrl-dims-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn flag(p: DimPolicy) -> &'static str {
    match p {
        DimPolicy::Nested => "nested",
        DimPolicy::AnyPrefix => "any",
    }
}

fn cli(args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_mrl"))
        .args(args)
        .env("MRL_MODEL", common::model_dir())
        .env("RUST_LOG", "error")
        .output()
        .expect("running mrl")
        .status
        .success()
}

/// Which of `DIMS` each shell accepts under `policy`: (HTTP, CLI, library), for embeddings
/// and for collections.
fn accepted(policy: DimPolicy) -> [(Vec<bool>, Vec<bool>, Vec<bool>); 2] {
    let dir = scratch(flag(policy));
    let server = Server::start_plain(&dir.join("http"), &["--dim-policy", flag(policy)]);
    let embedder = Arc::new(mrl::Embedder::load(common::model_dir()).unwrap());
    let library = Embeddings::inline(
        embedder.clone(),
        Policy {
            dims: policy,
            ..Policy::LIBRARY
        },
    );
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(&corpus, "{\"id\": \"1\", \"text\": \"one document\"}\n").unwrap();
    let (mut embed, mut collection) = ([vec![], vec![], vec![]], [vec![], vec![], vec![]]);
    for (i, dim) in DIMS.iter().enumerate() {
        let d = dim.to_string();
        let (status, _) = server.call("POST", "/embed", Some(json!({"inputs": "x", "dim": dim})));
        embed[0].push(status == 200);
        embed[1].push(cli(&[
            "embed",
            "--dim-policy",
            flag(policy),
            "--dim",
            &d,
            "x",
        ]));
        let spec = EmbedSpec {
            dim: Some(*dim),
            ..EmbedSpec::default()
        };
        embed[2].push(
            library
                .embed_blocking(&["x"], &spec, &Fields::NATIVE)
                .is_ok(),
        );

        let name = format!("c{i}");
        let (status, _) = server.call(
            "PUT",
            &format!("/collections/{name}"),
            Some(json!({ "dims": [dim] })),
        );
        collection[0].push(status == 201);
        let data = dir.join("cli");
        collection[1].push(cli(&[
            "index",
            "--collection",
            &name,
            "--input",
            corpus.to_str().unwrap(),
            "--dims",
            &d,
            "--dim-policy",
            flag(policy),
            "--data-dir",
            data.to_str().unwrap(),
        ]));
        let opened = IndexConfig::new(dir.join("lib"), &name)
            .dims(vec![*dim])
            .dim_policy(policy)
            .open(embedder.clone());
        collection[2].push(opened.is_ok());
    }
    server.stop();
    let [e0, e1, e2] = embed;
    let [c0, c1, c2] = collection;
    [(e0, e1, e2), (c0, c1, c2)]
}

#[test]
fn http_cli_and_library_accept_the_same_dims_under_each_policy() {
    let mut seen = Vec::new();
    for policy in [DimPolicy::Nested, DimPolicy::AnyPrefix] {
        for (what, (http, cli, library)) in ["embed", "collection"].iter().zip(accepted(policy)) {
            assert_eq!(http, cli, "{policy:?} {what}: HTTP vs CLI over {DIMS:?}");
            assert_eq!(
                http, library,
                "{policy:?} {what}: HTTP vs library over {DIMS:?}"
            );
            seen.push(http);
        }
    }
    // The policies differ where they should: the base model is trained for 384 alone.
    assert_eq!(seen[0], [false, false, false, true, false], "nested");
    assert_eq!(seen[2], [false, true, true, true, false], "any prefix");
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[2], seen[3]);
}
