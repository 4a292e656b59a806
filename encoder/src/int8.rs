//! Integer matrix multiply for the dense layers (`--precision int8`): weights quantized once
//! at load (symmetric i8 per output channel), activations quantized per row at run time
//! (asymmetric u8 with a zero point), products accumulated in i32 and dequantized into the
//! f32 output. The kernels are VNNI's `u8 × i8 → i32` dot products of four (AVX-512 VNNI,
//! else AVX-VNNI), picked at run time; a portable loop computes the same integers elsewhere.
//!
//! The formula, for output `j` of row `i` over inputs `k < cols` (ONNX Runtime's dynamic
//! quantization: asymmetric u8 activations, symmetric i8 weights; per row and per output
//! channel here instead of per tensor):
//!
//! ```text
//! x[i,k] ≈ sx[i]·(u[i,k] − z[i]),  u ∈ [0, 255],  sx[i] = (max(x,0) − min(x,0)) / 255,
//!                                                 z[i] = round(−min(x,0) / sx[i])
//! w[j,k] ≈ sw[j]·q[j,k],  q ∈ [−127, 127],  sw[j] = max_k |w[j,k]| / 127
//! y[i,j] += sx[i]·sw[j]·(Σ_k u[i,k]·q[j,k] − z[i]·Σ_k q[j,k])
//! ```
//!
//! `u` is the u8 operand VNNI wants, and an activation range that is not centred on zero
//! (GELU's output) keeps all 256 levels; the correction is one product per output. Every
//! width cut of a profile stays a prefix: the first `n` outputs are the first groups of 16,
//! the first `cols` inputs the first blocks of 4 (the activation is zero past `cols`).

use rayon::prelude::*;

use crate::kernels::MatRef;

/// What the quantization is, for caches of int8 embeddings to key on: a change of scheme
/// changes every vector.
pub const SCHEME: &str = "activations u8 asymmetric per row, weights i8 symmetric per output";

/// Outputs per packed group: one 512-bit register of i32 lanes.
const GROUP: usize = 16;
/// Inputs per VNNI dot product.
const BLOCK: usize = 4;
/// Rows per micro-kernel call, and groups (of 16 outputs) per call: 6 × 4 accumulators.
const TILE_ROWS: usize = 6;
const TILE_GROUPS: usize = 4;
/// Rows per parallel task: whole tiles, and enough work to be worth a task.
const TASK_ROWS: usize = 48;

/// A weight matrix (`outputs × inputs`, the layout of `Linear`) quantized for the kernels.
#[derive(Debug)]
pub struct QuantizedWeights {
    /// `[group][block][16 outputs][4 inputs]`, zero past the real sizes, so a group's blocks
    /// are contiguous and any prefix of inputs is a prefix of them.
    packed: Vec<i8>,
    /// Per output: `max |w| / 127` (1 for an all-zero row).
    scales: Vec<f32>,
    /// Per output: `Σ_k q[j,k]` over every input.
    sums: Vec<i32>,
    /// The same sums over the first `cols` inputs, for each narrower `cols` a profile has
    /// asked for: computed once, a handful per layer.
    cut_sums: std::sync::Mutex<Vec<(usize, std::sync::Arc<Vec<i32>>)>>,
    outputs: usize,
    inputs: usize,
    blocks: usize,
}

impl Clone for QuantizedWeights {
    fn clone(&self) -> Self {
        Self {
            packed: self.packed.clone(),
            scales: self.scales.clone(),
            sums: self.sums.clone(),
            cut_sums: std::sync::Mutex::default(),
            outputs: self.outputs,
            inputs: self.inputs,
            blocks: self.blocks,
        }
    }
}

