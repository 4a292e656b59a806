//! Fused CPU ops with a backward pass for the student (candle custom ops over f32): linear
//! (matmul + bias through the encoder's gemm / OpenBLAS kernel, weight gradients in the
//! weight's own layout), layer norm, exact (erf) GELU, and attention over packed
//! variable-length sequences (scores, softmax and context per sequence and head in one pass,
//! no padding). Each replaces a chain of primitive candle ops that allocates a tensor per
//! link; the tests check values and gradients against those chains and finite differences.
//!
//! Products over a zero suffix of columns (a gated step's masked FFN neurons and heads) are
//! skipped: exact for finite values, since those terms are zeros (a NaN or infinity inside a
//! skipped product no longer spreads through it; it still shows in the other gradients).
//!
//! Backward passes recompute what they need (layer-norm statistics, attention probabilities)
//! from the saved inputs instead of keeping it, as FlashAttention does (Dao et al., 2022):
//! the recomputation costs less than the memory traffic of storing it.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use mrl_encoder::kernels::{self, MatRef};
use rayon::prelude::*;

/// Rows handed to one rayon task by the row-wise kernels: enough work to amortise the task,
/// few enough that both cores stay busy on small batches.
const ROWS_PER_TASK: usize = 32;

fn threads() -> usize {
    rayon::current_num_threads()
}

/// The f32 values of a contiguous storage view.
fn values<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused ops take contiguous tensors; this is a bug"),
    }
}

/// Runs `f` on the f32 values of `t` (made contiguous first); the optimizer reads gradients
/// through it too.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(values(cpu, layout)?),
        _ => bail!("the student's fused ops run on the CPU"),
    }
}

fn tensor(data: Vec<f32>, shape: &Shape, like: &Tensor) -> Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), like.device())
}

/// `rows × width` when `shape`'s last axis is `width`.
fn rows_of(shape: &Shape, width: usize, op: &str) -> Result<usize> {
    match shape.dims().last() {
        Some(&w) if w == width && width > 0 => Ok(shape.elem_count() / width),
        _ => bail!("{op}: last axis {:?}, want {width}", shape.dims()),
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

struct Linear {
    /// Whether the backward pass computes the weight's gradient: a frozen weight (the
    /// parent's, under a child's own low-rank delta) skips that product, half of the dense
    /// layer's backward FLOPs.
    weight_grad: bool,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, inp) = wl.shape().dims2()?;
        let rows = rows_of(xl.shape(), inp, "linear")?;
        let (x, w, b) = (values(xs, xl)?, values(ws, wl)?, values(bs, bl)?);
        if b.len() != out {
            bail!("linear: bias of {} for {out} outputs", b.len());
        }
        let mut y: Vec<f32> = Vec::with_capacity(rows * out);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        let live = live_columns(x, inp);
        if live > 0 {
            kernels::matmul(
                &mut y,
                out,
                MatRef::rows(x, rows, live, inp),
                MatRef::rows(w, out, live, inp).t(),
                1.0,
                true,
                threads(),
            );
        }
        let mut dims = xl.shape().dims().to_vec();
        *dims.last_mut().expect("rows_of checked the rank") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inp) = w.dims2()?;
        let rows = x.elem_count() / inp;
        let (dx, dw, db) = with_values(grad, |g| {
            with_values(x, |xv| {
                with_values(w, |wv| {
                    // Outputs whose gradient is zero (masked neurons and heads downstream)
                    // add nothing to dx or dw; inputs that are zero add nothing to dw. dx
                    // stays whole: a masked input's gradient is its mask's gradient.
                    let (live_out, live_in) = (live_columns(g, out), live_columns(xv, inp));
                    let g_mat = MatRef::rows(g, rows, live_out, out);
                    let mut dx = vec![0f32; rows * inp];
                    let mut dw = vec![0f32; if self.weight_grad { out * inp } else { 0 }];
                    if live_out > 0 {
                        kernels::matmul(
                            &mut dx,
                            inp,
                            g_mat,
                            MatRef::rows(wv, live_out, inp, inp),
                            1.0,
                            false,
                            threads(),
                        );
                    }
                    if self.weight_grad && live_out > 0 && live_in > 0 {
                        kernels::matmul(
                            &mut dw,
                            inp,
                            g_mat.t(),
                            MatRef::rows(xv, rows, live_in, inp),
                            1.0,
                            false,
                            threads(),
                        );
                    }
                    Ok((dx, dw, column_sums(g, out)))
                })
            })
        })?;
        let dw = match self.weight_grad {
            true => Some(tensor(dw, w.shape(), w)?),
            false => None,
        };
        Ok((
            Some(tensor(dx, x.shape(), x)?),
            dw,
            Some(Tensor::from_vec(db, out, w.device())?),
        ))
    }
}

