//! Vector stores behind one trait: a collection keeps, for every document, one named vector per
//! stored size (`d64`, `d256`, …; an adaptive collection two per size below its full width,
//! one per rotation slot) plus its id, text and payload, and an adaptive collection its current
//! rotation. `edge` is Qdrant's own engine in-process (the default); `remote` is a Qdrant server
//! or cluster.

pub mod edge;
mod error;
mod open;
pub mod remote;
mod spec;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use edge::EdgeStore;
pub use error::{Result, StoreError};
pub use open::{open, wait_until_available};
pub use remote::RemoteStore;
pub use spec::{
    check_name, encode_f32, vector_name, Adapt, CollectionPrompts, CollectionSpec, Distance,
    HnswSize, Layout, NestingInfo, QueryMapInfo, RotationInfo, StoredRotation,
    DEFAULT_ADAPT_THRESHOLD,
};

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

/// The checks of a write or a search against a spec, here beside the types they check.
impl CollectionSpec {
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
