//! The heads recipe as written in its TOML file, checked, and what a fit of it reports.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

/// A BEIR split the recipe reads: `train` splits give pairs (minus held-out queries), `dev`
/// splits only judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeirSplit {
    pub dir: PathBuf,
    pub split: String,
    /// Share of batches drawn from this source (training sources only; default 1).
    #[serde(default = "unit")]
    pub weight: f64,
}

fn unit() -> f64 {
    1.0
}

/// `[head]`: how the shared head trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadTraining {
    /// AdamW steps on the cached vectors (0: the rotation alone).
    pub steps: usize,
    /// Pairs per step (in-batch negatives).
    pub batch: usize,
    /// The head's peak learning rate (warmup, then cosine to 0).
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// InfoNCE temperature on cosines.
    pub temperature: f64,
    /// A check on the held-out sets every this many steps (and at 0 and the end).
    pub eval_every: usize,
    /// Weight of the anchor to the parent. For the shared head: KL divergence of the in-batch
    /// similarity distributions at the parent's width and at the widest size from the
    /// parent's own (`loss::similarity_distillation`, over the batch's queries and documents
    /// together), which keeps the wide sizes near the parent's geometry while InfoNCE moves
    /// them. For a sub-encoder's head: distillation, `1 − cos` of each text's vector to the
    /// full profile's at every nested dim. Default 0.
    #[serde(default)]
    pub anchor_weight: f64,
    /// Scale of the uniform random start of the rows past the parent's width (zero rows get
    /// no gradient); default 1e-3, small enough to leave the widest size at the parent's.
    #[serde(default = "small")]
    pub extra_init: f64,
    /// What the starting rotation is fitted on (default: the training corpora's documents).
    #[serde(default)]
    pub rotation: RotationFit,
}

/// What the shared head's starting rotation is fitted on (`rotation::Rotation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationFit {
    /// The uncentred principal axes of the training corpora's documents (no labels).
    #[default]
    Documents,
    /// The axes of the training pairs' cross-products (`Rotation::fit_pairs`; labels).
    Qrels,
}

fn small() -> f64 {
    1e-3
}

/// The recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyConfig {
    /// Always `"heads"`: tells this recipe from the elastic backbone recipe.
    pub recipe: String,
    /// The calibrated parent (an `mrl calibrate` folder with its profiles).
    pub parent: PathBuf,
    /// The run folder: `metrics.jsonl`, `model/` (the checkpoint).
    pub out: PathBuf,
    /// Where the parent's embeddings are cached (default `OUT/cache`); recipes over the same
    /// parent can share one (entries are keyed by weights, profile and texts).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    pub seed: u64,
    /// The parent's sub-encoders to carry into the family, by name (`full` always is).
    pub profiles: Vec<String>,
    pub nested_dims: Vec<usize>,
    /// One InfoNCE weight per nested dim.
    pub dim_weights: Vec<f64>,
    /// Every `holdout`-th judged query of each training source (by a seeded hash of its id)
    /// is kept out of training and judges the checks instead.
    pub holdout: usize,
    /// Ridge strength of the sub-encoders' map onto the full profile, relative to the mean
    /// diagonal of their Gram matrix.
    pub ridge: f64,
    pub head: HeadTraining,
    /// Training splits (a SciFact test split is refused).
    pub sources: Vec<BeirSplit>,
    /// Judge-only splits (dev).
    #[serde(default)]
    pub dev: Vec<BeirSplit>,
    /// Out-of-domain guards: STS-B-format files (tab-separated; score, sentence, sentence)
    /// that only judge: Spearman's ρ of cosine against the human score, per nested dim, is
    /// logged at every check.
    #[serde(default)]
    pub guards: Vec<PathBuf>,
    /// When set, a check is eligible only if every guard at every nested dim stays within
    /// this much (absolute ρ) of the head's start, so a head that learns the training domain
    /// at the expense of others is not chosen. Unset: the guards only report.
    #[serde(default)]
    pub guard_tolerance: Option<f64>,
}