/// One past the last column of a row-major `[rows, width]` matrix with a non-zero entry in
/// any row (0 when all are zero): the columns after it contribute exactly nothing to a
/// product. A gated step's masked FFN neurons and heads are such a suffix (profiles keep
/// prefixes), so the dense layers on either side of a mask skip them; the scan of a row stops
/// at the first non-zero from the end, so a matrix with no zero suffix costs one read a row.
fn live_columns(m: &[f32], width: usize) -> usize {
    if width == 0 {
        return 0;
    }
    m.par_chunks(ROWS_PER_TASK * width)
        .map(|block| {
            block.chunks_exact(width).fold(0, |live, row| {
                match row[live..].iter().rposition(|&v| v != 0.0) {
                    Some(j) => live + j + 1,
                    None => live,
                }
            })
        })
        .max()
        .unwrap_or(0)
}

/// Σ over rows of a row-major `[rows, width]` matrix.
fn column_sums(m: &[f32], width: usize) -> Vec<f32> {
    m.par_chunks(ROWS_PER_TASK * width)
        .map(|block| {
            let mut acc = vec![0f32; width];
            for row in block.chunks_exact(width) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// `x · weightᵀ + bias` over the last axis: `x` `[.., in]`, `weight` `[out, in]`, `bias`
/// `[out]` → `[.., out]`, as `candle_nn::Linear`, with gradients for all three.
///
/// Errors: shapes that do not line up, a dtype other than f32, a device other than the CPU.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Arc::new(Box::new(Linear { weight_grad: true })),
    )
}

/// [`linear`] with a frozen `weight`: the backward pass gives `x` and `bias` their
/// gradients and skips the weight's.
///
/// Errors: as [`linear`].
pub fn linear_frozen(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Arc::new(Box::new(Linear { weight_grad: false })),
    )
}

// ---------------------------------------------------------------------------------------------
// Layer norm

struct LayerNorm {
    eps: f32,
}

#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let h = row.len() as f32;
    let mean = kernels::sum8(row) / h;
    let mut sq = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for c in chunks {
        for (a, v) in sq.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    let var = (sq.iter().sum::<f32>() + tail) / h;
    (mean, 1.0 / (var + eps).sqrt())
}

#[inline(always)]
fn layer_norm_rows_generic(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) {
    let h = w.len();
    for (row, out) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let (mean, inv) = row_stats(row, eps);
        for (((o, v), wi), bi) in out.iter_mut().zip(row).zip(w).zip(b) {
            *o = (v - mean) * inv * wi + bi;
        }
    }
}

mrl_encoder::multiversion! {
    fn layer_norm_rows(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32]) => layer_norm_rows_generic
}

/// Per row: `dx = inv · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))` with `ĝ = g ⊙ w`, and the row's
/// `g ⊙ x̂` and `g` added into `dw` and `db`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_back_generic(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
) {
    let h = w.len();
    let hf = h as f32;
    for ((row, gr), dxr) in x
        .chunks_exact(h)
        .zip(g.chunks_exact(h))
        .zip(dx.chunks_exact_mut(h))
    {
        let (mean, inv) = row_stats(row, eps);
        let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
        for i in 0..h {
            let xh = (row[i] - mean) * inv;
            xhat[i] = xh;
            let gw = gr[i] * w[i];
            s1[i % 8] += gw;
            s2[i % 8] += gw * xh;
            dw[i] += gr[i] * xh;
            db[i] += gr[i];
        }
        let m1 = s1.iter().sum::<f32>() / hf;
        let m2 = s2.iter().sum::<f32>() / hf;
        for i in 0..h {
            dxr[i] = inv * (gr[i] * w[i] - m1 - xhat[i] * m2);
        }
    }
}

