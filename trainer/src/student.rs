//! The trainable encoder: BERT written only with ops that have a backward pass (candle-nn's
//! fused layer norm and softmax have none, so a model built on them gets no gradients), over
//! padded batches, with elastic gates: a gate per layer (skip = identity) and masks over the
//! importance-ranked heads and FFN neurons, so a router's straight-through choices reach the
//! task loss. Inference keeps the fused, packed encoder in mrl-encoder.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder, VarMap};
use mrl_encoder::BertConfig;

use crate::loss::softmax;

/// Layer norm over the last axis from basic ops.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// Elastic gates for one forward pass; `None` leaves an axis whole.
#[derive(Default, Clone)]
pub struct Gates {
    /// Per layer, a scalar in [0, 1]: 0 skips the layer (its output is its input).
    pub layers: Option<Vec<Tensor>>,
    /// [heads]: multiplies each head's attention context.
    pub heads: Option<Tensor>,
    /// [intermediate]: multiplies each FFN neuron's activation.
    pub ffn: Option<Tensor>,
}

/// A prefix mask of `len` with the first `keep` entries 1.
pub fn prefix_mask(keep: usize, len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len).map(|i| if i < keep { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(v, len, device)?.to_dtype(dtype)
}

/// Σ_k onehot[k] · prefix_mask(sizes[k]): the straight-through one-hot over allowed sizes
/// turned into a mask whose gradient reaches the router.
pub fn soft_prefix_mask(one_hot: &Tensor, sizes: &[usize], len: usize) -> Result<Tensor> {
    let masks = sizes
        .iter()
        .map(|&k| prefix_mask(k, len, one_hot.dtype(), one_hot.device()))
        .collect::<Result<Vec<_>>>()?;
    let stacked = Tensor::stack(&masks, 0)?; // [K, len]
    one_hot.unsqueeze(0)?.matmul(&stacked)?.squeeze(0)
}

/// The Matryoshka head: a trainable dense layer from the pooled width to the nested output
/// width (e.g. 384 → 512), so the widest output and every prefix of it are trained. It starts
/// as the identity on the first `input` outputs (the parent's embedding, unchanged) and small
/// random weights for the rest, so training starts from the parent's behaviour.
pub struct MatryoshkaHead {
    linear: Linear,
}

impl MatryoshkaHead {
    /// Creates `head.weight` and `head.bias` in `varmap` (or reuses them when a checkpoint
    /// already put them there): the identity on the parent's width, small random rows beyond.
    pub fn new(
        input: usize,
        output: usize,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
        rng: &mut crate::router::Rng,
    ) -> Result<Self> {
        Self::initialised(input, output, varmap, dtype, device, || {
            let mut w = vec![0f32; output * input];
            for (r, row) in w.chunks_mut(input).enumerate() {
                if r < input {
                    row[r] = 1.0;
                } else {
                    for x in row.iter_mut() {
                        *x = ((rng.uniform() - 0.5) * 0.02) as f32;
                    }
                }
            }
            w
        })
    }

    /// As `new`, but starting from `rotation` (`input × input`, row-major, orthogonal: see
    /// `rotation::Rotation`) on the parent's width and zero rows beyond it. At the start the
    /// full width equals the parent's up to that rotation (same cosines), every prefix is the
    /// rotation baseline, and widths past the parent's add only zeros, so none is worse than
    /// the parent's width.
    pub fn from_rotation(
        rotation: &[f32],
        output: usize,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let input = (rotation.len() as f64).sqrt() as usize;
        if input * input != rotation.len() {
            candle_core::bail!("a rotation is square; got {} values", rotation.len());
        }
        Self::initialised(input, output, varmap, dtype, device, || {
            let mut w = rotation.to_vec();
            w.resize(output * input, 0.0);
            w
        })
    }

    fn initialised(
        input: usize,
        output: usize,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
        weight: impl FnOnce() -> Vec<f32>,
    ) -> Result<Self> {
        if output < input {
            candle_core::bail!("the head widens: output {output} < input {input}");
        }
        {
            let mut data = varmap
                .data()
                .lock()
                .expect("the var map lock is poisoned; this is a bug");
            if !data.contains_key("head.weight") {
                let w = Tensor::from_vec(weight(), (output, input), device)?.to_dtype(dtype)?;
                data.insert("head.weight".into(), Var::from_tensor(&w)?);
                let b = Tensor::zeros(output, dtype, device)?;
                data.insert("head.bias".into(), Var::from_tensor(&b)?);
            }
        }
        let vb = VarBuilder::from_varmap(varmap, dtype, device).pp("head");
        Ok(Self {
            linear: candle_nn::linear(input, output, vb)?,
        })
    }

    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        self.linear.forward(pooled)
    }
}

