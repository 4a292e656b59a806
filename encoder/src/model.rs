//! The encoder (BERT, and MPNet through `arch`'s names and relative position bias):
//! embeddings, self-attention, FFN, layer and encoder, one struct per HF submodule, each with
//! `load` and `forward`.
//!
//! Sequences run packed, without padding: a batch is the concatenation of its texts' tokens,
//! the dense layers see one `(tokens × width)` matrix and attention runs per sequence. A
//! [`Profile`] picks the layers to run and slices every width (heads, FFN neurons, hidden
//! channels) as a strided prefix view of the parent's weights, so one copy of the weights
//! serves every sub-encoder. Activation buffers are pooled and reused between batches.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::arch::{LayerNames, RelativeBias};
use crate::config::BertConfig;
use crate::dense::Linear;
use crate::error::{EncoderError, Result};
use crate::kernels::{self, MatRef};
use crate::pooling::Pooling;
use crate::profile::Profile;
pub(crate) use crate::weights::Weights;

/// The arithmetic of the encoder's dense layers (attention scores, softmax, LayerNorm, GELU
/// and the Matryoshka head stay f32 either way). Written `f32` / `int8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and activations: the exact-parity path.
    #[default]
    F32,
    /// int8 weights (per output channel) and activations (per row), i32 accumulation
    /// (`int8`); a quarter of the dense weights' bytes.
    Int8,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = EncoderError;

    /// `f32` or `int8`, any case.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            _ => Err(EncoderError::UnknownPrecision(s.to_string())),
        }
    }
}

/// Receives intermediate activations of a forward pass. Calibration ranks heads, neurons and
/// channels by these; inference passes [`NoObserver`]. Every method defaults to doing nothing.
pub trait Observer {
    /// A LayerNorm output (`tokens × hidden`): the residual stream after embeddings, after
    /// each attention block and after each FFN block (before any layer bridge).
    fn hidden(&mut self, _x: &[f32], _hidden: usize) {}
    /// Layer `layer`'s attention context before the output projection
    /// (`tokens × heads·head_dim`, head-major within a row).
    fn heads(&mut self, _layer: usize, _ctx: &[f32], _heads: usize, _head_dim: usize) {}
    /// Layer `layer`'s FFN intermediate activation after GELU, a block of rows at a time
    /// (`rows × ffn`).
    fn ffn(&mut self, _layer: usize, _inner: &[f32], _ffn: usize) {}
}

/// A profile's stand-in for the layers it skips (or a correction of a narrowed layer's
/// output): after layer `after`, every token's hidden state `x` (the layer's LayerNorm
/// output, `hidden` wide) becomes `W x + b` before the next layer the profile runs (never
/// after its last layer). Stored as `bridges.NAME.{after}.weight` (`hidden × hidden`,
/// row-major, `W`) and `.bias` (`hidden`). Fitted so the next layer sees what the parent's
/// skipped layers would have given it; consecutive layers' hidden states are close to
/// linear maps of each other (Razzhigaev et al., "Your Transformer is Secretly Linear",
/// 2024), which is why an affine map can stand in for several. Runs at the model's
/// precision, like the layers around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bridge {
    /// The layer (parent index) whose output it maps.
    pub after: usize,
    /// `hidden × hidden`, row-major: output `i` is `Σ_j weight[i·hidden + j] x_j + bias[i]`.
    pub weight: Vec<f32>,
    /// `hidden`.
    pub bias: Vec<f32>,
}

/// Observes nothing: the inference path.
pub struct NoObserver;

impl Observer for NoObserver {}

/// LayerNorm whose affine parameters are cut to the hidden width in use.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
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

    /// `x = LayerNorm(x + residual)` over rows of `hidden`, in parallel blocks of rows.
    fn add_forward(&self, x: &mut [f32], residual: &[f32], hidden: usize) {
        let (w, b) = (&self.weight[..hidden], &self.bias[..hidden]);
        let block = hidden * 32;
        x.par_chunks_mut(block)
            .zip(residual.par_chunks(block))
            .for_each(|(x, r)| kernels::add_layer_norm(x, r, w, b, self.eps));
    }
}

