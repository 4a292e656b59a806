//! CPU kernels of the inference path: strided matrix multiply (the `gemm` crate), and fused,
//! vectorisable GELU, softmax and residual + LayerNorm.
//!
//! The element-wise kernels are written branch-free so the compiler vectorises them; on x86-64
//! they are compiled a second time with AVX2 + FMA and picked at run time, since a portable
//! build only targets SSE2.

/// A read-only strided matrix view over a slice: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// Panics when the view would reach past `data`: callers build views from shapes they
    /// own, so that is a bug, never bad input.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "matrix view out of bounds: this is a bug"
            );
        }
        Self {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// Row-major `rows × cols` with row stride `rs`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        Self::new(data, rows, cols, rs, 1)
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Row `i` as a slice.
    ///
    /// Panics for a view whose columns are not contiguous (a transposed one) or a row past
    /// the last: callers read rows of row-major activations they own.
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(
            self.cs == 1 && i < self.rows,
            "row of a strided view: this is a bug"
        );
        &self.data[i * self.rs..i * self.rs + self.cols]
    }

    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = lhs · rhs · scale` (or `dst += …` with `accumulate`), `dst` row-major with row
/// stride `dst_rs`. `threads > 1` splits the work over the rayon pool.
pub fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "matmul inner dims differ: this is a bug");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "matmul destination too small: this is a bug"
    );
    #[cfg(feature = "blas")]
    if let Some(blas) = crate::blas::get() {
        if matmul_blas(blas, dst, dst_rs, lhs, rhs, scale, accumulate, threads) {
            return;
        }
    }
    matmul_gemm(dst, dst_rs, lhs, rhs, scale, accumulate, threads);
}

/// Which library runs [`matmul`]: `"openblas"` when `$MRL_OPENBLAS` loaded, else `"gemm"`.
pub fn matmul_backend() -> &'static str {
    #[cfg(feature = "blas")]
    if crate::blas::get().is_some() {
        return "openblas";
    }
    "gemm"
}

/// [`matmul`] by the `gemm` crate (shapes already checked).
fn matmul_gemm(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was bounds-checked by `matmul` or in MatRef::new, dst does not alias the
    // inputs (it is a distinct &mut), and gemm only touches elements inside those shapes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// [`matmul`] through OpenBLAS, rows split over `threads` rayon workers; `false` when the
/// layout is not one cblas takes (the caller then uses `gemm`).
#[cfg(feature = "blas")]
#[allow(clippy::too_many_arguments)]
fn matmul_blas(
    blas: &crate::blas::Blas,
    dst: &mut [f32],
    dst_rs: usize,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: usize,
) -> bool {
    use rayon::prelude::*;
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let run = |dst: &mut [f32], r0: usize, rows: usize| {
        blas.sgemm(
            dst,
            dst_rs,
            (rows, k, n),
            (&lhs.data[r0 * lhs.rs..], lhs.rs, lhs.cs),
            (rhs.data, rhs.rs, rhs.cs),
            scale,
            accumulate,
        )
    };
    // Rows per worker: whole blocks of 16 so each worker's panel stays aligned to the kernel.
    let per = m.div_ceil(threads.max(1)).div_ceil(16) * 16;
    if threads <= 1 || m <= per {
        return run(dst, 0, m);
    }
    let len = dst.len();
    dst[..len.min(m * dst_rs)]
        .par_chunks_mut(per * dst_rs)
        .enumerate()
        .map(|(i, chunk)| {
            let r0 = i * per;
            run(chunk, r0, per.min(m - r0))
        })
        .collect::<Vec<bool>>()
        .into_iter()
        .all(|ok| ok)
}

/// Runs `$generic` compiled with AVX2 + FMA when the CPU has them. Exported so the trainer's
/// backward kernels are built the same way.
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// exp(x) to about 2 ulp for x in [-87, 88], branch-free: x = n·ln2 + r, exp(r) by its
/// degree-6 Taylor polynomial (|r| ≤ ln2/2), 2^n built in the exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Adding 1.5·2^23 rounds to the nearest integer without a branch or a libm call.
    let shifter = 12_582_912.0f32;
    let shifted = x * LOG2E + shifter;
    let n = shifted - shifter;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The shifted sum's low mantissa bits hold n itself (two's complement), so 2^n comes from
    // integer bit arithmetic: an `as i32` cast here saturates, which LLVM cannot vectorise.
    let biased = shifted.to_bits().wrapping_sub(0x4B40_0000 - 127);
    p * f32::from_bits(biased << 23)
}

/// erf(x), Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

multiversion! {
    /// Exact (erf) GELU in place, as HF's "gelu".
    pub fn gelu(xs: &mut [f32]) => gelu_generic
}

/// Sum with 8 independent lanes, so the loop vectorises despite strict float ordering.
#[inline(always)]
pub fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max8(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[inline(always)]
fn softmax_rows_generic(xs: &mut [f32], width: usize) {
    for row in xs.chunks_exact_mut(width) {
        let max = max8(row);
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / sum8(row);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

multiversion! {
    /// Softmax of each `width`-long row in place.
    pub fn softmax_rows(xs: &mut [f32], width: usize) => softmax_rows_generic
}

#[inline(always)]
fn add_layer_norm_generic(x: &mut [f32], residual: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let h = weight.len();
    for (row, res) in x.chunks_exact_mut(h).zip(residual.chunks_exact(h)) {
        row.iter_mut().zip(res).for_each(|(a, r)| *a += r);
        let mean = sum8(row) / h as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let mut sq = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for (a, v) in sq.iter_mut().zip(c) {
                *a += v * v;
            }
        }
        let var = (sq.iter().sum::<f32>() + tail) / h as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = *v * inv * w + b;
        }
    }
}

multiversion! {
    /// `x = LayerNorm(x + residual)` row by row (rows of `weight.len()`).
    pub fn add_layer_norm(x: &mut [f32], residual: &[f32], weight: &[f32], bias: &[f32], eps: f32) => add_layer_norm_generic
}

/// Dot product with 8 independent lanes (vectorises like [`sum8`]).
#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One attention head of one sequence, written out directly: for the short sequences of most
/// requests, a gemm call per (sequence, head) costs more in set-up than in arithmetic.
/// `q`, `k`, `v` start at the head's first column and step `stride` per token; the `t × d`
/// result goes to `out` with row stride `out_stride`. `scores` holds at least `t × t`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_generic(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    stride: usize,
    t: usize,
    d: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    out_stride: usize,
) {
    let scores = &mut scores[..t * t];
    for (i, row) in scores.chunks_exact_mut(t).enumerate() {
        let qi = &q[i * stride..][..d];
        for (j, s) in row.iter_mut().enumerate() {
            *s = dot8(qi, &k[j * stride..][..d]) * scale;
        }
    }
    softmax_rows_generic(scores, t);
    for (i, p) in scores.chunks_exact(t).enumerate() {
        let o = &mut out[i * out_stride..][..d];
        o.fill(0.0);
        for (j, &pj) in p.iter().enumerate() {
            for (a, b) in o.iter_mut().zip(&v[j * stride..][..d]) {
                *a += pj * b;
            }
        }
    }
}

multiversion! {
    /// Softmax(q·kᵀ·scale)·v for one head of one sequence (see `attend_generic`).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(q: &[f32], k: &[f32], v: &[f32], stride: usize, t: usize, d: usize, scale: f32, scores: &mut [f32], out: &mut [f32], out_stride: usize) => attend_generic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let e = exp(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let x = i as f32 / 1000.0;
            // erf reference from the libm-quality series in f64.
            worst_erf = worst_erf.max((erf(x) as f64 - erf_ref(x as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf}");
    }

    fn erf_ref(x: f64) -> f64 {
        // Maclaurin series; converges fast for |x| ≤ 3, and erf is ±1 to 1e-9 beyond.
        if x.abs() > 4.0 {
            return x.signum();
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn softmax_and_layer_norm_match_naive() {
        let mut row: Vec<f32> = (0..19).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let naive: Vec<f32> = {
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_rows(&mut row, 19);
        for (a, b) in row.iter().zip(&naive) {
            assert!((a - b).abs() < 1e-6);
        }
        let mut x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let res = vec![1.0; 20];
        let w = vec![2.0; 10];
        let b = vec![0.5; 10];
        add_layer_norm(&mut x, &res, &w, &b, 1e-12);
        // Row 0 is 1..=10: mean 5.5, variance 8.25.
        let want = (1.0 - 5.5) / 8.25f32.sqrt() * 2.0 + 0.5;
        assert!((x[0] - want).abs() < 1e-5, "{} vs {want}", x[0]);
        assert!((x[10] - want).abs() < 1e-5);
    }

    #[test]
    fn direct_attention_matches_the_matmul_path() {
        let (t, d, heads) = (5, 4, 2);
        let stride = 3 * heads * d;
        let qkv: Vec<f32> = (0..t * stride)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let a = heads * d;
        for h in 0..heads {
            let (q, k, v) = (&qkv[h * d..], &qkv[a + h * d..], &qkv[2 * a + h * d..]);
            let mut direct = vec![0f32; t * d];
            let mut scores = vec![0f32; t * t];
            attend(q, k, v, stride, t, d, 0.5, &mut scores, &mut direct, d);
            let mut s2 = vec![0f32; t * t];
            matmul(
                &mut s2,
                t,
                MatRef::rows(q, t, d, stride),
                MatRef::rows(k, t, d, stride).t(),
                0.5,
                false,
                1,
            );
            softmax_rows(&mut s2, t);
            let mut via_gemm = vec![0f32; t * d];
            matmul(
                &mut via_gemm,
                d,
                MatRef::rows(&s2, t, t, t),
                MatRef::rows(v, t, d, stride),
                1.0,
                false,
                1,
            );
            for (x, y) in direct.iter().zip(&via_gemm) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn matmul_handles_transposed_and_strided_views() {
        // lhs 2×3, rhs given as a 4×3 row-major weight used transposed (3×4), first 2 rows.
        let lhs = [1., 2., 3., 4., 5., 6.];
        let w = [1., 0., 0., 0., 1., 0., 0., 0., 1., 1., 1., 1.];
        let mut dst = vec![0f32; 2 * 2];
        matmul(
            &mut dst,
            2,
            MatRef::rows(&lhs, 2, 3, 3),
            MatRef::rows(&w, 2, 3, 3).t(),
            1.0,
            false,
            1,
        );
        assert_eq!(dst, vec![1., 2., 4., 5.]);
        matmul(
            &mut dst,
            2,
            MatRef::rows(&lhs, 2, 3, 3),
            MatRef::rows(&w, 2, 3, 3).t(),
            2.0,
            true,
            2,
        );
        assert_eq!(dst, vec![3., 6., 12., 15.]);
    }

    /// `$MRL_OPENBLAS`, else what `scripts/openblas.sh` installs (the pinned wheel, into the
    /// cache, as the model is fetched), so the test runs on a fresh machine without set-up.
    #[cfg(feature = "blas")]
    fn openblas() -> crate::blas::Blas {
        let path = std::env::var("MRL_OPENBLAS").unwrap_or_else(|_| {
            // The crate's folder as cargo runs the test (a binary built in another checkout
            // of the same sources carries that checkout's path), else as it was built.
            let dir = std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
            let script = format!("{dir}/../scripts/openblas.sh");
            let out = std::process::Command::new("bash")
                .arg(&script)
                .output()
                .expect("bash runs scripts/openblas.sh");
            assert!(
                out.status.success(),
                "{script} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .expect("a UTF-8 path")
                .trim()
                .to_string()
        });
        crate::blas::Blas::load(&path).unwrap_or_else(|e| panic!("loading {path}: {e}"))
    }

    /// OpenBLAS must compute what the built-in gemm computes on every layout the model uses,
    /// split over threads or not.
    #[cfg(feature = "blas")]
    #[test]
    fn openblas_matches_the_builtin_gemm() {
        let blas = &openblas();
        let mut seed = 7u32;
        let mut rand = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        for &(m, k, n, threads) in &[(37, 19, 23, 1), (100, 64, 48, 2), (5, 32, 7, 2)] {
            let a = rand(m * k * 2);
            let w = rand(n * k);
            let init = rand(m * n);
            for &(scale, acc) in &[(1.0f32, false), (0.5, true)] {
                // lhs with a row stride wider than its columns; rhs a transposed weight.
                let lhs = MatRef::rows(&a, m, k, 2 * k);
                let rhs = MatRef::rows(&w, n, k, k).t();
                let mut want = init.clone();
                let mut got = init.clone();
                super::matmul_gemm(&mut want, n, lhs, rhs, scale, acc, threads);
                assert!(matmul_blas(
                    blas, &mut got, n, lhs, rhs, scale, acc, threads
                ));
                for (x, y) in got.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{m}x{k}x{n}: {x} vs {y}");
                }
            }
        }
    }
}
