//! The training loop of `mrl train --config FILE`: pairs → seeded length-aware batches →
//! tokens → the frozen parent's embeddings (the inference encoder, no gradient) and the
//! student's under the curriculum's budget (`elastic::step_loss`) → clipped AdamW updates of
//! the model and the router (separate rates, warmup + cosine for the model) → a checkpoint
//! every N steps (weights, optimizer moments, router, step, RNG states) from which a killed
//! run resumes on the same trajectory → the output checkpoint with the router's profiles.
//!
//! The files: `recipe.rs` (the TOML recipe), `head.rs` (the Matryoshka head's start),
//! `teacher.rs` (the parent's embeddings, once per text), `checkpoint.rs` (the resumable
//! checkpoint), `output.rs` (the trained checkpoint the run writes); the loop is here.

mod checkpoint;
mod head;
mod output;
mod recipe;
mod teacher;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use indicatif::ProgressBar;
use mrl_encoder::manifest::Manifest;
use mrl_encoder::{Embedder, Profile};
use serde::Serialize;

use crate::curriculum::Curriculum;
use crate::data::{length_aware_batches, Pair};
use crate::dev::{DevSet, EvalConfig};
use crate::elastic::{step_loss, CostModel, ElasticSpace, StepInputs, StepLog};
use crate::metrics::MetricsLog;
use crate::optim::{accumulate_grads, clip_factor, grad_norm, lr_at, params_of, AdamW, Params};
use crate::router::{schedule, Rng, Router};
use crate::student::{Batch, MatryoshkaHead, StudentBert};
use crate::{Result, TrainerError};

pub use head::fit_rotation;
pub(crate) use recipe::read_recipe;
pub use recipe::{HeadConfig, HeadInit, Source, TrainConfig, UnlabeledConfig};

use checkpoint::{Learner, RunState};
use head::build_head;
use output::{budget_name, write_output};
use teacher::TeacherCache;

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