/// Word + position (+ token-type) embeddings, then LayerNorm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Type 0's row; zeros for a model without token types (MPNet).
    token_type: Vec<f32>,
    /// The position row of a sequence's first token ([`BertConfig::position_offset`]).
    position_offset: usize,
    norm: LayerNorm,
    width: usize,
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
            token_type: match cfg.token_types() {
                0 => vec![0.0; h],
                types => {
                    let mut t = w.get("embeddings.token_type_embeddings.weight", &[types, h])?;
                    t.truncate(h);
                    t
                }
            },
            position_offset: cfg.position_offset(),
            norm: LayerNorm::load(w, "embeddings.LayerNorm", h, cfg.layer_norm_eps)?,
            width: h,
        })
    }

    /// Fills `ws.x` (`tokens × hidden`) for packed sequences. Every text is a single segment,
    /// so token type 0 is added throughout. Word vectors go to `x` and position + type to
    /// `tmp`, so the sum is the residual add of the shared add + LayerNorm step.
    fn forward(&self, ws: &mut Workspace, seqs: &[&[u32]], hidden: usize, obs: &mut dyn Observer) {
        let w = self.width;
        ws.x.resize(ws.tokens * hidden, 0.0);
        ws.tmp.resize(ws.tokens * hidden, 0.0);
        let mut rows =
            ws.x.chunks_exact_mut(hidden)
                .zip(ws.tmp.chunks_exact_mut(hidden));
        let tt = &self.token_type[..hidden];
        for ids in seqs {
            for (pos, &id) in ids.iter().enumerate() {
                let Some((word_row, rest_row)) = rows.next() else {
                    return;
                };
                word_row.copy_from_slice(&self.word[id as usize * w..][..hidden]);
                let position = &self.position[(pos + self.position_offset) * w..][..hidden];
                for ((o, p), t) in rest_row.iter_mut().zip(position).zip(tt) {
                    *o = p + t;
                }
            }
        }
        self.norm.add_forward(&mut ws.x, &ws.tmp, hidden);
        obs.hidden(&ws.x, hidden);
    }
}

/// Rows per FFN block: 512 × 1536 floats (3 MiB) fit the shared cache with room to spare.
const FFN_BLOCK_ROWS: usize = 512;

/// Sequences up to this length run attention without gemm (see `kernels::attend`).
const DIRECT_ATTENTION_MAX_LEN: usize = 64;

