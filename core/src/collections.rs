//! The collections of one store (`Collections`): the one spec builder every entry point's
//! create goes through (dims, profile, adapt, prompts), creating, opening, listing and
//! deleting them; what a caller then does with one is `collection`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mrl_encoder::config::PromptRole;
use serde_json::Value;

use crate::adapt::Adapter;
use crate::collection::{blocking, padded_width, Added, Collection, SearchRequest};
use crate::documents::{read_documents, read_ids};
use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::store::{
    check_name, Adapt, CollectionInfo, CollectionPrompts, CollectionSpec, Distance, Hit, Layout,
    StoreError, VectorStore, DEFAULT_ADAPT_THRESHOLD,
};

/// A collection to create, as a caller asks for it. Every entry point (HTTP, the indexer, the
/// library) builds its spec from one of these through [`Collections::spec`], so the rules
/// (and their errors) are the same everywhere.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateRequest {
    /// Sizes to store (any order, repeats allowed); `None`: the checkpoint's nested dims that
    /// fit the profile.
    pub dims: Option<Vec<usize>>,
    /// The profile that embeds the documents (default `full`).
    pub profile: Option<String>,
    /// Default cosine.
    pub distance: Option<Distance>,
    /// Default: the store's defaults.
    pub layout: Layout,
    /// Re-nest the smaller sizes onto the collection's own documents (`adapt`); the full
    /// width is then stored too.
    pub adapt: bool,
    /// Documents before the first fit (default `DEFAULT_ADAPT_THRESHOLD`; only with `adapt`).
    pub adapt_threshold: Option<usize>,
    /// The model's prompt put before each document (`config_sentence_transformers.json`), by
    /// name, or a literal one (not both). Neither: as sentence-transformers'
    /// `encode_document` picks it (the first of `document`, `passage`, `corpus`, else the
    /// default prompt, else none).
    pub document_prompt_name: Option<String>,
    pub document_prompt: Option<String>,
    /// The same for text queries; neither: `query`, else the default prompt, else none
    /// (`encode_query`).
    pub query_prompt_name: Option<String>,
    pub query_prompt: Option<String>,
}

/// The collections of one store, filled by one model.
#[derive(Clone)]
pub struct Collections {
    store: Arc<dyn VectorStore>,
    embeddings: Arc<Embeddings>,
    /// One nesting per open collection, shared by its handles (an adaptive collection's
    /// re-nests coordinate through it).
    adapters: Arc<Mutex<HashMap<String, Arc<Adapter>>>>,
}

