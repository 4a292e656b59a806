//! One elastic training step's loss: the router draws an architecture for the step's budget,
//! its straight-through choices become gates on the student (layers kept in importance order,
//! head and FFN prefixes), and the loss adds InfoNCE on every nested prefix, distillation
//! toward the frozen parent's embeddings, and the router's cost loss on a differentiable
//! FLOPs model.

use candle_core::{DType, Device, Result, Tensor, D};
use mrl_encoder::BertConfig;

use crate::loss::{cost_loss, matryoshka_info_nce, normalize_rows, similarity_distillation};
use crate::router::{Choice, Rng, Router};
use crate::student::{soft_prefix_mask, Batch, Gates, MatryoshkaHead, StudentBert};

/// Relative FLOPs of a sub-network at a sequence length: per layer, the head-proportional
/// part (Q/K/V/output projections and attention scores) and the FFN part, as shares of a
/// full layer; embeddings and layer norms are left out (under 1%).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    pub head_share: f64,
    pub ffn_share: f64,
}

impl CostModel {
    pub fn new(cfg: &BertConfig, seq_len: usize) -> Self {
        let (h, t, i) = (
            cfg.hidden_size as f64,
            seq_len as f64,
            cfg.intermediate_size as f64,
        );
        let heads = 4.0 * h * h * t + 2.0 * t * t * h;
        let ffn = 2.0 * h * i * t;
        Self {
            head_share: heads / (heads + ffn),
            ffn_share: ffn / (heads + ffn),
        }
    }

    /// Cost of keeping fractions (depth, heads, ffn) of the full model.
    pub fn relative(&self, depth: f64, heads: f64, ffn: f64) -> f64 {
        depth * (self.head_share * heads + self.ffn_share * ffn)
    }

    /// The same on tensors (scalars), so the router's cost loss has a gradient.
    pub fn relative_tensor(&self, depth: &Tensor, heads: &Tensor, ffn: &Tensor) -> Result<Tensor> {
        let width = ((heads * self.head_share)? + (ffn * self.ffn_share)?)?;
        depth * width
    }
}

/// The elastic axes the router chooses on, and which layers each depth keeps.
#[derive(Debug, Clone)]
pub struct ElasticSpace {
    pub depths: Vec<usize>,
    pub heads: Vec<usize>,
    pub ffn: Vec<usize>,
    /// Layers in the order calibration drops them (least important first).
    pub layer_drop_order: Vec<usize>,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate: usize,
}

impl ElasticSpace {
    /// Every depth from 1, and heads / FFN in quarters of the full width.
    pub fn quarters(cfg: &BertConfig, layer_drop_order: Vec<usize>) -> Self {
        let q = |n: usize| (1..=4).map(|k| n * k / 4).filter(|&x| x > 0).collect();
        Self {
            depths: (1..=cfg.num_hidden_layers).collect(),
            heads: q(cfg.num_attention_heads),
            ffn: q(cfg.intermediate_size),
            layer_drop_order,
            num_layers: cfg.num_hidden_layers,
            num_heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
        }
    }

    /// Layers kept at `depth`: all but the first `num_layers − depth` of the drop order.
    pub fn kept_layers(&self, depth: usize) -> Vec<usize> {
        let dropped = &self.layer_drop_order[..self.num_layers.saturating_sub(depth)];
        (0..self.num_layers)
            .filter(|l| !dropped.contains(l))
            .collect()
    }

    pub fn axes(&self) -> Vec<(&'static str, Vec<usize>)> {
        vec![
            ("depth", self.depths.clone()),
            ("heads", self.heads.clone()),
            ("ffn", self.ffn.clone()),
        ]
    }

