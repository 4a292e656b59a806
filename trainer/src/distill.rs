//! The label-free family recipe (`recipe = "distill"` in `mrl train --config FILE`), the
//! shipped default's: a frozen, calibrated parent and heads fitted only on broad unlabeled
//! text, so that nothing it learns belongs to a set it is later judged on.
//!
//! Invariants:
//! - The shared head's first `hidden` rows stay an orthogonal matrix: the fit projects them
//!   back after every step (Newton–Schulz rounds, `family::project_orthogonal`) and the
//!   chosen head onto its exact polar factor (`Rotation::nearest`), so full-width cosines are
//!   the parent's whatever the training did (test: `full_width_cosines_stay_the_parents`).
//! - Rows past the parent's width stay zero: without labels nothing can earn them, so the
//!   widest size ranks exactly as the parent's width.
//! - The recipe reads no text of a zero-shot dev set: a path naming SciFact or NFCorpus, or a
//!   dev or test split, is refused before anything runs (`check_zero_shot`). A path cannot
//!   show shared content: the shipped recipe also leaves STS-B train out, whose sentences
//!   include 249 of STS-B dev's.
//! - No sub-encoder is declared aligned with `full` here: `judge` earns that on the zero-shot
//!   dev sets, after training, and writes it.
//!
//! Pipeline: `[[texts]]` (passages drawn evenly, both sides of pairs, optionally STS-format
//! sentences), deduplicated, every `holdout`-th held out by a seeded hash of the text → with
//! `[bridges]`, each sub-encoder's layer bridges, fitted in closed form (`crate::bridge`) →
//! each profile's pooled vectors (the sub-encoders' through their bridges), cached (`eval::embed_cached`, resumable) → each training text's
//! `neighbours` nearest by the parent's full width → the shared head starts as the rotation
//! onto the training texts' uncentred principal axes → AdamW on the Matryoshka-Adaptor losses
//! (Yoon et al., EMNLP 2024, §3.1: pairwise and top-k similarity of each nested prefix to the
//! full width), batches of anchors with one neighbour each, projected onto the orthogonal
//! matrices after each step; checks: neighbour recall@10 of every prefix against the full
//! width on held-out texts → each sub-encoder's head starts as the shared head after a ridge
//! map of its pooled space onto the full profile's and learns the same losses against the
//! full profile's vectors (its queries against full documents, and its own), plus `1 − cos`
//! to its text's full vector; checks: held-out neighbour recall, asymmetric and symmetric.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bridge::{fit_sub_bridges, BridgeReport, BridgeSettings};
use crate::eval::{nearest_neighbours, neighbour_recall, EmbeddingCache};
use crate::family::{
    apply, fit_linear_map, held, matmul, matrix, project_orthogonal, unit_rows, Check, HeadRun,
    Parent, Resume, Schedule,
};
use crate::loss::{normalize_rows, similarity_distillation, similarity_structure};
use crate::metrics::MetricsLog;
use crate::rotation::Rotation;
use crate::router::Rng;
use crate::{Result, TrainerError};

/// What kind of file a `[[texts]]` entry is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextKind {
    /// JSONL records (`mrl_encoder::text`): BEIR-style `{_id, title?, text}`, `{id, text}` or
    /// JSON strings.
    #[default]
    Texts,
    /// JSONL `{query, positive}`: both sides are texts (the pairing is not used).
    Pairs,
    /// STS-B's tab-separated file: both sentences are texts (the scores are not used).
    Sts,
}

/// `[[texts]]`: one file of training text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSource {
    pub path: PathBuf,
    #[serde(default)]
    pub kind: TextKind,
    /// At most this many texts, drawn evenly through the file (default: all of them).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `[head]` and `[sub]`: one kind of head fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillTraining {
    /// AdamW steps (0: the closed-form start alone).
    pub steps: usize,
    /// Texts per step: anchors, each with one of its nearest neighbours.
    pub batch: usize,
    /// Peak learning rate (warmup, then cosine to 0).
    pub lr: f64,
    pub warmup: usize,
    #[serde(default)]
    pub weight_decay: f64,
    /// A check on the held-out texts every this many steps (and at 0 and the end).
    pub eval_every: usize,
    /// Weight of the pairwise similarity loss (every pair of the batch).
    pub pairwise: f64,
    /// Weight of the top-k similarity loss (each text's `k` nearest in the batch).
    pub topk: f64,
    pub k: usize,
    /// Weight of the KL divergence between the teacher's and the student's in-batch
    /// similarity distributions (softmax of cosines / `temperature`, each row a text;
    /// `loss::similarity_distillation`): a ranking-shaped twin of the two losses above.
    #[serde(default)]
    pub kl: f64,
    /// The KL term's temperature (default 0.05).
    #[serde(default = "temperature")]
    pub temperature: f64,
    /// Weight of `1 − cos` between a text's vector and its full-profile vector at every
    /// nested size (sub-encoders; the shared head's full width is the parent's already).
    #[serde(default)]
    pub cosine: f64,
}

