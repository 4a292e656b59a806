//! The recipe's linear algebra on row vectors, over the encoder's kernels and closed forms
//! (`kernels::matmul`, `nested::l2_normalize`, `linear::LinearMap`), plus the projection that
//! keeps a trained head orthogonal.

use candle_core::{DType, Device, Tensor};
use mrl_encoder::kernels::{self, MatRef};
use mrl_encoder::linear::LinearMap;
use mrl_encoder::nested;

use crate::rotation::Rotation;
use crate::{Result, TrainerError};

/// A `rows × cols` row-major matrix of f32 as a tensor.
pub(crate) fn matrix(rows: &[Vec<f32>]) -> Result<Tensor> {
    let cols = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), cols), &Device::Cpu)?)
}

/// `x Wᵀ` for each row `x` (`W` is `out × in`, row-major): one `kernels::matmul`.
pub(crate) fn apply(w: &[f32], out: usize, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let inp = w.len() / out;
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    let y = matmul_rows(&flat, rows.len(), MatRef::rows(w, out, inp, inp).t());
    y.chunks_exact(out.max(1)).map(<[f32]>::to_vec).collect()
}

/// Each row scaled to unit length (`nested::l2_normalize`; a zero row stays zero).
pub(crate) fn unit_rows(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let mut r = r.clone();
            nested::l2_normalize(&mut r);
            r
        })
        .collect()
}

/// The least-squares map `M` (`d_full × d_sub`, row-major) with `M x̂_sub ≈ x̂_full` over
/// paired rows, ridge `λ = ridge · tr(XᵀX)/d`: the encoder's closed form
/// (`mrl_encoder::linear::LinearMap::ridge`, shrunk towards zero), which adaptive collections
/// fit their query maps with too.
///
/// Errors: `Invalid` when the rows differ in count; the encoder's when the system is singular
/// (raise `ridge`) or `ridge` is negative.
pub fn fit_linear_map(sub: &[Vec<f32>], full: &[Vec<f32>], ridge: f64) -> Result<Vec<f32>> {
    if sub.len() != full.len() || sub.is_empty() {
        return Err(TrainerError::Invalid(format!(
            "a map needs paired rows: {} and {}",
            sub.len(),
            full.len()
        )));
    }
    Ok(LinearMap::ridge(sub, full, ridge, false)?.matrix_f32())
}

/// `A B` for row-major `A` (`n × k`) and `B` (`k × m`): one `kernels::matmul`.
pub(crate) fn matmul(a: &[f32], n: usize, b: &[f32], m: usize) -> Vec<f32> {
    let k = a.len() / n.max(1);
    matmul_rows(a, n, MatRef::rows(b, k, m, m))
}

/// `A B` for row-major `A` (`n × k`, `k` = `b`'s rows) and any view `B`, row-major out.
fn matmul_rows(a: &[f32], n: usize, b: MatRef<'_>) -> Vec<f32> {
    let (k, m) = b.shape();
    let mut out = vec![0f32; n * m];
    let threads = rayon::current_num_threads();
    kernels::matmul(
        &mut out,
        m,
        MatRef::rows(a, n, k, k),
        b,
        1.0,
        false,
        threads,
    );
    out
}

/// Cosine of the `dim`-wide prefixes of `a` and `b` (0 when either is zero there).
pub(crate) fn prefix_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a[..dim].iter().zip(&b[..dim]) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa * bb).sqrt()
}

/// Projects the first `hidden` rows of `w` (`rows × hidden`, row-major) back onto the
/// orthogonal matrices and zeroes the rows past them. Each training step moves the head a
/// little, so three Newton–Schulz rounds `X ← X (3I − XᵀX) / 2` in f32 (candle's matmul)
/// bring it back to about f32 rounding (Higham 1986, quadratic convergence); should a step
/// have gone far, or with `exact`, `Rotation::nearest` (the f64 polar factor) answers.
///
/// Errors: `Invalid` when those rows are singular or not finite.
pub(crate) fn project_orthogonal(w: &mut [f32], hidden: usize, exact: bool) -> Result<()> {
    let square = hidden * hidden;
    let eye = Tensor::eye(hidden, DType::F32, &Device::Cpu)?;
    let mut x = Tensor::from_slice(&w[..square], (hidden, hidden), &Device::Cpu)?;
    // One Gram matrix XᵀX per round serves the round and the check after it.
    let mut gram = x.t()?.matmul(&x)?;
    // ‖XᵀX − I‖_F < 1 keeps every singular value below √2, where the rounds converge to
    // the polar factor (past √3 they would flip its sign); see `Rotation::nearest`.
    let start: f32 = (&gram - &eye)?.sqr()?.sum_all()?.sqrt()?.to_scalar()?;
    let mut near = !exact && start.is_finite() && start < 1.0;
    if near {
        for _ in 0..3 {
            x = ((&x * 1.5)? - (x.matmul(&gram)? * 0.5)?)?;
            gram = x.t()?.matmul(&x)?;
        }
        let off: f32 = (&gram - &eye)?.abs()?.max_all()?.to_scalar()?;
        near = off.is_finite() && off < 1e-4;
    }
    let q = if near {
        x.flatten_all()?.to_vec1()?
    } else {
        Rotation::nearest(&w[..square])?.matrix_f32()
    };
    w[..square].copy_from_slice(&q);
    w[square..].fill(0.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Rng;

    #[test]
    fn the_least_squares_map_recovers_a_linear_relation() {
        // y = A x for a scaled rotation A, so directions map linearly (the fit works on unit
        // rows): the fitted map reproduces y's direction for new x.
        let a = [0.0f32, 2.0, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        let mut rng = Rng::new(3);
        let xs: Vec<Vec<f32>> = (0..200)
            .map(|_| (0..3).map(|_| (rng.uniform() - 0.5) as f32).collect())
            .collect();
        let ys = apply(&a, 3, &xs);
        let m = fit_linear_map(&xs, &ys, 0.0).unwrap();
        let x = [vec![0.3f32, -0.2, 0.7]];
        let (want, got) = (apply(&a, 3, &x), apply(&m, 3, &x));
        let cos = |u: &[f32], v: &[f32]| {
            let d: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
            d / (u.iter().map(|a| a * a).sum::<f32>().sqrt()
                * v.iter().map(|a| a * a).sum::<f32>().sqrt())
        };
        assert!(cos(&want[0], &got[0]) > 0.999, "{:?} vs {:?}", want, got);
    }
}
