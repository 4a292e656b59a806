//! Calibration: turns a sentence-transformers checkpoint into a ranked elastic one.
//!
//! Calibration texts → activation statistics (width ranking) and layer-skip errors (depth
//! ranking) → permuted weights → zero-shot profiles, one per compute budget, chosen by how
//! well each keeps the full model's similarity structure → a checkpoint folder with
//! `mrl.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use mrl_encoder::manifest::{BudgetChoice, Manifest, NamedProfile, Ranking, COST_SEQ_LEN};
use mrl_encoder::{BertConfig, BertModel, Embedder, Profile, MANIFEST_FILE};
use serde_json::json;

use crate::data::sample_texts;
use crate::error::{Result, TrainerError};
use crate::importance::{depth_order, kept_layers, permute_tensors, ActivationStats};

/// What `mrl calibrate` does, with the defaults the manifest records.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrateOptions {
    /// JSONL files (BEIR corpus/queries or `{text}` lines) to draw calibration texts from.
    pub texts: Vec<PathBuf>,
    /// Calibration texts for the width statistics.
    pub limit: usize,
    /// Tokens per text (with [CLS]/[SEP]); shorter keeps calibration fast, longer sees more
    /// positions.
    pub max_tokens: usize,
    /// Texts (a prefix of the calibration set) for the depth ranking and the profile search,
    /// which run the model many times.
    pub search_texts: usize,
    /// Compute budgets below 1.0 that get a profile, as fractions of the full FLOPs.
    pub budgets: Vec<f64>,
    /// Output sizes the manifest lists as nested dims.
    pub nested_dims: Vec<usize>,
    /// Candidate widths of the search; a value over the parent's is ignored. Empty (the
    /// default): quarters of the parent's heads and FFN neurons, and ½, ⅔, ⅚ of its hidden
    /// width ([`parent_widths`]); the parent's own width is always a candidate.
    pub heads: Vec<usize>,
    pub ffn: Vec<usize>,
    pub hidden: Vec<usize>,
    pub batch_size: usize,
}

impl CalibrateOptions {
    pub fn new(texts: Vec<PathBuf>) -> Self {
        Self {
            texts,
            limit: 1024,
            max_tokens: 128,
            search_texts: 256,
            budgets: vec![0.75, 0.5, 0.25],
            nested_dims: vec![64, 128, 256, 384],
            heads: Vec::new(),
            ffn: Vec::new(),
            hidden: Vec::new(),
            batch_size: 32,
        }
    }
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }
    pub fn search_texts(mut self, n: usize) -> Self {
        self.search_texts = n;
        self
    }
    pub fn budgets(mut self, b: Vec<f64>) -> Self {
        self.budgets = b;
        self
    }
    pub fn nested_dims(mut self, d: Vec<usize>) -> Self {
        self.nested_dims = d;
        self
    }
    pub fn widths(mut self, heads: Vec<usize>, ffn: Vec<usize>, hidden: Vec<usize>) -> Self {
        self.heads = heads;
        self.ffn = ffn;
        self.hidden = hidden;
        self
    }
}

/// Makes progress bars for the stages; the CLI draws them, tests hide them.
pub type Bars<'a> = &'a dyn Fn(&str, u64) -> ProgressBar;

