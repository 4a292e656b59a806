//! Profiles: which sub-encoder of the parent runs (layers kept, attention heads, FFN neurons,
//! hidden channels), how a profile is named and parsed, and what it costs.
//!
//! Widths are prefixes: a checkpoint whose weights are permuted by importance keeps its best
//! heads, neurons and channels first, so a sub-encoder is a contiguous slice of every tensor.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::BertConfig;
use crate::error::{EncoderError, Result};

/// One sub-encoder of the parent: the layers it keeps (in order) and its widths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Profile {
    pub layers: Vec<usize>,
    pub heads: usize,
    pub ffn: usize,
    pub hidden: usize,
}

impl Profile {
    /// The whole parent encoder.
    pub fn full(cfg: &BertConfig) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers).collect(),
            heads: cfg.num_attention_heads,
            ffn: cfg.intermediate_size,
            hidden: cfg.hidden_size,
        }
    }

    /// The first `k` layers at full width.
    pub fn first_layers(cfg: &BertConfig, k: usize) -> Result<Self> {
        let p = Self {
            layers: (0..k).collect(),
            ..Self::full(cfg)
        };
        p.validate(cfg, &format!("layers={k}"))?;
        Ok(p)
    }

    pub fn is_full(&self, cfg: &BertConfig) -> bool {
        *self == Self::full(cfg)
    }

    /// Parses `full` or a spec of comma-separated `key=value` pairs, each optional:
    /// `layers=3` (the first 3) or `layers=0+2+5` (those layers), `heads=8`, `ffn=768`,
    /// `hidden=256`. Omitted keys keep the parent's value.
    pub fn parse(spec: &str, cfg: &BertConfig) -> Result<Self> {
        let spec = spec.trim();
        if spec == "full" {
            return Ok(Self::full(cfg));
        }
        if !spec.contains('=') {
            return Err(EncoderError::UnknownProfile {
                name: spec.to_string(),
                known: vec!["full".to_string()],
                max_layers: cfg.num_hidden_layers,
            });
        }
        let invalid = |reason: String| EncoderError::InvalidProfile {
            spec: spec.to_string(),
            reason,
        };
        let number = |key: &str, v: &str| -> Result<usize> {
            v.trim()
                .parse::<usize>()
                .map_err(|_| invalid(format!("{key} must be a whole number, got {v:?}")))
        };
        let mut p = Self::full(cfg);
        for part in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("expected key=value, got {part:?}")))?;
            match key.trim() {
                "layers" if value.contains('+') => {
                    p.layers = value
                        .split('+')
                        .map(|v| number("layers", v))
                        .collect::<Result<_>>()?;
                }
                "layers" => p.layers = (0..number("layers", value)?).collect(),
                "heads" => p.heads = number("heads", value)?,
                "ffn" => p.ffn = number("ffn", value)?,
                "hidden" => p.hidden = number("hidden", value)?,
                other => {
                    return Err(invalid(format!(
                        "unknown key {other:?} (known: layers, heads, ffn, hidden)"
                    )))
                }
            }
        }
        p.validate(cfg, spec)?;
        Ok(p)
    }

    /// Checks every width against the parent; `spec` names the profile in the error.
    pub fn validate(&self, cfg: &BertConfig, spec: &str) -> Result<()> {
        let invalid = |reason: String| EncoderError::InvalidProfile {
            spec: spec.to_string(),
            reason,
        };
        let n = cfg.num_hidden_layers;
        if self.layers.is_empty() || self.layers.len() > n {
            return Err(invalid(format!(
                "layers must keep 1..={n} layers, got {}",
                self.layers.len()
            )));
        }
        if let Some(&bad) = self.layers.iter().find(|&&l| l >= n) {
            return Err(invalid(format!("layer {bad} is out of range 0..{n}")));
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "layers must be strictly increasing, without repeats".into(),
            ));
        }
        let check = |what: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(invalid(format!("{what} {v} is out of range 1..={max}")))
            } else {
                Ok(())
            }
        };
        check("heads", self.heads, cfg.num_attention_heads)?;
        check("ffn", self.ffn, cfg.intermediate_size)?;
        check("hidden", self.hidden, cfg.hidden_size)?;
        Ok(())
    }

    /// Parameters the profile touches (embedding tables counted at the sliced width).
    pub fn params(&self, cfg: &BertConfig) -> usize {
        let h = self.hidden;
        let a = self.heads * cfg.head_dim();
        let embeddings =
            (cfg.vocab_size + cfg.max_position_embeddings + cfg.token_types()) * h + 2 * h;
        let attention = 3 * (h * a + a) + a * h + h + 2 * h;
        let ffn = h * self.ffn + self.ffn + self.ffn * h + h + 2 * h;
        embeddings + self.layers.len() * (attention + ffn)
    }

    /// Multiply-add FLOPs of the encoder layers for one sequence of `seq` tokens.
    pub fn flops(&self, cfg: &BertConfig, seq: usize) -> usize {
        let h = self.hidden;
        let a = self.heads * cfg.head_dim();
        let per_token = 2 * (4 * h * a + 2 * h * self.ffn);
        let attention_scores = 2 * 2 * seq * seq * a;
        self.layers.len() * (seq * per_token + attention_scores)
    }

    /// This profile's FLOPs relative to the parent's at the same sequence length.
    pub fn relative_cost(&self, cfg: &BertConfig, seq: usize) -> f64 {
        self.flops(cfg, seq) as f64 / Self::full(cfg).flops(cfg, seq) as f64
    }
}

