//! Judges a checkpoint on data it never trained on: NDCG@10 on BEIR splits and Spearman's ρ
//! on STS files, per profile × nested size, symmetric and as a query encoder against `full`
//! documents, beside the base model's plain prefix and the rotation baseline (the base model
//! rotated onto each set's own principal axes, label-free), and earns alignment.
//!
//! Alignment rule (`earned`): a sub-encoder's queries may search `full` documents only when,
//! on every judged set and at every nested size, its asymmetric score holds at least its
//! threshold's share of the symmetric `full` score at that size. `write_alignment` writes the
//! verdicts into the checkpoint's `mrl.json` (`aligned_with`, and the figures under
//! `provenance.alignment`); the server keeps refusing every pair not written there.
//!
//! Every model is embedded through its own encoder, heads and prompts (what a user gets):
//! BEIR documents after the model's document prompt and queries after its query prompt, as a
//! collection picks them (`Prompts::for_role`); STS sentences after its default prompt, as
//! unnamed texts get it. Vectors are cached by its weights (`eval::embed_cached`), so a second
//! judgement costs nothing; a model without prompts keeps the entries it had.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use mrl_encoder::config::{PromptRole, Prompts};
use mrl_encoder::{Embedder, Precision};
use serde::Serialize;

use crate::data::{sts_scored, BeirDataset};
use crate::eval::{embed_cached, exact_run_metrics, spearman, EmbeddingCache};
use crate::family::prefix_cosine;
use crate::rotation::Rotation;
use crate::{Result, TrainerError};

/// A set to judge on.
#[derive(Debug, Clone, PartialEq)]
pub enum JudgeSet {
    /// A BEIR folder and split, scored by NDCG@10 of exact search.
    Beir { dir: PathBuf, split: String },
    /// An STS-B-format file, scored by Spearman's ρ of cosine against the human score.
    Sts { path: PathBuf },
}

impl JudgeSet {
    fn name(&self) -> String {
        let last = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        match self {
            Self::Beir { dir, split } => format!("{}/{split}", last(dir)),
            Self::Sts { path } => last(path),
        }
    }
}

/// What to judge.
#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// The checkpoint.
    pub model: PathBuf,
    /// The base model it was cut from: its plain prefix and its rotation baseline.
    pub base: PathBuf,
    /// Another checkpoint to judge beside it (e.g. the previous default).
    pub previous: Option<PathBuf>,
    pub sets: Vec<JudgeSet>,
    /// Where embeddings are cached.
    pub cache: PathBuf,
    /// `(profile, share)`: the alignment rule's threshold per sub-encoder.
    pub align: Vec<(String, f64)>,
    /// The dense layers' arithmetic of `model` and `previous` (the base model's rows stay
    /// f32: the reference).
    pub precision: Precision,
}

/// One score of the judgement.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeRow {
    pub set: String,
    /// `ndcg@10` or `spearman`.
    pub metric: &'static str,
    /// `model`, `previous`, `base` (plain prefix) or `rotation` (base, rotated onto the set).
    pub model: String,
    pub query_profile: String,
    /// The documents' profile (for STS, the second sentence's).
    pub profile: String,
    pub dim: usize,
    pub score: f64,
    /// `score` over the base model's full width on the same set.
    pub share_of_base: f64,
}

/// The alignment rule's verdict on one sub-encoder.
#[derive(Debug, Clone, Serialize)]
pub struct AlignmentVerdict {
    pub profile: String,
    pub threshold: f64,
    /// The smallest share of the symmetric `full` score its queries kept, and where.
    pub worst_share: f64,
    pub worst_at: String,
    pub earned: bool,
}

/// A judgement: every row, and the alignment verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeReport {
    pub rows: Vec<JudgeRow>,
    pub alignment: Vec<AlignmentVerdict>,
}

