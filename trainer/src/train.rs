//! The training loop of `mrl train --config FILE`: pairs → seeded length-aware batches →
//! tokens → the frozen parent's embeddings (the inference encoder, no gradient) and the
//! student's under the curriculum's budget (`elastic::step_loss`) → clipped AdamW updates of
//! the model and the router (separate rates, warmup + cosine for the model) → a checkpoint
//! every N steps (weights, optimizer moments, router, step, RNG states) from which a killed
//! run resumes on the same trajectory → the output checkpoint with the router's profiles.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::ProgressBar;
use mrl_encoder::manifest::{BudgetChoice, Manifest};
use mrl_encoder::{Embedder, Profile};
use serde::{Deserialize, Serialize};

use crate::curriculum::Curriculum;
use crate::data::{beir_pairs, jsonl_pairs, length_aware_batches, sts_pairs, Pair};
use crate::dev::{DevSet, EvalConfig};
use crate::elastic::{step_loss, CostModel, ElasticSpace, LossConfig, StepInputs, StepLog};
use crate::metrics::MetricsLog;
use crate::optim::{
    accumulate_grads, clip_factor, grad_norm, load_checkpoint, lr_at, params_of, save_checkpoint,
    AdamW, Params,
};
use crate::rotation::Rotation;
use crate::router::{schedule, Rng, Router};
use crate::student::{Batch, Kernels, MatryoshkaHead, StudentBert};
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

    fn pairs(&self) -> Result<Vec<Pair>> {
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

/// The `d × d` identity, row-major.
fn identity(d: usize) -> Vec<f32> {
    let mut m = vec![0f32; d * d];
    m.iter_mut().step_by(d + 1).for_each(|x| *x = 1.0);
    m
}

/// The rotation onto the principal axes of the parent's embeddings of (up to `limit` of)
/// `texts`, taken evenly through them, each cut at `max_tokens`.
pub fn fit_rotation(
    parent: &Embedder,
    texts: &[&str],
    limit: usize,
    max_tokens: usize,
) -> Result<Rotation> {
    let step = texts.len().div_ceil(limit.max(1)).max(1);
    let picked: Vec<&str> = texts.iter().step_by(step).copied().collect();
    let tokens = crate::calibrate::cut(parent.tokenizer().encode(&picked)?, max_tokens);
    let vectors = parent.embed_tokens(&tokens, &Profile::full(parent.config()), 64)?;
    Ok(Rotation::fit(&vectors)?)
}

/// Position of a run, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    step: usize,
    noise: Rng,
    sampler: Rng,
    config: TrainConfig,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub resumed_at: usize,
    pub seconds: f64,
    pub pairs: usize,
    /// Budget → the router's argmax profile.
    pub profiles: Vec<(f64, Profile)>,
}

/// The frozen parent's full-profile embeddings, computed once per distinct text (its token
/// ids) and kept for the run: the parent never changes, so a text seen again (a document
/// judged for several queries, a query with several judged documents, the next epoch) costs
/// a lookup instead of a forward pass.
#[derive(Default)]
struct TeacherCache {
    rows: HashMap<Vec<u32>, Vec<f32>>,
}