fn temperature() -> f64 {
    0.05
}

impl DistillTraining {
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

/// The recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Always `"distill"`.
    pub recipe: String,
    /// The calibrated parent (an `mrl calibrate` folder, calibrated on generic text).
    pub parent: PathBuf,
    /// The run folder: `metrics.jsonl`, `state/`, `model/` (the checkpoint).
    pub out: PathBuf,
    /// Where the parent's embeddings are cached (default `OUT/cache`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    pub seed: u64,
    /// The parent's sub-encoders to carry into the family, by name (`full` always is).
    pub profiles: Vec<String>,
    pub nested_dims: Vec<usize>,
    /// One loss weight per nested dim.
    pub dim_weights: Vec<f64>,
    /// Every `holdout`-th text (by a seeded hash of it) is kept out of training.
    pub holdout: usize,
    /// How many held-out texts judge each check (the first ones).
    pub checks: usize,
    /// Ridge strength of the sub-encoders' closed-form map (see `family::fit_linear_map`).
    pub ridge: f64,
    /// Nearest neighbours kept per training text (by the parent's full width) for batches.
    pub neighbours: usize,
    pub texts: Vec<TextSource>,
    pub head: DistillTraining,
    pub sub: DistillTraining,
    /// Layer bridges for the sub-encoders, fitted before their heads (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridges: Option<BridgeSettings>,
}

/// Sets the shipped default is judged on: their text never trains it.
const ZERO_SHOT_SETS: [&str; 2] = ["scifact", "nfcorpus"];

