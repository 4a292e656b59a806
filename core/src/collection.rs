//! What a caller does with one collection (`Collection`): add and delete documents, search —
//! every rule checked here once (allowed dims, profile alignment, funnel, limit, the query,
//! ids), for either store. Making, opening and listing them is `collections`'.
//!
//! How a full vector becomes stored and searched vectors (and how an adaptive collection
//! re-nests) is `adapt`'s; every handle on one collection shares its `Adapter`.
//!
//! Store calls block; an async shell runs them on its blocking pool. Embedding is the caller's
//! step between planning and running a search (or between checking and storing documents), so
//! an async shell can await the model thread and a plain caller can block on it, on the same
//! rules.

use std::collections::HashSet;
use std::sync::Arc;

use mrl_encoder::Profile;
use serde::Deserialize;
use serde_json::Value;

use crate::adapt::{Adapter, SearchQuery};
use crate::documents::{check_ids, Document};
use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::store::{
    CollectionInfo, CollectionPrompts, CollectionSpec, Hit, RotationInfo, SearchParams, VectorStore,
};

/// The most hits a search may return.
pub const MAX_LIMIT: usize = 1000;
/// The most candidates a funnel's prefetch may ask for: each is scored and held in memory.
pub const MAX_CANDIDATES: usize = 100_000;
/// Hits when the caller does not say.
pub const DEFAULT_LIMIT: usize = 10;

/// A search, as a caller asks for it (`POST /collections/{name}/search` takes it as its body):
/// exactly one of `query` (text) and `vector` (already embedded, `dim` values).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Text, embedded with the collection's profile (or `profile`).
    pub query: Option<String>,
    /// An embedded query of `dim` values, finite as float32.
    pub vector: Option<Vec<f32>>,
    /// The stored size to rank by (default: the widest stored).
    pub dim: Option<usize>,
    /// Hits, `1..=MAX_LIMIT` (default `DEFAULT_LIMIT`).
    pub limit: Option<usize>,
    /// Prefetch at a smaller stored size, then rescore at `dim`.
    pub funnel: Option<FunnelRequest>,
    /// Qdrant's filter JSON over the payload; `has_id` takes the callers' document ids.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub filter: Option<Value>,
    /// Embed the query with this profile instead of the collection's: where an adaptive
    /// collection's fit maps it into the documents' space (`rotation.queries` of its info),
    /// or the checkpoint declares the two aligned.
    pub profile: Option<String>,
    /// Brute force instead of the HNSW index.
    #[serde(default)]
    pub exact: bool,
    /// Engine knobs as in Qdrant's own search API (`"params": {"hnsw_ef": 128}`), passed to
    /// the store as they are.
    #[serde(default)]
    pub params: SearchParams,
}

/// A funnel as a caller asks for it: prefetch `candidates` at the smaller stored size `dim`,
/// then rescore them at the search's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelRequest {
    pub dim: usize,
    /// `limit..=MAX_CANDIDATES` (default 10 × limit).
    pub candidates: Option<usize>,
}

/// One collection: its spec as it was when opened, and what fills and searches it.
#[derive(Clone)]
pub struct Collection {
    pub(crate) embeddings: Arc<Embeddings>,
    /// Its name, spec and store, and how its vectors are cut.
    pub(crate) adapter: Arc<Adapter>,
}

/// Documents checked for a collection, ready to embed with its profile.
#[derive(Debug, Clone)]
struct DocumentBatch {
    docs: Vec<Document>,
    /// The collection's document profile.
    profile: Profile,
    /// The collection's document prompt.
    prompt: Option<String>,
}

impl DocumentBatch {
    /// The texts to embed, in order, each after the collection's document prompt.
    fn texts(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|d| CollectionPrompts::apply(&self.prompt, &d.text))
            .collect()
    }
}

/// A search checked against a collection: what (if anything) to embed, and how to query.
#[derive(Debug, Clone)]
struct SearchPlan {
    /// The query text and the profile to embed it with, for a text query.
    embed: Option<(String, Profile)>,
    /// The query vector, for a vector query.
    vector: Option<Vec<f32>>,
    dim: usize,
    limit: usize,
    funnel: Option<(usize, usize)>,
    filter: Option<Value>,
    exact: bool,
    params: SearchParams,
    /// The query profile whose fitted map the search applies (`SearchQuery::profile`).
    mapped: Option<String>,
}