/// Ranks, permutes and profiles the checkpoint in `source`, writing the elastic checkpoint to
/// `out` (through a staging folder, so `out` is either complete or absent).
pub fn calibrate(
    source: &Path,
    out: &Path,
    opts: &CalibrateOptions,
    bars: Bars,
) -> Result<Manifest> {
    let embedder = Embedder::load(source)?;
    if embedder.manifest().is_some() {
        return Err(TrainerError::Invalid(format!(
            "{} already has {MANIFEST_FILE}: calibrate the original checkpoint",
            source.display()
        )));
    }
    if out.exists() {
        return Err(TrainerError::Invalid(format!(
            "{} already exists; remove it or choose another --out",
            out.display()
        )));
    }
    let cfg = embedder.config().clone();
    let texts = sample_texts(&opts.texts, opts.limit)?;
    let seqs = cut(embedder.tokenizer().encode(&texts)?, opts.max_tokens);
    let search = &seqs[..opts.search_texts.min(seqs.len())];
    if search.len() < 8 {
        return Err(TrainerError::Invalid(format!(
            "{} calibration texts is too few (at least 8)",
            search.len()
        )));
    }

    let bar = bars("activations", seqs.len() as u64);
    let stats = ActivationStats::collect(embedder.model(), &seqs, opts.batch_size, &bar)?;
    bar.finish();
    let order = stats.width_order(mrl_encoder::arch::bias_buckets(&cfg).is_some());

    let n = cfg.num_hidden_layers;
    let bar = bars("layer skips", (n * (n + 1) / 2 - 1) as u64);
    let (drop_order, drop_scores) = depth_order(embedder.model(), search, opts.batch_size, &bar)?;
    bar.finish();

    let weights = source.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)?;
    permute_tensors(&mut tensors, &cfg, &order)?;
    let permuted = BertModel::from_tensors(tensors.clone(), &cfg)?;
    drop(embedder);

    let candidates = candidates(&cfg, opts, &drop_order);
    let widths = parent_widths(&cfg, opts);
    let bar = bars("profile search", 0);
    let chosen = search_profiles(&permuted, &cfg, search, opts, &candidates, &bar)?;
    bar.finish();

    let mut profiles = vec![named("full".into(), Profile::full(&cfg), &cfg, Some(1.0))];
    let mut budgets = vec![BudgetChoice {
        budget: 1.0,
        profile: "full".into(),
    }];
    for (budget, profile, fidelity) in chosen {
        let name = format!("b{}", (budget * 100.0).round() as u32);
        budgets.push(BudgetChoice {
            budget,
            profile: name.clone(),
        });
        profiles.push(named(name, profile, &cfg, Some(fidelity)));
    }
    let manifest = Manifest {
        format: 1,
        base_model: source.display().to_string(),
        nested_dims: opts
            .nested_dims
            .iter()
            .copied()
            .filter(|&d| d <= cfg.hidden_size)
            .collect(),
        profiles,
        budgets,
        ranking: Some(Ranking {
            hidden_order: order.hidden,
            heads: order.heads,
            ffn: order.ffn,
            layer_drop_order: drop_order,
            layer_drop_scores: drop_scores,
        }),
        provenance: json!({
            "tool": format!("mrl-trainer {} calibrate", env!("CARGO_PKG_VERSION")),
            "method": "zero-shot: activation-magnitude width ranking, iterative layer-skip depth \
                       ranking, function-preserving permutation, no training",
            "source_weights_sha256": mrl_encoder::fetch::sha256_file(&weights)?,
            "calibration": {
                "files": opts.texts,
                "texts": seqs.len(),
                "search_texts": search.len(),
                "max_tokens": opts.max_tokens,
                "tokens": stats.tokens,
            },
            "search": {
                "heads": widths[0], "ffn": widths[1], "hidden": widths[2],
                "criterion": "mean per-text Pearson correlation of cosine similarities with the full model",
                "cost_seq_len": COST_SEQ_LEN,
            },
        }),
    };
    write_checkpoint(source, out, &tensors, &manifest)?;
    Ok(manifest)
}

/// Truncates token sequences to `max` tokens, keeping the closing `[SEP]`.
pub(crate) fn cut(seqs: Vec<Vec<u32>>, max: usize) -> Vec<Vec<u32>> {
    let max = max.max(2);
    seqs.into_iter()
        .map(|mut s| {
            if s.len() > max {
                let last = s[s.len() - 1];
                s.truncate(max - 1);
                s.push(last);
            }
            s
        })
        .collect()
}

pub(crate) fn named(
    name: String,
    profile: Profile,
    cfg: &BertConfig,
    fidelity: Option<f64>,
) -> NamedProfile {
    NamedProfile {
        name,
        params: profile.params(cfg),
        relative_flops: profile.relative_cost(cfg, COST_SEQ_LEN),
        profile,
        fidelity,
        head: None,
        aligned_with: Vec::new(),
        bridges: None,
        own_layers: None,
    }
}

