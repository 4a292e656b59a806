//! The frozen parent's embeddings as the run's teacher, computed once per distinct text.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::{Result, TrainerError};

/// The frozen parent's full-profile embeddings, computed once per distinct text (its token
/// ids) and kept for the run: the parent never changes, so a text seen again (a document
/// judged for several queries, a query with several judged documents, the next epoch) costs
/// a lookup instead of a forward pass.
#[derive(Default)]
pub(super) struct TeacherCache {
    rows: HashMap<Vec<u32>, Vec<f32>>,
}

impl TeacherCache {
    /// `[seqs.len(), width]`: the cached row of each sequence, after `forward` has embedded
    /// the missing ones (each distinct sequence once, in one call).
    ///
    /// Errors: what `forward` returns, or rows of unequal widths.
    pub(super) fn embed(
        &mut self,
        seqs: &[Vec<u32>],
        device: &Device,
        forward: impl FnOnce(&[Vec<u32>]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<Tensor> {
        let mut missing: Vec<Vec<u32>> = Vec::new();
        for s in seqs {
            if !self.rows.contains_key(s) && !missing.contains(s) {
                missing.push(s.clone());
            }
        }
        if !missing.is_empty() {
            let vectors = forward(&missing)?;
            self.rows.extend(missing.into_iter().zip(vectors));
        }
        let mut flat = Vec::new();
        let mut width = None;
        for s in seqs {
            let row = self
                .rows
                .get(s)
                .ok_or_else(|| TrainerError::Invalid("the teacher returned too few rows".into()))?;
            if *width.get_or_insert(row.len()) != row.len() {
                return Err(TrainerError::Invalid(
                    "teacher rows of unequal widths".into(),
                ));
            }
            flat.extend_from_slice(row);
        }
        Ok(Tensor::from_vec(
            flat,
            (seqs.len(), width.unwrap_or(0)),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each distinct text reaches the teacher once over the run; rows come back in the
    /// batch's order, repeats included.
    #[test]
    fn the_teacher_embeds_each_text_once() {
        let mut cache = TeacherCache::default();
        let mut seen: Vec<Vec<u32>> = Vec::new();
        let mut run = |seqs: &[Vec<u32>]| {
            cache
                .embed(seqs, &Device::Cpu, |missing| {
                    seen.extend(missing.iter().cloned());
                    Ok(missing
                        .iter()
                        .map(|s| vec![s[0] as f32, s.len() as f32])
                        .collect())
                })
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        let first = run(&[vec![1, 2], vec![3], vec![1, 2]]);
        assert_eq!(first, [[1.0, 2.0], [3.0, 1.0], [1.0, 2.0]]);
        let second = run(&[vec![3], vec![4, 5, 6]]);
        assert_eq!(second, [[3.0, 1.0], [4.0, 3.0]]);
        assert_eq!(seen, [vec![1, 2], vec![3], vec![4, 5, 6]]);
    }
}