impl QuantizedWeights {
    /// Quantizes `w` (`outputs × inputs`, row-major), each output row on its own scale.
    ///
    /// Panics when `w` is not `outputs × inputs`: callers pass a layer's own shape.
    pub fn quantize(w: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(w.len(), outputs * inputs, "weight shape: this is a bug");
        let blocks = inputs.div_ceil(BLOCK);
        let groups = outputs.div_ceil(GROUP);
        let mut packed = vec![0i8; groups * blocks * GROUP * BLOCK];
        let mut scales = Vec::with_capacity(outputs);
        let mut sums = Vec::with_capacity(outputs);
        for (j, row) in w.chunks_exact(inputs.max(1)).take(outputs).enumerate() {
            let scale = scale_of(row);
            let inv = 1.0 / scale;
            let (g, lane) = (j / GROUP, j % GROUP);
            let mut sum = 0i32;
            for (k, &x) in row.iter().enumerate() {
                let q = (x * inv).round().clamp(-127.0, 127.0) as i8;
                let (b, within) = (k / BLOCK, k % BLOCK);
                packed[((g * blocks + b) * GROUP + lane) * BLOCK + within] = q;
                sum += i32::from(q);
            }
            scales.push(scale);
            sums.push(sum);
        }
        Self {
            packed,
            scales,
            sums,
            cut_sums: std::sync::Mutex::default(),
            outputs,
            inputs,
            blocks,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The quantized weight `q[j,k]`.
    fn at(&self, j: usize, k: usize) -> i8 {
        let (g, lane, b, within) = (j / GROUP, j % GROUP, k / BLOCK, k % BLOCK);
        self.packed[((g * self.blocks + b) * GROUP + lane) * BLOCK + within]
    }

    /// `Σ_{k < cols} q[j,k]` for every output (computed on a profile's first use of `cols`).
    fn prefix_sums(&self, cols: usize) -> std::sync::Arc<Vec<i32>> {
        let mut cache = self.cut_sums.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, sums)) = cache.iter().find(|(c, _)| *c == cols) {
            return sums.clone();
        }
        let sums = std::sync::Arc::new(if cols == self.inputs {
            self.sums.clone()
        } else {
            (0..self.outputs)
                .map(|j| (0..cols).map(|k| i32::from(self.at(j, k))).sum())
                .collect()
        });
        cache.push((cols, sums.clone()));
        sums
    }

    /// Bytes held: the packed weights, their scales and sums.
    pub fn bytes(&self) -> usize {
        self.packed.len() + 8 * self.outputs
    }
}

/// `max |x| / 127`, or 1 for a row of zeros (which then quantizes to zeros).
fn scale_of(row: &[f32]) -> f32 {
    let max = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// Activations quantized per row: `u` as u8 with the row's scale and zero point, zero past
/// `cols` up to whole blocks (which adds nothing to a product).
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl QuantizedRows {
    /// Quantizes each row of `x` on its own scale and zero point (`range_of`).
    pub fn quantize(x: MatRef<'_>) -> Self {
        let mut q = Self::default();
        q.fill(x);
        q
    }

    /// [`quantize`](Self::quantize) into this buffer, reusing its memory.
    pub fn fill(&mut self, x: MatRef<'_>) {
        let (rows, cols) = x.shape();
        let stride = cols.div_ceil(BLOCK) * BLOCK;
        self.data.clear();
        self.data.resize(rows * stride, 0);
        self.scales.clear();
        self.scales.resize(rows, 1.0);
        self.zeros.clear();
        self.zeros.resize(rows, 0);
        self.data
            .par_chunks_mut(stride.max(1))
            .zip(self.scales.par_iter_mut().zip(self.zeros.par_iter_mut()))
            .enumerate()
            .with_min_len(32)
            .for_each(|(i, (out, (scale, zero)))| {
                (*scale, *zero) = quantize_row(x.row(i), out);
            });
        self.rows = rows;
        self.cols = cols;
        self.stride = stride;
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// The scale and zero point of a row whose values span `min..=max`: the range widened to
/// include 0 (so that 0 is exact) over 255 levels; a row of zeros gets scale 1.
fn range_of(min: f32, max: f32) -> (f32, i32) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let span = max - min;
    if span > 0.0 && span.is_finite() {
        let scale = span / 255.0;
        (scale, (-min / scale).round().clamp(0.0, 255.0) as i32)
    } else {
        (1.0, 0)
    }
}

/// Quantizes `row` into `out` (`u` as u8) and returns its scale and zero point.
fn quantize_row(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::best() == Kernel::Avx512Vnni {
        // SAFETY: the CPU has AVX-512 F and BW (`Kernel::available`); `out` is at least as
        // long as `row` (a row of `stride ≥ cols` bytes).
        return unsafe { x86::quantize_row_avx512(row, out) };
    }
    quantize_row_portable(row, out)
}

/// [`quantize_row`] in plain code, rounding as the AVX-512 one does (to nearest, ties to
/// even), so that both give the same bytes for finite input.
fn quantize_row_portable(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (min, max) = row
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (scale, zero) = range_of(min, max);
    let (inv, zero_f) = (1.0 / scale, zero as f32);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = ((v * inv).round_ties_even() + zero_f).clamp(0.0, 255.0) as u8;
    }
    (scale, zero)
}

/// A micro-kernel: what each CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 512-bit `vpdpbusd` (AVX-512 VNNI): 16 outputs a register.
    Avx512Vnni,
    /// 256-bit `vpdpbusd` (AVX-VNNI): 8 outputs a register.
    AvxVnni,
    /// Plain loops, any CPU.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs (detected once).
    pub fn best() -> Self {
        Self::detected()[0]
    }

    /// Whether this CPU runs this kernel (detected once).
    pub fn runs(self) -> bool {
        Self::detected().contains(&self)
    }

    fn detected() -> &'static [Kernel] {
        static DETECTED: std::sync::OnceLock<Vec<Kernel>> = std::sync::OnceLock::new();
        DETECTED.get_or_init(Self::available)
    }

    /// Every kernel this CPU runs, fastest first (`Portable` always last).
    pub fn available() -> Vec<Self> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                out.push(Self::Avx512Vnni);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("avxvnni")
            {
                out.push(Self::AvxVnni);
            }
        }
        out.push(Self::Portable);
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "avx512-vnni",
            Self::AvxVnni => "avx-vnni",
            Self::Portable => "portable",
        }
    }

    /// `tile[r][c] = Σ_b Σ_t a[r, 4b+t] · q[16g+c, 4b+t]` for `t.rows` rows and `t.groups`
    /// groups of `ops`.
    ///
    /// Safety: `ops` is valid for `t` (see [`Operands`]); the kernel is one
    /// [`available`](Self::available) lists.
    unsafe fn tile(self, t: TileAt, ops: Operands, tile: &mut Tile) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => x86::tile_avx512(t, ops, x86::Sink::Tile(tile)),
            #[cfg(target_arch = "x86_64")]
            Self::AvxVnni => x86::tile_avx(t, ops, tile),
            _ => tile_portable(t, ops, tile),
        }
    }
}

