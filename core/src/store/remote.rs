//! A Qdrant server or cluster over gRPC (`qdrant-client`), behind the same trait as the
//! embedded store. The collection's spec rides in Qdrant's collection metadata, so any
//! client of that server sees what the vectors are; point ids and payload keys are the
//! embedded store's, so data moves between the two unchanged. An adaptive collection's current
//! rotation is in three parts: what is shown (version, time, points) in the metadata beside the
//! spec; its matrix in the payload of a point without vectors (one per rotation slot, at ids no
//! caller id can hash to); and, since processes may share the collection, a state point that
//! says which version is in force and which one a re-nest is filling (`shared`).
//!
//! The trait is synchronous (callers already run on blocking threads), so the store owns a
//! small tokio runtime and blocks on each call. Every write waits for the server to apply
//! it (`wait=true`): an acknowledged write is as durable as the server's WAL makes it.

use std::collections::HashMap;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, DeletePointsBuilder,
    Distance as QDistance, Filter, GetPointsBuilder, HnswConfigDiffBuilder, PayloadIncludeSelector,
    PointId, PointStruct, PointVectors, PointsIdsList, PrefetchQueryBuilder, QuantizationType,
    Query, QueryPointsBuilder, ScalarQuantizationBuilder, ScrollPointsBuilder, SearchParamsBuilder,
    UpdatePointVectorsBuilder, UpsertPointsBuilder, Value as QValue, VectorParamsBuilder,
    VectorsConfigBuilder, VectorsSelector,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value};

use super::{
    check_name, point_filter, point_uuid, CollectionInfo, CollectionSpec, Distance, Epoch, Hit,
    Result, RotationInfo, ScrolledPoint, Shared, StoreError, StoredDocument, StoredRotation,
    VectorPage, VectorQuery, VectorStore, ID_KEY, TEXT_KEY, WRITE_KEY,
};

/// The metadata key that marks a collection as mrl's and holds its spec.
const SPEC_KEY: &str = "mrl_spec";
/// The metadata key of an adaptive collection's current rotation (`RotationInfo` JSON): what
/// is shown; processes go by the state point (`shared`).
const ROTATION_KEY: &str = "mrl_rotation";

mod filter;
mod shared;

pub use filter::filter_from_json;

/// The point that holds the matrix of rotation slot `slot`: a hash of bytes that are not
/// UTF-8 (0xFF), so no caller id (a string) maps to it.
fn rotation_point(slot: usize) -> PointId {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest([0xFF, b'r', b'o', b't', slot as u8]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    PointId::from(uuid::Uuid::from_bytes(bytes).to_string())
}

/// The point that stores caller id `id` (`point_uuid`, as the embedded store does).
fn point_id(id: &str) -> PointId {
    PointId::from(point_uuid(id).to_string())
}

/// The points that are not documents: the rotation points and the state point.
fn own_points() -> [PointId; 3] {
    [rotation_point(0), rotation_point(1), shared::state_point()]
}

/// Whether `id` is one of the store's own points (not a document).
fn is_rotation_point(id: &Option<PointId>) -> bool {
    id.as_ref().is_some_and(|id| own_points().contains(id))
}

fn remote<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(format!("qdrant server: {e}"))
}

/// gRPC codes that mean the call did not reach a working server (`UNAVAILABLE`,
/// `DEADLINE_EXCEEDED`, `CANCELLED`).
fn transport_failed(e: &QdrantError) -> bool {
    matches!(e, QdrantError::ResponseError { status } if matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ))
}

/// Collections on a Qdrant server.
pub struct RemoteStore {
    client: Qdrant,
    /// The server's address, for messages.
    url: String,
    /// `Some` until drop, which shuts it down without blocking (drop may run on an async
    /// thread, where a blocking shutdown panics).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl RemoteStore {
    /// A client of the server at `url` (gRPC, e.g. `http://localhost:6334`). The server need
    /// not be up yet: a service may start before its Qdrant does, answering 503 until it
    /// does (`health` says which), and a missing server only logs a warning here.
    ///
    /// Errors: `url` is not a usable address.
    pub fn connect(url: &str, api_key: Option<String>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(remote)?;
        let client = std::thread::scope(|s| {
            s.spawn(|| {
                // The client spawns its connection tasks on the current runtime.
                let _guard = runtime.enter();
                Qdrant::from_url(url)
                    .api_key(api_key)
                    .skip_compatibility_check()
                    .build()
            })
            .join()
            .expect("building the Qdrant client panicked; this is a bug")
        })
        .map_err(remote)?;
        let store = Self {
            client,
            url: url.to_string(),
            runtime: Some(runtime),
        };
        if let Err(e) = store.health() {
            tracing::warn!("no Qdrant server answers at {url} yet ({e}); retrying on demand");
        }
        Ok(store)
    }

