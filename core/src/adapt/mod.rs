//! Nesting: the one place a raw full vector becomes a collection's stored and searched vectors,
//! and adaptive collections, which re-nest their smaller sizes onto their own documents.
//!
//! A generic collection stores each size as the model's prefix, renormalised. An adaptive one
//! keeps its widest size (the full width) as the model gives it and cuts every smaller size from
//! `R v`, where `R` is by default the orthogonal rotation onto the uncentred principal axes of
//! the collection's own stored full-width vectors (`mrl_encoder::rotation`; no labels): short
//! prefixes keep more of the full width's cosines than the model's own prefixes do.
//!
//! `R` need not be orthogonal: each fit also trains a projection from the PCA rotation on the
//! same sample (`learn`: Matryoshka-Adaptor's similarity losses at every rotated size) and
//! keeps it instead only when it beats PCA on held-out documents (`learn::keeps_learned`).
//! Either way the full width is never rotated, so full-width results do not change.
//!
//! A re-nest (`Adapter::renest`): sample the stored full-width vectors → fit `R` (f64) → wait
//! for searches that may still read the idle rotation slot → rewrite that slot page by page from
//! each point's stored full-width vector (no re-embedding) while writers fill both slots → store
//! the rotation (the switch: atomic and durable) → searches use the new slot.
//!
//! What holds, and why:
//! - a search takes one `Current` (a rotation and its slot) and searches only that slot, so it
//!   sees every point under one rotation; a re-nest never writes the slot a search may read
//!   (it writes the idle one, after draining searches that started before the last switch);
//! - every write of documents holds `writes` and fills the current slot, and during a re-nest
//!   the idle slot too; each page a re-nest rewrites is read and written under the same lock,
//!   so a page never overwrites a newer document with an older one's vectors;
//! - kill -9 before the switch leaves the old rotation in force (the half-written idle slot is
//!   never read); the next open sees the collection is still due and re-nests again.
//!
//! Those locks order what one process does. Processes that share a collection on a Qdrant
//! server also go by the store's epoch: each write and search is checked against it after it
//! ran, and a re-nest claims its version in the store first (`shared` says how and why).
//!
//! Query maps: each fit also aligns the checkpoint's other profiles (`b50`, `b25`, …) with the
//! documents' profile on the collection's own texts. Query-like spans cut from a sample of
//! stored documents (the documents themselves where they are too short) are embedded by the
//! documents' profile and by each other profile; a ridge map (`mrl_encoder::linear`) from
//! that profile's space into the documents' is fitted on the spans of 6/8 of the documents,
//! its ridge term chosen on 1/8 and its figures (mean cosine, overlap of the neighbours
//! found among the sampled documents) measured on the last 1/8. The maps are versioned with
//! the rotation (one record, one switch), so a search by a cheap profile embeds with it, maps
//! under the same `Current` it cuts with, and never mixes a map of one fit with a rotation of
//! another. A map only changes queries: stored points are never mapped.
//!
//! Every point written and every query cut goes through `R`, so it is applied as a
//! `LinearMap` (f32, the 8-lane dot kernel): as stored, and cheap next to the search.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use std::collections::{BTreeMap, HashMap};

use mrl_encoder::linear::LinearMap;
use mrl_encoder::rotation::Rotation;

mod current;
mod learn;
mod maps;
mod shared;

use current::Current;
pub use current::SearchQuery;

use crate::documents::Document;
use crate::error::{Error, Result};
use crate::store::{
    encode_f32, CollectionInfo, CollectionSpec, Epoch, Hit, PointUpdate, QueryMapInfo,
    RenestProgress, RotationInfo, StoreError, StoredDocument, StoredRotation, VectorStore,
};

/// Points read and rewritten per step of a re-nest (one store write each).
const PAGE: usize = 256;
/// Points read per page while sampling for a fit.
const SAMPLE_PAGE: usize = 1024;
/// The most full-width vectors a fit reads: the scroll runs in point-id order, a hash of the
/// caller's id, so the first ones are a uniform sample.
const MAX_SAMPLE: usize = 20_000;
/// Documents (with text) of the sample that query maps are fitted and judged on, with a
/// query-like span of each: each is embedded once per query profile, which is most of a
/// fit's time.
const MAP_SAMPLE: usize = 1024;
/// Fewer documents with text than this fit no query maps (a `w`-wide map from fewer pairs is
/// mostly its ridge term).
const MIN_MAP_SAMPLE: usize = 64;

