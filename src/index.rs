//! `Index`: a collection in the embedded Qdrant store plus the model that fills it — add
//! documents, index a JSONL file (resumably), search by text at any stored size — with no
//! HTTP server in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use mrl_core::indexer::{self, IndexError, IndexOptions, IndexProgress, IndexSummary, Skip};
use mrl_core::store::{self, CollectionSpec, Hit, SearchParams, StoreError};
use mrl_core::{
    Collection, Collections, CreateRequest, DimPolicy, Document, Embeddings, FunnelRequest, Policy,
    SearchRequest,
};
use mrl_encoder::{Embedder, EncoderError};

/// Everything the facade can fail with, one variant per layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// A rule of the core (a dim, a profile, a document, a search option) or a store error.
    #[error(transparent)]
    Core(#[from] mrl_core::Error),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Core(e.into())
    }
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
    /// Engine knobs passed to the store as they are (`hnsw_ef`).
    pub params: SearchParams,
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
            params: SearchParams::default(),
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
    pub fn params(mut self, params: SearchParams) -> Self {
        self.params = params;
        self
    }
}

/// Where and how to open an [`Index`]; the sizes and profile apply when the collection is new.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    data_dir: PathBuf,
    name: String,
    /// The collection to open or create (see `Collections::open_or_create`).
    collection: CreateRequest,
    qdrant: Option<(String, Option<String>)>,
    dim_policy: DimPolicy,
}