thread_local! {
    /// Attention scores of one (sequence, head), reused by each pool thread.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Multi-head self-attention and its output projection with residual and LayerNorm
/// (HF `attention.self` + `attention.output`).
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query, key and value interleaved per head (`[q₀ k₀ v₀ q₁ k₁ v₁ …]`, `3·hidden ×
    /// hidden`): the projections of any prefix of heads are one contiguous block, one matmul.
    qkv: Linear,
    output: Linear,
    norm: LayerNorm,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, p: &str, cfg: &BertConfig, names: &LayerNames) -> Result<Self> {
        let h = cfg.hidden_size;
        let part = |name: &str| w.linear(&format!("{p}.{name}"), h, h);
        let [q, k, v] = names.qkv;
        Ok(Self {
            qkv: Linear::interleave(&[part(q)?, part(k)?, part(v)?], cfg.head_dim()),
            output: part(names.attention_out)?,
            norm: LayerNorm::load(
                w,
                &format!("{p}.{}", names.attention_norm),
                h,
                cfg.layer_norm_eps,
            )?,
            head_dim: cfg.head_dim(),
        })
    }

    /// `bias`: a relative position bias added to the scores (MPNet).
    fn forward(
        &self,
        ws: &mut Workspace,
        spans: &[Range<usize>],
        layer: usize,
        p: &Profile,
        bias: Option<&RelativeBias>,
        obs: &mut dyn Observer,
    ) {
        let (heads, hidden) = (p.heads, p.hidden);
        let tokens = ws.tokens;
        let d = self.head_dim;
        let a = heads * d;
        let stride = 3 * a;
        ws.qkv.resize(tokens * stride, 0.0);
        let x = MatRef::rows(&ws.x, tokens, hidden, hidden);
        self.qkv.forward_into(&mut ws.qkv, stride, x, 0..stride);
        ws.ctx.resize(tokens * a, 0.0);
        let mut per_seq = Vec::with_capacity(spans.len());
        let mut rest = ws.ctx.as_mut_slice();
        for span in spans {
            let (head, tail) = rest.split_at_mut(span.len() * a);
            per_seq.push((span.clone(), head));
            rest = tail;
        }
        let qkv = &ws.qkv;
        let scale = 1.0 / (d as f32).sqrt();
        per_seq.into_par_iter().for_each(|(span, ctx)| {
            let t = span.len();
            if t == 0 {
                return;
            }
            let rows = &qkv[span.start * stride..span.end * stride];
            SCORES.with_borrow_mut(|scores| {
                scores.resize(t * t, 0.0);
                for h in 0..heads {
                    let at = 3 * h * d;
                    let (q, k, v) = (&rows[at..], &rows[at + d..], &rows[at + 2 * d..]);
                    if t <= DIRECT_ATTENTION_MAX_LEN && bias.is_none() {
                        let out = &mut ctx[h * d..];
                        kernels::attend(q, k, v, stride, t, d, scale, scores, out, a);
                        continue;
                    }
                    let q = MatRef::rows(q, t, d, stride);
                    let k = MatRef::rows(k, t, d, stride);
                    let v = MatRef::rows(v, t, d, stride);
                    kernels::matmul(scores, t, q, k.t(), scale, false, 1);
                    if let Some(bias) = bias {
                        bias.add(scores, t, h);
                    }
                    kernels::softmax_rows(scores, t);
                    let p = MatRef::rows(scores, t, t, t);
                    kernels::matmul(&mut ctx[h * d..], a, p, v, 1.0, false, 1);
                }
            });
        });
        obs.heads(layer, &ws.ctx, heads, d);
        ws.tmp.resize(tokens * hidden, 0.0);
        let ctx = MatRef::rows(&ws.ctx, tokens, a, a);
        self.output
            .forward_into(&mut ws.tmp, hidden, ctx, 0..hidden);
        self.norm.add_forward(&mut ws.tmp, &ws.x, hidden);
        std::mem::swap(&mut ws.x, &mut ws.tmp);
        obs.hidden(&ws.x, hidden);
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
    fn load(w: &Weights, p: &str, cfg: &BertConfig, names: &LayerNames) -> Result<Self> {
        let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            up: w.linear(&format!("{p}.{}", names.ffn_up), h, f)?,
            down: w.linear(&format!("{p}.{}", names.ffn_down), f, h)?,
            norm: LayerNorm::load(w, &format!("{p}.{}", names.ffn_norm), h, cfg.layer_norm_eps)?,
        })
    }

    /// Runs in blocks of rows so the `tokens × ffn` intermediate of a block stays in cache
    /// between the up projection, GELU and the down projection.
    fn forward(&self, ws: &mut Workspace, layer: usize, p: &Profile, obs: &mut dyn Observer) {
        let (ffn, hidden) = (p.ffn, p.hidden);
        let tokens = ws.tokens;
        let block = FFN_BLOCK_ROWS.min(tokens.max(1));
        ws.inner.resize(block * ffn, 0.0);
        ws.tmp.resize(tokens * hidden, 0.0);
        for start in (0..tokens).step_by(block) {
            let rows = block.min(tokens - start);
            let x = MatRef::rows(&ws.x[start * hidden..], rows, hidden, hidden);
            let inner = &mut ws.inner[..rows * ffn];
            self.up.forward_into(inner, ffn, x, 0..ffn);
            inner.par_chunks_mut(ffn * 16).for_each(kernels::gelu);
            obs.ffn(layer, inner, ffn);
            let inner = MatRef::rows(inner, rows, ffn, ffn);
            let out = &mut ws.tmp[start * hidden..(start + rows) * hidden];
            self.down.forward_into(out, hidden, inner, 0..hidden);
        }
        self.norm.add_forward(&mut ws.tmp, &ws.x, hidden);
        std::mem::swap(&mut ws.x, &mut ws.tmp);
        obs.hidden(&ws.x, hidden);
    }
}

