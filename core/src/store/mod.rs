//! Vector stores behind one trait: a collection keeps, for every document, one named vector per
//! stored size (`d64`, `d256`, …; an adaptive collection two per size below its full width,
//! one per rotation slot) plus its id, text and payload, and an adaptive collection its current
//! rotation. `edge` is Qdrant's own engine in-process (the default); `remote` is a Qdrant server
//! or cluster.

pub mod edge;
mod open;
pub mod remote;

use std::collections::BTreeMap;

use mrl_encoder::Precision;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use edge::EdgeStore;
pub use open::{open, wait_until_available};
pub use remote::RemoteStore;

impl StoredDocument {
    /// The point's payload: the caller's payload plus the id and text under the store's keys.
    pub(crate) fn full_payload(&mut self) -> Map<String, Value> {
        let mut payload = std::mem::take(&mut self.payload);
        payload.insert(ID_KEY.into(), Value::String(self.id.clone()));
        payload.insert(
            TEXT_KEY.into(),
            Value::String(std::mem::take(&mut self.text)),
        );
        payload
    }
}

impl Hit {
    /// A hit from a point's full payload; `point` names it if the id key is missing.
    pub(crate) fn from_payload(
        mut payload: Map<String, Value>,
        score: f32,
        point: impl std::fmt::Debug,
    ) -> Self {
        let id = match payload.remove(ID_KEY) {
            Some(Value::String(s)) => s,
            _ => format!("{point:?}"),
        };
        let text = match payload.remove(TEXT_KEY) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        payload.remove(WRITE_KEY);
        Self {
            id,
            score,
            text,
            payload,
        }
    }
}

/// Payload keys the stores own: the caller's id and the text.
pub(crate) const ID_KEY: &str = "_id";
pub(crate) const TEXT_KEY: &str = "_text";
/// A point's write token (a Qdrant server's points only): a fresh random integer on every
/// upsert, so a re-nest in another process rewrites a page only where no write came since it
/// read it (`PointUpdate::written`).
pub(crate) const WRITE_KEY: &str = "_mrl_w";

/// A stable point id for a caller's id (Qdrant wants integers or UUIDs): the first 16 bytes
/// of its SHA-256, the same in every store.
pub(crate) fn point_uuid(id: &str) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Uuid::from_bytes(bytes)
}