pub struct StudentBert {
    config: BertConfig,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl StudentBert {
    /// Builds the model in `varmap` from a checkpoint's tensors (HF BERT names), each one a
    /// trainable variable of `dtype`.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        cfg: &BertConfig,
        varmap: &VarMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        {
            let mut data = varmap
                .data()
                .lock()
                .expect("the var map lock is poisoned; this is a bug");
            for (name, t) in tensors {
                let name = name.strip_prefix("bert.").unwrap_or(name);
                data.insert(
                    name.to_string(),
                    Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?,
                );
            }
        }
        Self::load(VarBuilder::from_varmap(varmap, dtype, device), cfg)
    }

    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let eps = cfg.layer_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = vb.pp(format!("encoder.layer.{l}"));
                Ok(Layer {
                    query: candle_nn::linear(h, h, p.pp("attention.self.query"))?,
                    key: candle_nn::linear(h, h, p.pp("attention.self.key"))?,
                    value: candle_nn::linear(h, h, p.pp("attention.self.value"))?,
                    attn_out: candle_nn::linear(h, h, p.pp("attention.output.dense"))?,
                    attn_norm: LayerNorm::load(p.pp("attention.output.LayerNorm"), h, eps)?,
                    inter: candle_nn::linear(h, cfg.intermediate_size, p.pp("intermediate.dense"))?,
                    out: candle_nn::linear(cfg.intermediate_size, h, p.pp("output.dense"))?,
                    out_norm: LayerNorm::load(p.pp("output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: cfg.clone(),
            word: candle_nn::embedding(cfg.vocab_size, h, e.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                e.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                cfg.type_vocab_size,
                h,
                e.pp("token_type_embeddings"),
            )?,
            emb_norm: LayerNorm::load(e.pp("LayerNorm"), h, eps)?,
            layers,
        })
    }

    /// Right-pads token id lists into `[B, T]` ids and a `[B, T]` mask of `dtype`.
    pub fn pad(seqs: &[Vec<u32>], dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; seqs.len() * t];
        let mut mask = vec![0f32; seqs.len() * t];
        for (i, s) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.len()].copy_from_slice(s);
            mask[i * t..i * t + s.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        Ok((
            Tensor::from_vec(ids, (seqs.len(), t), device)?,
            Tensor::from_vec(mask, (seqs.len(), t), device)?.to_dtype(dtype)?,
        ))
    }

