//! Model configuration: HF `config.json` and the sentence-transformers settings beside it
//! (`sentence_bert_config.json`); what runs after the transformer is `pooling`'s. The mrl
//! manifest lives in `manifest`.

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