/// Integer sums of a tile: one per row and output of up to 6 rows × 4 groups.
type Tile = [[i32; GROUP * TILE_GROUPS]; TILE_ROWS];

/// Where a tile's operands are: the first of its rows of quantized activations and of its
/// groups of packed weights, and how many blocks of inputs to sum.
///
/// Valid for a tile of `rows` rows and `groups` groups when `a` holds that many rows
/// `a_stride ≥ 4·blocks` bytes apart and `b` that many groups `group_stride ≥ 64·blocks`
/// bytes apart.
#[derive(Debug, Clone, Copy)]
struct Operands {
    a: *const u8,
    a_stride: usize,
    b: *const i8,
    group_stride: usize,
    blocks: usize,
}

impl Operands {
    /// The operands of tile `t` of `x · wᵀ`, over `x`'s columns.
    ///
    /// Panics when `t` reaches past `x` or `w`, or `x` is wider than `w`: callers take their
    /// tiles from `tiles` over shapes they checked. Then the result is valid for `t`.
    fn of(x: &QuantizedRows, w: &QuantizedWeights, t: TileAt) -> Self {
        assert!(
            t.row + t.rows <= x.rows
                && (t.g0 + t.groups) * GROUP <= w.outputs.div_ceil(GROUP) * GROUP
                && x.cols <= w.inputs,
            "int8 tile out of range: this is a bug"
        );
        let group_stride = w.blocks * GROUP * BLOCK;
        Self {
            a: x.data[t.row * x.stride..].as_ptr(),
            a_stride: x.stride,
            b: w.packed[t.g0 * group_stride..].as_ptr(),
            group_stride,
            blocks: x.cols.div_ceil(BLOCK),
        }
    }
}