/// The search's candidate widths (heads, FFN neurons, hidden channels): the options', clamped
/// to the parent, else fractions of the parent's (for all-MiniLM-L6-v2: 3/6/9/12 heads,
/// 384–1536 neurons, 192/256/320/384 channels). Hidden widths stay multiples of 8.
pub fn parent_widths(cfg: &BertConfig, opts: &CalibrateOptions) -> [Vec<usize>; 3] {
    let pick = |given: &[usize], max: usize, fractions: &[(usize, usize)], step: usize| {
        let mut v: Vec<usize> = if given.is_empty() {
            fractions
                .iter()
                .map(|&(n, d)| max * n / d / step * step)
                .collect()
        } else {
            given.to_vec()
        };
        v.retain(|&x| x > 0 && x <= max);
        v.push(max);
        v.sort_unstable();
        v.dedup();
        v
    };
    let quarters = [(1, 4), (2, 4), (3, 4)];
    [
        pick(&opts.heads, cfg.num_attention_heads, &quarters, 1),
        pick(&opts.ffn, cfg.intermediate_size, &quarters, 1),
        pick(&opts.hidden, cfg.hidden_size, &[(1, 2), (2, 3), (5, 6)], 8),
    ]
}

/// Every grid point: depth from the ranking, widths from [`parent_widths`].
fn candidates(cfg: &BertConfig, opts: &CalibrateOptions, drop_order: &[usize]) -> Vec<Profile> {
    let [heads, ffn, hidden] = parent_widths(cfg, opts);
    let mut out = Vec::new();
    for k in 1..=cfg.num_hidden_layers {
        for &h in &heads {
            for &f in &ffn {
                for &w in &hidden {
                    out.push(Profile {
                        layers: kept_layers(drop_order, k),
                        heads: h,
                        ffn: f,
                        hidden: w,
                    });
                }
            }
        }
    }
    out
}

/// For each budget, the candidate costing between 90% and 100% of it (or, if none, the most
/// expensive one under it) that best keeps the full model's similarities.
fn search_profiles(
    model: &BertModel,
    cfg: &BertConfig,
    seqs: &[Vec<u32>],
    opts: &CalibrateOptions,
    candidates: &[Profile],
    bar: &ProgressBar,
) -> Result<Vec<(f64, Profile, f64)>> {
    let reference = model.forward_all(seqs, &Profile::full(cfg), opts.batch_size)?;
    let cost = |p: &Profile| p.relative_cost(cfg, COST_SEQ_LEN);
    let mut pools: Vec<(f64, Vec<&Profile>)> = Vec::new();
    for &b in &opts.budgets {
        if !(0.0..1.0).contains(&b) || b == 0.0 {
            return Err(TrainerError::Invalid(format!(
                "budget {b} is outside (0, 1)"
            )));
        }
        let mut pool: Vec<&Profile> = candidates
            .iter()
            .filter(|p| (0.9 * b..=b).contains(&cost(p)))
            .collect();
        if pool.is_empty() {
            let under = candidates.iter().filter(|p| cost(p) <= b);
            pool.extend(under.max_by(|a, b| cost(a).total_cmp(&cost(b))));
        }
        if pool.is_empty() {
            return Err(TrainerError::Invalid(format!(
                "no candidate profile fits budget {b}; add smaller widths"
            )));
        }
        pools.push((b, pool));
    }
    let mut scored: HashMap<&Profile, f64> = HashMap::new();
    bar.set_length(pools.iter().map(|(_, p)| p.len() as u64).sum());
    let mut chosen = Vec::new();
    for (b, pool) in pools {
        for &p in &pool {
            if !scored.contains_key(p) {
                let f =
                    similarity_fidelity(&reference, &model.forward_all(seqs, p, opts.batch_size)?);
                tracing::debug!(profile = %p, cost = cost(p), fidelity = f, "candidate");
                scored.insert(p, f);
            }
            bar.inc(1);
        }
        let best = pool
            .iter()
            .max_by(|a, b| scored[*a].total_cmp(&scored[*b]))
            .expect("pools are non-empty; this is a bug");
        chosen.push((b, (*best).clone(), scored[*best]));
    }
    Ok(chosen)
}