    /// Mean-pooled embeddings `[B, hidden]` of padded `ids` under `gates`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, gates: &Gates) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        let (nh, h) = (cfg.num_attention_heads, cfg.hidden_size);
        let dh = h / nh;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?.unsqueeze(0)?;
        let mut x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .broadcast_add(&self.token_type.forward(&ids.zeros_like()?)?)?;
        x = self.emb_norm.forward(&x)?;
        // Padding keys get a large negative score; built once per batch.
        let bias = ((mask.ones_like()? - mask)? * -1e4)?.reshape((b, 1, 1, t))?;
        for (l, layer) in self.layers.iter().enumerate() {
            let split = |y: Tensor| -> Result<Tensor> {
                y.reshape((b, t, nh, dh))?.transpose(1, 2)?.contiguous()
            };
            let q = split(layer.query.forward(&x)?)?;
            let k = split(layer.key.forward(&x)?)?;
            let v = split(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? / (dh as f64).sqrt())?.broadcast_add(&bias)?;
            let mut ctx = softmax(&scores)?.matmul(&v)?; // [B, nh, T, dh]
            if let Some(m) = &gates.heads {
                ctx = ctx.broadcast_mul(&m.reshape((1, nh, 1, 1))?)?;
            }
            let ctx = ctx.transpose(1, 2)?.contiguous()?.reshape((b, t, h))?;
            let a = layer
                .attn_norm
                .forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let mut f = layer.inter.forward(&a)?.gelu_erf()?;
            if let Some(m) = &gates.ffn {
                f = f.broadcast_mul(m)?;
            }
            let y = layer.out_norm.forward(&(layer.out.forward(&f)? + &a)?)?;
            x = match gates.layers.as_ref().map(|g| &g[l]) {
                // g = 1 keeps the layer, g = 0 makes it the identity.
                Some(g) => (&x + (y - &x)?.broadcast_mul(g)?)?,
                None => y,
            };
        }
        let m = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        summed.broadcast_div(&m.sum(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
    use mrl_encoder::model::BertModel;
    use mrl_encoder::Profile;

    /// Ungated, the training forward computes what the inference encoder computes.
    #[test]
    fn matches_the_inference_encoder() {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 5);
        let reference = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let varmap = VarMap::new();
        let student =
            StudentBert::from_tensors(&tensors, &cfg, &varmap, DType::F32, &Device::Cpu).unwrap();
        let seqs = tiny_seqs();
        let (ids, mask) = StudentBert::pad(&seqs, DType::F32, &Device::Cpu).unwrap();
        let got = student
            .forward(&ids, &mask, &Gates::default())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = reference.forward(&rows, &Profile::full(&cfg)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    /// Gates at 0/1 compute the profile the inference encoder runs by slicing.
    #[test]
    fn hard_gates_equal_the_sliced_profile() {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 6);
        let reference = BertModel::from_tensors(tensors.clone(), &cfg).unwrap();
        let varmap = VarMap::new();
        let dev = Device::Cpu;
        let student = StudentBert::from_tensors(&tensors, &cfg, &varmap, DType::F32, &dev).unwrap();
        let seqs = tiny_seqs();
        let (ids, mask) = StudentBert::pad(&seqs, DType::F32, &dev).unwrap();
        let gate = |on: bool| Tensor::new(if on { 1f32 } else { 0.0 }, &dev).unwrap();
        let gates = Gates {
            layers: Some(vec![gate(true), gate(false), gate(true), gate(true)]),
            heads: Some(prefix_mask(2, 4, DType::F32, &dev).unwrap()),
            ffn: Some(prefix_mask(16, 32, DType::F32, &dev).unwrap()),
        };
        let got = student
            .forward(&ids, &mask, &gates)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let profile = Profile {
            layers: vec![0, 2, 3],
            heads: 2,
            ffn: 16,
            hidden: cfg.hidden_size,
        };
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = reference.forward(&rows, &profile).unwrap();
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_head_starts_as_the_identity_on_the_parent_width() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let mut rng = crate::router::Rng::new(2);
        let head = MatryoshkaHead::new(4, 6, &varmap, DType::F32, &dev, &mut rng).unwrap();
        let x = Tensor::new(&[[1f32, -2.0, 3.0, 0.5]], &dev).unwrap();
        let y = head.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(&y[0][..4], &[1.0, -2.0, 3.0, 0.5]);
        assert!(y[0][4] != 0.0 && y[0][4].abs() < 0.2);
        let (w, _) = {
            let data = varmap.data().lock().unwrap();
            (data["head.weight"].clone(), data["head.bias"].clone())
        };
        let loss = head.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
        assert!(
            loss.backward().unwrap().get(&w).is_some(),
            "the head trains"
        );
        assert!(MatryoshkaHead::new(4, 2, &VarMap::new(), DType::F32, &dev, &mut rng).is_err());
    }

    /// A head started from a fitted rotation: its parent-width output is the rotated vector
    /// (same cosines), the rows past the parent's width are zero, and it still trains.
    #[test]
    fn a_head_from_a_rotation_rotates_and_pads_with_zeros() {
        let dev = Device::Cpu;
        let data: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                (0..4)
                    .map(|j| ((i * 7 + j * 3) % 5) as f32 - 1.5 + j as f32)
                    .collect()
            })
            .collect();
        let r = crate::rotation::Rotation::fit(&data).unwrap();
        let varmap = VarMap::new();
        let head =
            MatryoshkaHead::from_rotation(&r.matrix_f32(), 6, &varmap, DType::F32, &dev).unwrap();
        let x = Tensor::new(&[[1f32, -2.0, 3.0, 0.5]], &dev).unwrap();
        let y = head.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let want = r.apply(&[1.0, -2.0, 3.0, 0.5]);
        for (a, b) in y[0][..4].iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        assert_eq!(&y[0][4..], &[0.0, 0.0]);
        let w = varmap.data().lock().unwrap()["head.weight"].clone();
        let loss = head.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
        assert!(loss.backward().unwrap().get(&w).is_some());
        assert!(
            MatryoshkaHead::from_rotation(&[1.0; 5], 6, &VarMap::new(), DType::F32, &dev).is_err()
        );
    }