/// A caller's document id as sent — a non-empty string, or a number (kept as its JSON text,
/// so `42` and `"42"` are one id) — or `None` for anything else. The one rule every place
/// that takes ids from callers (documents, deletes, `has_id`) follows.
pub fn caller_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A caller's filter in the store's terms: the ids of `has_id` conditions — the caller's
/// document ids, strings or numbers, as documents are added — become the point ids they are
/// stored under (`point_uuid`). Everything else passes unchanged, once checked where the two
/// stores would read it differently: a `range` names only the bounds `lt`, `gt`, `gte`, `lte`
/// (the embedded engine ignores other keys, the gRPC form has no place for them).
///
/// Errors: `InvalidFilter` when a `has_id` is not an array of strings and numbers, or a
/// `range` is not an object of those bounds.
pub fn point_filter(filter: &Value) -> Result<Value> {
    Ok(match filter {
        Value::Object(o) => {
            let mut out = Map::with_capacity(o.len());
            for (key, value) in o {
                let value = if key == "has_id" {
                    let bad = || {
                        StoreError::InvalidFilter(format!(
                            "has_id must be an array of document ids (strings or numbers), got {value}"
                        ))
                    };
                    let ids = value.as_array().ok_or_else(bad)?;
                    let points = ids
                        .iter()
                        .map(|id| {
                            caller_id(id)
                                .map(|id| Value::String(point_uuid(&id).to_string()))
                                .ok_or_else(bad)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Value::Array(points)
                } else if key == "range" {
                    let bounds = value.as_object().ok_or_else(|| {
                        StoreError::InvalidFilter(format!("range must be an object: {value}"))
                    })?;
                    if let Some(k) = bounds
                        .keys()
                        .find(|k| !["lt", "gt", "gte", "lte"].contains(&k.as_str()))
                    {
                        return Err(StoreError::InvalidFilter(format!(
                            "unknown range bound {k:?}"
                        )));
                    }
                    value.clone()
                } else {
                    point_filter(value)?
                };
                out.insert(key.clone(), value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(point_filter).collect::<Result<_>>()?),
        other => other.clone(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection {0:?} does not exist")]
    NoSuchCollection(String),
    #[error("collection {name:?} already exists with another definition: {existing}")]
    Conflict { name: String, existing: String },
    #[error("invalid collection name {0:?}: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    /// The request was prepared for another definition of the collection (it was deleted and
    /// recreated with other sizes while the request ran).
    #[error("collection {name:?} was redefined while the request ran: {message}; retry")]
    Redefined { name: String, message: String },
    #[error("storage error: {0}")]
    Storage(String),
    /// A collection option this store cannot honour, or a bad value for one.
    #[error("{message}")]
    Unsupported { option: String, message: String },
    /// The store cannot be reached now (a Qdrant server down or restarting). A write may or
    /// may not have been applied; sending it again is safe (documents replace by id).
    #[error("the vector store is unavailable: {0}; retry shortly")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How vectors are compared.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

/// What a collection stores and how its documents were embedded.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// Stored sizes, ascending, each one named vector `d{dim}`.
    pub dims: Vec<usize>,
    /// The profile that embeds the documents.
    pub profile: String,
    pub model: String,
    /// The dense layers' arithmetic the documents were embedded with (`f32`, and absent,
    /// for collections made before there was a choice); queries are embedded the same way.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub precision: Precision,
    pub distance: Distance,
    /// Storage for large collections (a Qdrant server); the default everywhere else.
    #[serde(default, skip_serializing_if = "Layout::is_default")]
    pub layout: Layout,
    /// Re-nest the sizes below the widest onto the collection's own documents (`None`: the
    /// model's prefixes as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt: Option<Adapt>,
    /// The texts put before documents and text queries (none in collections made before
    /// there were prompts, which embed both without one).
    #[serde(default, flatten)]
    pub prompts: CollectionPrompts,
}

/// A collection's prompts, resolved to their text at creation so that every later write and
/// search reads them the same, whatever the model folder's config says then.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionPrompts {
    /// Put before each document's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_prompt: Option<String>,
    /// Put before each text query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_prompt: Option<String>,
}

impl CollectionPrompts {
    /// `text` after `prompt`, when there is one.
    pub fn apply(prompt: &Option<String>, text: &str) -> String {
        match prompt {
            Some(p) => format!("{p}{text}"),
            None => text.to_string(),
        }
    }
}

/// An adaptive collection's option: once it holds `threshold` documents, and again whenever it
/// has doubled since the last fit, it fits a rotation onto the uncentred principal axes of its
/// stored full-width vectors and rewrites its smaller sizes from them (`core::adapt`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adapt {
    /// Documents before the first fit (at least 1; default `DEFAULT_ADAPT_THRESHOLD`).
    pub threshold: usize,
}

/// Documents an adaptive collection holds before its first fit: about 2,000 documents fit
/// SciFact's rotation as well as all 5,183 did (measured 2026-11-29); 1,000 is where the
/// gain at 64 dims is most of it.
pub const DEFAULT_ADAPT_THRESHOLD: usize = 1000;

/// A collection's fitted rotation, as it is shown (`GET /collections/{name}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationInfo {
    /// 1 for the first fit, one more per re-nest; every point's rotated sizes are under it.
    pub version: u64,
    /// When it was fitted (RFC 3339, UTC).
    pub fitted_at: String,
    /// Documents the collection held when it was fitted (the next fit comes at twice this).
    pub points: usize,
    /// Documents whose full-width vectors it was fitted on (a sample of `points`).
    pub sample: usize,
    /// How long the re-nest took: the fit and the rewrite of every point's rotated sizes.
    #[serde(default)]
    pub seconds: f64,
    /// The checkpoint's other profiles whose queries this fit maps into the documents' space,
    /// with how well the map agrees with the documents' profile on documents held out of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryMapInfo>,
    /// Which nesting the fit kept (the PCA rotation or a learned projection) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesting: Option<NestingInfo>,
}

/// How an adaptive collection's smaller sizes are cut (`core::adapt`): from the PCA rotation,
/// or from a projection learned on the collection's own full-width vectors, kept only when
/// it finds more of each held-out document's full-width neighbours at every rotated size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestingInfo {
    /// `pca` or `learned`.
    pub kept: String,
    /// The rotated sizes the figures are for, ascending.
    pub dims: Vec<usize>,
    /// Documents held out of the fit that the figures are measured on.
    pub held_out: usize,
    /// Per size in `dims`: recall@10 of each held-out document's full-width neighbours
    /// (among the held-out documents) under the PCA rotation.
    pub pca_recall: Vec<f64>,
    /// The same under the learned projection.
    pub learned_recall: Vec<f64>,
    /// Gradient steps the learned projection took.
    pub steps: usize,
}

/// One query profile an adaptive collection maps into its documents' space (`core::adapt`):
/// a ridge map fitted on the collection's own documents embedded by both profiles.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryMapInfo {
    /// The query profile (a name of the checkpoint's profiles).
    pub profile: String,
    /// Texts the map was fitted on: sampled documents, and query-like spans cut from them.
    pub sample: usize,
    /// Texts held out of the fit (and of choosing its ridge term), on which the figures
    /// below are measured.
    pub held_out: usize,
    /// The ridge term kept (relative to the mean eigenvalue of the inputs' Gram matrix),
    /// chosen on a third split of the sample.
    pub ridge: f64,
    /// Mean cosine between a held-out text's mapped vector and its documents'-profile
    /// vector, at full width (1 = the same vector).
    pub mean_cosine: f64,
    /// Share of a held-out text's 10 nearest sampled documents (full width, by its
    /// documents'-profile vector) that its mapped vector finds too: how far a search by this
    /// profile agrees with one by the documents' profile.
    pub neighbour_overlap: f64,
    /// The same share with the profile's vector used as it is (unmapped), for comparison;
    /// 0 when the profile's width differs from the documents'.
    pub unmapped_overlap: f64,
}

/// A collection's fitted rotation as the store keeps it: what is shown, and the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRotation {
    #[serde(flatten)]
    pub info: RotationInfo,
    /// The `w × w` rotation, row-major, f32 little-endian, base64 (standard alphabet).
    pub matrix: String,
    /// Per query profile (`info.queries`), its `w × c` map into the documents' space,
    /// row-major (`c`: the profile's width), encoded as `matrix` is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maps: BTreeMap<String, String>,
}

impl StoredRotation {
    /// The rotation slot (0 or 1) whose named vectors hold this version's sizes; version 0
    /// (no fit yet) is slot 0.
    pub fn slot(version: u64) -> usize {
        (version % 2) as usize
    }

    /// The stored form of a `w × w` row-major matrix, without query maps.
    pub fn new(info: RotationInfo, matrix: &[f32]) -> Self {
        Self {
            info,
            matrix: encode_f32(matrix),
            maps: BTreeMap::new(),
        }
    }

    /// The matrix back as f32, row-major.
    ///
    /// Errors: `Storage` when it is not base64 of whole f32s.
    pub fn matrix_f32(&self) -> Result<Vec<f32>> {
        decode_f32(&self.matrix)
    }

    /// Each query map back as f32, row-major, by profile.
    ///
    /// Errors: `Storage` when one is not base64 of whole f32s.
    pub fn maps_f32(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        self.maps
            .iter()
            .map(|(p, m)| Ok((p.clone(), decode_f32(m)?)))
            .collect()
    }
}

/// f32s as stored: little-endian bytes, base64 (standard alphabet).
pub fn encode_f32(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `encode_f32` undone.
///
/// Errors: `Storage` when it is not base64 of whole f32s.
fn decode_f32(text: &str) -> Result<Vec<f32>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| StoreError::Storage(format!("a stored matrix is not base64: {e}")))?;
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Storage(
            "a stored matrix is not a whole number of f32s".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// How a large collection is laid out on a Qdrant server: sharding, replication, and per size
/// where its vectors live and how they are indexed — the Matryoshka funnel pattern of
/// Qdrant's docs keeps the small prefetch sizes as int8 in RAM and the widest size, used only
/// to rescore, on disk without an HNSW graph. The embedded store has one shard with every
/// size as floats in RAM under the default HNSW, and refuses anything else
/// (`StoreError::Unsupported`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Shards the collection is split into (Qdrant's `shard_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Copies of each shard (`replication_factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Replicas that must apply a write before it is acknowledged (`write_consistency_factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_consistency: Option<u32>,
    /// Keep the widest size's vectors on disk (memory-mapped) instead of in RAM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_disk: bool,
    /// Sizes that also keep a scalar int8 copy in RAM, searched first and rescored with the
    /// floats (4× less RAM per size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantize: Vec<usize>,
    /// HNSW settings per size; `m = 0` builds no graph (a size used only to rescore).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hnsw: Vec<HnswSize>,
}

/// One size's HNSW settings (Qdrant's defaults where unset: m 16, ef_construct 100).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswSize {
    /// The stored size these settings are for.
    pub dim: usize,
    /// Links per node (0: no graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<u64>,
    /// Candidates considered while building (at least 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_construct: Option<u64>,
}

