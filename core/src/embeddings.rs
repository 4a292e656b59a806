//! `Embeddings`: the one path from text to vectors that every caller takes — HTTP (native and
//! OpenAI), the CLI, the library, the indexing job and the retrieval benchmark.
//!
//! The pipeline, in stages a caller may also run apart (the indexing job pipelines them across
//! threads): options resolved against the model and the dim policy ([`Embeddings::resolve`]) →
//! tokenize with the truncation policy ([`Embeddings::tokenize`]) → forward pass, on the model
//! thread when there is one, else on the caller's thread ([`Embeddings::forward`],
//! [`Embeddings::forward_blocking`]) → prefix + renormalise ([`Resolved::cut`]).

use std::sync::Arc;

use mrl_encoder::{nested, Embedder, Profile, DEFAULT_BATCH_SIZE};

use crate::batcher::{Batcher, QueueLimits};
use crate::dims::DimPolicy;
use crate::error::{Error, Fields, Result};

/// How requests are judged: which sizes may be asked for, what happens to a text longer
/// than the model's token limit, and how many texts one call may bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub dims: DimPolicy,
    /// Cut long inputs at the model's limit (true) or refuse them with `InputTooLong`.
    pub truncate: bool,
    /// The most texts (inputs or documents) one call may embed; `None`: no limit.
    pub max_inputs: Option<usize>,
}

impl Policy {
    /// What the library and the CLI use unless told otherwise: any prefix, truncation, no
    /// limit on a call's texts.
    pub const LIBRARY: Self = Self {
        dims: DimPolicy::AnyPrefix,
        truncate: true,
        max_inputs: None,
    };
    /// What `mrl serve` uses unless told otherwise: nested dims only, truncation, 512 texts
    /// per request.
    pub const SERVER: Self = Self {
        dims: DimPolicy::Nested,
        truncate: true,
        max_inputs: Some(512),
    };

    /// Checks that `n` texts fit one call.
    ///
    /// Errors: `InvalidField` naming `field`, with the limit.
    pub fn check_count(&self, n: usize, field: &str) -> Result<()> {
        match self.max_inputs {
            Some(max) if n > max => Err(Error::field(
                field,
                format!("{field} has {n} texts; the limit is {max} per request"),
            )),
            _ => Ok(()),
        }
    }
}

/// What to embed with, as a caller asks: a profile name or spec (`None`: `full`), an output
/// size (`None`: the profile's width), and whether to L2-normalise the cut prefix (`None`:
/// as the model's `modules.json` says, i.e. when it ends in a Normalize module), and the
/// prompt put before each text: one of the model's by name, or a literal one (`None` for both:
/// the model's default prompt, if it has one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbedSpec {
    pub profile: Option<String>,
    pub dim: Option<usize>,
    pub normalize: Option<bool>,
    pub prompt_name: Option<String>,
    pub prompt: Option<String>,
}

impl EmbedSpec {
    /// Embeds with `profile` (a name or spec).
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }
    /// Cuts to the first `dim` values.
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = Some(dim);
        self
    }
    /// L2-normalises the cut prefix, or not, whatever the model's `modules.json` says.
    pub fn normalize(mut self, normalize: bool) -> Self {
        self.normalize = Some(normalize);
        self
    }
    /// Puts the model's prompt `name` before each text.
    pub fn prompt_name(mut self, name: impl Into<String>) -> Self {
        self.prompt_name = Some(name.into());
        self
    }
    /// Puts the literal `prompt` before each text.
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = Some(prompt.into());
        self
    }
}

/// An [`EmbedSpec`] checked against the model and the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub profile: Profile,
    /// The profile as the caller named it (`full` when unnamed).
    pub profile_name: String,
    pub dim: usize,
    pub normalize: bool,
    /// The text put before each input (`EmbedSpec`'s prompt, resolved).
    pub prompt: Option<String>,
}

