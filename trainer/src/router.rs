//! The budget router (as in Nemotron Elastic): for each elastic axis a 2-layer MLP with
//! LeakyReLU maps a one-hot target budget to logits over that axis's allowed sizes; a
//! differentiable Gumbel-Softmax with a straight-through hard choice picks one size per axis,
//! with its temperature annealed and its logit scale raised over training.
//!
//! candle's own `gumbel_softmax` returns an argmax without gradient, and its fused softmax has
//! no backward pass, so both are written here from basic ops. The noise comes from a seeded
//! SplitMix64 whose state is one integer, so a checkpoint can store it and a resumed run
//! draws the same noise.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::loss::softmax;

/// Seeded randomness with a state that serialises as one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard Gumbel noise, −ln(−ln u).
    pub fn gumbel(&mut self) -> f64 {
        -(-self.uniform().ln()).ln()
    }

    /// A standard normal draw (Box–Muller, the cosine branch).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Temperature and logit scale at a point of training: the temperature falls 1.0 → 0.05 and
/// the scale rises 1 → 10, both geometrically over `total` steps.
pub fn schedule(step: usize, total: usize) -> (f64, f64) {
    let f = if total <= 1 {
        1.0
    } else {
        (step.min(total - 1)) as f64 / (total - 1) as f64
    };
    (0.05f64.powf(f), 10f64.powf(f))
}

/// Gumbel-Softmax over the last axis of `logits` [.., K]: returns the soft sample and the
/// straight-through hard one-hot (its forward value is the argmax, its gradient the soft
/// sample's).
pub fn gumbel_softmax_st(
    logits: &Tensor,
    temperature: f64,
    scale: f64,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor)> {
    let noise: Vec<f64> = (0..logits.elem_count()).map(|_| rng.gumbel()).collect();
    let noise =
        Tensor::from_vec(noise, logits.shape(), logits.device())?.to_dtype(logits.dtype())?;
    let soft = softmax(&(((logits * scale)? + noise)? / temperature)?)?;
    let k = soft.dim(D::Minus1)?;
    let argmax = soft.argmax_keepdim(D::Minus1)?;
    let classes = Tensor::arange(0u32, k as u32, soft.device())?;
    let hard = argmax
        .broadcast_eq(
            &classes.reshape(
                std::iter::repeat_n(1, soft.rank() - 1)
                    .chain([k])
                    .collect::<Vec<_>>(),
            )?,
        )?
        .to_dtype(soft.dtype())?;
    let st = ((hard - soft.detach())? + &soft)?;
    Ok((soft, st))
}

/// One elastic axis: its allowed sizes (ascending) and the MLP that scores them.
pub struct Axis {
    pub name: String,
    pub sizes: Vec<usize>,
    hidden: Linear,
    out: Linear,
}

/// The router: one MLP per axis, all fed the same one-hot budget.
pub struct Router {
    pub budgets: Vec<f64>,
    pub axes: Vec<Axis>,
}

/// The sizes one draw chose, and the straight-through one-hots that carry the gradient.
pub struct Choice {
    /// Index into each axis's sizes.
    pub picks: Vec<usize>,
    /// Per axis, a [K] straight-through one-hot.
    pub one_hots: Vec<Tensor>,
    /// Per axis, the [K] relaxed (soft) sample behind it.
    pub soft: Vec<Tensor>,
    /// Per axis, the [K] noise-free distribution at the same temperature and scale: the cost
    /// expected under it is a smooth, deterministic target for the router's cost loss.
    pub probs: Vec<Tensor>,
}

fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    // relu(x) − 0.01·relu(−x): two ops that both have a backward pass.
    x.relu()? - (x.neg()?.relu()? * 0.01)?
}