impl Layout {
    /// Every option, by its field name.
    pub const OPTIONS: [&'static str; 6] = [
        "shards",
        "replicas",
        "write_consistency",
        "on_disk",
        "quantize",
        "hnsw",
    ];

    /// Whether nothing is set (what every store supports).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The options that differ from the default, by field name.
    pub fn options_set(&self) -> Vec<&'static str> {
        let set = [
            self.shards.is_some(),
            self.replicas.is_some(),
            self.write_consistency.is_some(),
            self.on_disk,
            !self.quantize.is_empty(),
            !self.hnsw.is_empty(),
        ];
        Self::OPTIONS
            .iter()
            .zip(set)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect()
    }

    /// Checks the values against the collection's stored sizes `dims`.
    ///
    /// Errors: `Unsupported` naming the option: a count of 0, more write consistency than
    /// replicas, an `ef_construct` below 4, or a size that is not stored (or named twice).
    pub fn check(&self, dims: &[usize]) -> Result<()> {
        let bad = |option: &str, message: String| {
            Err(StoreError::Unsupported {
                option: option.to_string(),
                message,
            })
        };
        for (option, value) in [
            ("shards", self.shards),
            ("replicas", self.replicas),
            ("write_consistency", self.write_consistency),
        ] {
            if value == Some(0) {
                return bad(option, format!("{option} must be at least 1"));
            }
        }
        if self.write_consistency > self.replicas.or(Some(1)) {
            return bad(
                "write_consistency",
                "write_consistency cannot exceed replicas".into(),
            );
        }
        if let Some(h) = self
            .hnsw
            .iter()
            .find(|h| h.ef_construct.is_some_and(|e| e < 4))
        {
            return bad(
                "hnsw",
                format!("hnsw ef_construct must be at least 4 (size {})", h.dim),
            );
        }
        let mut seen = Vec::new();
        for (option, dim) in self
            .quantize
            .iter()
            .map(|&d| ("quantize", d))
            .chain(self.hnsw.iter().map(|h| ("hnsw", h.dim)))
        {
            if !dims.contains(&dim) || seen.contains(&(option, dim)) {
                return bad(
                    option,
                    format!(
                        "{option} names size {dim} twice or a size not stored; stored: {dims:?}"
                    ),
                );
            }
            seen.push((option, dim));
        }
        Ok(())
    }
}