    /// Gates from per-axis distributions over sizes (straight-through one-hots in training).
    pub fn gates(&self, depth: &Tensor, heads: &Tensor, ffn: &Tensor) -> Result<Gates> {
        let (dtype, device) = (depth.dtype(), depth.device());
        // Layer l's gate is the probability mass of the depths that keep it.
        let mut keeps = vec![0f32; self.depths.len() * self.num_layers];
        for (k, &d) in self.depths.iter().enumerate() {
            for l in self.kept_layers(d) {
                keeps[k * self.num_layers + l] = 1.0;
            }
        }
        let keeps = Tensor::from_vec(keeps, (self.depths.len(), self.num_layers), device)?
            .to_dtype(dtype)?;
        let per_layer = depth.unsqueeze(0)?.matmul(&keeps)?.squeeze(0)?;
        let layers = (0..self.num_layers)
            .map(|l| per_layer.get(l))
            .collect::<Result<Vec<_>>>()?;
        Ok(Gates {
            layers: Some(layers),
            heads: Some(soft_prefix_mask(heads, &self.heads, self.num_heads)?),
            ffn: Some(soft_prefix_mask(ffn, &self.ffn, self.intermediate)?),
        })
    }

    /// The cost of per-axis distributions under `model`.
    pub fn cost(&self, model: &CostModel, axes: &[Tensor]) -> Result<Tensor> {
        let frac = |t: &Tensor, sizes: &[usize], full: usize| -> Result<Tensor> {
            let f: Vec<f32> = sizes.iter().map(|&s| s as f32 / full as f32).collect();
            let f = Tensor::from_vec(f, sizes.len(), t.device())?.to_dtype(t.dtype())?;
            (t * f)?.sum_all()
        };
        model.relative_tensor(
            &frac(&axes[0], &self.depths, self.num_layers)?,
            &frac(&axes[1], &self.heads, self.num_heads)?,
            &frac(&axes[2], &self.ffn, self.intermediate)?,
        )
    }
}

/// Weights and temperatures of the step loss (a recipe's `[loss]` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    pub nested_dims: Vec<usize>,
    pub dim_weights: Vec<f64>,
    pub temperature: f64,
    pub distill_weight: f64,
    pub distill_temperature: f64,
    pub cost_weight: f64,
    /// Weight of `1 − cos(student, teacher)` on unlabeled texts (the recipe's `[unlabeled]`
    /// batches): it ties every sub-model's space to the parent's itself, which the
    /// similarity-distribution loss (rotation-invariant) does not.
    #[serde(default)]
    pub align_weight: f64,
}

/// What a step computed, for the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepLog {
    pub budget: f64,
    pub info_nce: f64,
    pub distill: f64,
    /// Cost of the hard choice, and of the router's expectation.
    pub cost: f64,
    pub expected_cost: f64,
    pub picks: Vec<usize>,
    /// Layers the drawn architecture closed (see `TaskLoss::closed_layers`).
    #[serde(skip)]
    pub closed_layers: Vec<usize>,
    /// Mean `1 − cos` to the teacher on the unlabeled batch, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub align: Option<f64>,
}

/// Everything one step needs besides the batch.
pub struct StepInputs<'a> {
    pub student: &'a StudentBert,
    pub head: Option<&'a MatryoshkaHead>,
    pub router: &'a Router,
    pub space: &'a ElasticSpace,
    pub cost_model: &'a CostModel,
    pub loss: &'a LossConfig,
}

/// What the task loss needs: the student, its head, the loss weights.
pub struct TaskInputs<'a> {
    pub student: &'a StudentBert,
    pub head: Option<&'a MatryoshkaHead>,
    pub loss: &'a LossConfig,
}

impl<'a> StepInputs<'a> {
    fn task(&self) -> TaskInputs<'a> {
        TaskInputs {
            student: self.student,
            head: self.head,
            loss: self.loss,
        }
    }
}