impl Router {
    /// `axes`: (name, allowed sizes) per elastic axis; `hidden` is the MLPs' width. The
    /// weights are created in `varmap` from `rng` (uniform ±1/√fan-in, zero biases), not from
    /// candle's unseeded generator, so a run is a function of its seed; variables already in
    /// `varmap` (a checkpoint) are kept.
    pub fn new(
        budgets: Vec<f64>,
        axes: &[(&str, Vec<usize>)],
        hidden: usize,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        let n = budgets.len();
        {
            let mut data = varmap
                .data()
                .lock()
                .expect("the var map lock is poisoned; this is a bug");
            for (name, sizes) in axes {
                for (layer, (inputs, outputs)) in
                    [(n, hidden), (hidden, sizes.len())].into_iter().enumerate()
                {
                    let key = format!("{name}.{layer}.weight");
                    if data.contains_key(&key) {
                        continue;
                    }
                    let bound = 1.0 / (inputs as f64).sqrt();
                    let w: Vec<f32> = (0..inputs * outputs)
                        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                        .collect();
                    let w = Tensor::from_vec(w, (outputs, inputs), device)?.to_dtype(dtype)?;
                    data.insert(key, Var::from_tensor(&w)?);
                    let b = Tensor::zeros(outputs, dtype, device)?;
                    data.insert(format!("{name}.{layer}.bias"), Var::from_tensor(&b)?);
                }
            }
        }
        let vb = VarBuilder::from_varmap(varmap, dtype, device);
        let axes = axes
            .iter()
            .map(|(name, sizes)| {
                let vb = vb.pp(*name);
                Ok(Axis {
                    name: name.to_string(),
                    sizes: sizes.clone(),
                    hidden: candle_nn::linear(n, hidden, vb.pp("0"))?,
                    out: candle_nn::linear(hidden, sizes.len(), vb.pp("1"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { budgets, axes })
    }

    fn one_hot_budget(&self, budget: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut v = vec![0f32; self.budgets.len()];
        v[budget] = 1.0;
        Tensor::from_vec(v, (1, self.budgets.len()), device)?.to_dtype(dtype)
    }

    /// Logits per axis for budget index `budget`, each [K].
    pub fn logits(&self, budget: usize, dtype: DType, device: &Device) -> Result<Vec<Tensor>> {
        let x = self.one_hot_budget(budget, dtype, device)?;
        self.axes
            .iter()
            .map(|a| {
                a.out
                    .forward(&leaky_relu(&a.hidden.forward(&x)?)?)?
                    .squeeze(0)
            })
            .collect()
    }

    /// Draws one architecture for `budget` (training).
    pub fn sample(
        &self,
        budget: usize,
        temperature: f64,
        scale: f64,
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Choice> {
        let mut picks = Vec::new();
        let mut one_hots = Vec::new();
        let mut soft = Vec::new();
        let mut probs = Vec::new();
        for logits in self.logits(budget, dtype, device)? {
            let (relaxed, st) = gumbel_softmax_st(&logits, temperature, scale, rng)?;
            probs.push(softmax(&((&logits * scale)? / temperature)?)?);
            picks.push(st.argmax(0)?.to_scalar::<u32>()? as usize);
            one_hots.push(st);
            soft.push(relaxed);
        }
        Ok(Choice {
            picks,
            one_hots,
            soft,
            probs,
        })
    }

    /// The deterministic choice for `budget` (what the manifest records): argmax per axis.
    pub fn argmax(&self, budget: usize, dtype: DType, device: &Device) -> Result<Vec<usize>> {
        self.logits(budget, dtype, device)?
            .iter()
            .map(|l| Ok(l.argmax(0)?.to_scalar::<u32>()? as usize))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use candle_nn::{Optimizer, VarMap};

    #[test]
    fn straight_through_is_hard_forward_and_soft_backward() {
        let dev = Device::Cpu;
        let logits = Var::from_vec(vec![0.5f64, 1.5, -0.2, 0.1], 4, &dev).unwrap();
        let mut rng = Rng::new(3);
        let (soft, st) = gumbel_softmax_st(logits.as_tensor(), 0.5, 1.0, &mut rng).unwrap();
        let hard = st.to_vec1::<f64>().unwrap();
        assert_eq!(hard.iter().filter(|&&x| x == 1.0).count(), 1);
        assert_eq!(hard.iter().sum::<f64>(), 1.0);
        let soft_v = soft.to_vec1::<f64>().unwrap();
        let best = soft_v
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(hard[best], 1.0);
        // A loss on the hard sample reaches the logits through the soft one.
        let weights = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0], &dev).unwrap();
        let loss = (st * &weights).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g = g.get(&logits).unwrap().to_vec1::<f64>().unwrap();
        assert!(g.iter().any(|x| x.abs() > 1e-6), "{g:?}");
        // Same seed, same draw: the noise is reproducible.
        let (_, again) = gumbel_softmax_st(logits.as_tensor(), 0.5, 1.0, &mut Rng::new(3)).unwrap();
        assert_eq!(again.to_vec1::<f64>().unwrap(), hard);
    }

    #[test]
    fn schedule_anneals_from_one_to_five_hundredths() {
        assert_eq!(schedule(0, 100), (1.0, 1.0));
        let (t, s) = schedule(99, 100);
        assert!((t - 0.05).abs() < 1e-12 && (s - 10.0).abs() < 1e-9);
        let (t, _) = schedule(50, 100);
        assert!(t < 1.0 && t > 0.05);
    }

    /// Trains a router on two axes of quarter sizes with cost = mean of the two fractions, the
    /// loss |cost − budget| on both the relaxed Gumbel sample and the noise-free expectation,
    /// and returns the argmax cost per budget.
    fn train_synthetic(seed: u64) -> Vec<f64> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let budgets = vec![0.25, 0.5, 0.75, 1.0];
        let sizes = vec![1, 2, 3, 4];
        let router = Router::new(
            budgets.clone(),
            &[("depth", sizes.clone()), ("width", sizes.clone())],
            16,
            &varmap,
            DType::F64,
            &dev,
            &mut Rng::new(seed ^ 0xABCD),
        )
        .unwrap();
        let mut opt = candle_nn::AdamW::new(
            varmap.all_vars(),
            candle_nn::ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let fractions = Tensor::new(&[0.25f64, 0.5, 0.75, 1.0], &dev).unwrap();
        let cost_of = |picked: &[Tensor]| {
            let mut cost = Tensor::new(0.0f64, &dev).unwrap();
            for p in picked {
                let f = (p * &fractions).unwrap().sum_all().unwrap();
                cost = (cost + (f * 0.5).unwrap()).unwrap();
            }
            cost
        };
        let mut rng = Rng::new(seed);
        let steps = 1000;
        for step in 0..steps {
            let (t, s) = schedule(step, steps);
            let b = step % budgets.len();
            let choice = router.sample(b, t, s, &mut rng, DType::F64, &dev).unwrap();
            let loss = (crate::loss::cost_loss(&cost_of(&choice.soft), budgets[b]).unwrap()
                + crate::loss::cost_loss(&cost_of(&choice.probs), budgets[b]).unwrap())
            .unwrap();
            opt.backward_step(&loss).unwrap();
        }
        (0..budgets.len())
            .map(|b| {
                let picks = router.argmax(b, DType::F64, &dev).unwrap();
                picks.iter().map(|&p| (sizes[p] as f64) / 4.0).sum::<f64>() / 2.0
            })
            .collect()
    }

    /// The router reaches each of four synthetic budgets within ±5% with its argmax choice,
    /// for each of six seeds (initial weights and Gumbel noise both come from the seed).
    #[test]
    fn the_router_learns_to_hit_synthetic_budgets() {
        let budgets = [0.25, 0.5, 0.75, 1.0];
        let runs: Vec<Vec<f64>> = [1u64, 2, 3, 11, 12, 13].map(train_synthetic).to_vec();
        let hits = runs
            .iter()
            .filter(|costs| {
                costs
                    .iter()
                    .zip(budgets)
                    .all(|(c, t)| (c - t).abs() <= 0.05 * t)
            })
            .count();
        assert_eq!(hits, runs.len(), "argmax costs per seed: {runs:?}");
    }
}