/// A collection's definition and size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    #[serde(flatten)]
    pub spec: CollectionSpec,
    pub count: usize,
    /// An adaptive collection's current rotation (absent before its first fit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationInfo>,
    /// A re-nest running now in this process (filled by the core, not the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renest: Option<RenestProgress>,
}

/// A re-nest in progress: the version it fills and how far it has got.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RenestProgress {
    pub version: u64,
    /// Points rewritten so far.
    pub done: usize,
    /// Points when it started.
    pub total: usize,
}

/// One document to store: its named vectors (already cut, rotated and normalised; names from
/// `CollectionSpec::vector_name`), at least one of each stored size.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub text: String,
    pub payload: Map<String, Value>,
    pub vectors: Vec<(String, Vec<f32>)>,
}

/// A nearest-neighbour query at one stored size, optionally through a funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// The query vector at `dim` (cut and normalised).
    pub vector: Vec<f32>,
    pub dim: usize,
    /// The named vector searched (`d{dim}`, or an adaptive collection's current slot).
    pub using: String,
    pub limit: usize,
    /// Qdrant's filter JSON.
    pub filter: Option<Value>,
    /// Prefetch `candidates` by the `(dim, vector)` prefix, then rescore them at `dim`.
    pub funnel: Option<Funnel>,
    /// Brute force instead of the HNSW index: the reference approximate search is judged by.
    pub exact: bool,
    /// Search-time knobs the engine takes as they are.
    pub params: SearchParams,
}

