//! The children recipe (`recipe = "children"` in `mrl train --config FILE`): a family's
//! sub-encoders learn end to end from their frozen parent on generic text, so the layers a
//! child keeps learn to do the work of the ones it skips.
//!
//! Invariants:
//! - The parent's tensors never change: a child trains only what it alone runs (low-rank
//!   deltas on its layers' dense weights, its own biases and LayerNorms, its bridges and its
//!   head; `student`), so `full` stays exactly the parent.
//! - Label-free and zero-shot: the teacher is the full profile's own vector (at every nested
//!   prefix) and the pairs are generic title → body pairs; a path naming a dev set is refused
//!   (`distill::check_zero_shot`).
//! - Resumable: the state (variables, AdamW moments, step) is written every
//!   `checkpoint_every` steps, and a step's batch is a function of the seed and the step, so
//!   a killed run resumes on the same trajectory; the teacher's vectors are cached once.
//!
//! Loss per child and nested dim `m` (weights `dim_weights`), on a batch of passages and
//! pairs, with `S` the child's and `T` the full profile's vectors cut to `m`, the sum of
//! `cosine · (1 − cos(S, T))`, `kl · KL(softmax(TTᵀ/τ) ‖ softmax(SSᵀ/τ))` (its own index),
//! `cross · KL(softmax(TTᵀ/τ) ‖ softmax(STᵀ/τ))` (its queries against full documents) and
//! `info_nce · ½ (InfoNCE(S_q, S_p) + InfoNCE(S_q, T_p))` on the pairs (van den Oord et al.,
//! 2018; per nested dim as Matryoshka representation learning, Kusupati et al., 2022).
//! Sequences run up to `short_tokens` first, then up to the model's maximum (the length
//! curriculum of Nemotron Elastic).

mod student;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use mrl_encoder::{Embedder, Profile};

use crate::distill::check_zero_shot;
use crate::eval::{nearest_neighbours, neighbour_recall};
use crate::family::held;
use crate::fused::Spans;
use crate::loss::{info_nce, kl_rows, normalize_rows};
use crate::metrics::MetricsLog;
use crate::optim::{
    clip_factor, grad_norm, load_checkpoint, lr_at, save_checkpoint, AdamW, Params,
};
use crate::router::Rng;
use crate::{Result, TrainerError};

pub use student::{ChildStudent, OwnSettings};

/// The recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildrenConfig {
    /// Always `"children"`.
    pub recipe: String,
    /// The family to start from (its sub-encoders' bridges and heads are the start).
    pub parent: PathBuf,
    /// The run folder: `teacher/`, `state/`, `metrics.jsonl`, `model/`.
    pub out: PathBuf,
    /// Seeds the deltas' start, the held-out split and every batch.
    pub seed: u64,
    /// The children that train, by name.
    pub profiles: Vec<String>,
    /// Nested sizes the losses see, with one weight each.
    pub nested_dims: Vec<usize>,
    /// One weight per nested dim (normalised to sum 1).
    pub dim_weights: Vec<f64>,
    /// Unlabeled passages (JSONL texts), at most `passage_limit` of them drawn evenly.
    pub passages: PathBuf,
    pub passage_limit: usize,
    /// Title → body pairs (JSONL `{query, positive}`).
    pub pairs: PathBuf,
    /// Every `holdout`-th pair (by a seeded hash of its query) is kept out for the checks.
    pub holdout: usize,
    /// Rank of the low-rank deltas.
    pub rank: usize,
    /// Whether the first layer a child runs gets its own delta, norms and biases too (see
    /// `OwnSettings`).
    #[serde(default)]
    pub train_first_layer: bool,
    /// AdamW steps, each on every child.
    pub steps: usize,
    /// Passages per step.
    pub batch_passages: usize,
    /// Pairs per step (two texts each).
    pub batch_pairs: usize,
    /// Peak learning rate of the low-rank deltas (warmup, then cosine to 0).
    pub lr: f64,
    /// Peak learning rate of everything else a child owns (head, bridges, norms, biases),
    /// which starts fitted: an AdamW step moves every weight by about the rate, so a rate
    /// fit for a delta starting at zero scatters a fitted 384 × 384 map.
    pub lr_own: f64,
    /// Linear warmup steps of both rates.
    pub warmup: usize,
    /// Decoupled weight decay of the deltas (the rest has none).
    #[serde(default)]
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Tokens per text in the first stage.
    pub short_tokens: usize,
    /// The share of the steps run at `short_tokens`; the rest run at the model's maximum.
    pub short_share: f64,
    /// τ of the similarity distributions and of InfoNCE.
    pub temperature: f64,
    /// Weight of `1 − cos` to the full profile's vector.
    pub cosine: f64,
    /// Weight of the KL term on the child's own in-batch similarities.
    pub kl: f64,
    /// Weight of the KL term on its similarities to the full profile's vectors.
    pub cross: f64,
    /// Weight of InfoNCE on the pairs.
    pub info_nce: f64,
    /// State written every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// A held-out check every this many steps (and at the start and the end).
    pub eval_every: usize,
    /// Held-out pairs a check reads.
    pub checks: usize,
}

