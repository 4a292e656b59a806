//! The trainable encoder: BERT with elastic gates (a gate per layer, skip = identity, and
//! masks over the importance-ranked heads and FFN neurons, so a router's straight-through
//! choices reach the task loss), run by one of two kernel sets (`Kernels`): packed sequences
//! through the fused ops with a backward pass of `fused` (the default), or padded batches
//! through chains of primitive candle ops (candle-nn's own layer norm and softmax have no
//! backward), kept as the reference the fused path is tested against. Inference keeps the
//! fused, packed encoder in mrl-encoder.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder, VarMap};
use mrl_encoder::pooling::Pooling;
use mrl_encoder::BertConfig;
use serde::{Deserialize, Serialize};

use crate::fused::{self, Spans};
use crate::loss::softmax;

/// Which ops run the student's forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Packed sequences (no padding) through `fused`'s ops.
    #[default]
    Fused,
    /// Padded batches through chains of primitive candle ops: the trainer's first path, the
    /// reference for the fused one (same losses within float rounding).
    Primitive,
}

/// Whether a parent that pools by `pooling` (its `modules.json`) can be trained: the student
/// and the heads it fits pool by mean, so checked before a run, not after.
///
/// Errors: the reason, for any other pooling.
pub fn check_parent_pooling(pooling: Pooling) -> std::result::Result<(), String> {
    match pooling {
        Pooling::Mean => Ok(()),
        other => Err(format!(
            "the parent pools by {} (modules.json); the student pools by mean, so only \
             mean-pooled parents can be trained",
            other.name()
        )),
    }
}

/// A tokenized batch in the form its kernels take.
pub enum Batch {
    /// `[B, T]` ids right-padded with 0 and a `[B, T]` f32 mask of real tokens.
    Padded { ids: Tensor, mask: Tensor },
    /// The sequences end to end: `[N]` ids and positions, their spans, and the `[B, N]`
    /// mean-pooling matrix (row `b` holds `1 / len_b` over sequence `b`'s tokens).
    Packed {
        ids: Tensor,
        positions: Tensor,
        spans: Arc<Spans>,
        pool: Tensor,
    },
}

