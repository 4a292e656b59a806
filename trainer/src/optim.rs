//! Optimisation for the trainer: AdamW with its state exposed (so a checkpoint can store the
//! moments and a resumed run continues bit for bit), warmup + cosine learning rates, global
//! gradient-norm clipping, and checkpoints of variables, moments and step.

use std::collections::HashMap;
use std::path::Path;

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Device, InplaceOp1, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::fused::with_values;
use crate::{Result, TrainerError};

/// Warmup from 0 to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
pub fn lr_at(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let f = ((step - warmup) as f64 / span as f64).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * f).cos())
}

/// Named trainable variables, in a fixed (sorted) order so checkpoints line up.
pub type Params = Vec<(String, Var)>;

/// The variables of `varmap`, sorted by name.
pub fn params_of(varmap: &candle_nn::VarMap) -> Params {
    let mut p: Params = varmap
        .data()
        .lock()
        .expect("the var map lock is poisoned; this is a bug")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    p.sort_by(|a, b| a.0.cmp(&b.0));
    p
}

/// AdamW (decoupled weight decay; Loshchilov & Hutter, 2019) over named f32 variables, its
/// moments kept as plain vectors and each update one fused pass over parameter, gradient and
/// both moments, in place.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken.
    pub step: usize,
    m: HashMap<String, Vec<f32>>,
    v: HashMap<String, Vec<f32>>,
}

/// One variable's AdamW step, applied to its storage in place.
struct AdamStep<'a> {
    grad: &'a [f32],
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    /// `(β1, β2, ε, 1 − lr·λ, lr / (1 − β1ᵗ), 1 / (1 − β2ᵗ), gradient scale)`.
    k: [f32; 7],
}

/// Elements per rayon task of the update.
const ADAM_CHUNK: usize = 64 * 1024;

impl InplaceOp1 for AdamStep<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let [b1, b2, eps, decay, step_size, inv_c2, scale] = self.k;
        let p = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(p), Some((start, end))) => &mut p[start..end],
            _ => candle_core::bail!("AdamW updates contiguous f32 variables"),
        };
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        if p.len() != self.grad.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("AdamW: a gradient or moment of another size");
        }
        p.par_chunks_mut(ADAM_CHUNK)
            .zip(self.grad.par_chunks(ADAM_CHUNK))
            .zip(m.par_chunks_mut(ADAM_CHUNK))
            .zip(v.par_chunks_mut(ADAM_CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    let g = g * scale;
                    *m = b1 * *m + (1.0 - b1) * g;
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p = *p * decay - step_size * *m / ((*v * inv_c2).sqrt() + eps);
                }
            });
        Ok(())
    }
}

impl AdamW {
    pub fn new(weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of `params` with learning rate `lr` from `grads` times `grad_scale` (the
    /// clipping factor, [`clip_factor`]); variables without a gradient are left as they are.
    ///
    /// Errors: a variable that is not f32 on the CPU, or a gradient of another shape.
    pub fn update(
        &mut self,
        params: &Params,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        let k = [
            self.beta1 as f32,
            self.beta2 as f32,
            self.eps as f32,
            (1.0 - lr * self.weight_decay) as f32,
            (lr / c1) as f32,
            (1.0 / c2) as f32,
            grad_scale as f32,
        ];
        for (name, var) in params {
            let Some(g) = grads.get(var) else { continue };
            let n = var.elem_count();
            let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            with_values(g, |grad| {
                var.as_tensor().inplace_op1(&AdamStep {
                    grad,
                    m: RefCell::new(m),
                    v: RefCell::new(v),
                    k,
                })
            })?;
        }
        Ok(())
    }
}

/// The global L2 norm of the gradients of `params` (f64 sums).
///
/// Errors: a gradient that is not f32 on the CPU.
pub fn grad_norm(params: &Params, grads: &GradStore) -> Result<f64> {
    let mut total = 0.0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var) {
            total += with_values(g, |v| {
                Ok(v.par_chunks(ADAM_CHUNK)
                    .map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
                    .sum::<f64>())
            })?;
        }
    }
    Ok(total.sqrt())
}