impl ChildrenConfig {
    /// Reads and checks a recipe file.
    ///
    /// Errors: `Io`, `Invalid` (not TOML of this shape, or `validate`'s).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let cfg: Self = toml::from_str(&text)
            .map_err(|e| TrainerError::Invalid(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainerError::Invalid(m.to_string()));
        if self.recipe != "children" {
            return bad("recipe must be \"children\"");
        }
        if self.nested_dims.is_empty() || self.nested_dims.len() != self.dim_weights.len() {
            return bad("one dim weight per nested dim");
        }
        if self.profiles.is_empty() || self.steps == 0 || self.batch_pairs < 2 {
            return bad("children, steps and at least two pairs per step are needed");
        }
        if !(0.0..=1.0).contains(&self.short_share) || self.rank == 0 || self.holdout < 2 {
            return bad("short_share in [0, 1], rank ≥ 1, holdout ≥ 2");
        }
        if self.eval_every == 0 || self.checkpoint_every == 0 || self.checks < 20 {
            return bad("eval_every and checkpoint_every ≥ 1, checks ≥ 20");
        }
        if !(self.lr > 0.0 && self.lr_own >= 0.0 && self.temperature > 0.0) {
            return bad("lr > 0, lr_own ≥ 0, temperature > 0");
        }
        if self.nested_dims.contains(&0) || self.dim_weights.iter().sum::<f64>() <= 0.0 {
            return bad("nested dims ≥ 1 and dim weights summing above 0");
        }
        check_zero_shot(&self.passages)?;
        check_zero_shot(&self.pairs)
    }