/// [`Kernel::tile`] in plain loops.
unsafe fn tile_portable(t: TileAt, ops: Operands, tile: &mut Tile) {
    let Operands {
        a,
        a_stride,
        b,
        group_stride,
        blocks,
    } = ops;
    for (r, out) in tile.iter_mut().enumerate().take(t.rows) {
        let a = std::slice::from_raw_parts(a.add(r * a_stride), blocks * BLOCK);
        for g in 0..t.groups {
            let b = std::slice::from_raw_parts(b.add(g * group_stride), blocks * GROUP * BLOCK);
            for (c, o) in out[g * GROUP..(g + 1) * GROUP].iter_mut().enumerate() {
                *o = (0..blocks)
                    .map(|blk| {
                        (0..BLOCK)
                            .map(|t| {
                                i32::from(a[blk * BLOCK + t])
                                    * i32::from(b[(blk * GROUP + c) * BLOCK + t])
                            })
                            .sum::<i32>()
                    })
                    .sum();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Operands, Tile, TileAt, BLOCK, GROUP};

    /// The first `k` of 16 lanes (all 16 for `k ≥ 16`).
    fn lanes(k: usize) -> __mmask16 {
        if k >= 16 {
            0xFFFF
        } else {
            (1u16 << k) - 1
        }
    }

    /// Where a tile's sums go: kept as integers, or dequantized and added into the output.
    pub(super) enum Sink<'a> {
        Tile(&'a mut Tile),
        /// `dst[r·dst_rs + c] += sx[r]·sw[c]·(sum − zx[r]·sums[c])` for the first `n`
        /// columns of the tile; `sx` and `zx` have the tile's rows, `sw` and `sums` its
        /// first `n` columns.
        Dequant {
            dst: *mut f32,
            dst_rs: usize,
            sx: *const f32,
            zx: *const i32,
            sw: *const f32,
            sums: *const i32,
            n: usize,
        },
    }

    /// Quantizes `row` into `out` as `round(v / scale) + zero` and returns the scale and
    /// zero point (`range_of`).
    ///
    /// Safety: the CPU has AVX-512 F and BW; `out.len() ≥ row.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row_avx512(row: &[f32], out: &mut [u8]) -> (f32, i32) {
        let n = row.len();
        let mask = |i: usize| lanes(n - i);
        // Masked-off lanes load as 0, which the range includes anyway.
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for i in (0..n).step_by(16) {
            let v = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().add(i));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        let (scale, zero) = super::range_of(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
        let (inv, offset) = (_mm512_set1_ps(1.0 / scale), _mm512_set1_epi32(zero));
        let floor = _mm512_setzero_si512();
        for i in (0..n).step_by(16) {
            let v = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().add(i));
            // Round to nearest (the default MXCSR mode), clamp below at 0; the store
            // saturates above at 255.
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), offset);
            let q = _mm512_max_epi32(q, floor);
            _mm512_mask_cvtusepi32_storeu_epi8(out.as_mut_ptr().add(i).cast(), mask(i), q);
        }
        (scale, zero)
    }

    /// Dispatches to the kernel unrolled for `rows × groups`.
    macro_rules! unrolled {
        ($f:ident, $rows:expr, $groups:expr, $($arg:expr),*) => {
            match ($rows, $groups) {
                (6, 4) => $f::<6, 4>($($arg),*), (6, 3) => $f::<6, 3>($($arg),*),
                (6, 2) => $f::<6, 2>($($arg),*), (6, 1) => $f::<6, 1>($($arg),*),
                (5, 4) => $f::<5, 4>($($arg),*), (5, 3) => $f::<5, 3>($($arg),*),
                (5, 2) => $f::<5, 2>($($arg),*), (5, 1) => $f::<5, 1>($($arg),*),
                (4, 4) => $f::<4, 4>($($arg),*), (4, 3) => $f::<4, 3>($($arg),*),
                (4, 2) => $f::<4, 2>($($arg),*), (4, 1) => $f::<4, 1>($($arg),*),
                (3, 4) => $f::<3, 4>($($arg),*), (3, 3) => $f::<3, 3>($($arg),*),
                (3, 2) => $f::<3, 2>($($arg),*), (3, 1) => $f::<3, 1>($($arg),*),
                (2, 4) => $f::<2, 4>($($arg),*), (2, 3) => $f::<2, 3>($($arg),*),
                (2, 2) => $f::<2, 2>($($arg),*), (2, 1) => $f::<2, 1>($($arg),*),
                (1, 4) => $f::<1, 4>($($arg),*), (1, 3) => $f::<1, 3>($($arg),*),
                (1, 2) => $f::<1, 2>($($arg),*), (1, 1) => $f::<1, 1>($($arg),*),
                _ => unreachable!("tiles are 1..=6 rows × 1..=4 groups"),
            }
        };
    }

    /// [`Kernel::tile`](super::Kernel::tile) on AVX-512 VNNI, its sums into `sink`.
    ///
    /// Safety: as `Kernel::tile`, and `sink` holds what its docs say for `t`.
    pub(super) unsafe fn tile_avx512(t: TileAt, ops: Operands, sink: Sink<'_>) {
        unrolled!(avx512, t.rows, t.groups, ops, sink)
    }

    /// [`Kernel::tile`](super::Kernel::tile) on AVX-VNNI.
    ///
    /// Safety: as `Kernel::tile`.
    pub(super) unsafe fn tile_avx(t: TileAt, ops: Operands, tile: &mut Tile) {
        // 16 ymm registers: 2 per group per row, so at most 4 rows × 1 group at a time.
        for g in 0..t.groups {
            let mut r = 0;
            while r < t.rows {
                let n = (t.rows - r).min(4);
                let mut part: Tile = [[0; GROUP * super::TILE_GROUPS]; super::TILE_ROWS];
                let ops = Operands {
                    a: ops.a.add(r * ops.a_stride),
                    b: ops.b.add(g * ops.group_stride),
                    ..ops
                };
                match n {
                    4 => avx::<4>(ops, &mut part),
                    3 => avx::<3>(ops, &mut part),
                    2 => avx::<2>(ops, &mut part),
                    _ => avx::<1>(ops, &mut part),
                }
                for i in 0..n {
                    tile[r + i][g * GROUP..(g + 1) * GROUP].copy_from_slice(&part[i][..GROUP]);
                }
                r += n;
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn avx512<const R: usize, const G: usize>(ops: Operands, sink: Sink<'_>) {
        let Operands {
            a,
            a_stride,
            b,
            group_stride,
            blocks,
        } = ops;
        let mut acc = [[_mm512_setzero_si512(); G]; R];
        for blk in 0..blocks {
            let mut w = [_mm512_setzero_si512(); G];
            for (g, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(b.add(g * group_stride + blk * GROUP * BLOCK).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = a
                    .add(r * a_stride + blk * BLOCK)
                    .cast::<i32>()
                    .read_unaligned();
                let x = _mm512_set1_epi32(x);
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, *w);
                }
            }
        }
        match sink {
            Sink::Tile(tile) => {
                for (r, acc) in acc.iter().enumerate() {
                    for (g, acc) in acc.iter().enumerate() {
                        _mm512_storeu_si512(tile[r][g * GROUP..].as_mut_ptr().cast(), *acc);
                    }
                }
            }
            Sink::Dequant {
                dst,
                dst_rs,
                sx,
                zx,
                sw,
                sums,
                n,
            } => {
                for g in 0..G {
                    let k = n.saturating_sub(g * GROUP).min(GROUP);
                    if k == 0 {
                        break;
                    }
                    let mask = lanes(k);
                    let s = _mm512_maskz_loadu_ps(mask, sw.add(g * GROUP));
                    let c = _mm512_maskz_loadu_epi32(mask, sums.add(g * GROUP));
                    for (r, acc) in acc.iter().enumerate() {
                        let out = dst.add(r * dst_rs + g * GROUP);
                        let corr = _mm512_mullo_epi32(c, _mm512_set1_epi32(*zx.add(r)));
                        let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[g], corr));
                        let scale = _mm512_mul_ps(s, _mm512_set1_ps(*sx.add(r)));
                        let d = _mm512_maskz_loadu_ps(mask, out);
                        _mm512_mask_storeu_ps(out, mask, _mm512_fmadd_ps(v, scale, d));
                    }
                }
            }
        }
    }

    /// The first group of `ops` for `R` rows, into the tile's first 16 columns.
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn avx<const R: usize>(ops: Operands, tile: &mut Tile) {
        let Operands {
            a,
            a_stride,
            b,
            blocks,
            ..
        } = ops;
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for blk in 0..blocks {
            let at = b.add(blk * GROUP * BLOCK);
            let w = [
                _mm256_loadu_si256(at.cast()),
                _mm256_loadu_si256(at.add(GROUP * BLOCK / 2).cast()),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = a
                    .add(r * a_stride + blk * BLOCK)
                    .cast::<i32>()
                    .read_unaligned();
                let x = _mm256_set1_epi32(x);
                acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, w[0]);
                acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, w[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_si256(tile[r].as_mut_ptr().cast(), acc[0]);
            _mm256_storeu_si256(tile[r][GROUP / 2..].as_mut_ptr().cast(), acc[1]);
        }
    }
}