/// The loss of one step on batches of queries and positives with the teacher's embeddings of
/// the same texts (`[B, hidden]` each), for budget index `budget` (`None`: the full model, no
/// router). `(temperature, scale)` drive the Gumbel-Softmax. `unlabeled` is an optional batch
/// of plain texts with the teacher's embeddings of them.
#[allow(clippy::too_many_arguments)]
pub fn step_loss(
    inp: &StepInputs,
    queries: &Batch,
    positives: &Batch,
    teacher: (&Tensor, &Tensor),
    unlabeled: Option<(&Batch, &Tensor)>,
    budget: Option<usize>,
    (temperature, scale): (f64, f64),
    rng: &mut Rng,
) -> Result<(Tensor, StepLog)> {
    let dtype = teacher.0.dtype();
    let device: &Device = teacher.0.device();
    let (gates, router_loss, log_cost) = match budget {
        Some(b) => {
            let Choice {
                picks,
                one_hots,
                soft: _,
                probs,
            } = inp
                .router
                .sample(b, temperature, scale, rng, dtype, device)?;
            let gates = inp.space.gates(&one_hots[0], &one_hots[1], &one_hots[2])?;
            let hard = inp.space.cost(inp.cost_model, &one_hots)?;
            let expected = inp.space.cost(inp.cost_model, &probs)?;
            let target = inp.router.budgets[b];
            let loss = (cost_loss(&hard, target)? + cost_loss(&expected, target)?)?;
            let costs = (
                hard.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                expected.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            );
            (gates, Some(loss), (target, costs, picks))
        }
        None => (Gates::default(), None, (1.0, (1.0, 1.0), Vec::new())),
    };
    let task = task_loss(&inp.task(), &gates, queries, positives, teacher, unlabeled)?;
    let cfg = inp.loss;
    let total = match &router_loss {
        Some(r) => (&task.total + (r * cfg.cost_weight)?)?,
        None => task.total,
    };
    let (budget_value, (cost, expected_cost), picks) = log_cost;
    let log = StepLog {
        budget: budget_value,
        info_nce: task.info_nce,
        distill: task.distill,
        cost,
        expected_cost,
        picks,
        closed_layers: task.closed_layers,
        align: task.align,
    };
    Ok((total, log))
}

/// The task part of a step's loss under fixed `gates`, and its terms for the log.
pub struct TaskLoss {
    /// InfoNCE over the nested prefixes + weighted distillation (+ weighted alignment).
    pub total: Tensor,
    /// Layers the gates closed: after the backward pass, `StudentBert::fill_closed_layers`.
    pub closed_layers: Vec<usize>,
    pub info_nce: f64,
    pub distill: f64,
    pub align: Option<f64>,
}