impl SearchPlan {
    /// The search from the query's full vector (`full`: the raw embedding of the text, or
    /// `None` for a vector query, which brought its own); `Collection::run` cuts it under the
    /// collection's current rotation.
    ///
    /// Errors: `Internal` when the vector is narrower than `dim` (plans check widths). A
    /// searched prefix of zeros is refused when it is cut (`Collection::run`).
    fn query(&self, full: Option<&[f32]>) -> Result<SearchQuery> {
        let full = full.or(self.vector.as_deref()).ok_or_else(|| {
            Error::Internal("a text query needs its embedding; this is a bug".into())
        })?;
        if full.len() < self.dim && self.mapped.is_none() {
            return Err(Error::Internal(format!(
                "a {}-wide query for dim {}; this is a bug",
                full.len(),
                self.dim
            )));
        }
        Ok(SearchQuery {
            full: full.to_vec(),
            dim: self.dim,
            limit: self.limit,
            funnel: self.funnel,
            filter: self.filter.clone(),
            exact: self.exact,
            params: self.params,
            profile: self.mapped.clone(),
        })
    }
}

impl Collection {
    pub fn name(&self) -> &str {
        self.adapter.name()
    }

    /// Stored sizes, profile, model, distance, layout.
    pub fn spec(&self) -> &CollectionSpec {
        self.adapter.spec()
    }

    pub fn embeddings(&self) -> &Arc<Embeddings> {
        &self.embeddings
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        self.adapter.vector_store()
    }

    /// Documents in the collection now.
    pub fn count(&self) -> Result<usize> {
        Ok(self.store().info(self.name())?.count)
    }

    /// The collection's definition and size now, its rotation and a re-nest running here.
    pub fn info(&self) -> Result<CollectionInfo> {
        self.adapter.info()
    }

    /// Waits for a running re-nest and runs one that is due: returns when the collection is
    /// under the rotation its size calls for (at once for a generic collection).
    pub fn finish_adapting(&self) -> Result<()> {
        self.adapter.finish()
    }

    /// Re-nests an adaptive collection now, whatever its size (after a bulk load that has not
    /// doubled since its last fit, say); returns its new rotation.
    ///
    /// Errors: `InvalidField` (`adapt`) for a generic collection; a failed re-nest's.
    pub fn renest_now(&self) -> Result<RotationInfo> {
        self.adapter.renest_now()
    }

    /// Whether the collection's current fit maps queries of `profile` into its documents'
    /// space (`SearchQuery::profile` may then name it).
    pub fn maps_queries_of(&self, profile: &str) -> bool {
        self.adapter.maps_queries_of(profile).is_some()
    }

    /// Checks that this process embeds as the collection's documents were embedded: at the
    /// same precision (int8 queries are not searched against f32 documents, nor int8
    /// documents added to them).
    ///
    /// Errors: `InvalidField` (`precision`) naming both.
    fn check_precision(&self) -> Result<()> {
        let (ours, theirs) = (
            self.embeddings.embedder().precision(),
            self.spec().precision,
        );
        if ours != theirs {
            return Err(Error::field(
                "precision",
                format!(
                    "collection {:?} holds documents embedded in {theirs}, and this model runs \
                     in {ours}: run it with --precision {theirs}, or index into a new collection",
                    self.name()
                ),
            ));
        }
        Ok(())
    }

    /// Values a vector query at `dim` sends: `dim`, or an adaptive collection's full width.
    fn query_width(&self, dim: usize) -> usize {
        if self.spec().adapt.is_some() {
            self.spec().widest()
        } else {
            dim
        }
    }

    /// Checks documents before they are embedded: at least one, no more than the policy's
    /// `max_inputs`, each valid, no id twice.
    ///
    /// Errors: `InvalidField` naming `documents`, `documents[i].text`, `documents[i].payload`
    /// or `documents[i].id`.
    fn check_documents(&self, docs: Vec<Document>) -> Result<DocumentBatch> {
        if docs.is_empty() {
            return Err(Error::field(
                "documents",
                "documents must be a non-empty array",
            ));
        }
        self.embeddings
            .policy()
            .check_count(docs.len(), "documents")?;
        self.check_precision()?;
        let mut seen = HashSet::new();
        for (i, d) in docs.iter().enumerate() {
            d.check().map_err(|e| e.at(i))?;
            if !seen.insert(d.id.as_str()) {
                return Err(Error::field(
                    &format!("documents[{i}].id"),
                    format!("id {:?} appears twice in this request", d.id),
                ));
            }
        }
        let profile = self
            .embeddings
            .profile(Some(&self.spec().profile), "profile")?;
        Ok(DocumentBatch {
            docs,
            profile,
            prompt: self.spec().prompts.document_prompt.clone(),
        })
    }

