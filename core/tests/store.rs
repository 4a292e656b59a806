//! One suite for every store behind `VectorStore`: the embedded qdrant-edge store, and a real
//! Qdrant server — the one shipped in `../shared/qdrant`, started here on free loopback ports
//! with its own storage, or the server at `QDRANT_URL` (gRPC, e.g. http://localhost:6334).

// Shared with the root crate's end-to-end tests, which use more of it (clusters).
#[allow(dead_code)]
#[path = "../../tests/common/qdrant.rs"]
mod qdrant;

use std::collections::HashSet;
use std::path::PathBuf;

use qdrant::QdrantServer;

/// The shared folder beside the workspace (this crate sits one level below its root).
fn shared() -> PathBuf {
    qdrant::shared_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

use mrl_core::store::{
    CollectionSpec, Distance, EdgeStore, HnswSize, Layout, RemoteStore, StoreError, StoredDocument,
    VectorQuery, VectorStore,
};
use serde_json::{json, Map, Value};

/// A unit vector pointing mostly along axis `i % 8`, so the nearest document is known.
fn vector(i: usize, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim)
        .map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.01)
        .collect();
    v[i % 8] += 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn doc(i: usize) -> StoredDocument {
    let payload: Map<String, Value> =
        json!({"group": if i.is_multiple_of(2) { "even" } else { "odd" },
                                             "n": i})
        .as_object()
        .unwrap()
        .clone();
    StoredDocument {
        id: format!("doc-{i}"),
        text: format!("text {i}"),
        payload,
        vectors: vec![
            ("d8".into(), vector(i, 8)[..8].to_vec()),
            ("d16".into(), vector(i, 16)),
        ],
    }
}

fn spec() -> CollectionSpec {
    CollectionSpec {
        dims: vec![8, 16],
        profile: "full".into(),
        model: "test-model".into(),
        precision: Default::default(),
        distance: Distance::Cosine,
        layout: Default::default(),
        adapt: None,
    }
}

fn query(i: usize, dim: usize, limit: usize) -> VectorQuery {
    VectorQuery::nested(&vector(i, 16), dim, limit, None).unwrap()
}