impl IndexConfig {
    pub fn new(data_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            name: name.into(),
            collection: CreateRequest::default(),
            qdrant: None,
            dim_policy: Policy::LIBRARY.dims,
        }
    }
    /// Make a new collection adaptive: once it holds `threshold` documents (`None`: an existing
    /// adaptive collection's own, else 1,000),
    /// and again whenever it has doubled, its sizes below the full width are re-nested onto
    /// the principal axes of its own documents' vectors (no labels; full-width results do not
    /// change). The full width is stored too.
    ///
    /// Errors (at `open`): a threshold of 0.
    pub fn adapt(mut self, threshold: Option<usize>) -> Self {
        self.collection.adapt = true;
        self.collection.adapt_threshold = threshold;
        self
    }
    /// Which sizes a new collection may store (default: any prefix; `DimPolicy::Nested`
    /// holds the library to the server's default rule).
    pub fn dim_policy(mut self, policy: DimPolicy) -> Self {
        self.dim_policy = policy;
        self
    }
    /// Keep the collection on a Qdrant server (gRPC address) instead of the embedded store;
    /// the data folder then holds only indexing progress records.
    pub fn qdrant(mut self, url: impl Into<String>, api_key: Option<String>) -> Self {
        self.qdrant = Some((url.into(), api_key));
        self
    }
    /// Sizes to store (default: the model's nested dims).
    pub fn dims(mut self, dims: Vec<usize>) -> Self {
        self.collection.dims = Some(dims);
        self
    }
    /// The profile that embeds documents (default: `full`).
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.collection.profile = Some(profile.into());
        self
    }

    /// Opens the collection, creating it if it does not exist. One process should open an
    /// embedded data folder once: the store inside holds its shards open.
    pub fn open(self, embedder: Arc<Embedder>) -> Result<Index> {
        let store = match &self.qdrant {
            Some((url, key)) => store::open(&self.data_dir, Some(url), key.clone())?,
            None => store::open(&self.data_dir, None, None)?,
        };
        let policy = Policy {
            dims: self.dim_policy,
            ..Policy::LIBRARY
        };
        let embeddings = Arc::new(Embeddings::inline(embedder, policy));
        let collections = Collections::new(store, embeddings);
        // An existing collection with another spec is refused here, not overwritten.
        let (collection, _) = collections.open_or_create(&self.name, &self.collection)?;
        Ok(Index {
            collection,
            collections,
            data_dir: self.data_dir,
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
    collection: Collection,
    collections: Collections,
    data_dir: PathBuf,
}

impl Index {
    /// Opens (or creates, with the model's nested dims and the full profile) collection
    /// `name` in the data folder `data_dir`.
    pub fn open(data_dir: impl Into<PathBuf>, name: &str, embedder: Arc<Embedder>) -> Result<Self> {
        IndexConfig::new(data_dir, name).open(embedder)
    }

    pub fn name(&self) -> &str {
        self.collection.name()
    }

    /// Stored sizes, profile and model.
    pub fn spec(&self) -> &CollectionSpec {
        self.collection.spec()
    }

    pub fn embedder(&self) -> &Embedder {
        self.collection.embeddings().embedder()
    }

    /// The core collection underneath, for what the facade does not wrap.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// Documents in the collection.
    pub fn count(&self) -> Result<usize> {
        Ok(self.collection.count()?)
    }

    /// Embeds the documents once and stores every size; a document with an existing id
    /// replaces it. Durable when it returns.
    ///
    /// Errors: `Core(InvalidField)` naming `documents[i].text`, `.payload` or `.id` for a
    /// document that breaks the rules (empty text, a `_` payload key, an id twice).
    pub fn add_documents(&self, docs: impl IntoIterator<Item = Document>) -> Result<usize> {
        let docs: Vec<Document> = docs.into_iter().collect();
        if docs.is_empty() {
            return Ok(0);
        }
        Ok(self.collection.add_documents_blocking(docs)?.ids.len())
    }

    /// Indexes a JSONL file (BEIR `corpus.jsonl`, or `{id, text, payload}` lines) with the
    /// resumable batch job: rerun after a crash and it continues where it stopped.
    pub fn index_file(&self, path: &Path, progress: &ProgressBar) -> Result<IndexSummary> {
        let opts = IndexOptions::new(self.data_dir.join("jobs"));
        Ok(indexer::index_file(
            &self.collections,
            self.name(),
            path,
            &opts,
            &IndexBar(progress),
        )?)
    }

    /// Deletes documents by id.
    pub fn delete(&self, ids: &[String]) -> Result<()> {
        self.collection.delete_documents(ids)?;
        Ok(())
    }

    /// The `limit` documents nearest to `query` at stored size `dim`.
    pub fn search(&self, query: &str, dim: usize, limit: usize) -> Result<Vec<Hit>> {
        self.search_with(query, &SearchOptions::new(dim, limit))
    }

    pub fn search_with(&self, query: &str, opts: &SearchOptions) -> Result<Vec<Hit>> {
        Ok(self
            .collection
            .search_blocking(opts.request(Some(query.to_string()), None))?)
    }

    /// Searches with a query you embedded yourself: `vector` holds `opts.dim` values (an
    /// adaptive collection's full width: it rotates before it cuts), finite as float32.
    ///
    /// Errors: `Core(InvalidField)` naming `vector` for another length or a non-finite value.
    pub fn search_vector(&self, vector: Vec<f32>, opts: &SearchOptions) -> Result<Vec<Hit>> {
        Ok(self
            .collection
            .search_blocking(opts.request(None, Some(vector)))?)
    }

    /// Waits until an adaptive collection is under the rotation its size calls for (a
    /// re-nest runs in the background after writes); at once for a generic one.
    pub fn finish_adapting(&self) -> Result<()> {
        Ok(self.collection.finish_adapting()?)
    }
}

impl SearchOptions {
    /// The core's request for these options.
    fn request(&self, query: Option<String>, vector: Option<Vec<f32>>) -> SearchRequest {
        SearchRequest {
            query,
            vector,
            dim: Some(self.dim),
            limit: Some(self.limit),
            funnel: self.funnel.map(|(dim, candidates)| FunnelRequest {
                dim,
                candidates: Some(candidates),
            }),
            filter: self.filter.clone(),
            profile: self.profile.clone(),
            exact: self.exact,
            params: self.params,
        }
    }
}

/// An indicatif bar showing an indexing job: the input's lines as its length, the lines done
/// as its position (a resumed job starts at what earlier runs did), the documents indexed as
/// its message, and each skipped line printed above it.
pub struct IndexBar<'a>(pub &'a ProgressBar);

impl IndexProgress for IndexBar<'_> {
    fn start(&self, lines: u64, done: u64) {
        self.0.set_length(lines);
        self.0.set_position(done);
    }

    fn advance(&self, lines: u64, indexed: usize) {
        self.0.set_position(lines);
        self.0.set_message(format!("{indexed} docs"));
    }

    fn skipped(&self, skip: &Skip) {
        self.0
            .suspend(|| eprintln!("skipped line {}: {}", skip.line, skip.reason));
    }
}
