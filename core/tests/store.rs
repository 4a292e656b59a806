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
    qdrant::shared_dir(&qdrant::crate_dir().join(".."))
}

use mrl_core::store::{
    Adapt, CollectionSpec, Distance, EdgeStore, Epoch, HnswSize, Layout, PointUpdate, RemoteStore,
    RotationInfo, StoreError, StoredDocument, StoredRotation, VectorQuery, VectorStore,
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
        prompts: Default::default(),
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
        ["_id", "_text", "_mrl_w"]
            .iter()
            .all(|k| !hits[0].payload.contains_key(*k)),
        "the store's own keys stay inside: {:?}",
        hits[0].payload
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
            let Some(_) = qdrant::needs_shared(&qdrant::crate_dir().join(".."), &["qdrant"]) else {
                return;
            };
            let server = QdrantServer::start(&shared());
            (server.url(), Some(server))
        }
    };
    let store = RemoteStore::connect(&url, std::env::var("QDRANT_API_KEY").ok())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    exercise(&store, &format!("mrl-suite-{}", std::process::id()));
}

/// A `w × w` matrix with `k` on the diagonal: rotations told apart by their matrices.
fn rotation(version: u64, k: f32) -> StoredRotation {
    let w = 16;
    let m: Vec<f32> = (0..w * w)
        .map(|i| if i / w == i % w { k } else { 0.0 })
        .collect();
    let info = RotationInfo {
        version,
        fitted_at: "2026-12-03T00:00:00Z".into(),
        points: 4,
        sample: 4,
        seconds: 0.0,
        queries: Vec::new(),
        nesting: None,
    };
    StoredRotation::new(info, &m)
}

