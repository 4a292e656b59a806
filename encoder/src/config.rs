//! Model configuration: HF `config.json` and the sentence-transformers settings beside it
//! (`sentence_bert_config.json`); what runs after the transformer is `pooling`'s. The mrl
//! manifest lives in `manifest`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EncoderError, Result};

/// The encoder families this crate runs, by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT (`bert`, or no `model_type`): absolute positions from 0, token-type embeddings.
    Bert,
    /// MPNet (`mpnet`): absolute positions from `pad_token_id + 1` as RoBERTa counts them,
    /// no token types, and a relative position bias added to every layer's attention scores
    /// (Song et al., "MPNet", 2020; HF `modeling_mpnet.py`).
    MPNet,
}

/// The fields of a HF `config.json` this encoder uses: BERT's, and MPNet's, which adds the
/// relative position buckets and the padding id its positions count from.
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
    /// MPNet: positions count from `pad_token_id + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<usize>,
    /// MPNet: buckets of the relative position bias (32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_attention_num_buckets: Option<usize>,
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

    /// The family `model_type` names; `None` for one this crate cannot run.
    pub fn architecture(&self) -> Option<Architecture> {
        match self.model_type.as_deref() {
            None | Some("bert") => Some(Architecture::Bert),
            Some("mpnet") => Some(Architecture::MPNet),
            Some(_) => None,
        }
    }

    /// The row of the position table a sequence's first token reads: 0 for BERT,
    /// `pad_token_id + 1` for MPNet (HF `create_position_ids_from_input_ids`).
    pub fn position_offset(&self) -> usize {
        match self.architecture() {
            Some(Architecture::MPNet) => self.pad_token_id.unwrap_or(1) + 1,
            _ => 0,
        }
    }

    /// The longest sequence the position table holds, in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Rows of the token-type table: MPNet has none.
    pub fn token_types(&self) -> usize {
        match self.architecture() {
            Some(Architecture::MPNet) => 0,
            _ => self.type_vocab_size,
        }
    }

    /// Rejects what the encoder cannot run, so a bad checkpoint fails at load, not mid-request.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| EncoderError::UnsupportedModel {
            path: path.to_path_buf(),
            reason,
        };
        if self.architecture().is_none() {
            return Err(bad(format!(
                "model_type {:?} (bert and mpnet load)",
                self.model_type.as_deref().unwrap_or_default()
            )));
        }
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

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EncoderError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| EncoderError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The sequence limit for a sentence-transformers folder: `max_seq_length` when given, capped
/// by the position table ([`BertConfig::max_tokens`]) (the tokenizer's own truncation setting is deliberately ignored: this
/// model ships 128 there, while sentence-transformers uses 256).
pub fn max_seq_length(dir: &Path, cfg: &BertConfig) -> Result<usize> {
    let st = dir.join("sentence_bert_config.json");
    let limit = if st.exists() {
        read_json::<StConfig>(&st)?.max_seq_length
    } else {
        None
    };
    Ok(limit.unwrap_or(cfg.max_tokens()).min(cfg.max_tokens()))
}

/// What a collection's texts are, for the prompt they get ([`Prompts::for_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptRole {
    Query,
    Document,
}

/// `config_sentence_transformers.json`'s prompts: text put before an input, by name
/// (`{"query": "query: ", "document": "passage: "}` for the e5 family), and the one used when
/// a caller names none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Prompts {
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

impl Prompts {
    /// The folder's prompts (none without the file).
    ///
    /// Errors: `Json`/`Io` for an unreadable file; `UnsupportedModel` when
    /// `default_prompt_name` names no prompt.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config_sentence_transformers.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let p: Self = read_json(&path)?;
        if let Some(name) = &p.default_prompt_name {
            if !p.prompts.contains_key(name) {
                return Err(EncoderError::UnsupportedModel {
                    path,
                    reason: format!("default_prompt_name {name:?} names none of its prompts"),
                });
            }
        }
        Ok(p)
    }

    /// The prompt a role's texts get when the caller names none, as sentence-transformers'
    /// `encode_query` / `encode_document` pick it: `query` for queries; the first of
    /// `document`, `passage`, `corpus` for documents; else the default prompt, else none.
    pub fn for_role(&self, role: PromptRole) -> Option<&str> {
        let names: &[&str] = match role {
            PromptRole::Query => &["query"],
            PromptRole::Document => &["document", "passage", "corpus"],
        };
        names
            .iter()
            .find_map(|n| self.prompts.get(*n))
            .map(String::as_str)
            .or_else(|| self.choose(None, None).ok().flatten())
    }

    /// The prompt a caller's choice comes to: the literal `prompt`, else the one `name`d, else
    /// the default one, else none (sentence-transformers' `encode(prompt=, prompt_name=)`).
    ///
    /// Errors: `Err(None)` when both are given, `Err(Some(known))` for an unknown name, with
    /// the names there are (callers word the error for their field).
    pub fn choose<'a>(
        &'a self,
        name: Option<&str>,
        prompt: Option<&'a str>,
    ) -> std::result::Result<Option<&'a str>, Option<Vec<String>>> {
        match (name, prompt) {
            (Some(_), Some(_)) => Err(None),
            (None, Some(p)) => Ok(Some(p)),
            (Some(n), None) => match self.prompts.get(n) {
                Some(p) => Ok(Some(p.as_str())),
                None => Err(Some(self.prompts.keys().cloned().collect())),
            },
            (None, None) => Ok(self
                .default_prompt_name
                .as_ref()
                .and_then(|n| self.prompts.get(n))
                .map(String::as_str)),
        }
    }
}