/// What a re-nest embeds the collection's own texts with, to map the checkpoint's other
/// profiles into its documents' space. `Embeddings` is the one the service and the library
/// use; anything that embeds texts by profile name will do.
pub trait QueryEncoder: Send + Sync {
    /// The profiles whose queries may be mapped onto documents embedded by `documents`.
    fn query_profiles(&self, documents: &str) -> Vec<String>;

    /// Raw (pooled, unnormalised) vectors of `texts` under `profile`, one per text.
    ///
    /// Errors: the encoder's (an unknown profile, a failed forward pass).
    fn encode(&self, texts: &[String], profile: &str) -> Result<Vec<Vec<f32>>>;
}

/// One collection's nesting in this process: its current rotation, and for an adaptive one
/// what coordinates its re-nests with its searches and writes. Shared by every handle on the
/// collection (`Collections` keeps one per name).
pub struct Adapter {
    store: Arc<dyn VectorStore>,
    name: String,
    spec: CollectionSpec,
    current: RwLock<Arc<Current>>,
    /// Read side: a search, from taking `current` to its answer. Write side: taken (and let go)
    /// by a re-nest before it writes the idle slot, which searches from before the last switch
    /// may still read.
    searches: RwLock<()>,
    /// Held by every document write or delete and by each page of a re-nest; holds the
    /// rotation being filled while a re-nest runs.
    writes: Mutex<Option<Arc<Current>>>,
    running: AtomicBool,
    progress: Mutex<Option<RenestProgress>>,
    /// Set when the collection is deleted through `Collections`: a re-nest in flight stops
    /// before its next page, so it never writes into a collection recreated under the name.
    closed: AtomicBool,
    /// Documents written since the count was last taken, added to it: an upper bound of the
    /// collection's size (replaced ids count twice), so the store is counted only when a
    /// re-nest may be due.
    estimate: Mutex<usize>,
    /// What fits query maps (`None`: no maps, e.g. a collection opened without a model).
    encoder: Option<Arc<dyn QueryEncoder>>,
    /// For an adaptive collection in a store other processes write too: what this process
    /// last saw of its epoch (`None`: one process only).
    seen: Option<Mutex<shared::Seen>>,
}

