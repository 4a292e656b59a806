//! Nested output sizes: a vector of any trained size is a prefix of the full one, cut and then
//! re-normalised, so one forward pass serves every size. (The trained Matryoshka head, a linear
//! map applied before the cut, is part of the model: `model.rs`, `trainer::student`.)

use crate::error::{EncoderError, Result};

/// Checks `dim` against the output width `max`.
pub fn check_dim(dim: usize, max: usize) -> Result<()> {
    if dim == 0 || dim > max {
        return Err(EncoderError::InvalidDim { dim, max });
    }
    Ok(())
}

/// The first `dim` values of `v`, L2-normalised when `normalize` is set. A zero vector stays
/// zero rather than turning into NaNs.
pub fn nest(v: &[f32], dim: usize, normalize: bool) -> Result<Vec<f32>> {
    check_dim(dim, v.len())?;
    let mut out = v[..dim].to_vec();
    if normalize {
        l2_normalize(&mut out);
    }
    Ok(out)
}

/// Scales `v` to unit L2 norm in place; a zero vector stays zero. The norm is taken in f64,
/// where the square of any finite f32 neither overflows nor underflows, so a vector and any
/// finite rescaled copy of it come out the same (within an f32 rounding). torch's
/// `F.normalize`, which sentence-transformers uses, floors the norm at 1e-12 instead; the two
/// differ only for vectors shorter than that, which no encoder output is.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_cut_and_renormalised() {
        let v = [3.0, 4.0, 12.0];
        assert_eq!(nest(&v, 2, true).unwrap(), vec![0.6, 0.8]);
        assert_eq!(nest(&v, 2, false).unwrap(), vec![3.0, 4.0]);
        assert_eq!(nest(&[0.0, 0.0], 2, true).unwrap(), vec![0.0, 0.0]);
    }

    /// A finite vector of any magnitude normalises like its rescaled copy: no overflow to
    /// zeros or NaN at 1e30, no underflow to the floor at 1e-30.
    #[test]
    fn normalising_is_scale_free_over_f32s_range() {
        let v = [0.3f32, -1.2, 2.5, 0.01];
        let unit = nest(&v, 4, true).unwrap();
        for scale in [1e30f32, 1e-30, 3e38 / 2.5, 1e-38] {
            let scaled: Vec<f32> = v.iter().map(|x| x * scale).collect();
            let got = nest(&scaled, 4, true).unwrap();
            for (a, b) in got.iter().zip(&unit) {
                assert!(
                    a.is_finite() && (a - b).abs() <= 1e-6,
                    "{scale}: {got:?} vs {unit:?}"
                );
            }
        }
    }

    #[test]
    fn bad_dims_name_the_range() {
        let v = [1.0; 4];
        for dim in [0, 5] {
            let e = nest(&v, dim, true).unwrap_err().to_string();
            assert!(
                e.contains(&format!("dim {dim}")) && e.contains("1..=4"),
                "{e}"
            );
        }
    }
}