/// `dst[i, j] += x[i, ..] · W[j, ..x.cols]ᵀ` for the first `n` outputs of `w`, dequantized
/// (the formula in the module header), `dst` row-major with row stride `dst_rs`, on the
/// fastest kernel this CPU runs, split over the rayon pool.
///
/// Panics when `x` is wider than `w`'s inputs, `n` exceeds its outputs, or `dst` is too
/// small: callers pass shapes they own.
pub fn matmul_accumulate(
    dst: &mut [f32],
    dst_rs: usize,
    x: &QuantizedRows,
    w: &QuantizedWeights,
    n: usize,
) {
    matmul_with(Kernel::best(), dst, dst_rs, x, w, n);
}

/// [`matmul_accumulate`] on a given kernel (tests run each one the CPU has).
///
/// Panics as [`matmul_accumulate`], and for a kernel [`Kernel::available`] does not list.
pub fn matmul_with(
    kernel: Kernel,
    dst: &mut [f32],
    dst_rs: usize,
    x: &QuantizedRows,
    w: &QuantizedWeights,
    n: usize,
) {
    let (rows, cols) = x.shape();
    assert!(
        cols <= w.inputs && n <= w.outputs && n <= dst_rs,
        "int8 matmul shapes: this is a bug"
    );
    assert!(
        kernel.runs(),
        "kernel {} is not available on this CPU",
        kernel.name()
    );
    if rows == 0 || n == 0 {
        return;
    }
    assert!(
        (rows - 1) * dst_rs + n <= dst.len(),
        "int8 matmul destination too small: this is a bug"
    );
    let sums = w.prefix_sums(cols);
    dst.par_chunks_mut(dst_rs * TASK_ROWS)
        .enumerate()
        .for_each(|(task, dst)| {
            let first = task * TASK_ROWS;
            let mut tile = [[0i32; GROUP * TILE_GROUPS]; TILE_ROWS];
            for t in tiles(first, TASK_ROWS.min(rows.saturating_sub(first)), n) {
                let (r0, j0, j1) = (
                    t.row - first,
                    t.g0 * GROUP,
                    ((t.g0 + t.groups) * GROUP).min(n),
                );
                #[cfg(target_arch = "x86_64")]
                if kernel == Kernel::Avx512Vnni {
                    let ops = Operands::of(x, w, t);
                    // SAFETY: `ops` is valid for `t` (`Operands::of`); `dst` holds rows
                    // `r0..r0 + rows` of this task at columns `j0..j1` (n ≤ dst_rs and its
                    // length, checked above), `x`'s scales and zero points rows `t.row..`,
                    // `w`'s scales and `sums` columns `j0..j1`; the kernel is available
                    // (checked above).
                    unsafe {
                        x86::tile_avx512(
                            t,
                            ops,
                            x86::Sink::Dequant {
                                dst: dst.as_mut_ptr().add(r0 * dst_rs + j0),
                                dst_rs,
                                sx: x.scales.as_ptr().add(t.row),
                                zx: x.zeros.as_ptr().add(t.row),
                                sw: w.scales.as_ptr().add(j0),
                                sums: sums.as_ptr().add(j0),
                                n: j1 - j0,
                            },
                        );
                    }
                    continue;
                }
                tile_sums(kernel, x, w, t, &mut tile);
                let (sw, sums) = (&w.scales[j0..j1], &sums[j0..j1]);
                for (i, acc) in tile.iter().enumerate().take(t.rows) {
                    let (sx, zx) = (x.scales[t.row + i], x.zeros[t.row + i]);
                    let out = &mut dst[(r0 + i) * dst_rs + j0..(r0 + i) * dst_rs + j1];
                    for (((o, &p), &c), &s) in out.iter_mut().zip(acc).zip(sums).zip(sw) {
                        *o += sx * s * (p - zx * c) as f32;
                    }
                }
            }
        });
}