impl Resolved {
    /// `texts` as the model reads them: each after the prompt, when there is one.
    pub fn prompted<S: AsRef<str>>(&self, texts: &[S]) -> Option<Vec<String>> {
        self.prompt
            .as_ref()
            .map(|p| texts.iter().map(|t| format!("{p}{}", t.as_ref())).collect())
    }

    /// The `dim` prefix of each raw pooled vector, normalised when asked.
    ///
    /// Errors: `Internal` when a vector is narrower than `dim` (the forward pass ran another
    /// profile: a bug).
    pub fn cut(&self, raw: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        raw.iter()
            .map(|v| nested::nest(v, self.dim, self.normalize))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// What a caller gets back: `raw` cut as resolved, with the profile, dim and `tokens`.
    fn answer(self, raw: &[Vec<f32>], tokens: usize) -> Result<Embedded> {
        Ok(Embedded {
            vectors: self.cut(raw)?,
            profile: self.profile_name,
            dim: self.dim,
            tokens,
        })
    }
}

/// Token ids of texts, with how many were cut at the model's limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<Vec<u32>>,
    /// Σ ids over the texts.
    pub count: usize,
    /// Texts cut at the model's limit.
    pub truncated: usize,
}

/// Vectors and what made them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One per text, in input order, each `dim` long.
    pub vectors: Vec<Vec<f32>>,
    pub profile: String,
    pub dim: usize,
    /// Token ids the texts took.
    pub tokens: usize,
}

/// A loaded model behind one policy, with or without a model thread. Cheap to share behind an
/// `Arc`.
pub struct Embeddings {
    embedder: Arc<Embedder>,
    batcher: Option<Batcher>,
    policy: Policy,
    /// Texts per forward pass when passes run on the caller's thread.
    batch_size: usize,
}