    /// Stores documents already checked (or read by the indexer) with their raw pooled
    /// vectors; durable when it returns. An adaptive collection may start a re-nest.
    pub(crate) fn store_vectors(
        &self,
        docs: Vec<Document>,
        vectors: Vec<Vec<f32>>,
    ) -> Result<usize> {
        if docs.len() != vectors.len() {
            return Err(Error::Internal(format!(
                "{} documents, {} vectors; this is a bug",
                docs.len(),
                vectors.len()
            )));
        }
        let to = self.padded_width();
        let vectors = vectors.into_iter().map(|v| pad(v, to)).collect();
        self.adapter.store(docs, vectors)
    }

    /// See [`padded_width`].
    fn padded_width(&self) -> Option<usize> {
        padded_width(&self.embeddings, self.spec())
    }

    /// A text query's raw vector as the search cuts it: zero-padded where the collection is
    /// padded, except on its way into a query map (fitted on unpadded vectors; its output is
    /// the documents' width).
    fn query_vector(&self, plan: &SearchPlan, v: Vec<f32>) -> Vec<f32> {
        pad(v, self.padded_width().filter(|_| plan.mapped.is_none()))
    }

    /// Checks, embeds (awaiting the model thread) and stores documents (on the runtime's
    /// blocking pool); durable when it returns. Must run inside a tokio runtime.
    ///
    /// Errors: as [`add_documents_blocking`](Self::add_documents_blocking).
    pub async fn add_documents(&self, docs: Vec<Document>) -> Result<Added> {
        let batch = self.check_documents(docs)?;
        let (vectors, tokens) = self
            .embeddings
            .raw(batch.texts(), batch.profile.clone(), "documents")
            .await?;
        let this = self.clone();
        blocking(move || this.store_batch(batch, vectors, tokens.count)).await
    }

    /// Checks, embeds (on the caller's thread or the model thread) and stores documents;
    /// durable when it returns.
    ///
    /// Errors: `InvalidField` naming `documents` (none, or more than the policy's
    /// `max_inputs`), `documents[i].text`, `.payload` or `.id` (an id twice); `InputTooLong`,
    /// `QueueFull` from embedding; `Store` errors.
    pub fn add_documents_blocking(&self, docs: Vec<Document>) -> Result<Added> {
        let batch = self.check_documents(docs)?;
        let (vectors, tokens) =
            self.embeddings
                .raw_blocking(&batch.texts(), &batch.profile, "documents")?;
        self.store_batch(batch, vectors, tokens.count)
    }

    /// The last step of both faces of adding documents.
    fn store_batch(
        &self,
        batch: DocumentBatch,
        vectors: Vec<Vec<f32>>,
        tokens: usize,
    ) -> Result<Added> {
        let ids = batch.docs.iter().map(|d| d.id.clone()).collect();
        self.store_vectors(batch.docs, vectors)?;
        Ok(Added { ids, tokens })
    }

    /// Deletes documents by the caller's ids; durable when it returns.
    ///
    /// Errors: `InvalidField` (`ids`) for no ids or an empty one; `Store` errors.
    pub fn delete_documents(&self, ids: &[String]) -> Result<usize> {
        check_ids(ids)?;
        self.adapter.delete(ids)?;
        Ok(ids.len())
    }