/// The factor global-norm clipping multiplies every gradient by: `max / norm` when `norm`
/// exceeds `max`, else 1 (Pascanu et al., 2013).
pub fn clip_factor(norm: f64, max: f64) -> f64 {
    if norm > max && norm > 0.0 {
        max / norm
    } else {
        1.0
    }
}

/// Adds `more`'s gradients of `params` into `into` (gradient accumulation over micro-batches).
pub fn accumulate_grads(params: &Params, into: &mut GradStore, more: &GradStore) -> Result<()> {
    for (_, var) in params {
        if let Some(g) = more.get(var) {
            let sum = match into.remove(var) {
                Some(acc) => (acc + g)?,
                None => g.clone(),
            };
            into.insert(var, sum);
        }
    }
    Ok(())
}

/// Saves the variables and the optimizer's moments and step to `path` (safetensors): the
/// state a resumed run needs besides its RNG and data position.
pub fn save_checkpoint(path: &Path, params: &Params, opt: &AdamW) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in params {
        tensors.insert(format!("param.{name}"), var.as_tensor().clone());
        let moment = |m: &Vec<f32>| Tensor::from_slice(m, var.shape(), &Device::Cpu);
        if let Some(m) = opt.m.get(name) {
            tensors.insert(format!("adam_m.{name}"), moment(m)?);
        }
        if let Some(v) = opt.v.get(name) {
            tensors.insert(format!("adam_v.{name}"), moment(v)?);
        }
    }
    tensors.insert(
        "adam_step".into(),
        Tensor::new(&[opt.step as u32], &Device::Cpu)?,
    );
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainerError::io(path, e))
}

