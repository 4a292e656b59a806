//! The embedded store: one qdrant-edge shard per collection under `<data>/collections/<name>/`.
//!
//! qdrant-edge 0.7.2 does not replay its WAL on load (points not flushed before a crash are
//! lost), panics when `flush` runs while another thread holds the WAL, and panics when a flush
//! fails — which it does once the shard's folder is gone, and every dropped shard flushes. So:
//! - every write, flush and optimize of a shard goes through one mutex, and a write is flushed
//!   before it returns: an acknowledged write is on disk;
//! - every operation holds its collection's gate (a read lock around the shard) while it
//!   touches the shard; deleting takes the gate's write side, closes the shard (its last flush)
//!   once nothing uses it, and only then removes the folder; later operations on the old
//!   collection answer `NoSuchCollection`;
//! - creating and deleting are serialised, so a recreate never shares a folder with a delete;
//! - a panic inside the engine is caught and answered as a storage error.
//!
//! Its write-ahead log is never truncated by the engine: `wal` keeps it small.
//!
//! Reads do not take the write mutex. Optimization (HNSW build) runs on a background thread
//! after bulk writes; writes wait for it, reads do not. An adaptive collection's current
//! rotation is `rotation.json` beside the spec, replaced by an atomic rename.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use qdrant_edge::SearchParams;
use qdrant_edge::{
    Distance as EdgeDistance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, Filter,
    NamedQuery, PointId, PointInsertOperations, PointOperations, PointStruct,
    PointVectorsPersisted, Prefetch, QueryEnum, QueryRequest, ScoringQuery, ScrollRequest,
    UpdateOperation, UpdateVectorsOp, VectorInternal, VectorOperations, VectorPersisted,
    VectorStructInternal, VectorStructPersisted, Vectors, WithPayloadInterface, WithVector,
};
use serde_json::{Map, Value};

use super::{
    check_name, point_filter, point_uuid, CollectionInfo, CollectionSpec, Distance, Hit, Result,
    ScrolledPoint, StoreError, StoredDocument, StoredRotation, VectorPage, VectorQuery,
    VectorStore, ID_KEY, TEXT_KEY,
};

mod wal;

const SPEC_FILE: &str = "collection.json";
const ROTATION_FILE: &str = "rotation.json";
/// Points written since the last optimize that trigger the next one.
const OPTIMIZE_AFTER: usize = 1024;

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Runs an engine call, turning a panic inside it into a storage error: the engine's
/// `expect`s must not take the process down.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    crate::panic::catch_panic(f)
        .map_err(|msg| StoreError::Storage(format!("{what} failed inside the engine: {msg}")))
}

struct Collection {
    name: String,
    spec: CollectionSpec,
    /// The current rotation (adaptive collections), as in `rotation.json`.
    rotation: RwLock<Option<StoredRotation>>,
    /// The open shard, `None` once the collection is deleted. Held (read side) by every
    /// operation for as long as it uses the shard.
    gate: RwLock<Option<Arc<EdgeShard>>>,
    /// Held for every write, flush and optimize of the shard.
    writes: Arc<Mutex<usize>>,
    optimizing: Arc<AtomicBool>,
    /// The shard's folder, to reopen it.
    dir: PathBuf,
    /// Writes since the log's folder was last looked at.
    unchecked: AtomicUsize,
}

/// Collections of qdrant-edge shards in a data folder.
pub struct EdgeStore {
    dir: PathBuf,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// One lock per collection name, held by create and delete: a folder is never removed
    /// and recreated at once, while other collections' lifecycles go on.
    lifecycle: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// `<data>/.lock`, exclusively locked while the store is open: a second process on the
    /// same folder (an `mrl index` beside an `mrl serve`) would write the same shards. Last,
    /// so it is released after the shards close.
    _lock: std::fs::File,
}

