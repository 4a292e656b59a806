//! Where the heads start: the shared head's rotation (fitted on the training corpora or
//! pairs) with its extra rows, and each sub-encoder's closed-form map onto the full profile.

use mrl_encoder::Profile;

use super::linalg::fit_linear_map;
use super::recipe::{FamilyConfig, RotationFit};
use super::sets::Split;
use crate::rotation::Rotation;
use crate::router::Rng;
use crate::Result;

/// The shared head's start (`width × hidden`, row-major): the rotation, then the rows past
/// the parent's width drawn uniformly within `±extra_init`.
pub(super) fn shared_start(
    cfg: &FamilyConfig,
    splits: &[Split],
    pairs: &[Vec<(usize, usize)>],
    hidden: usize,
    width: usize,
) -> Result<Vec<f32>> {
    let mut w0 = start_rotation(cfg, splits, pairs)?.matrix_f32();
    let mut init_rng = Rng::new(cfg.seed ^ 0xE7);
    w0.extend(
        (hidden * hidden..width * hidden)
            .map(|_| ((init_rng.uniform() - 0.5) * 2.0 * cfg.head.extra_init) as f32),
    );
    Ok(w0)
}

/// The rotation onto the principal axes of the training corpora or pairs (full profile).
pub(super) fn start_rotation(
    cfg: &FamilyConfig,
    splits: &[Split],
    pairs: &[Vec<(usize, usize)>],
) -> Result<Rotation> {
    match cfg.head.rotation {
        RotationFit::Documents => {
            let docs: Vec<Vec<f32>> = splits
                .iter()
                .filter(|s| s.weight > 0.0)
                .flat_map(|s| s.vectors["full"].0.iter().cloned())
                .collect();
            Ok(Rotation::fit(&docs)?)
        }
        RotationFit::Qrels => {
            // Each source weighs by its share of batches, not by its number of qrels
            // (NFCorpus has 100× SciFact's): pairs are drawn in proportion to the weight.
            let total: f64 = splits.iter().map(|s| s.weight).sum();
            let mut rng = Rng::new(cfg.seed ^ 0x9A);
            let draws = 20_000usize;
            let mut fit_pairs: Vec<(&[f32], &[f32])> = Vec::with_capacity(draws);
            for (s, p) in splits.iter().zip(pairs) {
                if s.weight <= 0.0 || p.is_empty() {
                    continue;
                }
                let (docs, queries) = &s.vectors["full"];
                let n = (draws as f64 * s.weight / total).round() as usize;
                for k in 0..n {
                    // Every pair once while they last, then seeded draws.
                    let (qi, di) = if k < p.len() && p.len() <= n {
                        p[k]
                    } else {
                        p[(rng.next_u64() % p.len() as u64) as usize]
                    };
                    fit_pairs.push((&queries[qi], &docs[di]));
                }
            }
            Ok(Rotation::fit_pairs(&fit_pairs)?)
        }
    }
}

/// Each sub-encoder's closed-form map onto the full profile, on every cached text.
pub(super) fn sub_maps(
    cfg: &FamilyConfig,
    profiles: &[(String, Profile)],
    splits: &[Split],
) -> Result<Vec<(String, Vec<f32>)>> {
    let mut maps: Vec<(String, Vec<f32>)> = Vec::new();
    for (pname, _) in profiles.iter().skip(1) {
        let (mut sub, mut full) = (Vec::new(), Vec::new());
        for s in splits {
            let (sd, sq) = &s.vectors[pname];
            let (fd, fq) = &s.vectors["full"];
            sub.extend(sd.iter().chain(sq).cloned());
            full.extend(fd.iter().chain(fq).cloned());
        }
        maps.push((pname.clone(), fit_linear_map(&sub, &full, cfg.ridge)?));
    }
    Ok(maps)
}