/// Mean over texts of the Pearson correlation between a text's cosine similarities to all
/// other texts under the reference and under the candidate: 1.0 when the candidate ranks
/// neighbours exactly as the full model does, whatever its output width.
pub fn similarity_fidelity(reference: &[Vec<f32>], other: &[Vec<f32>]) -> f64 {
    let sims = |vs: &[Vec<f32>]| -> Vec<Vec<f64>> {
        let unit: Vec<Vec<f32>> = vs
            .iter()
            .map(|v| {
                let mut v = v.clone();
                mrl_encoder::nested::l2_normalize(&mut v);
                v
            })
            .collect();
        unit.iter()
            .map(|a| {
                unit.iter()
                    .map(|b| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum())
                    .collect()
            })
            .collect()
    };
    let (r, o) = (sims(reference), sims(other));
    let n = r.len();
    let mut total = 0.0;
    for i in 0..n {
        let pairs: Vec<(f64, f64)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| (r[i][j], o[i][j]))
            .collect();
        total += crate::eval::pearson(&pairs);
    }
    total / n.max(1) as f64
}

/// Copies the source folder's files except its weights, writes the permuted weights and the
/// manifest into a staging folder, then renames it to `out`.
pub(crate) fn write_checkpoint(
    source: &Path,
    out: &Path,
    tensors: &HashMap<String, candle_core::Tensor>,
    manifest: &Manifest,
) -> Result<()> {
    let name = out
        .file_name()
        .ok_or_else(|| TrainerError::Invalid(format!("{} has no folder name", out.display())))?;
    let staging = out.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| TrainerError::io(&staging, e))?;
    }
    copy_dir(source, &staging)?;
    candle_core::safetensors::save(tensors, staging.join("model.safetensors"))?;
    manifest.save(&staging)?;
    std::fs::rename(&staging, out).map_err(|e| TrainerError::io(out, e))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| TrainerError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| TrainerError::io(from, e))? {
        let entry = entry.map_err(|e| TrainerError::io(from, e))?;
        let name = entry.file_name();
        let skip = ["model.safetensors", MANIFEST_FILE, ".mrl-verified"];
        if skip.iter().any(|s| name == *s) || name.to_string_lossy().ends_with(".bin") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            if name == "onnx" || name == "openvino" {
                continue;
            }
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| TrainerError::io(&src, e))?;
        }
    }
    Ok(())
}

/// A calibrated parent: its embedder, its manifest and the order calibration drops layers.
///
/// Errors: `Invalid` when the parent pools other than by mean (the student pools by mean,
/// so checked before a run), has no `mrl.json`, or the manifest no ranking.
pub(crate) fn load_parent(parent: &Path) -> Result<(Embedder, Manifest, Vec<usize>)> {
    let teacher = Embedder::load(parent)?;
    crate::student::check_parent_pooling(teacher.modules().pooling)
        .map_err(|e| TrainerError::Invalid(format!("{}: {e}", parent.display())))?;
    if teacher.config().architecture() != Some(mrl_encoder::config::Architecture::Bert) {
        return Err(TrainerError::Invalid(format!(
            "{}: model_type {:?}: the student trains BERT parents only (an MPNet parent is \
             calibrated and served as it is)",
            parent.display(),
            teacher.config().model_type.as_deref().unwrap_or_default()
        )));
    }
    let manifest = teacher.manifest().cloned().ok_or_else(|| {
        TrainerError::Invalid(format!(
            "{} has no mrl.json: calibrate it first (mrl calibrate)",
            parent.display()
        ))
    })?;
    let ranking = manifest
        .ranking
        .as_ref()
        .ok_or_else(|| TrainerError::Invalid("the parent's mrl.json has no ranking".into()))?;
    let drop_order = ranking.layer_drop_order.clone();
    Ok((teacher, manifest, drop_order))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fidelity_is_one_for_the_same_geometry_and_lower_for_noise() {
        let a: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                (0..6)
                    .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0)
                    .collect()
            })
            .collect();
        // A scaled copy has the same cosines.
        let b: Vec<Vec<f32>> = a
            .iter()
            .map(|v| v.iter().map(|x| x * 3.0).collect())
            .collect();
        assert!((similarity_fidelity(&a, &b) - 1.0).abs() < 1e-9);
        let c: Vec<Vec<f32>> = a.iter().map(|v| v[..2].to_vec()).collect();
        assert!(similarity_fidelity(&a, &c) < 0.99);
    }

    #[test]
    fn cut_keeps_the_closing_token() {
        assert_eq!(
            cut(vec![vec![101, 5, 6, 7, 102]], 4),
            vec![vec![101, 5, 6, 102]]
        );
        assert_eq!(cut(vec![vec![101, 102]], 4), vec![vec![101, 102]]);
    }
}