/// Refuses a training file of a zero-shot dev set: a path naming SciFact or NFCorpus, or a
/// file whose name says dev or test (STS-B's `sts-dev.csv`).
///
/// Errors: `Invalid` naming the path and the rule.
pub fn check_zero_shot(path: &Path) -> Result<()> {
    let lower = path.to_string_lossy().to_lowercase();
    if let Some(set) = ZERO_SHOT_SETS.iter().find(|s| lower.contains(*s)) {
        return Err(TrainerError::Invalid(format!(
            "{}: the label-free recipe reads no text of {set}, a zero-shot dev set",
            path.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.contains("dev") || name.contains("test") {
        return Err(TrainerError::Invalid(format!(
            "{}: dev and test splits only judge; train on train splits and generic text",
            path.display()
        )));
    }
    Ok(())
}

impl DistillConfig {
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
        if self.recipe != "distill" {
            return bad("recipe must be \"distill\"");
        }
        if self.nested_dims.is_empty() || self.nested_dims.len() != self.dim_weights.len() {
            return bad("nested_dims and dim_weights must be non-empty and the same length");
        }
        let ascending = self.nested_dims.windows(2).all(|w| w[0] < w[1]);
        let weights_ok = self.dim_weights.iter().all(|w| *w >= 0.0)
            && self.dim_weights.iter().sum::<f64>() > 0.0;
        if self.nested_dims[0] == 0 || !ascending || !weights_ok {
            return bad("nested_dims must ascend from ≥ 1; dim_weights ≥ 0 with a positive sum");
        }
        if self.holdout < 2 || self.checks < 20 || self.neighbours == 0 {
            return bad("holdout ≥ 2, checks ≥ 20 and neighbours ≥ 1 are needed");
        }
        for t in [&self.head, &self.sub] {
            let ok = |x: f64| x >= 0.0;
            if t.batch < 4 || t.eval_every == 0 || t.k == 0 || t.k >= t.batch {
                return bad("[head]/[sub]: batch ≥ 4, eval_every ≥ 1 and 1 ≤ k < batch");
            }
            let weights = [t.lr, t.pairwise, t.topk, t.kl, t.cosine, self.ridge];
            if !(weights.into_iter().all(ok) && t.temperature > 0.0) {
                return bad("lr, ridge and the loss weights must be ≥ 0, temperature > 0");
            }
        }
        if let Some(b) = &self.bridges {
            b.validate()?;
        }
        if self.texts.is_empty() {
            return bad("no training text: add [[texts]]");
        }
        for t in &self.texts {
            check_zero_shot(&t.path)?;
        }
        Ok(())
    }
}

/// What the recipe reports: the chosen steps and held-out neighbour recall per head.
#[derive(Debug, Clone, Serialize)]
pub struct DistillSummary {
    pub seconds: f64,
    /// Training texts and held-out texts.
    pub texts: (usize, usize),
    /// Each head's chosen step (`head` for the shared one, `heads.NAME` for sub-encoders).
    pub chosen_steps: Vec<(String, usize)>,
    pub report: Vec<RecallRow>,
    /// Each bridge's held-out error against the plain skip's.
    pub bridges: Vec<BridgeReport>,
}

/// Held-out neighbour recall@10 against the parent's full width of one (query profile,
/// document profile) at one size: the chosen head, its closed-form start, no head.
#[derive(Debug, Clone, Serialize)]
pub struct RecallRow {
    pub query_profile: String,
    pub profile: String,
    pub dim: usize,
    pub recall_at_10: f64,
    pub start_recall_at_10: f64,
    /// The plain prefix of the pooled vectors (NaN past the parent's width).
    pub plain_recall_at_10: f64,
}

/// Every text of the recipe's files, deduplicated in file order.
///
/// Errors: the files' read and parse errors.
pub fn load_texts(sources: &[TextSource]) -> Result<Vec<String>> {
    let (mut seen, mut out) = (HashSet::new(), Vec::new());
    for src in sources {
        let all: Vec<String> = match src.kind {
            TextKind::Texts => crate::data::read_texts(&src.path)?
                .into_iter()
                .map(|d| d.text)
                .collect(),
            TextKind::Pairs => crate::data::jsonl_pairs(&src.path)?
                .into_iter()
                .flat_map(|p| [p.query, p.positive])
                .collect(),
            TextKind::Sts => crate::data::sts_scored(&src.path)?
                .into_iter()
                .flat_map(|p| [p.a, p.b])
                .collect(),
        };
        for t in crate::data::evenly(&all, src.limit.unwrap_or(all.len())) {
            if !t.trim().is_empty() && seen.insert(t.clone()) {
                out.push(t.clone());
            }
        }
    }
    Ok(out)
}

/// Cosines between the rows of `a` and of `b` (`[n, d]`, `[m, d]` → `[n, m]`).
fn cosines(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(normalize_rows(a)?.matmul(&normalize_rows(b)?.t()?)?)
}

/// The vectors the recipe fits on, as unit rows: training rows as a tensor per profile, and
/// the held-out rows that judge the checks.
struct Texts {
    /// Profile name → training rows `[n, hidden]`, unit length.
    train: Vec<(String, Tensor)>,
    /// Profile name → held-out rows (the first `checks`), unit length.
    held: Vec<(String, Vec<Vec<f32>>)>,
    /// Each training text's nearest training texts by the parent's full width.
    neighbours: Vec<Vec<usize>>,
    /// Each held-out text's 10 nearest held-out texts by the parent's full width.
    truth: Vec<Vec<usize>>,
}

impl Texts {
    fn train(&self, profile: &str) -> Result<&Tensor> {
        self.train
            .iter()
            .find(|(n, _)| n == profile)
            .map(|(_, t)| t)
            .ok_or_else(|| not_embedded(profile))
    }

    fn held(&self, profile: &str) -> Result<&[Vec<f32>]> {
        self.held
            .iter()
            .find(|(n, _)| n == profile)
            .map(|(_, h)| h.as_slice())
            .ok_or_else(|| not_embedded(profile))
    }

    /// `size` training rows: anchors, each followed by one of its neighbours, no row twice.
    fn batch(&self, rng: &mut Rng, size: usize) -> Result<Tensor> {
        let n = self.neighbours.len();
        let (mut seen, mut picked) = (HashSet::new(), Vec::with_capacity(size));
        for _ in 0..size * 4 {
            if picked.len() >= size {
                break;
            }
            let a = (rng.next_u64() % n as u64) as usize;
            if !seen.insert(a) {
                continue;
            }
            picked.push(a as u32);
            let near = &self.neighbours[a];
            if picked.len() < size && !near.is_empty() {
                let b = near[(rng.next_u64() % near.len() as u64) as usize];
                if seen.insert(b) {
                    picked.push(b as u32);
                }
            }
        }
        Ok(Tensor::new(picked, &Device::Cpu)?)
    }
}

fn not_embedded(profile: &str) -> TrainerError {
    TrainerError::Invalid(format!("profile {profile:?} was not embedded"))
}

/// Runs the recipe: caches, fits, checks, writes `OUT/model`. Rerunning resumes.
///
/// Errors: `Invalid` for a bad recipe or too few texts; the data's, the encoder's and I/O
/// errors.
pub fn fit_distill(cfg: &DistillConfig, progress: &ProgressBar) -> Result<DistillSummary> {
    let start = Instant::now();
    cfg.validate()?;
    let mut parent = Parent::load(&cfg.parent, &cfg.nested_dims, &cfg.profiles)?;
    // The parent's calibration read text too: it must not be a zero-shot set's either.
    let calibrated_on = parent_provenance(&parent)["calibration"]["files"].clone();
    for f in calibrated_on.as_array().into_iter().flatten() {
        check_zero_shot(Path::new(f.as_str().unwrap_or_default()))?;
    }
    let all = load_texts(&cfg.texts)?;
    let (held_out, train): (Vec<String>, Vec<String>) = all
        .into_iter()
        .partition(|t| held(t, cfg.seed, cfg.holdout));
    let held_out: Vec<String> = held_out.into_iter().take(cfg.checks).collect();
    if train.len() < cfg.head.batch.max(cfg.sub.batch) || held_out.len() < 20 {
        return Err(TrainerError::Invalid(format!(
            "{} training and {} held-out texts: too few",
            train.len(),
            held_out.len()
        )));
    }
    let bridge_reports = fit_sub_bridges(
        cfg.bridges.as_ref(),
        &mut parent,
        (&train, &held_out),
        progress,
    )?;
    let cache_dir = cfg.cache.clone().unwrap_or_else(|| cfg.out.join("cache"));
    let cache = EmbeddingCache::new(&cache_dir, &parent.embedder)?;
    let vectors = parent.embed("texts", (&train, &held_out), &cache, progress)?;
    progress.set_message("nearest neighbours");
    let mut texts = Texts {
        train: Vec::new(),
        held: Vec::new(),
        neighbours: Vec::new(),
        truth: Vec::new(),
    };
    for (pname, _) in &parent.profiles {
        let (t, h) = vectors.get(pname).ok_or_else(|| not_embedded(pname))?;
        texts.train.push((pname.clone(), matrix(&unit_rows(t))?));
        texts.held.push((pname.clone(), unit_rows(h)));
    }
    texts.neighbours = nearest_neighbours(texts.train("full")?, cfg.neighbours)?;
    texts.truth = nearest_neighbours(&matrix(texts.held("full")?)?, 10)?;

    std::fs::create_dir_all(&cfg.out).map_err(|e| TrainerError::io(&cfg.out, e))?;
    let key = recipe_key(cfg, &cache, &parent, &train, &held_out)?;
    let resume = Resume::open(&cfg.out.join("state"), &key)?;
    let mut log = MetricsLog::open(&cfg.out.join("metrics.jsonl"), |_| resume.resuming)?;
    let fit = DistillFit {
        cfg,
        texts: &texts,
        hidden: parent.hidden,
        width: parent.width,
        resume: &resume,
    };

    let rotation = fit.rotation()?;
    let (shared_step, mut shared) = fit.shared(&rotation, progress, &mut log)?;
    // The steps kept it orthogonal to f32 rounding; the shipped head is the exact polar
    // factor of the chosen one.
    project_orthogonal(&mut shared, parent.hidden, true)?;
    let mut chosen_steps = vec![("head".to_string(), shared_step)];
    let mut report = fit.report_rows("full", &shared, &rotation)?;
    let mut subs = Vec::new();
    for (pname, _) in parent.profiles.iter().skip(1) {
        let (sd, _) = vectors.get(pname).ok_or_else(|| not_embedded(pname))?;
        let (fd, _) = vectors.get("full").ok_or_else(|| not_embedded("full"))?;
        let map = fit_linear_map(sd, fd, cfg.ridge)?;
        let init = matmul(&shared, parent.width, &map, parent.hidden);
        let (step, head) = fit.sub(pname, &init, &shared, progress, &mut log)?;
        chosen_steps.push((format!("heads.{pname}"), step));
        report.extend(fit.sub_report_rows(pname, &head, &init, &shared)?);
        subs.push((pname.clone(), head));
    }
    let provenance = serde_json::json!({
        "trained_from": cfg.parent,
        "method": format!("frozen parent; label-free: the shared head is the rotation onto generic text's principal axes, refined by the Matryoshka-Adaptor pairwise and top-k similarity losses under an orthogonality constraint (full width exact); {}sub-encoder heads from a ridge map onto the full profile, trained toward the full profile's similarities and vectors on the same text", if bridge_reports.is_empty() { "" } else { "sub-encoders' layer bridges fitted in closed form toward the parent's hidden states (trainer/src/bridge.rs); " }),
        "chosen_steps": chosen_steps.iter().cloned().collect::<std::collections::HashMap<_, _>>(),
        "widest_zeroed": parent.width > parent.hidden,
        "texts": {"train": train.len(), "held_out": held_out.len()},
        "recipe": cfg,
        "held_out_neighbour_recall": report,
        "held_out_bridge_error": bridge_reports,
        "parent_provenance": parent_provenance(&parent),
    });
    // Alignment is earned on the zero-shot dev sets by `judge`, never declared here.
    parent.write_heads(
        &cfg.parent,
        &cfg.out.join("model"),
        &cfg.nested_dims,
        &shared,
        &subs,
        provenance,
    )?;
    Ok(DistillSummary {
        seconds: start.elapsed().as_secs_f64(),
        texts: (train.len(), held_out.len()),
        chosen_steps,
        report,
        bridges: bridge_reports,
    })
}

fn parent_provenance(parent: &Parent) -> serde_json::Value {
    parent
        .embedder
        .manifest()
        .map_or(serde_json::Value::Null, |m| m.provenance.clone())
}

/// What the saved head state is keyed by: this build, the recipe, the parent's weights and
/// profiles (a recalibration can change a profile and keep the weights), and the texts.
fn recipe_key(
    cfg: &DistillConfig,
    cache: &EmbeddingCache,
    parent: &Parent,
    train: &[String],
    held_out: &[String],
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(serde_json::to_vec(cfg).map_err(|e| TrainerError::Invalid(e.to_string()))?);
    h.update(cache.weights_sha256().as_bytes());
    for (name, p) in &parent.profiles {
        h.update(format!("{name}={p};").as_bytes());
    }
    for t in train.iter().chain(held_out) {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}

/// What the head fits share.
struct DistillFit<'a> {
    cfg: &'a DistillConfig,
    texts: &'a Texts,
    hidden: usize,
    width: usize,
    resume: &'a Resume,
}

impl DistillFit<'_> {
    /// The shared head's start: the rotation onto the training texts' uncentred principal
    /// axes (full profile), zero rows past the parent's width; `width × hidden`.
    fn rotation(&self) -> Result<Vec<f32>> {
        let rows: Vec<Vec<f32>> = self.texts.train("full")?.to_vec2()?;
        let mut w = Rotation::fit(&rows)?.matrix_f32();
        w.resize(self.width * self.hidden, 0.0);
        Ok(w)
    }

    /// The nested sizes a loss sees, with their weights: those a head can change (the
    /// shared head's full width is fixed; sizes past it are the same as it).
    fn dims(&self, below_full: bool) -> Vec<(usize, f64)> {
        let total: f64 = self.cfg.dim_weights.iter().sum();
        self.cfg
            .nested_dims
            .iter()
            .zip(&self.cfg.dim_weights)
            .filter(|(&d, _)| d < self.hidden || (!below_full && d == self.hidden))
            .map(|(&d, &w)| (d, w / total))
            .collect()
    }

    fn run<'b>(&'b self, name: &'b str, hp: &DistillTraining, orthogonal: bool) -> HeadRun<'b> {
        HeadRun {
            name,
            hp: hp.schedule(),
            seed: self.cfg.seed,
            shape: (self.width, self.hidden),
            dims: &self.cfg.nested_dims,
            resume: self.resume,
            metric: "neighbour_recall_at_10",
            orthogonal,
        }
    }

    /// The shared head from the rotation: its chosen step and weights.
    fn shared(
        &self,
        rotation: &[f32],
        progress: &ProgressBar,
        log: &mut MetricsLog,
    ) -> Result<(usize, Vec<f32>)> {
        let hp = &self.cfg.head;
        let dims = self.dims(true);
        let held_full = self.texts.held("full")?;
        self.run("head", hp, true).fit(
            rotation,
            progress,
            |w, rng| {
                let x = self
                    .texts
                    .train("full")?
                    .index_select(&self.texts.batch(rng, hp.batch)?, 0)?;
                let teacher = x.matmul(&x.t()?)?;
                let y = x.matmul(&w.t()?)?;
                weighted_sum(&dims, |dim| {
                    let ym = y.narrow(1, 0, dim)?;
                    let s = cosines(&ym, &ym)?;
                    let term = similarity_structure(&s, &teacher, hp.k, hp.pairwise, hp.topk)?;
                    if hp.kl == 0.0 {
                        return Ok(term);
                    }
                    let kl = similarity_distillation(&ym, &x, hp.temperature)?;
                    Ok((term + (kl * hp.kl)?)?)
                })
            },
            |w| {
                let y = apply(w, self.width, held_full);
                let recall = neighbour_recall(&y, &y, &self.texts.truth, &self.cfg.nested_dims)?;
                Ok(Check {
                    scores: vec![recall],
                    guard: Vec::new(),
                    eligible: true,
                })
            },
            &mut |line| log.write(&line),
            &["generic held-out"],
        )
    }

    /// Sub-encoder `pname`'s head from `init`: its chosen step and weights.
    fn sub(
        &self,
        pname: &str,
        init: &[f32],
        shared: &[f32],
        progress: &ProgressBar,
        log: &mut MetricsLog,
    ) -> Result<(usize, Vec<f32>)> {
        let hp = &self.cfg.sub;
        let dims = self.dims(false);
        let fixed = Tensor::from_vec(shared.to_vec(), (self.width, self.hidden), &Device::Cpu)?;
        let held_docs = apply(shared, self.width, self.texts.held("full")?);
        let held_sub = self.texts.held(pname)?;
        let name = format!("heads.{pname}");
        self.run(&name, hp, false).fit(
            init,
            progress,
            |w, rng| {
                let idx = self.texts.batch(rng, hp.batch)?;
                let xs = self.texts.train(pname)?.index_select(&idx, 0)?;
                let xf = self.texts.train("full")?.index_select(&idx, 0)?;
                let f = xf.matmul(&fixed.t()?)?;
                let p = xs.matmul(&w.t()?)?;
                weighted_sum(&dims, |dim| {
                    let (fm, pm) = (f.narrow(1, 0, dim)?, p.narrow(1, 0, dim)?);
                    let teacher = cosines(&fm, &fm)?;
                    let cross = cosines(&pm, &fm)?;
                    let own = cosines(&pm, &pm)?;
                    let structure =
                        (similarity_structure(&cross, &teacher, hp.k, hp.pairwise, hp.topk)?
                            + similarity_structure(&own, &teacher, hp.k, hp.pairwise, hp.topk)?)?;
                    let diagonal = (normalize_rows(&pm)? * normalize_rows(&fm)?)?
                        .sum(1)?
                        .mean_all()?;
                    let distance = ((diagonal.neg()? + 1.0)? * hp.cosine)?;
                    Ok((structure + distance)?)
                })
            },
            |w| {
                let q = apply(w, self.width, held_sub);
                let dims = &self.cfg.nested_dims;
                let asym = neighbour_recall(&q, &held_docs, &self.texts.truth, dims)?;
                let sym = neighbour_recall(&q, &q, &self.texts.truth, dims)?;
                Ok(Check {
                    scores: vec![asym, sym],
                    guard: Vec::new(),
                    eligible: true,
                })
            },
            &mut |line| log.write(&line),
            &[
                &format!("{pname} → full held-out"),
                &format!("{pname} held-out"),
            ],
        )
    }

    /// The shared head's report rows: chosen, rotation, plain prefix.
    fn report_rows(&self, pname: &str, w: &[f32], start: &[f32]) -> Result<Vec<RecallRow>> {
        let (held, dims, truth) = (
            self.texts.held(pname)?,
            &self.cfg.nested_dims,
            &self.texts.truth,
        );
        let (y, y0) = (apply(w, self.width, held), apply(start, self.width, held));
        let chosen = neighbour_recall(&y, &y, truth, dims)?;
        let started = neighbour_recall(&y0, &y0, truth, dims)?;
        let plain = self.plain(held, held)?;
        Ok(rows_of(pname, pname, dims, &chosen, &started, &plain))
    }

    /// A sub-encoder's report rows, against full documents and its own.
    fn sub_report_rows(
        &self,
        pname: &str,
        w: &[f32],
        start: &[f32],
        shared: &[f32],
    ) -> Result<Vec<RecallRow>> {
        let (held, dims, truth) = (
            self.texts.held(pname)?,
            &self.cfg.nested_dims,
            &self.texts.truth,
        );
        let docs = apply(shared, self.width, self.texts.held("full")?);
        let (q, q0) = (apply(w, self.width, held), apply(start, self.width, held));
        let mut rows = rows_of(
            pname,
            "full",
            dims,
            &neighbour_recall(&q, &docs, truth, dims)?,
            &neighbour_recall(&q0, &docs, truth, dims)?,
            &self.plain(held, self.texts.held("full")?)?,
        );
        rows.extend(rows_of(
            pname,
            pname,
            dims,
            &neighbour_recall(&q, &q, truth, dims)?,
            &neighbour_recall(&q0, &q0, truth, dims)?,
            &self.plain(held, held)?,
        ));
        Ok(rows)
    }

    /// Plain-prefix recall (no head) at the sizes within the parent's width, NaN past it.
    fn plain(&self, q: &[Vec<f32>], d: &[Vec<f32>]) -> Result<Vec<f64>> {
        self.cfg
            .nested_dims
            .iter()
            .map(|&dim| {
                if dim > self.hidden {
                    return Ok(f64::NAN);
                }
                Ok(neighbour_recall(q, d, &self.texts.truth, &[dim])?[0])
            })
            .collect()
    }
}

/// `Σ weight · term(dim)` over the loss's nested sizes (`None` when there are none).
fn weighted_sum(
    dims: &[(usize, f64)],
    mut term: impl FnMut(usize) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    let mut sum: Option<Tensor> = None;
    for &(dim, weight) in dims {
        let t = (term(dim)? * weight)?;
        sum = Some(match sum {
            Some(acc) => (acc + t)?,
            None => t,
        });
    }
    Ok(sum)
}

fn rows_of(
    query_profile: &str,
    profile: &str,
    dims: &[usize],
    chosen: &[f64],
    start: &[f64],
    plain: &[f64],
) -> Vec<RecallRow> {
    dims.iter()
        .enumerate()
        .map(|(i, &dim)| RecallRow {
            query_profile: query_profile.to_string(),
            profile: profile.to_string(),
            dim,
            recall_at_10: chosen[i],
            start_recall_at_10: start[i],
            plain_recall_at_10: plain[i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_rows(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| (0..d).map(|_| (rng.uniform() - 0.5) as f32).collect())
            .collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        crate::family::prefix_cosine(a, b, a.len())
    }

    /// The orthogonality rule: after a fit whose loss pulls the head anywhere, its first
    /// `hidden` rows are orthogonal and full-width cosines equal the parent's within 1e-5;
    /// the rows past them are zero. Without the projection the same fit breaks both.
    #[test]
    fn full_width_cosines_stay_the_parents() {
        let (hidden, width) = (8usize, 10usize);
        let data = random_rows(64, hidden, 5);
        let x = Tensor::from_vec(
            data.iter().flatten().copied().collect::<Vec<f32>>(),
            (64, hidden),
            &Device::Cpu,
        )
        .unwrap();
        let target = Tensor::from_vec(
            random_rows(width, hidden, 9).concat(),
            (width, hidden),
            &Device::Cpu,
        )
        .unwrap();
        let mut init = Rotation::fit(&data).unwrap().matrix_f32();
        init.resize(width * hidden, 0.0);
        let fit = |orthogonal: bool| {
            let tmp = std::env::temp_dir()
                .join(format!("mrl-distill-{}-{orthogonal}", std::process::id()));
            let resume = Resume::open(&tmp, "k").unwrap();
            let run = HeadRun {
                name: "head",
                hp: Schedule {
                    steps: 30,
                    lr: 0.05,
                    warmup: 1,
                    weight_decay: 0.0,
                    eval_every: 10,
                },
                seed: 1,
                shape: (width, hidden),
                dims: &[4, 8],
                resume: &resume,
                metric: "neighbour_recall_at_10",
                orthogonal,
            };
            let (_, w) = run
                .fit(
                    &init,
                    &ProgressBar::hidden(),
                    // A loss that pulls the head toward a random, non-orthogonal matrix and
                    // its 4-dim prefix toward the full width's similarities.
                    |w, _| {
                        let y = x.matmul(&w.t()?)?;
                        let s = cosines(&y.narrow(1, 0, 4)?, &y.narrow(1, 0, 4)?)?;
                        let t = cosines(&x, &x)?;
                        let pull = (w - &target)?.sqr()?.mean_all()?;
                        Ok(Some((similarity_structure(&s, &t, 3, 1.0, 1.0)? + pull)?))
                    },
                    // Later checks score higher, so the last one is chosen.
                    {
                        let mut calls = 0;
                        move |_: &[f32]| {
                            calls += 1;
                            Ok(Check {
                                scores: vec![vec![f64::from(calls)]],
                                guard: vec![],
                                eligible: true,
                            })
                        }
                    },
                    &mut |_| Ok(()),
                    &["set"],
                )
                .unwrap();
            std::fs::remove_dir_all(&tmp).unwrap();
            w
        };
        let worst_cosine_error = |w: &[f32]| {
            let y = apply(w, width, &data);
            let mut worst = 0f64;
            for i in 0..20 {
                for j in i + 1..20 {
                    worst = worst.max((cosine(&y[i], &y[j]) - cosine(&data[i], &data[j])).abs());
                }
            }
            worst
        };
        let kept = fit(true);
        assert_ne!(kept, init, "the fit moved the head");
        assert!(
            worst_cosine_error(&kept) <= 1e-5,
            "{}",
            worst_cosine_error(&kept)
        );
        assert!(kept[hidden * hidden..].iter().all(|&v| v == 0.0));
        let free = fit(false);
        assert!(
            worst_cosine_error(&free) > 1e-3,
            "without the projection the fit leaves the orthogonal matrices"
        );
    }

    #[test]
    fn the_shipped_recipe_reads_no_zero_shot_set_and_others_are_refused() {
        let root = crate::test_support::manifest_dir().join("..");
        let shipped = DistillConfig::load(&root.join("configs/minilm-generic.toml")).unwrap();
        for t in &shipped.texts {
            assert!(check_zero_shot(&t.path).is_ok(), "{}", t.path.display());
        }
        for bad in [
            "../shared/data/scifact/corpus.jsonl",
            "../shared/data/SciFact/queries.jsonl",
            "/data/nfcorpus/corpus.jsonl",
            "../shared/data/stsbenchmark/sts-dev.csv",
            "../shared/data/stsbenchmark/sts-test.csv",
        ] {
            let err = check_zero_shot(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        // A recipe naming one is refused as a whole.
        let text = std::fs::read_to_string(root.join("configs/minilm-generic.toml"))
            .unwrap()
            .replace(
                "../shared/data/generic/passages.jsonl",
                "../shared/data/scifact/corpus.jsonl",
            );
        let tmp = std::env::temp_dir().join(format!("mrl-recipe-{}.toml", std::process::id()));
        std::fs::write(&tmp, text).unwrap();
        let err = DistillConfig::load(&tmp).unwrap_err().to_string();
        std::fs::remove_file(&tmp).unwrap();
        assert!(err.contains("scifact"), "{err}");
    }

    #[test]
    fn texts_are_drawn_evenly_and_deduplicated() {
        let dir = std::env::temp_dir().join(format!("mrl-texts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines: Vec<String> = (0..10)
            .map(|i| {
                serde_json::json!({"_id": i.to_string(), "text": format!("t{}", i % 5)}).to_string()
            })
            .collect();
        std::fs::write(dir.join("p.jsonl"), lines.join("\n")).unwrap();
        std::fs::write(
            dir.join("pairs.jsonl"),
            r#"{"query": "q", "positive": "t1"}"#,
        )
        .unwrap();
        // STS-B's layout: score in column 5, the sentences in 6 and 7 (the score unused).
        std::fs::write(dir.join("s.csv"), "g\tf\t2012\t1\t4.0\ts1\ts2\n").unwrap();
        let src = |path: &str, kind, limit| TextSource {
            path: dir.join(path),
            kind,
            limit,
        };
        let all = load_texts(&[
            src("p.jsonl", TextKind::Texts, None),
            src("pairs.jsonl", TextKind::Pairs, None),
            src("s.csv", TextKind::Sts, None),
        ])
        .unwrap();
        assert_eq!(all, ["t0", "t1", "t2", "t3", "t4", "q", "s1", "s2"]);
        let some = load_texts(&[src("p.jsonl", TextKind::Texts, Some(3))]).unwrap();
        assert_eq!(some, ["t0", "t3", "t1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