/// Two clients of one server, as two processes: one claim at a time wins; the other sees the
/// claim and reads its pending rotation; a page rewrite skips a point written again since it
/// was read and a point deleted since; a claim whose lease ran out is taken over, and the
/// claimant taken over can neither renew nor finish; an abandoned claim leaves the current
/// rotation; every change moves the epoch.
#[test]
fn a_shared_collection_is_re_nested_by_one_claim_at_a_time() {
    let Some(_) = qdrant::needs_shared(&qdrant::crate_dir().join(".."), &["qdrant"]) else {
        return;
    };
    let server = QdrantServer::start(&shared());
    let a = RemoteStore::connect(&server.url(), None).unwrap();
    let b = RemoteStore::connect(&server.url(), None).unwrap();
    let name = "shared";
    let spec = CollectionSpec {
        adapt: Some(Adapt { threshold: 1 }),
        ..spec()
    };
    a.create(name, &spec).unwrap();
    a.upsert(name, (0..4).map(doc).collect()).unwrap();
    let lease = std::time::Duration::from_secs(60);
    let start = a.shared(name).unwrap().expect("a server is shared");
    let incarnation = start.epoch.incarnation;
    assert_ne!(incarnation, 0, "drawn when the collection was made");
    assert_eq!(
        start.epoch,
        Epoch {
            incarnation,
            ..Epoch::default()
        }
    );
    assert!(!start.lease_live);

    let claim = a
        .claim(name, &start.epoch, &rotation(1, 1.0), lease)
        .unwrap()
        .expect("the first claim wins");
    assert_eq!(
        claim,
        Epoch {
            incarnation,
            claims: 1,
            current: 0,
            pending: Some(1)
        }
    );
    assert_eq!(
        b.claim(name, &start.epoch, &rotation(1, 2.0), lease)
            .unwrap(),
        None,
        "a claim from an epoch that moved loses"
    );
    let seen = b.shared(name).unwrap().unwrap();
    assert_eq!((seen.epoch, seen.lease_live), (claim, true));
    assert_eq!(
        b.claim(name, &seen.epoch, &rotation(1, 2.0), lease)
            .unwrap(),
        None,
        "a live claim is not taken over"
    );
    assert_eq!(
        b.pending_rotation(name, &claim).unwrap(),
        Some(rotation(1, 1.0)),
        "the winner's rotation, not the loser's"
    );

    // A page read by `a`; then `b` writes doc 0 again and deletes doc 1.
    let (page, _) = a.scroll_vectors(name, "d16", None, 10, false).unwrap();
    assert_eq!(page.len(), 4);
    assert!(page.iter().all(|p| p.written.is_some()), "{page:?}");
    b.upsert(name, vec![doc(0)]).unwrap();
    b.delete_documents(name, &["doc-1".to_string()]).unwrap();
    let updates = page
        .into_iter()
        .map(|p| PointUpdate {
            vectors: vec![("d8_1".into(), vector(7, 8))],
            id: p.id,
            written: p.written,
        })
        .collect();
    a.update_vectors(name, updates).unwrap();
    let (rewritten, _) = b.scroll_vectors(name, "d8_1", None, 10, false).unwrap();
    let mut ids: Vec<String> = rewritten.into_iter().map(|p| p.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["doc-2", "doc-3"],
        "doc-0 was written since, doc-1 deleted"
    );
    assert_eq!(
        b.info(name).unwrap().count,
        3,
        "the store's own points are not counted"
    );

    assert!(a.renew(name, &claim, lease).unwrap());
    assert!(a.finish(name, &claim, &rotation(1, 1.0)).unwrap());
    let switched = Epoch {
        incarnation,
        claims: 1,
        current: 1,
        pending: None,
    };
    assert_eq!(b.shared(name).unwrap().unwrap().epoch, switched);
    assert_eq!(b.rotation(name).unwrap(), Some(rotation(1, 1.0)));
    assert_eq!(b.info(name).unwrap().rotation.map(|r| r.version), Some(1));
    assert!(
        !a.finish(name, &claim, &rotation(1, 1.0)).unwrap(),
        "once only"
    );

    // A claim with no time left on its lease is taken over.
    let stale = a
        .claim(
            name,
            &switched,
            &rotation(2, 3.0),
            std::time::Duration::ZERO,
        )
        .unwrap()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let taken = b
        .claim(name, &stale, &rotation(2, 4.0), lease)
        .unwrap()
        .expect("an expired claim is taken over");
    assert_eq!(taken.claims, 3);
    assert!(!a.renew(name, &stale, lease).unwrap());
    assert!(!a.finish(name, &stale, &rotation(2, 3.0)).unwrap());
    a.abandon(name, &stale).unwrap();
    assert_eq!(
        a.shared(name).unwrap().unwrap().epoch,
        taken,
        "nothing changed"
    );
    assert_eq!(
        a.pending_rotation(name, &taken).unwrap(),
        Some(rotation(2, 4.0))
    );
    assert!(b.finish(name, &taken, &rotation(2, 4.0)).unwrap());
    assert_eq!(a.rotation(name).unwrap(), Some(rotation(2, 4.0)));

    // An abandoned claim leaves the rotation in force, and moves the epoch.
    let now = a.shared(name).unwrap().unwrap().epoch;
    let given_up = a
        .claim(name, &now, &rotation(3, 5.0), lease)
        .unwrap()
        .unwrap();
    a.abandon(name, &given_up).unwrap();
    let after = b.shared(name).unwrap().unwrap();
    assert_eq!(
        after.epoch,
        Epoch {
            incarnation,
            claims: 4,
            current: 2,
            pending: None
        }
    );
    assert_ne!(after.epoch, now);
    assert_eq!(b.rotation(name).unwrap(), Some(rotation(2, 4.0)));

    // A claim whose lease ran out is dead even when nobody took it over.
    let lapsed = a
        .claim(
            name,
            &after.epoch,
            &rotation(3, 6.0),
            std::time::Duration::ZERO,
        )
        .unwrap()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!b.shared(name).unwrap().unwrap().lease_live);
    assert!(!a.renew(name, &lapsed, lease).unwrap());
    assert!(!a.finish(name, &lapsed, &rotation(3, 6.0)).unwrap());
    assert_eq!(a.rotation(name).unwrap(), Some(rotation(2, 4.0)));

    // A collection made again under the name is another incarnation.
    a.delete(name).unwrap();
    a.create(name, &spec).unwrap();
    let again = b.shared(name).unwrap().unwrap().epoch;
    assert_ne!(again.incarnation, incarnation);
    assert!(again.is_after(&lapsed));
}

/// Large-collection options: a Qdrant server applies them (as its own REST API reports) and
/// the funnel still finds the right documents; the embedded store refuses them naming the
/// option; bad values are refused by both, naming the option.
#[test]
fn layouts_for_scale_are_applied_by_a_server_and_refused_by_the_embedded_store() {
    let Some(_) = qdrant::needs_shared(&qdrant::crate_dir().join(".."), &["qdrant"]) else {
        return;
    };
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