/// The alignment rule: `(asymmetric, symmetric full)` scores at every set × size, each
/// labelled; earned when every asymmetric score is at least `threshold` × its symmetric one.
/// A score that is not finite, or a symmetric score that is not positive, cannot be judged
/// and fails the rule. Returns the smallest share, where it was, and the verdict.
pub fn earned(scores: &[(String, f64, f64)], threshold: f64) -> (f64, String, bool) {
    let mut worst = (f64::INFINITY, String::new());
    for (at, asym, sym) in scores {
        let share = if asym.is_finite() && sym.is_finite() && *sym > 0.0 {
            asym / sym
        } else {
            f64::NEG_INFINITY
        };
        if share < worst.0 {
            worst = (share, at.clone());
        }
    }
    let ok = !scores.is_empty() && worst.0 >= threshold;
    (worst.0, worst.1, ok)
}

/// The texts of a set: for BEIR (documents, queries), for STS (first, second sentences).
struct SetTexts {
    name: String,
    a: Vec<String>,
    b: Vec<String>,
    kind: SetKind,
}

enum SetKind {
    Beir(BeirDataset),
    Sts(Vec<f64>),
}

impl SetTexts {
    fn load(set: &JudgeSet) -> Result<Self> {
        Ok(match set {
            JudgeSet::Beir { dir, split } => {
                let data = BeirDataset::load(dir, split)?;
                Self {
                    name: set.name(),
                    a: data.corpus.iter().map(|d| d.text.clone()).collect(),
                    b: data.queries.iter().map(|d| d.text.clone()).collect(),
                    kind: SetKind::Beir(data),
                }
            }
            JudgeSet::Sts { path } => {
                let pairs = sts_scored(path)?;
                Self {
                    name: set.name(),
                    a: pairs.iter().map(|p| p.a.clone()).collect(),
                    b: pairs.iter().map(|p| p.b.clone()).collect(),
                    kind: SetKind::Sts(pairs.iter().map(|p| p.score).collect()),
                }
            }
        })
    }

    /// The prompts a model's `a` and `b` texts get (see the module header).
    fn prompts<'p>(&self, prompts: &'p Prompts) -> (Option<&'p str>, Option<&'p str>) {
        match self.kind {
            SetKind::Beir(_) => (
                prompts.for_role(PromptRole::Document),
                prompts.for_role(PromptRole::Query),
            ),
            SetKind::Sts(_) => {
                let default = prompts.choose(None, None).ok().flatten();
                (default, default)
            }
        }
    }

    fn metric(&self) -> &'static str {
        match self.kind {
            SetKind::Beir(_) => "ndcg@10",
            SetKind::Sts(_) => "spearman",
        }
    }

    /// The score at `dim` with queries (STS: first sentences) `q` and documents (STS:
    /// second sentences) `d`, each a (documents, queries) pair of the profile that made it.
    fn score(&self, q: &Vectors, d: &Vectors, dim: usize) -> Result<f64> {
        match &self.kind {
            SetKind::Beir(data) => {
                let qids: Vec<&str> = data.queries.iter().map(|x| x.id.as_str()).collect();
                let dids: Vec<&str> = data.corpus.iter().map(|x| x.id.as_str()).collect();
                Ok(exact_run_metrics(&qids, &q.1, &dids, &d.0, dim, &data.qrels)?.ndcg_at_10)
            }
            SetKind::Sts(scores) => {
                let pairs: Vec<(f64, f64)> =
                    q.0.iter()
                        .zip(&d.1)
                        .zip(scores)
                        .map(|((x, y), &s)| (prefix_cosine(x, y, dim), s))
                        .collect();
                Ok(spearman(&pairs))
            }
        }
    }
}

/// One profile's vectors of a set: (`a` texts, `b` texts).
type Vectors = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// A model's profiles and nested sizes.
struct Judged {
    embedder: Embedder,
    cache: EmbeddingCache,
    profiles: Vec<String>,
    dims: Vec<usize>,
}

