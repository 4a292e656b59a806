//! Nested output sizes: a vector of any trained size is a prefix of the full one, cut and then
//! re-normalised, so one forward pass serves every size.

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

pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    // The same floor sentence-transformers' normalize uses (torch's F.normalize eps).
    let norm = norm.max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
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