    /// Runs a client call to completion. It runs on a scoped thread because callers may sit
    /// on an async executor's thread, where blocking on another runtime panics.
    fn block_on<F>(&self, f: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let rt = self
            .runtime
            .as_ref()
            .expect("the runtime lives until drop; this is a bug");
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .expect("a Qdrant client call panicked; this is a bug")
        })
    }

    fn spec_of(&self, name: &str) -> Result<Option<CollectionSpec>> {
        Ok(self.meta_of(name)?.map(|(spec, _)| spec))
    }

    /// The collection's spec and current rotation from its metadata; `None` when it does not
    /// exist or is not mrl's.
    fn meta_of(&self, name: &str) -> Result<Option<(CollectionSpec, Option<RotationInfo>)>> {
        if !self
            .block_on(self.client.collection_exists(name))
            .map_err(|e| self.server_error(e))?
        {
            return Ok(None);
        }
        let info = self
            .block_on(self.client.collection_info(name))
            .map_err(|e| self.server_error(e))?;
        let metadata = info
            .result
            .and_then(|r| r.config)
            .map(|c| c.metadata)
            .unwrap_or_default();
        let spec: CollectionSpec = match metadata.get(SPEC_KEY).map(to_json) {
            Some(Value::String(s)) => serde_json::from_str(&s).map_err(remote)?,
            // Someone else's collection: not one this store manages.
            _ => return Ok(None),
        };
        let rotation = match metadata.get(ROTATION_KEY).map(to_json) {
            Some(Value::String(s)) => Some(serde_json::from_str(&s).map_err(remote)?),
            _ => None,
        };
        Ok(Some((spec, rotation)))
    }

    /// The collection's spec and current rotation, or `NoSuchCollection`.
    fn meta(&self, name: &str) -> Result<(CollectionSpec, Option<RotationInfo>)> {
        self.meta_of(name)?
            .ok_or_else(|| StoreError::NoSuchCollection(name.to_string()))
    }

    /// A failed call on collection `name`: `NoSuchCollection` when the collection is gone
    /// (deleted while the call ran), else the server's error.
    fn failed(&self, name: &str, e: QdrantError) -> StoreError {
        match self.server_error(e) {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => match self.block_on(self.client.collection_exists(name)) {
                Ok(false) => StoreError::NoSuchCollection(name.to_string()),
                _ => other,
            },
        }
    }

    /// A failed client call: `Unavailable` when the server could not be reached (the
    /// transport failed, or the server no longer answers a health check: some calls report
    /// a refused connection as an internal error); the request may or may not have been
    /// applied, and retrying it as it is is safe (writes replace by id); else the server's
    /// error.
    fn server_error(&self, e: QdrantError) -> StoreError {
        if transport_failed(&e) || self.health().is_err() {
            StoreError::Unavailable(format!("qdrant server: {e}"))
        } else {
            remote(e)
        }
    }

    fn spec(&self, name: &str) -> Result<CollectionSpec> {
        self.spec_of(name)?
            .ok_or_else(|| StoreError::NoSuchCollection(name.to_string()))
    }

    /// Documents in the collection (an adaptive collection's rotation points left out).
    fn count(&self, name: &str, spec: &CollectionSpec) -> Result<usize> {
        let mut request = CountPointsBuilder::new(name).exact(true);
        if spec.adapt.is_some() {
            request = request.filter(Filter::must_not([Condition::has_id(own_points())]));
        }
        let r = self
            .block_on(self.client.count(request))
            .map_err(|e| self.failed(name, e))?;
        Ok(r.result.map_or(0, |c| c.count as usize))
    }

    /// A page of `scroll_vectors`, of the points matching `filter` when given.
    fn scroll_page(
        &self,
        name: &str,
        vector: &str,
        offset: Option<String>,
        limit: usize,
        text: bool,
        filter: Option<Filter>,
    ) -> Result<VectorPage> {
        use qdrant_client::qdrant::{vector_output, vectors_output::VectorsOptions};
        let mut fields = vec![ID_KEY.to_string(), WRITE_KEY.to_string()];
        if text {
            fields.push(TEXT_KEY.to_string());
        }
        let mut request = ScrollPointsBuilder::new(name)
            .limit(limit as u32)
            .with_payload(PayloadIncludeSelector { fields })
            .with_vectors(VectorsSelector {
                names: vec![vector.to_string()],
            });
        if let Some(o) = offset {
            request = request.offset(PointId::from(o));
        }
        if let Some(f) = filter {
            request = request.filter(f);
        }
        let page = self
            .block_on(self.client.scroll(request))
            .map_err(|e| self.failed(name, e))?;
        let mut out = Vec::with_capacity(page.result.len());
        for p in page.result {
            if is_rotation_point(&p.id) {
                continue;
            }
            let id = match p.payload.get(ID_KEY).map(to_json) {
                Some(Value::String(id)) => id,
                _ => return Err(remote(format!("point {:?} has no id", p.id))),
            };
            let dense = match p.vectors.and_then(|v| v.vectors_options) {
                Some(VectorsOptions::Vectors(mut named)) => named.vectors.remove(vector),
                _ => None,
            }
            .map(|v| v.into_vector());
            let text = match p.payload.get(TEXT_KEY).map(to_json) {
                Some(Value::String(t)) => t,
                _ => String::new(),
            };
            if let Some(vector_output::Vector::Dense(d)) = dense {
                out.push(ScrolledPoint {
                    id,
                    vector: d.data,
                    text,
                    written: p.payload.get(WRITE_KEY).and_then(|v| to_json(v).as_i64()),
                });
            }
        }
        let next = page
            .next_page_offset
            .and_then(|p| match p.point_id_options {
                Some(qdrant_client::qdrant::point_id::PointIdOptions::Uuid(u)) => Some(u),
                Some(qdrant_client::qdrant::point_id::PointIdOptions::Num(n)) => {
                    Some(n.to_string())
                }
                None => None,
            });
        Ok((out, next))
    }

    fn info_of(
        &self,
        name: &str,
        spec: CollectionSpec,
        rotation: Option<RotationInfo>,
    ) -> Result<CollectionInfo> {
        Ok(CollectionInfo {
            name: name.to_string(),
            count: self.count(name, &spec)?,
            spec,
            rotation,
            renest: None,
        })
    }
}

