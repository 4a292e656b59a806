//! The workload of `mrl bench train`: full training steps (the student's forward under a
//! profile's gates, Matryoshka InfoNCE and distillation toward cached teacher embeddings,
//! backward, gradient clipping, AdamW) at a recipe's shapes, on fixed batches of real pairs,
//! by either kernel set; and the same workload written out (`write_spec`) for its PyTorch
//! twin, `scripts/bench_train.py`, so both run the same steps on the same data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use mrl_encoder::{Embedder, Profile};

use crate::data::{beir_pairs, length_aware_batches};
use crate::elastic::{task_loss, LossConfig, TaskInputs};
use crate::optim::{clip_factor, grad_norm, params_of, AdamW};
use crate::router::Rng;
use crate::student::{Batch, Gates, Kernels, MatryoshkaHead, StudentBert};
use crate::{Result, TrainerError};

/// What `mrl bench train` measures; the defaults are `configs/minilm-elastic.toml`'s shapes.
#[derive(Debug, Clone)]
pub struct StepBenchOptions {
    /// The model whose weights start the student (and whose profiles name the gates).
    pub model: PathBuf,
    /// A BEIR folder and split whose (query, judged document) pairs fill the batches.
    pub data: PathBuf,
    pub split: String,
    /// Pairs per step.
    pub batch: usize,
    /// Tokens per text at most.
    pub max_tokens: usize,
    /// Steps timed, after `warmup` steps that are not.
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    pub loss: LossConfig,
    pub lr: f64,
    pub weight_decay: f64,
    pub clip: f64,
}

impl StepBenchOptions {
    /// The elastic recipe's shapes on `model` and SciFact's train pairs.
    pub fn new(model: PathBuf, data: PathBuf) -> Self {
        Self {
            model,
            data,
            split: "train".into(),
            batch: 32,
            max_tokens: 128,
            steps: 4,
            warmup: 1,
            seed: 17,
            loss: LossConfig {
                nested_dims: vec![64, 128, 256, 384, 512],
                dim_weights: vec![2.0, 1.5, 1.0, 1.0, 1.0],
                temperature: 0.05,
                distill_weight: 1.0,
                distill_temperature: 0.05,
                cost_weight: 1.0,
                align_weight: 0.0,
            },
            lr: 3e-5,
            weight_decay: 0.01,
            clip: 1.0,
        }
    }
}

/// One step's data: token ids of the queries and their positives, and the teacher's
/// embeddings of both (computed once, as the trainer's cache does).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepBatch {
    pub queries: Vec<Vec<u32>>,
    pub positives: Vec<Vec<u32>>,
    pub teacher_queries: Vec<Vec<f32>>,
    pub teacher_positives: Vec<Vec<f32>>,
}

impl StepBatch {
    /// Real (unpadded) tokens in the step.
    pub fn tokens(&self) -> usize {
        self.queries
            .iter()
            .chain(&self.positives)
            .map(Vec::len)
            .sum()
    }
}

/// Timings and losses of one kernel set on one profile.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// Seconds of each timed step.
    pub seconds: Vec<f64>,
    /// Real tokens per timed step, on average.
    pub tokens_per_step: f64,
    /// The loss of every step, warm-up included.
    pub losses: Vec<f64>,
    /// Seconds of each timed step's forward pass (with the loss), backward pass, and
    /// optimizer (clipping and AdamW).
    pub phases: Vec<[f64; 3]>,
}

/// The prepared workload: the model's tensors, its teacher and the step batches.
pub struct Workload {
    pub opts: StepBenchOptions,
    pub embedder: Embedder,
    tensors: HashMap<String, Tensor>,
    pub batches: Vec<StepBatch>,
}