    fn short_steps(&self) -> usize {
        (self.steps as f64 * self.short_share).round() as usize
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct ChildrenSummary {
    /// Wall-clock of this invocation.
    pub seconds: f64,
    /// The recipe's steps.
    pub steps: usize,
    /// The step this invocation resumed at (0: a fresh run).
    pub resumed_at: usize,
    /// Distinct training texts.
    pub texts: usize,
    /// Per child: its own parameters, and the last check.
    pub children: Vec<(String, usize, serde_json::Value)>,
}

/// The training texts: passages, then the pairs' queries, then their positives (as token
/// ids at the model's maximum), and the held-out pairs' queries then their positives.
struct Texts {
    tokens: Vec<Vec<u32>>,
    passages: usize,
    pairs: usize,
    held: Vec<Vec<u32>>,
}

fn load_texts(cfg: &ChildrenConfig, embedder: &Embedder) -> Result<Texts> {
    let passages =
        crate::data::sample_texts(std::slice::from_ref(&cfg.passages), cfg.passage_limit)?;
    let pairs = crate::data::jsonl_pairs(&cfg.pairs)?;
    let (held_pairs, train): (Vec<_>, Vec<_>) = pairs
        .into_iter()
        .partition(|p| held(&p.query, cfg.seed, cfg.holdout));
    let tok = embedder.tokenizer();
    let mut texts: Vec<String> = passages;
    let n_passages = texts.len();
    texts.extend(train.iter().map(|p| p.query.clone()));
    texts.extend(train.iter().map(|p| p.positive.clone()));
    let tokens = tok.encode(&texts)?;
    let held_pairs = &held_pairs[..cfg.checks.min(held_pairs.len())];
    if train.len() < cfg.batch_pairs || held_pairs.len() < 20 {
        return Err(TrainerError::Invalid(format!(
            "{} training and {} held-out pairs: too few",
            train.len(),
            held_pairs.len()
        )));
    }
    let held_texts: Vec<&str> = held_pairs
        .iter()
        .map(|p| p.query.as_str())
        .chain(held_pairs.iter().map(|p| p.positive.as_str()))
        .collect();
    let held = tok.encode(&held_texts)?;
    Ok(Texts {
        tokens,
        passages: n_passages,
        pairs: train.len(),
        held,
    })
}

/// The full profile's vectors of `seqs` (`eval::cached_rows` under `dir`, keyed by the
/// weights' hash, the profile and the token ids), so a killed run resumes and a second costs
/// nothing.
fn teacher(
    embedder: &Embedder,
    seqs: &[Vec<u32>],
    dir: &Path,
    weights: &str,
    progress: &ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    let full = Profile::full(embedder.config());
    let width = embedder.model().output_width(&full);
    let mut h = Sha256::new();
    h.update(weights.as_bytes());
    hash_seqs(&mut h, seqs);
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let path = dir.join(format!("{:x}.f32", h.finalize()));
    crate::eval::cached_rows(Some(&path), width, seqs.len(), progress, |range| {
        Ok(embedder.embed_tokens(&seqs[range], &full, mrl_encoder::DEFAULT_BATCH_SIZE)?)
    })
}

/// Feeds token sequences to `h`, each with its length, so no two lists hash alike.
fn hash_seqs<'a>(h: &mut Sha256, seqs: impl IntoIterator<Item = &'a Vec<u32>>) {
    for s in seqs {
        h.update((s.len() as u64).to_le_bytes());
        s.iter().for_each(|t| h.update(t.to_le_bytes()));
    }
}

/// The packed batch of `seqs`: ids, positions `[N]`, spans, pooling matrix `[B, N]`.
fn packed(seqs: &[Vec<u32>]) -> Result<(Tensor, Tensor, Arc<Spans>, Tensor)> {
    match crate::student::Batch::new(seqs, crate::student::Kernels::Fused, &Device::Cpu)? {
        crate::student::Batch::Packed {
            ids,
            positions,
            spans,
            pool,
        } => Ok((ids, positions, spans, pool)),
        crate::student::Batch::Padded { .. } => Err(TrainerError::Invalid(
            "a fused batch came back padded".into(),
        )),
    }
}

/// One child's loss on a batch: `s`, `t` `[B, width]` (rows: passages, then `pairs`
/// queries, then their positives).
fn child_loss(cfg: &ChildrenConfig, s: &Tensor, t: &Tensor, pairs: usize) -> Result<Tensor> {
    let b = s.dims2()?.0;
    let q0 = b - 2 * pairs;
    let total: f64 = cfg.dim_weights.iter().sum();
    let tau = cfg.temperature;
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for (&m, &w) in cfg.nested_dims.iter().zip(&cfg.dim_weights) {
        let sm = normalize_rows(&s.narrow(1, 0, m)?)?;
        let tm = normalize_rows(&t.narrow(1, 0, m)?.detach())?;
        let cos = (1.0 - (&sm * &tm)?.sum(1)?.mean_all()?)?;
        let tt = (tm.matmul(&tm.t()?)? / tau)?;
        let kl = kl_rows(&tt, &(sm.matmul(&sm.t()?)? / tau)?)?;
        let cross = kl_rows(&tt, &(sm.matmul(&tm.t()?)? / tau)?)?;
        let q = sm.narrow(0, q0, pairs)?;
        let nce = ((info_nce(&q, &sm.narrow(0, q0 + pairs, pairs)?, tau)?
            + info_nce(&q, &tm.narrow(0, q0 + pairs, pairs)?, tau)?)?
            * 0.5)?;
        let term =
            ((cos * cfg.cosine)? + (kl * cfg.kl)? + (cross * cfg.cross)? + (nce * cfg.info_nce)?)?;
        loss = (loss + (term * (w / total))?)?;
    }
    Ok(loss)
}

/// The text indices of step `step`: passages and pairs each drawn from a seeded shuffle per
/// epoch, so the batch is a function of the seed and the step alone.
fn batch_of(cfg: &ChildrenConfig, texts: &Texts, step: usize) -> Vec<usize> {
    let pick = |n: usize, per: usize, salt: u64| -> Vec<usize> {
        if n == 0 || per == 0 {
            return Vec::new();
        }
        let per_epoch = (n / per).max(1);
        let (epoch, k) = (step / per_epoch, step % per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(cfg.seed ^ salt ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        for i in (1..n).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        order[k * per % n..]
            .iter()
            .chain(&order)
            .take(per)
            .copied()
            .collect()
    };
    let mut out: Vec<usize> = pick(texts.passages, cfg.batch_passages, 1);
    let pairs = pick(texts.pairs, cfg.batch_pairs, 2);
    out.extend(pairs.iter().map(|&p| texts.passages + p));
    out.extend(pairs.iter().map(|&p| texts.passages + texts.pairs + p));
    out
}

/// The held-out pairs as a check reads them, built once: their queries then their
/// positives, the full profile's vectors of those, and each text's 10 nearest among them by
/// the full profile at full width.
struct Held {
    seqs: Vec<Vec<u32>>,
    teacher: Vec<Vec<f32>>,
    truth: Vec<Vec<usize>>,
}

/// Held-out checks of one child, at each nested dim: recall@1 of its pair queries against
/// the full profile's positives and against its own (easy: generic headlines find their lead),
/// its mean cosine to the full vectors, and neighbour recall@10 over all held-out texts
/// (queries and positives) against the full profile's 10 nearest at full width, of its own
/// vectors and of its vectors searched among the full profile's: what an index of its own, or
/// of `full` documents, would return.
fn check(child: &ChildStudent, held: &Held, dims: &[usize]) -> Result<serde_json::Value> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for chunk in held.seqs.chunks(64) {
        let (ids, pos, spans, pool) = packed(chunk)?;
        rows.extend(child.forward(&ids, &pos, &spans, &pool)?.to_vec2::<f32>()?);
    }
    let n = held.seqs.len() / 2;
    let own = neighbour_recall(&rows, &rows, &held.truth, dims)?;
    let vs_full = neighbour_recall(&rows, &held.teacher, &held.truth, dims)?;
    let s = Tensor::new(rows, &Device::Cpu)?;
    let t = Tensor::new(held.teacher.clone(), &Device::Cpu)?;
    let mut out = serde_json::Map::new();
    for (k, &m) in dims.iter().enumerate() {
        let sm = normalize_rows(&s.narrow(1, 0, m)?)?;
        let tm = normalize_rows(&t.narrow(1, 0, m)?)?;
        let q = sm.narrow(0, 0, n)?;
        let recall = |docs: &Tensor| -> Result<f64> {
            let best: Vec<u32> = q.matmul(&docs.t()?)?.argmax(D::Minus1)?.to_vec1()?;
            Ok(best
                .iter()
                .enumerate()
                .filter(|(i, &b)| *i == b as usize)
                .count() as f64
                / n as f64)
        };
        let cos: f32 = (&sm * &tm)?.sum(1)?.mean_all()?.to_scalar()?;
        out.insert(
            m.to_string(),
            serde_json::json!({
                "recall_at_1_vs_full": recall(&tm.narrow(0, n, n)?)?,
                "recall_at_1_own": recall(&sm.narrow(0, n, n)?)?,
                "cosine_to_full": cos,
                "neighbour_recall_at_10_own": own[k],
                "neighbour_recall_at_10_vs_full": vs_full[k],
            }),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// Runs the recipe: the teacher's vectors (cached), then `steps` AdamW steps of every child
/// on the same batches, a check every `eval_every`, state every `checkpoint_every`; writes
/// `out/model`, the parent's folder with the children's own tensors and `own_layers` in
/// `mrl.json`. Alignment is never declared here: `mrl judge` earns it.
///
/// Errors: the recipe's, the data's, the encoder's and I/O errors.
pub fn fit_children(cfg: &ChildrenConfig, progress: &ProgressBar) -> Result<ChildrenSummary> {
    let start = Instant::now();
    cfg.validate()?;
    let embedder = Embedder::load(&cfg.parent)?;
    let manifest = embedder
        .manifest()
        .cloned()
        .ok_or_else(|| TrainerError::Invalid(format!("{}: no mrl.json", cfg.parent.display())))?;
    let bert = embedder.config().clone();
    let width = embedder.model().output_width(&Profile::full(&bert));
    if let Some(&m) = cfg.nested_dims.iter().find(|&&m| m > width) {
        return Err(TrainerError::Invalid(format!(
            "nested dim {m} past the width {width}"
        )));
    }
    progress.set_message("reading texts");
    let mut texts = load_texts(cfg, &embedder)?;
    let weights_path = cfg.parent.join("model.safetensors");
    let weights = mrl_encoder::fetch::sha256_file(&weights_path)?;
    let max = embedder.tokenizer().max_len();
    let short = crate::calibrate::cut(texts.tokens.clone(), cfg.short_tokens);
    let teacher_dir = cfg.out.join("teacher");
    progress.set_message("teacher: short texts");
    let t_short = teacher(&embedder, &short, &teacher_dir, &weights, progress)?;
    let long_ids: Vec<usize> = (0..texts.tokens.len())
        .filter(|&i| texts.tokens[i].len() > cfg.short_tokens)
        .collect();
    progress.set_message("teacher: long texts");
    let long_seqs: Vec<Vec<u32>> = long_ids.iter().map(|&i| texts.tokens[i].clone()).collect();
    let long_rows = teacher(&embedder, &long_seqs, &teacher_dir, &weights, progress)?;
    let mut t_long = t_short.clone();
    for (&i, row) in long_ids.iter().zip(long_rows) {
        t_long[i] = row;
    }
    let seqs = std::mem::take(&mut texts.held);
    let held_teacher = teacher(&embedder, &seqs, &teacher_dir, &weights, progress)?;
    let truth = nearest_neighbours(
        &normalize_rows(&Tensor::new(held_teacher.clone(), &Device::Cpu)?)?,
        10,
    )?;
    let held = Held {
        seqs,
        teacher: held_teacher,
        truth,
    };

    let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
    let mut rng = Rng::new(cfg.seed);
    let own = OwnSettings {
        rank: cfg.rank,
        train_first_layer: cfg.train_first_layer,
    };
    let mut children = Vec::new();
    for name in &cfg.profiles {
        let p = manifest
            .profile(name)
            .ok_or_else(|| TrainerError::Invalid(format!("the parent has no profile {name:?}")))?;
        if p.own_layers.is_some() {
            return Err(TrainerError::Invalid(format!(
                "{name} owns layers in {} already: train from the family it was made from",
                cfg.parent.display()
            )));
        }
        // Its own head, else the shared one (a profile without its own runs that).
        let head_name = format!("heads.{}", p.head.as_deref().unwrap_or(name));
        let head = |part: &str| -> Result<Tensor> {
            Ok(tensors
                .get(&format!("{head_name}.{part}"))
                .or_else(|| tensors.get(&format!("head.{part}")))
                .ok_or_else(|| TrainerError::Invalid(format!("{name}: no head {part}")))?
                .to_dtype(DType::F32)?)
        };
        let (head_w, head_b) = (head("weight")?, head("bias")?);
        let bridges = embedder.model().bridges_of(&p.profile);
        children.push(ChildStudent::new(
            name,
            &p.profile,
            &bert,
            &tensors,
            &bridges,
            (head_w, head_b),
            own,
            &mut rng,
        )?);
    }

    std::fs::create_dir_all(&cfg.out).map_err(|e| TrainerError::io(&cfg.out, e))?;
    let state_dir = cfg.out.join("state");
    std::fs::create_dir_all(&state_dir).map_err(|e| TrainerError::io(&state_dir, e))?;
    let key = {
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(serde_json::to_vec(cfg).map_err(|e| TrainerError::Invalid(e.to_string()))?);
        h.update(weights.as_bytes());
        format!("{:x}", h.finalize())
    };
    // What the batches index and what the children are: a changed file or profile at the
    // same path must not resume onto other texts.
    let data = {
        let mut h = Sha256::new();
        hash_seqs(&mut h, texts.tokens.iter().chain(&held.seqs));
        for c in &children {
            h.update(format!("{}={};", c.name, c.profile).as_bytes());
        }
        format!("{:x}", h.finalize())
    };
    // Per child, one AdamW per parameter group (its deltas; everything else it owns), each
    // with its own rate.
    let mut opts: Vec<[AdamW; 2]> = children
        .iter()
        // Decay pulls toward 0: right for a delta, wrong for a fitted head or a norm's scale.
        .map(|_| [AdamW::new(cfg.weight_decay), AdamW::new(0.0)])
        .collect();
    let groups: Vec<[Params; 2]> = children.iter().map(ChildStudent::groups).collect();
    // The state of step N: `NAME.GROUP.N.safetensors` per child and group, named by
    // `step.json`, which is renamed into place only after all of them are written; files of
    // other steps are removed after that. A kill at any point leaves one whole state.
    let state_file = |c: &ChildStudent, g: usize, step: usize| {
        state_dir.join(format!("{}.{g}.{step}.safetensors", c.name))
    };
    let step_file = state_dir.join("step.json");
    let mut resumed_at = 0;
    if let Ok(text) = std::fs::read_to_string(&step_file) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["key"] == key && v["data"] == data {
            resumed_at = v["step"].as_u64().unwrap_or(0) as usize;
            for ((c, o), g) in children.iter().zip(&mut opts).zip(&groups) {
                for k in 0..2 {
                    load_checkpoint(&state_file(c, k, resumed_at), &g[k], &mut o[k])?;
                }
            }
        }
    }
    let mut log = MetricsLog::open(&cfg.out.join("metrics.jsonl"), |v| {
        v["step"]
            .as_u64()
            .is_some_and(|s| (s as usize) < resumed_at)
            && resumed_at > 0
    })?;
    let save = |step: usize, children: &[ChildStudent], opts: &[[AdamW; 2]]| -> Result<()> {
        for ((c, o), g) in children.iter().zip(opts).zip(&groups) {
            for k in 0..2 {
                save_checkpoint(&state_file(c, k, step), &g[k], &o[k])?;
            }
        }
        let tmp = step_file.with_extension("tmp");
        let line = serde_json::json!({"key": key, "data": data, "step": step});
        std::fs::write(&tmp, line.to_string()).map_err(|e| TrainerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &step_file).map_err(|e| TrainerError::io(&step_file, e))?;
        let keep: Vec<PathBuf> = children
            .iter()
            .flat_map(|c| (0..2).map(move |k| (c, k)))
            .map(|(c, k)| state_file(c, k, step))
            .collect();
        let entries = std::fs::read_dir(&state_dir).map_err(|e| TrainerError::io(&state_dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let stale =
                path.extension().is_some_and(|e| e == "safetensors") && !keep.contains(&path);
            if stale {
                std::fs::remove_file(&path).map_err(|e| TrainerError::io(&path, e))?;
            }
        }
        Ok(())
    };

    progress.set_message("training");
    progress.set_length(cfg.steps as u64);
    progress.set_position(resumed_at as u64);
    let mut last_checks = vec![serde_json::Value::Null; children.len()];
    if resumed_at == 0 {
        // Where the children start: the family the recipe reads.
        let mut line = serde_json::json!({"step": 0, "start": true});
        for c in &children {
            line[format!("{}_check", c.name)] = check(c, &held, &cfg.nested_dims)?;
        }
        log.write(&line)?;
    }
    for step in resumed_at..cfg.steps {
        let step_start = Instant::now();
        let short_stage = step < cfg.short_steps();
        let idx = batch_of(cfg, &texts, step);
        let seqs: Vec<Vec<u32>> = idx
            .iter()
            .map(|&i| match short_stage {
                true => short[i].clone(),
                false => texts.tokens[i].clone(),
            })
            .collect();
        let rows: Vec<Vec<f32>> = idx
            .iter()
            .map(|&i| match short_stage {
                true => t_short[i].clone(),
                false => t_long[i].clone(),
            })
            .collect();
        let t = Tensor::new(rows, &Device::Cpu)?;
        let (ids, pos, spans, pool) = packed(&seqs)?;
        let lr = lr_at(step, cfg.warmup, cfg.steps, cfg.lr);
        let mut line = serde_json::json!({"step": step, "lr": lr, "tokens": if short_stage { cfg.short_tokens } else { max }});
        let lr_own = lr_at(step, cfg.warmup, cfg.steps, cfg.lr_own);
        for ((c, o), g) in children.iter().zip(&mut opts).zip(&groups) {
            let s = c.forward(&ids, &pos, &spans, &pool)?;
            let loss = child_loss(cfg, &s, &t, cfg.batch_pairs)?;
            let grads = loss.backward()?;
            let norm = grad_norm(c.params(), &grads)?;
            let clip = clip_factor(norm, cfg.clip);
            o[0].update(&g[0], &grads, lr, clip)?;
            o[1].update(&g[1], &grads, lr_own, clip)?;
            line[&c.name] = serde_json::json!({
                "loss": loss.to_scalar::<f32>()?,
                "grad_norm": norm,
            });
        }
        let done = step + 1;
        if done % cfg.eval_every == 0 || done == cfg.steps {
            for (k, c) in children.iter().enumerate() {
                last_checks[k] = check(c, &held, &cfg.nested_dims)?;
                line[format!("{}_check", c.name)] = last_checks[k].clone();
            }
        }
        line["seconds"] = serde_json::json!(step_start.elapsed().as_secs_f64());
        log.write(&line)?;
        if done % cfg.checkpoint_every == 0 || done == cfg.steps {
            save(done, &children, &opts)?;
        }
        progress.set_position(done as u64);
    }
    if last_checks.iter().any(serde_json::Value::is_null) {
        for (k, c) in children.iter().enumerate() {
            last_checks[k] = check(c, &held, &cfg.nested_dims)?;
        }
    }
    progress.set_message("writing the checkpoint");
    write_model(cfg, &manifest, tensors, &children, &last_checks)?;
    Ok(ChildrenSummary {
        seconds: start.elapsed().as_secs_f64(),
        steps: cfg.steps,
        resumed_at,
        texts: texts.tokens.len(),
        children: children
            .iter()
            .zip(last_checks)
            .map(|(c, v)| (c.name.clone(), c.own_params(), v))
            .collect(),
    })
}

/// `out/model`: the parent's folder with the children's tensors in its weights and
/// `own_layers` set on their profiles in `mrl.json`; alignments are dropped (the judge earns
/// them again).
fn write_model(
    cfg: &ChildrenConfig,
    manifest: &mrl_encoder::manifest::Manifest,
    mut tensors: HashMap<String, Tensor>,
    children: &[ChildStudent],
    checks: &[serde_json::Value],
) -> Result<()> {
    // The children's tensors are stored as the parent's are (f16 in the shipped default).
    let prefix = mrl_encoder::arch::tensor_prefix(|n| tensors.contains_key(n));
    let dtype = tensors
        .get(&format!("{prefix}embeddings.word_embeddings.weight"))
        .map_or(DType::F32, Tensor::dtype);
    for c in children {
        for (name, t) in c.export()? {
            tensors.insert(name, t.to_dtype(dtype)?);
        }
    }
    let mut out = manifest.clone();
    out.format = mrl_encoder::manifest::FORMAT;
    for p in &mut out.profiles {
        p.aligned_with.clear();
        if let Some(c) = children.iter().find(|c| c.name == p.name) {
            // The trained tensors are named after the child (`ChildStudent::export`).
            p.own_layers = Some(c.name.clone());
            p.head = Some(c.name.clone());
            p.bridges = c.has_bridges().then(|| c.name.clone());
            // Measured on the calibration's vectors, which training changed.
            p.fidelity = None;
        }
    }
    out.provenance = serde_json::json!({
        "trained_from": cfg.parent,
        "method": "children distilled end to end from the frozen parent on generic text: low-rank deltas, own biases and LayerNorms on the layers each child runs, its bridges and head (trainer/src/children)",
        "recipe": cfg,
        "held_out": children.iter().zip(checks).map(|(c, v)| (c.name.clone(), v.clone())).collect::<HashMap<_, _>>(),
        "own_params": children.iter().map(|c| (c.name.clone(), c.own_params())).collect::<HashMap<_, _>>(),
        "parent_provenance": manifest.provenance,
    });
    let model_dir = cfg.out.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|e| TrainerError::io(&model_dir, e))?;
    }
    crate::calibrate::write_checkpoint(&cfg.parent, &model_dir, &tensors, &out)?;
    // What the parent's folder said about its own making and judging is not this model's.
    // (The recipe is in `mrl.json`'s provenance.)
    for stale in ["judge.json", "training-log.jsonl", "recipe.toml"] {
        let path = model_dir.join(stale);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| TrainerError::io(&path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> (PathBuf, String) {
        let path = crate::test_support::manifest_dir().join("../configs/minilm-children.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    fn load_text(text: &str) -> Result<ChildrenConfig> {
        let tmp = std::env::temp_dir().join(format!(
            "mrl-children-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&tmp, text).unwrap();
        let out = ChildrenConfig::load(&tmp);
        std::fs::remove_file(&tmp).unwrap();
        out
    }

    /// The shipped recipe reads generic text only; naming a dev set, or settings that would
    /// divide by zero, is refused before anything runs.
    #[test]
    fn the_shipped_recipe_loads_and_bad_ones_are_refused() {
        let (path, text) = recipe();
        let cfg = ChildrenConfig::load(&path).unwrap();
        assert!(cfg.passages.to_string_lossy().contains("generic"));
        assert!(cfg.pairs.to_string_lossy().contains("generic"));
        let scifact = text.replace(
            "../shared/data/generic/pairs.jsonl",
            "../shared/data/scifact/queries.jsonl",
        );
        let err = load_text(&scifact).unwrap_err().to_string();
        assert!(err.contains("scifact"), "{err}");
        for (from, to) in [
            ("eval_every = 150", "eval_every = 0"),
            ("checkpoint_every = 20", "checkpoint_every = 0"),
            ("temperature = 0.05", "temperature = 0.0"),
            ("lr = 5e-4", "lr = 0.0"),
            ("rank = 32", "rank = 0"),
        ] {
            assert!(text.contains(from), "{from}");
            let err = load_text(&text.replace(from, to)).unwrap_err();
            assert!(matches!(err, TrainerError::Invalid(_)), "{to}: {err}");
        }
    }

    /// A step's batch depends on the seed and the step alone (what resuming relies on), mixes
    /// passages and pairs as configured, and walks through every passage within an epoch.
    #[test]
    fn a_steps_batch_is_a_function_of_the_seed_and_the_step() {
        let (path, _) = recipe();
        let cfg = ChildrenConfig::load(&path).unwrap();
        let texts = Texts {
            tokens: vec![vec![1]; 500 + 2 * 100],
            passages: 500,
            pairs: 100,
            held: Vec::new(),
        };
        let a = batch_of(&cfg, &texts, 7);
        assert_eq!(a, batch_of(&cfg, &texts, 7));
        assert_ne!(a, batch_of(&cfg, &texts, 8));
        assert_eq!(a.len(), cfg.batch_passages + 2 * cfg.batch_pairs);
        let (passages, rest) = a.split_at(cfg.batch_passages);
        assert!(passages.iter().all(|&i| i < 500));
        let (queries, positives) = rest.split_at(cfg.batch_pairs);
        for (q, p) in queries.iter().zip(positives) {
            assert_eq!(p - q, 100, "a query and its positive");
        }
        let per_epoch = 500 / cfg.batch_passages;
        let mut seen: Vec<usize> = (0..per_epoch)
            .flat_map(|s| batch_of(&cfg, &texts, s)[..cfg.batch_passages].to_vec())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            per_epoch * cfg.batch_passages,
            "no passage twice in an epoch"
        );
    }
}
