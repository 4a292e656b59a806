//! Closed-form linear maps between embedding spaces: ridge regression of one set of vectors
//! onto another (`LinearMap::ridge`), e.g. from a cheap profile's output space into the space
//! a collection's documents were embedded in.
//!
//! Pipeline: pairs with both rows non-zero kept, each row L2-normalised (a cosine space: only
//! directions matter) → `G = Σ x̂ x̂ᵀ`, `C = Σ x̂ ŷᵀ` in f64 → `M = (G + μI)⁻¹ (C + μ M₀)` by
//! Cholesky, `μ = λ·tr(G)/a` → the map `y = Mᵀ x`. `M₀` is the prior the ridge term shrinks
//! towards: zero (plain ridge) or the identity (for spaces already roughly aligned, such as a
//! cheap profile trained towards the full one). Scaling by the mean eigenvalue of `G` lets
//! one `lambda` suit any number of pairs and any width (Hoerl & Kennard, 1970).

use nalgebra::DMatrix;

use crate::error::{EncoderError, Result};
use crate::rotation::unit;

/// A `rows × cols` linear map `y = A x` (`x`: `cols` wide, `y`: `rows` wide), kept in f32 as
/// it is stored, so a map applies the same before and after a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearMap {
    rows: usize,
    cols: usize,
    /// Row-major `rows × cols`.
    a: Vec<f32>,
}

/// The sufficient statistics of a ridge fit (`G`, `C` of the module header), accumulated once
/// so that several ridge terms can be tried for the price of one pass over the pairs.
#[derive(Debug, Clone)]
pub struct Ridge {
    gram: DMatrix<f64>,
    cross: DMatrix<f64>,
}

impl Ridge {
    /// Accumulates `G` and `C` over the pairs of `x` rows (width `a`) and `y` rows (width
    /// `b`), in order; pairs where either row is zero or not finite are skipped.
    ///
    /// Errors: `InvalidVectors` when the lists differ in length, widths differ within a list,
    /// or no pair is usable.
    pub fn new(x: &[Vec<f32>], y: &[Vec<f32>]) -> Result<Self> {
        if x.len() != y.len() {
            return Err(EncoderError::InvalidVectors(format!(
                "{} inputs for {} targets",
                x.len(),
                y.len()
            )));
        }
        let (Some(a), Some(b)) = (x.first().map(Vec::len), y.first().map(Vec::len)) else {
            return Err(EncoderError::InvalidVectors(
                "no pairs to fit a map on".into(),
            ));
        };
        let mut gram = DMatrix::<f64>::zeros(a, a);
        let mut cross = DMatrix::<f64>::zeros(a, b);
        let mut fitted = 0usize;
        for (i, (xi, yi)) in x.iter().zip(y).enumerate() {
            let (Some(xi), Some(yi)) = (unit(xi, a, i)?, unit(yi, b, i)?) else {
                continue;
            };
            for p in 0..a {
                let xp = xi[p];
                if xp == 0.0 {
                    continue;
                }
                for q in p..a {
                    gram[(p, q)] += xp * xi[q];
                }
                for q in 0..b {
                    cross[(p, q)] += xp * yi[q];
                }
            }
            fitted += 1;
        }
        if fitted == 0 {
            return Err(EncoderError::InvalidVectors(
                "no pair has two non-zero finite vectors".into(),
            ));
        }
        for p in 0..a {
            for q in 0..p {
                gram[(p, q)] = gram[(q, p)];
            }
        }
        Ok(Self { gram, cross })
    }

    /// The map for ridge term `lambda` (relative to the mean eigenvalue of `G`), shrunk
    /// towards the identity when `toward_identity`, else towards zero; `lambda = 0` is plain
    /// least squares.
    ///
    /// Errors: `InvalidVectors` when `lambda` is negative or not finite, or the system is
    /// singular (with `lambda > 0` only when `G` is zero; with `lambda = 0` whenever the
    /// inputs do not span their width).
    pub fn solve(&self, lambda: f64, toward_identity: bool) -> Result<LinearMap> {
        if !(lambda >= 0.0 && lambda.is_finite()) {
            return Err(EncoderError::InvalidVectors(format!(
                "the ridge term must be zero or positive, got {lambda}"
            )));
        }
        let (a, b) = self.cross.shape();
        let ridge = lambda * self.gram.trace() / a as f64;
        let mut gram = self.gram.clone();
        let mut cross = self.cross.clone();
        for p in 0..a {
            gram[(p, p)] += ridge;
        }
        if toward_identity {
            for p in 0..a.min(b) {
                cross[(p, p)] += ridge;
            }
        }
        let solved = gram
            .cholesky()
            .ok_or_else(|| EncoderError::InvalidVectors("the ridge system is singular".into()))?
            .solve(&cross);
        let t = solved.transpose();
        let mut data = Vec::with_capacity(a * b);
        for r in 0..b {
            data.extend(t.row(r).iter().map(|&x| x as f32));
        }
        Ok(LinearMap {
            rows: b,
            cols: a,
            a: data,
        })
    }
}