/// One transformer layer.
#[derive(Debug, Clone)]
pub struct Layer {
    attention: Attention,
    ffn: FeedForward,
}

impl Layer {
    fn load(w: &Weights, index: usize, cfg: &BertConfig, names: &LayerNames) -> Result<Self> {
        let p = format!("encoder.layer.{index}");
        Ok(Self {
            attention: Attention::load(w, &p, cfg, names)?,
            ffn: FeedForward::load(w, &p, cfg, names)?,
        })
    }

    /// Its dense layers in int8 (see `BertModel::quantize_int8`).
    fn quantize(&mut self) {
        self.attention.qkv.quantize();
        self.attention.output.quantize();
        self.ffn.up.quantize();
        self.ffn.down.quantize();
    }

    fn forward(
        &self,
        ws: &mut Workspace,
        spans: &[Range<usize>],
        index: usize,
        profile: &Profile,
        bias: Option<&RelativeBias>,
        obs: &mut dyn Observer,
    ) {
        self.attention.forward(ws, spans, index, profile, bias, obs);
        self.ffn.forward(ws, index, profile, obs);
    }
}

/// Activation buffers of one forward pass, kept between batches so that large intermediates
/// are not freshly mapped (and page-faulted) every time.
#[derive(Default)]
struct Workspace {
    tokens: usize,
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    tmp: Vec<f32>,
    inner: Vec<f32>,
}

/// The whole encoder: embeddings and every layer of the parent.
pub struct BertModel {
    config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// MPNet's relative position bias, shared by every layer (none for BERT).
    relative_bias: Option<RelativeBias>,
    /// The trained Matryoshka head (`head.weight`, `outputs × hidden`) when the checkpoint
    /// has one: the pooled vector is widened through it, so every nested size is a prefix of
    /// the head's output.
    head: Option<Linear>,
    /// The heads' rows as stored, before their zero rows were cut ([`Self::padded_width`]).
    padded_width: usize,
    /// Heads of their own for some profiles (`heads.NAME.*` in the weights, bound to a
    /// profile by the manifest): a sub-encoder's pooled vector mapped into the same nested
    /// space as the full profile's. Profiles without one use `head`.
    profile_heads: Vec<(Profile, Linear)>,
    /// Profile heads loaded but not yet bound, by name.
    unbound_heads: HashMap<String, Linear>,
    /// Layer bridges of some profiles, in layer order: after layer `l` of the profile, the
    /// hidden states (`tokens × hidden`) go through `x·Wᵀ + b` before the next layer. A
    /// sub-encoder that skips layers uses one to stand in for them (see [`Bridge`]); the
    /// full profile never has one.
    bridges: Vec<(Profile, Vec<(usize, Linear)>)>,
    /// Bridges loaded but not yet bound, by name.
    unbound_bridges: HashMap<String, Vec<Bridge>>,
    /// Layers some profiles own (trained for them; see [`Weights::own_layers`]): profile
    /// `p` runs its own layer `l` in place of the parent's. The full profile never has one.
    own_layers: Vec<(Profile, Vec<(usize, Layer)>)>,
    /// Own layers loaded but not yet bound, by name.
    unbound_layers: HashMap<String, Vec<(usize, Layer)>>,
    /// The dense layers' arithmetic.
    precision: Precision,
    /// How each text's token vectors become one (the folder's pooling module; mean unless set).
    pooling: Pooling,
    workspaces: Mutex<Vec<Workspace>>,
}