impl Embeddings {
    /// Forward passes on the caller's thread (the library, the CLI, batch jobs).
    pub fn inline(embedder: Arc<Embedder>, policy: Policy) -> Self {
        Self {
            embedder,
            batcher: None,
            policy,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// Forward passes on one model thread that batches concurrent requests by token budget
    /// (`max_batch_tokens`) and refuses work beyond `limits` (see `batcher`).
    ///
    /// Errors: the thread could not be spawned.
    pub fn with_model_thread(
        embedder: Arc<Embedder>,
        policy: Policy,
        max_batch_tokens: usize,
        limits: QueueLimits,
    ) -> std::io::Result<Self> {
        let batcher = Batcher::spawn(embedder.clone(), max_batch_tokens, limits)?;
        Ok(Self {
            batcher: Some(batcher),
            ..Self::inline(embedder, policy)
        })
    }

    /// Texts per forward pass on the caller's thread (default: sentence-transformers' 32).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The model's name in responses and collection specs: its folder's name.
    pub fn model_name(&self) -> String {
        model_name(&self.embedder)
    }

    /// Resolves a profile name (`full` or the manifest's) or spec; `None` is `full`.
    ///
    /// Errors: `InvalidField` naming `field` for an unknown or invalid profile.
    pub fn profile(&self, spec: Option<&str>, field: &str) -> Result<Profile> {
        self.embedder
            .profile(spec)
            .map_err(|e| Error::from_encoder(e, "dim", field))
    }

    /// The policy's rule for `dim` under `profile` (see [`DimPolicy::check`]).
    pub fn check_dim(&self, dim: usize, profile: &Profile, field: &str) -> Result<()> {
        self.policy.dims.check(&self.embedder, profile, dim, field)
    }

    /// Checks that queries of profile `query` may search documents of profile `documents`
    /// (the encoder's one alignment rule), naming `field` when not.
    pub fn check_aligned(&self, query: &str, documents: &str, field: &str) -> Result<()> {
        self.embedder
            .check_aligned(query, documents)
            .map_err(|e| Error::from_encoder(e, "dim", field))
    }

    /// Checks a caller's options before any work, so a bad request costs nothing.
    ///
    /// Errors: `InvalidField` naming the caller's profile or dim field.
    pub fn resolve(&self, spec: &EmbedSpec, fields: &Fields) -> Result<Resolved> {
        let profile = self.profile(spec.profile.as_deref(), fields.profile)?;
        let dim = spec
            .dim
            .unwrap_or_else(|| self.embedder.model().output_width(&profile));
        self.check_dim(dim, &profile, fields.dim)?;
        Ok(Resolved {
            profile,
            profile_name: spec.profile.clone().unwrap_or_else(|| "full".into()),
            dim,
            normalize: spec
                .normalize
                .unwrap_or_else(|| self.embedder.modules().normalize),
            prompt: self.prompt(spec.prompt_name.as_deref(), spec.prompt.as_deref())?,
        })
    }

    /// The text a caller's prompt choice puts before each input: a literal `prompt`, else the
    /// model's prompt `name`d, else its default prompt, else none.
    ///
    /// Errors: `InvalidField` naming `prompt_name` for a name the model does not have (with
    /// the ones it has), or `prompt` when both are given.
    pub fn prompt(&self, name: Option<&str>, prompt: Option<&str>) -> Result<Option<String>> {
        self.prompt_at(name, prompt, "")
    }

    /// [`prompt`](Self::prompt) for fields named `{prefix}prompt_name` and `{prefix}prompt`
    /// (a collection's `document_` and `query_` prompts), the same rules; with neither given,
    /// `None` here means "the caller's default", which the caller decides.
    pub fn prompt_at(
        &self,
        name: Option<&str>,
        prompt: Option<&str>,
        prefix: &str,
    ) -> Result<Option<String>> {
        self.embedder
            .prompts()
            .choose(name, prompt)
            .map(|p| p.map(str::to_string))
            .map_err(|known| match known {
                None => Error::field(
                    &format!("{prefix}prompt"),
                    format!("give {prefix}prompt or {prefix}prompt_name, not both"),
                ),
                Some(known) => Error::field(
                    &format!("{prefix}prompt_name"),
                    format!(
                        "unknown prompt name {:?}; this model's prompts: {}",
                        name.unwrap_or_default(),
                        match known.is_empty() {
                            true => "none".to_string(),
                            false => known.join(", "),
                        }
                    ),
                ),
            })
    }

    /// Tokenizes `texts` at the model's limit, under the truncation policy.
    ///
    /// Errors: `InputTooLong` naming `field[i]` for the first text over the limit when the
    /// policy refuses; `Internal` when the tokenizer fails.
    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S], field: &str) -> Result<Tokens> {
        let encoded = self
            .embedder
            .tokenizer()
            .encode_checked(texts)
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !self.policy.truncate {
            if let Some(i) = encoded.iter().position(|(_, cut)| *cut) {
                return Err(Error::InputTooLong {
                    field: format!("{field}[{i}]"),
                    message: format!(
                        "{field}[{i}] is longer than the model's {} tokens (inputs are refused \
                         instead of truncated)",
                        self.embedder.tokenizer().max_len()
                    ),
                });
            }
        }
        let truncated = encoded.iter().filter(|(_, cut)| *cut).count();
        let ids: Vec<Vec<u32>> = encoded.into_iter().map(|(ids, _)| ids).collect();
        let count = ids.iter().map(Vec::len).sum();
        Ok(Tokens {
            ids,
            count,
            truncated,
        })
    }

    /// Raw pooled vectors (the profile's full width, unnormalised) for token ids, awaiting the
    /// model thread (or running inline when there is none; then it blocks the caller).
    ///
    /// Errors: `QueueFull` when the model thread's queue is full; `Internal` when the
    /// forward pass fails.
    pub async fn forward(&self, profile: Profile, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        match &self.batcher {
            Some(b) => b.embed(profile, ids).await,
            None => self.forward_inline(&profile, &ids),
        }
    }

    /// [`forward`](Self::forward) for a caller on a plain thread.
    pub fn forward_blocking(&self, profile: &Profile, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
        match &self.batcher {
            Some(b) => b.embed_blocking(profile.clone(), ids),
            None => self.forward_inline(profile, &ids),
        }
    }