impl fmt::Display for Profile {
    /// Writes a spec that [`Profile::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<String> = self.layers.iter().map(|l| l.to_string()).collect();
        write!(
            f,
            "layers={},heads={},ffn={},hidden={}",
            layers.join("+"),
            self.heads,
            self.ffn,
            self.hidden
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BertConfig {
        BertConfig {
            vocab_size: 100,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
            model_type: None,
            pad_token_id: None,
            relative_attention_num_buckets: None,
        }
    }

    #[test]
    fn parses_full_and_specs() {
        let c = cfg();
        assert_eq!(Profile::parse("full", &c).unwrap(), Profile::full(&c));
        let p = Profile::parse("layers=3", &c).unwrap();
        assert_eq!(p.layers, vec![0, 1, 2]);
        assert_eq!(p.heads, 12);
        let p = Profile::parse("layers=0+2+5,heads=8,ffn=768,hidden=256", &c).unwrap();
        assert_eq!(p.layers, vec![0, 2, 5]);
        assert_eq!((p.heads, p.ffn, p.hidden), (8, 768, 256));
        assert_eq!(Profile::parse(&p.to_string(), &c).unwrap(), p);
    }

    #[test]
    fn rejects_bad_profiles_with_the_value() {
        let c = cfg();
        let e = Profile::parse("tiny", &c).unwrap_err().to_string();
        assert!(e.contains("\"tiny\"") && e.contains("full"), "{e}");
        for (spec, needle) in [
            ("layers=0", "1..=6"),
            ("layers=7", "1..=6"),
            ("layers=2+1", "increasing"),
            ("layers=0+9", "layer 9"),
            ("heads=13", "1..=12"),
            ("ffn=0", "1..=1536"),
            ("hidden=999", "1..=384"),
            ("depth=2", "unknown key"),
            ("heads=x", "whole number"),
        ] {
            let e = Profile::parse(spec, &c).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn cost_shrinks_with_the_profile() {
        let c = cfg();
        let full = Profile::full(&c);
        assert!((full.relative_cost(&c, 128) - 1.0).abs() < 1e-12);
        let half = Profile::first_layers(&c, 3).unwrap();
        assert!((half.relative_cost(&c, 128) - 0.5).abs() < 1e-12);
        assert!(half.params(&c) < full.params(&c));
    }
}