impl Batch {
    /// Lays out `seqs` for `kernels`.
    ///
    /// Errors: an empty sequence in a packed batch (it has no mean), or a tensor that cannot
    /// be built.
    pub fn new(seqs: &[Vec<u32>], kernels: Kernels, device: &Device) -> Result<Self> {
        match kernels {
            Kernels::Primitive => {
                let (ids, mask) = StudentBert::pad(seqs, DType::F32, device)?;
                Ok(Self::Padded { ids, mask })
            }
            Kernels::Fused => {
                if seqs.iter().any(Vec::is_empty) {
                    candle_core::bail!("a packed batch needs every sequence to have a token");
                }
                let spans = Spans::from_lengths(seqs.iter().map(Vec::len));
                let n = spans.tokens();
                let ids: Vec<u32> = seqs.concat();
                let positions: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
                let mut pool = vec![0f32; seqs.len() * n];
                for (b, (start, len)) in spans.iter().enumerate() {
                    pool[b * n + start..b * n + start + len].fill(1.0 / len as f32);
                }
                Ok(Self::Packed {
                    ids: Tensor::from_vec(ids, n, device)?,
                    positions: Tensor::from_vec(positions, n, device)?,
                    pool: Tensor::from_vec(pool, (seqs.len(), n), device)?,
                    spans: Arc::new(spans),
                })
            }
        }
    }
}

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

    fn fused(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        primitive_layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Layer norm over the last axis from primitive ops (the reference for `fused::layer_norm`).
pub(crate) fn primitive_layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
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

impl Layer {
    /// Every trainable tensor of the layer.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut t = Vec::new();
        for l in [
            &self.query,
            &self.key,
            &self.value,
            &self.attn_out,
            &self.inter,
            &self.out,
        ] {
            t.push(l.weight());
            t.extend(l.bias());
        }
        for n in [&self.attn_norm, &self.out_norm] {
            t.extend([&n.weight, &n.bias]);
        }
        t
    }
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

impl Gates {
    /// Hard gates that run `profile` (kept layers 1, the rest 0; prefix masks over heads and
    /// FFN neurons): the student then computes what the inference encoder computes for it by
    /// slicing.
    pub fn profile(
        profile: &mrl_encoder::Profile,
        cfg: &BertConfig,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                Tensor::new(
                    if profile.layers.contains(&l) {
                        1f32
                    } else {
                        0.0
                    },
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers: Some(layers),
            heads: Some(prefix_mask(
                profile.heads,
                cfg.num_attention_heads,
                DType::F32,
                device,
            )?),
            ffn: Some(prefix_mask(
                profile.ffn,
                cfg.intermediate_size,
                DType::F32,
                device,
            )?),
        })
    }
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

    /// Mean-pooled embeddings `[B, hidden]` of `batch` under `gates`, by the batch's kernels.
    pub fn forward(&self, batch: &Batch, gates: &Gates) -> Result<Tensor> {
        match batch {
            Batch::Padded { ids, mask } => self.forward_padded(ids, mask, gates),
            Batch::Packed {
                ids,
                positions,
                spans,
                pool,
            } => self.forward_packed(ids, positions, spans, pool, gates),
        }
    }

    /// The fused path: every op works on `[N, hidden]` rows of real tokens.
    fn forward_packed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        spans: &Arc<Spans>,
        pool: &Tensor,
        gates: &Gates,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (nh, h) = (cfg.num_attention_heads, cfg.hidden_size);
        let dh = h / nh;
        let dense = |l: &Linear, x: &Tensor| -> Result<Tensor> {
            match l.bias() {
                Some(b) => fused::linear(x, l.weight(), b),
                None => candle_core::bail!("BERT's dense layers have biases"),
            }
        };
        // Every token has type 0: one row of the type table, broadcast.
        let x = (self.word.forward(ids)? + self.position.forward(positions)?)?
            .broadcast_add(&self.token_type.embeddings().get(0)?)?;
        let mut x = self.emb_norm.fused(&x)?;
        // The head mask spread over each head's columns, once per pass.
        let head_columns = match &gates.heads {
            Some(m) => Some(m.reshape((nh, 1))?.broadcast_as((nh, dh))?.reshape(h)?),
            None => None,
        };
        let closed = Self::closed_layers(gates)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let run = |x: &Tensor| -> Result<Tensor> {
                let q = dense(&layer.query, x)?;
                let k = dense(&layer.key, x)?;
                let v = dense(&layer.value, x)?;
                let mut ctx = fused::attention(&q, &k, &v, spans, nh)?;
                if let Some(m) = &head_columns {
                    ctx = ctx.broadcast_mul(m)?;
                }
                let a = layer
                    .attn_norm
                    .fused(&(dense(&layer.attn_out, &ctx)? + x)?)?;
                let mut f = fused::gelu(&dense(&layer.inter, &a)?)?;
                if let Some(m) = &gates.ffn {
                    f = f.broadcast_mul(m)?;
                }
                layer.out_norm.fused(&(dense(&layer.out, &f)? + &a)?)
            };
            x = match gates.layers.as_ref().map(|g| &g[l]) {
                // A closed gate (exactly 0) passes x through, and the loss reaches the layer
                // only through the gate's own gradient, Σ (y − x)·∂L/∂out: y's value is
                // needed, but every gradient inside the layer is exactly 0, so the layer runs
                // off the graph and its backward pass is never computed
                // (`fill_closed_layers` supplies the zeros).
                Some(g) if closed.contains(&l) => {
                    (&x + (run(&x.detach())?.detach() - &x)?.broadcast_mul(g)?)?
                }
                Some(g) => {
                    let y = run(&x)?;
                    (&x + (y - &x)?.broadcast_mul(g)?)?
                }
                None => run(&x)?,
            };
        }
        pool.matmul(&x)
    }

    /// The layers whose gate in `gates` is exactly 0 (none without layer gates).
    ///
    /// Errors: a layer gate that is not a scalar.
    pub fn closed_layers(gates: &Gates) -> Result<Vec<usize>> {
        let mut closed = Vec::new();
        for (l, g) in gates.layers.iter().flatten().enumerate() {
            if g.to_dtype(DType::F32)?.to_scalar::<f32>()? == 0.0 {
                closed.push(l);
            }
        }
        Ok(closed)
    }

    /// Gives every variable of the `closed` layers a zero gradient where `grads` has none.
    /// The fused path runs a closed layer off the graph (its gradients are exactly 0), and
    /// AdamW must still see those zeros (its moments decay, weight decay applies) as on the
    /// primitive path, which computes them.
    pub fn fill_closed_layers(&self, closed: &[usize], grads: &mut GradStore) -> Result<()> {
        for &l in closed {
            let Some(layer) = self.layers.get(l) else {
                candle_core::bail!("layer {l} of {}", self.layers.len());
            };
            for t in layer.tensors() {
                if grads.get(t).is_none() {
                    grads.insert(t, t.zeros_like()?);
                }
            }
        }
        Ok(())
    }

    /// The primitive path over padded `ids` and their `mask`.
    fn forward_padded(&self, ids: &Tensor, mask: &Tensor, gates: &Gates) -> Result<Tensor> {
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

    /// Both kernel sets give `want` (the inference encoder's rows) within 1e-4 for `seqs`.
    fn assert_both_kernels_compute(
        student: &StudentBert,
        seqs: &[Vec<u32>],
        gates: &Gates,
        want: &[Vec<f32>],
    ) {
        for kernels in [Kernels::Fused, Kernels::Primitive] {
            let batch = Batch::new(seqs, kernels, &Device::Cpu).unwrap();
            let got = student
                .forward(&batch, gates)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (g, w) in got.iter().zip(want) {
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() < 1e-4, "{kernels:?}: {a} vs {b}");
                }
            }
        }
    }

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
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = reference.forward(&rows, &Profile::full(&cfg)).unwrap();
        assert_both_kernels_compute(&student, &seqs, &Gates::default(), &want);
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
        let profile = Profile {
            layers: vec![0, 2, 3],
            heads: 2,
            ffn: 16,
            hidden: cfg.hidden_size,
        };
        let gates = Gates::profile(&profile, &cfg, &dev).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let layers: Vec<f32> = gates
            .layers
            .iter()
            .flatten()
            .map(|g| g.to_scalar().unwrap())
            .collect();
        assert_eq!(layers, [1.0, 0.0, 1.0, 1.0]);
        assert_eq!(values(gates.heads.as_ref().unwrap()), [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            values(gates.ffn.as_ref().unwrap()).iter().sum::<f32>(),
            16.0
        );
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let want = reference.forward(&rows, &profile).unwrap();
        assert_both_kernels_compute(&student, &seqs, &gates, &want);
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
        let batch = Batch::new(&seqs, Kernels::default(), &dev).unwrap();
        let pooled = student.forward(&batch, &Gates::default()).unwrap();
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
        for kernels in [Kernels::Fused, Kernels::Primitive] {
            every_variable_receives_a_gradient_with(kernels);
        }
    }

    fn every_variable_receives_a_gradient_with(kernels: Kernels) {
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
        let qe = student
            .forward(&Batch::new(q, kernels, &dev).unwrap(), &gates)
            .unwrap();
        let de = student
            .forward(&Batch::new(d, kernels, &dev).unwrap(), &gates)
            .unwrap();
        let loss = crate::loss::info_nce(&qe, &de, 0.05).unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        // The position rows past the longest sequence and the unused token type are never
        // looked up, so those tensors are checked for any non-zero entry.
        assert_eq!(vars.len(), tensors.len());
        for (name, var) in vars.iter() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{kernels:?}: {name} has no gradient"));
            assert!(abs_sum(g) > 0.0, "{kernels:?}: {name}: zero gradient");
        }
        let g = grads
            .get(&logits)
            .expect("the router logits get a gradient");
        assert!(abs_sum(g) > 0.0);
    }

    /// The packed, fused path and the padded, primitive one compute the same loss and the
    /// same gradient for every variable and every gate (gates strictly between 0 and 1, so
    /// both branches of each gate carry gradient), within 1e-4 of the largest entry.
    #[test]
    fn packed_fused_and_padded_primitive_agree_in_values_and_gradients() {
        let dev = Device::Cpu;
        let ffn = Tensor::rand(0f32, 1.0, 32, &dev).unwrap();
        agree_in_values_and_gradients([0.9, 0.3, 1.0, 0.6], [1.0, 0.8, 0.5, 0.2], ffn);
    }

    /// The same under a sampled profile's hard masks (half the heads, a quarter of the FFN
    /// neurons: the zero suffixes the fused path skips), the masks' gradients included.
    #[test]
    fn packed_fused_and_padded_primitive_agree_under_hard_masks() {
        let ffn = prefix_mask(8, 32, DType::F32, &Device::Cpu).unwrap();
        agree_in_values_and_gradients([1.0, 0.7, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], ffn);
    }

    fn agree_in_values_and_gradients(layers: [f32; 4], heads: [f32; 4], ffn: Tensor) {
        let cfg = tiny_config();
        let tensors = tiny_tensors(&cfg, 8);
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let student = StudentBert::from_tensors(&tensors, &cfg, &varmap, DType::F32, &dev).unwrap();
        let layer_gates: Vec<Var> = layers.iter().map(|&g| Var::new(g, &dev).unwrap()).collect();
        let heads = Var::new(&heads, &dev).unwrap();
        let ffn = Var::from_tensor(&ffn).unwrap();
        let gates = Gates {
            layers: Some(layer_gates.iter().map(|g| g.as_tensor().clone()).collect()),
            heads: Some(heads.as_tensor().clone()),
            ffn: Some(ffn.as_tensor().clone()),
        };
        let seqs = tiny_seqs();
        let (q, d) = seqs.split_at(6);
        let run = |kernels: Kernels| {
            let qe = student
                .forward(&Batch::new(q, kernels, &dev).unwrap(), &gates)
                .unwrap();
            let de = student
                .forward(&Batch::new(d, kernels, &dev).unwrap(), &gates)
                .unwrap();
            let loss = crate::loss::info_nce(&qe, &de, 0.05).unwrap();
            (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
        };
        let (fused_loss, fused) = run(Kernels::Fused);
        let (prim_loss, prim) = run(Kernels::Primitive);
        assert!(
            (fused_loss - prim_loss).abs() <= 1e-4 * prim_loss.abs(),
            "{fused_loss} vs {prim_loss}"
        );
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        vars.extend(
            layer_gates
                .iter()
                .enumerate()
                .map(|(i, g)| (format!("gate {i}"), g.clone())),
        );
        vars.push(("heads".into(), heads.clone()));
        vars.push(("ffn".into(), ffn.clone()));
        let flat = |g: &candle_core::backprop::GradStore, name: &str, var: &Var| {
            g.get(var)
                .unwrap_or_else(|| panic!("{name} has no gradient"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let largest = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let overall = vars
            .iter()
            .map(|(n, v)| largest(&flat(&prim, n, v)))
            .fold(0f32, f32::max);
        for (name, var) in &vars {
            let (a, b) = (flat(&fused, name, var), flat(&prim, name, var));
            // Gradients that are zero in exact arithmetic (the key bias: softmax ignores a
            // per-row shift) are rounding noise on both paths, hence the floor.
            let scale = largest(&b).max(1e-2 * overall);
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{name}: fused and primitive gradients differ by {worst} (scale {scale})"
            );
        }
    }
}