impl LinearMap {
    /// The ridge map from `x` rows (width `a`) onto `y` rows (width `b`), pairs in order:
    /// `argmin_A Σ ‖A x̂ − ŷ‖² + λ·tr(G)/a·‖A − A₀‖²_F` over unit rows, `A₀` the `b × a`
    /// identity when `toward_identity`, else zero (`Ridge::new` then `Ridge::solve`).
    ///
    /// Errors: `InvalidVectors` when the lists differ in length, widths differ within a list,
    /// no pair is usable, `lambda` is negative or not finite, or the system is singular.
    pub fn ridge(
        x: &[Vec<f32>],
        y: &[Vec<f32>],
        lambda: f64,
        toward_identity: bool,
    ) -> Result<Self> {
        Ridge::new(x, y)?.solve(lambda, toward_identity)
    }

    /// A map from its `rows × cols` row-major matrix as `matrix_f32` gives it (a stored fit).
    ///
    /// Errors: `InvalidVectors` when the length is not `rows × cols` (or zero) or a value is
    /// not finite.
    pub fn from_matrix_f32(rows: usize, cols: usize, matrix: &[f32]) -> Result<Self> {
        if rows == 0 || cols == 0 || matrix.len() != rows * cols {
            return Err(EncoderError::InvalidVectors(format!(
                "a {rows} × {cols} map needs {} values, got {}",
                rows * cols,
                matrix.len()
            )));
        }
        if matrix.iter().any(|x| !x.is_finite()) {
            return Err(EncoderError::InvalidVectors(
                "a map matrix has a value that is not finite".into(),
            ));
        }
        Ok(Self {
            rows,
            cols,
            a: matrix.to_vec(),
        })
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The matrix, row-major `rows × cols`, in f32.
    pub fn matrix_f32(&self) -> Vec<f32> {
        self.a.clone()
    }

    /// `A x` for one `cols`-wide vector: one 8-lane f32 dot product per row (`kernels::dot8`;
    /// it runs on every mapped query, so it is the fast one).
    ///
    /// Panics if `x` is not `cols` wide.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.apply_prefix(x, self.rows)
    }

    /// The first `k` values of `A x` (all that a `k`-wide prefix needs).
    ///
    /// Panics if `x` is not `cols` wide or `k > rows`.
    pub fn apply_prefix(&self, x: &[f32], k: usize) -> Vec<f32> {
        assert_eq!(x.len(), self.cols, "the map takes {} values", self.cols);
        assert!(
            k <= self.rows,
            "the map gives {} values, not {k}",
            self.rows
        );
        self.a
            .chunks_exact(self.cols)
            .take(k)
            .map(|row| crate::kernels::dot8(row, x))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map the data pins down (more pairs than inputs, no noise) comes back within the
    /// ridge term's shrinkage; widths and the f32 round trip hold.
    #[test]
    fn ridge_recovers_a_known_map() {
        // Orthonormal columns, so ‖B x‖ = ‖x‖ and unit rows keep y = B x exactly.
        let b = [[0.6f32, 0.0], [0.8, 0.0], [0.0, 1.0]];
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for k in 0..64 {
            let t = k as f32 * 0.1;
            let x = vec![t.cos(), t.sin()];
            let y: Vec<f32> = b.iter().map(|r| r[0] * x[0] + r[1] * x[1]).collect();
            xs.push(x);
            ys.push(y);
        }
        let map = LinearMap::ridge(&xs, &ys, 1e-6, false).unwrap();
        assert_eq!((map.rows(), map.cols()), (3, 2));
        let want: Vec<f32> = b.iter().flatten().copied().collect();
        for (got, want) in map.matrix_f32().iter().zip(&want) {
            assert!(
                (got - want).abs() < 1e-4,
                "{:?} vs {want:?}",
                map.matrix_f32()
            );
        }
        let back = LinearMap::from_matrix_f32(3, 2, &map.matrix_f32()).unwrap();
        assert_eq!(back, map, "stored as it applies");
        assert!(LinearMap::from_matrix_f32(2, 2, &map.matrix_f32()).is_err());
        assert!(LinearMap::ridge(&xs, &ys[1..], 1e-3, false).is_err());
        assert!(LinearMap::ridge(&xs, &ys, -1e-3, false).is_err());
        assert!(LinearMap::ridge(&xs, &ys, f64::NAN, false).is_err());
        // No ridge term: plain least squares, exact on this full-rank, noiseless data.
        let exact = LinearMap::ridge(&xs, &ys, 0.0, false).unwrap();
        for (got, want) in exact.matrix_f32().iter().zip(&want) {
            assert!((got - want).abs() < 1e-5, "{:?}", exact.matrix_f32());
        }
        // Inputs that span one axis of two: singular without a ridge term.
        let flat: Vec<Vec<f32>> = xs.iter().map(|x| vec![x[0], 0.0]).collect();
        assert!(LinearMap::ridge(&flat, &ys, 0.0, false).is_err());
        // A heavy ridge term leaves the prior: zero, or the identity.
        let zero = LinearMap::ridge(&xs, &ys, 1e6, false).unwrap();
        assert!(zero.matrix_f32().iter().all(|x| x.abs() < 1e-4));
        let identity = LinearMap::ridge(&xs, &ys, 1e6, true).unwrap();
        let want = [1.0f32, 0.0, 0.0, 1.0, 0.0, 0.0];
        for (got, want) in identity.matrix_f32().iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{:?}", identity.matrix_f32());
        }
    }
}