/// One tile of a product: `rows` rows of `x` from `row` by `groups` groups of 16 outputs
/// from group `g0`.
#[derive(Debug, Clone, Copy)]
struct TileAt {
    row: usize,
    rows: usize,
    g0: usize,
    groups: usize,
}

/// The tiles covering `rows` rows from `first` by the first `n` outputs, output groups outer
/// so that a column of tiles reads the same weights.
fn tiles(first: usize, rows: usize, n: usize) -> impl Iterator<Item = TileAt> {
    let groups = n.div_ceil(GROUP);
    (0..groups).step_by(TILE_GROUPS).flat_map(move |g0| {
        (0..rows).step_by(TILE_ROWS).map(move |r0| TileAt {
            row: first + r0,
            rows: TILE_ROWS.min(rows - r0),
            g0,
            groups: TILE_GROUPS.min(groups - g0),
        })
    })
}

/// The integer sums of tile `t` (`Kernel::tile`), over `x`'s columns.
///
/// Panics as `Operands::of`, or when the kernel is not available.
fn tile_sums(kernel: Kernel, x: &QuantizedRows, w: &QuantizedWeights, t: TileAt, tile: &mut Tile) {
    assert!(
        kernel.runs(),
        "kernel {} is not available on this CPU",
        kernel.name()
    );
    let ops = Operands::of(x, w, t);
    // SAFETY: `ops` is valid for `t` (`Operands::of`); the kernel is available (asserted).
    unsafe { kernel.tile(t, ops, tile) }
}