    fn forward_inline(&self, profile: &Profile, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.embedder
            .embed_tokens(ids, profile, self.batch_size)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Tokenize (on the runtime's blocking pool, not the async executor) and forward: raw
    /// pooled vectors of `texts` and the tokens they took. Must run inside a tokio runtime.
    pub async fn raw(
        self: &Arc<Self>,
        texts: Vec<String>,
        profile: Profile,
        field: &str,
    ) -> Result<(Vec<Vec<f32>>, Tokens)> {
        let this = self.clone();
        let field_owned = field.to_string();
        let mut tokens = tokio::task::spawn_blocking(move || this.tokenize(&texts, &field_owned))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let ids = std::mem::take(&mut tokens.ids);
        let vectors = self.forward(profile, ids).await?;
        Ok((vectors, tokens))
    }

    /// [`raw`](Self::raw) on the caller's thread.
    pub fn raw_blocking<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        profile: &Profile,
        field: &str,
    ) -> Result<(Vec<Vec<f32>>, Tokens)> {
        let mut tokens = self.tokenize(texts, field)?;
        let ids = std::mem::take(&mut tokens.ids);
        let vectors = self.forward_blocking(profile, ids)?;
        Ok((vectors, tokens))
    }

    /// The whole path for an async caller: resolve, tokenize, forward, cut.
    pub async fn embed(
        self: &Arc<Self>,
        texts: Vec<String>,
        spec: &EmbedSpec,
        fields: &Fields,
    ) -> Result<Embedded> {
        self.policy.check_count(texts.len(), fields.texts)?;
        let resolved = self.resolve(spec, fields)?;
        let texts = resolved.prompted(&texts).unwrap_or(texts);
        let (raw, tokens) = self
            .raw(texts, resolved.profile.clone(), fields.texts)
            .await?;
        resolved.answer(&raw, tokens.count)
    }

    /// The whole path on the caller's thread.
    pub fn embed_blocking<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        spec: &EmbedSpec,
        fields: &Fields,
    ) -> Result<Embedded> {
        self.policy.check_count(texts.len(), fields.texts)?;
        let resolved = self.resolve(spec, fields)?;
        let (raw, tokens) = match resolved.prompted(texts) {
            Some(prompted) => self.raw_blocking(&prompted, &resolved.profile, fields.texts)?,
            None => self.raw_blocking(texts, &resolved.profile, fields.texts)?,
        };
        resolved.answer(&raw, tokens.count)
    }
}

/// Re-nests embed sampled documents by the checkpoint's other profiles through the same path
/// as every caller (the model thread when there is one), a few texts per call so searches
/// interleave, waiting out a full queue instead of failing the fit.
impl crate::adapt::QueryEncoder for Embeddings {
    fn query_profiles(&self, documents: &str) -> Vec<String> {
        self.embedder
            .profile_names()
            .into_iter()
            .filter(|p| p != documents)
            .collect()
    }

    fn encode(&self, texts: &[String], profile: &str) -> Result<Vec<Vec<f32>>> {
        // Big enough to batch well inline, small enough that a search's query waits behind at
        // most one such batch on the model thread.
        const CHUNK: usize = 64;
        let profile = self.profile(Some(profile), "profile")?;
        let mut out = Vec::with_capacity(texts.len());
        let mut waited = 0;
        for chunk in texts.chunks(CHUNK) {
            loop {
                match self.raw_blocking(chunk, &profile, "documents") {
                    Ok((v, _)) => {
                        out.extend(v);
                        break;
                    }
                    // A full queue is the service's requests: the fit waits for them, a minute
                    // at most, then gives the map up for this fit.
                    Err(Error::QueueFull { .. }) if waited < 1200 => {
                        waited += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }
}

/// A model's name in responses and collection specs: its folder's name.
pub fn model_name(embedder: &Embedder) -> String {
    embedder
        .dir()
        .file_name()
        .map_or_else(|| "mrl".into(), |n| n.to_string_lossy().into_owned())
}
