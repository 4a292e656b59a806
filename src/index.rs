//! `Index`: a collection in the embedded Qdrant store plus the model that fills it — add
//! documents, index a JSONL file (resumably), search by text at any stored size — with no
//! HTTP server in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use mrl_encoder::{Embedder, EncoderError, Profile};
use mrl_service::documents::{Document, DocumentError};
use mrl_service::indexer::{self, IndexError, IndexOptions, IndexSummary};
use mrl_service::store::{self, CollectionSpec, Hit, StoreError, VectorQuery, VectorStore};

/// Everything the facade can fail with, one variant per layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("document {id:?}: {source}")]
    Document { id: String, source: DocumentError },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to search: the stored size to rank by, how many hits, and the optional extras.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    pub dim: usize,
    pub limit: usize,
    /// Prefetch `candidates` at the smaller stored size `dim`, then rescore at `self.dim`.
    pub funnel: Option<(usize, usize)>,
    /// A Qdrant filter (JSON) over the payload.
    pub filter: Option<serde_json::Value>,
    /// Embed the query with this profile instead of the collection's (a smaller profile
    /// searches a full-profile index when the checkpoint was trained for it).
    pub profile: Option<String>,
    /// Brute force instead of the HNSW index.
    pub exact: bool,
}

impl SearchOptions {
    pub fn new(dim: usize, limit: usize) -> Self {
        Self {
            dim,
            limit,
            funnel: None,
            filter: None,
            profile: None,
            exact: false,
        }
    }
    pub fn funnel(mut self, dim: usize, candidates: usize) -> Self {
        self.funnel = Some((dim, candidates));
        self
    }
    pub fn filter(mut self, filter: serde_json::Value) -> Self {
        self.filter = Some(filter);
        self
    }
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }
    pub fn exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }
}

/// Where and how to open an [`Index`]; the sizes and profile apply when the collection is new.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    data_dir: PathBuf,
    name: String,
    dims: Option<Vec<usize>>,
    profile: Option<String>,
    qdrant: Option<(String, Option<String>)>,
}

impl IndexConfig {
    pub fn new(data_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            name: name.into(),
            dims: None,
            profile: None,
            qdrant: None,
        }
    }
    /// Keep the collection on a Qdrant server (gRPC address) instead of the embedded store;
    /// the data folder then holds only indexing progress records.
    pub fn qdrant(mut self, url: impl Into<String>, api_key: Option<String>) -> Self {
        self.qdrant = Some((url.into(), api_key));
        self
    }
    /// Sizes to store (default: the model's nested dims).
    pub fn dims(mut self, dims: Vec<usize>) -> Self {
        self.dims = Some(dims);
        self
    }
    /// The profile that embeds documents (default: `full`).
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Opens the collection, creating it if it does not exist. One process should open an
    /// embedded data folder once: the store inside holds its shards open.
    pub fn open(self, embedder: Arc<Embedder>) -> Result<Index> {
        let store = match self.qdrant {
            Some((url, key)) => store::open(&self.data_dir, Some(&url), key)?,
            None => store::open(&self.data_dir, None, None)?,
        };
        let spec = indexer::resolve_spec(
            &embedder,
            store.as_ref(),
            &self.name,
            self.dims.as_deref(),
            self.profile.as_deref(),
        )?;
        // An existing collection with another spec is refused here, not overwritten.
        store.create(&self.name, &spec)?;
        let profile = embedder.profile(Some(&spec.profile))?;
        Ok(Index {
            embedder,
            store,
            data_dir: self.data_dir,
            name: self.name,
            spec,
            profile,
        })
    }
}

/// A searchable collection of documents embedded by one model and profile.
///
/// ```no_run
/// use std::sync::Arc;
/// use mrl::{Document, Index, SearchOptions};
/// # fn main() -> Result<(), mrl::Error> {
/// let embedder = Arc::new(mrl::load_model(None)?);
/// let index = Index::open("data", "notes", embedder)?;
/// index.add_documents(vec![
///     Document::new("1", "Vitamin D deficiency is common in winter."),
///     Document::new("2", "Qdrant stores vectors with payloads."),
/// ])?;
/// let hits = index.search("sunlight and vitamins", 384, 5)?;
/// assert_eq!(hits[0].id, "1");
/// // A cheaper first pass: 64-dim candidates, rescored at 384.
/// let hits = index.search_with("sunlight", &SearchOptions::new(384, 5).funnel(64, 100))?;
/// # let _ = hits;
/// # Ok(()) }
/// ```
pub struct Index {
    embedder: Arc<Embedder>,
    store: Arc<dyn VectorStore>,
    data_dir: PathBuf,
    name: String,
    spec: CollectionSpec,
    profile: Profile,
}

