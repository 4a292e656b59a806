//! Mean pooling over each sequence's own tokens: packed batches have no padding to mask.

use std::ops::Range;

/// Averages the rows of `x` (`tokens × hidden`, row-major) in each span. An empty span pools
/// to zeros instead of dividing by zero.
pub fn mean_pool(x: &[f32], hidden: usize, spans: &[Range<usize>]) -> Vec<Vec<f32>> {
    spans
        .iter()
        .map(|span| {
            let mut acc = vec![0f32; hidden];
            for row in x[span.start * hidden..span.end * hidden].chunks_exact(hidden) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            let n = span.len().max(1) as f32;
            acc.iter_mut().for_each(|a| *a /= n);
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_each_span() {
        let x = [1f32, 2., 3., 4., 5., 6., 7., 8., 9., 10.];
        let pooled = mean_pool(&x, 2, &[0..2, 2..5, 5..5]);
        assert_eq!(pooled, vec![vec![2., 3.], vec![7., 8.], vec![0., 0.]]);
    }
}