/// Search-time knobs passed to the engine as they are: a search's `params`, as in Qdrant's own
/// search API. A new knob is a field here and its use in the two stores; the HTTP body, its
/// schema and the library's `SearchOptions::params` carry this struct whole.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Candidates the HNSW search keeps at query time (Qdrant's `hnsw_ef`; default: the
    /// engine's, the collection's `ef_construct`). Larger: better recall, slower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw_ef: Option<u64>,
}

impl VectorQuery {
    /// A query cut from a full (raw, pooled) vector: its `dim` prefix, and with a funnel
    /// `(dim, candidates)` its smaller prefix for the prefetch; each re-normalised.
    pub fn nested(
        full: &[f32],
        dim: usize,
        limit: usize,
        funnel: Option<(usize, usize)>,
    ) -> Result<Self, mrl_encoder::EncoderError> {
        let cut = |d| mrl_encoder::nested::nest(full, d, true);
        Ok(Self {
            vector: cut(dim)?,
            dim,
            using: vector_name(dim),
            limit,
            filter: None,
            funnel: match funnel {
                Some((d, candidates)) => Some(Funnel {
                    dim: d,
                    using: vector_name(d),
                    vector: cut(d)?,
                    candidates,
                }),
                None => None,
            },
            exact: false,
            params: SearchParams::default(),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Funnel {
    pub dim: usize,
    /// The named vector prefetched.
    pub using: String,
    pub vector: Vec<f32>,
    pub candidates: usize,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub text: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Map<String, Value>,
}

/// The operations the service needs from a vector store.
pub trait VectorStore: Send + Sync {
    /// Whether the store answers now (the embedded one always does).
    ///
    /// Errors: `Unavailable` when a Qdrant server does not answer (within a few seconds).
    fn health(&self) -> Result<()> {
        Ok(())
    }
    /// Where the vectors live, for reports: `embedded` or `qdrant`.
    fn kind(&self) -> &'static str {
        "embedded"
    }
    /// Creates the collection, or does nothing if it exists with the same spec.
    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<bool>;
    fn list(&self) -> Result<Vec<CollectionInfo>>;
    fn info(&self, name: &str) -> Result<CollectionInfo>;
    fn delete(&self, name: &str) -> Result<()>;
    /// Stores documents (replacing those with the same ids); durable when it returns.
    fn upsert(&self, name: &str, docs: Vec<StoredDocument>) -> Result<()>;
    /// Deletes documents by id; durable when it returns.
    fn delete_documents(&self, name: &str, ids: &[String]) -> Result<()>;
    fn search(&self, name: &str, query: &VectorQuery) -> Result<Vec<Hit>>;
    /// Builds the collection's search indexes (HNSW) now and returns when they are done;
    /// bulk loaders call it once at the end instead of leaving it to the background.
    fn optimize(&self, name: &str) -> Result<()>;
    /// Every document id in the collection, in no particular order.
    fn ids(&self, name: &str) -> Result<Vec<String>>;
    /// An adaptive collection's current rotation, `None` before its first fit.
    fn rotation(&self, name: &str) -> Result<Option<StoredRotation>>;
    /// Makes `rotation` the collection's current one, durably and at once: a reader (or a
    /// restart) sees the old one or the new one, never a mix.
    fn set_rotation(&self, name: &str, rotation: &StoredRotation) -> Result<()>;
    /// Up to `limit` points from `offset` (an opaque token from the previous page; `None`:
    /// the start) with their caller ids, named vector `vector` and, when `text`, their text;
    /// and the next page's token. Points lacking the vector are left out.
    fn scroll_vectors(
        &self,
        name: &str,
        vector: &str,
        offset: Option<String>,
        limit: usize,
        text: bool,
    ) -> Result<VectorPage>;
    /// Replaces the given named vectors of existing points by caller id, leaving their other
    /// vectors and payload as they are; durable when it returns. A point written again since
    /// it was scrolled (its write token is no longer `written`, where the store keeps tokens)
    /// or deleted since is left as it is.
    fn update_vectors(&self, name: &str, points: Vec<PointUpdate>) -> Result<()>;

    /// Where the collection stands in its re-nests when several processes may write it (a
    /// Qdrant server); `None` for a store only this process opens (the embedded one), where
    /// the in-process locks of `adapt` are all the coordination there is.
    ///
    /// Errors: the store's.
    fn shared(&self, name: &str) -> Result<Option<Shared>> {
        let _ = name;
        Ok(None)
    }

    /// A page of the points (as `scroll_vectors` gives them) that lack named vector
    /// `lacking`: writes cut off before they filled a re-nest's slot.
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn scroll_lacking(
        &self,
        name: &str,
        vector: &str,
        lacking: &str,
        offset: Option<String>,
        limit: usize,
    ) -> Result<VectorPage> {
        let _ = (vector, lacking, offset, limit);
        Err(not_shared(name))
    }

    /// Claims the collection's next re-nest, filling `rotation` (whose version is
    /// `seen.current + 1`), if the collection is still at `seen` and no other claim's lease is
    /// live; stores `rotation` where `pending_rotation` reads it. `Some(epoch)`: this call
    /// won, and `epoch` is the claim (renewed with `renew`, ended by `finish` or `abandon`);
    /// `None`: another process moved first.
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn claim(
        &self,
        name: &str,
        seen: &Epoch,
        rotation: &StoredRotation,
        lease: std::time::Duration,
    ) -> Result<Option<Epoch>> {
        let _ = (seen, rotation, lease);
        Err(not_shared(name))
    }

    /// The rotation that claim `epoch` fills; `None` while its claimant has not stored it
    /// yet (or when `epoch` has no pending version).
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn pending_rotation(&self, name: &str, epoch: &Epoch) -> Result<Option<StoredRotation>> {
        let _ = epoch;
        Err(not_shared(name))
    }

    /// Extends claim `claim`'s lease to `lease` from now; `false` when it is no longer the
    /// collection's claim or its lease has run out (the claim is then dead).
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn renew(&self, name: &str, claim: &Epoch, lease: std::time::Duration) -> Result<bool> {
        let _ = (claim, lease);
        Err(not_shared(name))
    }

    /// Switches the collection to claim `claim`'s rotation (`rotation`, as `claim` stored
    /// it), at once for every process, if `claim` still holds and its lease runs; `false`
    /// when it does not (and nothing changed).
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn finish(&self, name: &str, claim: &Epoch, rotation: &StoredRotation) -> Result<bool> {
        let _ = (claim, rotation);
        Err(not_shared(name))
    }

    /// Ends claim `claim` without a switch (a failed re-nest), so other processes need not
    /// wait for its lease to run out; nothing when it no longer holds.
    ///
    /// Errors: the store's; `Unsupported` for a store that is not shared.
    fn abandon(&self, name: &str, claim: &Epoch) -> Result<()> {
        let _ = claim;
        Err(not_shared(name))
    }
}

fn not_shared(name: &str) -> StoreError {
    StoreError::Unsupported {
        option: "adapt".into(),
        message: format!("collection {name:?} is in a store only this process writes"),
    }
}

/// Where an adaptive collection on a store several processes write stands in its re-nests:
/// what every write and search compares before and after it, to know it ran under one
/// rotation (`adapt`). Every change of the stored state changes it: a claim takes the next
/// `claims` number, and a finish or an abandoned claim clears `pending`, so an epoch seen twice
/// means nothing happened in between (`incarnation` tells a collection deleted and made again
/// under its name from the one before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epoch {
    /// A random number drawn when the collection's state was first written (0: not yet).
    pub incarnation: i64,
    /// Re-nest claims so far; the pending one (if any) is number `claims`.
    pub claims: u64,
    /// The rotation version in force (0: the model's prefixes).
    pub current: u64,
    /// The version a re-nest is filling now (`current + 1`), if one is.
    pub pending: Option<u64>,
}

impl Epoch {
    /// Whether `self` comes after `other` in one collection's history (a claim, then its
    /// switch or abandon); an epoch of another incarnation always does.
    pub fn is_after(&self, other: &Epoch) -> bool {
        let key = |e: &Epoch| (e.claims, e.current, e.pending.is_none());
        self.incarnation != other.incarnation || key(self) > key(other)
    }
}

/// A shared collection's epoch and its pending claim's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// Where the collection stands.
    pub epoch: Epoch,
    /// Whether the pending claim's lease still runs. A claim whose lease ran out can neither
    /// be renewed nor switched to, only taken over or given up, so writers need not fill it.
    pub lease_live: bool,
}

/// New named vectors for one point, by caller id.
#[derive(Debug, Clone, PartialEq)]
pub struct PointUpdate {
    /// The caller's id.
    pub id: String,
    /// `(vector name, values)`, already cut and normalised.
    pub vectors: Vec<(String, Vec<f32>)>,
    /// The point's write token when it was scrolled (`ScrolledPoint::written`).
    pub written: Option<i64>,
}

/// One point of a `VectorStore::scroll_vectors` page.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrolledPoint {
    /// The caller's id.
    pub id: String,
    /// The named vector asked for, as stored.
    pub vector: Vec<f32>,
    /// The document's text, when asked for (else empty).
    pub text: String,
    /// Its write token, where the store keeps them (a Qdrant server; `None` for a point
    /// written before tokens, or by the embedded store).
    pub written: Option<i64>,
}

