//! The dense layer every product of the encoder runs through (`y = x·Wᵀ + b`, f32 or int8),
//! cut to a prefix of its outputs and inputs at call time, so one copy of the weights serves
//! every profile.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::int8::{QuantizedRows, QuantizedWeights};
use crate::kernels::{self, MatRef};

thread_local! {
    /// Quantized activations of the dense layer running on this thread, reused between
    /// layers and batches.
    static QUANTIZED: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::default());
}

/// A dense layer, `y = x·Wᵀ + b`, whose output rows and input columns can be cut to a prefix
/// at call time.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `outputs × inputs`, row-major; empty once quantized.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    /// The weight as int8, when the model runs at that precision.
    int8: Option<QuantizedWeights>,
}

impl Linear {
    /// A layer of `bias.len()` outputs from `weight` (`outputs × inputs`, row-major).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, inputs: usize) -> Self {
        debug_assert_eq!(weight.len(), bias.len() * inputs);
        Self {
            weight,
            bias,
            inputs,
            int8: None,
        }
    }

    /// Output rows.
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// The f32 weight, `outputs × inputs` row-major (empty once quantized).
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// The output rows up to the last one that computes something, and at least `keep`. A
    /// head fitted wider than its input (`hidden` → 512) holds no more than `hidden`
    /// independent values; earlier checkpoints padded the rest with zero rows, which are not
    /// dims.
    pub(crate) fn computed_rows(&self, keep: usize) -> usize {
        let computes = |r: usize| {
            self.bias[r] != 0.0
                || self.weight[r * self.inputs..(r + 1) * self.inputs]
                    .iter()
                    .any(|&w| w != 0.0)
        };
        let mut rows = self.bias.len();
        while rows > keep && !computes(rows - 1) {
            rows -= 1;
        }
        rows
    }

    /// Keeps the first `rows` output rows (before quantizing).
    pub(crate) fn truncate_rows(&mut self, rows: usize) {
        self.weight.truncate(rows * self.inputs);
        self.bias.truncate(rows);
    }

    /// Quantizes the weight to int8 and drops its f32 copy.
    pub(crate) fn quantize(&mut self) {
        if self.int8.is_none() {
            let outputs = self.bias.len();
            self.int8 = Some(QuantizedWeights::quantize(
                &self.weight,
                outputs,
                self.inputs,
            ));
            self.weight = Vec::new();
        }
    }

    /// Bytes of weights held (f32 or int8, and the bias).
    pub(crate) fn bytes(&self) -> usize {
        self.weight.len() * 4 + self.bias.len() * 4 + self.int8.as_ref().map_or(0, |q| q.bytes())
    }

    /// Interleaves layers that read the same input, `group` output rows at a time from each
    /// in turn, so they run as one larger matmul and any prefix of groups is contiguous.
    pub(crate) fn interleave(parts: &[Linear], group: usize) -> Self {
        let mut weight = Vec::with_capacity(parts.iter().map(|p| p.weight.len()).sum());
        let mut bias = Vec::with_capacity(parts.iter().map(|p| p.bias.len()).sum());
        let inputs = parts[0].inputs;
        for g in 0..parts[0].bias.len() / group {
            for p in parts {
                weight.extend_from_slice(&p.weight[g * group * inputs..(g + 1) * group * inputs]);
                bias.extend_from_slice(&p.bias[g * group..(g + 1) * group]);
            }
        }
        Self {
            weight,
            bias,
            inputs,
            int8: None,
        }
    }

    /// Writes `x · W[out, ..x.cols]ᵀ + b[out]` into `dst` (row stride `dst_rs`): the output
    /// rows `out` of the weight, its first `x.cols` inputs.
    pub(crate) fn forward_into(
        &self,
        dst: &mut [f32],
        dst_rs: usize,
        x: MatRef<'_>,
        out: Range<usize>,
    ) {
        let (rows, cols) = x.shape();
        let n = out.len();
        // On the pool: done serially, this copy was the one stretch where a core sat idle.
        let bias = &self.bias[out.clone()];
        dst.par_chunks_mut(dst_rs)
            .take(rows)
            .with_min_len(64)
            .for_each(|row| row[..n].copy_from_slice(bias));
        if let Some(q) = &self.int8 {
            // Prefix views only: the profile cuts are the first outputs and inputs.
            assert_eq!(
                out.start, 0,
                "int8 layers cut prefixes of outputs: this is a bug"
            );
            // Taken out, not borrowed, while the rayon pool works: a worker waiting on it may
            // run another forward pass's layer on this same thread.
            let mut xq = QUANTIZED.take();
            xq.fill(x);
            crate::int8::matmul_accumulate(dst, dst_rs, &xq, q, out.end);
            QUANTIZED.set(xq);
            return;
        }
        let w = MatRef::rows(
            &self.weight[out.start * self.inputs..],
            n,
            cols,
            self.inputs,
        )
        .t();
        kernels::matmul(dst, dst_rs, x, w, 1.0, true, rayon::current_num_threads());
    }
}
