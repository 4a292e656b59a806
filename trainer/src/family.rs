//! The cached-teacher family recipe (`recipe = "heads"` in `mrl train --config FILE`): the
//! backbone stays the frozen, calibrated parent, and every profile gets a Matryoshka head
//! fitted on the parent's embeddings, cached once.
//!
//! Pipeline: BEIR corpora and queries → each profile's pooled vectors, cached on disk
//! (`eval::embed_cached`, resumable) → the shared head starts as an orthogonal rotation
//! (`rotation`: the uncentred principal axes of the training corpora, or with
//! `rotation = "qrels"` the axes of the training pairs' cross-products), zero rows past the
//! parent's width → AdamW on Matryoshka InfoNCE over the training pairs (in-batch negatives; its own
//! learning rate), checked every `eval_every` steps on held-out queries and dev splits; the
//! best check wins, and a check whose full width falls below the parent's on any held-out set
//! cannot (step 0, the rotation itself, always qualifies) → each sub-encoder's head is the
//! shared head after a closed-form map of its pooled space onto the full profile's (ridge
//! least squares on the cached vectors: distillation toward the parent, so a sub-encoder's
//! query vectors search full-profile documents) → the checkpoint: the parent's weights,
//! `head.*`, `heads.NAME.*`, and an `mrl.json`; `mrl judge --write` then declares each
//! sub-encoder aligned with `full` only where it earned it on dev sets (`judge`).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use indicatif::ProgressBar;
use mrl_encoder::linear::LinearMap;
use mrl_encoder::manifest::Manifest;
use mrl_encoder::{BertConfig, Embedder, Profile};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{BeirDataset, Qrels};
use crate::eval::{embed_cached, exact_run_metrics, spearman, EmbeddingCache};
use crate::loss::{matryoshka_info_nce, normalize_rows, similarity_distillation};
use crate::optim::{load_checkpoint, lr_at, save_checkpoint, AdamW, Params};
use crate::rotation::Rotation;
use crate::router::Rng;
use crate::{Result, TrainerError};

/// NDCG@10 differences below this are float noise in tie order (an orthogonal head computes
/// the parent's cosines up to rounding), not a loss.
const TIE: f64 = 1e-4;

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

/// A profile's cached (corpus, query) vectors, raw pooled, in dataset order.
type Cached = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// One BEIR split with each profile's cached vectors.
struct Split {
    name: String,
    data: BeirDataset,
    /// Profile name → (corpus vectors, query vectors), raw pooled.
    vectors: HashMap<String, Cached>,
    /// Queries kept out of training (all of them for a dev split).
    held_out: HashSet<usize>,
    weight: f64,
}

impl Split {
    fn qrels_of(&self, queries: &HashSet<usize>) -> Qrels {
        let ids: HashSet<&str> = queries
            .iter()
            .map(|&i| self.data.queries[i].id.as_str())
            .collect();
        self.data
            .qrels
            .iter()
            .filter(|(q, _)| ids.contains(q.as_str()))
            .map(|(q, r)| (q.clone(), r.clone()))
            .collect()
    }
}

/// An out-of-domain guard: scored sentence pairs with each profile's cached vectors.
struct Guard {
    name: String,
    scores: Vec<f64>,
    /// Profile name → (first sentences, second sentences), raw pooled.
    vectors: HashMap<String, Cached>,
}

/// What one check of a head found.
pub(crate) struct Check {
    /// The check's scores (NDCG@10 or neighbour recall) per held-out set × nested dim.
    pub(crate) scores: Vec<Vec<f64>>,
    /// Spearman's ρ per guard × nested dim.
    pub(crate) guard: Vec<Vec<f64>>,
    pub(crate) eligible: bool,
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

/// A `rows × cols` row-major matrix of f32 as a tensor.
pub(crate) fn matrix(rows: &[Vec<f32>]) -> Result<Tensor> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)?)
}