/// The behaviour the service relies on, whatever the store.
fn exercise(store: &dyn VectorStore, name: &str) {
    let _ = store.delete(name);
    assert!(matches!(
        store.info(name),
        Err(StoreError::NoSuchCollection(_))
    ));
    assert!(store.create(name, &spec()).unwrap());
    assert!(!store.create(name, &spec()).unwrap(), "same spec: no-op");
    let other = CollectionSpec {
        dims: vec![8],
        ..spec()
    };
    assert!(matches!(
        store.create(name, &other),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create("bad name", &spec()),
        Err(StoreError::BadName(_))
    ));

    store.upsert(name, (0..40).map(doc).collect()).unwrap();
    // Upserting the same ids again replaces, never duplicates.
    store.upsert(name, (0..10).map(doc).collect()).unwrap();
    let info = store.info(name).unwrap();
    assert_eq!((info.count, info.spec), (40, spec()));
    assert!(store.list().unwrap().iter().any(|c| c.name == name));

    let hits = store.search(name, &query(3, 16, 5)).unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[0].id, "doc-3");
    assert_eq!(hits[0].text, "text 3");
    assert_eq!(hits[0].payload["group"], "odd");
    assert!(
        !hits[0].payload.contains_key("_id"),
        "the store's own keys stay inside"
    );
    for h in hits.windows(2) {
        assert!(h[0].score >= h[1].score);
    }
    // A funnel and an exact search agree with the direct search on the top hit.
    let funnel = VectorQuery::nested(&vector(3, 16), 16, 5, Some((8, 20))).unwrap();
    assert_eq!(store.search(name, &funnel).unwrap()[0].id, "doc-3");
    let mut exact = query(3, 16, 5);
    exact.exact = true;
    assert_eq!(store.search(name, &exact).unwrap()[0].id, "doc-3");

    let mut filtered = query(3, 8, 40);
    filtered.filter = Some(
        json!({"must": [{"key": "group", "match": {"value": "even"}}],
                                  "must_not": [{"key": "n", "range": {"gte": 30}}]}),
    );
    let hits = store.search(name, &filtered).unwrap();
    assert_eq!(hits.len(), 15);
    assert!(hits.iter().all(|h| h.payload["group"] == "even"));
    let mut bad = query(3, 8, 5);
    bad.filter = Some(json!({"must": 1}));
    assert!(store.search(name, &bad).is_err());
    for bounds in [
        json!({"gte": "a"}),
        json!({"gte": [1]}),
        json!({"from": 1}),
        json!(3),
    ] {
        let mut bad = query(3, 8, 5);
        bad.filter = Some(json!({"must": [{"key": "n", "range": bounds}]}));
        assert!(
            matches!(store.search(name, &bad), Err(StoreError::InvalidFilter(_))),
            "{bounds}"
        );
    }
    // `has_id` takes the caller's ids, whatever ids the points are stored under.
    let mut by_id = query(3, 8, 40);
    by_id.filter = Some(json!({"must": [{"has_id": ["doc-5", "doc-7", "absent"]}]}));
    let mut ids: Vec<String> = store
        .search(name, &by_id)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["doc-5", "doc-7"]);
    by_id.filter = Some(json!({"must_not": [{"has_id": ["doc-5"]}]}));
    let hits = store.search(name, &by_id).unwrap();
    assert_eq!(hits.len(), 39);
    assert!(hits.iter().all(|h| h.id != "doc-5"));
    by_id.filter = Some(json!({"must": [{"has_id": "doc-5"}]}));
    assert!(matches!(
        store.search(name, &by_id),
        Err(StoreError::InvalidFilter(_))
    ));

    store
        .delete_documents(name, &["doc-0".into(), "doc-1".into(), "absent".into()])
        .unwrap();
    let ids: HashSet<String> = store.ids(name).unwrap().into_iter().collect();
    assert_eq!(ids.len(), 38);
    assert!(!ids.contains("doc-0") && ids.contains("doc-39"));
    store.optimize(name).unwrap();
    assert_eq!(store.info(name).unwrap().count, 38);

    store.delete(name).unwrap();
    assert!(matches!(
        store.delete(name),
        Err(StoreError::NoSuchCollection(_))
    ));
    assert!(matches!(
        store.search(name, &query(0, 8, 1)),
        Err(StoreError::NoSuchCollection(_))
    ));
}

