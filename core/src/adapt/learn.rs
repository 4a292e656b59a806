//! Learned nesting: a projection of an adaptive collection's full-width vectors, started from
//! its PCA rotation and trained on the collection's own stored vectors so that at every
//! rotated size the cut vectors keep the full width's cosines, each vector's nearest
//! neighbours weighted up: the unsupervised pairwise and top-k similarity losses of
//! Matryoshka-Adaptor (Yoon et al., EMNLP 2024), as a weighted squared error.
//!
//! No orthogonality is needed: the full width is stored as the model gives it and never
//! projected, so the projection only decides what the smaller sizes keep. It is kept only
//! when it finds each held-out document's full-width neighbours at least as well as PCA at
//! every rotated size and better on average (`keeps_learned`); otherwise PCA stays.
//!
//! Gradient, per size `d` with `P_d` the projection's first `d` rows, batch `X` (unit rows),
//! `Y = X P_dᵀ`, `Ŷ` its rows at unit length, `C = Ŷ Ŷᵀ`, `S = X Xᵀ`, pair weights `W`:
//! `L = Σ_{i≠j} W_ij (C_ij − S_ij)² / (b(b−1))`; `∂L/∂Ŷ = 4 E Ŷ / (b(b−1))` with
//! `E = W ∘ (C − S)` (symmetric, zero diagonal); through the normalisation
//! `∂L/∂y_i = (g_i − ŷ_i (ŷ_iᵀ g_i)) / ‖y_i‖`; `∂L/∂P_d = (∂L/∂Y)ᵀ X`. Steps of fixed
//! Frobenius length along the summed gradient with momentum: the gradient lies in the span
//! of the vectors, so the projection never picks up directions the collection does not use
//! (Adam's per-entry scaling would).

use nalgebra::DMatrix;

use mrl_encoder::rotation::Rotation;

use super::maps::{overlap, top_k, unit, HOLD_OUT, NEIGHBOURS};
use crate::store::NestingInfo;

/// Vectors the projection is trained on, at most (the rest of the sample is not read).
const FIT: usize = 4096;
/// Held-out vectors the choice is judged on, at most.
const HELD: usize = 512;
const BATCH: usize = 256;
const STEPS: usize = 150;
/// Frobenius length of a step, relative to the projection's (`√top` for orthonormal rows).
const STEP: f32 = 2e-4;
const MOMENTUM: f32 = 0.9;
/// Extra weight of a pair where one is among the other's `NEIGHBOURS` nearest in the batch
/// (by full-width cosine): the top-k term.
const NEIGHBOUR_WEIGHT: f32 = 4.0;
/// Mean held-out recall the learned projection must gain over PCA to be kept: one more
/// neighbour found among thousands is noise, not a better nesting.
const MIN_GAIN: f64 = 0.005;

/// What a fit chose: the `w × w` row-major matrix to cut from when the learned projection
/// was kept (`None`: keep PCA's), and the figures behind the choice.
pub(super) struct Nesting {
    pub matrix: Option<Vec<f32>>,
    pub info: NestingInfo,
}

/// Learns a projection for the rotated sizes `dims` (ascending, each below `w`) from the PCA
/// rotation of `sample` less every `HOLD_OUT`-th vector, and keeps it if it beats that PCA
/// on those held-out vectors (both are judged on vectors neither saw). Too few vectors (or
/// no rotated size): PCA, untried.
pub(super) fn learn(sample: &[Vec<f32>], dims: &[usize]) -> Nesting {
    let w = sample.first().map_or(0, Vec::len);
    let untried = |held_out: usize| Nesting {
        matrix: None,
        info: NestingInfo {
            kept: "pca".into(),
            dims: dims.to_vec(),
            held_out,
            pca_recall: Vec::new(),
            learned_recall: Vec::new(),
            steps: 0,
        },
    };
    let (mut fit, mut held) = (Vec::new(), Vec::new());
    for (i, v) in sample.iter().enumerate() {
        if v.len() != w || v.iter().any(|x| !x.is_finite()) || v.iter().all(|&x| x == 0.0) {
            continue;
        }
        if i % HOLD_OUT == HOLD_OUT - 1 {
            if held.len() < HELD {
                held.push(unit(v));
            }
        } else if fit.len() < FIT {
            fit.push(unit(v));
        }
    }
    let Some(&top) = dims.iter().max() else {
        return untried(held.len());
    };
    if w == 0 || top >= w || fit.len() < BATCH || held.len() <= NEIGHBOURS {
        return untried(held.len());
    }
    let Ok(pca) = Rotation::fit(&fit).map(|r| r.matrix_f32()) else {
        return untried(held.len());
    };
    let x = rows(&fit, w);
    let start = DMatrix::<f32>::from_row_slice(top, w, &pca[..top * w]);
    let learned = train(&x, start, dims);
    let h = rows(&held, w);
    let pca_top = DMatrix::<f32>::from_row_slice(top, w, &pca[..top * w]);
    let pca_recall = recall(&h, &pca_top, dims);
    let learned_recall = recall(&h, &learned, dims);
    let kept = keeps_learned(&pca_recall, &learned_recall);
    let matrix = kept.then(|| {
        let mut m = Vec::with_capacity(w * w);
        for r in 0..top {
            m.extend(learned.row(r).iter().copied());
        }
        // Rows past the widest rotated size are never cut from; PCA's keep the matrix square.
        m.extend_from_slice(&pca[top * w..]);
        m
    });
    Nesting {
        matrix,
        info: NestingInfo {
            kept: if kept { "learned" } else { "pca" }.into(),
            dims: dims.to_vec(),
            held_out: held.len(),
            pca_recall,
            learned_recall,
            steps: STEPS,
        },
    }
}

