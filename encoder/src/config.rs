//! Model configuration: HF `config.json` and the sentence-transformers settings beside it
//! (`sentence_bert_config.json`, `1_Pooling/`). The mrl manifest lives in `manifest`.

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