impl EdgeStore {
    /// Opens (or creates) the data folder and loads every collection in it.
    ///
    /// Errors: `Storage` when the folder cannot be created or read, a collection cannot be
    /// loaded, or another store (another process, or another `EdgeStore` in this one: share
    /// one through `store::open`) has the folder open.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = dir.join("collections");
        std::fs::create_dir_all(&root).map_err(storage)?;
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(storage)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Storage(format!(
                    "{} is in use by another mrl store ({} is locked): stop that process, or \
                     send documents through its HTTP API",
                    dir.display(),
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(storage(e)),
        }
        let mut collections = HashMap::new();
        for entry in std::fs::read_dir(&root).map_err(storage)? {
            let path = entry.map_err(storage)?.path();
            let spec_path = path.join(SPEC_FILE);
            // Only a definite "absent" means unfinished: an unreadable spec fails the open.
            if !spec_path.try_exists().map_err(storage)? {
                // A collection whose creation never finished: nothing was acknowledged in it.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let spec: CollectionSpec =
                serde_json::from_slice(&std::fs::read(&spec_path).map_err(storage)?)
                    .map_err(storage)?;
            let rotation_path = path.join(ROTATION_FILE);
            let rotation: Option<StoredRotation> = if rotation_path.try_exists().map_err(storage)? {
                Some(
                    serde_json::from_slice(&std::fs::read(&rotation_path).map_err(storage)?)
                        .map_err(storage)?,
                )
            } else {
                None
            };
            let shard_dir = path.join("shard");
            // Only clean-up: a folder it cannot tidy still opens.
            if let Err(e) = wal::drop_old(&shard_dir) {
                tracing::warn!("{}: spent log not removed: {e}", shard_dir.display());
            }
            let shard =
                guarded("loading", || EdgeShard::load(&shard_dir, None))?.map_err(storage)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let c = Collection::new(name.clone(), spec, shard, shard_dir);
            *c.rotation.write().unwrap_or_else(|e| e.into_inner()) = rotation;
            collections.insert(name, Arc::new(c));
        }
        Ok(Self {
            dir: root,
            collections: RwLock::new(collections),
            lifecycle: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// The lifecycle lock of collection `name`.
    fn lifecycle(&self, name: &str) -> Arc<Mutex<()>> {
        self.lifecycle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn get(&self, name: &str) -> Result<Arc<Collection>> {
        self.collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NoSuchCollection(name.to_string()))
    }
}

impl Drop for EdgeStore {
    /// Closes every shard (after its background optimize), each last flush guarded, so a
    /// failing flush cannot abort the process while it unwinds.
    fn drop(&mut self) {
        for c in self
            .collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let Err(e) = c.close() {
                tracing::warn!("closing collection {:?}: {e}", c.name);
            }
        }
    }
}

impl Collection {
    fn new(name: String, spec: CollectionSpec, shard: EdgeShard, dir: PathBuf) -> Self {
        Self {
            name,
            spec,
            rotation: RwLock::new(None),
            gate: RwLock::new(Some(Arc::new(shard))),
            writes: Arc::new(Mutex::new(0)),
            optimizing: Arc::new(AtomicBool::new(false)),
            dir,
            unchecked: AtomicUsize::new(0),
        }
    }

    /// Every `wal::CHECK_EVERY` writes, reopens the shard once its log's closed segments pass
    /// `wal::COMPACT_AT` (`wal` says why that is safe): closed when nothing uses it (its last
    /// flush), spent segments removed, loaded again; the collection's operations wait.
    ///
    /// Errors: `Storage` when the folder cannot be read or the shard not loaded again (the
    /// collection then answers `NoSuchCollection` until the store is opened again).
    fn compact_wal(&self) -> Result<()> {
        if self.unchecked.fetch_add(1, Ordering::SeqCst) + 1 < wal::CHECK_EVERY {
            return Ok(());
        }
        self.unchecked.store(0, Ordering::SeqCst);
        // Not while an index builds (reads would wait for it behind the gate) unless the log
        // has grown to `wal::FORCE_AT` meanwhile: a bulk load builds indexes back to back.
        let due = || -> Result<bool> {
            let spent = wal::removable(&self.dir).map_err(storage)?;
            Ok(spent >= wal::FORCE_AT
                || (spent >= wal::COMPACT_AT && !self.optimizing.load(Ordering::SeqCst)))
        };
        if !due()? {
            return Ok(());
        }
        let mut gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        // Another writer may have compacted, or an optimize started, meanwhile.
        if !due()? {
            return Ok(());
        }
        self.wait_idle();
        let Some(shard) = gate.take() else {
            return Ok(());
        };
        // Whatever fails on the way, the shard is loaded again: its segments hold every write.
        if let Err(e) = guarded("closing", move || drop(shard)) {
            tracing::warn!("{:?}: {e}", self.name);
        }
        match wal::drop_old(&self.dir) {
            Ok(n) => tracing::debug!("{:?}: {n} bytes of spent log removed", self.name),
            Err(e) => tracing::warn!("{:?}: spent log not removed: {e}", self.name),
        }
        let load = || guarded("loading", || EdgeShard::load(&self.dir, None))?.map_err(storage);
        let shard = load().or_else(|_| load())?;
        *gate = Some(Arc::new(shard));
        Ok(())
    }

    /// Runs `f` on the open shard, or answers `NoSuchCollection` once it is deleted.
    fn with_shard<T>(&self, f: impl FnOnce(&Arc<EdgeShard>) -> Result<T>) -> Result<T> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        match gate.as_ref() {
            Some(shard) => f(shard),
            None => Err(StoreError::NoSuchCollection(self.name.clone())),
        }
    }

    /// Waits for a background optimize to finish.
    fn wait_idle(&self) {
        while self.optimizing.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Closes the shard once no operation uses it: its last flush runs while its folder still
    /// exists. Every later operation answers `NoSuchCollection`.
    fn close(&self) -> Result<()> {
        let mut gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        // Writers are out (they hold the gate); a background optimize may still hold a clone.
        self.wait_idle();
        match gate.take() {
            Some(shard) => guarded("closing", move || drop(shard)),
            None => Err(StoreError::NoSuchCollection(self.name.clone())),
        }
    }

    /// The collection as listed: spec, count, current rotation.
    fn info(&self) -> Result<CollectionInfo> {
        Ok(CollectionInfo {
            name: self.name.clone(),
            spec: self.spec.clone(),
            count: self.count()?,
            rotation: self
                .rotation
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|r| r.info.clone()),
            renest: None,
        })
    }

    fn count(&self) -> Result<usize> {
        self.with_shard(|shard| {
            shard
                .count(qdrant_edge::CountRequest {
                    filter: None,
                    exact: true,
                })
                .map_err(storage)
        })
    }

    /// Applies `op` durably (`write_on`), then keeps the write-ahead log small.
    fn write(&self, op: UpdateOperation, points: usize) -> Result<()> {
        self.with_shard(|shard| self.write_on(shard, op, points))?;
        // The write is durable: a failed compaction is only logged.
        if let Err(e) = self.compact_wal() {
            tracing::warn!("{:?}: write-ahead log not compacted: {e}", self.name);
        }
        Ok(())
    }

    /// Applies `op` and flushes, under the write lock; starts an optimize after bulk writes.
    fn write_on(&self, shard: &Arc<EdgeShard>, op: UpdateOperation, points: usize) -> Result<()> {
        let mut since = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        guarded("writing", || shard.update(op))?.map_err(storage)?;
        guarded("flushing", || shard.flush())?;
        *since += points;
        if *since >= OPTIMIZE_AFTER && !self.optimizing.swap(true, Ordering::SeqCst) {
            *since = 0;
            let (shard, writes, flag) =
                (shard.clone(), self.writes.clone(), self.optimizing.clone());
            let flag_on_failure = flag.clone();
            let spawned = std::thread::Builder::new()
                .name("mrl-optimize".into())
                .spawn(move || {
                    {
                        let _guard = writes.lock().unwrap_or_else(|e| e.into_inner());
                        match guarded("optimizing", || {
                            let done = shard.optimize();
                            shard.flush();
                            done
                        }) {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!("optimize failed: {e}"),
                            Err(e) => tracing::warn!("{e}"),
                        }
                    }
                    // Released before the flag clears, so that once it reads false nothing but
                    // the collection holds the shard and it can be closed.
                    drop(shard);
                    flag.store(false, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                // The write is durable; only its index build is left for a later one.
                tracing::warn!("cannot start an optimize: {e}");
                flag_on_failure.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

fn point_id(id: &str) -> PointId {
    PointId::Uuid(point_uuid(id))
}

fn edge_distance(d: Distance) -> EdgeDistance {
    match d {
        Distance::Cosine => EdgeDistance::Cosine,
        Distance::Dot => EdgeDistance::Dot,
        Distance::Euclid => EdgeDistance::Euclid,
    }
}

fn nearest(vector: &[f32], using: &str) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
        query: VectorInternal::Dense(vector.to_vec()),
        using: Some(using.to_string()),
    }))
}

/// Writes `bytes` to `path` through a temporary file and a rename: a crash leaves the old
/// file or the new one.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(storage)?;
        f.write_all(bytes).map_err(storage)?;
        f.sync_all().map_err(storage)?;
    }
    std::fs::rename(&tmp, path).map_err(storage)?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable once the folder is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(storage)?;
    }
    Ok(())
}

impl VectorStore for EdgeStore {
    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<bool> {
        check_name(name)?;
        spec.layout.check(&spec.dims)?;
        if let Some(option) = spec.layout.options_set().first() {
            return Err(StoreError::Unsupported {
                option: option.to_string(),
                message: format!(
                    "{option}: the embedded store keeps one shard with every size as floats in \
                     RAM under the default HNSW; use a Qdrant server (--qdrant-url) for {:?}",
                    spec.layout.options_set()
                ),
            });
        }
        let lifecycle = self.lifecycle(name);
        let _lifecycle = lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(existing) = self.get(name) {
            if existing.spec == *spec {
                return Ok(false);
            }
            return Err(StoreError::Conflict {
                name: name.to_string(),
                existing: serde_json::to_string(&existing.spec).map_err(storage)?,
            });
        }
        let path = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        let shard_dir = path.join("shard");
        std::fs::create_dir_all(&shard_dir).map_err(storage)?;
        let mut config = EdgeConfigBuilder::new()
            .on_disk_payload(true)
            .wal_options(wal::options());
        for (vector, d) in spec.vectors() {
            config = config.vector(
                vector,
                EdgeVectorParamsBuilder::new(d, edge_distance(spec.distance)).build(),
            );
        }
        let shard =
            guarded("creating", || EdgeShard::new(&shard_dir, config.build()))?.map_err(storage)?;
        // Written last: a folder without it is an unfinished creation, removed on open.
        let spec_json = serde_json::to_vec_pretty(spec).map_err(storage)?;
        let tmp = path.join(format!("{SPEC_FILE}.tmp"));
        std::fs::write(&tmp, spec_json).map_err(storage)?;
        std::fs::rename(&tmp, path.join(SPEC_FILE)).map_err(storage)?;
        self.collections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                Arc::new(Collection::new(
                    name.to_string(),
                    spec.clone(),
                    shard,
                    shard_dir,
                )),
            );
        Ok(true)
    }