/// The rule: the learned projection is kept only when its held-out recall is at least PCA's
/// at every size and `MIN_GAIN` above it on average (a tie keeps PCA, the closed form).
pub(super) fn keeps_learned(pca: &[f64], learned: &[f64]) -> bool {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    !pca.is_empty()
        && pca.len() == learned.len()
        && pca.iter().zip(learned).all(|(p, l)| l >= p)
        && mean(learned) >= mean(pca) + MIN_GAIN
}

fn rows(v: &[Vec<f32>], w: usize) -> DMatrix<f32> {
    DMatrix::from_row_iterator(v.len(), w, v.iter().flatten().copied())
}

/// Momentum steps of fixed length on the weighted similarity loss (module header) from `p`
/// (`top × w`), on batches of `x`'s rows drawn by a fixed-seed generator (the same fit on
/// the same sample).
fn train(x: &DMatrix<f32>, mut p: DMatrix<f32>, dims: &[usize]) -> DMatrix<f32> {
    let (n, w) = x.shape();
    let top = p.nrows();
    let mut velocity = DMatrix::<f32>::zeros(top, w);
    let length = STEP * p.norm();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let b = BATCH.min(n);
    for _ in 0..STEPS {
        let picks: Vec<usize> = (0..b)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                ((seed >> 33) as usize) % n
            })
            .collect();
        let xb = DMatrix::<f32>::from_fn(b, w, |i, j| x[(picks[i], j)]);
        let (_, grad) = loss_and_gradient(&xb, &p, dims);
        let norm = grad.norm();
        if norm > 0.0 && norm.is_finite() {
            velocity = velocity * MOMENTUM + grad / norm;
            p -= &velocity * (length * (1.0 - MOMENTUM));
        }
    }
    p
}

/// The weighted similarity loss of projection `p` (`top × w`) on batch `xb` (`b × w`, unit
/// rows), summed over `dims`, and its gradient with respect to `p` (module header).
fn loss_and_gradient(xb: &DMatrix<f32>, p: &DMatrix<f32>, dims: &[usize]) -> (f32, DMatrix<f32>) {
    let b = xb.nrows();
    let scale = 1.0 / (b * (b - 1)).max(1) as f32;
    let s = xb * xb.transpose();
    let weights = neighbour_weights(&s);
    let mut loss = 0.0;
    let mut grad = DMatrix::<f32>::zeros(p.nrows(), p.ncols());
    for &d in dims {
        let mut y = xb * p.rows(0, d).transpose();
        let norms: Vec<f32> = (0..b).map(|i| y.row(i).norm().max(1e-12)).collect();
        for (i, r) in norms.iter().enumerate() {
            y.row_mut(i).unscale_mut(*r);
        }
        let c = &y * y.transpose();
        let diff = DMatrix::<f32>::from_fn(
            b,
            b,
            |i, j| {
                if i == j {
                    0.0
                } else {
                    c[(i, j)] - s[(i, j)]
                }
            },
        );
        let e = diff.component_mul(&weights);
        loss += e.component_mul(&diff).sum() * scale;
        let g_hat = (&e * &y) * (4.0 * scale);
        let mut g_y = g_hat.clone();
        for (i, r) in norms.iter().enumerate() {
            let along = y.row(i).dot(&g_hat.row(i));
            let row = (g_hat.row(i) - y.row(i) * along) / *r;
            g_y.set_row(i, &row);
        }
        let mut rows = grad.rows_mut(0, d);
        rows += g_y.transpose() * xb;
    }
    (loss, grad)
}