/// `x Wᵀ` for each row `x` (`W` is `out × in`, row-major).
pub(crate) fn apply(w: &[f32], out: usize, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let inp = w.len() / out;
    rows.par_iter()
        .map(|x| {
            w.chunks_exact(inp)
                .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

pub(crate) fn unit_rows(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let n = r.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            r.iter()
                .map(|x| {
                    if n > 0.0 {
                        (f64::from(*x) / n) as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect()
}

/// The least-squares map `M` (`d_full × d_sub`, row-major) with `M x̂_sub ≈ x̂_full` over
/// paired rows, ridge `λ = ridge · tr(XᵀX)/d`: the encoder's closed form
/// (`mrl_encoder::linear::LinearMap::ridge`, shrunk towards zero), which adaptive collections
/// fit their query maps with too.
///
/// Errors: `Invalid` when the rows differ in count; the encoder's when the system is singular
/// (raise `ridge`) or `ridge` is negative.
pub fn fit_linear_map(sub: &[Vec<f32>], full: &[Vec<f32>], ridge: f64) -> Result<Vec<f32>> {
    if sub.len() != full.len() || sub.is_empty() {
        return Err(TrainerError::Invalid(format!(
            "a map needs paired rows: {} and {}",
            sub.len(),
            full.len()
        )));
    }
    Ok(LinearMap::ridge(sub, full, ridge, false)?.matrix_f32())
}

/// `A B` for row-major `A` (`n × k`) and `B` (`k × m`).
pub(crate) fn matmul(a: &[f32], n: usize, b: &[f32], m: usize) -> Vec<f32> {
    let k = a.len() / n;
    let mut out = vec![0f32; n * m];
    for i in 0..n {
        for t in 0..k {
            let av = a[i * k + t];
            if av != 0.0 {
                for j in 0..m {
                    out[i * m + j] += av * b[t * m + j];
                }
            }
        }
    }
    out
}

/// NDCG@10 of `queries` against `docs` (already through their heads) at `dim`.
fn ndcg(split: &Split, qrels: &Qrels, q: &[Vec<f32>], d: &[Vec<f32>], dim: usize) -> Result<f64> {
    let keep: Vec<usize> = (0..split.data.queries.len())
        .filter(|&i| qrels.contains_key(&split.data.queries[i].id))
        .collect();
    let qids: Vec<&str> = keep
        .iter()
        .map(|&i| split.data.queries[i].id.as_str())
        .collect();
    let qv: Vec<Vec<f32>> = keep.iter().map(|&i| q[i].clone()).collect();
    let dids: Vec<&str> = split.data.corpus.iter().map(|x| x.id.as_str()).collect();
    Ok(exact_run_metrics(&qids, &qv, &dids, d, dim, qrels)?.ndcg_at_10)
}

/// Runs the recipe: caches, fits, checks, writes `OUT/model`. Rerunning reuses the caches.
pub fn fit_family(cfg: &FamilyConfig, progress: &ProgressBar) -> Result<FamilySummary> {
    let start = Instant::now();
    let parent = Parent::load(&cfg.parent, &cfg.nested_dims, &cfg.profiles)?;

    // Every profile's pooled vectors of every corpus and query, cached once.
    let cache_dir = cfg.cache.clone().unwrap_or_else(|| cfg.out.join("cache"));
    let cache = EmbeddingCache::new(&cache_dir, &parent.embedder)?;
    let splits = parent.splits(cfg, &cache, progress)?;
    let guards = parent.guards(cfg, &cache, progress)?;
    let pairs = training_pairs(&splits);
    let total_pairs: usize = pairs.iter().map(Vec::len).sum();
    if total_pairs == 0 {
        return Err(TrainerError::Invalid(
            "the training splits gave no pairs".into(),
        ));
    }
    let w0 = shared_start(cfg, &splits, &pairs, parent.hidden, parent.width)?;
    let maps = sub_maps(cfg, &parent.profiles, &splits)?;

    std::fs::create_dir_all(&cfg.out).map_err(|e| TrainerError::io(&cfg.out, e))?;
    // Head fits keep their state at every check; a rerun of the same recipe over the same
    // parent resumes them (and appends to the log), any other starts afresh.
    let key = recipe_key(cfg, &cache, &splits, &guards)?;
    let resume = Resume::open(&cfg.out.join("state"), &key)?;
    let log = Metrics::open(&cfg.out.join("metrics.jsonl"), resume.resuming)?;
    let held_qrels: Vec<Qrels> = splits.iter().map(|s| s.qrels_of(&s.held_out)).collect();
    let fit = Fit {
        cfg,
        splits: &splits,
        guards: &guards,
        pairs: &pairs,
        held_qrels: &held_qrels,
        width: parent.width,
        hidden: parent.hidden,
        resume: &resume,
    };
    let mut run = FamilyRun::new(fit, &parent.profiles, log);
    let heads = run.fit_heads(w0, maps, progress)?;
    let report = run.report(&heads)?;
    let guard_rows = run.guard_rows(&heads)?;
    parent.write_model(cfg, &heads, &report, &guard_rows)?;
    Ok(FamilySummary {
        seconds: start.elapsed().as_secs_f64(),
        pairs: total_pairs,
        chosen_step: heads.chosen_step,
        report,
        guards: guard_rows,
    })
}

/// The frozen parent: its encoder and manifest, and the profiles the family carries.
pub(crate) struct Parent {
    pub(crate) embedder: Embedder,
    manifest: Manifest,
    bert: BertConfig,
    pub(crate) hidden: usize,
    /// The widest nested dim: the heads' rows.
    pub(crate) width: usize,
    /// `full` first, then the recipe's sub-encoders in its order.
    pub(crate) profiles: Vec<(String, Profile)>,
}

impl Parent {
    /// Loads the calibrated parent `dir` and the sub-encoders named in `subs`.
    ///
    /// Errors: the encoder's load errors, or `Invalid` when the parent is not calibrated,
    /// lacks a named profile, or is wider than the widest nested dim or than a sub-encoder.
    pub(crate) fn load(dir: &Path, nested_dims: &[usize], subs: &[String]) -> Result<Self> {
        let embedder = Embedder::load(dir)?;
        let manifest = embedder.manifest().cloned().ok_or_else(|| {
            TrainerError::Invalid(format!(
                "{} has no mrl.json: calibrate it first (mrl calibrate)",
                dir.display()
            ))
        })?;
        let bert = embedder.config().clone();
        let hidden = bert.hidden_size;
        let width = nested_dims.iter().copied().max().unwrap_or(0);
        if width < hidden {
            return Err(TrainerError::Invalid(format!(
                "the widest nested dim {width} is below the parent's width {hidden}"
            )));
        }
        let mut profiles: Vec<(String, Profile)> = vec![("full".into(), Profile::full(&bert))];
        for name in subs {
            let p = manifest.profile(name).ok_or_else(|| {
                TrainerError::Invalid(format!("the parent has no profile {name:?}"))
            })?;
            if p.profile.hidden != hidden {
                return Err(TrainerError::Invalid(format!(
                    "profile {name:?} is {} wide; a head maps the parent's width {hidden}",
                    p.profile.hidden
                )));
            }
            profiles.push((name.clone(), p.profile.clone()));
        }
        Ok(Self {
            embedder,
            manifest,
            bert,
            hidden,
            width,
            profiles,
        })
    }

    /// Every profile's pooled vectors of `a` and of `b`, through the cache; `what` names
    /// the texts in the progress message.
    pub(crate) fn embed(
        &self,
        what: &str,
        (a, b): (&[String], &[String]),
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<HashMap<String, Cached>> {
        let mut vectors = HashMap::new();
        for (pname, profile) in &self.profiles {
            progress.set_message(format!("embedding {what} ({pname})"));
            let va = embed_cached(&self.embedder, a, profile, Some(cache), progress)?;
            let vb = embed_cached(&self.embedder, b, profile, Some(cache), progress)?;
            vectors.insert(pname.clone(), (va, vb));
        }
        Ok(vectors)
    }

    /// The training sources, then the dev splits, each with its cached vectors.
    ///
    /// Errors: `Invalid` for a test split, or the data's and the encoder's errors.
    fn splits(
        &self,
        cfg: &FamilyConfig,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Vec<Split>> {
        let sets = cfg
            .sources
            .iter()
            .map(|s| (s, true))
            .chain(cfg.dev.iter().map(|s| (s, false)));
        sets.map(|(src, train)| self.split(cfg, src, train, cache, progress))
            .collect()
    }

    /// One split with its cached vectors; a training split holds out every `holdout`-th
    /// query, a dev split all of them.
    fn split(
        &self,
        cfg: &FamilyConfig,
        src: &BeirSplit,
        train: bool,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Split> {
        if src.split == "test" {
            return Err(TrainerError::Invalid("never fit on a test split".into()));
        }
        let data = BeirDataset::load(&src.dir, &src.split)?;
        let dir_name = src.dir.file_name().map_or_else(
            || src.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let name = format!("{dir_name}/{}", src.split);
        let corpus: Vec<String> = data.corpus.iter().map(|d| d.text.clone()).collect();
        let queries: Vec<String> = data.queries.iter().map(|d| d.text.clone()).collect();
        let vectors = self.embed(&name, (&corpus, &queries), cache, progress)?;
        let held_out: HashSet<usize> = (0..data.queries.len())
            .filter(|&i| !train || held(&data.queries[i].id, cfg.seed, cfg.holdout))
            .collect();
        Ok(Split {
            name: if train {
                format!("{name} held-out")
            } else {
                name
            },
            data,
            vectors,
            held_out,
            weight: if train { src.weight } else { 0.0 },
        })
    }

    /// The out-of-domain guards with their cached vectors.
    ///
    /// Errors: the guard files' and the encoder's errors.
    fn guards(
        &self,
        cfg: &FamilyConfig,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Vec<Guard>> {
        let mut guards = Vec::new();
        for path in &cfg.guards {
            let pairs = crate::data::sts_scored(path)?;
            let (a, b): (Vec<String>, Vec<String>) =
                pairs.iter().map(|p| (p.a.clone(), p.b.clone())).unzip();
            let what = path.display().to_string();
            let vectors = self.embed(&what, (&a, &b), cache, progress)?;
            guards.push(Guard {
                name: path.display().to_string(),
                scores: pairs.iter().map(|p| p.score).collect(),
                vectors,
            });
        }
        Ok(guards)
    }

    /// The checkpoint, `OUT/model`: the parent's weights with `head.*` and `heads.NAME.*`;
    /// no sub-encoder is declared aligned with `full` until `judge` finds it earned. A
    /// previous `OUT/model` is replaced.
    fn write_model(
        &self,
        cfg: &FamilyConfig,
        heads: &Heads,
        report: &[ReportRow],
        guard_rows: &[GuardRow],
    ) -> Result<()> {
        let subs: Vec<(String, Vec<f32>)> = self
            .profiles
            .iter()
            .skip(1)
            .map(|(n, _)| (n.clone(), heads.head_of(n)))
            .collect();
        self.write_heads(
            &cfg.parent,
            &cfg.out.join("model"),
            &cfg.nested_dims,
            &heads.shared,
            &subs,
            self.provenance(cfg, heads, report, guard_rows),
        )
    }

    /// Writes a checkpoint to `model_dir` (replaced if present): the parent's weights (read
    /// from `parent_dir`) with the shared head `shared` (`width × hidden`, row-major) and
    /// each sub-encoder's own head; the manifest keeps the parent's ranking and the budgets
    /// of the profiles carried, and declares no alignment (alignment is earned on dev sets
    /// by `judge`, never declared by a fit).
    ///
    /// Errors: `Io` and the tensors' errors.
    pub(crate) fn write_heads(
        &self,
        parent_dir: &Path,
        model_dir: &Path,
        nested_dims: &[usize],
        shared: &[f32],
        subs: &[(String, Vec<f32>)],
        provenance: serde_json::Value,
    ) -> Result<()> {
        let (width, hidden, bert) = (self.width, self.hidden, &self.bert);
        let mut tensors =
            candle_core::safetensors::load(parent_dir.join("model.safetensors"), &Device::Cpu)?;
        let zeros = Tensor::zeros(width, DType::F32, &Device::Cpu)?;
        let put = |t: &mut HashMap<String, Tensor>, name: &str, w: Vec<f32>| -> Result<()> {
            t.insert(
                format!("{name}.weight"),
                Tensor::from_vec(w, (width, hidden), &Device::Cpu)?,
            );
            t.insert(format!("{name}.bias"), zeros.clone());
            Ok(())
        };
        put(&mut tensors, "head", shared.to_vec())?;
        let mut named = vec![crate::calibrate::named(
            "full".into(),
            Profile::full(bert),
            bert,
            None,
        )];
        for (pname, head) in subs {
            let profile = self
                .profiles
                .iter()
                .find(|(n, _)| n == pname)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| TrainerError::Invalid(format!("no profile {pname:?}")))?;
            put(&mut tensors, &format!("heads.{pname}"), head.clone())?;
            let mut p = crate::calibrate::named(pname.clone(), profile, bert, None);
            p.fidelity = self.manifest.profile(pname).and_then(|q| q.fidelity);
            p.head = Some(pname.clone());
            named.push(p);
        }
        let out_manifest = Manifest {
            nested_dims: nested_dims.to_vec(),
            profiles: named,
            budgets: self
                .manifest
                .budgets
                .iter()
                .filter(|b| subs.iter().any(|(n, _)| *n == b.profile))
                .cloned()
                .collect(),
            provenance,
            ..self.manifest.clone()
        };
        if model_dir.exists() {
            std::fs::remove_dir_all(model_dir).map_err(|e| TrainerError::io(model_dir, e))?;
        }
        crate::calibrate::write_checkpoint(parent_dir, model_dir, &tensors, &out_manifest)
    }

    /// The checkpoint's provenance: how it was fitted, the chosen steps and what the held-out
    /// sets and guards found.
    fn provenance(
        &self,
        cfg: &FamilyConfig,
        heads: &Heads,
        report: &[ReportRow],
        guard_rows: &[GuardRow],
    ) -> serde_json::Value {
        serde_json::json!({
            "trained_from": cfg.parent,
            "method": format!("frozen parent; Matryoshka head from the rotation fitted on the training {}, then InfoNCE on cached embeddings; sub-encoder heads by least squares onto the full profile", match cfg.head.rotation { RotationFit::Documents => "corpora's principal axes", RotationFit::Qrels => "pairs' cross-products" }),
            "chosen_step": heads.chosen_step,
            "chosen_steps": heads.subs.iter().map(|(n, _, s)| (n.clone(), *s)).collect::<HashMap<_, _>>(),
            "widest_zeroed": heads.zeroed,
            "recipe": cfg,
            "held_out": report,
            "guards": guard_rows,
            "parent_provenance": self.manifest.provenance,
        })
    }
}

/// Pairs of training queries and their relevant documents, per split (none for dev splits
/// and held-out queries).
fn training_pairs(splits: &[Split]) -> Vec<Vec<(usize, usize)>> {
    let mut pairs: Vec<Vec<(usize, usize)>> = Vec::new();
    for s in splits {
        let index: HashMap<&str, usize> = s
            .data
            .corpus
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let mut p = Vec::new();
        for (qi, q) in s.data.queries.iter().enumerate() {
            if s.held_out.contains(&qi) {
                continue;
            }
            let mut rels: Vec<(&String, &i32)> = s.data.qrels[&q.id].iter().collect();
            rels.sort();
            for (did, &grade) in rels {
                if let (true, Some(&di)) = (grade > 0, index.get(did.as_str())) {
                    p.push((qi, di));
                }
            }
        }
        pairs.push(p);
    }
    pairs
}

/// The shared head's start (`width × hidden`, row-major): the rotation, then the rows past
/// the parent's width drawn uniformly within `±extra_init`.
fn shared_start(
    cfg: &FamilyConfig,
    splits: &[Split],
    pairs: &[Vec<(usize, usize)>],
    hidden: usize,
    width: usize,
) -> Result<Vec<f32>> {
    let mut w0 = fit_rotation(cfg, splits, pairs)?.matrix_f32();
    let mut init_rng = Rng::new(cfg.seed ^ 0xE7);
    w0.extend(
        (hidden * hidden..width * hidden)
            .map(|_| ((init_rng.uniform() - 0.5) * 2.0 * cfg.head.extra_init) as f32),
    );
    Ok(w0)
}

/// The rotation onto the principal axes of the training corpora or pairs (full profile).
fn fit_rotation(
    cfg: &FamilyConfig,
    splits: &[Split],
    pairs: &[Vec<(usize, usize)>],
) -> Result<Rotation> {
    match cfg.head.rotation {
        RotationFit::Documents => {
            let docs: Vec<Vec<f32>> = splits
                .iter()
                .filter(|s| s.weight > 0.0)
                .flat_map(|s| s.vectors["full"].0.iter().cloned())
                .collect();
            Ok(Rotation::fit(&docs)?)
        }
        RotationFit::Qrels => {
            // Each source weighs by its share of batches, not by its number of qrels
            // (NFCorpus has 100× SciFact's): pairs are drawn in proportion to the weight.
            let total: f64 = splits.iter().map(|s| s.weight).sum();
            let mut rng = Rng::new(cfg.seed ^ 0x9A);
            let draws = 20_000usize;
            let mut fit_pairs: Vec<(&[f32], &[f32])> = Vec::with_capacity(draws);
            for (s, p) in splits.iter().zip(pairs) {
                if s.weight <= 0.0 || p.is_empty() {
                    continue;
                }
                let (docs, queries) = &s.vectors["full"];
                let n = (draws as f64 * s.weight / total).round() as usize;
                for k in 0..n {
                    // Every pair once while they last, then seeded draws.
                    let (qi, di) = if k < p.len() && p.len() <= n {
                        p[k]
                    } else {
                        p[(rng.next_u64() % p.len() as u64) as usize]
                    };
                    fit_pairs.push((&queries[qi], &docs[di]));
                }
            }
            Ok(Rotation::fit_pairs(&fit_pairs)?)
        }
    }
}

/// Each sub-encoder's closed-form map onto the full profile, on every cached text.
fn sub_maps(
    cfg: &FamilyConfig,
    profiles: &[(String, Profile)],
    splits: &[Split],
) -> Result<Vec<(String, Vec<f32>)>> {
    let mut maps: Vec<(String, Vec<f32>)> = Vec::new();
    for (pname, _) in profiles.iter().skip(1) {
        let (mut sub, mut full) = (Vec::new(), Vec::new());
        for s in splits {
            let (sd, sq) = &s.vectors[pname];
            let (fd, fq) = &s.vectors["full"];
            sub.extend(sd.iter().chain(sq).cloned());
            full.extend(fd.iter().chain(fq).cloned());
        }
        maps.push((pname.clone(), fit_linear_map(&sub, &full, cfg.ridge)?));
    }
    Ok(maps)
}

/// What the head fits' saved state is keyed by: this build, the recipe, the parent's
/// weights and what the data files hold, not only where they are.
fn recipe_key(
    cfg: &FamilyConfig,
    cache: &EmbeddingCache,
    splits: &[Split],
    guards: &[Guard],
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(serde_json::to_vec(cfg).map_err(|e| TrainerError::Invalid(e.to_string()))?);
    h.update(cache.weights_sha256().as_bytes());
    for s in splits {
        for t in s.data.corpus.iter().chain(&s.data.queries) {
            h.update(t.id.as_bytes());
            h.update(t.text.as_bytes());
        }
        let mut judged: Vec<(&String, Vec<(&String, &i32)>)> = s
            .data
            .qrels
            .iter()
            .map(|(q, r)| {
                let mut r: Vec<_> = r.iter().collect();
                r.sort();
                (q, r)
            })
            .collect();
        judged.sort();
        for (q, r) in judged {
            h.update(q.as_bytes());
            for (d, g) in r {
                h.update(d.as_bytes());
                h.update(g.to_le_bytes());
            }
        }
    }
    for g in guards {
        for x in &g.scores {
            h.update(x.to_le_bytes());
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// `OUT/metrics.jsonl`: one JSON line per check of every head fit.
pub(crate) struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    /// Opens the log: appended to when the head fits resume, else started afresh.
    ///
    /// Errors: `Io` when it cannot be opened.
    pub(crate) fn open(path: &Path, resuming: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resuming)
            .write(true)
            .truncate(!resuming)
            .open(path)
            .map_err(|e| TrainerError::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends `line`.
    pub(crate) fn write(&mut self, line: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{line}").map_err(|e| TrainerError::io(&self.path, e))
    }
}

/// The fitted heads with their starts, as the report and the checkpoint read them.
struct Heads {
    /// The shared head's start: the rotation and the extra rows.
    w0: Vec<f32>,
    /// Each sub-encoder's closed-form map onto the full profile.
    maps: Vec<(String, Vec<f32>)>,
    /// The chosen shared head.
    shared: Vec<f32>,
    chosen_step: usize,
    /// Each sub-encoder's chosen head and its step.
    subs: Vec<(String, Vec<f32>, usize)>,
    /// The profiles whose rows past the parent's width were zeroed.
    zeroed: Vec<String>,
    width: usize,
    hidden: usize,
}

impl Heads {
    /// The rotation baseline of a sub-encoder: the rotation after its closed-form map.
    fn rotation_of(&self, name: &str) -> Vec<f32> {
        match self.maps.iter().find(|(n, _)| n == name) {
            Some((_, m)) => matmul(&self.w0, self.width, m, self.hidden),
            None => self.w0.clone(),
        }
    }

    /// The chosen head of profile `name` (the shared one for `full`).
    fn head_of(&self, name: &str) -> Vec<f32> {
        match self.subs.iter().find(|(n, _, _)| n == name) {
            Some((_, h, _)) => h.clone(),
            None => self.shared.clone(),
        }
    }
}

/// The head fits of one run and what judges them: the shared context, the profiles, the
/// log, and where the parent's width and the widest size sit among the nested dims.
struct FamilyRun<'a> {
    fit: Fit<'a>,
    profiles: &'a [(String, Profile)],
    /// The held-out sets' names, as the log names them.
    names: Vec<&'a str>,
    log: Metrics,
    full_at: usize,
    widest_at: usize,
}

impl<'a> FamilyRun<'a> {
    /// A run over `fit`'s splits that logs to `log`.
    fn new(fit: Fit<'a>, profiles: &'a [(String, Profile)], log: Metrics) -> Self {
        let splits: &'a [Split] = fit.splits;
        let names = splits.iter().map(|s| s.name.as_str()).collect();
        let dims = &fit.cfg.nested_dims;
        let full_at = dims
            .iter()
            .position(|&d| d == fit.hidden)
            .unwrap_or(dims.len() - 1);
        let widest_at = dims
            .iter()
            .position(|&d| d == fit.width)
            .unwrap_or(dims.len() - 1);
        Self {
            fit,
            profiles,
            names,
            log,
            full_at,
            widest_at,
        }
    }

    /// The shared head from `w0`, then each sub-encoder's from the shared head after its map.
    fn fit_heads(
        &mut self,
        w0: Vec<f32>,
        maps: Vec<(String, Vec<f32>)>,
        progress: &ProgressBar,
    ) -> Result<Heads> {
        let (width, hidden) = (self.fit.width, self.fit.hidden);
        let (chosen_step, shared, full_zeroed) = self.fit_shared(&w0, progress)?;
        let mut zeroed = Vec::new();
        if full_zeroed {
            zeroed.push("full".to_string());
        }
        let mut subs: Vec<(String, Vec<f32>, usize)> = Vec::new();
        let fixed = Tensor::from_vec(shared.clone(), (width, hidden), &Device::Cpu)?;
        for (pname, map) in &maps {
            let (step, head, sub_zeroed) = self.fit_sub(pname, map, &shared, &fixed, progress)?;
            if sub_zeroed {
                zeroed.push(pname.clone());
            }
            subs.push((pname.clone(), head, step));
        }
        Ok(Heads {
            w0,
            maps,
            shared,
            chosen_step,
            subs,
            zeroed,
            width,
            hidden,
        })
    }

    /// The shared head: its chosen step, its weights, and whether its rows past the parent's
    /// width were zeroed (`drop_unearned_width`).
    fn fit_shared(
        &mut self,
        w0: &[f32],
        progress: &ProgressBar,
    ) -> Result<(usize, Vec<f32>, bool)> {
        let (ctx, full_at) = (&self.fit, self.full_at);
        let log = &mut self.log;
        // The shared head: NDCG@10 of the full profile at every nested dim on every held-out
        // set; a check whose full width falls below the parent's anywhere is not eligible.
        let baseline = ctx.scores("full", "full", w0, w0)?;
        let guard0 = ctx.guard_scores("full", w0)?;
        let (chosen_step, mut w) = ctx.train(
            "head",
            w0,
            progress,
            |w, rng| ctx.shared_loss(w, rng),
            |w| {
                let scores = ctx.scores("full", "full", w, w)?;
                let guard = ctx.guard_scores("full", w)?;
                let kept = scores
                    .iter()
                    .zip(&baseline)
                    .all(|(s, b)| s[full_at..].iter().all(|&x| x >= b[full_at] - TIE))
                    && ctx.within_guard(&guard, &guard0);
                Ok(Check {
                    scores,
                    guard,
                    eligible: kept,
                })
            },
            &mut |line| log.write(line),
            &self.names,
        )?;
        let full_scores = ctx.scores("full", "full", &w, &w)?;
        let zeroed = drop_unearned_width(&mut w, &full_scores, full_at, self.widest_at, ctx.hidden);
        Ok((chosen_step, w, zeroed))
    }

    /// Sub-encoder `pname`'s head: from the closed-form map, trained so that its queries find
    /// full-profile documents (the shared head, fixed) and its own documents. Returns its
    /// chosen step, its weights, and whether its rows past the parent's width were zeroed.
    fn fit_sub(
        &mut self,
        pname: &str,
        map: &[f32],
        shared: &[f32],
        fixed: &Tensor,
        progress: &ProgressBar,
    ) -> Result<(usize, Vec<f32>, bool)> {
        let ctx = &self.fit;
        let log = &mut self.log;
        let init = matmul(shared, ctx.width, map, ctx.hidden);
        let sub_guard0 = ctx.guard_scores(pname, &init)?;
        let (step, mut head) = ctx.train(
            &format!("heads.{pname}"),
            &init,
            progress,
            |wp, rng| ctx.sub_loss(pname, fixed, wp, rng),
            |wp| {
                let asym = ctx.scores(pname, "full", wp, shared)?;
                let sym = ctx.scores(pname, pname, wp, wp)?;
                let guard = ctx.guard_scores(pname, wp)?;
                let eligible = ctx.within_guard(&guard, &sub_guard0);
                Ok(Check {
                    scores: [asym, sym].concat(),
                    guard,
                    eligible,
                })
            },
            &mut |line| log.write(line),
            &self.names,
        )?;
        // Judged on what the head is for: its queries on full documents and on its own.
        let both = [
            ctx.scores(pname, "full", &head, shared)?,
            ctx.scores(pname, pname, &head, &head)?,
        ]
        .concat();
        let zeroed =
            drop_unearned_width(&mut head, &both, self.full_at, self.widest_at, ctx.hidden);
        Ok((step, head, zeroed))
    }

    /// The report: every profile, symmetric and as a query encoder against full documents.
    fn report(&self, heads: &Heads) -> Result<Vec<ReportRow>> {
        let mut report = Vec::new();
        for (s, qrels) in self.fit.splits.iter().zip(self.fit.held_qrels) {
            for (pname, _) in self.profiles {
                let pairs_of: Vec<&str> = if pname == "full" {
                    vec!["full"]
                } else {
                    vec![pname.as_str(), "full"]
                };
                for doc_profile in pairs_of {
                    self.report_pair(heads, s, qrels, pname, doc_profile, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// The report's rows of `query_profile`'s queries against `doc_profile`'s documents on
    /// split `s`, one per nested dim.
    fn report_pair(
        &self,
        heads: &Heads,
        s: &Split,
        qrels: &Qrels,
        query_profile: &str,
        doc_profile: &str,
        report: &mut Vec<ReportRow>,
    ) -> Result<()> {
        let (width, hidden) = (self.fit.width, self.fit.hidden);
        let q_raw = &s.vectors[query_profile].1;
        let d_raw = &s.vectors[doc_profile].0;
        let (q, d) = (
            apply(&heads.head_of(query_profile), width, q_raw),
            apply(&heads.head_of(doc_profile), width, d_raw),
        );
        let (q0, d0) = (
            apply(&heads.rotation_of(query_profile), width, q_raw),
            apply(&heads.rotation_of(doc_profile), width, d_raw),
        );
        for &dim in &self.fit.cfg.nested_dims {
            report.push(ReportRow {
                set: s.name.clone(),
                profile: doc_profile.to_string(),
                query_profile: query_profile.to_string(),
                dim,
                ndcg_at_10: ndcg(s, qrels, &q, &d, dim)?,
                rotation_ndcg_at_10: ndcg(s, qrels, &q0, &d0, dim)?,
                plain_ndcg_at_10: if dim <= hidden {
                    ndcg(s, qrels, q_raw, d_raw, dim)?
                } else {
                    f64::NAN
                },
            });
        }
        Ok(())
    }

    /// Out-of-domain guards: the chosen heads, their starts, the plain prefix.
    fn guard_rows(&self, heads: &Heads) -> Result<Vec<GuardRow>> {
        let (ctx, width, hidden) = (&self.fit, self.fit.width, self.fit.hidden);
        let mut plain_head = vec![0f32; width * hidden];
        for i in 0..hidden {
            plain_head[i * hidden + i] = 1.0;
        }
        let mut guard_rows = Vec::new();
        for (pname, _) in self.profiles {
            let chosen = ctx.guard_scores(pname, &heads.head_of(pname))?;
            let start = ctx.guard_scores(pname, &heads.rotation_of(pname))?;
            let plain = ctx.guard_scores(pname, &plain_head)?;
            for (gi, g) in ctx.guards.iter().enumerate() {
                for (di, &dim) in ctx.cfg.nested_dims.iter().enumerate() {
                    guard_rows.push(GuardRow {
                        guard: g.name.clone(),
                        profile: pname.clone(),
                        dim,
                        spearman: chosen[gi][di],
                        rotation_spearman: start[gi][di],
                        plain_spearman: if dim <= hidden {
                            plain[gi][di]
                        } else {
                            f64::NAN
                        },
                    });
                }
            }
        }
        Ok(guard_rows)
    }
}

/// Unit-length rows `picked` of `from` as a `[n, d]` tensor.
fn rows(from: &[Vec<f32>], picked: impl Iterator<Item = usize>) -> Result<Tensor> {
    let r: Vec<Vec<f32>> = picked.map(|i| from[i].clone()).collect();
    matrix(&unit_rows(&r))
}

/// What the head fits share: the recipe, the cached splits, their training pairs.
struct Fit<'a> {
    cfg: &'a FamilyConfig,
    splits: &'a [Split],
    guards: &'a [Guard],
    pairs: &'a [Vec<(usize, usize)>],
    held_qrels: &'a [Qrels],
    width: usize,
    hidden: usize,
    resume: &'a Resume,
}

impl Fit<'_> {
    /// A batch of (query, document) index pairs from one training split (drawn by weight, so
    /// in-batch negatives share a corpus), no query or document twice.
    fn sample(&self, rng: &mut Rng) -> Option<(&Split, Vec<(usize, usize)>)> {
        let total: f64 = self.splits.iter().map(|s| s.weight).sum();
        let mut u = rng.uniform() * total;
        let si = self.splits.iter().position(|s| {
            u -= s.weight;
            u < 0.0 && s.weight > 0.0
        })?;
        let p = &self.pairs[si];
        let (mut seen, mut asked, mut batch) = (HashSet::new(), HashSet::new(), Vec::new());
        for _ in 0..self.cfg.head.batch * 4 {
            if batch.len() == self.cfg.head.batch || p.is_empty() {
                break;
            }
            let (qi, di) = p[(rng.next_u64() % p.len() as u64) as usize];
            // A document (or a query) twice in a batch would be its own negative.
            if !seen.contains(&di) && asked.insert(qi) {
                seen.insert(di);
                batch.push((qi, di));
            }
        }
        (batch.len() >= 2).then_some((&self.splits[si], batch))
    }

    /// Matryoshka InfoNCE over the recipe's dims.
    fn nce(&self, q: &Tensor, d: &Tensor) -> Result<Tensor> {
        Ok(matryoshka_info_nce(
            q,
            d,
            &self.cfg.nested_dims,
            &self.cfg.dim_weights,
            self.cfg.head.temperature,
        )?)
    }

    /// `1 − cos` between each row of `student` and of the (detached) `teacher` on every
    /// nested prefix, averaged with the recipe's dim weights.
    fn cosine_distance(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let total: f64 = self.cfg.dim_weights.iter().sum();
        let mut sum: Option<Tensor> = None;
        for (&dim, &w) in self.cfg.nested_dims.iter().zip(&self.cfg.dim_weights) {
            let s = normalize_rows(&student.narrow(1, 0, dim)?)?;
            let t = normalize_rows(&teacher.narrow(1, 0, dim)?.detach())?;
            let cos = (s * t)?.sum(1)?.mean_all()?;
            let term = ((cos.neg()? + 1.0)? * (w / total))?;
            sum = Some(match sum {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        sum.ok_or_else(|| TrainerError::Invalid("no nested dims".into()))
    }

    /// NDCG@10 per held-out set × nested dim: queries by `query_profile` through `wq`,
    /// documents by `doc_profile` through `wd`.
    fn scores(
        &self,
        query_profile: &str,
        doc_profile: &str,
        wq: &[f32],
        wd: &[f32],
    ) -> Result<Vec<Vec<f64>>> {
        self.splits
            .iter()
            .zip(self.held_qrels)
            .map(|(s, qrels)| {
                let q = apply(wq, self.width, &s.vectors[query_profile].1);
                let d = apply(wd, self.width, &s.vectors[doc_profile].0);
                self.cfg
                    .nested_dims
                    .iter()
                    .map(|&dim| ndcg(s, qrels, &q, &d, dim))
                    .collect()
            })
            .collect()
    }

    /// Spearman's ρ per guard × nested dim of `profile`'s pairs through `w`.
    fn guard_scores(&self, profile: &str, w: &[f32]) -> Result<Vec<Vec<f64>>> {
        self.guards
            .iter()
            .map(|g| {
                let (a, b) = &g.vectors[profile];
                let (a, b) = (apply(w, self.width, a), apply(w, self.width, b));
                Ok(self
                    .cfg
                    .nested_dims
                    .iter()
                    .map(|&dim| {
                        let pairs: Vec<(f64, f64)> = a
                            .iter()
                            .zip(&b)
                            .zip(&g.scores)
                            .map(|((x, y), &s)| (prefix_cosine(x, y, dim), s))
                            .collect();
                        spearman(&pairs)
                    })
                    .collect())
            })
            .collect()
    }

    /// Whether every guard at every dim is within the tolerance of the start's (always, when
    /// no tolerance is set).
    fn within_guard(&self, guard: &[Vec<f64>], start: &[Vec<f64>]) -> bool {
        let Some(tolerance) = self.cfg.guard_tolerance else {
            return true;
        };
        let slack = tolerance + TIE;
        guard
            .iter()
            .flatten()
            .zip(start.iter().flatten())
            .all(|(g, g0)| *g >= g0 - slack)
    }

    /// The shared head's loss on one batch through `w`: InfoNCE of the full profile's
    /// queries on its documents, plus the anchor to the parent's in-batch similarities.
    fn shared_loss(&self, w: &Tensor, rng: &mut Rng) -> Result<Option<Tensor>> {
        let (cfg, hidden) = (self.cfg, self.hidden);
        let Some((s, batch)) = self.sample(rng) else {
            return Ok(None);
        };
        let (docs, queries) = &s.vectors["full"];
        let q = rows(queries, batch.iter().map(|b| b.0))?;
        let d = rows(docs, batch.iter().map(|b| b.1))?;
        let wt = w.t()?;
        let (qo, d_out) = (q.matmul(&wt)?, d.matmul(&wt)?);
        let mut loss = self.nce(&qo, &d_out)?;
        if cfg.head.anchor_weight > 0.0 {
            let parent = Tensor::cat(&[&q, &d], 0)?;
            let out = Tensor::cat(&[&qo, &d_out], 0)?;
            let t = cfg.head.temperature;
            let anchor = (similarity_distillation(&out.narrow(1, 0, hidden)?, &parent, t)?
                + similarity_distillation(&out, &parent, t)?)?;
            loss = (loss + (anchor * cfg.head.anchor_weight)?)?;
        }
        Ok(Some(loss))
    }

    /// Sub-encoder `pname`'s loss on one batch through `wp`: InfoNCE of its queries on the
    /// full profile's documents (through the shared head `fixed`) and on its own, plus the
    /// distillation toward the full profile.
    fn sub_loss(
        &self,
        pname: &str,
        fixed: &Tensor,
        wp: &Tensor,
        rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        let Some((s, batch)) = self.sample(rng) else {
            return Ok(None);
        };
        let (sub_docs, sub_queries) = &s.vectors[pname];
        let full_docs = &s.vectors["full"].0;
        let full_queries = &s.vectors["full"].1;
        let q = rows(sub_queries, batch.iter().map(|b| b.0))?.matmul(&wp.t()?)?;
        let df = rows(full_docs, batch.iter().map(|b| b.1))?.matmul(&fixed.t()?)?;
        let ds = rows(sub_docs, batch.iter().map(|b| b.1))?.matmul(&wp.t()?)?;
        let mut loss = (self.nce(&q, &df)? + self.nce(&q, &ds)?)?;
        if self.cfg.head.anchor_weight > 0.0 {
            // Distillation: each text's vector toward the full profile's own.
            let qf = rows(full_queries, batch.iter().map(|b| b.0))?.matmul(&fixed.t()?)?;
            let student = Tensor::cat(&[&q, &ds], 0)?;
            let teacher = Tensor::cat(&[&qf, &df], 0)?;
            let distill = self.cosine_distance(&student, &teacher)?;
            loss = (loss + (distill * self.cfg.head.anchor_weight)?)?;
        }
        Ok(Some(loss))
    }

    /// AdamW on `loss(W, rng)` from `init` (`width × hidden`, row-major), checked at step 0,
    /// every `eval_every` steps and at the end by `check(W)`; returns the eligible check with
    /// the best mean score (step 0 when none beats it) and logs each check as a JSON line.
    /// Resumes from the recipe's saved state at the last check (`Resume`).
    #[allow(clippy::too_many_arguments)]
    fn train(
        &self,
        name: &str,
        init: &[f32],
        progress: &ProgressBar,
        loss: impl FnMut(&Tensor, &mut Rng) -> Result<Option<Tensor>>,
        check: impl FnMut(&[f32]) -> Result<Check>,
        log: &mut dyn FnMut(serde_json::Value) -> Result<()>,
        sets: &[&str],
    ) -> Result<(usize, Vec<f32>)> {
        let run = HeadRun {
            name,
            hp: self.cfg.head.schedule(),
            seed: self.cfg.seed,
            shape: (self.width, self.hidden),
            dims: &self.cfg.nested_dims,
            resume: self.resume,
            metric: "ndcg_at_10",
            orthogonal: false,
        };
        run.fit(init, progress, loss, check, log, sets)
    }
}

/// Where head fits keep their state between checks (`OUT/state`), keyed by the recipe and
/// the parent: `NAME.json` (step, RNG, best so far) names the `NAME.STEP.safetensors` that
/// holds the weights, the best weights and AdamW's moments at that step. The JSON is
/// renamed into place last, so a kill -9 at any moment leaves the previous check's state.
pub(crate) struct Resume {
    dir: PathBuf,
    /// Whether a previous run of the same recipe left state here.
    pub(crate) resuming: bool,
}

/// A head fit's position at its last check.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeadProgress {
    key: String,
    step: usize,
    rng: u64,
    /// `f64::to_bits`, so a resumed fit compares exactly what an uninterrupted one would.
    running: Option<u64>,
    best_step: usize,
    /// `f64::to_bits` of the best mean.
    best_mean: u64,
    weights: String,
}

impl Resume {
    /// Opens `dir` for the recipe `key`: state of another recipe (or none) is cleared.
    ///
    /// Errors: `Io` when the folder cannot be read, cleared or made.
    pub(crate) fn open(dir: &Path, key: &str) -> Result<Self> {
        let stamp = dir.join("recipe.key");
        let resuming = std::fs::read_to_string(&stamp).is_ok_and(|k| k == key);
        if !resuming {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
            }
            std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
            std::fs::write(&stamp, key).map_err(|e| TrainerError::io(&stamp, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            resuming,
        })
    }

    fn progress_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The saved position of head `name`, if any.
    fn load(&self, name: &str) -> Result<Option<HeadProgress>> {
        let path = self.progress_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TrainerError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainerError::io(&path, e)),
        }
    }

    /// Saves `params` with AdamW's state, then points `NAME.json` at them and removes the
    /// previous check's weights.
    fn save(&self, name: &str, at: &HeadProgress, params: &Params, opt: &AdamW) -> Result<()> {
        save_checkpoint(&self.dir.join(&at.weights), params, opt)?;
        let path = self.progress_path(name);
        let previous = self.load(name)?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(at).map_err(|e| TrainerError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(|e| TrainerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainerError::io(&path, e))?;
        if let Some(old) = previous.filter(|p| p.weights != at.weights) {
            let _ = std::fs::remove_file(self.dir.join(old.weights));
        }
        Ok(())
    }
}

/// One head's fit: its settings and where it saves its state.
pub(crate) struct HeadRun<'a> {
    pub(crate) name: &'a str,
    pub(crate) hp: Schedule,
    pub(crate) seed: u64,
    /// `(rows, cols)` of the head.
    pub(crate) shape: (usize, usize),
    pub(crate) dims: &'a [usize],
    pub(crate) resume: &'a Resume,
    /// The log's name for the checks' scores (`ndcg_at_10`, `neighbour_recall_at_10`).
    pub(crate) metric: &'static str,
    /// After every step, project the first `cols` rows back onto the orthogonal matrices
    /// (`project_orthogonal`) and zero the rest, so full-width cosines stay the parent's.
    pub(crate) orthogonal: bool,
}

/// A head fit's optimiser schedule (AdamW, warmup then cosine) and check interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) steps: usize,
    pub(crate) lr: f64,
    pub(crate) warmup: usize,
    pub(crate) weight_decay: f64,
    pub(crate) eval_every: usize,
}

impl HeadTraining {
    fn schedule(&self) -> Schedule {
        Schedule {
            steps: self.steps,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            eval_every: self.eval_every,
        }
    }
}

impl HeadRun<'_> {
    /// See `Fit::train`.
    pub(crate) fn fit(
        &self,
        init: &[f32],
        progress: &ProgressBar,
        mut loss: impl FnMut(&Tensor, &mut Rng) -> Result<Option<Tensor>>,
        mut check: impl FnMut(&[f32]) -> Result<Check>,
        log: &mut dyn FnMut(serde_json::Value) -> Result<()>,
        sets: &[&str],
    ) -> Result<(usize, Vec<f32>)> {
        let (hp, name) = (&self.hp, self.name);
        let tensor = |w: Vec<f32>| Tensor::from_vec(w, self.shape, &Device::Cpu);
        let var = Var::from_tensor(&tensor(init.to_vec())?)?;
        let best_var = Var::from_tensor(&tensor(init.to_vec())?)?;
        let params: Params = vec![(format!("{name}.weight"), var.clone())];
        let saved: Params = vec![
            (format!("{name}.weight"), var.clone()),
            (format!("{name}.best"), best_var.clone()),
        ];
        let mut opt = AdamW::new(hp.weight_decay);
        let mut rng = Rng::new(self.seed ^ name.len() as u64);
        let (first, mut running, mut best) = match self.resume.load(name)? {
            Some(at) => {
                load_checkpoint(&self.resume.dir.join(&at.weights), &saved, &mut opt)?;
                rng.state = at.rng;
                tracing::info!("{name}: resuming after step {}", at.step);
                (
                    at.step + 1,
                    at.running.map_or(f64::NAN, f64::from_bits),
                    (at.best_step, f64::from_bits(at.best_mean)),
                )
            }
            None => {
                let start = check(init)?;
                log(serde_json::json!({"head": name, "step": 0, "sets": sets,
                    "dims": self.dims, self.metric: start.scores,
                    "mean": mean(&start.scores), "guard_spearman": start.guard}))?;
                let best = (0, mean(&start.scores));
                self.save_at(0, &rng, f64::NAN, best, &saved, &opt)?;
                (1, f64::NAN, best)
            }
        };
        progress.set_message(format!("fitting {name}"));
        progress.set_length(hp.steps as u64);
        progress.set_position(first as u64 - 1);
        for step in first..=hp.steps {
            if let Some(l) = loss(var.as_tensor(), &mut rng)? {
                let grads = l.backward()?;
                let lr = lr_at(step - 1, hp.warmup, hp.steps, hp.lr);
                opt.update(&params, &grads, lr, 1.0)?;
                if self.orthogonal {
                    let mut w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                    project_orthogonal(&mut w, self.shape.1, false)?;
                    var.set(&tensor(w)?)?;
                }
                let v = f64::from(l.to_scalar::<f32>()?);
                running = if running.is_nan() {
                    v
                } else {
                    0.9 * running + 0.1 * v
                };
            }
            progress.inc(1);
            if step.is_multiple_of(hp.eval_every) || step == hp.steps {
                let w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                let Check {
                    scores,
                    guard,
                    eligible,
                } = check(&w)?;
                let m = mean(&scores);
                log(
                    serde_json::json!({"head": name, "step": step, "loss": running,
                    self.metric: scores, "mean": m, "eligible": eligible,
                    "guard_spearman": guard}),
                )?;
                tracing::info!("{name} step {step}: loss {running:.4}, held-out mean {m:.4}");
                if eligible && m > best.1 {
                    best = (step, m);
                    best_var.set(&tensor(w)?)?;
                }
                self.save_at(step, &rng, running, best, &saved, &opt)?;
            }
        }
        Ok((best.0, best_var.as_tensor().flatten_all()?.to_vec1()?))
    }

    fn save_at(
        &self,
        step: usize,
        rng: &Rng,
        running: f64,
        best: (usize, f64),
        saved: &Params,
        opt: &AdamW,
    ) -> Result<()> {
        let at = HeadProgress {
            key: self.name.to_string(),
            step,
            rng: rng.state,
            running: running.is_finite().then_some(running.to_bits()),
            best_step: best.0,
            best_mean: best.1.to_bits(),
            weights: format!("{}.{step}.safetensors", self.name),
        };
        self.resume.save(self.name, &at, saved, opt)
    }
}

/// The mean of every score (0 when there are none).
fn mean(scores: &[Vec<f64>]) -> f64 {
    let all: Vec<f64> = scores.iter().flatten().copied().collect();
    all.iter().sum::<f64>() / all.len().max(1) as f64
}

/// Cosine of the `dim`-wide prefixes of `a` and `b` (0 when either is zero there).
pub(crate) fn prefix_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a[..dim].iter().zip(&b[..dim]) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa * bb).sqrt()
}

/// Width past the parent's must earn its place: when the widest size scores below the
/// parent's width on any held-out set (`scores[set][dim]`), the rows past `hidden` are
/// zeroed, so the widest size then ranks exactly as the parent's width does. Returns
/// whether it zeroed them.
fn drop_unearned_width(
    w: &mut [f32],
    scores: &[Vec<f64>],
    full_at: usize,
    widest_at: usize,
    hidden: usize,
) -> bool {
    if widest_at == full_at || scores.iter().all(|s| s[widest_at] >= s[full_at]) {
        return false;
    }
    w[hidden * hidden..].fill(0.0);
    true
}

/// Projects the first `hidden` rows of `w` (`rows × hidden`, row-major) back onto the
/// orthogonal matrices and zeroes the rows past them. Each training step moves the head a
/// little, so three Newton–Schulz rounds `X ← X (3I − XᵀX) / 2` in f32 (candle's matmul)
/// bring it back to about f32 rounding (Higham 1986, quadratic convergence); should a step
/// have gone far, or with `exact`, `Rotation::nearest` (the f64 polar factor) answers.
///
/// Errors: `Invalid` when those rows are singular or not finite.
pub(crate) fn project_orthogonal(w: &mut [f32], hidden: usize, exact: bool) -> Result<()> {
    let square = hidden * hidden;
    let eye = Tensor::eye(hidden, DType::F32, &Device::Cpu)?;
    let mut x = Tensor::from_slice(&w[..square], (hidden, hidden), &Device::Cpu)?;
    // One Gram matrix XᵀX per round serves the round and the check after it.
    let mut gram = x.t()?.matmul(&x)?;
    // ‖XᵀX − I‖_F < 1 keeps every singular value below √2, where the rounds converge to
    // the polar factor (past √3 they would flip its sign); see `Rotation::nearest`.
    let start: f32 = (&gram - &eye)?.sqr()?.sum_all()?.sqrt()?.to_scalar()?;
    let mut near = !exact && start.is_finite() && start < 1.0;
    if near {
        for _ in 0..3 {
            x = ((&x * 1.5)? - (x.matmul(&gram)? * 0.5)?)?;
            gram = x.t()?.matmul(&x)?;
        }
        let off: f32 = (&gram - &eye)?.abs()?.max_all()?.to_scalar()?;
        near = off.is_finite() && off < 1e-4;
    }
    let q = if near {
        x.flatten_all()?.to_vec1()?
    } else {
        Rotation::nearest(&w[..square])?.matrix_f32()
    };
    w[..square].copy_from_slice(&q);
    w[square..].fill(0.0);
    Ok(())
}

/// Whether query `id` is held out: a seeded hash of the id, one in `every`.
pub(crate) fn held(id: &str, seed: u64, every: usize) -> bool {
    let mut h = Rng::new(seed);
    for b in id.bytes() {
        h.state ^= u64::from(b);
        h.next_u64();
    }
    h.next_u64().is_multiple_of(every as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_squares_map_recovers_a_linear_relation() {
        // y = A x for a scaled rotation A, so directions map linearly (the fit works on unit
        // rows): the fitted map reproduces y's direction for new x.
        let a = [0.0f32, 2.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let mut rng = Rng::new(3);
        let xs: Vec<Vec<f32>> = (0..200)
            .map(|_| (0..3).map(|_| (rng.uniform() - 0.5) as f32).collect())
            .collect();
        let ys = apply(&a, 3, &xs);
        let m = fit_linear_map(&xs, &ys, 0.0).unwrap();
        let x = [vec![0.3f32, -0.2, 0.7]];
        let (want, got) = (apply(&a, 3, &x), apply(&m, 3, &x));
        let cos = |u: &[f32], v: &[f32]| {
            let d: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
            d / (u.iter().map(|a| a * a).sum::<f32>().sqrt()
                * v.iter().map(|a| a * a).sum::<f32>().sqrt())
        };
        assert!(cos(&want[0], &got[0]) > 0.999, "{:?} vs {:?}", want, got);
    }

    /// A profile bound to `heads.NAME` goes through that head; others through `head`.
    #[test]
    fn a_bound_profile_head_replaces_the_shared_one_for_that_profile_only() {
        use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
        let cfg = tiny_config();
        let h = cfg.hidden_size;
        let plain = mrl_encoder::BertModel::from_tensors(tiny_tensors(&cfg, 5), &cfg).unwrap();
        let small = Profile::first_layers(&cfg, 2).unwrap();
        let full = Profile::full(&cfg);
        let seqs = tiny_seqs();
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let mut rng = Rng::new(9);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.uniform() - 0.5) as f32).collect() };
        let (shared, own) = (rand(2 * h * h), rand(2 * h * h));
        let mut t = tiny_tensors(&cfg, 5);
        for (name, w) in [("head", &shared), ("heads.small", &own)] {
            t.insert(
                format!("{name}.weight"),
                Tensor::from_vec(w.clone(), (2 * h, h), &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{name}.bias"),
                Tensor::zeros(2 * h, DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let mut headed = mrl_encoder::BertModel::from_tensors(t, &cfg).unwrap();
        assert!(headed.bind_profile_head("nope", &small).is_err());
        headed.bind_profile_head("small", &small).unwrap();
        for (profile, w) in [(&small, &own), (&full, &shared)] {
            let want = apply(w, 2 * h, &plain.forward(&rows, profile).unwrap());
            let got = headed.forward(&rows, profile).unwrap();
            assert_eq!(headed.output_width(profile), 2 * h);
            for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn holdout_is_stable_and_about_one_in_n() {
        let held_n = (0..1000).filter(|i| held(&format!("q{i}"), 7, 5)).count();
        assert!((150..250).contains(&held_n), "{held_n}");
        assert_eq!(held("q1", 7, 5), held("q1", 7, 5));
    }

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

    /// A head fit killed after a check and rerun ends exactly where an uninterrupted fit
    /// does: same chosen step, same weights, and the two logs together equal the one.
    #[test]
    fn a_killed_head_fit_resumes_from_its_last_check() {
        let hp = HeadTraining {
            steps: 10,
            batch: 2,
            lr: 0.05,
            warmup: 1,
            weight_decay: 0.0,
            temperature: 0.05,
            eval_every: 2,
            anchor_weight: 0.0,
            extra_init: 0.0,
            rotation: RotationFit::Documents,
        };
        let dims = [2usize];
        let init = vec![0f32; 6];
        // The loss draws from the RNG, so a resume that lost its RNG state would diverge.
        let loss = |fail_at: Option<usize>| {
            let mut calls = 0usize;
            move |w: &Tensor, rng: &mut Rng| -> Result<Option<Tensor>> {
                calls += 1;
                if fail_at == Some(calls) {
                    return Err(TrainerError::Invalid("killed".into()));
                }
                let noise = rng.uniform() as f32;
                let target = Tensor::new(&[[1f32, 2.], [3., 4.], [5., noise]], &Device::Cpu)?;
                Ok(Some((w - target)?.sqr()?.sum_all()?))
            }
        };
        let check = |w: &[f32]| -> Result<Check> {
            let score = -w.iter().map(|x| f64::from(x - 3.0).abs()).sum::<f64>();
            Ok(Check {
                scores: vec![vec![score]],
                guard: vec![],
                eligible: true,
            })
        };
        let run = |dir: &Path, fail_at: Option<usize>, lines: &mut Vec<String>| {
            let resume = Resume::open(dir, "recipe").unwrap();
            let head = HeadRun {
                name: "head",
                hp: hp.schedule(),
                seed: 3,
                shape: (3, 2),
                dims: &dims,
                resume: &resume,
                metric: "ndcg_at_10",
                orthogonal: false,
            };
            let mut log = |v: serde_json::Value| -> Result<()> {
                lines.push(v.to_string());
                Ok(())
            };
            head.fit(
                &init,
                &ProgressBar::hidden(),
                loss(fail_at),
                check,
                &mut log,
                &["set"],
            )
        };
        let tmp = std::env::temp_dir().join(format!("mrl-heads-{}", std::process::id()));
        let mut whole_log = Vec::new();
        let whole = run(&tmp.join("a"), None, &mut whole_log).unwrap();
        let mut parts_log = Vec::new();
        let b = tmp.join("b");
        assert!(run(&b, Some(7), &mut parts_log).is_err());
        assert_eq!(parts_log.len(), 4, "checks at 0, 2, 4, 6 before the kill");
        let resumed = run(&b, None, &mut parts_log).unwrap();
        assert_eq!(resumed, whole);
        assert_eq!(parts_log, whole_log);
        // Another recipe's state is not resumed.
        let mut fresh_log = Vec::new();
        Resume::open(&b, "another recipe").unwrap();
        let again = run(&b, None, &mut fresh_log);
        assert!(again.is_ok() && fresh_log.len() == whole_log.len());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn the_widest_size_is_zeroed_unless_it_beats_the_parents_width_everywhere() {
        // 3 rows of width 2: one extra row past the parent's width (hidden = 2).
        let head = vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
        let (full_at, widest_at) = (0, 1);
        let mut w = head.clone();
        let earned = [vec![0.30, 0.31], vec![0.50, 0.50]];
        assert!(!drop_unearned_width(&mut w, &earned, full_at, widest_at, 2));
        assert_eq!(w, head);
        let lost_once = [vec![0.30, 0.31], vec![0.50, 0.49]];
        assert!(drop_unearned_width(
            &mut w, &lost_once, full_at, widest_at, 2
        ));
        assert_eq!(w, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        // Zeroed rows leave every cosine at the widest size equal to the parent's width's.
        let (a, b) = (
            apply(&w, 3, &[vec![0.3, 0.9]]),
            apply(&w, 3, &[vec![0.7, -0.2]]),
        );
        let (c2, c3) = (
            prefix_cosine(&a[0], &b[0], 2),
            prefix_cosine(&a[0], &b[0], 3),
        );
        assert!((c2 - c3).abs() < 1e-12, "{c2} vs {c3}");
        // No width past the parent's: nothing to judge.
        let mut same = head.clone();
        assert!(!drop_unearned_width(&mut same, &lost_once, 1, 1, 2));
    }
}
