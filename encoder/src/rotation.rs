//! Closed-form Matryoshka rotation: the orthogonal map onto the uncentred principal axes of a
//! set of embeddings, so that every prefix of a rotated vector holds as much of the set's
//! energy as any subspace of that width can (Eckart–Young), while full-width cosines are
//! unchanged (the map is orthogonal).
//!
//! Pipeline: rows L2-normalised (zero rows skipped) → Gram matrix `G = Σ x̂ x̂ᵀ` in f64 →
//! symmetric eigendecomposition (`nalgebra`) → eigenvectors by decreasing eigenvalue become
//! the rotation's rows, each signed so its largest component is positive (deterministic).
//! The same as the right singular vectors of the stacked normalised rows, without forming
//! the n × d SVD. With labels, `Rotation::fit_pairs` does the same on relevant (query,
//! document) pairs' symmetrised cross-products, so prefixes keep what relevant pairs share.

use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{EncoderError, Result};

/// An orthogonal `dim × dim` rotation onto a set's principal axes, most energetic first.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    dim: usize,
    /// Row-major; row `i` is the `i`-th principal axis.
    rows: Vec<f64>,
    /// Eigenvalues of the fitted matrix, decreasing, clamped at 0 (for `fit` they sum to
    /// the number of rows fitted).
    eigenvalues: Vec<f64>,
}

impl Rotation {
    /// Fits the rotation on `vectors` (n rows of width d, any scale: each row is normalised
    /// first, so long and short vectors weigh the same; zero rows are skipped).
    ///
    /// Errors: `Invalid` when there is no non-zero row or the rows differ in width.
    pub fn fit(vectors: &[Vec<f32>]) -> Result<Self> {
        let dim = width_of(vectors.iter().map(Vec::as_slice))?;
        let mut gram = DMatrix::<f64>::zeros(dim, dim);
        let mut fitted = 0usize;
        for (i, v) in vectors.iter().enumerate() {
            let Some(row) = unit(v, dim, i)? else {
                continue;
            };
            // Upper triangle only; mirrored in `from_symmetric`.
            for a in 0..dim {
                let ra = row[a];
                for b in a..dim {
                    gram[(a, b)] += ra * row[b];
                }
            }
            fitted += 1;
        }
        if fitted == 0 {
            return Err(EncoderError::InvalidVectors(
                "every vector is zero or not finite".into(),
            ));
        }
        Ok(Self::from_symmetric(gram))
    }

    /// Fits the rotation on relevant (query, document) pairs: the eigenvectors of the
    /// symmetrised cross-product `M = Σ (q̂ d̂ᵀ + d̂ q̂ᵀ) / 2`, by decreasing eigenvalue. A
    /// prefix of the first `k` axes then holds the largest share of the pairs' mean
    /// cosine `tr(M) / n` that any `k`-wide orthogonal subspace can (Ky Fan), so short
    /// prefixes keep what makes a relevant document score high. Orthogonal like `fit`: full
    /// width cosines are unchanged. Axes with negative eigenvalues (directions on which
    /// relevant pairs disagree) come last.
    ///
    /// Errors: `Invalid` when no pair has two non-zero vectors or the widths differ.
    pub fn fit_pairs(pairs: &[(&[f32], &[f32])]) -> Result<Self> {
        let dim = width_of(pairs.iter().map(|p| p.0))?;
        let mut cross = DMatrix::<f64>::zeros(dim, dim);
        let mut fitted = 0usize;
        for (i, (q, d)) in pairs.iter().enumerate() {
            let (Some(q), Some(d)) = (unit(q, dim, i)?, unit(d, dim, i)?) else {
                continue;
            };
            for a in 0..dim {
                for b in a..dim {
                    cross[(a, b)] += 0.5 * (q[a] * d[b] + d[a] * q[b]);
                }
            }
            fitted += 1;
        }
        if fitted == 0 {
            return Err(EncoderError::InvalidVectors(
                "no pair has two non-zero finite vectors".into(),
            ));
        }
        Ok(Self::from_symmetric(cross))
    }

    /// The eigenvectors of a symmetric matrix given by its upper triangle, by decreasing
    /// eigenvalue, each signed so its largest component is positive (deterministic).
    fn from_symmetric(mut m: DMatrix<f64>) -> Self {
        let dim = m.nrows();
        for a in 0..dim {
            for b in 0..a {
                m[(a, b)] = m[(b, a)];
            }
        }
        let eig = SymmetricEigen::new(m);
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let mut rows = Vec::with_capacity(dim * dim);
        for &k in &order {
            let axis = eig.eigenvectors.column(k);
            let largest = axis
                .iter()
                .copied()
                .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                .unwrap_or(1.0);
            let sign = if largest < 0.0 { -1.0 } else { 1.0 };
            rows.extend(axis.iter().map(|x| x * sign));
        }
        Self {
            dim,
            rows,
            eigenvalues: order.iter().map(|&k| eig.eigenvalues[k].max(0.0)).collect(),
        }
    }

