//! The BERT encoder: embeddings, self-attention, FFN, layer and encoder, one struct per HF
//! submodule, each with `load` and `forward`. A [`Profile`] picks the layers to run and slices
//! every width (heads, FFN neurons, hidden channels) as a prefix view of the parent's tensors:
//! one set of weights in memory serves every sub-encoder.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::config::BertConfig;
use crate::error::{EncoderError, Result};
use crate::profile::Profile;

/// Named tensors of a checkpoint, with the optional `bert.` prefix some exports carry.
pub(crate) struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
}

impl Weights {
    pub(crate) fn new(tensors: HashMap<String, Tensor>) -> Self {
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        Self { tensors, prefix }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let key = format!("{}{name}", self.prefix);
        let t = self.tensors.get(&key).ok_or_else(|| {
            EncoderError::Tensor(candle_core::Error::Msg(format!(
                "missing tensor {key} in model.safetensors"
            )))
        })?;
        if t.dims() != shape {
            return Err(EncoderError::Tensor(candle_core::Error::Msg(format!(
                "tensor {key} has shape {:?}, expected {shape:?}",
                t.dims()
            ))));
        }
        Ok(t.to_dtype(DType::F32)?)
    }
}

/// A dense layer whose output rows and input columns can be cut to a prefix at call time.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(w: &Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: w.get(&format!("{name}.bias"), &[outputs])?,
        })
    }

    /// `x` is `(n, k)` with `k` ≤ the layer's inputs; only the first `outputs` rows are used.
    /// The strided view goes straight to gemm, so no sliced copy of the weight is made.
    fn forward(&self, x: &Tensor, outputs: usize) -> Result<Tensor> {
        let inputs = x.dim(1)?;
        let w = self.weight.narrow(0, 0, outputs)?.narrow(1, 0, inputs)?;
        let b = self.bias.narrow(0, 0, outputs)?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(&b)?)
    }
}

/// LayerNorm over the first `hidden` channels: a narrower model normalises what it keeps.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(w: &Weights, name: &str, hidden: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{name}.weight"), &[hidden])?,
            bias: w.get(&format!("{name}.bias"), &[hidden])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.dim(D::Minus1)?;
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight.narrow(0, 0, h)?,
            &self.bias.narrow(0, 0, h)?,
            self.eps,
        )?)
    }
}

/// Word + position + token-type embeddings, then LayerNorm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: w.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            norm: LayerNorm::load(w, "embeddings.LayerNorm", h, cfg.layer_norm_eps)?,
        })
    }

    /// `ids` is `(batch, seq)` u32; returns `(batch * seq, hidden)`. Every text is a single
    /// segment, so token type 0 is added throughout.
    fn forward(&self, ids: &Tensor, hidden: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let words = self.word.index_select(&ids.flatten_all()?, 0)?;
        let words = words.narrow(1, 0, hidden)?.reshape((b, t, hidden))?;
        let pos = self.position.narrow(0, 0, t)?.narrow(1, 0, hidden)?;
        let tt = self.token_type.narrow(0, 0, 1)?.narrow(1, 0, hidden)?;
        let x = words.broadcast_add(&pos.broadcast_add(&tt)?)?;
        self.norm.forward(&x.reshape((b * t, hidden))?)
    }
}

/// Multi-head self-attention and its output projection with residual and LayerNorm
/// (HF `attention.self` + `attention.output`).
#[derive(Debug, Clone)]
pub struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: LayerNorm,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, p: &str, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            query: Linear::load(w, &format!("{p}.attention.self.query"), h, h)?,
            key: Linear::load(w, &format!("{p}.attention.self.key"), h, h)?,
            value: Linear::load(w, &format!("{p}.attention.self.value"), h, h)?,
            output: Linear::load(w, &format!("{p}.attention.output.dense"), h, h)?,
            norm: LayerNorm::load(
                w,
                &format!("{p}.attention.output.LayerNorm"),
                h,
                cfg.layer_norm_eps,
            )?,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x` is `(batch * seq, hidden)`; `bias` is the additive key mask `(batch, 1, 1, seq)`.
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, _, _, t) = bias.dims4()?;
        let hidden = x.dim(1)?;
        let width = heads * self.head_dim;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x, width)?)?;
        let k = split(self.key.forward(x, width)?)?;
        let v = split(self.value.forward(x, width)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, width))?;
        let out = self.output.forward(&ctx, hidden)?;
        self.norm.forward(&(out + x)?)
    }
}

/// The feed-forward block (HF `intermediate` + `output`) with residual and LayerNorm.
#[derive(Debug, Clone)]
pub struct FeedForward {
    up: Linear,
    down: Linear,
    norm: LayerNorm,
}

impl FeedForward {
    fn load(w: &Weights, p: &str, cfg: &BertConfig) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            up: Linear::load(w, &format!("{p}.intermediate.dense"), h, f)?,
            down: Linear::load(w, &format!("{p}.output.dense"), f, h)?,
            norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    fn forward(&self, x: &Tensor, ffn: usize) -> Result<Tensor> {
        let hidden = x.dim(1)?;
        let inner = self.up.forward(x, ffn)?.gelu_erf()?;
        let out = self.down.forward(&inner, hidden)?;
        self.norm.forward(&(out + x)?)
    }
}

/// One transformer layer.
#[derive(Debug, Clone)]
pub struct Layer {
    attention: Attention,
    ffn: FeedForward,
}

impl Layer {
    fn load(w: &Weights, index: usize, cfg: &BertConfig) -> Result<Self> {
        let p = format!("encoder.layer.{index}");
        Ok(Self {
            attention: Attention::load(w, &p, cfg)?,
            ffn: FeedForward::load(w, &p, cfg)?,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, profile: &Profile) -> Result<Tensor> {
        let x = self.attention.forward(x, bias, profile.heads)?;
        self.ffn.forward(&x, profile.ffn)
    }
}

/// The whole encoder: embeddings and every layer of the parent.
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    device: Device,
}

impl BertModel {
    pub(crate) fn load(w: &Weights, cfg: &BertConfig, device: &Device) -> Result<Self> {
        Ok(Self {
            embeddings: Embeddings::load(w, cfg)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(w, i, cfg))
                .collect::<Result<_>>()?,
            device: device.clone(),
        })
    }

    /// Runs `profile` on a padded batch: `ids` and `mask` are row-major `(batch, seq)`.
    /// Returns the last hidden state `(batch, seq, profile.hidden)`.
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        batch: usize,
        profile: &Profile,
    ) -> Result<Tensor> {
        let seq = ids.len() / batch.max(1);
        let ids = Tensor::from_slice(ids, (batch, seq), &self.device)?;
        // Padded keys get a large negative bias: exp() of it underflows to exactly 0.
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 0 { -1e30 } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (batch, 1, 1, seq), &self.device)?;
        let mut x = self.embeddings.forward(&ids, profile.hidden)?;
        for &l in &profile.layers {
            let layer = self
                .layers
                .get(l)
                .ok_or_else(|| EncoderError::InvalidProfile {
                    spec: profile.to_string(),
                    reason: format!("layer {l} is out of range 0..{}", self.layers.len()),
                })?;
            x = layer.forward(&x, &bias, profile)?;
        }
        Ok(x.reshape((batch, seq, profile.hidden))?)
    }
}