mrl_encoder::multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_back(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32], db: &mut [f32], xhat: &mut [f32]) => layer_norm_back_generic
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (values(xs, xl)?, values(ws, wl)?, values(bs, bl)?);
        let h = w.len();
        rows_of(xl.shape(), h, "layer_norm")?;
        if b.len() != h {
            bail!("layer_norm: bias of {} for width {h}", b.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS_PER_TASK * h)
            .zip(x.par_chunks(ROWS_PER_TASK * h))
            .for_each(|(y, x)| layer_norm_rows(x, w, b, self.eps, y));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        let (dx, dw, db) = with_values(grad, |g| {
            with_values(x, |xv| {
                with_values(w, |wv| {
                    let mut dx = vec![0f32; xv.len()];
                    let (dw, db) = dx
                        .par_chunks_mut(ROWS_PER_TASK * h)
                        .zip(xv.par_chunks(ROWS_PER_TASK * h))
                        .zip(g.par_chunks(ROWS_PER_TASK * h))
                        .map(|((dx, x), g)| {
                            let (mut dw, mut db, mut xhat) =
                                (vec![0f32; h], vec![0f32; h], vec![0f32; h]);
                            layer_norm_back(x, g, wv, self.eps, dx, &mut dw, &mut db, &mut xhat);
                            (dw, db)
                        })
                        .reduce(
                            || (vec![0f32; h], vec![0f32; h]),
                            |(mut w1, mut b1), (w2, b2)| {
                                w1.iter_mut().zip(&w2).for_each(|(a, v)| *a += v);
                                b1.iter_mut().zip(&b2).for_each(|(a, v)| *a += v);
                                (w1, b1)
                            },
                        );
                    Ok((dx, dw, db))
                })
            })
        })?;
        Ok((
            Some(tensor(dx, x.shape(), x)?),
            Some(tensor(dw, w.shape(), w)?),
            Some(tensor(db, b.shape(), b)?),
        ))
    }
}

/// Layer norm over the last axis (`x` `[.., h]`, `weight` and `bias` `[h]`), biased variance
/// plus `eps` as BERT's; gradients for all three.
///
/// Errors: shapes that do not line up, a dtype other than f32, a device other than the CPU.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Arc::new(Box::new(LayerNorm { eps: eps as f32 })),
    )
}

// ---------------------------------------------------------------------------------------------
// GELU

struct Gelu;

/// `g · (Φ(x) + x·φ(x))`, the derivative of `x·Φ(x)` (Φ, φ: the standard normal's CDF and
/// density).
#[inline(always)]
fn gelu_back_generic(x: &[f32], g: &[f32], dx: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((d, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + kernels::erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * kernels::exp(-0.5 * v * v);
        *d = gv * (cdf + v * pdf);
    }
}

mrl_encoder::multiversion! {
    fn gelu_back(x: &[f32], g: &[f32], dx: &mut [f32]) => gelu_back_generic
}

/// Elements per rayon task of the element-wise kernels.
const ELEMS_PER_TASK: usize = 16 * 1024;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut y = values(s, l)?.to_vec();
        y.par_chunks_mut(ELEMS_PER_TASK).for_each(kernels::gelu);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values(grad, |g| {
            with_values(x, |xv| {
                let mut dx = vec![0f32; xv.len()];
                dx.par_chunks_mut(ELEMS_PER_TASK)
                    .zip(xv.par_chunks(ELEMS_PER_TASK))
                    .zip(g.par_chunks(ELEMS_PER_TASK))
                    .for_each(|((d, x), g)| gelu_back(x, g, d));
                Ok(dx)
            })
        })?;
        Ok(Some(tensor(dx, x.shape(), x)?))
    }
}

