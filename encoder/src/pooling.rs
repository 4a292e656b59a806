//! Mean pooling over the attention mask: padded positions never count.

use candle_core::Tensor;

use crate::error::Result;

/// Averages `hidden` `(batch, seq, dim)` over the positions where `mask` is 1.
/// A row with no unmasked token (impossible after special tokens, but cheap to guard)
/// pools to zeros instead of dividing by zero.
pub fn mean_pool(hidden: &Tensor, mask: &[u32]) -> Result<Vec<Vec<f32>>> {
    let (batch, seq, dim) = hidden.dims3()?;
    let values = hidden.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut acc = vec![0f32; dim];
        let mut count = 0usize;
        for t in 0..seq {
            if mask[b * seq + t] == 0 {
                continue;
            }
            count += 1;
            let row = &values[(b * seq + t) * dim..(b * seq + t + 1) * dim];
            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
        }
        let n = count.max(1) as f32;
        acc.iter_mut().for_each(|a| *a /= n);
        out.push(acc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ignores_padding() {
        let h = Tensor::from_vec(
            vec![1f32, 2., 3., 4., 100., 100., 5., 6., 7., 8., 9., 10.],
            (2, 3, 2),
            &Device::Cpu,
        )
        .unwrap();
        let pooled = mean_pool(&h, &[1, 1, 0, 1, 1, 1]).unwrap();
        assert_eq!(pooled, vec![vec![2., 3.], vec![7., 8.]]);
    }
}
