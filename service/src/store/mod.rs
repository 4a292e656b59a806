//! Vector stores behind one trait: a collection keeps, for every document, one named vector per
//! stored size (`d64`, `d256`, …) plus its id, text and payload. `edge` is Qdrant's own engine
//! in-process (the default); `remote` is a Qdrant server or cluster.

pub mod edge;
pub mod remote;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use edge::EdgeStore;
pub use remote::RemoteStore;

/// The store a command asked for: the Qdrant server at `qdrant_url`, else the embedded
/// store in `data_dir`.
pub fn open(
    data_dir: &std::path::Path,
    qdrant_url: Option<&str>,
    api_key: Option<String>,
) -> Result<std::sync::Arc<dyn VectorStore>> {
    Ok(match qdrant_url {
        Some(url) => std::sync::Arc::new(RemoteStore::connect(url, api_key)?),
        None => std::sync::Arc::new(
            EdgeStore::open(data_dir)
                .map_err(|e| StoreError::Storage(format!("{}: {e}", data_dir.display())))?,
        ),
    })
}

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

/// A stable point id for a caller's id (Qdrant wants integers or UUIDs): the first 16 bytes
/// of its SHA-256, the same in every store.
pub(crate) fn point_uuid(id: &str) -> uuid::Uuid {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Uuid::from_bytes(bytes)
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
    #[error("storage error: {0}")]
    Storage(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

/// What a collection stores and how its documents were embedded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// Stored sizes, ascending, each one named vector `d{dim}`.
    pub dims: Vec<usize>,
    /// The profile that embeds the documents.
    pub profile: String,
    pub model: String,
    pub distance: Distance,
}

/// A collection's definition and size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    #[serde(flatten)]
    pub spec: CollectionSpec,
    pub count: usize,
}

/// One document to store: its vectors per stored size (already cut and normalised).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub text: String,
    pub payload: Map<String, Value>,
    pub vectors: Vec<(usize, Vec<f32>)>,
}

/// A nearest-neighbour query at one stored size, optionally through a funnel.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// The query vector at `dim` (cut and normalised).
    pub vector: Vec<f32>,
    pub dim: usize,
    pub limit: usize,
    /// Qdrant's filter JSON.
    pub filter: Option<Value>,
    /// Prefetch `candidates` by the `(dim, vector)` prefix, then rescore them at `dim`.
    pub funnel: Option<Funnel>,
    /// Brute force instead of the HNSW index: the reference approximate search is judged by.
    pub exact: bool,
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
        let cut = |d| mrl_encoder::head::nest(full, d, true);
        Ok(Self {
            vector: cut(dim)?,
            dim,
            limit,
            filter: None,
            funnel: match funnel {
                Some((d, candidates)) => Some(Funnel {
                    dim: d,
                    vector: cut(d)?,
                    candidates,
                }),
                None => None,
            },
            exact: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Funnel {
    pub dim: usize,
    pub vector: Vec<f32>,
    pub candidates: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub text: String,
    pub payload: Map<String, Value>,
}

/// The operations the service needs from a vector store.
pub trait VectorStore: Send + Sync {
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
}

/// The named vector of a stored size.
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