/// Exact GELU, `x·Φ(x)` with Φ from erf (HF's "gelu"), element-wise with its gradient.
///
/// Errors: a dtype other than f32, a device other than the CPU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_arc(Arc::new(Box::new(Gelu)))
}

// ---------------------------------------------------------------------------------------------
// Attention over packed sequences

/// Sequences laid end to end: sequence `i` holds rows `starts[i]..starts[i + 1]` of a packed
/// `[tokens, hidden]` tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spans {
    starts: Vec<usize>,
}

impl Spans {
    /// Spans of sequences of these lengths, in order.
    pub fn from_lengths(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut starts = vec![0];
        for len in lengths {
            starts.push(starts.last().copied().unwrap_or(0) + len);
        }
        Self { starts }
    }

    /// Tokens in all.
    pub fn tokens(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Sequences.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(start, length)` of each sequence.
    pub fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.starts.windows(2).map(|w| (w[0], w[1] - w[0]))
    }

    /// `data` (`[tokens, width]`, row-major) cut into one mutable block per sequence.
    fn split_mut<'a>(&self, mut data: &'a mut [f32], width: usize) -> Vec<&'a mut [f32]> {
        let mut blocks = Vec::with_capacity(self.len());
        for (_, len) in self.iter() {
            let (block, rest) = data.split_at_mut(len * width);
            blocks.push(block);
            data = rest;
        }
        blocks
    }
}

struct Attention {
    spans: Arc<Spans>,
    heads: usize,
}

impl Attention {
    fn shape(&self, l: &Layout) -> Result<(usize, usize)> {
        let (n, h) = l.shape().dims2()?;
        if n != self.spans.tokens() || self.heads == 0 || !h.is_multiple_of(self.heads) {
            bail!(
                "attention: [{n}, {h}] for {} tokens and {} heads",
                self.spans.tokens(),
                self.heads
            );
        }
        Ok((h, h / self.heads))
    }
}

/// One head of one sequence: `q`, `k`, `v` (and the gradients) start at the head's first
/// column and step `stride` per token; `t` tokens, `d` columns.
#[derive(Clone, Copy)]
struct Head {
    stride: usize,
    t: usize,
    d: usize,
    scale: f32,
}

impl Head {
    fn view<'a>(&self, x: &'a [f32]) -> MatRef<'a> {
        MatRef::rows(x, self.t, self.d, self.stride)
    }

    /// `p = softmax(q·kᵀ·scale)` row by row (`t × t`).
    fn probabilities(&self, q: &[f32], k: &[f32], p: &mut [f32]) {
        let t = self.t;
        kernels::matmul(p, t, self.view(q), self.view(k).t(), self.scale, false, 1);
        kernels::softmax_rows(p, t);
    }

    /// `out = softmax(q·kᵀ·scale)·v`.
    fn forward(&self, (q, k, v): (&[f32], &[f32], &[f32]), p: &mut [f32], out: &mut [f32]) {
        self.probabilities(q, k, p);
        let t = self.t;
        let pm = MatRef::rows(p, t, t, t);
        kernels::matmul(out, self.stride, pm, self.view(v), 1.0, false, 1);
    }

    /// The gradients into `dq`, `dk`, `dv` (written, not added) from `g` = ∂L/∂out: with
    /// `P` recomputed, `dV = Pᵀ·g`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale` for
    /// `dP = g·Vᵀ`, `dQ = dS·K`, `dK = dSᵀ·Q`.
    fn backward(
        &self,
        (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
        p: &mut [f32],
        ds: &mut [f32],
    ) {
        let (t, stride) = (self.t, self.stride);
        self.probabilities(q, k, p);
        let pm = MatRef::rows(p, t, t, t);
        kernels::matmul(dv, stride, pm.t(), self.view(g), 1.0, false, 1);
        kernels::matmul(ds, t, self.view(g), self.view(v).t(), 1.0, false, 1);
        softmax_back(p, ds, t, self.scale);
        let dsm = MatRef::rows(ds, t, t, t);
        kernels::matmul(dq, stride, dsm, self.view(k), 1.0, false, 1);
        kernels::matmul(dk, stride, dsm.t(), self.view(q), 1.0, false, 1);
    }
}

/// `ds ← p ⊙ (ds − rowsum(p ⊙ ds)) · scale` per `t`-long row: the softmax's backward.
#[inline(always)]
fn softmax_back_generic(p: &[f32], ds: &mut [f32], t: usize, scale: f32) {
    for (pr, dr) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
        let dot = kernels::dot8(pr, dr);
        for (d, &pv) in dr.iter_mut().zip(pr) {
            *d = pv * (*d - dot) * scale;
        }
    }
}

mrl_encoder::multiversion! {
    fn softmax_back(p: &[f32], ds: &mut [f32], t: usize, scale: f32) => softmax_back_generic
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-packed-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (h, d) = self.shape(ql)?;
        if kl.shape() != ql.shape() || vl.shape() != ql.shape() {
            bail!("attention: q, k and v differ in shape");
        }
        let (q, k, v) = (values(qs, ql)?, values(ks, kl)?, values(vs, vl)?);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        let spans: Vec<(usize, usize)> = self.spans.iter().collect();
        self.spans
            .split_mut(&mut out, h)
            .into_par_iter()
            .zip(spans)
            .for_each(|(block, (start, t))| {
                let head = Head {
                    stride: h,
                    t,
                    d,
                    scale,
                };
                let mut p = vec![0f32; t * t];
                for i in 0..self.heads {
                    let at = start * h + i * d;
                    head.forward((&q[at..], &k[at..], &v[at..]), &mut p, &mut block[i * d..]);
                }
            });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, h) = q.dims2()?;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n * h], vec![0f32; n * h], vec![0f32; n * h]);
        with_values(grad, |g| {
            with_values(q, |qv| {
                with_values(k, |kv| {
                    with_values(v, |vv| {
                        let spans: Vec<(usize, usize)> = self.spans.iter().collect();
                        let blocks = self
                            .spans
                            .split_mut(&mut dq, h)
                            .into_iter()
                            .zip(self.spans.split_mut(&mut dk, h))
                            .zip(self.spans.split_mut(&mut dv, h))
                            .zip(spans)
                            .collect::<Vec<_>>();
                        blocks
                            .into_par_iter()
                            .for_each(|(((dqb, dkb), dvb), (start, t))| {
                                let head = Head {
                                    stride: h,
                                    t,
                                    d,
                                    scale,
                                };
                                let (mut p, mut ds) = (vec![0f32; t * t], vec![0f32; t * t]);
                                for i in 0..self.heads {
                                    let at = start * h + i * d;
                                    // A masked head's output gets no gradient, and so
                                    // gives none: its dq, dk and dv stay zero.
                                    if (0..t).all(|r| {
                                        g[at + r * h..at + r * h + d].iter().all(|&x| x == 0.0)
                                    }) {
                                        continue;
                                    }
                                    let col = i * d;
                                    head.backward(
                                        (&qv[at..], &kv[at..], &vv[at..], &g[at..]),
                                        (&mut dqb[col..], &mut dkb[col..], &mut dvb[col..]),
                                        &mut p,
                                        &mut ds,
                                    );
                                }
                            });
                        Ok(())
                    })
                })
            })
        })?;
        Ok((
            Some(tensor(dq, q.shape(), q)?),
            Some(tensor(dk, k.shape(), k)?),
            Some(tensor(dv, v.shape(), v)?),
        ))
    }
}

/// Multi-head self-attention of packed sequences: `q`, `k`, `v` `[tokens, hidden]` (heads
/// side by side, `hidden / heads` columns each), each sequence attending only to itself;
/// `softmax(q·kᵀ / √d)·v` per sequence and head → `[tokens, hidden]`, with gradients for all
/// three inputs. No padding and no mask: a sequence's rows are exactly its tokens.
///
/// Errors: shapes that do not match `spans` and `heads`, a dtype other than f32, a device
/// other than the CPU.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    spans: &Arc<Spans>,
    heads: usize,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3_arc(
        &k.contiguous()?,
        &v.contiguous()?,
        Arc::new(Box::new(Attention {
            spans: spans.clone(),
            heads,
        })),
    )
}

#[cfg(test)]
mod tests;