    /// The width `d` of the vectors it rotates.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `d × d` matrix, row-major, in f32: `y = R x` puts the principal coordinates first.
    pub fn matrix_f32(&self) -> Vec<f32> {
        self.rows.iter().map(|&x| x as f32).collect()
    }

    /// A rotation from its `d × d` row-major matrix as `matrix_f32` gives it (a stored fit):
    /// applying it gives what the stored matrix gives, wherever it is applied. Its energies
    /// are unknown (`energy` answers 0).
    ///
    /// Errors: `InvalidVectors` when the length is not a square's or a value is not finite.
    pub fn from_matrix_f32(matrix: &[f32]) -> Result<Self> {
        let dim = (matrix.len() as f64).sqrt().round() as usize;
        if dim == 0 || dim * dim != matrix.len() || matrix.iter().any(|x| !x.is_finite()) {
            return Err(EncoderError::InvalidVectors(format!(
                "a rotation matrix needs d × d finite values, got {}",
                matrix.len()
            )));
        }
        Ok(Self {
            dim,
            rows: matrix.iter().map(|&x| f64::from(x)).collect(),
            eigenvalues: Vec::new(),
        })
    }

    /// The orthogonal matrix nearest to a `d × d` row-major matrix in Frobenius norm: its
    /// polar factor `U Vᵀ` for `M = U Σ Vᵀ` (Higham, "Computing the polar decomposition",
    /// 1986). A trained head is projected back onto the orthogonal matrices with this after
    /// each step, so full-width cosines stay the parent's. Near an orthogonal matrix
    /// (‖MᵀM − I‖_F < 1) the Newton–Schulz iteration `X ← X (3I − XᵀX) / 2` converges
    /// quadratically and costs a few matrix products; elsewhere the SVD answers.
    ///
    /// Errors: `InvalidVectors` when the length is not a square's, a value is not finite, or
    /// the matrix is singular (no unique polar factor).
    pub fn nearest(matrix: &[f32]) -> Result<Self> {
        let start = Self::from_matrix_f32(matrix)?;
        let dim = start.dim;
        let m = DMatrix::<f64>::from_row_slice(dim, dim, &start.rows);
        let identity = DMatrix::<f64>::identity(dim, dim);
        let off = |x: &DMatrix<f64>| (x.transpose() * x - &identity).amax();
        let mut x = m.clone();
        // Newton–Schulz maps each singular value σ to σ(3 − σ²)/2: it converges to the polar
        // factor for σ in (0, √3) and to a wrong sign past it. ‖XᵀX − I‖_F < 1 bounds every
        // σ² in (0, 2), so only then does it start; elsewhere the SVD answers.
        let mut converged = (x.transpose() * &x - &identity).norm() < 1.0;
        if converged {
            for _ in 0..30 {
                let gram = x.transpose() * &x;
                x = &x * (&identity * 3.0 - gram) * 0.5;
                if off(&x) < 1e-13 {
                    break;
                }
            }
            converged = off(&x) < 1e-12;
        }
        if !converged {
            let svd = m.svd(true, true);
            let smallest = svd.singular_values.min();
            let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
                return Err(EncoderError::InvalidVectors(
                    "the SVD did not converge".into(),
                ));
            };
            if smallest.is_nan() || smallest <= 1e-12 {
                return Err(EncoderError::InvalidVectors(
                    "a singular matrix has no unique nearest rotation".into(),
                ));
            }
            x = u * v_t;
        }
        let mut rows = Vec::with_capacity(dim * dim);
        for i in 0..dim {
            rows.extend(x.row(i).iter().copied());
        }
        Ok(Self {
            dim,
            rows,
            eigenvalues: Vec::new(),
        })
    }

    /// `R v` for one vector of width `d` (f64 accumulation).
    ///
    /// Panics if `v` is not `d` wide.
    pub fn apply(&self, v: &[f32]) -> Vec<f32> {
        self.apply_prefix(v, self.dim)
    }

    /// The first `k` coordinates of `R v` (all that a `k`-wide prefix needs), f64
    /// accumulation.
    ///
    /// Panics if `v` is not `d` wide or `k > d`.
    pub fn apply_prefix(&self, v: &[f32], k: usize) -> Vec<f32> {
        assert_eq!(v.len(), self.dim, "the rotation is {} wide", self.dim);
        self.rows
            .chunks_exact(self.dim)
            .take(k)
            .map(|axis| {
                axis.iter()
                    .zip(v)
                    .map(|(a, &x)| a * f64::from(x))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// The share of the fitted set's energy (Σ of the Gram matrix's eigenvalues) that the
    /// first `k` axes hold, in [0, 1].
    pub fn energy(&self, k: usize) -> f64 {
        let total: f64 = self.eigenvalues.iter().sum();
        if total == 0.0 {
            return 0.0;
        }
        self.eigenvalues.iter().take(k).sum::<f64>() / total
    }
}

/// The common width of `rows`. Errors: `Invalid` when there is none.
fn width_of<'a>(mut rows: impl Iterator<Item = &'a [f32]>) -> Result<usize> {
    rows.next()
        .map(<[f32]>::len)
        .ok_or_else(|| EncoderError::InvalidVectors("no vectors to fit a rotation on".into()))
}

/// Row `i` in f64 at unit length; `None` for a zero or non-finite row.
/// Errors: `Invalid` when it is not `dim` wide.
pub(crate) fn unit(v: &[f32], dim: usize, i: usize) -> Result<Option<Vec<f64>>> {
    if v.len() != dim {
        return Err(EncoderError::InvalidVectors(format!(
            "vector {i} has {} values, the first has {dim}",
            v.len()
        )));
    }
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Ok(None);
    }
    Ok(Some(v.iter().map(|&x| f64::from(x) / norm).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64, enough for test data.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed)
        }

        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    /// Points near a few random (not axis-aligned) directions in 32 dims, plus small noise:
    /// the structure that a plain prefix of the coordinates cannot see.
    fn anisotropic(n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        let mut gauss = move || {
            // Box–Muller.
            let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let (d, k) = (32, 6);
        let directions: Vec<Vec<f64>> = (0..k).map(|_| (0..d).map(|_| gauss()).collect()).collect();
        (0..n)
            .map(|_| {
                let weights: Vec<f64> = (0..k).map(|_| gauss() * 3.0).collect();
                (0..d)
                    .map(|j| {
                        let signal: f64 = (0..k).map(|c| weights[c] * directions[c][j]).sum();
                        (signal + gauss() * 0.3) as f32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_rotation_is_orthogonal_and_keeps_cosines() {
        let data = anisotropic(300, 7);
        let r = Rotation::fit(&data).unwrap();
        let m = &r.rows;
        let d = r.dim();
        let mut worst = 0f64;
        for a in 0..d {
            for b in 0..d {
                let dot: f64 = (0..d).map(|j| m[a * d + j] * m[b * d + j]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        assert!(worst <= 1e-5, "‖RRᵀ − I‖∞ = {worst}");
        for pair in data.windows(2).take(50) {
            let before = cosine(&pair[0], &pair[1]);
            let after = cosine(&r.apply(&pair[0]), &r.apply(&pair[1]));
            assert!((before - after).abs() <= 1e-6, "{before} vs {after}");
        }
        // Energy is sorted: the first axes hold the signal.
        assert!(r.energy(6) > 0.9, "{}", r.energy(6));
        assert!((r.energy(d) - 1.0).abs() < 1e-9);
    }

    /// On an anisotropic set, the rotated 8-dim prefix finds each point's true (full-width)
    /// nearest neighbours far better than the plain 8-dim prefix.
    #[test]
    fn a_rotated_prefix_ranks_neighbours_better_than_the_plain_one() {
        let data = anisotropic(400, 11);
        let r = Rotation::fit(&data).unwrap();
        let rotated: Vec<Vec<f32>> = data.iter().map(|v| r.apply(v)).collect();
        let recall = |vectors: &[Vec<f32>], width: usize| {
            let mut hits = 0;
            let queries = 100;
            for q in 0..queries {
                let top = |vs: &[Vec<f32>], w: usize| {
                    let mut scored: Vec<(f64, usize)> = (0..vs.len())
                        .filter(|&i| i != q)
                        .map(|i| (cosine(&vs[q][..w], &vs[i][..w]), i))
                        .collect();
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                    scored.iter().take(5).map(|s| s.1).collect::<Vec<_>>()
                };
                let truth = top(&data, 32);
                let found = top(vectors, width);
                hits += found.iter().filter(|i| truth.contains(i)).count();
            }
            hits as f64 / (queries * 5) as f64
        };
        let plain = recall(&data, 8);
        let turned = recall(&rotated, 8);
        assert!(
            turned > plain + 0.2 && turned > 0.7,
            "recall@5 of the 8-dim prefix: rotated {turned:.3}, plain {plain:.3}"
        );
    }

    /// Pairs that agree on a low-energy subspace: the documents' principal axes miss it, the
    /// pairs' axes put it first, so the pairs' 4-dim prefix keeps more of each pair's cosine.
    #[test]
    fn the_pairs_rotation_puts_what_pairs_share_first_and_stays_orthogonal() {
        let mut rng = Rng::new(5);
        let mut g = move || rng.uniform() - 0.5;
        let pairs: Vec<(Vec<f32>, Vec<f32>)> = (0..1500)
            .map(|_| {
                let shared: Vec<f64> = (0..4).map(|_| g()).collect();
                let mut q: Vec<f32> = (0..16).map(|_| (g() * 0.2) as f32).collect();
                let mut d = q.clone();
                for x in d.iter_mut() {
                    *x = (g() * 0.2) as f32;
                }
                // Loud, unshared noise on axes 0..4; the shared signal on axes 12..16.
                for j in 0..4 {
                    q[j] += (g() * 3.0) as f32;
                    d[j] += (g() * 3.0) as f32;
                    q[12 + j] += shared[j] as f32;
                    d[12 + j] += shared[j] as f32;
                }
                (q, d)
            })
            .collect();
        let refs: Vec<(&[f32], &[f32])> = pairs.iter().map(|(q, d)| (&q[..], &d[..])).collect();
        let by_pairs = Rotation::fit_pairs(&refs).unwrap();
        let docs: Vec<Vec<f32>> = pairs.iter().map(|p| p.1.clone()).collect();
        let by_docs = Rotation::fit(&docs).unwrap();
        let kept = |r: &Rotation| {
            refs.iter()
                .map(|(q, d)| cosine(&r.apply(q)[..4], &r.apply(d)[..4]))
                .sum::<f64>()
                / refs.len() as f64
        };
        assert!(
            kept(&by_pairs) > kept(&by_docs) + 0.3,
            "mean pair cosine on 4 dims: pairs {:.3}, documents {:.3}",
            kept(&by_pairs),
            kept(&by_docs)
        );
        for (q, d) in refs.iter().take(20) {
            let (before, after) = (cosine(q, d), cosine(&by_pairs.apply(q), &by_pairs.apply(d)));
            assert!((before - after).abs() <= 1e-6, "{before} vs {after}");
        }
    }

    #[test]
    fn the_nearest_rotation_is_orthogonal_and_fixes_rotations() {
        let data = anisotropic(300, 3);
        let r = Rotation::fit(&data).unwrap().matrix_f32();
        let d = 32;
        let worst = |m: &[f64]| {
            let mut w = 0f64;
            for a in 0..d {
                for b in 0..d {
                    let dot: f64 = (0..d).map(|j| m[a * d + j] * m[b * d + j]).sum();
                    w = w.max((dot - if a == b { 1.0 } else { 0.0 }).abs());
                }
            }
            w
        };
        // A rotation is its own nearest (up to f32 rounding of the input).
        let same = Rotation::nearest(&r).unwrap();
        for (a, b) in same.rows.iter().zip(&r) {
            assert!((a - f64::from(*b)).abs() < 1e-6, "{a} vs {b}");
        }
        // A small step away (Newton–Schulz) and a far one (SVD) both land on an orthogonal
        // matrix; the small step's stays near where it was.
        let mut rng = Rng::new(9);
        for scale in [1e-2, 2.0] {
            let moved: Vec<f32> = r
                .iter()
                .map(|&x| x + ((rng.uniform() - 0.5) * scale) as f32)
                .collect();
            let q = Rotation::nearest(&moved).unwrap();
            assert!(worst(&q.rows) < 1e-10, "scale {scale}: {}", worst(&q.rows));
            if scale < 1.0 {
                let dist: f64 = q
                    .rows
                    .iter()
                    .zip(&moved)
                    .map(|(a, &b)| (a - f64::from(b)).abs())
                    .fold(0.0, f64::max);
                assert!(dist < 0.05, "moved by {dist}");
            }
        }
        // Entries of MᵀM − I all below 0.5 do not bound its singular values: M = I + 11ᵀ/8
        // has one at 2, where Newton–Schulz would converge to a reflection. The answer is I.
        let m: Vec<f32> = (0..64)
            .map(|k| if k % 9 == 0 { 1.125 } else { 0.125 })
            .collect();
        let q = Rotation::nearest(&m).unwrap();
        for (k, v) in q.rows.iter().enumerate() {
            let want = if k % 9 == 0 { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-9, "entry {k}: {v}");
        }
        assert!(Rotation::nearest(&[0.0; 16]).is_err());
        assert!(Rotation::nearest(&[1.0; 3]).is_err());
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(Rotation::fit_pairs(&[]).is_err());
        assert!(Rotation::fit_pairs(&[(&[0.0; 4][..], &[1.0; 4][..])]).is_err());
        assert!(Rotation::fit(&[]).is_err());
        assert!(Rotation::fit(&[vec![0.0; 4]]).is_err());
        assert!(Rotation::fit(&[vec![1.0; 4], vec![1.0; 3]]).is_err());
    }
}
