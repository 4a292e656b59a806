//! Which store a command gets: a Qdrant server, or the embedded store of a data folder, one
//! per folder in the process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::edge::EdgeStore;
use super::remote::RemoteStore;
use super::{Result, StoreError, VectorStore};

/// The store a command asked for: the Qdrant server at `qdrant_url`, else the embedded
/// store in `data_dir`. Embedded stores are shared within the process: opening a folder that
/// is already open here returns the same store (two stores on one folder would write the same
/// shards; across processes the folder's lock refuses the second).
pub fn open(
    data_dir: &std::path::Path,
    qdrant_url: Option<&str>,
    api_key: Option<String>,
) -> Result<Arc<dyn VectorStore>> {
    if let Some(url) = qdrant_url {
        return Ok(Arc::new(RemoteStore::connect(url, api_key)?));
    }
    static OPEN: Mutex<Vec<(PathBuf, Weak<EdgeStore>)>> = Mutex::new(Vec::new());
    let in_dir =
        |e: &dyn std::fmt::Display| StoreError::Storage(format!("{}: {e}", data_dir.display()));
    std::fs::create_dir_all(data_dir).map_err(|e| in_dir(&e))?;
    let key = std::fs::canonicalize(data_dir).map_err(|e| in_dir(&e))?;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|(_, store)| store.strong_count() > 0);
    if let Some(store) = open
        .iter()
        .find(|(dir, _)| *dir == key)
        .and_then(|(_, s)| s.upgrade())
    {
        return Ok(store);
    }
    let store = Arc::new(EdgeStore::open(&key).map_err(|e| in_dir(&e))?);
    open.push((key, Arc::downgrade(&store)));
    Ok(store)
}

/// Waits until `store` answers ([`VectorStore::health`]), checking every second and logging
/// each miss, for at most `timeout`: a batch job started beside its Qdrant server (compose, a
/// scheduler) then does not depend on which came up first.
///
/// Errors: the last `Unavailable` once `timeout` has passed.
pub fn wait_until_available(store: &dyn VectorStore, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 1;
    loop {
        match store.health() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!(
                    "the {} store does not answer yet (attempt {attempt}): {e}",
                    store.kind()
                );
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1).min(deadline - Instant::now()));
            }
        }
    }
}