impl TeacherCache {
    /// `[seqs.len(), width]`: the cached row of each sequence, after `forward` has embedded
    /// the missing ones (each distinct sequence once, in one call).
    ///
    /// Errors: what `forward` returns, or rows of unequal widths.
    fn embed(
        &mut self,
        seqs: &[Vec<u32>],
        device: &Device,
        forward: impl FnOnce(&[Vec<u32>]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Tensor> {
        let mut missing: Vec<Vec<u32>> = Vec::new();
        for s in seqs {
            if !self.rows.contains_key(s) && !missing.contains(s) {
                missing.push(s.clone());
            }
        }
        if !missing.is_empty() {
            let vectors = forward(&missing)?;
            self.rows.extend(missing.into_iter().zip(vectors));
        }
        let mut flat = Vec::new();
        let mut width = None;
        for s in seqs {
            let row = self
                .rows
                .get(s)
                .ok_or_else(|| TrainerError::Invalid("the teacher returned too few rows".into()))?;
            if *width.get_or_insert(row.len()) != row.len() {
                return Err(TrainerError::Invalid(
                    "teacher rows of unequal widths".into(),
                ));
            }
            flat.extend_from_slice(row);
        }
        Ok(Tensor::from_vec(
            flat,
            (seqs.len(), width.unwrap_or(0)),
            device,
        )?)
    }
}

/// Runs (or resumes) the recipe.
pub fn train(cfg: &TrainConfig, progress: &ProgressBar) -> Result<TrainSummary> {
    let mut trainer = Trainer::new(cfg, progress)?;
    // A resumed run logged its step-0 check before it stopped.
    if trainer.resumed_at == 0 {
        trainer.dev_check(0)?;
    }
    while trainer.state.step < cfg.steps {
        trainer.step()?;
        trainer.dev_check(trainer.state.step)?;
        trainer.checkpoint()?;
    }
    trainer.finish()
}

/// One run of a recipe: everything `train` sets up once and then advances a step at a time.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    progress: &'a ProgressBar,
    /// When the run (this process's part of it) began: the logs' `seconds`.
    start: Instant,
    device: Device,
    /// The frozen parent: tokenizer, teacher embeddings and the inference encoder's config.
    teacher: Embedder,
    bert: mrl_encoder::BertConfig,
    manifest: Manifest,
    student: StudentBert,
    head: Option<MatryoshkaHead>,
    space: ElasticSpace,
    router: Router,
    cost_model: CostModel,
    curriculum: Curriculum,
    learner: Learner,
    pairs: Vec<Pair>,
    unlabeled: Vec<String>,
    ckpt: PathBuf,
    state: RunState,
    resumed_at: usize,
    /// `metrics.jsonl`: a JSON line per step and per dev check.
    metrics: MetricsLog,
    full: Profile,
    dev: Option<(&'a EvalConfig, DevSet)>,
    /// The current epoch's batches, rebuilt when a micro-step crosses into the next epoch.
    epoch_batches: Option<(usize, Vec<Vec<usize>>)>,
    teacher_cache: TeacherCache,
}

/// The trained variables and their optimizers: what a checkpoint saves and a resume loads.
struct Learner {
    model: Params,
    router: Params,
    opt: AdamW,
    ropt: AdamW,
}

impl<'a> Trainer<'a> {
    /// Loads the parent and the data, builds the student, its head, the router and the
    /// optimizers, resumes from the out folder's checkpoint if there is one, and opens the
    /// metrics log and the dev set.
    ///
    /// Errors: the parent is not calibrated (no `mrl.json` or no ranking), the checkpoint
    /// holds another recipe's run, or any file cannot be read or written.
    fn new(cfg: &'a TrainConfig, progress: &'a ProgressBar) -> Result<Self> {
        let start = Instant::now();
        let device = Device::Cpu;
        let (teacher, manifest, drop_order) = crate::calibrate::load_parent(&cfg.parent)?;
        let bert = teacher.config().clone();
        let tensors =
            candle_core::safetensors::load(cfg.parent.join("model.safetensors"), &device)?;
        let model_vars = VarMap::new();
        let student = StudentBert::from_tensors(&tensors, &bert, &model_vars, DType::F32, &device)?;
        // The head and the router draw from one stream, in this order: swapping them would
        // change every initial weight, and with them every loss.
        let mut init_rng = Rng::new(cfg.seed ^ 0x5EED);
        let pairs = cfg.pairs()?;
        let unlabeled = match &cfg.unlabeled {
            Some(u) => crate::data::sample_texts(&u.paths, u.limit)?,
            None => Vec::new(),
        };
        let ckpt = cfg.out.join("checkpoint");
        let head = build_head(
            cfg,
            &teacher,
            (&pairs, &unlabeled),
            &model_vars,
            &device,
            &mut init_rng,
            &ckpt,
        )?;
        let space = ElasticSpace::quarters(&bert, drop_order);
        let (router, router_params) = build_router(cfg, &space, &device, &mut init_rng)?;
        let cost_model = CostModel::new(&bert, mrl_encoder::manifest::COST_SEQ_LEN);
        let mut all_budgets = vec![1.0];
        all_budgets.extend(&cfg.budgets);
        let curriculum = Curriculum::new(all_budgets, cfg.uniform_steps, cfg.skew.clone())?;
        let mut learner = Learner {
            model: params_of(&model_vars),
            router: router_params,
            opt: AdamW::new(cfg.weight_decay),
            ropt: AdamW::new(0.0),
        };
        std::fs::create_dir_all(&cfg.out).map_err(|e| TrainerError::io(&cfg.out, e))?;
        let state = learner.resume(cfg, &ckpt)?;
        let resumed_at = state.step;
        // Steps logged after the last checkpoint are redone: their lines go, so each step
        // appears once.
        let metrics = MetricsLog::open(&cfg.out.join("metrics.jsonl"), |v| {
            v["step"].as_u64().is_some_and(|s| s as usize <= resumed_at)
        })?;
        progress.set_length(cfg.steps as u64);
        progress.set_position(state.step as u64);
        let full = Profile::full(&bert);
        let dev = match &cfg.eval {
            Some(e) => Some((e, DevSet::load(e, teacher.tokenizer())?)),
            None => None,
        };
        Ok(Self {
            cfg,
            progress,
            start,
            device,
            teacher,
            bert,
            manifest,
            student,
            head,
            space,
            router,
            cost_model,
            curriculum,
            learner,
            pairs,
            unlabeled,
            ckpt,
            state,
            resumed_at,
            metrics,
            full,
            dev,
            epoch_batches: None,
            teacher_cache: TeacherCache::default(),
        })
    }

    /// One update: the curriculum's budget for this step, `accumulate` micro-batches'
    /// gradients summed, clipped, applied by both optimizers, then the step's metrics line.
    fn step(&mut self) -> Result<()> {
        let cfg = self.cfg;
        let step = self.state.step;
        let which = self.curriculum.sample(step, &mut self.state.sampler);
        let budget = (which > 0).then(|| which - 1);
        let anneal = schedule(step, cfg.steps);
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut total = 0.0;
        let mut log = None;
        for micro in step * cfg.accumulate..(step + 1) * cfg.accumulate {
            let (loss, micro_log) = self.micro_loss(micro, budget, anneal)?;
            let loss = if cfg.accumulate > 1 {
                (loss / cfg.accumulate as f64)?
            } else {
                loss
            };
            total += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let mut g = loss.backward()?;
            self.student
                .fill_closed_layers(&micro_log.closed_layers, &mut g)?;
            match &mut grads {
                None => grads = Some(g),
                Some(acc) => {
                    accumulate_grads(&self.learner.model, acc, &g)?;
                    accumulate_grads(&self.learner.router, acc, &g)?;
                }
            }
            log = Some(micro_log);
        }
        let grads = grads.expect("accumulate ≥ 1 is validated");
        let log = log.expect("accumulate ≥ 1 is validated");
        let learner = &mut self.learner;
        // The model's gradients are clipped; the router's are not.
        let grad_norm = grad_norm(&learner.model, &grads)?;
        let lr = lr_at(step, cfg.warmup, cfg.steps, cfg.lr);
        let scale = clip_factor(grad_norm, cfg.clip);
        learner.opt.update(&learner.model, &grads, lr, scale)?;
        learner
            .ropt
            .update(&learner.router, &grads, cfg.router_lr, 1.0)?;
        self.state.step += 1;
        self.metrics.write(&serde_json::json!({
            "step": self.state.step, "loss": total, "lr": lr, "grad_norm": grad_norm,
            "gumbel_temperature": anneal.0, "logit_scale": anneal.1,
            "seconds": self.start.elapsed().as_secs_f64(), "detail": log,
        }))?;
        self.progress.set_position(self.state.step as u64);
        self.progress.set_message(format!(
            "loss {total:.3} lr {lr:.1e} τ {:.2} budget {:.2}",
            anneal.0, log.budget
        ));
        Ok(())
    }

    /// The loss of micro-step `micro` (not yet divided by `accumulate`): its batch of pairs
    /// and, with `[unlabeled]`, its slice of plain texts, against the teacher's embeddings.
    fn micro_loss(
        &mut self,
        micro: usize,
        budget: Option<usize>,
        anneal: (f64, f64),
    ) -> Result<(Tensor, StepLog)> {
        let cfg = self.cfg;
        let pairs = &self.pairs;
        let batch = Self::batch_of(&mut self.epoch_batches, pairs, cfg, micro);
        let (teacher, device, full) = (&self.teacher, &self.device, &self.full);
        let tokenize = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
            Ok(crate::calibrate::cut(
                teacher.tokenizer().encode(&texts)?,
                cfg.max_tokens,
            ))
        };
        let q = tokenize(batch.iter().map(|&i| pairs[i].query.as_str()).collect())?;
        let d = tokenize(batch.iter().map(|&i| pairs[i].positive.as_str()).collect())?;
        let cache = &mut self.teacher_cache;
        let parent = |batch: usize| {
            move |seqs: &[Vec<u32>]| -> Result<Vec<Vec<f32>>> {
                Ok(teacher.model().forward_all(seqs, full, batch)?)
            }
        };
        let tq = cache.embed(&q, device, parent(cfg.batch))?;
        let td = cache.embed(&d, device, parent(cfg.batch))?;
        let qb = Batch::new(&q, cfg.kernels, device)?;
        let db = Batch::new(&d, cfg.kernels, device)?;
        let unlabeled = &self.unlabeled;
        let plain = match &cfg.unlabeled {
            Some(u) if !unlabeled.is_empty() => {
                let texts: Vec<&str> = (0..u.batch)
                    .map(|k| unlabeled[(micro * u.batch + k) % unlabeled.len()].as_str())
                    .collect();
                let t = tokenize(texts)?;
                let want = cache.embed(&t, device, parent(u.batch))?;
                Some((Batch::new(&t, cfg.kernels, device)?, want))
            }
            _ => None,
        };
        let inputs = StepInputs {
            student: &self.student,
            head: self.head.as_ref(),
            router: &self.router,
            space: &self.space,
            cost_model: &self.cost_model,
            loss: &cfg.loss,
        };
        Ok(step_loss(
            &inputs,
            &qb,
            &db,
            (&tq, &td),
            plain.as_ref().map(|(b, w)| (b, w)),
            budget,
            anneal,
            &mut self.state.noise,
        )?)
    }

    /// The pair indices of micro-step `micro`'s batch, from `current` when it holds that
    /// micro-step's epoch, else from the epoch's batches, which then replace it.
    fn batch_of<'b>(
        current: &'b mut Option<(usize, Vec<Vec<usize>>)>,
        pairs: &[Pair],
        cfg: &TrainConfig,
        micro: usize,
    ) -> &'b [usize] {
        // Batches are a pure function of (seed, epoch), so a resumed run sees the same ones.
        let per_epoch = pairs.len().div_ceil(cfg.batch).max(1);
        let epoch = micro / per_epoch;
        if current.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let b = length_aware_batches(pairs, cfg.batch, cfg.seed.wrapping_add(epoch as u64));
            *current = Some((epoch, b));
        }
        let batches = &current.as_ref().expect("set just above").1;
        &batches[(micro % per_epoch) % batches.len()]
    }

    /// With `[eval]`, at every `every`-th step and the last: NDCG@10 of the current weights
    /// per profile (full, then the router's choice per budget) × nested dim, logged to the
    /// metrics and printed.
    fn dev_check(&mut self, step: usize) -> Result<()> {
        let cfg = self.cfg;
        let Some((e, set)) = &self.dev else {
            return Ok(());
        };
        if !(step.is_multiple_of(e.every.max(1)) || step == cfg.steps) {
            return Ok(());
        }
        let t = Instant::now();
        let tensors = self
            .learner
            .model
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let model = mrl_encoder::BertModel::from_tensors(tensors, &self.bert)?;
        let mut named = vec![("full".to_string(), self.full.clone())];
        named.extend(
            self.router_profiles()?
                .into_iter()
                .map(|(b, p)| (budget_name(b), p)),
        );
        let mut scores = serde_json::Map::new();
        let mut shown = Vec::new();
        for (name, p) in &named {
            let row = set.ndcg(&model, p, &cfg.loss.nested_dims)?;
            shown.push(format!(
                "{name} {}",
                row.iter()
                    .map(|(d, v)| format!("{d}:{v:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            let row: serde_json::Map<String, serde_json::Value> = row
                .into_iter()
                .map(|(d, v)| (d.to_string(), v.into()))
                .collect();
            scores.insert(name.clone(), row.into());
        }
        let (nq, nd) = set.sizes();
        self.metrics.write(&serde_json::json!({
            "step": step, "dev_ndcg_at_10": scores, "dev_queries": nq, "dev_docs": nd,
            "dev_seconds": t.elapsed().as_secs_f64(),
        }))?;
        self.progress
            .println(format!("step {step} dev NDCG@10: {}", shown.join(" | ")));
        Ok(())
    }

    /// Saves the run every `checkpoint_every` steps and after the last.
    fn checkpoint(&self) -> Result<()> {
        let step = self.state.step;
        if step.is_multiple_of(self.cfg.checkpoint_every.max(1)) || step == self.cfg.steps {
            self.learner.save(&self.ckpt, &self.state)?;
        }
        Ok(())
    }

    /// Writes the output checkpoint with the router's final profiles and reports the run.
    fn finish(self) -> Result<TrainSummary> {
        let profiles = self.router_profiles()?;
        write_output(
            self.cfg,
            &self.manifest,
            &self.bert,
            &self.learner.model,
            &profiles,
        )?;
        Ok(TrainSummary {
            steps: self.state.step,
            resumed_at: self.resumed_at,
            seconds: self.start.elapsed().as_secs_f64(),
            pairs: self.pairs.len(),
            profiles,
        })
    }

    /// The router's current choice per budget (argmax, no noise).
    fn router_profiles(&self) -> Result<Vec<(f64, Profile)>> {
        let space = &self.space;
        self.cfg
            .budgets
            .iter()
            .enumerate()
            .map(|(b, &budget)| {
                let picks = self.router.argmax(b, DType::F32, &self.device)?;
                Ok((
                    budget,
                    Profile {
                        layers: space.kept_layers(space.depths[picks[0]]),
                        heads: space.heads[picks[1]],
                        ffn: space.ffn[picks[2]],
                        hidden: self.bert.hidden_size,
                    },
                ))
            })
            .collect()
    }
}

/// The router over `space`'s axes for the recipe's budgets, and its variables.
fn build_router(
    cfg: &TrainConfig,
    space: &ElasticSpace,
    device: &Device,
    init_rng: &mut Rng,
) -> Result<(Router, Params)> {
    let vars = VarMap::new();
    let router = Router::new(
        cfg.budgets.clone(),
        &space.axes(),
        cfg.router_hidden,
        &vars,
        DType::F32,
        device,
        init_rng,
    )?;
    Ok((router, params_of(&vars)))
}

/// The Matryoshka head as `[head]` starts it (`None`: identity init within the parent's
/// width needs no head). A rotation is fitted on the unlabeled texts, else on the pairs'
/// documents, unless `ckpt` holds a checkpoint to load the head from; `init_rng` draws an
/// identity head's rows beyond the parent's width.
fn build_head(
    cfg: &TrainConfig,
    teacher: &Embedder,
    (pairs, unlabeled): (&[Pair], &[String]),
    vars: &VarMap,
    device: &Device,
    init_rng: &mut Rng,
    ckpt: &Path,
) -> Result<Option<MatryoshkaHead>> {
    let hidden = teacher.config().hidden_size;
    let head_width = *cfg
        .loss
        .nested_dims
        .iter()
        .max()
        .expect("validated non-empty");
    Ok(match cfg.head.init {
        HeadInit::Identity if head_width > hidden => Some(MatryoshkaHead::new(
            hidden,
            head_width,
            vars,
            DType::F32,
            device,
            init_rng,
        )?),
        HeadInit::Identity => None,
        HeadInit::Rotation => {
            // A resumed run loads the head from its checkpoint: no fit needed.
            let rotation = if checkpoint_dir(ckpt).is_some() {
                identity(hidden)
            } else {
                let limit = cfg.head.fit_texts.unwrap_or(2048);
                let texts: Vec<&str> = if unlabeled.is_empty() {
                    pairs.iter().map(|p| p.positive.as_str()).collect()
                } else {
                    unlabeled.iter().map(String::as_str).collect()
                };
                let fitted = fit_rotation(teacher, &texts, limit, cfg.max_tokens)?;
                tracing::info!(
                    "head: rotation fitted on {} texts; 64 axes hold {:.1}% of their energy",
                    texts.len().min(limit),
                    100.0 * fitted.energy(64)
                );
                fitted.matrix_f32()
            };
            Some(MatryoshkaHead::from_rotation(
                &rotation,
                head_width.max(hidden),
                vars,
                DType::F32,
                device,
            )?)
        }
    })
}

impl Learner {
    /// The run's position: step 0 with the seeded RNGs, or the saved one when `ckpt` (or its
    /// `.old` twin) holds a checkpoint, whose weights and optimizer moments are then loaded.
    ///
    /// Errors: `Invalid` when the checkpoint is another recipe's or its state is unreadable.
    fn resume(&mut self, cfg: &TrainConfig, ckpt: &Path) -> Result<RunState> {
        let fresh = RunState {
            step: 0,
            noise: Rng::new(cfg.seed),
            sampler: Rng::new(cfg.seed.wrapping_add(1)),
            config: cfg.clone(),
        };
        let Some(found) = checkpoint_dir(ckpt) else {
            return Ok(fresh);
        };
        let state_path = found.join("state.json");
        let saved: RunState = serde_json::from_slice(
            &std::fs::read(&state_path).map_err(|e| TrainerError::io(&state_path, e))?,
        )
        .map_err(|e| TrainerError::Invalid(format!("{}: {e}", state_path.display())))?;
        if saved.config != *cfg {
            return Err(TrainerError::Invalid(format!(
                "{} holds a run of another config; use a new out folder",
                found.display()
            )));
        }
        load_checkpoint(&found.join("model.safetensors"), &self.model, &mut self.opt)?;
        load_checkpoint(
            &found.join("router.safetensors"),
            &self.router,
            &mut self.ropt,
        )?;
        Ok(saved)
    }

    /// Saves the weights, the moments and `state` as the checkpoint at `ckpt`.
    fn save(&self, ckpt: &Path, state: &RunState) -> Result<()> {
        save_run(
            ckpt,
            &self.model,
            &self.opt,
            &self.router,
            &self.ropt,
            state,
        )
    }
}

/// A budget's profile name in the output manifest: 0.5 → `b50`.
fn budget_name(budget: f64) -> String {
    format!("b{}", (budget * 100.0).round())
}

/// Writes the whole checkpoint into a fresh folder, then swaps it in: at any crash point
/// either the old or the new checkpoint is complete on disk (`checkpoint.old` covers the
/// moment between the two renames; [`checkpoint_dir`] finds it).
fn save_run(
    dir: &Path,
    model: &Params,
    opt: &AdamW,
    router: &Params,
    ropt: &AdamW,
    state: &RunState,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    save_checkpoint(&tmp.join("model.safetensors"), model, opt)?;
    save_checkpoint(&tmp.join("router.safetensors"), router, ropt)?;
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainerError::Invalid(format!("state: {e}")))?;
    std::fs::write(tmp.join("state.json"), bytes).map_err(|e| TrainerError::io(&tmp, e))?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| TrainerError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainerError::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
    }
    Ok(())
}

/// The complete checkpoint folder to resume from, if any.
fn checkpoint_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.with_extension("old")]
        .into_iter()
        .find(|d| d.join("state.json").exists())
}