impl Index {
    /// Opens (or creates, with the model's nested dims and the full profile) collection
    /// `name` in the data folder `data_dir`.
    pub fn open(data_dir: impl Into<PathBuf>, name: &str, embedder: Arc<Embedder>) -> Result<Self> {
        IndexConfig::new(data_dir, name).open(embedder)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stored sizes, profile and model.
    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Documents in the collection.
    pub fn count(&self) -> Result<usize> {
        Ok(self.store.info(&self.name)?.count)
    }

    /// Embeds the documents once and stores every size; a document with an existing id
    /// replaces it. Durable when it returns.
    pub fn add_documents(&self, docs: impl IntoIterator<Item = Document>) -> Result<usize> {
        let docs: Vec<Document> = docs.into_iter().collect();
        for d in &docs {
            if d.text.trim().is_empty() || d.payload.keys().any(|k| k.starts_with('_')) {
                return Err(Error::Document {
                    id: d.id.clone(),
                    source: DocumentError {
                        field: "text",
                        message: "text must not be empty and payload keys must not start \
                                  with '_'"
                            .into(),
                    },
                });
            }
        }
        let tokens = self
            .embedder
            .tokenizer()
            .encode(&docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>())?;
        let vectors =
            self.embedder
                .embed_tokens(&tokens, &self.profile, mrl_encoder::DEFAULT_BATCH_SIZE)?;
        let n = docs.len();
        let stored = docs
            .into_iter()
            .zip(vectors)
            .map(|(d, v)| d.into_stored(&v, &self.spec.dims))
            .collect::<Result<Vec<_>, _>>()?;
        if n > 0 {
            self.store.upsert(&self.name, stored)?;
        }
        Ok(n)
    }

    /// Indexes a JSONL file (BEIR `corpus.jsonl`, or `{id, text, payload}` lines) with the
    /// resumable batch job: rerun after a crash and it continues where it stopped.
    pub fn index_file(&self, path: &Path, progress: &ProgressBar) -> Result<IndexSummary> {
        let opts = IndexOptions::new(self.data_dir.join("jobs"));
        Ok(indexer::index_file(
            &self.embedder,
            self.store.as_ref(),
            &self.name,
            path,
            &opts,
            progress,
        )?)
    }

    /// Deletes documents by id.
    pub fn delete(&self, ids: &[String]) -> Result<()> {
        Ok(self.store.delete_documents(&self.name, ids)?)
    }

    /// The `limit` documents nearest to `query` at stored size `dim`.
    pub fn search(&self, query: &str, dim: usize, limit: usize) -> Result<Vec<Hit>> {
        self.search_with(query, &SearchOptions::new(dim, limit))
    }

    pub fn search_with(&self, query: &str, opts: &SearchOptions) -> Result<Vec<Hit>> {
        let full = self.embed_query(query, opts.profile.as_deref())?;
        self.search_vector(&full, opts)
    }

    /// The raw (full-width, unnormalised) vector of `query`, under `profile` or the
    /// collection's; [`search_vector`](Self::search_vector) cuts it to any stored size.
    pub fn embed_query(&self, query: &str, profile: Option<&str>) -> Result<Vec<f32>> {
        if query.trim().is_empty() {
            return Err(Error::Invalid("the query is empty".into()));
        }
        let profile = match profile {
            Some(p) => {
                self.embedder.check_aligned(p, &self.spec.profile)?;
                self.embedder.profile(Some(p))?
            }
            None => self.profile.clone(),
        };
        let tokens = self.embedder.tokenizer().encode(&[query])?;
        let mut v = self.embedder.embed_tokens(&tokens, &profile, 1)?;
        Ok(v.pop().expect("one text gives one vector; this is a bug"))
    }

    /// Searches with an already embedded query (see [`embed_query`](Self::embed_query)).
    pub fn search_vector(&self, full: &[f32], opts: &SearchOptions) -> Result<Vec<Hit>> {
        let dims = &self.spec.dims;
        if !dims.contains(&opts.dim) {
            return Err(Error::Invalid(format!(
                "dim {} is not stored in {:?}; stored: {dims:?}",
                opts.dim, self.name
            )));
        }
        if let Some((d, candidates)) = opts.funnel {
            if !dims.contains(&d) || d >= opts.dim || candidates < opts.limit {
                return Err(Error::Invalid(format!(
                    "a funnel needs a stored size below {} and at least {} candidates; \
                     stored: {dims:?}",
                    opts.dim, opts.limit
                )));
            }
        }
        if opts.limit == 0 {
            return Err(Error::Invalid("limit must be positive".into()));
        }
        let mut q = VectorQuery::nested(full, opts.dim, opts.limit, opts.funnel)?;
        q.filter = opts.filter.clone();
        q.exact = opts.exact;
        Ok(self.store.search(&self.name, &q)?)
    }
}