impl Workload {
    /// Loads the model, draws `warmup + steps` length-aware batches of pairs (seeded), cuts
    /// and tokenizes them, and embeds them with the model's full profile.
    ///
    /// Errors: an unreadable model or data folder, fewer pairs than the steps need.
    pub fn prepare(opts: StepBenchOptions) -> Result<Self> {
        let embedder = Embedder::load(&opts.model)?;
        let tensors =
            candle_core::safetensors::load(opts.model.join("model.safetensors"), &Device::Cpu)?;
        let pairs = beir_pairs(&opts.data, &opts.split)?;
        let wanted = opts.warmup + opts.steps;
        let picked: Vec<Vec<usize>> = length_aware_batches(&pairs, opts.batch, opts.seed)
            .into_iter()
            .filter(|b| b.len() == opts.batch)
            .take(wanted)
            .collect();
        if picked.len() < wanted {
            return Err(TrainerError::Invalid(format!(
                "{} holds {} full batches of {}; the bench needs {wanted}",
                opts.data.display(),
                picked.len(),
                opts.batch
            )));
        }
        let full = Profile::full(embedder.config());
        let tokens = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
            Ok(crate::calibrate::cut(
                embedder.tokenizer().encode(&texts)?,
                opts.max_tokens,
            ))
        };
        let mut batches = Vec::new();
        for b in picked {
            let queries = tokens(b.iter().map(|&i| pairs[i].query.as_str()).collect())?;
            let positives = tokens(b.iter().map(|&i| pairs[i].positive.as_str()).collect())?;
            let model = embedder.model();
            batches.push(StepBatch {
                teacher_queries: model.forward_all(&queries, &full, opts.batch)?,
                teacher_positives: model.forward_all(&positives, &full, opts.batch)?,
                queries,
                positives,
            });
        }
        Ok(Self {
            opts,
            embedder,
            tensors,
            batches,
        })
    }

    /// The student, its head and their variables, fresh from the model's weights: the
    /// model's own head when it has one, else (when the nested dims reach past the hidden
    /// width) an identity head drawn from the bench's seed.
    fn student(&self) -> Result<(StudentBert, Option<MatryoshkaHead>, VarMap)> {
        let cfg = self.embedder.config();
        let vars = VarMap::new();
        let dev = Device::Cpu;
        let student = StudentBert::from_tensors(&self.tensors, cfg, &vars, DType::F32, &dev)?;
        let width = self
            .opts
            .loss
            .nested_dims
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        let hidden = cfg.hidden_size;
        let head = if width > hidden || self.tensors.contains_key("head.weight") {
            let mut rng = Rng::new(self.opts.seed);
            Some(MatryoshkaHead::new(
                hidden,
                width.max(hidden),
                &vars,
                DType::F32,
                &dev,
                &mut rng,
            )?)
        } else {
            None
        };
        Ok((student, head, vars))
    }

    /// Runs every batch as a training step under `profile`'s gates (none for the full
    /// profile) with `kernels`, timing all but the warm-up steps.
    ///
    /// Errors: any op failing (shapes, a model the student cannot load).
    pub fn run(&self, kernels: Kernels, profile: &Profile) -> Result<Measured> {
        let (student, head, vars) = self.student()?;
        let params = params_of(&vars);
        let mut opt = AdamW::new(self.opts.weight_decay);
        let dev = Device::Cpu;
        let cfg = self.embedder.config();
        let gates = if *profile == Profile::full(cfg) {
            Gates::default()
        } else {
            Gates::profile(profile, cfg, &dev)?
        };
        let inputs = TaskInputs {
            student: &student,
            head: head.as_ref(),
            loss: &self.opts.loss,
        };
        let rows = |r: &[Vec<f32>]| -> Result<Tensor> {
            let width = r.first().map_or(0, Vec::len);
            Ok(Tensor::from_vec(r.concat(), (r.len(), width), &dev)?)
        };
        let mut out = Measured {
            seconds: Vec::new(),
            tokens_per_step: 0.0,
            losses: Vec::new(),
            phases: Vec::new(),
        };
        for (i, b) in self.batches.iter().enumerate() {
            let (tq, td) = (rows(&b.teacher_queries)?, rows(&b.teacher_positives)?);
            let start = Instant::now();
            let qb = Batch::new(&b.queries, kernels, &dev)?;
            let db = Batch::new(&b.positives, kernels, &dev)?;
            let task = task_loss(&inputs, &gates, &qb, &db, (&tq, &td), None)?;
            let loss = task.total;
            let forward = start.elapsed().as_secs_f64();
            let mut grads = loss.backward()?;
            student.fill_closed_layers(&task.closed_layers, &mut grads)?;
            let backward = start.elapsed().as_secs_f64();
            let scale = clip_factor(grad_norm(&params, &grads)?, self.opts.clip);
            opt.update(&params, &grads, self.opts.lr, scale)?;
            let seconds = start.elapsed().as_secs_f64();
            out.losses.push(loss.to_scalar::<f32>()? as f64);
            if i >= self.opts.warmup {
                out.seconds.push(seconds);
                out.phases
                    .push([forward, backward - forward, seconds - backward]);
                out.tokens_per_step += b.tokens() as f64;
            }
        }
        out.tokens_per_step /= out.seconds.len().max(1) as f64;
        Ok(out)
    }

    /// Writes what the PyTorch twin needs into `dir`: the student's starting weights
    /// (`params.safetensors`, every variable by name, the head's included) and `spec.json`
    /// (model config, loss, optimizer, the profiles' gates as kept layers and head / FFN
    /// prefix sizes, and the batches with their teacher embeddings).
    ///
    /// Errors: the folder or files cannot be written.
    pub fn write_spec(&self, dir: &Path, profiles: &[(String, Profile)]) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
        let (_, _, vars) = self.student()?;
        let params: HashMap<String, Tensor> = params_of(&vars)
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        let weights = dir.join("params.safetensors");
        candle_core::safetensors::save(&params, &weights)?;
        let cfg = self.embedder.config();
        let o = &self.opts;
        let spec = serde_json::json!({
            "params": weights,
            "config": {
                "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
                "layers": cfg.num_hidden_layers, "intermediate": cfg.intermediate_size,
                "eps": cfg.layer_norm_eps,
            },
            "loss": o.loss, "lr": o.lr, "weight_decay": o.weight_decay, "clip": o.clip,
            "warmup": o.warmup,
            "profiles": profiles.iter().map(|(name, p)| serde_json::json!({
                "name": name, "layers": p.layers, "heads": p.heads, "ffn": p.ffn,
                "full": *p == Profile::full(cfg),
            })).collect::<Vec<_>>(),
            "batches": self.batches,
        });
        let path = dir.join("spec.json");
        let text = serde_json::to_vec(&spec)
            .map_err(|e| TrainerError::Invalid(format!("bench spec: {e}")))?;
        std::fs::write(&path, text).map_err(|e| TrainerError::io(&path, e))?;
        Ok(path)
    }
}