    /// Every document id, in no particular order.
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self.store().ids(self.name())?)
    }

    /// Plans, embeds (awaiting the model thread) and runs a search (on the runtime's blocking
    /// pool). Must run inside a tokio runtime.
    ///
    /// Errors: as [`search_blocking`](Self::search_blocking).
    pub async fn search(&self, req: SearchRequest) -> Result<Vec<Hit>> {
        let plan = self.plan_search(req)?;
        let full = match &plan.embed {
            Some((text, profile)) => {
                let (mut v, _) = self
                    .embeddings
                    .raw(vec![text.clone()], profile.clone(), "query")
                    .await?;
                Some(self.query_vector(&plan, one(v.pop())?))
            }
            None => None,
        };
        let query = plan.query(full.as_deref())?;
        let this = self.clone();
        blocking(move || this.run(&query)).await
    }

    /// Plans, embeds (on the caller's thread or the model thread) and runs a search.
    ///
    /// Errors: `InvalidField` naming `dim`, `limit`, `funnel.dim`, `funnel.candidates`,
    /// `query`, `vector`, `vector[i]` or `profile` (and `vector` for a searched cut of
    /// zeros); `InputTooLong`, `QueueFull` from embedding; `Store` errors.
    pub fn search_blocking(&self, req: SearchRequest) -> Result<Vec<Hit>> {
        let plan = self.plan_search(req)?;
        let full = match &plan.embed {
            Some((text, profile)) => {
                let (mut v, _) = self.embeddings.raw_blocking(&[text], profile, "query")?;
                Some(self.query_vector(&plan, one(v.pop())?))
            }
            None => None,
        };
        self.run(&plan.query(full.as_deref())?)
    }

    /// Checks a search against the collection: `dim` stored, `limit` in range, a funnel's
    /// size stored and smaller with enough candidates, exactly one of query and vector (a
    /// vector of `dim` finite values), a query profile aligned with the documents' and wide
    /// enough.
    ///
    /// Errors: `InvalidField` naming `dim`, `limit`, `funnel.dim`, `funnel.candidates`,
    /// `query`, `vector`, `vector[i]` or `profile`.
    fn plan_search(&self, req: SearchRequest) -> Result<SearchPlan> {
        let dims = &self.spec().dims;
        let widest = *dims
            .last()
            .ok_or_else(|| Error::Internal("a collection without dims; this is a bug".into()))?;
        let dim = req.dim.unwrap_or(widest);
        if !dims.contains(&dim) {
            return Err(Error::field(
                "dim",
                format!(
                    "dim {dim} is not stored in {:?}; stored: {dims:?}",
                    self.name()
                ),
            ));
        }
        let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(Error::field(
                "limit",
                format!("limit must be in 1..={MAX_LIMIT}"),
            ));
        }
        let funnel = req
            .funnel
            .map(|f| check_funnel(f, dim, limit, dims))
            .transpose()?;
        let (embed, vector, mapped) =
            match self.query_input(req.query, req.vector, req.profile, dim)? {
                QueryInput::Text(text, profile, mapped) => (Some((text, profile)), None, mapped),
                QueryInput::Vector(v) => (None, Some(v), None),
            };
        Ok(SearchPlan {
            embed,
            vector,
            dim,
            limit,
            funnel,
            filter: req.filter.filter(|f| !f.is_null()),
            exact: req.exact,
            params: req.params,
            mapped,
        })
    }

    /// What the search ranks by: a text to embed (with its profile, checked for alignment and
    /// width) or a vector of `dim` finite values; exactly one of them. A profile other than
    /// the documents' is allowed where the collection's fit maps it into the documents'
    /// space (an adaptive collection's query map, preferred: fitted on these documents) or
    /// the checkpoint declares the two aligned.
    fn query_input(
        &self,
        query: Option<String>,
        vector: Option<Vec<f32>>,
        profile: Option<String>,
        dim: usize,
    ) -> Result<QueryInput> {
        match (query, vector) {
            (Some(q), None) if !q.trim().is_empty() => {
                self.check_precision()?;
                let q = CollectionPrompts::apply(&self.spec().prompts.query_prompt, &q);
                let profile_name = profile.unwrap_or_else(|| self.spec().profile.clone());
                let profile = self.embeddings.profile(Some(&profile_name), "profile")?;
                let width = self.embeddings.embedder().model().output_width(&profile);
                // A map fitted for a profile of another width (a checkpoint swapped under the
                // same name) does not apply: the checkpoint's rule does.
                if profile_name != self.spec().profile
                    && self.adapter.maps_queries_of(&profile_name) == Some(width)
                {
                    return Ok(QueryInput::Text(q, profile, Some(profile_name)));
                }
                self.embeddings
                    .check_aligned(&profile_name, &self.spec().profile, "profile")?;
                // A padded collection's widest size is its documents' width plus zeros: a query
                // profile as wide as the documents' fills it the same way.
                let padded = real_width(&self.embeddings, self.spec())
                    .is_some_and(|real| self.spec().widest() > real && width >= real);
                if width < dim && !padded {
                    return Err(Error::field(
                        "profile",
                        format!("profile {profile_name:?} is {width} wide, below dim {dim}"),
                    ));
                }
                Ok(QueryInput::Text(q, profile, None))
            }
            (None, Some(v)) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(Error::field(
                        &format!("vector[{i}]"),
                        format!(
                            "vector[{i}] must be a number within float32's range (±3.4e38), got \
                             {}",
                            v[i]
                        ),
                    ));
                }
                // A rotation needs every value: an adaptive collection takes the full vector.
                let want = self.query_width(dim);
                if v.len() != want {
                    let why = if want == dim {
                        format!("dim is {dim}")
                    } else {
                        format!(
                            "{:?} adapts its sizes to its documents, so a vector query sends \
                             the full {want} values (rotated, then cut to dim {dim})",
                            self.name()
                        )
                    };
                    return Err(Error::field(
                        "vector",
                        format!("vector has {} values; {why}", v.len()),
                    ));
                }
                Ok(QueryInput::Vector(v))
            }
            (Some(_), Some(_)) => Err(Error::field("query", "give query or vector, not both")),
            (Some(_), None) => Err(Error::field("query", "query must be a non-empty string")),
            (None, None) => Err(Error::field("query", "query (text) or vector is required")),
        }
    }

    /// Runs a query already embedded and checked against the store, every size cut under one
    /// rotation: the last step of a search, and what the retrieval benchmark times alone
    /// (it embeds each query once and runs it at every size and funnel).
    ///
    /// Errors: `InvalidField` (`vector`) when a searched cut is all zeros (it has no
    /// direction to rank by); `Store` errors.
    pub fn run(&self, query: &SearchQuery) -> Result<Vec<Hit>> {
        self.adapter.search(query)
    }
}