/// The trained checkpoint: the parent's files, the student's weights, and an `mrl.json`
/// listing the router's profile per budget, the nested dims and the recipe.
fn write_output(
    cfg: &TrainConfig,
    parent: &Manifest,
    bert: &mrl_encoder::BertConfig,
    params: &Params,
    profiles: &[(f64, Profile)],
) -> Result<()> {
    let tensors = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let mut named = vec![crate::calibrate::named(
        "full".into(),
        Profile::full(bert),
        bert,
        None,
    )];
    let mut budgets = Vec::new();
    for (budget, p) in profiles {
        let name = budget_name(*budget);
        budgets.push(BudgetChoice {
            budget: *budget,
            profile: name.clone(),
        });
        named.push(crate::calibrate::named(name, p.clone(), bert, None));
    }
    let manifest = Manifest {
        nested_dims: cfg.loss.nested_dims.clone(),
        profiles: named,
        budgets,
        provenance: serde_json::json!({
            "trained_from": cfg.parent,
            "recipe": cfg,
            "parent_provenance": parent.provenance,
        }),
        ..parent.clone()
    };
    let model_dir = cfg.out.join("model");
    if model_dir.exists() {
        std::fs::remove_dir_all(&model_dir).map_err(|e| TrainerError::io(&model_dir, e))?;
    }
    crate::calibrate::write_checkpoint(&cfg.parent, &model_dir, &tensors, &manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each distinct text reaches the teacher once over the run; rows come back in the
    /// batch's order, repeats included.
    #[test]
    fn the_teacher_embeds_each_text_once() {
        let mut cache = TeacherCache::default();
        let mut seen: Vec<Vec<u32>> = Vec::new();
        let mut run = |seqs: &[Vec<u32>]| {
            cache
                .embed(seqs, &Device::Cpu, |missing| {
                    seen.extend(missing.iter().cloned());
                    Ok(missing
                        .iter()
                        .map(|s| vec![s[0] as f32, s.len() as f32])
                        .collect())
                })
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let first = run(&[vec![1, 2], vec![3], vec![1, 2]]);
        assert_eq!(first, [[1.0, 2.0], [3.0, 1.0], [1.0, 2.0]]);
        let second = run(&[vec![3], vec![4, 5, 6]]);
        assert_eq!(second, [[3.0, 1.0], [4.0, 3.0]]);
        assert_eq!(seen, [vec![1, 2], vec![3], vec![4, 5, 6]]);
    }

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