    fn list(&self) -> Result<Vec<CollectionInfo>> {
        let all: Vec<Arc<Collection>> = self
            .collections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Vec::with_capacity(all.len());
        for c in all {
            match c.info() {
                Ok(info) => out.push(info),
                // Deleted while the list was being made.
                Err(StoreError::NoSuchCollection(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn info(&self, name: &str) -> Result<CollectionInfo> {
        self.get(name)?.info()
    }

    fn delete(&self, name: &str) -> Result<()> {
        let lifecycle = self.lifecycle(name);
        let _lifecycle = lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        let removed = self
            .collections
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| StoreError::NoSuchCollection(name.to_string()))?;
        // Operations in flight finish first; the shard's last flush runs before the files go.
        // A failed last flush still deletes: the caller asked for the data to go.
        if let Err(e) = removed.close() {
            tracing::warn!("closing collection {name:?} for deletion: {e}");
        }
        let path = self.dir.join(name);
        // The spec goes first, so a crash mid-delete leaves an unfinished folder, not a
        // half-deleted collection.
        std::fs::remove_file(path.join(SPEC_FILE)).map_err(storage)?;
        std::fs::remove_dir_all(&path).map_err(storage)
    }

    fn upsert(&self, name: &str, docs: Vec<StoredDocument>) -> Result<()> {
        let c = self.get(name)?;
        c.spec.check_documents(name, &docs)?;
        let n = docs.len();
        let points = docs
            .into_iter()
            .map(|mut d| {
                let payload = d.full_payload();
                let vectors = Vectors::new_named(d.vectors);
                PointStruct::new(point_id(&d.id), vectors, Value::Object(payload)).into()
            })
            .collect::<Vec<_>>();
        let op = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        c.write(op, n)
    }

    fn delete_documents(&self, name: &str, ids: &[String]) -> Result<()> {
        let c = self.get(name)?;
        let op = UpdateOperation::PointOperation(PointOperations::DeletePoints {
            ids: ids.iter().map(|id| point_id(id)).collect(),
        });
        c.write(op, 0)
    }

    fn search(&self, name: &str, q: &VectorQuery) -> Result<Vec<Hit>> {
        let c = self.get(name)?;
        c.spec.check_query(name, q)?;
        let filter: Option<Filter> = q
            .filter
            .as_ref()
            .map(|f| {
                serde_json::from_value(point_filter(f)?)
                    .map_err(|e| StoreError::InvalidFilter(e.to_string()))
            })
            .transpose()?;
        let params = search_params(q);
        let prefetches = match &q.funnel {
            Some(f) => vec![Prefetch {
                prefetches: Vec::new(),
                query: Some(nearest(&f.vector, &f.using)),
                limit: f.candidates,
                params,
                filter: filter.clone(),
                score_threshold: None,
            }],
            None => Vec::new(),
        };
        let request = QueryRequest {
            prefetches,
            query: Some(nearest(&q.vector, &q.using)),
            filter,
            score_threshold: None,
            limit: q.limit,
            offset: 0,
            params,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let points =
            c.with_shard(|shard| guarded("searching", || shard.query(request))?.map_err(storage))?;
        Ok(points
            .into_iter()
            .map(|p| {
                let payload: Map<String, Value> = p
                    .payload
                    .map(|pl| pl.0.into_iter().collect())
                    .unwrap_or_default();
                Hit::from_payload(payload, p.score, p.id)
            })
            .collect())
    }

    fn optimize(&self, name: &str) -> Result<()> {
        let c = self.get(name)?;
        c.with_shard(|shard| {
            // A background optimize holds the same lock, so this waits for it first.
            let mut since = c.writes.lock().unwrap_or_else(|e| e.into_inner());
            guarded("optimizing", || shard.optimize())?.map_err(storage)?;
            guarded("flushing", || shard.flush())?;
            *since = 0;
            Ok(())
        })
    }

    fn ids(&self, name: &str) -> Result<Vec<String>> {
        const PAGE: usize = 1024;
        let c = self.get(name)?;
        let key = ID_KEY
            .parse()
            .map_err(|_| StoreError::Storage(format!("{ID_KEY} is not a JSON path")))?;
        let fields = WithPayloadInterface::Fields(vec![key]);
        let mut out = Vec::new();
        let mut offset = None;
        c.with_shard(|shard| loop {
            let request = ScrollRequest {
                offset,
                limit: Some(PAGE),
                filter: None,
                with_payload: Some(fields.clone()),
                with_vector: WithVector::Bool(false),
                order_by: None,
            };
            let (records, next) =
                guarded("scrolling", || shard.scroll(request))?.map_err(storage)?;
            for r in records {
                match r.payload.and_then(|mut p| p.0.remove(ID_KEY)) {
                    Some(Value::String(id)) => out.push(id),
                    _ => return Err(StoreError::Storage(format!("point {:?} has no id", r.id))),
                }
            }
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(out),
            }
        })
    }

    fn rotation(&self, name: &str) -> Result<Option<StoredRotation>> {
        Ok(self
            .get(name)?
            .rotation
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    fn set_rotation(&self, name: &str, rotation: &StoredRotation) -> Result<()> {
        let c = self.get(name)?;
        let bytes = serde_json::to_vec(rotation).map_err(storage)?;
        // Inside the gate: a delete cannot remove the folder while the file is replaced.
        c.with_shard(|_| replace_file(&self.dir.join(name).join(ROTATION_FILE), &bytes))?;
        *c.rotation.write().unwrap_or_else(|e| e.into_inner()) = Some(rotation.clone());
        Ok(())
    }

    fn scroll_vectors(
        &self,
        name: &str,
        vector: &str,
        offset: Option<String>,
        limit: usize,
        text: bool,
    ) -> Result<VectorPage> {
        let c = self.get(name)?;
        let path = |key: &str| {
            key.parse()
                .map_err(|_| StoreError::Storage(format!("{key} is not a JSON path")))
        };
        let mut keys = vec![path(ID_KEY)?];
        if text {
            keys.push(path(TEXT_KEY)?);
        }
        let offset = offset
            .map(|o| {
                uuid::Uuid::parse_str(&o)
                    .map(PointId::Uuid)
                    .map_err(|e| StoreError::Storage(format!("bad scroll offset {o:?}: {e}")))
            })
            .transpose()?;
        let request = ScrollRequest {
            offset,
            limit: Some(limit),
            filter: None,
            with_payload: Some(WithPayloadInterface::Fields(keys)),
            with_vector: WithVector::Selector(vec![vector.to_string()]),
            order_by: None,
        };
        let (records, next) =
            c.with_shard(|shard| guarded("scrolling", || shard.scroll(request))?.map_err(storage))?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let mut payload = r.payload.map(|p| p.0).unwrap_or_default();
            let id = match payload.remove(ID_KEY) {
                Some(Value::String(id)) => id,
                _ => return Err(StoreError::Storage(format!("point {:?} has no id", r.id))),
            };
            let text = match payload.remove(TEXT_KEY) {
                Some(Value::String(t)) => t,
                _ => String::new(),
            };
            if let Some(VectorStructInternal::Named(mut named)) = r.vector {
                if let Some(VectorInternal::Dense(v)) = named.remove(vector) {
                    out.push(ScrolledPoint {
                        id,
                        vector: v,
                        text,
                        written: None,
                    });
                }
            }
        }
        let next = next.map(|n| match n {
            PointId::Uuid(u) => u.to_string(),
            PointId::NumId(n) => n.to_string(),
        });
        Ok((out, next))
    }

    fn update_vectors(&self, name: &str, points: Vec<super::PointUpdate>) -> Result<()> {
        let c = self.get(name)?;
        let n = points.len();
        let points = points
            .into_iter()
            // One process owns the folder: its re-nest pages are ordered with its writes by
            // `adapt`'s lock, so write tokens are not needed here.
            .map(|p| PointVectorsPersisted {
                id: point_id(&p.id),
                vector: VectorStructPersisted::Named(
                    p.vectors
                        .into_iter()
                        .map(|(k, v)| (k, VectorPersisted::Dense(v)))
                        .collect(),
                ),
            })
            .collect();
        let op =
            UpdateOperation::VectorOperation(VectorOperations::UpdateVectors(UpdateVectorsOp {
                points,
                update_filter: None,
            }));
        c.write(op, n)
    }
}

/// The engine's search parameters for `q` (`None`: the engine's defaults).
fn search_params(q: &VectorQuery) -> Option<SearchParams> {
    (q.exact || q.params.hnsw_ef.is_some()).then(|| SearchParams {
        exact: q.exact,
        hnsw_ef: q.params.hnsw_ef.map(|ef| ef as usize),
        ..SearchParams::default()
    })
}

#[cfg(test)]
mod tests;