impl Judged {
    fn load(dir: &Path, cache: &Path, precision: Precision) -> Result<Self> {
        let embedder = Embedder::load_with(dir, precision)?;
        let cache = EmbeddingCache::new(cache, &embedder)?;
        let mut profiles = vec!["full".to_string()];
        profiles.extend(embedder.profile_names().into_iter().filter(|n| n != "full"));
        let width = embedder.max_dim();
        let mut dims: Vec<usize> = embedder
            .nested_dims()
            .into_iter()
            .filter(|&d| d <= width)
            .collect();
        if dims.is_empty() {
            dims = vec![width];
        }
        Ok(Self {
            embedder,
            cache,
            profiles,
            dims,
        })
    }

    /// The nested sizes `profile`'s output holds (a profile narrower than the widest has
    /// fewer, on a checkpoint without a head).
    fn dims_of(&self, profile: &str) -> Result<Vec<usize>> {
        let width = self
            .embedder
            .model()
            .output_width(&self.embedder.profile(Some(profile))?);
        Ok(self.dims.iter().copied().filter(|&d| d <= width).collect())
    }

    fn vectors(&self, set: &SetTexts, profile: &str, progress: &ProgressBar) -> Result<Vectors> {
        let p = self.embedder.profile(Some(profile))?;
        let (pa, pb) = set.prompts(self.embedder.prompts());
        progress.set_message(format!("embedding {} ({profile})", set.name));
        let cache = Some(&self.cache);
        Ok((
            embed_cached(&self.embedder, &set.a, pa, &p, cache, progress)?,
            embed_cached(&self.embedder, &set.b, pb, &p, cache, progress)?,
        ))
    }
}

/// Judges `opts.model` (and `opts.previous`) on every set, with the base model's rows.
///
/// Errors: the models' and data's errors; `Invalid` for an alignment rule on a profile the
/// model lacks, with a share outside 0..=1, or a second rule for one profile.
pub fn judge(opts: &JudgeOptions, progress: &ProgressBar) -> Result<JudgeReport> {
    let base = Judged::load(&opts.base, &opts.cache, Precision::F32)?;
    let mut models = vec![(
        "model",
        Judged::load(&opts.model, &opts.cache, opts.precision)?,
    )];
    if let Some(prev) = &opts.previous {
        models.push(("previous", Judged::load(prev, &opts.cache, opts.precision)?));
    }
    for (k, (p, share)) in opts.align.iter().enumerate() {
        let bad = |why: &str| {
            Err(TrainerError::Invalid(format!(
                "alignment rule for {p:?}: {why}"
            )))
        };
        if !models[0].1.profiles.contains(p) || p == "full" {
            return bad("the model has no such sub-encoder");
        }
        if !(0.0..=1.0).contains(share) {
            return bad("the share of full's score is from 0 to 1");
        }
        if opts.align[..k].iter().any(|(q, _)| q == p) {
            return bad("a profile has one rule");
        }
    }
    let mut rows = Vec::new();
    let mut align_scores: Vec<Vec<(String, f64, f64)>> = vec![Vec::new(); opts.align.len()];
    for set in &opts.sets {
        let texts = SetTexts::load(set)?;
        let metric = texts.metric();
        // The base model: plain prefix and the rotation onto this set's own texts.
        let bv = base.vectors(&texts, "full", progress)?;
        let hidden = base.embedder.max_dim();
        let reference = texts.score(&bv, &bv, hidden)?;
        let row = |model: &str, qp: &str, p: &str, dim: usize, score: f64| JudgeRow {
            set: texts.name.clone(),
            metric,
            model: model.to_string(),
            query_profile: qp.to_string(),
            profile: p.to_string(),
            dim,
            score,
            share_of_base: score / reference,
        };
        let own: Vec<Vec<f32>> = bv.0.iter().chain(&bv.1).cloned().collect();
        let rot = Rotation::fit(&own)?;
        let turn = |v: &[Vec<f32>]| v.iter().map(|x| rot.apply(x)).collect::<Vec<_>>();
        let rv = (turn(&bv.0), turn(&bv.1));
        for &dim in models[0].1.dims.iter().filter(|&&d| d <= hidden) {
            rows.push(row(
                "base",
                "full",
                "full",
                dim,
                texts.score(&bv, &bv, dim)?,
            ));
            rows.push(row(
                "rotation",
                "full",
                "full",
                dim,
                texts.score(&rv, &rv, dim)?,
            ));
        }
        for (label, m) in &models {
            let judged = *label == "model";
            let full = m.vectors(&texts, "full", progress)?;
            let mut sym_full = HashMap::new();
            for &dim in &m.dims {
                let s = texts.score(&full, &full, dim)?;
                sym_full.insert(dim, s);
                rows.push(row(label, "full", "full", dim, s));
            }
            for p in m.profiles.iter().skip(1) {
                let v = m.vectors(&texts, p, progress)?;
                // The judged model's every sub-encoder is scored against `full` (that is
                // what earns alignment); another model's only where it declares it.
                let against_full = judged || m.embedder.check_aligned(p, "full").is_ok();
                let rule = opts
                    .align
                    .iter()
                    .position(|(q, _)| q == p)
                    .filter(|_| judged);
                for dim in m.dims_of(p)? {
                    rows.push(row(label, p, p, dim, texts.score(&v, &v, dim)?));
                    if !against_full {
                        continue;
                    }
                    let asym = texts.score(&v, &full, dim)?;
                    rows.push(row(label, p, "full", dim, asym));
                    if let (Some(k), Some(&sym)) = (rule, sym_full.get(&dim)) {
                        align_scores[k].push((format!("{} at {dim}", texts.name), asym, sym));
                    }
                }
            }
        }
    }
    let alignment = opts
        .align
        .iter()
        .zip(&align_scores)
        .map(|((profile, threshold), scores)| {
            let (worst_share, worst_at, ok) = earned(scores, *threshold);
            AlignmentVerdict {
                profile: profile.clone(),
                threshold: *threshold,
                worst_share,
                worst_at,
                earned: ok,
            }
        })
        .collect();
    Ok(JudgeReport { rows, alignment })
}