impl BertModel {
    /// The model in `w` with its dense layers at `precision`; in int8 each layer is
    /// quantized as soon as it is read, so the f32 copies of all layers never coexist (the
    /// merged f32 weights of profiles' own layers are held together briefly before theirs).
    pub(crate) fn load(w: &Weights, cfg: &BertConfig, precision: Precision) -> Result<Self> {
        // The word table first: converting it to f32 briefly takes twice its size, best
        // while nothing else is held.
        let embeddings = Embeddings::load(w, cfg)?;
        let arch = cfg.architecture().ok_or_else(|| {
            EncoderError::Tensor(candle_core::Error::Msg(format!(
                "model_type {:?} is not one this encoder runs",
                cfg.model_type
            )))
        })?;
        let names = LayerNames::of(arch);
        let relative_bias = match crate::arch::bias_buckets(cfg) {
            Some(buckets) => {
                let heads = cfg.num_attention_heads;
                let table = w.get(crate::arch::RELATIVE_BIAS, &[buckets, heads])?;
                Some(RelativeBias::new(
                    &table,
                    buckets,
                    heads,
                    cfg.max_tokens().max(1),
                ))
            }
            None => None,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let mut layer = Layer::load(w, i, cfg, &names)?;
                if precision == Precision::Int8 {
                    layer.quantize();
                }
                Ok(layer)
            })
            .collect::<Result<_>>()?;
        let mut unbound_layers = HashMap::new();
        for (name, by_layer) in w.own_layers()? {
            let mut list = Vec::with_capacity(by_layer.len());
            for (l, lw) in by_layer {
                let mut layer = Layer::load(&lw, l, cfg, &names)?;
                if precision == Precision::Int8 {
                    layer.quantize();
                }
                list.push((l, layer));
            }
            list.sort_by_key(|(l, _)| *l);
            unbound_layers.insert(name, list);
        }
        let mut head = w.head("head", cfg.hidden_size)?;
        let mut unbound_heads = w.profile_heads(cfg.hidden_size)?;
        // Every head means the same nested space, so all are cut to one width: the widest any
        // of them computes (earlier checkpoints padded 384 → 512 with zero rows).
        let heads = || head.iter().chain(unbound_heads.values());
        let padded_width = heads()
            .map(Linear::outputs)
            .max()
            .unwrap_or(cfg.hidden_size);
        if let Some(width) = heads().map(|h| h.computed_rows(cfg.hidden_size)).max() {
            head.iter_mut()
                .chain(unbound_heads.values_mut())
                .for_each(|h| h.truncate_rows(width));
        }
        Ok(Self {
            config: cfg.clone(),
            embeddings,
            layers,
            relative_bias,
            head,
            padded_width,
            profile_heads: Vec::new(),
            unbound_heads,
            bridges: Vec::new(),
            unbound_bridges: w.bridges()?,
            own_layers: Vec::new(),
            unbound_layers,
            precision,
            pooling: Pooling::Mean,
            workspaces: Mutex::new(Vec::new()),
        })
    }

    /// The heads' output rows as stored, zero rows included: what a manifest written before
    /// heads were cut to their real width may list.
    pub fn padded_width(&self) -> usize {
        self.padded_width
    }

    /// Whether the checkpoint has a shared Matryoshka head (`head.weight`).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// Pools token vectors by `pooling` from now on (the folder's pooling module).
    pub fn set_pooling(&mut self, pooling: Pooling) {
        self.pooling = pooling;
    }

    /// How token vectors are pooled.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Runs every layer's dense layers (QKV, attention output, FFN up and down) in int8 from
    /// now on: their weights are quantized once and their f32 copies dropped, so the change
    /// is one-way, and layer bridges and profiles' own layers go with them. The embeddings and the Matryoshka
    /// heads stay f32.
    pub fn quantize_int8(&mut self) {
        self.layers.iter_mut().for_each(Layer::quantize);
        for (_, list) in &mut self.bridges {
            list.iter_mut().for_each(|(_, b)| b.quantize());
        }
        let own = self.own_layers.iter_mut().map(|(_, l)| l);
        for list in own.chain(self.unbound_layers.values_mut()) {
            list.iter_mut().for_each(|(_, l)| l.quantize());
        }
        self.precision = Precision::Int8;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of the encoder layers' dense weights and biases as held now (f32, or int8 after
    /// [`quantize_int8`](Self::quantize_int8)).
    pub fn dense_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.attention.qkv.bytes()
                    + l.attention.output.bytes()
                    + l.ffn.up.bytes()
                    + l.ffn.down.bytes()
            })
            .sum()
    }

    /// A model from named tensors (HF BERT names, with or without the `bert.` prefix), as
    /// `model.safetensors` holds them.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, cfg: &BertConfig) -> Result<Self> {
        Self::load(&Weights::new(tensors), cfg, Precision::F32)
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Binds the head `heads.{name}` to `profile` (from the manifest's `head` of a named
    /// profile). Errors when the weights have no such head or its width differs from the
    /// shared head's (every profile's nested sizes must mean the same space).
    pub fn bind_profile_head(&mut self, name: &str, profile: &Profile) -> Result<()> {
        let bad = |m: String| EncoderError::Tensor(candle_core::Error::Msg(m));
        let head = self
            .unbound_heads
            .get(name)
            .cloned()
            .ok_or_else(|| bad(format!("the weights have no heads.{name}.weight")))?;
        let shared = self
            .head
            .as_ref()
            .map_or(self.config.hidden_size, |h| h.outputs());
        if head.outputs() != shared {
            return Err(bad(format!(
                "heads.{name} has {} outputs, the shared head {shared}",
                head.outputs()
            )));
        }
        self.profile_heads.retain(|(p, _)| p != profile);
        self.profile_heads.push((profile.clone(), head));
        Ok(())
    }

    /// Binds the bridges `bridges.{name}.*` to `profile` (from the manifest's `bridges` of a
    /// named profile).
    ///
    /// Errors: the weights have no such bridge, or one is not `profile.hidden` wide or sits
    /// after a layer the profile does not run.
    pub fn bind_profile_bridges(&mut self, name: &str, profile: &Profile) -> Result<()> {
        let bridges = self.unbound_bridges.get(name).cloned().ok_or_else(|| {
            EncoderError::Tensor(candle_core::Error::Msg(format!(
                "the weights have no bridges.{name}.LAYER.weight"
            )))
        })?;
        self.set_bridges(profile, bridges)
    }

    /// Gives `profile` these bridges in place of any it had (none: it has none). The
    /// trainer fits them one after another, each on the outputs of the ones before.
    ///
    /// Errors: the full profile, a bridge after a layer the profile does not run or after
    /// its last, a repeated layer, or a bridge whose shape is not `profile.hidden` square. An int8 model
    /// quantizes them as it does its layers.
    pub fn set_bridges(&mut self, profile: &Profile, bridges: Vec<Bridge>) -> Result<()> {
        let bad = |m: String| EncoderError::Tensor(candle_core::Error::Msg(m));
        if profile.is_full(&self.config) && !bridges.is_empty() {
            return Err(bad(
                "the full profile runs every layer and has no bridge".into()
            ));
        }
        let h = profile.hidden;
        let mut linears = Vec::with_capacity(bridges.len());
        for b in bridges {
            let last = profile.layers.last() == Some(&b.after);
            if !profile.layers.contains(&b.after) || last {
                return Err(bad(format!(
                    "a bridge after layer {} for a profile that runs layers {:?} (a bridge \
                     needs a layer of the profile after it)",
                    b.after, profile.layers
                )));
            }
            if linears.iter().any(|(l, _)| *l == b.after) {
                return Err(bad(format!("two bridges after layer {}", b.after)));
            }
            if b.weight.len() != h * h || b.bias.len() != h {
                return Err(bad(format!(
                    "a bridge after layer {} is not {h} × {h} with {h} biases",
                    b.after
                )));
            }
            let mut linear = Linear::new(b.weight, b.bias, h);
            // A bridge is a dense layer like the ones around it: in f32 it would cost an
            // int8 sub-encoder more than its share of the FLOPs.
            if self.precision == Precision::Int8 {
                linear.quantize();
            }
            linears.push((b.after, linear));
        }
        linears.sort_by_key(|(l, _)| *l);
        self.bridges.retain(|(p, _)| p != profile);
        if !linears.is_empty() {
            self.bridges.push((profile.clone(), linears));
        }
        Ok(())
    }

    /// Binds the own layers `own_layers.{name}.*` to `profile` (from the manifest's `own_layers` of a
    /// named profile): it runs them in place of the parent's.
    ///
    /// Errors: the weights have no such layers (or they are bound to a profile already), the
    /// profile is the full one, or one of them is a layer the profile does not run.
    pub fn bind_profile_layers(&mut self, name: &str, profile: &Profile) -> Result<()> {
        let bad = |m: String| EncoderError::Tensor(candle_core::Error::Msg(m));
        if profile.is_full(&self.config) {
            return Err(bad(format!(
                "own_layers.{name}: the full profile is the parent and owns no layer"
            )));
        }
        // Moved, not copied: a layer of its own is a whole layer's weights.
        let layers = self.unbound_layers.remove(name).ok_or_else(|| {
            bad(format!(
                "the weights have no own_layers.{name}.* (or they are bound already)"
            ))
        })?;
        if let Some((l, _)) = layers.iter().find(|(l, _)| !profile.layers.contains(l)) {
            return Err(bad(format!(
                "own_layers.{name} has layer {l}, which a profile running layers {:?} never runs",
                profile.layers
            )));
        }
        self.own_layers.retain(|(p, _)| p != profile);
        self.own_layers.push((profile.clone(), layers));
        Ok(())
    }

    /// The parent layers `profile` runs a layer of its own for, ascending.
    pub fn own_layers_of(&self, profile: &Profile) -> Vec<usize> {
        self.own_layers
            .iter()
            .filter(|(p, _)| p == profile)
            .flat_map(|(_, list)| list.iter().map(|(l, _)| *l))
            .collect()
    }

    /// The layer `profile` runs as parent layer `l`: its own, else the parent's.
    fn layer_for(&self, profile: &Profile, l: usize) -> &Layer {
        self.own_layers
            .iter()
            .find(|(p, _)| p == profile)
            .and_then(|(_, list)| list.iter().find(|(i, _)| *i == l))
            .map_or(&self.layers[l], |(_, layer)| layer)
    }

    /// The bridges `profile` runs, in layer order (empty: none). An int8 model's are
    /// quantized: their `weight` comes back empty (a cache keyed on them also needs the
    /// weights file's hash).
    pub fn bridges_of(&self, profile: &Profile) -> Vec<Bridge> {
        self.bridges
            .iter()
            .filter(|(p, _)| p == profile)
            .flat_map(|(_, list)| list)
            .map(|(after, b)| Bridge {
                after: *after,
                weight: b.weight().to_vec(),
                bias: b.bias().to_vec(),
            })
            .collect()
    }

    /// `profile`'s FLOPs relative to the full encoder's for one sequence of `seq` tokens
    /// ([`Profile::relative_cost`]), its layer bridges included: one `hidden × hidden`
    /// product per token each. What `mrl.json`'s `relative_flops` records.
    pub fn relative_flops(&self, profile: &Profile, seq: usize) -> f64 {
        let cfg = &self.config;
        let bridges: usize = self
            .bridges
            .iter()
            .filter(|(p, _)| p == profile)
            .map(|(_, list)| list.len())
            .sum();
        let extra = bridges * 2 * profile.hidden * profile.hidden * seq;
        (profile.flops(cfg, seq) + extra) as f64 / Profile::full(cfg).flops(cfg, seq) as f64
    }

    /// The bridge `profile` runs after layer `layer`, if any.
    fn bridge_for(&self, profile: &Profile, layer: usize) -> Option<&Linear> {
        let (_, list) = self.bridges.iter().find(|(p, _)| p == profile)?;
        list.iter().find(|(l, _)| *l == layer).map(|(_, b)| b)
    }

    /// The head `profile`'s pooled vector goes through: its own, else the shared one.
    fn head_for(&self, profile: &Profile) -> Option<&Linear> {
        self.profile_heads
            .iter()
            .find(|(p, _)| p == profile)
            .map(|(_, h)| h)
            .or(self.head.as_ref())
    }

    /// How wide `profile`'s output is: the head's width when the checkpoint has a head, else
    /// the profile's hidden width.
    pub fn output_width(&self, profile: &Profile) -> usize {
        self.head_for(profile)
            .map_or(profile.hidden, |h| h.outputs())
    }

    /// Runs `profile` on a batch of token sequences and returns each one's mean-pooled last
    /// hidden state (through the head when there is one; [`output_width`](Self::output_width)
    /// wide, unnormalised), in input order.
    pub fn forward(&self, seqs: &[&[u32]], profile: &Profile) -> Result<Vec<Vec<f32>>> {
        self.forward_observed(seqs, profile, &mut NoObserver)
    }

    /// Runs `profile` over any number of sequences in length-sorted batches of at most
    /// `batch`, returning the pooled outputs in input order.
    pub fn forward_all(
        &self,
        seqs: &[Vec<u32>],
        profile: &Profile,
        batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mut out = vec![Vec::new(); seqs.len()];
        for indices in crate::tokenize::plan_batches(&lengths, batch) {
            let rows: Vec<&[u32]> = indices.iter().map(|&i| seqs[i].as_slice()).collect();
            for (v, &i) in self.forward(&rows, profile)?.into_iter().zip(&indices) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// [`forward`](Self::forward), showing `obs` the intermediate activations.
    pub fn forward_observed(
        &self,
        seqs: &[&[u32]],
        profile: &Profile,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Vec<f32>>> {
        profile.validate(&self.config, &profile.to_string())?;
        let cfg = &self.config;
        for ids in seqs {
            if ids.len() > cfg.max_tokens() {
                return Err(EncoderError::Tokenizer(format!(
                    "a sequence of {} tokens exceeds the model's {} positions",
                    ids.len(),
                    cfg.max_tokens()
                )));
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(EncoderError::Tokenizer(format!(
                    "token id {id} is outside the vocabulary of {}",
                    cfg.vocab_size
                )));
            }
        }
        let mut spans = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for ids in seqs {
            spans.push(start..start + ids.len());
            start += ids.len();
        }
        let hidden = profile.hidden;
        let mut ws = self
            .workspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        ws.tokens = start;
        self.embeddings.forward(&mut ws, seqs, hidden, obs);
        for &l in &profile.layers {
            let bias = self.relative_bias.as_ref();
            self.layer_for(profile, l)
                .forward(&mut ws, &spans, l, profile, bias, obs);
            if let Some(bridge) = self.bridge_for(profile, l) {
                let tokens = ws.tokens;
                ws.tmp.resize(tokens * hidden, 0.0);
                bridge.forward_into(
                    &mut ws.tmp,
                    hidden,
                    MatRef::rows(&ws.x, tokens, hidden, hidden),
                    0..hidden,
                );
                std::mem::swap(&mut ws.x, &mut ws.tmp);
            }
        }
        let mut pooled = self.pooling.pool(&ws.x, hidden, &spans);
        if let Some(head) = self.head_for(profile) {
            let n = head.outputs();
            let flat: Vec<f32> = pooled.concat();
            let mut out = vec![0f32; pooled.len() * n];
            // A narrower hidden profile reads the head's first `hidden` input columns.
            head.forward_into(
                &mut out,
                n,
                MatRef::rows(&flat, pooled.len(), hidden, hidden),
                0..n,
            );
            pooled = out.chunks_exact(n).map(<[f32]>::to_vec).collect();
        }
        self.workspaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ws);
        Ok(pooled)
    }
}
