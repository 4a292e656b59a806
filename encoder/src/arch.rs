//! What differs between the encoder families the model runs ([`Architecture`]): the names of
//! each layer's tensors, and MPNet's relative position bias. Everything else (packing, fused
//! kernels, profiles as prefix views) is shared and lives in `model`.

use crate::config::{Architecture, BertConfig};

/// The prefix an export puts before every encoder tensor name (`bert.`, `mpnet.`, or none),
/// told by where the word embeddings are; `has` says whether a name is in the checkpoint.
pub fn tensor_prefix(has: impl Fn(&str) -> bool) -> &'static str {
    ["bert.", "mpnet."]
        .into_iter()
        .find(|p| has(&format!("{p}embeddings.word_embeddings.weight")))
        .unwrap_or("")
}

/// A layer's tensor names under `encoder.layer.{i}.`, without `.weight`/`.bias`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    /// Query, key and value projections.
    pub qkv: [&'static str; 3],
    /// The attention output projection.
    pub attention_out: &'static str,
    /// The LayerNorm after attention's residual add.
    pub attention_norm: &'static str,
    pub ffn_up: &'static str,
    pub ffn_down: &'static str,
    pub ffn_norm: &'static str,
}

impl LayerNames {
    pub fn of(arch: Architecture) -> Self {
        match arch {
            Architecture::Bert => Self {
                qkv: [
                    "attention.self.query",
                    "attention.self.key",
                    "attention.self.value",
                ],
                attention_out: "attention.output.dense",
                attention_norm: "attention.output.LayerNorm",
                ffn_up: "intermediate.dense",
                ffn_down: "output.dense",
                ffn_norm: "output.LayerNorm",
            },
            Architecture::MPNet => Self {
                qkv: ["attention.attn.q", "attention.attn.k", "attention.attn.v"],
                attention_out: "attention.attn.o",
                attention_norm: "attention.LayerNorm",
                ffn_up: "intermediate.dense",
                ffn_down: "output.dense",
                ffn_norm: "output.LayerNorm",
            },
        }
    }
}

/// The relative position bias table's tensor (`buckets × heads`), shared by every layer.
pub const RELATIVE_BIAS: &str = "encoder.relative_attention_bias.weight";

/// The distance from which MPNet's buckets stop growing (HF `max_distance`).
const MAX_DISTANCE: f64 = 128.0;

/// MPNet's bucket of a key `j` seen from a query `i` (`relative = j - i`), as HF's
/// `MPNetEncoder.relative_position_bucket` (T5's scheme): half the buckets for keys before
/// the query, half for after; within each half, exact distances below a quarter of the
/// buckets, then logarithmic steps up to [`MAX_DISTANCE`], the last bucket beyond.
pub(crate) fn relative_bucket(relative: isize, buckets: usize) -> usize {
    let n = -relative;
    let half = buckets / 2;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.unsigned_abs();
    let exact = half / 2;
    if n < exact {
        return bucket + n;
    }
    let log = (n as f64 / exact as f64).ln() / (MAX_DISTANCE / exact as f64).ln();
    // Truncation toward zero, as HF's `.to(torch.long)`.
    bucket += (exact + (log * (half - exact) as f64) as usize).min(half - 1);
    bucket
}

/// MPNet's relative position bias laid out by offset: for head `h` and offset `j - i`, the
/// value added to the attention score of query `i` and key `j`.
#[derive(Debug, Clone)]
pub(crate) struct RelativeBias {
    /// `heads × (2·max_len − 1)`: row `h`, column `j − i + max_len − 1`.
    by_offset: Vec<f32>,
    max_len: usize,
}

impl RelativeBias {
    /// From the table `weight` (`buckets × heads`, row-major) for sequences of up to
    /// `max_len` tokens.
    pub(crate) fn new(weight: &[f32], buckets: usize, heads: usize, max_len: usize) -> Self {
        let width = 2 * max_len - 1;
        let mut by_offset = vec![0f32; heads * width];
        for c in 0..width {
            let bucket = relative_bucket(c as isize - (max_len as isize - 1), buckets);
            for h in 0..heads {
                by_offset[h * width + c] = weight[bucket * heads + h];
            }
        }
        Self { by_offset, max_len }
    }

    /// Adds head `head`'s bias to the `t × t` scores of one sequence (row `i` is query `i`).
    pub(crate) fn add(&self, scores: &mut [f32], t: usize, head: usize) {
        let width = 2 * self.max_len - 1;
        let row = &self.by_offset[head * width..(head + 1) * width];
        for (i, s) in scores[..t * t].chunks_exact_mut(t).enumerate() {
            // Offsets j − i for j = 0..t start at −i: column max_len − 1 − i.
            let from = self.max_len - 1 - i;
            for (x, b) in s.iter_mut().zip(&row[from..from + t]) {
                *x += b;
            }
        }
    }
}

/// Whether the checkpoint's tensors carry a relative position bias (MPNet) and how many
/// buckets it has. Its columns are heads, shared by every layer, so a head ranking must give
/// every layer the same order.
pub fn bias_buckets(cfg: &BertConfig) -> Option<usize> {
    match cfg.architecture() {
        Some(Architecture::MPNet) => Some(cfg.relative_attention_num_buckets.unwrap_or(32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hf_mpnet() {
        // Values of HF's relative_position_bucket(j - i, 32, 128), worked by hand from its
        // formula: exact below 8 on each side, then log steps to bucket 15 (31 for keys after).
        let cases = [
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-11, 8),
            (-12, 9),
            (-16, 10),
            (-32, 12),
            (-64, 14),
            (-127, 15),
            (-500, 15),
            (1, 17),
            (7, 23),
            (8, 24),
            (16, 26),
            (500, 31),
        ];
        for (rel, want) in cases {
            assert_eq!(relative_bucket(rel, 32), want, "relative {rel}");
        }
    }

    #[test]
    fn the_bias_is_read_by_offset() {
        let (buckets, heads) = (32, 2);
        let weight: Vec<f32> = (0..buckets * heads).map(|i| i as f32).collect();
        let bias = RelativeBias::new(&weight, buckets, heads, 10);
        let t = 4;
        let mut scores = vec![0f32; t * t];
        bias.add(&mut scores, t, 1);
        for i in 0..t {
            for j in 0..t {
                let b = relative_bucket(j as isize - i as isize, buckets);
                assert_eq!(scores[i * t + j], weight[b * heads + 1]);
            }
        }
    }
}