    /// A checkpoint written with a (non-identity) head runs through it at inference: the
    /// encoder's output is the student's head output, at the head's width.
    #[test]
    fn the_inference_encoder_runs_the_trained_head() {
        let cfg = tiny_config();
        let dev = Device::Cpu;
        let mut tensors = tiny_tensors(&cfg, 7);
        let varmap = VarMap::new();
        let student = StudentBert::from_tensors(&tensors, &cfg, &varmap, DType::F32, &dev).unwrap();
        let mut rng = crate::router::Rng::new(3);
        let width = cfg.hidden_size + 5;
        let head = MatryoshkaHead::new(cfg.hidden_size, width, &varmap, DType::F32, &dev, &mut rng)
            .unwrap();
        {
            // Move the head off the identity, as training does.
            let data = varmap.data().lock().unwrap();
            let w = data["head.weight"].as_tensor();
            let noise = Tensor::rand(-0.3f32, 0.3, w.shape(), &dev).unwrap();
            data["head.weight"].set(&(w + noise).unwrap()).unwrap();
            data["head.bias"]
                .set(&Tensor::rand(-0.1f32, 0.1, width, &dev).unwrap())
                .unwrap();
            for name in ["head.weight", "head.bias"] {
                tensors.insert(name.into(), data[name].as_tensor().clone());
            }
        }
        let seqs = tiny_seqs();
        let (ids, mask) = StudentBert::pad(&seqs, DType::F32, &dev).unwrap();
        let pooled = student.forward(&ids, &mask, &Gates::default()).unwrap();
        let got = head.forward(&pooled).unwrap().to_vec2::<f32>().unwrap();
        let model = BertModel::from_tensors(tensors, &cfg).unwrap();
        let full = Profile::full(&cfg);
        assert_eq!(model.output_width(&full), width);
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = model.forward(&rows, &full).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(w.len(), width);
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    fn abs_sum(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Every trainable variable gets a non-zero gradient from an InfoNCE loss through the
    /// gated forward, and so do the router logits behind a straight-through mask.
    #[test]
    fn every_variable_receives_a_gradient() {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 7);
        let varmap = VarMap::new();
        let dev = Device::Cpu;
        let student = StudentBert::from_tensors(&tensors, &cfg, &varmap, DType::F32, &dev).unwrap();
        let logits = Var::from_vec(vec![0.1f32, 0.3, -0.2], 3, &dev).unwrap();
        let mut rng = crate::router::Rng::new(1);
        let (_, st) =
            crate::router::gumbel_softmax_st(logits.as_tensor(), 1.0, 1.0, &mut rng).unwrap();
        let gates = Gates {
            ffn: Some(soft_prefix_mask(&st, &[8, 16, 32], 32).unwrap()),
            ..Gates::default()
        };
        let seqs = tiny_seqs();
        let (q, d) = seqs.split_at(6);
        let (qi, qm) = StudentBert::pad(q, DType::F32, &dev).unwrap();
        let (di, dm) = StudentBert::pad(d, DType::F32, &dev).unwrap();
        let qe = student.forward(&qi, &qm, &gates).unwrap();
        let de = student.forward(&di, &dm, &gates).unwrap();
        let loss = crate::loss::info_nce(&qe, &de, 0.05).unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        // The position rows past the longest sequence and the unused token type are never
        // looked up, so those tensors are checked for any non-zero entry.
        assert_eq!(vars.len(), tensors.len());
        for (name, var) in vars.iter() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(abs_sum(g) > 0.0, "{name}: zero gradient");
        }
        let g = grads
            .get(&logits)
            .expect("the router logits get a gradient");
        assert!(abs_sum(g) > 0.0);
    }
}
