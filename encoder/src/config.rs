//! Model configuration: HF `config.json`, the sentence-transformers settings beside it, and
//! the mrl manifest (`mrl.json`) that an elastic checkpoint adds.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EncoderError, Result};

/// The fields of a HF BERT `config.json` this encoder uses.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Rejects what the encoder cannot run, so a bad checkpoint fails at load, not mid-request.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| EncoderError::UnsupportedModel {
            path: path.to_path_buf(),
            reason,
        };
        if self.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} (only exact \"gelu\" is implemented)",
                self.hidden_act
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {:?}",
                self.position_embedding_type
            )));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        Ok(())
    }
}

/// `sentence_bert_config.json`: the sequence limit sentence-transformers applies.
#[derive(Debug, Clone, Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

/// `1_Pooling/config.json`: only mean pooling is supported.
#[derive(Debug, Clone, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EncoderError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| EncoderError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The sequence limit for a sentence-transformers folder: `max_seq_length` when given, capped
/// by the position table (the tokenizer's own truncation setting is deliberately ignored: this
/// model ships 128 there, while sentence-transformers uses 256).
pub fn max_seq_length(dir: &Path, cfg: &BertConfig) -> Result<usize> {
    let st = dir.join("sentence_bert_config.json");
    let limit = if st.exists() {
        read_json::<StConfig>(&st)?.max_seq_length
    } else {
        None
    };
    Ok(limit
        .unwrap_or(cfg.max_position_embeddings)
        .min(cfg.max_position_embeddings))
}

/// Fails on pooling modes other than mean, which would silently give different vectors.
pub fn check_pooling(dir: &Path) -> Result<()> {
    let path = dir.join("1_Pooling").join("config.json");
    if !path.exists() {
        return Ok(());
    }
    let p: PoolingConfig = read_json(&path)?;
    if !p.pooling_mode_mean_tokens || p.pooling_mode_cls_token || p.pooling_mode_max_tokens {
        return Err(EncoderError::UnsupportedModel {
            path,
            reason: "only mean pooling is supported".into(),
        });
    }
    Ok(())
}

/// The file an elastic checkpoint adds beside `config.json`.
pub const MANIFEST_FILE: &str = "mrl.json";

/// `mrl.json`: what makes a folder an elastic checkpoint. The weights beside it are permuted
/// by importance, so every profile listed here is a prefix slice of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bumped when a field changes meaning.
    pub format: u32,
    /// What the weights were derived from (name and where it came from).
    pub base_model: String,
    /// Output sizes that are meant to be used as prefixes, ascending.
    pub nested_dims: Vec<usize>,
    /// Named sub-encoders, the first being the full model.
    pub profiles: Vec<NamedProfile>,
    /// Compute budget → profile name: the table a router (or the zero-shot search) chose.
    #[serde(default)]
    pub budgets: Vec<BudgetChoice>,
    /// How the permutation was chosen; absent on checkpoints that were not ranked.
    #[serde(default)]
    pub ranking: Option<Ranking>,
    /// How the checkpoint was made: tool, method, data, settings.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// A profile with its name and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedProfile {
    pub name: String,
    #[serde(flatten)]
    pub profile: crate::profile::Profile,
    pub params: usize,
    /// FLOPs relative to the full encoder at [`COST_SEQ_LEN`] tokens.
    pub relative_flops: f64,
    /// Similarity fidelity to the full model on the calibration texts (mean per-text Pearson
    /// correlation of cosine similarities), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<f64>,
    /// The profile's own Matryoshka head, `heads.{head}.weight` / `.bias` in the weights
    /// (`outputs × hidden`); absent: the shared `head` (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Document profiles this profile's query vectors may be searched against (besides its
    /// own): the checkpoint was fitted or measured for that asymmetric use. Searching another
    /// profile's documents is refused ([`Manifest::check_aligned`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aligned_with: Vec<String>,
}

/// Sequence length at which relative FLOPs are quoted: a typical passage.
pub const COST_SEQ_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetChoice {
    /// Fraction of the full encoder's FLOPs.
    pub budget: f64,
    pub profile: String,
}

/// The importance order behind the permutation, in original indices: entry `i` of each list
/// is the original index now at position `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// Hidden (residual) channels. The output embedding is in this order, so original
    /// output channel `hidden_order[i]` is now channel `i`.
    pub hidden_order: Vec<usize>,
    /// Per layer, attention heads.
    pub heads: Vec<Vec<usize>>,
    /// Per layer, FFN neurons.
    pub ffn: Vec<Vec<usize>>,
    /// Layers in the order they were dropped (least important first), and the normalised
    /// MSE each one's removal cost when it was dropped.
    pub layer_drop_order: Vec<usize>,
    pub layer_drop_scores: Vec<f64>,
}

impl Manifest {
    /// Reads `dir/mrl.json` when there is one and checks its profiles against `cfg` and its
    /// nested dims against the model's output width (wider than `cfg`'s hidden size when the
    /// checkpoint has a Matryoshka head).
    pub fn load(dir: &Path, cfg: &BertConfig, output_width: usize) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let m: Self = read_json(&path)?;
        let bad = |reason: String| EncoderError::UnsupportedModel {
            path: path.clone(),
            reason,
        };
        if m.format != 1 {
            return Err(bad(format!(
                "manifest format {} (this build reads 1)",
                m.format
            )));
        }
        for p in &m.profiles {
            p.profile.validate(cfg, &p.name)?;
            if p.name.contains('=') {
                return Err(bad(format!("profile name {:?} contains '='", p.name)));
            }
        }
        if let Some(&d) = m.nested_dims.iter().find(|&&d| d == 0 || d > output_width) {
            return Err(bad(format!("nested dim {d} is outside 1..={output_width}")));
        }
        Ok(Some(m))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| EncoderError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| EncoderError::io(&path, e))
    }

    pub fn profile(&self, name: &str) -> Option<&NamedProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Whether queries embedded by profile `query` may search documents embedded by
    /// `documents` (names or specs as callers wrote them): the same profile always; another
    /// one only when `query`'s entry lists it in `aligned_with`.
    ///
    /// Errors: [`EncoderError::NotAligned`] naming both.
    pub fn check_aligned(&self, query: &str, documents: &str) -> Result<()> {
        let (q, d) = (query.trim(), documents.trim());
        let declared = self
            .profile(q)
            .is_some_and(|p| p.aligned_with.iter().any(|a| a == d));
        if q == d || declared {
            return Ok(());
        }
        Err(EncoderError::NotAligned {
            query: q.to_string(),
            documents: d.to_string(),
            aligned: self
                .profile(q)
                .map(|p| p.aligned_with.clone())
                .unwrap_or_default(),
        })
    }
}
