//! The embedded store's own tests: search parameters, writes beside optimizes, lifecycle races.

use super::*;

#[test]
fn search_params_carry_exact_and_hnsw_ef() {
    let mut q = VectorQuery::nested(&[1.0, 0.0], 2, 1, None).unwrap();
    assert!(search_params(&q).is_none(), "the engine's defaults");
    q.params.hnsw_ef = Some(77);
    let p = search_params(&q).unwrap();
    assert_eq!((p.exact, p.hnsw_ef), (false, Some(77)));
    q.exact = true;
    assert!(search_params(&q).unwrap().exact);
}

fn doc(i: usize) -> StoredDocument {
    let v: Vec<f32> = (0..8)
        .map(|j| ((i * 31 + j * 7) % 17) as f32 + 1.0)
        .collect();
    StoredDocument {
        id: format!("doc-{i}"),
        text: format!("text {i}"),
        payload: Map::new(),
        vectors: vec![("d8".into(), v)],
    }
}

pub(super) fn spec() -> CollectionSpec {
    CollectionSpec {
        dims: vec![8],
        profile: "full".into(),
        model: "test".into(),
        precision: Default::default(),
        distance: Distance::Cosine,
        layout: Default::default(),
        adapt: None,
        prompts: Default::default(),
    }
}