/// Clears the `running` flag when dropped, a panic included, so waiters never spin forever.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Adapter {
    /// The nesting of a collection as the store holds it now (`info`: its name, spec and
    /// count, as `VectorStore::info` gave them; its current rotation is read here).
    /// One per collection per process: re-nests coordinate with searches and writes through
    /// it (`Collections` keeps it; two would not see each other's).
    ///
    /// Errors: `Store` when its rotation cannot be read, or is malformed or not as wide as
    /// the collection's full width.
    pub fn load(
        store: Arc<dyn VectorStore>,
        info: CollectionInfo,
        encoder: Option<Arc<dyn QueryEncoder>>,
    ) -> Result<Self> {
        let CollectionInfo {
            name, spec, count, ..
        } = info;
        // The epoch before the rotation: a rotation newer than it is caught by the first check.
        let shared = match spec.adapt {
            Some(_) => store.shared(&name)?,
            None => None,
        };
        let stored = match spec.adapt {
            Some(_) => store.rotation(&name)?,
            None => None,
        };
        let current = Current::from_stored(&name, &spec, stored)?;
        let adapter = Self {
            store,
            name,
            spec,
            current: RwLock::new(Arc::new(current)),
            searches: RwLock::new(()),
            writes: Mutex::new(None),
            running: AtomicBool::new(false),
            progress: Mutex::new(None),
            closed: AtomicBool::new(false),
            estimate: Mutex::new(count),
            encoder,
            seen: shared.map(|_| Mutex::new(shared::Seen::default())),
        };
        if let Some(now) = shared {
            // From nothing: takes the epoch, and a pending rotation to fill.
            adapter.refresh(now)?;
        }
        Ok(adapter)
    }

    /// The width of `profile`'s vectors that the current fit maps into the documents' space
    /// (`None`: no map). A search by that profile, as wide as this, is allowed whatever the
    /// checkpoint declares.
    pub fn maps_queries_of(&self, profile: &str) -> Option<usize> {
        self.current().maps.get(profile).map(LinearMap::cols)
    }

    /// Stops this nesting for good (its collection is being deleted): writes, searches and a
    /// re-nest in flight answer `NoSuchCollection` from here on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::NoSuchCollection(self.name.clone()).into());
        }
        Ok(())
    }

    /// The collection's spec, as it was when loaded.
    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store the collection is in.
    pub fn vector_store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The write lock, for an adaptive collection (a generic one's writes need no order).
    fn lock_writes(&self) -> Option<MutexGuard<'_, Option<Arc<Current>>>> {
        self.spec
            .adapt
            .map(|_| self.writes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stores documents with their raw full vectors (one per document): every size cut under
    /// the current rotation, and during a re-nest under the one being filled too. Durable when
    /// it returns; may start a re-nest in the background.
    ///
    /// Errors: `Store` errors; `Internal` when a vector is narrower than a stored size.
    pub fn store(self: &Arc<Self>, docs: Vec<Document>, vectors: Vec<Vec<f32>>) -> Result<usize> {
        let n = docs.len();
        if n == 0 {
            return Ok(0);
        }
        {
            let pending = self.lock_writes();
            self.check_open()?;
            let cut = |current: &Current, filling: &Option<Arc<Current>>, v: &[f32]| {
                let mut named = current.nest(&self.spec, v, &self.spec.dims)?;
                if let Some(next) = filling {
                    named.extend(next.nest(&self.spec, v, &self.spec.rotated_dims())?);
                }
                Ok::<_, Error>(named)
            };
            match &self.seen {
                None => {
                    let current = self.current();
                    let filling = pending.as_ref().and_then(|g| g.as_ref().cloned());
                    let stored = docs
                        .into_iter()
                        .zip(vectors)
                        .map(|(d, v)| {
                            Ok(StoredDocument {
                                vectors: cut(&current, &filling, &v)?,
                                id: d.id,
                                text: d.text,
                                payload: d.payload,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    self.store.upsert(&self.name, stored)?;
                }
                // Shared: run again under the store's newer epoch if it moved meanwhile.
                Some(_) => self.under_one_epoch(|| {
                    let filling = self.seen_filling();
                    let current = self.current();
                    let stored = docs
                        .iter()
                        .zip(&vectors)
                        .map(|(d, v)| {
                            Ok(StoredDocument {
                                vectors: cut(&current, &filling, v)?,
                                id: d.id.clone(),
                                text: d.text.clone(),
                                payload: d.payload.clone(),
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(self.store.upsert(&self.name, stored)?)
                })?,
            }
        }
        *self.estimate.lock().unwrap_or_else(|e| e.into_inner()) += n;
        self.after_write();
        Ok(n)
    }

    /// Deletes documents by caller id; durable when it returns.
    ///
    /// Errors: `Store` errors.
    pub fn delete(&self, ids: &[String]) -> Result<()> {
        let _writes = self.lock_writes();
        self.check_open()?;
        Ok(self.store.delete_documents(&self.name, ids)?)
    }

    /// Runs a search under the current rotation: every point it ranks is under it.
    ///
    /// Errors: `Store` errors.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<Hit>> {
        let _searching = self.searches.read().unwrap_or_else(|e| e.into_inner());
        self.check_open()?;
        self.under_one_epoch(|| {
            let query = self.current().query(&self.spec, q)?;
            Ok(self.store.search(&self.name, &query)?)
        })
    }

    /// The collection's definition and size now, with a re-nest running in this process.
    ///
    /// Errors: `Store` errors (`NoSuchCollection` once it is deleted).
    pub fn info(&self) -> Result<CollectionInfo> {
        let mut info = self.store.info(&self.name)?;
        info.renest = *self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Ok(info)
    }

    /// The size from which the next re-nest is due: the threshold, then twice the size at the
    /// last fit, at once for a fit an older version made (`usize::MAX` for a collection that
    /// does not adapt).
    fn next_due(&self) -> usize {
        let threshold = self.spec.adapt.map_or(usize::MAX, |a| a.threshold.max(1));
        match &self.current().info {
            // A fit from before learned nesting and query maps (it records no nesting): due
            // again at once, so an upgraded server fits them on its own.
            Some(i) if i.nesting.is_none() => 0,
            Some(i) => threshold.max(2 * i.points),
            None => threshold,
        }
    }

    /// Starts a re-nest on a thread of its own when the collection may be due one and none
    /// runs (the thread counts the documents and re-nests while it is due).
    pub(crate) fn after_write(self: &Arc<Self>) {
        if self.spec.adapt.is_none()
            || *self.estimate.lock().unwrap_or_else(|e| e.into_inner()) < self.next_due()
            || self.running.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("mrl-renest".into())
            .spawn(move || {
                {
                    let _running = Running(&me.running);
                    if let Err(e) = me.renest_due(false) {
                        metrics::counter!("mrl_renest_failures_total").increment(1);
                        tracing::warn!("re-nesting {:?} failed: {e}", me.name);
                        return;
                    }
                }
                // A write that came after the last count but before the flag cleared saw a
                // re-nest running and left it to this one.
                me.after_write();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a re-nest of {:?}: {e}", self.name);
            self.running.store(false, Ordering::SeqCst);
        }
    }

    /// Takes the `running` flag, waiting for a re-nest in flight to finish.
    fn wait_running(&self) -> Running<'_> {
        while self.running.swap(true, Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Running(&self.running)
    }

    /// Waits for a running re-nest, then runs any that is due on this thread: returns once
    /// the collection is under the rotation its size calls for (bulk loaders end with it).
    ///
    /// A collection shared with other processes also waits for a re-nest another process
    /// is running.
    ///
    /// Errors: the failed re-nest's (the old rotation stays in force).
    pub fn finish(&self) -> Result<()> {
        let _running = self.wait_running();
        self.renest_due(true)
    }

    /// Re-nests now, whatever the collection's size (after a bulk load that has not doubled
    /// since the last fit, say), once any running re-nest is done; returns the new rotation.
    ///
    /// Errors: `InvalidField` (`adapt`) for a collection that does not adapt; a failed
    /// re-nest's (the old rotation stays in force).
    pub fn renest_now(&self) -> Result<RotationInfo> {
        if self.spec.adapt.is_none() {
            return Err(Error::field(
                "adapt",
                format!("collection {:?} does not adapt", self.name),
            ));
        }
        let _running = self.wait_running();
        loop {
            self.wait_for_other_claims()?;
            let count = self.store.info(&self.name)?.count;
            if let Some(info) = self.renest(count)? {
                return Ok(info);
            }
        }
    }

    /// Re-nests while the collection is due (it may have doubled again meanwhile). Where
    /// another process is re-nesting it, `wait` waits for that one and looks again; else
    /// this leaves the collection to it.
    fn renest_due(&self, wait: bool) -> Result<()> {
        loop {
            if wait {
                self.wait_for_other_claims()?;
            } else if self.seen.is_some() {
                // Due by the rotation in force, which another process may have moved.
                let now = self.shared_now()?;
                self.refresh(now)?;
            }
            let count = self.store.info(&self.name)?.count;
            *self.estimate.lock().unwrap_or_else(|e| e.into_inner()) = count;
            if count < self.next_due() {
                return Ok(());
            }
            if self.renest(count)?.is_none() && !wait {
                return Ok(());
            }
        }
    }

    /// Fits the next version on the collection's `count` documents and switches to it;
    /// `None` when another process is re-nesting the collection or moved first (this
    /// process's view is then up to date).
    fn renest(&self, count: usize) -> Result<Option<RotationInfo>> {
        let start = Instant::now();
        let seen = match &self.seen {
            Some(_) => {
                let now = self.shared_now()?;
                self.refresh(now)?;
                if now.epoch.pending.is_some() && now.lease_live {
                    return Ok(None);
                }
                Some(now.epoch)
            }
            None => None,
        };
        let version = seen.map_or_else(|| self.current().version(), |e| e.current) + 1;
        let widest = self.spec.widest();
        let full_name = self.spec.vector_name(widest, 0);
        self.set_progress(Some(RenestProgress {
            version,
            done: 0,
            total: count,
        }));
        let mut claim = None;
        let result = (|| -> Result<Option<RotationInfo>> {
            let mut sample = Vec::new();
            // (text, index into `sample`) of the first documents with text.
            let mut texts: Vec<(String, usize)> = Vec::new();
            let want_texts = self.encoder.is_some();
            let mut offset = None;
            loop {
                let (page, next) = self.store.scroll_vectors(
                    &self.name,
                    &full_name,
                    offset,
                    SAMPLE_PAGE,
                    want_texts && texts.len() < MAP_SAMPLE,
                )?;
                for p in page {
                    if texts.len() < MAP_SAMPLE && !p.text.trim().is_empty() {
                        texts.push((p.text, sample.len()));
                    }
                    sample.push(p.vector);
                }
                match next {
                    Some(n) if sample.len() < MAX_SAMPLE => offset = Some(n),
                    _ => break,
                }
            }
            sample.truncate(MAX_SAMPLE);
            texts.retain(|(_, i)| *i < sample.len());
            let fitted = Rotation::fit(&sample).map_err(|e| Error::Internal(e.to_string()))?;
            let stage = Instant::now();
            let nesting = learn::learn(&sample, &self.spec.rotated_dims());
            tracing::info!(
                "{:?}: nesting kept {} in {:.2} s",
                self.name,
                nesting.info.kept,
                stage.elapsed().as_secs_f64()
            );
            let matrix = nesting.matrix.unwrap_or_else(|| fitted.matrix_f32());
            // Applied as it is stored (f32), so that a reload cuts the same vectors.
            let rotation = Some(
                LinearMap::from_matrix_f32(widest, widest, &matrix)
                    .map_err(|e| Error::Internal(e.to_string()))?,
            );
            let stage = Instant::now();
            let (maps, queries) = self.fit_maps(&texts, &sample);
            if !queries.is_empty() {
                tracing::info!(
                    "{:?}: {} query maps in {:.2} s",
                    self.name,
                    queries.len(),
                    stage.elapsed().as_secs_f64()
                );
            }
            let mut info = RotationInfo {
                version,
                fitted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                points: count,
                sample: sample.len(),
                seconds: 0.0,
                queries,
                nesting: Some(nesting.info),
            };
            let stored_with = |info: &RotationInfo| {
                let mut stored = StoredRotation::new(info.clone(), &matrix);
                stored.maps = maps
                    .iter()
                    .map(|(p, m)| (p.clone(), encode_f32(&m.matrix_f32())))
                    .collect::<BTreeMap<_, _>>();
                stored
            };
            let filling = Arc::new(Current {
                rotation: rotation.clone(),
                info: Some(info.clone()),
                maps: HashMap::new(),
            });
            drop(sample);
            let mut renewed = Instant::now();
            if let Some(seen) = seen {
                // Other processes fill the new slot from here on, so it is claimed first.
                info.seconds = start.elapsed().as_secs_f64();
                match self
                    .store
                    .claim(&self.name, &seen, &stored_with(&info), shared::LEASE)?
                {
                    Some(c) => {
                        renewed = Instant::now();
                        claim = Some(c);
                        // Under the write lock: a write here either ran before (and finds the
                        // epoch moved) or fills the new slot (shared writes fill from the view).
                        let _writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
                        self.set_seen(c, None, Some(filling.clone()));
                    }
                    None => {
                        let now = self.shared_now()?;
                        self.refresh(now)?;
                        return Ok(None);
                    }
                }
            }
            // Searches from before the last switch may read the slot about to be written.
            drop(self.searches.write().unwrap_or_else(|e| e.into_inner()));
            *self.writes.lock().unwrap_or_else(|e| e.into_inner()) = Some(filling.clone());
            let mut done = 0;
            self.rewrite(&filling, claim.as_ref(), &mut renewed, None, |n| {
                done += n;
                self.set_progress(Some(RenestProgress {
                    version,
                    done,
                    total: count,
                }));
            })?;
            if let (Some(_), Some(&dim)) = (claim, self.spec.rotated_dims().first()) {
                // Writes of other processes cut off (a crash) between a write that dropped the
                // new slot and the one that would have filled it.
                let lacking = self.spec.vector_name(dim, StoredRotation::slot(version));
                self.rewrite(
                    &filling,
                    claim.as_ref(),
                    &mut renewed,
                    Some(&lacking),
                    |_| {},
                )?;
            }
            let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            self.check_open()?;
            info.seconds = start.elapsed().as_secs_f64();
            let stored = stored_with(&info);
            match claim {
                Some(c) => {
                    if !self.store.finish(&self.name, &c, &stored)? {
                        return Err(self.claim_lost(&c));
                    }
                    claim = None;
                }
                None => self.store.set_rotation(&self.name, &stored)?,
            }
            let switched = Current {
                rotation,
                info: Some(info.clone()),
                maps,
            };
            match self.seen_epoch() {
                // The rotation before the epoch that names it (`shared`).
                Some(e) => self.set_seen(
                    Epoch {
                        current: version,
                        pending: None,
                        ..e
                    },
                    Some(switched),
                    None,
                ),
                None => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(switched)
                }
            }
            *writes = None;
            Ok(Some(info))
        })();
        *self.writes.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.set_progress(None);
        if let Some(c) = claim {
            // Failed after its claim: others need not wait for the lease to run out.
            if let Err(e) = self.store.abandon(&self.name, &c) {
                tracing::warn!(
                    "{:?}: cannot give up re-nest claim {}: {e}",
                    self.name,
                    c.claims
                );
            }
        }
        let Some(info) = result? else {
            return Ok(None);
        };
        let seconds = start.elapsed().as_secs_f64();
        metrics::counter!("mrl_renests_total").increment(1);
        metrics::histogram!("mrl_renest_seconds").record(seconds);
        tracing::info!(
            "re-nested {:?} to rotation {} on {} of {} documents in {seconds:.2} s",
            self.name,
            info.version,
            info.sample,
            info.points
        );
        Ok(Some(info))
    }

    /// Rewrites the idle slot of every point (of those lacking named vector `lacking`, when
    /// given) from its stored full-width vector under `filling`, a page at a time under the
    /// write lock; each page only where no write came since it was read. A shared
    /// collection's `claim` is renewed every quarter lease; `on_page` gets each page's size.
    ///
    /// Errors: the store's; `NoSuchCollection` once the collection is deleted; `Unavailable`
    /// when the claim was taken over.
    fn rewrite(
        &self,
        filling: &Current,
        claim: Option<&Epoch>,
        renewed: &mut Instant,
        lacking: Option<&str>,
        mut on_page: impl FnMut(usize),
    ) -> Result<()> {
        let full_name = self.spec.vector_name(self.spec.widest(), 0);
        let rotated = self.spec.rotated_dims();
        let mut offset = None;
        loop {
            if let Some(c) = claim {
                if renewed.elapsed() > shared::LEASE / 4 {
                    if !self.store.renew(&self.name, c, shared::LEASE)? {
                        return Err(self.claim_lost(c));
                    }
                    *renewed = Instant::now();
                }
            }
            let _writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            self.check_open()?;
            let (page, next_page) = match lacking {
                Some(l) => self
                    .store
                    .scroll_lacking(&self.name, &full_name, l, offset, PAGE)?,
                None => self
                    .store
                    .scroll_vectors(&self.name, &full_name, offset, PAGE, false)?,
            };
            let n = page.len();
            let updates = page
                .into_iter()
                .map(|p| {
                    Ok(PointUpdate {
                        vectors: filling.nest(&self.spec, &p.vector, &rotated)?,
                        id: p.id,
                        written: p.written,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            if !updates.is_empty() {
                self.store.update_vectors(&self.name, updates)?;
            }
            drop(_writes);
            on_page(n);
            match next_page {
                Some(o) => offset = Some(o),
                None => return Ok(()),
            }
        }
    }

    /// Query maps for the checkpoint's other profiles, fitted on query-like spans of `texts`
    /// (`maps::span`, embedded by the documents' profile and each query profile; the texts
    /// themselves where they are too short), each text with its index into `sample`, the
    /// stored full-width vectors neighbours are found among; the ridge term chosen and the
    /// figures measured on texts held out of the fit (`maps::fit_map`). A profile whose
    /// embedding or fit fails is left unmapped (logged): the rotation matters more than any
    /// one map.
    fn fit_maps(
        &self,
        texts: &[(String, usize)],
        sample: &[Vec<f32>],
    ) -> (HashMap<String, LinearMap>, Vec<QueryMapInfo>) {
        let (mut maps, mut infos) = self.fit_new_maps(texts, sample);
        // A profile this fit could not map keeps the last fit's map: maps carry queries into
        // the unrotated full width, so they hold under any rotation, and a search planned
        // under the last fit still runs under this one.
        let previous = self.current();
        for q in previous.info.iter().flat_map(|i| &i.queries) {
            if let (false, Some(m)) = (maps.contains_key(&q.profile), previous.maps.get(&q.profile))
            {
                maps.insert(q.profile.clone(), m.clone());
                infos.push(q.clone());
            }
        }
        (maps, infos)
    }

    /// `fit_maps` without what the last fit carries forward.
    fn fit_new_maps(
        &self,
        texts: &[(String, usize)],
        sample: &[Vec<f32>],
    ) -> (HashMap<String, LinearMap>, Vec<QueryMapInfo>) {
        let mut maps = HashMap::new();
        let mut infos = Vec::new();
        let Some(encoder) = &self.encoder else {
            return (maps, infos);
        };
        if texts.len() < MIN_MAP_SAMPLE {
            return (maps, infos);
        }
        let (spans, span_of): (Vec<String>, Vec<usize>) = texts
            .iter()
            .enumerate()
            .flat_map(|(d, (t, _))| {
                (0..maps::SPANS_PER_DOCUMENT)
                    .filter_map(move |k| maps::span(t, d, k).map(|s| (s, d)))
            })
            .unzip();
        let candidates: Vec<&[f32]> = texts.iter().map(|(_, i)| sample[*i].as_slice()).collect();
        let span_targets;
        let mut spanned = span_of.clone();
        spanned.dedup();
        let (strings, items) = if spanned.len() >= MIN_MAP_SAMPLE {
            // The spans' targets: what the documents' profile makes of them (a query by it).
            span_targets = match encoder.encode(&spans, &self.spec.profile) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("{:?}: no query maps this fit: {e}", self.name);
                    return (maps, infos);
                }
            };
            let items = maps::MapSample {
                targets: span_targets.iter().map(Vec::as_slice).collect(),
                document: span_of,
                candidates,
                items_are_documents: false,
            };
            (spans, items)
        } else {
            let items = maps::MapSample {
                targets: candidates.clone(),
                document: (0..texts.len()).collect(),
                candidates,
                items_are_documents: true,
            };
            (texts.iter().map(|(t, _)| t.clone()).collect(), items)
        };
        for profile in encoder.query_profiles(&self.spec.profile) {
            // A deleted collection stops spending the model thread on its fit.
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            let fitted = encoder
                .encode(&strings, &profile)
                .and_then(|inputs| maps::fit_map(&inputs, &items));
            match fitted {
                Ok((map, mut info)) => {
                    info.profile = profile.clone();
                    maps.insert(profile, map);
                    infos.push(info);
                }
                Err(e) => tracing::warn!("{:?}: no {profile:?} query map this fit: {e}", self.name),
            }
        }
        (maps, infos)
    }

    fn set_progress(&self, p: Option<RenestProgress>) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Adapt, Distance};

    fn spec(adapt: bool) -> CollectionSpec {
        CollectionSpec {
            dims: vec![2, 4],
            profile: "full".into(),
            model: "test".into(),
            precision: Default::default(),
            distance: Distance::Cosine,
            layout: Default::default(),
            adapt: adapt.then_some(Adapt { threshold: 1 }),
            prompts: Default::default(),
        }
    }

    /// A generic collection cuts prefixes into `d{dim}`; an adaptive one keeps the widest size
    /// as it is and cuts the others from the rotated vector into the current slot.
    #[test]
    fn nesting_cuts_prefixes_or_rotated_prefixes_into_the_current_slot() {
        let full = [3.0, 4.0, 0.0, 12.0];
        let generic = Current::default();
        let named = generic.nest(&spec(false), &full, &[2, 4]).unwrap();
        assert_eq!(named[0], ("d2".to_string(), vec![0.6, 0.8]));
        assert_eq!(named[1].0, "d4");
        // A rotation that swaps axes 0 and 3.
        let mut m = vec![0f32; 16];
        for (r, c) in [(0, 3), (1, 1), (2, 2), (3, 0)] {
            m[r * 4 + c] = 1.0;
        }
        let adapted = Current {
            rotation: Some(LinearMap::from_matrix_f32(4, 4, &m).unwrap()),
            info: Some(RotationInfo {
                version: 1,
                fitted_at: String::new(),
                points: 4,
                sample: 4,
                seconds: 0.0,
                queries: Vec::new(),
                nesting: None,
            }),
            maps: HashMap::new(),
        };
        let named = adapted.nest(&spec(true), &full, &[2, 4]).unwrap();
        let (name, v) = &named[0];
        assert_eq!(name, "d2_1");
        assert!((v[0] - 12.0 / 12.649111).abs() < 1e-5 && (v[1] - 4.0 / 12.649111).abs() < 1e-5);
        assert_eq!(named[1].0, "d4", "the full width is never rotated");
        assert!((named[1].1[0] - 3.0 / 13.0).abs() < 1e-6);
    }
}