#[test]
fn embedded_store() {
    let dir = std::env::temp_dir().join(format!("mrl-store-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let store = EdgeStore::open(&dir).unwrap();
        exercise(&store, "suite");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn remote_store_on_a_real_qdrant_server() {
    let (url, _server) = match std::env::var("QDRANT_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = QdrantServer::start(&shared());
            (server.url(), Some(server))
        }
    };
    let store = RemoteStore::connect(&url, std::env::var("QDRANT_API_KEY").ok())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    exercise(&store, &format!("mrl-suite-{}", std::process::id()));
}

/// Large-collection options: a Qdrant server applies them (as its own REST API reports) and
/// the funnel still finds the right documents; the embedded store refuses them naming the
/// option; bad values are refused by both, naming the option.
#[test]
fn layouts_for_scale_are_applied_by_a_server_and_refused_by_the_embedded_store() {
    let big = CollectionSpec {
        layout: Layout {
            shards: Some(2),
            replicas: Some(1),
            write_consistency: Some(1),
            on_disk: true,
            quantize: vec![8],
            hnsw: vec![
                HnswSize {
                    dim: 8,
                    m: Some(32),
                    ef_construct: Some(200),
                },
                HnswSize {
                    dim: 16,
                    m: Some(0),
                    ef_construct: None,
                },
            ],
        },
        ..spec()
    };
    let unsupported = |r: Result<bool, StoreError>| match r {
        Err(StoreError::Unsupported { option, .. }) => option,
        other => panic!("expected Unsupported, got {other:?}"),
    };
    let dir = std::env::temp_dir().join(format!("mrl-store-layout-{}", std::process::id()));
    let edge = EdgeStore::open(&dir).unwrap();
    assert_eq!(unsupported(edge.create("big", &big)), "shards");
    let disk_only = CollectionSpec {
        layout: Layout {
            on_disk: true,
            ..Layout::default()
        },
        ..spec()
    };
    assert_eq!(unsupported(edge.create("big", &disk_only)), "on_disk");
    assert!(matches!(
        edge.info("big"),
        Err(StoreError::NoSuchCollection(_))
    ));
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);

    let server = QdrantServer::start(&shared());
    let store = RemoteStore::connect(&server.url(), None).unwrap();
    for (layout, option) in [
        (
            Layout {
                quantize: vec![64],
                ..Layout::default()
            },
            "quantize",
        ),
        (
            Layout {
                replicas: Some(1),
                write_consistency: Some(2),
                ..Layout::default()
            },
            "write_consistency",
        ),
        (
            Layout {
                shards: Some(0),
                ..Layout::default()
            },
            "shards",
        ),
        (
            Layout {
                hnsw: vec![HnswSize {
                    dim: 8,
                    m: Some(16),
                    ef_construct: Some(2),
                }],
                ..Layout::default()
            },
            "hnsw",
        ),
    ] {
        let bad = CollectionSpec { layout, ..spec() };
        assert_eq!(unsupported(store.create("bad", &bad)), option);
    }
    assert!(store.create("big", &big).unwrap());
    assert!(!store.create("big", &big).unwrap(), "same layout: no-op");
    assert!(matches!(
        store.create("big", &spec()),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.info("big").unwrap().spec, big);
    let config = &server.get("/collections/big")["result"]["config"];
    let params = &config["params"];
    assert_eq!(params["shard_number"], 2, "{config}");
    assert_eq!(params["replication_factor"], 1, "{config}");
    assert_eq!(params["write_consistency_factor"], 1, "{config}");
    assert_eq!(params["vectors"]["d16"]["on_disk"], true, "{config}");
    assert_ne!(params["vectors"]["d8"]["on_disk"], true, "{config}");
    assert_eq!(
        params["vectors"]["d8"]["quantization_config"]["scalar"]["type"], "int8",
        "{config}"
    );
    assert_eq!(params["vectors"]["d8"]["hnsw_config"]["m"], 32, "{config}");
    assert_eq!(
        params["vectors"]["d8"]["hnsw_config"]["ef_construct"], 200,
        "{config}"
    );
    assert_eq!(params["vectors"]["d16"]["hnsw_config"]["m"], 0, "{config}");

    // The funnel on this layout: prefetch on the int8 size, rescore on the on-disk size.
    store.upsert("big", (0..40).map(doc).collect()).unwrap();
    let q = VectorQuery::nested(&vector(3, 16), 16, 5, Some((8, 20))).unwrap();
    let hits = store.search("big", &q).unwrap();
    assert_eq!(hits[0].id, "doc-3", "{hits:?}");
    store.delete("big").unwrap();
}

/// A server that does not answer is no error at connect (a service may start before its
/// Qdrant does), but the health check, every operation and a bounded wait say so clearly.
#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let store = RemoteStore::connect("http://127.0.0.1:9", None).unwrap();
    let err = store.health().unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_)) && err.to_string().contains("127.0.0.1:9"),
        "{err}"
    );
    assert!(matches!(store.list(), Err(StoreError::Unavailable(_))));
    let waited = std::time::Instant::now();
    let err = mrl_core::store::wait_until_available(&store, std::time::Duration::from_secs(1))
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    assert!(waited.elapsed() < std::time::Duration::from_secs(10));
}