/// Restores what [`save_checkpoint`] wrote into `params` and `opt`.
pub fn load_checkpoint(path: &Path, params: &Params, opt: &mut AdamW) -> Result<()> {
    let device = params
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut tensors = candle_core::safetensors::load(path, &device)?;
    for (name, var) in params {
        let t = tensors.remove(&format!("param.{name}")).ok_or_else(|| {
            TrainerError::Invalid(format!("{}: no parameter {name}", path.display()))
        })?;
        var.set(&t)?;
        let moment = |t: Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        };
        if let Some(m) = tensors.remove(&format!("adam_m.{name}")) {
            opt.m.insert(name.clone(), moment(m)?);
        }
        if let Some(v) = tensors.remove(&format!("adam_v.{name}")) {
            opt.v.insert(name.clone(), moment(v)?);
        }
    }
    let step = tensors
        .remove("adam_step")
        .ok_or_else(|| TrainerError::Invalid(format!("{}: no adam_step", path.display())))?;
    opt.step = step.to_vec1::<u32>()?[0] as usize;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
    use crate::router::Rng;
    use crate::student::{Batch, Gates, Kernels, StudentBert};
    use candle_core::DType;
    use candle_nn::VarMap;

    /// Gradients accumulated over two losses are the gradient of their sum.
    #[test]
    fn accumulated_gradients_add_up() {
        let varmap = VarMap::new();
        let dev = Device::Cpu;
        let w = varmap
            .get((3,), "w", candle_nn::Init::Const(0.5), DType::F32, &dev)
            .unwrap();
        let x1 = Tensor::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        let x2 = Tensor::new(&[-1f32, 0.5, 4.0], &dev).unwrap();
        let loss = |x: &Tensor| (&w * x).unwrap().sqr().unwrap().sum_all().unwrap();
        let params = params_of(&varmap);
        let mut acc = loss(&x1).backward().unwrap();
        accumulate_grads(&params, &mut acc, &loss(&x2).backward().unwrap()).unwrap();
        let both = (loss(&x1) + loss(&x2)).unwrap().backward().unwrap();
        let var = &params[0].1;
        let (a, b) = (
            acc.get(var).unwrap().to_vec1::<f32>().unwrap(),
            both.get(var).unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn warmup_then_cosine() {
        assert!((lr_at(0, 10, 110, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 10, 110, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 10, 110, 1.0) - 0.5).abs() < 1e-12);
        assert!(lr_at(110, 10, 110, 1.0).abs() < 1e-12);
    }

    /// A tiny random BERT trained with InfoNCE on (sequence, sequence with its last token
    /// dropped) pairs; batches are drawn from a seeded RNG, so the run is a pure function of
    /// its seed and the checkpoint.
    struct TinyRun {
        student: StudentBert,
        params: Params,
        opt: AdamW,
        rng: Rng,
        seqs: Vec<Vec<u32>>,
    }

    impl TinyRun {
        fn new() -> Self {
            let cfg = tiny_config();
            let varmap = VarMap::new();
            let student = StudentBert::from_tensors(
                &tiny_tensors(&cfg, 21),
                &cfg,
                &varmap,
                DType::F32,
                &Device::Cpu,
            )
            .unwrap();
            let params = params_of(&varmap);
            Self {
                student,
                params,
                opt: AdamW::new(0.01),
                rng: Rng::new(9),
                seqs: tiny_seqs(),
            }
        }

        /// One step; returns the loss before the update.
        fn step(&mut self, total: usize) -> f32 {
            let dev = Device::Cpu;
            let mut batch: Vec<usize> = Vec::new();
            while batch.len() < 6 {
                let i = (self.rng.next_u64() % self.seqs.len() as u64) as usize;
                if !batch.contains(&i) {
                    batch.push(i);
                }
            }
            let q: Vec<Vec<u32>> = batch.iter().map(|&i| self.seqs[i].clone()).collect();
            let d: Vec<Vec<u32>> = q.iter().map(|s| s[..s.len() - 1].to_vec()).collect();
            let batch = |s: &[Vec<u32>]| Batch::new(s, Kernels::default(), &dev).unwrap();
            let qe = self.student.forward(&batch(&q), &Gates::default()).unwrap();
            let de = self.student.forward(&batch(&d), &Gates::default()).unwrap();
            let loss = crate::loss::info_nce(&qe, &de, 0.1).unwrap();
            let grads = loss.backward().unwrap();
            let scale = clip_factor(grad_norm(&self.params, &grads).unwrap(), 1.0);
            let lr = lr_at(self.opt.step, 2, total, 3e-3);
            self.opt.update(&self.params, &grads, lr, scale).unwrap();
            loss.to_scalar::<f32>().unwrap()
        }

        fn snapshot(&self) -> Vec<Vec<f32>> {
            self.params
                .iter()
                .map(|(_, v)| {
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        }
    }

    #[test]
    fn the_loss_falls_on_a_tiny_model() {
        let mut run = TinyRun::new();
        let losses: Vec<f32> = (0..40).map(|_| run.step(40)).collect();
        let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
        let last: f32 = losses[35..].iter().sum::<f32>() / 5.0;
        assert!(last < 0.7 * first, "loss {first} → {last}: {losses:?}");
    }

    /// Three steps, a checkpoint, a fresh run restored from it and three more steps give the
    /// same parameters, bit for bit, as six uninterrupted steps.
    #[test]
    fn resume_is_bitwise_identical() {
        let mut straight = TinyRun::new();
        for _ in 0..6 {
            straight.step(6);
        }
        let dir = std::env::temp_dir().join(format!("mrl-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.safetensors");
        let mut first = TinyRun::new();
        for _ in 0..3 {
            first.step(6);
        }
        save_checkpoint(&path, &first.params, &first.opt).unwrap();
        let rng = first.rng;
        drop(first);
        let mut resumed = TinyRun::new();
        load_checkpoint(&path, &resumed.params, &mut resumed.opt).unwrap();
        resumed.rng = rng;
        assert_eq!(resumed.opt.step, 3);
        for _ in 0..3 {
            resumed.step(6);
        }
        assert_eq!(resumed.snapshot(), straight.snapshot());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