fn to_json(v: &QValue) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn distance(d: Distance) -> QDistance {
    match d {
        Distance::Cosine => QDistance::Cosine,
        Distance::Dot => QDistance::Dot,
        Distance::Euclid => QDistance::Euclid,
    }
}

impl VectorStore for RemoteStore {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    fn health(&self) -> Result<()> {
        // Bounded: a health report must not hang on a connection that goes nowhere.
        let check = async {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                self.client.health_check(),
            )
            .await
        };
        match self.block_on(check) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "no Qdrant server answers at {}: {e}",
                self.url
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no Qdrant server answers at {} within 2 s",
                self.url
            ))),
        }
    }

    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<bool> {
        check_name(name)?;
        spec.layout.check(&spec.dims)?;
        if let Some(existing) = self.spec_of(name)? {
            if existing == *spec {
                return Ok(false);
            }
            return Err(StoreError::Conflict {
                name: name.to_string(),
                existing: serde_json::to_string(&existing).map_err(remote)?,
            });
        }
        if self
            .block_on(self.client.collection_exists(name))
            .map_err(|e| self.server_error(e))?
        {
            return Err(StoreError::Conflict {
                name: name.to_string(),
                existing: "a collection not made by mrl".into(),
            });
        }
        let layout = &spec.layout;
        let widest = spec.dims.iter().copied().max();
        let mut vectors = VectorsConfigBuilder::default();
        for (vector, d) in spec.vectors() {
            let mut params = VectorParamsBuilder::new(d as u64, distance(spec.distance))
                .on_disk(layout.on_disk && Some(d) == widest);
            if layout.quantize.contains(&d) {
                params = params.quantization_config(
                    ScalarQuantizationBuilder::default()
                        .r#type(QuantizationType::Int8.into())
                        .always_ram(true),
                );
            }
            if let Some(h) = layout.hnsw.iter().find(|h| h.dim == d) {
                let mut hnsw = HnswConfigDiffBuilder::default();
                if let Some(m) = h.m {
                    hnsw = hnsw.m(m);
                }
                if let Some(ef) = h.ef_construct {
                    hnsw = hnsw.ef_construct(ef);
                }
                params = params.hnsw_config(hnsw);
            }
            vectors.add_named_vector_params(vector, params);
        }
        let mut create = CreateCollectionBuilder::new(name)
            .vectors_config(vectors)
            .on_disk_payload(true);
        if let Some(n) = layout.shards {
            create = create.shard_number(n);
        }
        if let Some(n) = layout.replicas {
            create = create.replication_factor(n);
        }
        if let Some(n) = layout.write_consistency {
            create = create.write_consistency_factor(n);
        }
        let metadata = HashMap::from([(
            SPEC_KEY.to_string(),
            Value::String(serde_json::to_string(spec).map_err(remote)?),
        )]);
        if let Err(e) = self.block_on(self.client.create_collection(create.metadata(metadata))) {
            // Another client (a second `mrl index --part` worker) may have created it first:
            // the same spec is then a no-op, as if this call had come second.
            return match self.spec_of(name) {
                Ok(Some(existing)) if existing == *spec => Ok(false),
                Ok(Some(existing)) => Err(StoreError::Conflict {
                    name: name.to_string(),
                    existing: serde_json::to_string(&existing).map_err(remote)?,
                }),
                _ => Err(self.server_error(e)),
            };
        }
        if spec.adapt.is_some() {
            // The processes that will share it go by its state from the first write.
            self.ensure_state(name)?;
        }
        Ok(true)
    }

    fn list(&self) -> Result<Vec<CollectionInfo>> {
        let all = self
            .block_on(self.client.list_collections())
            .map_err(|e| self.server_error(e))?;
        let mut out = Vec::new();
        for c in all.collections {
            if let Some((spec, rotation)) = self.meta_of(&c.name)? {
                out.push(self.info_of(&c.name, spec, rotation)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn info(&self, name: &str) -> Result<CollectionInfo> {
        let (spec, rotation) = self.meta(name)?;
        self.info_of(name, spec, rotation)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.spec(name)?;
        self.block_on(self.client.delete_collection(name))
            .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    fn upsert(&self, name: &str, docs: Vec<StoredDocument>) -> Result<()> {
        self.spec(name)?.check_documents(name, &docs)?;
        let points: Vec<PointStruct> = docs
            .into_iter()
            .map(|mut d| {
                let mut payload = d.full_payload();
                payload.insert(WRITE_KEY.into(), Value::from(shared::random_i64()));
                let vectors: HashMap<String, Vec<f32>> = d.vectors.into_iter().collect();
                PointStruct::new(point_id(&d.id), vectors, Payload::from(payload))
            })
            .collect();
        self.block_on(
            self.client
                .upsert_points(UpsertPointsBuilder::new(name, points).wait(true)),
        )
        .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    fn delete_documents(&self, name: &str, ids: &[String]) -> Result<()> {
        self.spec(name)?;
        let ids: Vec<PointId> = ids.iter().map(|id| point_id(id)).collect();
        self.block_on(
            self.client.delete_points(
                DeletePointsBuilder::new(name)
                    .points(PointsIdsList { ids })
                    .wait(true),
            ),
        )
        .map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    fn search(&self, name: &str, q: &VectorQuery) -> Result<Vec<Hit>> {
        self.spec(name)?.check_query(name, q)?;
        let filter = q
            .filter
            .as_ref()
            .map(|f| filter_from_json(&point_filter(f)?))
            .transpose()?;
        let params = search_params(q);
        let mut request = QueryPointsBuilder::new(name)
            .query(Query::new_nearest(q.vector.clone()))
            .using(q.using.clone())
            .limit(q.limit as u64)
            .with_payload(true)
            .params(params.clone());
        if let Some(f) = &q.funnel {
            let mut prefetch = PrefetchQueryBuilder::default()
                .query(Query::new_nearest(f.vector.clone()))
                .using(f.using.clone())
                .limit(f.candidates as u64)
                .params(params);
            if let Some(filter) = &filter {
                prefetch = prefetch.filter(filter.clone());
            }
            request = request.add_prefetch(prefetch);
        }
        if let Some(filter) = filter {
            request = request.filter(filter);
        }
        let response = self
            .block_on(self.client.query(request))
            .map_err(|e| self.failed(name, e))?;
        Ok(response
            .result
            .into_iter()
            .map(|p| {
                let payload: Map<String, Value> = p
                    .payload
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json(v)))
                    .collect();
                Hit::from_payload(payload, p.score, p.id)
            })
            .collect())
    }

    fn optimize(&self, name: &str) -> Result<()> {
        // The server runs its own optimizers; there is nothing to start from here.
        self.spec(name).map(|_| ())
    }

    fn ids(&self, name: &str) -> Result<Vec<String>> {
        self.spec(name)?;
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            // Only the id: every page would otherwise carry the texts, and the rotation
            // point its matrices.
            let mut request =
                ScrollPointsBuilder::new(name)
                    .limit(1024)
                    .with_payload(PayloadIncludeSelector {
                        fields: vec![ID_KEY.to_string()],
                    });
            if let Some(o) = offset.take() {
                request = request.offset(o);
            }
            let page = self
                .block_on(self.client.scroll(request))
                .map_err(|e| self.failed(name, e))?;
            for p in page.result {
                if is_rotation_point(&p.id) {
                    continue;
                }
                match p.payload.get(ID_KEY).map(to_json) {
                    Some(Value::String(id)) => out.push(id),
                    _ => return Err(remote(format!("point {:?} has no id", p.id))),
                }
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    fn rotation(&self, name: &str) -> Result<Option<StoredRotation>> {
        self.rotation_of(name)
    }

    /// Whatever claim is in force: for tools and tests, not while processes re-nest.
    fn set_rotation(&self, name: &str, rotation: &StoredRotation) -> Result<()> {
        self.spec(name)?;
        self.set_rotation_of(name, rotation)
    }

    fn scroll_vectors(
        &self,
        name: &str,
        vector: &str,
        offset: Option<String>,
        limit: usize,
        text: bool,
    ) -> Result<VectorPage> {
        self.scroll_page(name, vector, offset, limit, text, None)
    }

    fn scroll_lacking(
        &self,
        name: &str,
        vector: &str,
        lacking: &str,
        offset: Option<String>,
        limit: usize,
    ) -> Result<VectorPage> {
        let filter = Filter::must_not([Condition::has_vector(lacking)]);
        self.scroll_page(name, vector, offset, limit, false, Some(filter))
    }

    fn update_vectors(&self, name: &str, points: Vec<super::PointUpdate>) -> Result<()> {
        let mut points: Vec<(PointId, super::PointUpdate)> =
            points.into_iter().map(|p| (point_id(&p.id), p)).collect();
        // A point deleted by another process since the page was read fails the whole call:
        // it is dropped and the rest sent again (each try drops at least one).
        for _ in 0..8 {
            if points.is_empty() {
                return Ok(());
            }
            // Each point only if no write came since it was read: a write changes its token.
            let unchanged = Filter::should(points.iter().map(|(id, p)| {
                let token = match p.written {
                    Some(t) => Condition::matches(WRITE_KEY, t),
                    None => Condition::is_empty(WRITE_KEY),
                };
                Filter::must([Condition::has_id([id.clone()]), token]).into()
            }));
            let request: Vec<PointVectors> = points
                .iter()
                .map(|(id, p)| PointVectors {
                    id: Some(id.clone()),
                    vectors: Some(p.vectors.iter().cloned().collect::<HashMap<_, _>>().into()),
                })
                .collect();
            let sent = self.block_on(
                self.client.update_vectors(
                    UpdatePointVectorsBuilder::new(name, request)
                        .update_filter(unchanged)
                        .wait(true),
                ),
            );
            match sent {
                Ok(_) => return Ok(()),
                Err(QdrantError::ResponseError { status })
                    if status.code() == tonic::Code::NotFound =>
                {
                    let ids: Vec<PointId> = points.iter().map(|(id, _)| id.clone()).collect();
                    let found = self
                        .block_on(self.client.get_points(GetPointsBuilder::new(name, ids)))
                        .map_err(|e| self.failed(name, e))?;
                    let there: std::collections::HashSet<PointId> =
                        found.result.into_iter().filter_map(|p| p.id).collect();
                    let before = points.len();
                    points.retain(|(id, _)| there.contains(id));
                    if points.len() == before {
                        return Err(remote(status));
                    }
                }
                Err(e) => return Err(self.failed(name, e)),
            }
        }
        Err(remote("points kept vanishing while a page was rewritten"))
    }

    fn shared(&self, name: &str) -> Result<Option<Shared>> {
        self.shared_of(name).map(Some)
    }

    fn claim(
        &self,
        name: &str,
        seen: &Epoch,
        rotation: &StoredRotation,
        lease: std::time::Duration,
    ) -> Result<Option<Epoch>> {
        self.claim_of(name, seen, rotation, lease)
    }

    fn pending_rotation(&self, name: &str, epoch: &Epoch) -> Result<Option<StoredRotation>> {
        self.pending_of(name, epoch)
    }

    fn renew(&self, name: &str, claim: &Epoch, lease: std::time::Duration) -> Result<bool> {
        self.renew_of(name, claim, lease)
    }

    fn finish(&self, name: &str, claim: &Epoch, rotation: &StoredRotation) -> Result<bool> {
        self.finish_of(name, claim, rotation)
    }

    fn abandon(&self, name: &str, claim: &Epoch) -> Result<()> {
        self.abandon_of(name, claim)
    }
}

/// The server's search parameters for `q`.
fn search_params(q: &VectorQuery) -> SearchParamsBuilder {
    let mut params = SearchParamsBuilder::default().exact(q.exact);
    if let Some(ef) = q.params.hnsw_ef {
        params = params.hnsw_ef(ef);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use qdrant_client::qdrant::{condition::ConditionOneOf, Range};
    use serde_json::json;

    #[test]
    fn search_params_carry_exact_and_hnsw_ef() {
        let mut q = VectorQuery::nested(&[1.0, 0.0], 2, 1, None).unwrap();
        let p = search_params(&q).build();
        assert_eq!((p.exact, p.hnsw_ef), (Some(false), None));
        q.params.hnsw_ef = Some(77);
        q.exact = true;
        let p = search_params(&q).build();
        assert_eq!((p.exact, p.hnsw_ef), (Some(true), Some(77)));
    }

    #[test]
    fn rest_filters_convert_to_grpc() {
        let f = filter_from_json(&json!({
            "must": [{"key": "lang", "match": {"value": "en"}},
                     {"key": "year", "range": {"gte": 2020}}],
            "must_not": {"key": "tag", "match": {"any": ["draft", "spam"]}},
            "should": [{"should": [{"is_empty": {"key": "x"}}]}]
        }))
        .unwrap();
        assert_eq!(f.must.len(), 2);
        assert_eq!(f.must[0], Condition::matches("lang", "en".to_string()));
        assert_eq!(
            f.must[1],
            Condition::range(
                "year",
                Range {
                    gte: Some(2020.0),
                    ..Range::default()
                }
            )
        );
        assert_eq!(
            f.must_not[0],
            Condition::matches("tag", vec!["draft".to_string(), "spam".to_string()])
        );
        assert!(matches!(
            f.should[0].condition_one_of,
            Some(ConditionOneOf::Filter(_))
        ));
        for bad in [
            json!([]),
            json!({"must": 1}),
            json!({"maybe": []}),
            json!({"must": [{"key": "a", "geo": {}}]}),
            json!({"must": [{"match": {"value": 1}}]}),
        ] {
            assert!(filter_from_json(&bad).is_err(), "{bad}");
        }
    }
}
