//! Tokenization and batching: text → token ids (HF tokenizers, truncated at the model's
//! `max_seq_length`) → length-sorted batches.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{EncoderError, Result};

/// A `tokenizer.json` with sentence-transformers' truncation and no padding of its own.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl TextTokenizer {
    /// The padding and truncation stored in `tokenizer.json` are replaced: this model ships
    /// fixed padding to 128, whereas sentence-transformers truncates at `max_len` and pads per
    /// batch; the encoder packs batches without any padding at all.
    pub fn load(path: &Path, max_len: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| EncoderError::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Token ids (with special tokens) of each text, in input order.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        Ok(self
            .encode_checked(texts)?
            .into_iter()
            .map(|(ids, _)| ids)
            .collect())
    }

    /// Token ids of each text and whether truncation at `max_len` cut it, for callers that
    /// reject over-long inputs instead of silently truncating them.
    pub fn encode_checked<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<(Vec<u32>, bool)>> {
        let inputs: Vec<&str> = texts.iter().map(|t| t.as_ref()).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| (e.get_ids().to_vec(), !e.get_overflowing().is_empty()))
            .collect())
    }
}

/// Groups texts into batches of at most `max_batch`, longest first, so sequences of a batch have
/// similar lengths and attention work spreads evenly. Returns the input indices of each batch.
pub fn plan_batches(lengths: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable: equal lengths keep input order, which keeps runs reproducible.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order.chunks(max_batch.max(1)).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sorted_longest_first_and_cover_every_input() {
        let plan = plan_batches(&[3, 9, 1, 9, 5], 2);
        assert_eq!(plan, vec![vec![1, 3], vec![4, 0], vec![2]]);
        assert!(plan_batches(&[], 4).is_empty());
    }
}