/// Writers on several threads cross the optimize threshold (so optimize and flush run in
/// the background) while readers search: nothing panics, nothing is lost, and the data
/// reopens from disk.
#[test]
fn concurrent_writes_reads_and_optimize_keep_every_point() {
    let dir = std::env::temp_dir().join(format!("mrl-edge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(EdgeStore::open(&dir).unwrap());
    assert!(store.create("c", &spec()).unwrap());
    assert!(!store.create("c", &spec()).unwrap());
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for batch in 0..10 {
                    let docs = (0..100).map(|k| doc(t * 1000 + batch * 100 + k)).collect();
                    store.upsert("c", docs).unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let q = VectorQuery {
                    vector: doc(7).vectors[0].1.clone(),
                    dim: 8,
                    using: "d8".into(),
                    limit: 5,
                    filter: None,
                    funnel: None,
                    exact: false,
                    params: Default::default(),
                };
                store.search("c", &q).unwrap();
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    assert_eq!(store.info("c").unwrap().count, 3000);
    store
        .delete_documents("c", &["doc-0".into(), "doc-1".into()])
        .unwrap();
    drop(store);
    let store = EdgeStore::open(&dir).unwrap();
    assert_eq!(store.info("c").unwrap().count, 2998);
    let mut ids = store.ids("c").unwrap();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2998);
    assert!(!ids.contains(&"doc-0".to_string()) && ids.contains(&"doc-2".to_string()));
    assert!(matches!(
        store.info("missing"),
        Err(StoreError::NoSuchCollection(_))
    ));
    assert!(matches!(
        store.create(
            "c",
            &CollectionSpec {
                dims: vec![4],
                ..spec()
            }
        ),
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.create("a b", &spec()),
        Err(StoreError::BadName(_))
    ));
}

/// Two writers (single points and batches large enough to start background optimizes), a
/// reader, and a thread that deletes, optimizes and recreates the collection for as long as
/// the writers run: every call succeeds or answers `NoSuchCollection` (both happen),
/// nothing panics, and the reopened folder holds every point acknowledged after the last
/// recreation and none that was not acknowledged or that was acknowledged before the last
/// delete began (a recreated collection starts empty).
#[test]
fn lifecycle_races_answer_not_found_and_never_panic() {
    use std::collections::BTreeSet;
    use std::time::Instant;

    let dir = std::env::temp_dir().join(format!("mrl-edge-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(EdgeStore::open(&dir).unwrap());
    store.create("race", &spec()).unwrap();
    let allowed = |r: Result<()>, what: &str| match r {
        Ok(()) => true,
        Err(StoreError::NoSuchCollection(_)) => false,
        Err(e) => panic!("{what}: {e}"),
    };
    /// One upsert: its ids, when it started and ended, whether it was acknowledged, and
    /// whether a delete of its first id followed.
    struct Write {
        ids: Vec<String>,
        start: Instant,
        end: Instant,
        acked: bool,
        deleted: bool,
    }
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut log = Vec::new();
                for i in 0..60 {
                    let first = w * 100_000 + i * 1000;
                    let n = if i % 20 == 19 { 1100 } else { 1 };
                    let start = Instant::now();
                    let docs: Vec<StoredDocument> = (first..first + n).map(doc).collect();
                    let ids = docs.iter().map(|d| d.id.clone()).collect();
                    let acked = allowed(store.upsert("race", docs), "upsert");
                    let end = Instant::now();
                    if !acked {
                        // A refusal is instant: without a pause a writer could spend all
                        // its writes inside one delete.
                        std::thread::sleep(std::time::Duration::from_millis(3));
                    }
                    let deleted = i % 7 == 3;
                    if deleted {
                        let _ = allowed(
                            store.delete_documents("race", &[format!("doc-{first}")]),
                            "delete_documents",
                        );
                    }
                    log.push(Write {
                        ids,
                        start,
                        end,
                        acked,
                        deleted,
                    });
                }
                log
            })
        })
        .collect();
    let reader = {
        let (store, writing) = (store.clone(), writing.clone());
        std::thread::spawn(move || {
            while writing.load(Ordering::SeqCst) {
                let q = VectorQuery::nested(&doc(1).vectors[0].1, 8, 5, None).unwrap();
                match store.search("race", &q) {
                    Ok(_) | Err(StoreError::NoSuchCollection(_)) => {}
                    Err(e) => panic!("search: {e}"),
                }
                match store.ids("race").map(|_| ()) {
                    Ok(()) | Err(StoreError::NoSuchCollection(_)) => {}
                    Err(e) => panic!("ids: {e}"),
                }
                store.list().unwrap();
            }
        })
    };
    let churn = {
        let (store, writing) = (store.clone(), writing.clone());
        std::thread::spawn(move || {
            let (mut last_delete, mut last_create) = (Instant::now(), Instant::now());
            while writing.load(Ordering::SeqCst) {
                last_delete = Instant::now();
                let _ = allowed(store.delete("race"), "delete");
                store.create("race", &spec()).unwrap();
                last_create = Instant::now();
                let _ = allowed(store.optimize("race"), "optimize");
                // Up a while between deletes, so writes land in it too.
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            (last_delete, last_create)
        })
    };
    let mut writes: Vec<Write> = Vec::new();
    for w in writers {
        writes.extend(w.join().unwrap());
    }
    writing.store(false, Ordering::SeqCst);
    reader.join().unwrap();
    let (last_delete, last_create) = churn.join().unwrap();
    drop(store);

    let acked = writes.iter().filter(|w| w.acked).count();
    eprintln!(
        "race: {acked} writes acknowledged, {} refused",
        writes.len() - acked
    );
    assert!(acked > 0, "no write succeeded");
    assert!(
        writes.iter().any(|w| !w.acked),
        "no write met a deleted collection: the race did not happen"
    );
    let store = EdgeStore::open(&dir).unwrap();
    let stored: BTreeSet<String> = store.ids("race").unwrap().into_iter().collect();
    // Points that a delete raced are allowed either way.
    let allowed_ids: BTreeSet<String> = writes
        .iter()
        .filter(|w| w.acked || w.deleted)
        .flat_map(|w| w.ids.clone())
        .collect();
    let must: BTreeSet<String> = writes
        .iter()
        .filter(|w| w.acked && !w.deleted && w.start > last_create)
        .flat_map(|w| w.ids.clone())
        .collect();
    let gone: BTreeSet<String> = writes
        .iter()
        .filter(|w| w.acked && w.end < last_delete)
        .flat_map(|w| w.ids.clone())
        .collect();
    let extra: Vec<_> = stored.difference(&allowed_ids).collect();
    assert!(extra.is_empty(), "unacknowledged points stored: {extra:?}");
    assert!(must.is_subset(&stored), "acknowledged points lost");
    let kept: Vec<_> = stored.intersection(&gone).collect();
    assert!(
        kept.is_empty(),
        "points of a deleted collection came back: {kept:?}"
    );
}

/// One folder, one store: a second `EdgeStore` on an open folder is refused with a clear
/// error, `store::open` shares the open one, and the folder is free again once closed.
#[test]
fn a_data_folder_has_one_store_at_a_time() {
    let dir = std::env::temp_dir().join(format!("mrl-edge-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = super::super::open(&dir, None, None).unwrap();
    let again = super::super::open(&dir, None, None).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    let err = EdgeStore::open(&dir).err().expect("the folder is in use");
    assert!(err.to_string().contains("in use"), "{err}");
    drop((first, again));
    EdgeStore::open(&dir).unwrap();
}