impl FamilyConfig {
    /// Reads and checks a recipe.
    ///
    /// Errors: `Io`, or `Invalid` naming the bad setting.
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: Self = crate::train::read_recipe(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainerError::Invalid(m.to_string()));
        if self.recipe != "heads" {
            return bad("recipe must be \"heads\"");
        }
        if self.nested_dims.is_empty() || self.nested_dims.len() != self.dim_weights.len() {
            return bad("nested_dims and dim_weights must be non-empty and the same length");
        }
        if self.head.batch < 2 || self.head.eval_every == 0 || self.holdout < 2 {
            return bad("[head] batch ≥ 2, eval_every ≥ 1 and holdout ≥ 2 are needed");
        }
        // Written so that NaN fails too.
        let positive = |x: f64, zero_ok: bool| x > 0.0 || (zero_ok && x == 0.0);
        if !positive(self.ridge, true)
            || !positive(self.head.lr, true)
            || !positive(self.head.temperature, false)
            || !positive(self.head.anchor_weight, true)
            || !self.guard_tolerance.is_none_or(|t| positive(t, true))
        {
            return bad(
                "ridge, lr, anchor_weight and guard_tolerance must be ≥ 0 and temperature > 0",
            );
        }
        for g in &self.guards {
            let name = g.file_name().map(|n| n.to_string_lossy().to_lowercase());
            if name.is_some_and(|n| n.contains("test")) {
                return Err(TrainerError::Invalid(format!(
                    "guard {}: a test split is for the final benchmark, never for choosing",
                    g.display()
                )));
            }
        }
        if self.sources.is_empty() {
            return bad("no training data: add [[sources]]");
        }
        for s in self.sources.iter().chain(&self.dev) {
            if s.split == "test" {
                return Err(TrainerError::Invalid(format!(
                    "{}: a test split is for the final benchmark, never for fitting or choosing",
                    s.dir.display()
                )));
            }
        }
        Ok(())
    }
}

/// What a fit reports: the per-check scores and the chosen step.
#[derive(Debug, Clone, Serialize)]
pub struct FamilySummary {
    pub seconds: f64,
    pub pairs: usize,
    pub chosen_step: usize,
    /// Per held-out set: rows of (profile, query profile, dim, NDCG@10) for the chosen heads.
    pub report: Vec<ReportRow>,
    /// Per guard: Spearman's ρ per profile × dim for the chosen heads.
    pub guards: Vec<GuardRow>,
}

/// NDCG@10 of one held-out set under the fitted heads.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub set: String,
    /// The documents' profile.
    pub profile: String,
    /// The queries' profile (the same, or `full` documents searched by a sub-encoder).
    pub query_profile: String,
    pub dim: usize,
    pub ndcg_at_10: f64,
    /// The same with the rotation alone (the closed-form baseline) for the shared head.
    pub rotation_ndcg_at_10: f64,
    /// The parent without any head, plain prefix.
    pub plain_ndcg_at_10: f64,
}

/// Spearman's ρ (cosine vs human score) of one out-of-domain guard under the fitted heads.
#[derive(Debug, Clone, Serialize)]
pub struct GuardRow {
    /// The guard's file.
    pub guard: String,
    /// The profile whose pairs are compared (through its own head).
    pub profile: String,
    /// The nested size.
    pub dim: usize,
    /// Spearman's ρ of cosine against the human score under the chosen head.
    pub spearman: f64,
    /// The same with the head's start (the rotation, after the sub-encoder's map).
    pub rotation_spearman: f64,
    /// The parent without any head, plain prefix (NaN past the parent's width).
    pub plain_spearman: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_refuse_test_splits_and_unknown_keys() {
        let text = r#"
            recipe = "heads"
            parent = "models/minilm-elastic"
            out = "runs/x"
            seed = 1
            profiles = ["b50"]
            nested_dims = [64, 384]
            dim_weights = [1.0, 1.0]
            holdout = 5
            ridge = 0.01
            [head]
            steps = 10
            batch = 8
            lr = 1e-3
            warmup = 2
            weight_decay = 0.0
            temperature = 0.05
            eval_every = 5
            [[sources]]
            dir = "../shared/data/scifact"
            split = "train"
        "#;
        let cfg: FamilyConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        let mut bad = cfg.clone();
        bad.sources[0].split = "test".into();
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.recipe = "elastic".into();
        assert!(bad.validate().is_err());
        assert!(toml::from_str::<FamilyConfig>(&format!("{text}\nextra = 1")).is_err());
        assert_eq!(cfg.head.rotation, RotationFit::Documents);
        let qrels = text.replace("[head]", "[head]\nrotation = \"qrels\"");
        let cfg_q: FamilyConfig = toml::from_str(&qrels).unwrap();
        assert_eq!(cfg_q.head.rotation, RotationFit::Qrels);
        let unknown = text.replace("[head]", "[head]\nrotation = \"queries\"");
        assert!(toml::from_str::<FamilyConfig>(&unknown).is_err());
        let mut bad = cfg.clone();
        bad.guards = vec!["../shared/data/stsbenchmark/sts-test.csv".into()];
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.guard_tolerance = Some(-0.1);
        assert!(bad.validate().is_err());
    }
}
