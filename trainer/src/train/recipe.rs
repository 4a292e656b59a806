//! `mrl train --config FILE`'s recipe: where the pairs come from, the schedule, the budgets,
//! the loss, the head's start, the dev check; read from TOML and checked once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::{beir_pairs, jsonl_pairs, sts_pairs, Pair};
use crate::dev::EvalConfig;
use crate::elastic::LossConfig;
use crate::student::Kernels;
use crate::{Result, TrainerError};

/// Where training pairs come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// (query, judged document) pairs of a BEIR split.
    Beir { dir: PathBuf, split: String },
    /// STS-B pairs scored at least `min_score`.
    Sts { path: PathBuf, min_score: f64 },
    /// JSONL `{query, positive[, negative]}`.
    Jsonl { path: PathBuf },
}

fn one() -> usize {
    1
}

/// A training recipe (`configs/*.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The calibrated parent (an `mrl calibrate` folder: its ranking orders the layers).
    pub parent: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    pub steps: usize,
    pub batch: usize,
    /// Micro-batches of `batch` pairs whose gradients make one update (default 1).
    #[serde(default = "one")]
    pub accumulate: usize,
    pub max_tokens: usize,
    pub lr: f64,
    pub router_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub clip: f64,
    /// Budgets the router learns (fractions of the full FLOPs, below 1); the full model is
    /// always trained as well.
    pub budgets: Vec<f64>,
    pub uniform_steps: usize,
    /// Stage-2 sampling weights over [full, budgets...].
    pub skew: Vec<f64>,
    pub router_hidden: usize,
    pub checkpoint_every: usize,
    pub loss: LossConfig,
    pub sources: Vec<Source>,
    /// Dev NDCG@10 every N steps (none when absent).
    #[serde(default)]
    pub eval: Option<EvalConfig>,
    /// Unlabeled texts for alignment to the parent (`[loss] align_weight`), none when absent.
    #[serde(default)]
    pub unlabeled: Option<UnlabeledConfig>,
    /// How the Matryoshka head starts (`[head]`; identity when absent).
    #[serde(default)]
    pub head: HeadConfig,
    /// The student's kernels: `"fused"` (packed sequences, fused ops; the default) or
    /// `"primitive"` (padded batches of primitive ops, the first path, for comparison).
    #[serde(default)]
    pub kernels: Kernels,
}

/// `[head]`: the Matryoshka head's start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    #[serde(default)]
    pub init: HeadInit,
    /// Texts the parent embeds to fit the rotation (`init = "rotation"`): the unlabeled texts
    /// when the recipe has them, else the training pairs' documents; 2,048 when absent.
    #[serde(default)]
    pub fit_texts: Option<usize>,
}

/// The head's first weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// The identity on the parent's width (small random rows beyond); the head exists only
    /// when the nested dims go past the parent's width.
    #[default]
    Identity,
    /// The rotation onto the uncentred principal axes of the parent's embeddings of the fit
    /// texts (`rotation::Rotation`), zero rows beyond the parent's width: every prefix starts
    /// at the rotation baseline and the full width at the parent's cosines.
    Rotation,
}

/// `[unlabeled]`: plain texts (e.g. BEIR corpora) embedded by the parent and the student
/// alike, a batch per micro-step, cycled in a fixed order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlabeledConfig {
    /// JSONL files (BEIR corpus or queries, `{text}` objects or JSON strings), sampled evenly.
    pub paths: Vec<PathBuf>,
    pub limit: usize,
    pub batch: usize,
}

impl TrainConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = read_recipe(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainerError::Invalid(m));
        if self.steps == 0 || self.batch < 2 || self.max_tokens < 2 || self.accumulate == 0 {
            return bad(
                "steps > 0, batch ≥ 2, accumulate ≥ 1 and max_tokens ≥ 2 are needed".into(),
            );
        }
        if self.budgets.iter().any(|&b| !(b > 0.0 && b < 1.0)) {
            return bad(format!("budgets must lie in (0, 1): {:?}", self.budgets));
        }
        if self.skew.len() != self.budgets.len() + 1 {
            return bad("skew needs one weight for the full model and one per budget".into());
        }
        if self.loss.nested_dims.is_empty()
            || self.loss.nested_dims.len() != self.loss.dim_weights.len()
        {
            return bad("nested_dims and dim_weights must be non-empty and the same length".into());
        }
        if self
            .unlabeled
            .as_ref()
            .is_some_and(|u| u.batch < 2 || u.limit < u.batch)
        {
            return bad("[unlabeled] needs batch ≥ 2 and limit ≥ batch".into());
        }
        if self.sources.is_empty() {
            return bad("no training data: add [[sources]]".into());
        }
        Ok(())
    }

    pub(super) fn pairs(&self) -> Result<Vec<Pair>> {
        let mut pairs = Vec::new();
        for s in &self.sources {
            pairs.extend(match s {
                Source::Beir { dir, split } => beir_pairs(dir, split)?,
                Source::Sts { path, min_score } => sts_pairs(path, *min_score)?,
                Source::Jsonl { path } => jsonl_pairs(path)?,
            });
        }
        Ok(pairs)
    }
}

/// A recipe file parsed as TOML into `T` (unknown keys are `T`'s to refuse).
///
/// Errors: `Io` when unreadable, `Invalid` naming the file and the parse error.
pub(crate) fn read_recipe<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    toml::from_str(&text).map_err(|e| TrainerError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_parse_and_are_checked() {
        let text = r#"
            parent = "models/minilm-elastic"
            out = "runs/x"
            seed = 1
            steps = 10
            batch = 8
            max_tokens = 64
            lr = 2e-5
            router_lr = 1e-2
            warmup = 2
            weight_decay = 0.01
            clip = 1.0
            budgets = [0.5, 0.25]
            uniform_steps = 5
            skew = [0.5, 0.3, 0.2]
            router_hidden = 32
            checkpoint_every = 5
            [loss]
            nested_dims = [64, 128, 256, 384]
            dim_weights = [1.0, 1.0, 1.0, 1.0]
            temperature = 0.05
            distill_weight = 1.0
            distill_temperature = 0.05
            cost_weight = 1.0
            [[sources]]
            kind = "beir"
            dir = "../shared/data/scifact"
            split = "train"
            [[sources]]
            kind = "sts"
            path = "../shared/data/stsbenchmark/sts-train.csv"
            min_score = 4.0
        "#;
        let cfg: TrainConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.sources.len(), 2);
        let broken = TrainConfig {
            skew: vec![1.0],
            ..cfg.clone()
        };
        assert!(broken.validate().is_err());
        let broken = TrainConfig {
            budgets: vec![1.5, 0.2],
            ..cfg.clone()
        };
        assert!(broken.validate().is_err());
        assert!(toml::from_str::<TrainConfig>(&format!("{text}\nunknown = 1")).is_err());
        assert_eq!(cfg.head, HeadConfig::default());
        let rotated: TrainConfig = toml::from_str(&format!(
            "{text}\n[head]\ninit = \"rotation\"\nfit_texts = 500"
        ))
        .unwrap();
        assert_eq!(
            rotated.head,
            HeadConfig {
                init: HeadInit::Rotation,
                fit_texts: Some(500)
            }
        );
        assert!(toml::from_str::<TrainConfig>(&format!("{text}\n[head]\ninit = \"pca\"")).is_err());
    }
}