impl Collections {
    pub fn new(store: Arc<dyn VectorStore>, embeddings: Arc<Embeddings>) -> Self {
        Self {
            store,
            embeddings,
            adapters: Arc::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    pub fn embeddings(&self) -> &Arc<Embeddings> {
        &self.embeddings
    }

    /// The spec a create request asks for, checked: the name, the dims (non-empty, each
    /// allowed by the dim policy for the profile; by default the checkpoint's nested dims that
    /// fit the profile), the profile, the adapt options. An adaptive collection also stores the
    /// profile's full width, which it re-nests from. The one spec builder: every entry point
    /// comes through here.
    ///
    /// Errors: `InvalidField` naming `name`, `dims`, `profile`, `adapt_threshold`, or
    /// `document_prompt_name`/`query_prompt_name` (a name the model lacks) or
    /// `document_prompt`/`query_prompt` (given with a name).
    pub fn spec(&self, name: &str, req: &CreateRequest) -> Result<CollectionSpec> {
        self.spec_within(name, req, None)
    }

    /// [`spec`](Self::spec), where a collection made before heads were cut to their real width
    /// (`padded`: its widest stored size, past the profile's width) keeps its sizes.
    fn spec_within(
        &self,
        name: &str,
        req: &CreateRequest,
        padded: Option<usize>,
    ) -> Result<CollectionSpec> {
        check_name(name)?;
        let profile_name = req.profile.clone().unwrap_or_else(|| "full".into());
        let profile = self.embeddings.profile(Some(&profile_name), "profile")?;
        let real = self.embeddings.embedder().model().output_width(&profile);
        let width = padded.unwrap_or(real);
        let mut dims = match &req.dims {
            Some(d) => d.clone(),
            None => {
                let nested = self.embeddings.embedder().nested_dims();
                let fit: Vec<usize> = nested.iter().copied().filter(|&d| d <= width).collect();
                if fit.is_empty() {
                    return Err(Error::field(
                        "dims",
                        format!(
                            "no dims given, and none of the checkpoint's nested dims {nested:?} \
                             fits profile {profile_name:?} ({width} wide); name the sizes to \
                             store"
                        ),
                    ));
                }
                fit
            }
        };
        dims.sort_unstable();
        dims.dedup();
        if dims.is_empty() || dims[0] == 0 {
            return Err(Error::field(
                "dims",
                "dims must be a non-empty array of positive integers",
            ));
        }
        // A padded collection's sizes past the real width are its zero-padded ones.
        for &d in dims
            .iter()
            .filter(|&&d| !padded.is_some_and(|w| d > real && d <= w))
        {
            self.embeddings.check_dim(d, &profile, "dims")?;
        }
        let adapt = adapt_option(req.adapt, req.adapt_threshold)?;
        let dims = adaptive_dims(dims, width, adapt)?;
        let prompt = |name: &Option<String>,
                      literal: &Option<String>,
                      role,
                      prefix|
         -> Result<Option<String>> {
            match (name, literal) {
                (None, None) => Ok(self
                    .embeddings
                    .embedder()
                    .prompts()
                    .for_role(role)
                    .map(String::from)),
                // An empty prompt is none.
                _ => Ok(self
                    .embeddings
                    .prompt_at(name.as_deref(), literal.as_deref(), prefix)?
                    .filter(|p| !p.is_empty())),
            }
        };
        let prompts = CollectionPrompts {
            document_prompt: prompt(
                &req.document_prompt_name,
                &req.document_prompt,
                PromptRole::Document,
                "document_",
            )?,
            query_prompt: prompt(
                &req.query_prompt_name,
                &req.query_prompt,
                PromptRole::Query,
                "query_",
            )?,
        };
        Ok(CollectionSpec {
            dims,
            profile: profile_name,
            model: self.embeddings.model_name(),
            precision: self.embeddings.embedder().precision(),
            distance: req.distance.unwrap_or(Distance::Cosine),
            layout: req.layout.clone(),
            adapt,
            prompts,
        })
    }

    /// Creates the collection `req` describes, or does nothing when it exists with the same
    /// spec. Returns the spec and whether it was created.
    ///
    /// Errors: as [`spec`](Self::spec); `Store(Conflict)` for another spec under the name;
    /// `Store(Unsupported)` for a layout the store cannot honour.
    pub fn create(&self, name: &str, req: &CreateRequest) -> Result<(CollectionSpec, bool)> {
        check_name(name)?;
        // The same create again keeps working on a collection stored wider than today's model.
        let padded = self
            .existing(name)?
            .and_then(|e| padded_width(&self.embeddings, &e));
        let spec = self.spec_within(name, req, padded)?;
        let created = self.store.create(name, &spec)?;
        Ok((spec, created))
    }

    /// Opens an existing collection.
    ///
    /// Errors: `Store(NoSuchCollection)`.
    pub fn open(&self, name: &str) -> Result<Collection> {
        let info = self.store.info(name)?;
        let mut adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let adapter = match adapters.get(name) {
            // The same collection (a recreation with another spec gets a new one).
            Some(a) if *a.spec() == info.spec => a.clone(),
            _ => {
                let encoder: Arc<dyn crate::adapt::QueryEncoder> = self.embeddings.clone();
                let a = Arc::new(Adapter::load(self.store.clone(), info, Some(encoder))?);
                adapters.insert(name.to_string(), a.clone());
                // A re-nest that a crash interrupted (or one due on arrival) runs now.
                a.after_write();
                a
            }
        };
        Ok(Collection {
            embeddings: self.embeddings.clone(),
            adapter,
        })
    }

    /// [`open`](Self::open) on the runtime's blocking pool, for an async caller.
    pub async fn open_async(&self, name: &str) -> Result<Collection> {
        let (this, name) = (self.clone(), name.to_string());
        blocking(move || this.open(&name)).await
    }

    /// Adds documents as callers send them (JSON objects, see [`Document::from_json`]) to
    /// collection `name`: opened, read, checked, embedded and stored in one call (the
    /// service's `POST /collections/{name}/documents`).
    ///
    /// Errors: `Store(NoSuchCollection)`; as [`Collection::add_documents`], and
    /// `documents[i]` for a document that is not an object.
    pub async fn add_documents(&self, name: &str, documents: &[Value]) -> Result<Added> {
        let collection = self.open_async(name).await?;
        collection.add_documents(read_documents(documents)?).await
    }

    /// Deletes documents of collection `name` by the callers' ids as sent (strings or
    /// numbers); durable when it returns.
    ///
    /// Errors: `InvalidField` (`ids`); `Store(NoSuchCollection)` and other store errors.
    pub async fn delete_documents(&self, name: &str, ids: &[Value]) -> Result<usize> {
        let ids = read_ids(ids)?;
        let (this, name) = (self.clone(), name.to_string());
        blocking(move || this.open(&name)?.delete_documents(&ids)).await
    }

    /// Searches collection `name` (see [`Collection::search`]).
    ///
    /// Errors: `Store(NoSuchCollection)`; as [`Collection::search`].
    pub async fn search(&self, name: &str, req: SearchRequest) -> Result<Vec<Hit>> {
        self.open_async(name).await?.search(req).await
    }

    /// Opens the collection, creating it first when it does not exist. What `req` leaves
    /// open (`None` dims, profile or distance, the default layout, no `adapt`) is taken from
    /// the existing collection, so a batch job or a library caller reopens it by name alone;
    /// then the spec is built as [`spec`](Self::spec) builds it. Returns the collection and
    /// whether this call created it.
    ///
    /// Errors: as [`spec`](Self::spec); `Store(Conflict)` when the request differs from the
    /// existing collection's spec (another model's vectors included).
    pub fn open_or_create(&self, name: &str, req: &CreateRequest) -> Result<(Collection, bool)> {
        check_name(name)?;
        let mut req = req.clone();
        if let Some(e) = self.existing(name)? {
            // Said plainly: the spec's JSON would hide it among the fields.
            if e.model != self.embeddings.model_name() {
                return Err(StoreError::Conflict {
                    name: name.to_string(),
                    existing: format!(
                        "it holds vectors of model {:?}, not {:?}",
                        e.model,
                        self.embeddings.model_name()
                    ),
                }
                .into());
            }
            let ours = self.embeddings.embedder().precision();
            if e.precision != ours {
                return Err(StoreError::Conflict {
                    name: name.to_string(),
                    existing: format!(
                        "its documents were embedded in {}, this model runs in {ours}",
                        e.precision
                    ),
                }
                .into());
            }
            req.dims = req.dims.or_else(|| Some(e.dims.clone()));
            req.profile = req.profile.or(Some(e.profile));
            req.distance = req.distance.or(Some(e.distance));
            if req.layout.is_default() {
                req.layout = e.layout;
            }
            if let Some(a) = e.adapt {
                req.adapt = true;
                req.adapt_threshold = req.adapt_threshold.or(Some(a.threshold));
            }
            // Unsaid prompts are the collection's (an empty literal stands for none, as in
            // collections made before prompts).
            if req.document_prompt_name.is_none() && req.document_prompt.is_none() {
                req.document_prompt = Some(e.prompts.document_prompt.unwrap_or_default());
            }
            if req.query_prompt_name.is_none() && req.query_prompt.is_none() {
                req.query_prompt = Some(e.prompts.query_prompt.unwrap_or_default());
            }
        }
        let (_, created) = self.create(name, &req)?;
        Ok((self.open(name)?, created))
    }

    /// The spec of collection `name`, if there is one.
    fn existing(&self, name: &str) -> Result<Option<CollectionSpec>> {
        match self.store.info(name) {
            Ok(info) => Ok(Some(info.spec)),
            Err(StoreError::NoSuchCollection(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens every adaptive collection, so that a re-nest a crash interrupted (or one due)
    /// runs now rather than at the collection's first request; servers call it at start.
    ///
    /// Errors: the store's, listing.
    pub fn resume_adapting(&self) -> Result<()> {
        for info in self.list()? {
            if info.spec.adapt.is_some() {
                if let Err(e) = self.open(&info.name) {
                    tracing::warn!("opening adaptive collection {:?}: {e}", info.name);
                }
            }
        }
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<CollectionInfo>> {
        Ok(self.store.list()?)
    }

    /// Deletes the collection. Its nesting closes first (a re-nest in flight stops), and
    /// no handle opens it meanwhile, so nothing of it writes into a collection recreated under
    /// the name.
    pub fn delete(&self, name: &str) -> Result<()> {
        let mut adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = adapters.remove(name) {
            a.close();
        }
        Ok(self.store.delete(name)?)
    }
}

/// The sizes of a collection under `adapt`: an adaptive one also stores the profile's full
/// `width` (it re-nests from it) and needs a size below it (one to adapt), and a threshold of
/// at least 1. `dims` ascending, each at most `width`; a generic collection's pass unchanged.
///
/// Errors: `InvalidField` naming `dims` (nothing below the full width) or `adapt_threshold`.
fn adaptive_dims(mut dims: Vec<usize>, width: usize, adapt: Option<Adapt>) -> Result<Vec<usize>> {
    let Some(a) = adapt else {
        return Ok(dims);
    };
    adapt_option(true, Some(a.threshold))?;
    if !dims.iter().any(|&d| d < width) {
        return Err(Error::field(
            "dims",
            format!("an adaptive collection needs a size below the full width {width} to adapt"),
        ));
    }
    if !dims.contains(&width) {
        dims.push(width);
    }
    Ok(dims)
}

/// The adapt option a create asks for: `adapt` with an optional threshold of at least 1.
///
/// Errors: `InvalidField` (`adapt_threshold`) for 0, or a threshold without `adapt`.
fn adapt_option(adapt: bool, threshold: Option<usize>) -> Result<Option<Adapt>> {
    match (adapt, threshold) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(Error::field(
            "adapt_threshold",
            "adapt_threshold needs \"adapt\": true",
        )),
        (true, Some(0)) => Err(Error::field(
            "adapt_threshold",
            "adapt_threshold must be at least 1 document",
        )),
        (true, t) => Ok(Some(Adapt {
            threshold: t.unwrap_or(DEFAULT_ADAPT_THRESHOLD),
        })),
    }
}
