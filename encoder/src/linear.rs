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
//!
//! This is the one ridge solve of the workspace: callers that sum `G` and `C` themselves (the
//! trainer's layer bridges, over token batches, with a bias column the ridge term leaves
//! free) hand them to `Ridge::from_sums` and solve with `Ridge::coefficients`.

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
    /// The leading inputs the ridge term applies to (all but a trailing bias column).
    penalised: usize,
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
        Ok(Self {
            penalised: a,
            gram,
            cross,
        })
    }

    /// Statistics summed by the caller: `gram` (`a × a`, symmetric) and `cross` (`a × b`) of
    /// inputs whose first `penalised` values carry the ridge term; the rest (such as a column
    /// of ones, whose row of the solution is a bias) are fitted free, and `μ` is scaled by the
    /// mean of the penalised diagonal only.
    ///
    /// Errors: `InvalidVectors` when the shapes disagree or `penalised` is zero or wider
    /// than the inputs.
    pub fn from_sums(gram: DMatrix<f64>, cross: DMatrix<f64>, penalised: usize) -> Result<Self> {
        let a = gram.nrows();
        if gram.ncols() != a || cross.nrows() != a || penalised == 0 || penalised > a {
            return Err(EncoderError::InvalidVectors(format!(
                "ridge sums of {}×{} and {}×{} with {penalised} penalised inputs",
                gram.nrows(),
                gram.ncols(),
                cross.nrows(),
                cross.ncols()
            )));
        }
        Ok(Self {
            gram,
            cross,
            penalised,
        })
    }

    /// The map for ridge term `lambda` (relative to the mean eigenvalue of `G`), shrunk
    /// towards the identity when `toward_identity`, else towards zero; `lambda = 0` is plain
    /// least squares.
    ///
    /// Errors: as [`coefficients`](Self::coefficients).
    pub fn solve(&self, lambda: f64, toward_identity: bool) -> Result<LinearMap> {
        let m = self.coefficients(lambda, toward_identity)?;
        let (a, b) = m.shape();
        let t = m.transpose();
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

    /// `M = (G + μD)⁻¹ (C + μ D M₀)` in f64 (`a × b`, so `y = Mᵀ x`), `D` the identity on the
    /// penalised inputs and zero elsewhere, `μ = lambda` × their mean diagonal of `G`, `M₀`
    /// the identity when `toward_identity`, else zero.
    ///
    /// Errors: `InvalidVectors` when `lambda` is negative or not finite, or the system is
    /// singular (with `lambda > 0` only when `G` is zero or a free input is degenerate; with
    /// `lambda = 0` whenever the inputs do not span their width).
    pub fn coefficients(&self, lambda: f64, toward_identity: bool) -> Result<DMatrix<f64>> {
        if !(lambda >= 0.0 && lambda.is_finite()) {
            return Err(EncoderError::InvalidVectors(format!(
                "the ridge term must be zero or positive, got {lambda}"
            )));
        }
        let k = self.penalised;
        let b = self.cross.ncols();
        let trace: f64 = (0..k).map(|p| self.gram[(p, p)]).sum();
        let ridge = lambda * trace / k as f64;
        let mut gram = self.gram.clone();
        let mut cross = self.cross.clone();
        for p in 0..k {
            gram[(p, p)] += ridge;
        }
        if toward_identity {
            for p in 0..k.min(b) {
                cross[(p, p)] += ridge;
            }
        }
        Ok(gram
            .cholesky()
            .ok_or_else(|| EncoderError::InvalidVectors("the ridge system is singular".into()))?
            .solve(&cross))
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

    /// Sums handed in whole solve as the pairs they came from; a free trailing input (a bias
    /// column of ones) is left unshrunk, so a heavy ridge term keeps the mean offset.
    #[test]
    fn ridge_from_sums_matches_pairs_and_leaves_free_inputs_unshrunk() {
        let xs: Vec<Vec<f32>> = (0..32)
            .map(|k| vec![(k as f32 * 0.3).cos(), (k as f32 * 0.3).sin()])
            .collect();
        let ys: Vec<Vec<f32>> = xs.iter().map(|x| vec![x[1], x[0]]).collect();
        let pairs = Ridge::new(&xs, &ys).unwrap();
        let sums = Ridge::from_sums(pairs.gram.clone(), pairs.cross.clone(), 2).unwrap();
        for (lambda, toward) in [(0.0, false), (0.1, false), (0.1, true)] {
            assert_eq!(
                sums.solve(lambda, toward).unwrap(),
                pairs.solve(lambda, toward).unwrap()
            );
        }
        assert!(Ridge::from_sums(pairs.gram.clone(), pairs.cross.clone(), 0).is_err());
        assert!(Ridge::from_sums(pairs.gram.clone(), pairs.cross.clone(), 3).is_err());
        assert!(Ridge::from_sums(pairs.gram.clone(), DMatrix::zeros(3, 2), 1).is_err());
        assert!(Ridge::from_sums(DMatrix::zeros(2, 3), pairs.cross.clone(), 1).is_err());
        // y = 2 + x/2 over [x 1]: a ridge term that flattens the weight leaves the bias free
        // to take the mean of y.
        let (mut gram, mut cross, mut mean) = (DMatrix::zeros(2, 2), DMatrix::zeros(2, 1), 0.0);
        for k in 0..16 {
            let x = [k as f64 / 8.0 - 1.0, 1.0];
            let y = 2.0 + x[0] / 2.0;
            mean += y / 16.0;
            for p in 0..2 {
                for q in 0..2 {
                    gram[(p, q)] += x[p] * x[q];
                }
                cross[(p, 0)] += x[p] * y;
            }
        }
        let m = Ridge::from_sums(gram, cross, 1)
            .unwrap()
            .coefficients(1e9, false)
            .unwrap();
        assert!(m[(0, 0)].abs() < 1e-6, "{m}");
        assert!((m[(1, 0)] - mean).abs() < 1e-6, "{m}");
    }
}