/// Writes the verdicts into `model/mrl.json`: each judged profile's `aligned_with` becomes
/// `["full"]` when earned and empty otherwise; the figures go under
/// `provenance.alignment`.
///
/// Errors: `Io`, or `Invalid` when `mrl.json` is not a manifest with those profiles.
pub fn write_alignment(model: &Path, verdicts: &[AlignmentVerdict]) -> Result<()> {
    let path = model.join("mrl.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainerError::io(&path, e))?;
    let bad = |m: String| TrainerError::Invalid(format!("{}: {m}", path.display()));
    let mut manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let profiles = manifest
        .get_mut("profiles")
        .and_then(|p| p.as_array_mut())
        .ok_or_else(|| bad("no profiles".into()))?;
    for v in verdicts {
        if v.profile == "full" {
            return Err(bad(
                "full is what the others align with, not a query profile".into(),
            ));
        }
        let entry = profiles
            .iter_mut()
            .find(|p| p.get("name").and_then(|n| n.as_str()) == Some(v.profile.as_str()))
            .and_then(|p| p.as_object_mut())
            .ok_or_else(|| bad(format!("no profile {:?}", v.profile)))?;
        // Only the pair judged changes; other declared document profiles stay.
        let mut with: Vec<String> = entry
            .get("aligned_with")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        with.retain(|p| p != "full");
        if v.earned {
            with.insert(0, "full".into());
        }
        if with.is_empty() {
            entry.remove("aligned_with");
        } else {
            entry.insert("aligned_with".into(), serde_json::json!(with));
        }
    }
    let provenance = manifest
        .as_object_mut()
        .ok_or_else(|| bad("not an object".into()))?
        .entry("provenance")
        .or_insert_with(|| serde_json::json!({}));
    if !provenance.is_object() {
        // Keep whatever was there, beside the verdicts.
        *provenance = serde_json::json!({ "earlier": provenance.take() });
    }
    if let Some(p) = provenance.as_object_mut() {
        p.insert("alignment".into(), serde_json::json!(verdicts));
    }
    let out = serde_json::to_string_pretty(&manifest).map_err(|e| bad(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, out).map_err(|e| TrainerError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainerError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_earned_only_at_or_above_the_threshold_everywhere() {
        let at = |s: &str| s.to_string();
        let scores = vec![
            (at("a at 64"), 0.475, 0.5),
            (at("a at 384"), 0.60, 0.6),
            (at("b at 64"), 0.95 * 0.8, 0.8),
        ];
        let (worst, where_, ok) = earned(&scores, 0.95);
        assert!(ok, "every share is at least 0.95");
        assert!((worst - 0.95).abs() < 1e-12, "{worst}");
        assert_eq!(where_, "a at 64");
        // One size a hair below the threshold refuses the whole profile.
        let mut below = scores.clone();
        below.push((at("b at 128"), 0.9499 * 0.7, 0.7));
        let (worst, where_, ok) = earned(&below, 0.95);
        assert!(!ok && worst < 0.95 && where_ == "b at 128");
        // Nothing judged earns nothing; a zero symmetric score counts as a zero share.
        assert!(!earned(&[], 0.9).2);
        assert!(!earned(&[(at("z"), 0.1, 0.0)], 0.9).2);
        // A score that cannot be judged fails even a zero threshold.
        assert!(!earned(&[(at("z"), f64::NAN, 0.5)], 0.0).2);
        assert!(!earned(&[(at("a"), 0.5, 0.5), (at("z"), 0.5, f64::NAN)], 0.0).2);
    }

    #[test]
    fn beir_texts_get_the_collection_prompts_and_sts_texts_the_default_one() {
        let set = |kind| SetTexts {
            name: "x".into(),
            a: Vec::new(),
            b: Vec::new(),
            kind,
        };
        let beir = set(SetKind::Beir(BeirDataset {
            dir: PathBuf::from("x"),
            split: "dev".into(),
            corpus: Vec::new(),
            queries: Vec::new(),
            qrels: Default::default(),
        }));
        let sts = set(SetKind::Sts(Vec::new()));
        let named = |pairs: &[(&str, &str)], default: Option<&str>| Prompts {
            prompts: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            default_prompt_name: default.map(String::from),
        };
        // The e5 family: documents as passages.
        let e5 = named(&[("query", "query: "), ("passage", "passage: ")], None);
        assert_eq!(beir.prompts(&e5), (Some("passage: "), Some("query: ")));
        assert_eq!(sts.prompts(&e5), (None, None));
        let with_default = named(&[("query", "q: "), ("s", "s: ")], Some("s"));
        assert_eq!(beir.prompts(&with_default), (Some("s: "), Some("q: ")));
        assert_eq!(sts.prompts(&with_default), (Some("s: "), Some("s: ")));
        // No prompts (all-MiniLM-L6-v2, the shipped model): the texts as they are.
        assert_eq!(beir.prompts(&Prompts::default()), (None, None));
    }

    #[test]
    fn write_alignment_sets_and_clears_aligned_with() {
        let dir = std::env::temp_dir().join(format!("mrl-judge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = serde_json::json!({
            "format": 1,
            "profiles": [
                {"name": "full"},
                {"name": "b50", "aligned_with": ["full"]},
                {"name": "b25", "aligned_with": ["b50"]},
            ],
            "provenance": {"method": "x"},
        });
        std::fs::write(dir.join("mrl.json"), manifest.to_string()).unwrap();
        let verdict = |p: &str, earned: bool| AlignmentVerdict {
            profile: p.into(),
            threshold: 0.9,
            worst_share: if earned { 0.97 } else { 0.5 },
            worst_at: "x at 64".into(),
            earned,
        };
        write_alignment(&dir, &[verdict("b50", false), verdict("b25", true)]).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("mrl.json")).unwrap()).unwrap();
        assert!(back["profiles"][1].get("aligned_with").is_none());
        assert_eq!(
            back["profiles"][2]["aligned_with"],
            serde_json::json!(["full", "b50"])
        );
        assert_eq!(back["provenance"]["method"], "x");
        assert_eq!(back["provenance"]["alignment"][1]["earned"], true);
        assert!(write_alignment(&dir, &[verdict("b75", true)]).is_err());
        assert!(write_alignment(&dir, &[verdict("full", true)]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
