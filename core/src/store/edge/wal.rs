//! The embedded engine's write-ahead log, kept small: qdrant-edge 0.7.2 appends every write to
//! it and never truncates it (nothing calls its `ack`), and never replays it on load either,
//! since every write here is flushed to the segments before it returns. So its closed
//! segments are dead weight that grows for as long as the process writes (about 30 MiB per
//! 4,000 documents written): they are removed when a shard opens, and a shard whose closed
//! segments pass `COMPACT_AT` is closed and opened again once no index build runs on it, or
//! after the one in flight at `FORCE_AT` (`Collection::compact_wal`).
//!
//! The newest closed segment is kept: the log checks that its closed segments are
//! contiguous from the first one left, and numbers the next write after the last, so
//! operation numbers (the points' versions in the segments) keep growing.

use std::num::NonZeroUsize;
use std::path::Path;

use qdrant_edge::WalOptions;

/// Bytes per log segment. The open one is memory-mapped and paged in as it fills, so its size
/// is a sawtooth in the server's resident memory: 4 MiB instead of the engine's 32.
pub(super) const SEGMENT: usize = if cfg!(test) { 1 << 20 } else { 4 << 20 };
/// Closed segments' bytes past which a shard is reopened to drop them, once no index build
/// runs on it.
pub(super) const COMPACT_AT: u64 = if cfg!(test) { 4 << 20 } else { 64 << 20 };
/// Closed segments' bytes past which it is reopened after the index build in flight.
pub(super) const FORCE_AT: u64 = 4 * COMPACT_AT;
/// Writes between two looks at the log's folder.
pub(super) const CHECK_EVERY: usize = if cfg!(test) { 4 } else { 64 };

/// The log options of new shards.
pub(super) fn options() -> WalOptions {
    WalOptions {
        segment_capacity: SEGMENT,
        segment_queue_len: 0,
        retain_closed: NonZeroUsize::MIN,
    }
}

/// The closed segments in `shard/wal`: `(start index, bytes, path)`.
fn closed(shard: &Path) -> std::io::Result<Vec<(u64, u64, std::path::PathBuf)>> {
    let mut out = Vec::new();
    let dir = shard.join("wal");
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_prefix("closed-"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        match entry.metadata() {
            Ok(m) => out.push((start, m.len(), entry.path())),
            // Gone since the listing (the log recycled it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes in closed segments other than the newest: what `drop_old` would remove.
pub(super) fn removable(shard: &Path) -> std::io::Result<u64> {
    let c = closed(shard)?;
    Ok(c.iter().rev().skip(1).map(|(_, b, _)| b).sum())
}

/// Removes every closed segment but the newest, oldest first (so a failure part way leaves
/// the rest contiguous), from a shard that is not open; returns the bytes removed.
pub(super) fn drop_old(shard: &Path) -> std::io::Result<u64> {
    let c = closed(shard)?;
    let mut removed = 0;
    for (_, bytes, path) in c.iter().take(c.len().saturating_sub(1)) {
        std::fs::remove_file(path)?;
        removed += bytes;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::FORCE_AT;

    fn doc(i: usize) -> StoredDocument {
        // Distinct for every `i`: a search for one finds it alone at cosine 1.
        let v: Vec<f32> = (0..256)
            .map(|j| ((i as f32 + 1.0) * (j as f32 + 1.0) * 0.013).sin())
            .collect();
        StoredDocument {
            id: format!("doc-{i}"),
            text: "x".repeat(200),
            payload: Map::new(),
            vectors: vec![("d256".into(), v)],
        }
    }

    /// Writing far more than `COMPACT_AT` through the log leaves its folder bounded, every
    /// document found, and the store opens again with all of them, and then takes more.
    #[test]
    fn the_log_stays_bounded_and_nothing_is_lost() {
        let dir = std::env::temp_dir().join(format!("mrl-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = CollectionSpec {
            dims: vec![256],
            ..super::super::tests::spec()
        };
        let shard = dir.join("collections/c/shard");
        let wal_bytes = || -> u64 {
            std::fs::read_dir(shard.join("wal"))
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum()
        };
        let mut peak = 0;
        {
            let store = EdgeStore::open(&dir).unwrap();
            store.create("c", &spec).unwrap();
            // About 1.3 KB per document in the log: 80 batches of 500 are ~50 MB.
            for b in 0..80 {
                store
                    .upsert("c", (b * 500..(b + 1) * 500).map(doc).collect())
                    .unwrap();
                peak = peak.max(wal_bytes());
            }
            assert_eq!(store.info("c").unwrap().count, 40_000);
        }
        // Index builds (one per 1,024 points here) defer compaction up to `FORCE_AT`, and
        // one batch may come on top; without compaction the log would reach the ~50 MB written.
        let bound = FORCE_AT + (2 << 20);
        assert!(
            peak <= bound,
            "the log reached {peak} bytes (bound {bound})"
        );
        let store = EdgeStore::open(&dir).unwrap();
        assert_eq!(store.info("c").unwrap().count, 40_000);
        assert_eq!(store.ids("c").unwrap().len(), 40_000);
        store.upsert("c", vec![doc(40_000)]).unwrap();
        // A document replaced after the reopen takes its new vector: operation numbers went on
        // growing past the versions in the segments.
        let mut replaced = doc(8);
        replaced.id = "doc-7".into();
        store.upsert("c", vec![replaced.clone()]).unwrap();
        let q = VectorQuery::nested(&replaced.vectors[0].1, 256, 3, None).unwrap();
        let mut q = q;
        q.exact = true;
        let hits = store.search("c", &q).unwrap();
        let top: Vec<&str> = hits
            .iter()
            .filter(|h| h.score > 0.9999)
            .map(|h| h.id.as_str())
            .collect();
        assert!(top.contains(&"doc-7") && top.contains(&"doc-8"), "{hits:?}");
        store.delete_documents("c", &["doc-0".into()]).unwrap();
        assert_eq!(store.info("c").unwrap().count, 40_000);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