/// The integer products `Σ_k u[i,k]·q[j,k]` of the first `n` outputs, row-major, by
/// the definition (what every kernel must reproduce exactly).
pub fn reference_products(x: &QuantizedRows, w: &QuantizedWeights, n: usize) -> Vec<i32> {
    let (rows, cols) = x.shape();
    let mut out = Vec::with_capacity(rows * n);
    for i in 0..rows {
        for j in 0..n {
            out.push(
                (0..cols)
                    .map(|k| i32::from(x.data[i * x.stride + k]) * i32::from(w.at(j, k)))
                    .sum(),
            );
        }
    }
    out
}

/// The integer products of `kernel` (the same as [`reference_products`] when it is right).
///
/// Panics for a kernel [`Kernel::available`] does not list.
pub fn kernel_products(
    kernel: Kernel,
    x: &QuantizedRows,
    w: &QuantizedWeights,
    n: usize,
) -> Vec<i32> {
    assert!(kernel.runs());
    let rows = x.rows;
    let mut out = vec![0i32; rows * n];
    let mut tile = [[0i32; GROUP * TILE_GROUPS]; TILE_ROWS];
    for t in tiles(0, rows, n) {
        tile_sums(kernel, x, w, t, &mut tile);
        let (j0, j1) = (t.g0 * GROUP, ((t.g0 + t.groups) * GROUP).min(n));
        for (i, acc) in tile.iter().enumerate().take(t.rows) {
            out[(t.row + i) * n + j0..(t.row + i) * n + j1].copy_from_slice(&acc[..j1 - j0]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in `[-1, 1)` with a few large ones, so that rows have different
    /// scales.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 37 == 0 {
                    v * 6.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// Every kernel the CPU runs gives exactly the reference integers, on odd shapes and on
    /// prefix cuts of the inputs and outputs.
    #[test]
    fn every_kernel_matches_the_integer_reference_exactly() {
        for &(rows, inputs, outputs) in &[(1, 4, 16), (7, 33, 37), (13, 384, 100), (50, 130, 64)] {
            let w = QuantizedWeights::quantize(&values(inputs * outputs, 1), outputs, inputs);
            let xs = values(rows * inputs, 2);
            for (cols, n) in [(inputs, outputs), (inputs / 2 + 1, outputs / 3 + 1)] {
                let x = QuantizedRows::quantize(MatRef::rows(&xs, rows, cols, inputs));
                let want = reference_products(&x, &w, n);
                for kernel in Kernel::available() {
                    assert_eq!(
                        kernel_products(kernel, &x, &w, n),
                        want,
                        "{} on {rows}×{cols} · {n}",
                        kernel.name()
                    );
                }
            }
        }
    }

    /// The dequantized product is the f32 product within the quantization bound: each of
    /// `x` and `w` is off by at most half a step, so `|Δy| ≤ Σ_k (|x|·sw/2 + |w|·sx/2 +
    /// sx·sw/4)`.
    #[test]
    fn the_int8_product_is_the_f32_product_within_the_quantization_bound() {
        let (rows, inputs, outputs) = (29, 200, 70);
        let wf = values(inputs * outputs, 3);
        let xf = values(rows * inputs, 4);
        let w = QuantizedWeights::quantize(&wf, outputs, inputs);
        for (cols, n) in [(inputs, outputs), (101, 33)] {
            let x = QuantizedRows::quantize(MatRef::rows(&xf, rows, cols, inputs));
            for kernel in Kernel::available() {
                let mut dst = vec![0.5f32; rows * n];
                matmul_with(kernel, &mut dst, n, &x, &w, n);
                for i in 0..rows {
                    for j in 0..n {
                        let (xr, wr) = (&xf[i * inputs..][..cols], &wf[j * inputs..][..cols]);
                        let exact: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                        let (sx, sw) = (x.scales[i], w.scales[j]);
                        let bound: f32 = xr
                            .iter()
                            .zip(wr)
                            .map(|(a, b)| a.abs() * sw / 2.0 + b.abs() * sx / 2.0 + sx * sw / 4.0)
                            .sum();
                        let got = dst[i * n + j] - 0.5;
                        assert!(
                            (got - exact).abs() <= bound * 1.001 + 1e-5,
                            "{}: ({i},{j}) {got} vs {exact}, bound {bound}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// The path a forward pass takes (on AVX-512, dequantized inside the kernel) against the
    /// reference integers dequantized by the formula, over several tasks' worth of rows, an
    /// output row stride wider than the outputs and a prefix of the inputs; the columns past
    /// the outputs are left alone.
    #[test]
    fn every_kernel_dequantizes_the_reference_integers() {
        let (rows, inputs, outputs, cols, n, dst_rs) = (101, 200, 45, 130, 37, 50);
        let w = QuantizedWeights::quantize(&values(inputs * outputs, 5), outputs, inputs);
        let xf = values(rows * inputs, 6);
        let x = QuantizedRows::quantize(MatRef::rows(&xf, rows, cols, inputs));
        let products = reference_products(&x, &w, n);
        let sums: Vec<i64> = (0..n)
            .map(|j| (0..cols).map(|k| i64::from(w.at(j, k))).sum())
            .collect();
        for kernel in Kernel::available() {
            let mut dst = vec![0.25f32; rows * dst_rs];
            matmul_with(kernel, &mut dst, dst_rs, &x, &w, n);
            for i in 0..rows {
                for j in 0..dst_rs {
                    let got = dst[i * dst_rs + j];
                    if j >= n {
                        assert_eq!(got, 0.25, "{}: ({i},{j}) written", kernel.name());
                        continue;
                    }
                    let p = i64::from(products[i * n + j]) - i64::from(x.zeros[i]) * sums[j];
                    let want = 0.25 + f64::from(x.scales[i]) * f64::from(w.scales[j]) * p as f64;
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (want.abs() + 1.0),
                        "{}: ({i},{j}) {got} vs {want}",
                        kernel.name()
                    );
                }
            }
        }
    }

    /// The quantizer the CPU runs gives the portable one's bytes, scale and zero point.
    #[test]
    fn the_quantizers_agree() {
        let xs = values(64 * 77, 7);
        for (i, row) in xs.chunks(77).enumerate() {
            // Rows all positive, all negative and mixed.
            let row: Vec<f32> = match i % 3 {
                0 => row.iter().map(|v| v.abs()).collect(),
                1 => row.iter().map(|v| -v.abs()).collect(),
                _ => row.to_vec(),
            };
            let (mut a, mut b) = (vec![0u8; 80], vec![0u8; 80]);
            assert_eq!(
                quantize_row(&row, &mut a),
                quantize_row_portable(&row, &mut b)
            );
            assert_eq!(a, b, "row {i}");
        }
    }

    #[test]
    fn zero_rows_and_empty_shapes_are_harmless() {
        let w = QuantizedWeights::quantize(&[0.0; 12], 3, 4);
        let x = QuantizedRows::quantize(MatRef::rows(&[0.0; 8], 2, 4, 4));
        let mut dst = vec![1.0f32; 6];
        matmul_accumulate(&mut dst, 3, &x, &w, 3);
        assert_eq!(dst, vec![1.0; 6]);
        let none = QuantizedRows::quantize(MatRef::rows(&[], 0, 4, 4));
        matmul_accumulate(&mut [], 3, &none, &w, 3);
    }
}