/// Matryoshka InfoNCE of the student's queries against its positives, distillation of both
/// sides' in-batch similarities toward the teacher's (`[B, hidden]` each), and with an
/// `unlabeled` batch the alignment `1 − cos` to the teacher, weighted as `inp.loss` says;
/// the student runs under `gates` (through its head when it has one).
pub fn task_loss(
    inp: &TaskInputs,
    gates: &Gates,
    queries: &Batch,
    positives: &Batch,
    teacher: (&Tensor, &Tensor),
    unlabeled: Option<(&Batch, &Tensor)>,
) -> Result<TaskLoss> {
    let embed = |batch: &Batch| -> Result<Tensor> {
        let pooled = inp.student.forward(batch, gates)?;
        match inp.head {
            Some(h) => h.forward(&pooled),
            None => Ok(pooled),
        }
    };
    let q = embed(queries)?;
    let d = embed(positives)?;
    let cfg = inp.loss;
    let nce = matryoshka_info_nce(&q, &d, &cfg.nested_dims, &cfg.dim_weights, cfg.temperature)?;
    // The teacher's space is the parent's pooled width: distil that prefix of the student.
    let width = teacher.0.dim(1)?;
    let distill =
        (similarity_distillation(&q.narrow(1, 0, width)?, teacher.0, cfg.distill_temperature)?
            + similarity_distillation(
                &d.narrow(1, 0, width)?,
                teacher.1,
                cfg.distill_temperature,
            )?)?;
    let mut total = (&nce + (&distill * cfg.distill_weight)?)?;
    let mut align = None;
    if let Some((texts, want)) = unlabeled {
        let got = embed(texts)?;
        let cos = (normalize_rows(&got.narrow(1, 0, width)?)? * normalize_rows(&want.detach())?)?
            .sum(D::Minus1)?;
        let loss = (1.0 - cos)?.mean_all()?;
        align = Some(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        total = (total + (loss * cfg.align_weight)?)?;
    }
    let scalar = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
    Ok(TaskLoss {
        closed_layers: StudentBert::closed_layers(gates)?,
        info_nce: scalar(&nce)?,
        distill: scalar(&distill)?,
        align,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
    use crate::optim::{clip_factor, grad_norm, params_of, AdamW};
    use crate::router::schedule;
    use crate::student::Kernels;
    use candle_nn::VarMap;
    use mrl_encoder::model::BertModel;
    use mrl_encoder::Profile;

    #[test]
    fn the_cost_model_agrees_with_the_profile_cost() {
        let cfg = tiny_config();
        let m = CostModel::new(&cfg, 128);
        for (layers, heads, ffn) in [
            (vec![0, 1], 2, 16),
            (vec![0, 1, 2, 3], 4, 32),
            (vec![3], 1, 8),
        ] {
            let p = Profile {
                layers: layers.clone(),
                heads,
                ffn,
                hidden: cfg.hidden_size,
            };
            let want = p.relative_cost(&cfg, 128);
            let got = m.relative(
                layers.len() as f64 / 4.0,
                heads as f64 / 4.0,
                ffn as f64 / 32.0,
            );
            assert!((got - want).abs() < 0.05 * want + 0.01, "{got} vs {want}");
        }
    }

    #[test]
    fn depth_gates_keep_the_important_layers() {
        let space = ElasticSpace::quarters(&tiny_config(), vec![2, 0, 3, 1]);
        assert_eq!(space.kept_layers(4), [0, 1, 2, 3]);
        assert_eq!(space.kept_layers(2), [1, 3]);
        assert_eq!(space.kept_layers(1), [1]);
        let dev = Device::Cpu;
        let one = |k: usize, n: usize| {
            let mut v = vec![0f32; n];
            v[k] = 1.0;
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        let g = space.gates(&one(1, 4), &one(0, 4), &one(3, 4)).unwrap();
        let layers: Vec<f32> = g
            .layers
            .unwrap()
            .iter()
            .map(|t| t.to_scalar::<f32>().unwrap())
            .collect();
        assert_eq!(layers, [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(
            g.heads.unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 0.0, 0.0, 0.0]
        );
        let cost = space
            .cost(
                &CostModel::new(&tiny_config(), 128),
                &[one(1, 4), one(0, 4), one(3, 4)],
            )
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let m = CostModel::new(&tiny_config(), 128);
        assert!((cost as f64 - m.relative(0.5, 0.25, 1.0)).abs() < 1e-6);
    }

    /// `steps` elastic steps on a tiny model with a frozen teacher (its own initial self),
    /// budgets alternating with the full model, run by `kernels`: each step's total loss and
    /// log. At step 0 it checks that every variable gets a gradient and that, ungated, the
    /// student starts aligned with the teacher.
    fn tiny_elastic_run(kernels: Kernels, steps: usize) -> Vec<(f64, StepLog)> {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 31);
        let teacher = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let dev = Device::Cpu;
        let model_vars = VarMap::new();
        let student =
            StudentBert::from_tensors(&tensors, &cfg, &model_vars, DType::F32, &dev).unwrap();
        let mut rng = Rng::new(4);
        let head = MatryoshkaHead::new(16, 24, &model_vars, DType::F32, &dev, &mut rng).unwrap();
        let router_vars = VarMap::new();
        let space = ElasticSpace::quarters(&cfg, vec![2, 0, 3, 1]);
        let router = Router::new(
            vec![0.5],
            &space.axes(),
            8,
            &router_vars,
            DType::F32,
            &dev,
            &mut Rng::new(8),
        )
        .unwrap();
        let cost_model = CostModel::new(&cfg, 128);
        let loss_cfg = LossConfig {
            nested_dims: vec![8, 16, 24],
            dim_weights: vec![1.0, 1.0, 1.0],
            temperature: 0.1,
            distill_weight: 1.0,
            distill_temperature: 0.1,
            cost_weight: 1.0,
            align_weight: 1.0,
        };
        let inputs = StepInputs {
            student: &student,
            head: Some(&head),
            router: &router,
            space: &space,
            cost_model: &cost_model,
            loss: &loss_cfg,
        };
        let (model_params, router_params) = (params_of(&model_vars), params_of(&router_vars));
        let (mut opt, mut ropt) = (AdamW::new(0.0), AdamW::new(0.0));
        let seqs = tiny_seqs();
        let mut out = Vec::new();
        for step in 0..steps {
            let start = (step * 5) % 6;
            let q: Vec<Vec<u32>> = (0..6).map(|k| seqs[(start + k) % 12].clone()).collect();
            let d: Vec<Vec<u32>> = q.iter().map(|s| s[1..].to_vec()).collect();
            let pooled = |s: &[Vec<u32>]| {
                let rows: Vec<&[u32]> = s.iter().map(Vec::as_slice).collect();
                let v = teacher.forward(&rows, &Profile::full(&cfg)).unwrap();
                let flat: Vec<f32> = v.concat();
                Tensor::from_vec(flat, (s.len(), 16), &dev).unwrap()
            };
            let (tq, td) = (pooled(&q), pooled(&d));
            let qb = Batch::new(&q, kernels, &dev).unwrap();
            let db = Batch::new(&d, kernels, &dev).unwrap();
            let budget = if step % 2 == 0 { Some(0) } else { None };
            let (loss, log) = step_loss(
                &inputs,
                &qb,
                &db,
                (&tq, &td),
                Some((&qb, &tq)),
                budget,
                schedule(step, steps),
                &mut rng,
            )
            .unwrap();
            let align = log.align.expect("an unlabeled batch was given");
            if step == 0 {
                // Ungated, the student starts as the teacher: nothing to align yet.
                let (_, ungated) = step_loss(
                    &inputs,
                    &qb,
                    &db,
                    (&tq, &td),
                    Some((&qb, &tq)),
                    None,
                    schedule(step, steps),
                    &mut Rng::new(0),
                )
                .unwrap();
                let a = ungated.align.unwrap();
                assert!(a.abs() < 1e-4 && a < align, "ungated {a}, gated {align}");
            }
            let mut grads = loss.backward().unwrap();
            student
                .fill_closed_layers(&log.closed_layers, &mut grads)
                .unwrap();
            if step == 0 {
                let missing: Vec<&String> = model_params
                    .iter()
                    .filter(|(_, v)| grads.get(v).is_none())
                    .map(|(n, _)| n)
                    .collect();
                assert!(missing.is_empty(), "no gradient: {missing:?}");
                assert!(router_params.iter().all(|(_, v)| grads.get(v).is_some()));
            }
            let scale = clip_factor(grad_norm(&model_params, &grads).unwrap(), 1.0);
            opt.update(&model_params, &grads, 3e-3, scale).unwrap();
            ropt.update(&router_params, &grads, 1e-2, 1.0).unwrap();
            out.push((loss.to_scalar::<f32>().unwrap() as f64, log));
        }
        out
    }

    /// Elastic steps train: the task loss falls, the router and every model variable train.
    #[test]
    fn elastic_steps_train_the_model_and_the_router() {
        let steps = 40;
        let run = tiny_elastic_run(Kernels::default(), steps);
        let nce: Vec<f64> = run.iter().map(|(_, log)| log.info_nce).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (first, last) = (&nce[..6], &nce[steps - 6..]);
        assert!(mean(last) < 0.8 * mean(first), "{first:?} → {last:?}");
    }

    /// Twenty elastic steps (router draws, gates, head, distillation, alignment, clipping,
    /// AdamW) on the fused path give the primitive path's losses within 1e-3, and the same
    /// architecture draws.
    #[test]
    fn twenty_fused_steps_reproduce_the_primitive_losses() {
        let fused = tiny_elastic_run(Kernels::Fused, 20);
        let primitive = tiny_elastic_run(Kernels::Primitive, 20);
        for (step, ((a, la), (b, lb))) in fused.iter().zip(&primitive).enumerate() {
            assert!(
                (a - b).abs() < 1e-3,
                "step {step}: fused {a} vs primitive {b}"
            );
            assert_eq!(la.picks, lb.picks, "step {step}");
        }
    }
}