/// One page of `VectorStore::scroll_vectors` and the next page's token.
pub type VectorPage = (Vec<ScrolledPoint>, Option<String>);

impl CollectionSpec {
    /// The widest stored size: an adaptive collection's full width, kept unrotated, from
    /// which its other sizes are cut.
    pub fn widest(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    /// Whether size `dim` is rotated by the collection's fit (an adaptive collection's sizes
    /// below its widest: the widest's cosines do not change under a rotation).
    pub fn rotates(&self, dim: usize) -> bool {
        self.adapt.is_some() && dim < self.widest()
    }

    /// The sizes the collection's fit rotates, ascending (none for a generic collection).
    pub fn rotated_dims(&self) -> Vec<usize> {
        self.dims
            .iter()
            .copied()
            .filter(|&d| self.rotates(d))
            .collect()
    }

    /// The named vector holding size `dim` in rotation slot `slot` (0 or 1): `d{dim}`, and
    /// `d{dim}_1` for slot 1 of a rotated size (a re-nest fills the slot not in use, then
    /// switches to it).
    pub fn vector_name(&self, dim: usize, slot: usize) -> String {
        if slot == 1 && self.rotates(dim) {
            format!("{}_1", vector_name(dim))
        } else {
            vector_name(dim)
        }
    }

    /// Every named vector the collection has, with its size.
    pub fn vectors(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for &d in &self.dims {
            out.push((vector_name(d), d));
            if self.rotates(d) {
                out.push((self.vector_name(d, 1), d));
            }
        }
        out
    }

    /// The size of named vector `name`, if the collection has it.
    fn size_of(&self, name: &str) -> Option<usize> {
        self.vectors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
    }

    /// Checks that `docs` carry only this collection's named vectors, each of its length,
    /// and every stored size at least once.
    ///
    /// Errors: `Redefined` naming the first document that does not.
    pub(crate) fn check_documents(&self, name: &str, docs: &[StoredDocument]) -> Result<()> {
        for d in docs {
            let fits = d
                .vectors
                .iter()
                .all(|(n, v)| self.size_of(n) == Some(v.len()))
                && self
                    .dims
                    .iter()
                    .all(|&dim| d.vectors.iter().any(|(_, v)| v.len() == dim));
            if !fits {
                let names: Vec<&str> = d.vectors.iter().map(|(n, _)| n.as_str()).collect();
                return Err(StoreError::Redefined {
                    name: name.to_string(),
                    message: format!(
                        "document {:?} has vectors {names:?}, the collection stores {:?}",
                        d.id, self.dims
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks that the named vectors `q` searches (and prefetches) exist, each of its length.
    ///
    /// Errors: `Redefined` naming the size that does not.
    pub(crate) fn check_query(&self, name: &str, q: &VectorQuery) -> Result<()> {
        let sizes = std::iter::once((q.dim, &q.using, q.vector.len()))
            .chain(q.funnel.iter().map(|f| (f.dim, &f.using, f.vector.len())));
        for (dim, using, len) in sizes {
            if self.size_of(using) != Some(len) || len != dim {
                return Err(StoreError::Redefined {
                    name: name.to_string(),
                    message: format!("size {dim} is not stored; stored: {:?}", self.dims),
                });
            }
        }
        Ok(())
    }
}

/// The named vector of a stored size (slot 0).
pub fn vector_name(dim: usize) -> String {
    format!("d{dim}")
}

pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}