/// `1 + NEIGHBOUR_WEIGHT` where `j` is among `i`'s `NEIGHBOURS` nearest by `s` or `i` among
/// `j`'s, else 1.
fn neighbour_weights(s: &DMatrix<f32>) -> DMatrix<f32> {
    let b = s.nrows();
    let mut w = DMatrix::<f32>::from_element(b, b, 1.0);
    for i in 0..b {
        for j in top_k(s.row(i).iter().copied(), i) {
            w[(i, j)] = 1.0 + NEIGHBOUR_WEIGHT;
            w[(j, i)] = 1.0 + NEIGHBOUR_WEIGHT;
        }
    }
    w
}

/// Per size in `dims`: mean share of each row of `h`'s `NEIGHBOURS` nearest rows (full-width
/// cosine) that its `d`-wide cut of `h pᵀ` finds among the others' cuts.
fn recall(h: &DMatrix<f32>, p: &DMatrix<f32>, dims: &[usize]) -> Vec<f64> {
    let n = h.nrows();
    let full = h * h.transpose();
    let truth: Vec<Vec<usize>> = (0..n)
        .map(|i| top_k(full.row(i).iter().copied(), i))
        .collect();
    dims.iter()
        .map(|&d| {
            let mut z = h * p.rows(0, d).transpose();
            for i in 0..n {
                let r = z.row(i).norm();
                if r > 0.0 {
                    z.row_mut(i).unscale_mut(r);
                }
            }
            let sims = &z * z.transpose();
            let total: f64 = (0..n)
                .map(|i| overlap(&truth[i], &top_k(sims.row(i).iter().copied(), i)))
                .sum();
            total / n as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_is_kept_only_when_it_beats_pca_at_every_size() {
        assert!(keeps_learned(&[0.5, 0.7], &[0.6, 0.8]));
        assert!(
            keeps_learned(&[0.5, 1.0], &[0.6, 1.0]),
            "better at one size, tied at one"
        );
        assert!(!keeps_learned(&[0.5, 0.7], &[0.5, 0.7]), "a tie keeps PCA");
        assert!(
            !keeps_learned(&[0.5, 0.7], &[0.501, 0.701]),
            "noise keeps PCA"
        );
        assert!(
            !keeps_learned(&[0.5, 0.7], &[0.9, 0.6]),
            "one size worse keeps PCA"
        );
        assert!(!keeps_learned(&[], &[]));
    }

    /// Vectors that lie in an 8-dim subspace of 32: PCA's first 8 axes hold all of them, so
    /// 8 and 16 dims already find every full-width neighbour and nothing can beat it — the
    /// fit trains, compares, and keeps PCA.
    #[test]
    fn pca_stays_where_it_is_optimal() {
        let (w, k) = (32, 8);
        let mut normal = super::super::maps::uniforms(7);
        let basis: Vec<Vec<f32>> = (0..k).map(|_| (0..w).map(|_| normal()).collect()).collect();
        let sample: Vec<Vec<f32>> = (0..2000)
            .map(|_| {
                let c: Vec<f32> = (0..k).map(|_| normal()).collect();
                (0..w)
                    .map(|j| (0..k).map(|a| c[a] * basis[a][j]).sum())
                    .collect()
            })
            .collect();
        let nesting = learn(&sample, &[8, 16]);
        let info = &nesting.info;
        assert_eq!(info.steps, STEPS, "{info:?}");
        assert_eq!(info.held_out, 250);
        for r in &info.pca_recall {
            assert!(*r > 0.999, "{info:?}");
        }
        assert_eq!(info.kept, "pca", "{info:?}");
        assert!(nesting.matrix.is_none());
    }

    /// The analytic gradient matches central finite differences of the loss on a small
    /// batch, entry by entry (a wrong sign or a dropped term fails here).
    #[test]
    fn the_gradient_is_the_losss() {
        let (b, w, top) = (12, 6, 4);
        let mut next = super::super::maps::uniforms(3);
        let rows: Vec<Vec<f32>> = (0..b)
            .map(|_| unit(&(0..w).map(|_| next()).collect::<Vec<_>>()))
            .collect();
        let xb = DMatrix::from_row_iterator(b, w, rows.iter().flatten().copied());
        let p = DMatrix::<f32>::from_fn(top, w, |_, _| next());
        let dims = [2, 4];
        let (_, grad) = loss_and_gradient(&xb, &p, &dims);
        let h = 1e-3f32;
        for r in 0..top {
            for c in 0..w {
                let (mut plus, mut minus) = (p.clone(), p.clone());
                plus[(r, c)] += h;
                minus[(r, c)] -= h;
                let numeric = (loss_and_gradient(&xb, &plus, &dims).0
                    - loss_and_gradient(&xb, &minus, &dims).0)
                    / (2.0 * h);
                assert!(
                    (numeric - grad[(r, c)]).abs() <= 2e-3 + 0.02 * numeric.abs(),
                    "({r}, {c}): numeric {numeric}, analytic {}",
                    grad[(r, c)]
                );
            }
        }
    }
}
