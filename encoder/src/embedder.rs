//! The public face of the encoder: load a model folder once, resolve its profiles, and run
//! any of them on token ids. Texts become vectors through mrl-core's `Embeddings` (the dim
//! and truncation policies, the model thread), which calls [`Embedder::embed_tokens`].

use std::path::{Path, PathBuf};

use crate::config::{self, BertConfig, Prompts};
use crate::error::{EncoderError, Result};
use crate::manifest::Manifest;
use crate::model::{BertModel, Precision, Weights};
use crate::pooling::{Modules, Pooling};
use crate::profile::Profile;
use crate::tokenize::TextTokenizer;

/// Texts per forward pass unless the caller asks otherwise: sentence-transformers' default.
pub const DEFAULT_BATCH_SIZE: usize = 32;

/// A loaded model: tokenizer, weights and config. Cheap to share behind an `Arc`; every
/// profile runs off the same tensors.
pub struct Embedder {
    dir: PathBuf,
    config: BertConfig,
    tokenizer: TextTokenizer,
    model: BertModel,
    manifest: Option<Manifest>,
    modules: Modules,
    prompts: Prompts,
}

impl Embedder {
    /// Loads a sentence-transformers folder (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, optionally `sentence_bert_config.json`, `modules.json` and its
    /// pooling module), and the elastic manifest `mrl.json` when the folder has one.
    ///
    /// Errors: `UnsupportedModel` naming the file for what cannot be run as
    /// sentence-transformers would (a module other than Transformer, Pooling and Normalize,
    /// several pooling modes, an elastic checkpoint's heads under a pooling other than mean,
    /// which they were fitted on); `Io`/`Json` for missing or malformed files.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, Precision::F32)
    }

    /// [`load`](Self::load) with the dense layers at `precision` (int8 quantizes them once,
    /// here).
    pub fn load_with(dir: impl AsRef<Path>, precision: Precision) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config: BertConfig = config::read_json(&config_path)?;
        config.validate(&config_path)?;
        let modules = Modules::load(dir)?;
        let prompts = Prompts::load(dir)?;
        let max_len = config::max_seq_length(dir, &config)?;
        let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"), max_len)?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(EncoderError::io(
                &weights_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        let tensors = candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu)?;
        let mut model = BertModel::load(&Weights::new(tensors), &config, precision)?;
        let manifest = Manifest::load(
            dir,
            &config,
            model.output_width(&Profile::full(&config)),
            model.padded_width(),
        )?;
        let has_heads = model.has_head()
            || manifest
                .iter()
                .flat_map(|m| &m.profiles)
                .any(|p| p.head.is_some());
        if modules.pooling != Pooling::Mean && has_heads {
            return Err(EncoderError::UnsupportedModel {
                path: dir.join("modules.json"),
                reason: format!(
                    "pooling {} under an elastic checkpoint's heads, which were fitted on mean \
                     pooling",
                    modules.pooling.name()
                ),
            });
        }
        model.set_pooling(modules.pooling);
        for p in manifest.iter().flat_map(|m| &m.profiles) {
            if let Some(head) = &p.head {
                model.bind_profile_head(head, &p.profile)?;
            }
            if let Some(bridges) = &p.bridges {
                model.bind_profile_bridges(bridges, &p.profile)?;
            }
            if let Some(own) = &p.own_layers {
                model.bind_profile_layers(own, &p.profile)?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            model,
            manifest,
            modules,
            prompts,
        })
    }

    /// The folder's named prompts (`config_sentence_transformers.json`).
    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// What runs after the transformer (`modules.json`): the pooling mode, and whether
    /// sentence-transformers would normalise (callers that do not say follow it).
    pub fn modules(&self) -> Modules {
        self.modules
    }

    /// The elastic manifest, for checkpoints that have one.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    /// The model, for callers that feed token ids directly (calibration, benchmarks).
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The model, mutable: the trainer fits layer bridges on a loaded parent
    /// ([`BertModel::set_bridges`]).
    pub fn model_mut(&mut self) -> &mut BertModel {
        &mut self.model
    }

    /// The dense layers' arithmetic (see [`load_with`](Self::load_with)).
    pub fn precision(&self) -> Precision {
        self.model.precision()
    }

    /// Profile names this model knows: `full`, then the manifest's others.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names = vec!["full".to_string()];
        if let Some(m) = &self.manifest {
            let others = m.profiles.iter().filter(|p| p.name != "full");
            names.extend(others.map(|p| p.name.clone()));
        }
        names
    }

    /// Output sizes meant as prefixes: the manifest's, else the native width only.
    pub fn nested_dims(&self) -> Vec<usize> {
        match &self.manifest {
            Some(m) if !m.nested_dims.is_empty() => m.nested_dims.clone(),
            _ => vec![self.config.hidden_size],
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The width of the full model's output, the largest `dim` there is.
    pub fn max_dim(&self) -> usize {
        self.model.output_width(&Profile::full(&self.config))
    }

    /// Resolves a profile name (`full` or one of the manifest's) or a spec; `None` is the
    /// full encoder.
    pub fn profile(&self, spec: Option<&str>) -> Result<Profile> {
        let Some(s) = spec.map(str::trim) else {
            return Ok(Profile::full(&self.config));
        };
        if let Some(p) = self.manifest.as_ref().and_then(|m| m.profile(s)) {
            return Ok(p.profile.clone());
        }
        if s != "full" && !s.contains('=') {
            return Err(EncoderError::UnknownProfile {
                name: s.to_string(),
                known: self.profile_names(),
                max_layers: self.config.num_hidden_layers,
            });
        }
        Profile::parse(s, &self.config)
    }

    /// Checks that queries embedded by profile `query` may search documents embedded by
    /// profile `documents` (names or specs): the same sub-encoder always may; another only
    /// when the manifest declares it aligned (`aligned_with`). One rule for every caller.
    ///
    /// Errors: an unknown profile, or [`EncoderError::NotAligned`] naming both.
    pub fn check_aligned(&self, query: &str, documents: &str) -> Result<()> {
        if self.profile(Some(query))? == self.profile(Some(documents))? {
            return Ok(());
        }
        match &self.manifest {
            Some(m) => m.check_aligned(query, documents),
            None => Err(EncoderError::NotAligned {
                query: query.trim().to_string(),
                documents: documents.trim().to_string(),
                aligned: Vec::new(),
            }),
        }
    }

    /// Runs `profile` on already tokenized texts and returns the raw mean-pooled vectors
    /// (full width of the profile, unnormalised), in input order: every nested size is a
    /// prefix of these, so one pass serves them all.
    pub fn embed_tokens(
        &self,
        tokens: &[Vec<u32>],
        profile: &Profile,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.model.forward_all(tokens, profile, batch_size)
    }
}
