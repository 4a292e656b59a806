//! Synthetic Matryoshka-like vectors for the store benches: clustered points whose variance
//! decays along the coordinates, so prefixes carry most of the signal, as in a Matryoshka
//! model. Deterministic (SplitMix64), no dependencies.

/// SplitMix64: deterministic, dependency-free randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Roughly normal: the sum of four uniforms, centred.
    pub fn normal(&mut self) -> f32 {
        let u: f64 = (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((u - 2.0) * 1.732) as f32
    }
}

/// `centroid` plus noise whose scale decays along the coordinates.
pub fn vector(rng: &mut Rng, centroid: &[f32], noise: f32) -> Vec<f32> {
    centroid
        .iter()
        .enumerate()
        .map(|(j, c)| c + noise * rng.normal() / (1.0 + j as f32 / 32.0).sqrt())
        .collect()
}

/// `k` cluster centres of `width` coordinates.
pub fn centroids(rng: &mut Rng, k: usize, width: usize) -> Vec<Vec<f32>> {
    (0..k)
        .map(|_| vector(rng, &vec![0.0; width], 1.0))
        .collect()
}

/// The stored sizes of `v`: each of `dims` as a renormalised prefix.
pub fn nested(v: &[f32], dims: &[usize]) -> Vec<(String, Vec<f32>)> {
    dims.iter()
        .map(|&d| {
            (
                mrl_core::store::vector_name(d),
                mrl_encoder::nested::nest(v, d, true).expect("every size fits the vector"),
            )
        })
        .collect()
}