/// The real width of `spec`'s documents' profile under today's model; `None` when the model
/// no longer has the profile.
pub(crate) fn real_width(embeddings: &Embeddings, spec: &CollectionSpec) -> Option<usize> {
    let profile = embeddings.profile(Some(&spec.profile), "profile").ok()?;
    Some(embeddings.embedder().model().output_width(&profile))
}

/// The width a collection's raw vectors are zero-padded to before they are cut: `Some(widest
/// stored size)` for a collection made when a checkpoint offered sizes past its real width
/// (heads whose extra rows were zeros: the shipped default listed 512 on 384), whose stored
/// vectors carry those zeros, so it keeps opening, adding and searching as before; `None` for
/// every other collection.
pub(crate) fn padded_width(embeddings: &Embeddings, spec: &CollectionSpec) -> Option<usize> {
    let width = real_width(embeddings, spec)?;
    (spec.widest() > width).then(|| spec.widest())
}

/// `v` zero-padded to `to` when it is narrower.
fn pad(mut v: Vec<f32>, to: Option<usize>) -> Vec<f32> {
    if let Some(w) = to {
        if v.len() < w {
            v.resize(w, 0.0);
        }
    }
    v
}

/// The one vector of one text.
fn one(v: Option<Vec<f32>>) -> Result<Vec<f32>> {
    v.ok_or_else(|| Error::Internal("one text gave no vector; this is a bug".into()))
}

/// Documents stored by one call: their ids (the callers' or the text hashes), in order, and
/// the token ids their texts took.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    pub ids: Vec<String>,
    pub tokens: usize,
}

/// Runs a blocking core call (a store operation) on the runtime's blocking pool, so an async
/// caller's executor never waits on disk or network. Must run inside a tokio runtime.
///
/// Errors: `f`'s; `Internal` when it panicked.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// What a search ranks by.
enum QueryInput {
    /// A text, the profile that embeds it, and that profile's name when the collection's
    /// query map carries its vectors into the documents' space.
    Text(String, Profile, Option<String>),
    /// A vector of the search's `dim` values.
    Vector(Vec<f32>),
}

/// A funnel's prefetch size and candidates: a stored size below `dim`, and
/// `limit..=MAX_CANDIDATES` candidates (default 10 × limit).
fn check_funnel(
    f: FunnelRequest,
    dim: usize,
    limit: usize,
    dims: &[usize],
) -> Result<(usize, usize)> {
    if !dims.contains(&f.dim) || f.dim >= dim {
        return Err(Error::field(
            "funnel.dim",
            format!("funnel.dim must be a stored size below dim {dim}; stored: {dims:?}"),
        ));
    }
    let candidates = f.candidates.unwrap_or(limit * 10);
    if !(limit..=MAX_CANDIDATES).contains(&candidates) {
        return Err(Error::field(
            "funnel.candidates",
            format!("funnel.candidates must be in limit..={MAX_CANDIDATES} (limit is {limit})"),
        ));
    }
    Ok((f.dim, candidates))
}
