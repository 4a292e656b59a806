//! The fused ops' tests: values and gradients against the primitive candle chains they
//! replace and against finite differences.

use super::*;
use candle_core::{Device, Module, Var};

/// Seeded uniform values in [-scale, scale).
fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut rng = crate::router::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) as f32) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `‖a − b‖∞ / ‖b‖∞`.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Checks `op` against `reference` on `inputs`: values and the gradients of
/// `Σ r ⊙ op(inputs)` (a fixed random `r`) for every input within 1e-4 relative, and the
/// fused gradient against central finite differences (f64 sums of f32 outputs) at a spread
/// of entries of every input.
fn check(
    name: &str,
    inputs: Vec<Tensor>,
    op: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (got, want) = (op(&ts), reference(&ts));
    assert_eq!(got.dims(), want.dims(), "{name}: shapes");
    let err = relative(&flat(&got), &flat(&want));
    assert!(err < 1e-4, "{name}: values differ by {err} relative");
    let r = random(got.dims(), 99, 1.0);
    let loss = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap();
    let (gf, gr) = (
        loss(&got).backward().unwrap(),
        loss(&want).backward().unwrap(),
    );
    let weighted = |ts: &[Tensor]| -> f64 {
        flat(&op(ts))
            .iter()
            .zip(flat(&r))
            .map(|(y, r)| *y as f64 * r as f64)
            .sum()
    };
    for (i, var) in vars.iter().enumerate() {
        let fused = flat(
            gf.get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient {i}")),
        );
        let primitive = flat(gr.get(var).expect("the reference has a gradient"));
        let err = relative(&fused, &primitive);
        assert!(
            err < 1e-4,
            "{name}: input {i}'s gradient differs by {err} relative"
        );
        let scale = fused.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        assert!(scale > 0.0, "{name}: input {i} has a zero gradient");
        let values = flat(&inputs[i]);
        let h = 1e-2f64;
        for at in (0..values.len()).step_by((values.len() / 7).max(1)) {
            let shifted = |delta: f64| {
                let mut v = values.clone();
                v[at] += delta as f32;
                let mut ts = inputs.clone();
                ts[i] = Tensor::from_vec(v, inputs[i].shape(), &Device::Cpu).unwrap();
                weighted(&ts)
            };
            let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
            assert!(
                (fd - fused[at] as f64).abs() < 2e-3 * scale.max(1.0),
                "{name}: input {i}[{at}]: finite difference {fd}, gradient {}",
                fused[at]
            );
        }
    }
}

#[test]
fn linear_matches_candle_nn_and_finite_differences() {
    check(
        "linear",
        vec![
            random(&[3, 5, 12], 1, 1.0),
            random(&[7, 12], 2, 0.5),
            random(&[7], 3, 0.5),
        ],
        |t| linear(&t[0], &t[1], &t[2]).unwrap(),
        |t| candle_linear(&t[0], &t[1], &t[2]),
    );
}

/// The frozen-weight dense layer computes what `linear` does and gives `x` and the bias
/// the same gradients, the weight none.
#[test]
fn a_frozen_linear_gives_every_gradient_but_the_weights() {
    let x = Var::from_tensor(&random(&[3, 5, 12], 1, 1.0)).unwrap();
    let w = Var::from_tensor(&random(&[7, 12], 2, 0.5)).unwrap();
    let b = Var::from_tensor(&random(&[7], 3, 0.5)).unwrap();
    let r = random(&[3, 5, 7], 4, 1.0);
    let run = |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
        let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (flat(&y), grads)
    };
    let ((y, g), (y_frozen, g_frozen)) = (run(linear), run(linear_frozen));
    assert_eq!(y, y_frozen);
    for v in [&x, &b] {
        let (a, c) = (flat(g.get(v).unwrap()), flat(g_frozen.get(v).unwrap()));
        assert_eq!(a, c);
        assert!(a.iter().any(|v| *v != 0.0));
    }
    assert!(g.get(&w).is_some());
    assert!(g_frozen.get(&w).is_none());
}

/// A gated step's hard mask: the first `keep` of `len` entries 1, a zero suffix after.
fn prefix_mask(keep: usize, len: usize) -> Tensor {
    crate::student::prefix_mask(keep, len, candle_core::DType::F32, &Device::Cpu).unwrap()
}

/// The reference dense layer, `candle_nn::Linear`.
fn candle_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    candle_nn::Linear::new(w.clone(), Some(b.clone()))
        .forward(x)
        .unwrap()
}

/// A masked FFN (`linear → gelu → ⊙ mask → linear`, 5 of 16 neurons live) skips the dead
/// neurons' products and still gives every input, the mask's dead entries included, the
/// primitive chain's gradient.
#[test]
fn a_masked_ffn_skips_its_dead_neurons_exactly() {
    check(
        "masked ffn",
        vec![
            random(&[2, 7, 12], 11, 1.0),
            random(&[16, 12], 12, 0.5),
            random(&[16], 13, 0.5),
            prefix_mask(5, 16),
            random(&[12, 16], 14, 0.5),
            random(&[12], 15, 0.5),
        ],
        |t| {
            let f = gelu(&linear(&t[0], &t[1], &t[2]).unwrap()).unwrap();
            linear(&f.broadcast_mul(&t[3]).unwrap(), &t[4], &t[5]).unwrap()
        },
        |t| {
            let f = candle_linear(&t[0], &t[1], &t[2]).gelu_erf().unwrap();
            candle_linear(&f.broadcast_mul(&t[3]).unwrap(), &t[4], &t[5])
        },
    );
}

#[test]
fn layer_norm_matches_the_primitive_chain_and_finite_differences() {
    check(
        "layer_norm",
        vec![
            random(&[70, 24], 4, 2.0),
            (random(&[24], 5, 0.5) + 1.0).unwrap(),
            random(&[24], 6, 0.5),
        ],
        |t| layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
        |t| crate::student::primitive_layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
    );
}

#[test]
fn gelu_matches_candle_and_finite_differences() {
    check(
        "gelu",
        vec![random(&[40_000], 7, 4.0)],
        |t| gelu(&t[0]).unwrap(),
        |t| t[0].gelu_erf().unwrap(),
    );
}

/// The padded path's attention, one sequence at a time (no padding to mask).
fn primitive_attention(q: &Tensor, k: &Tensor, v: &Tensor, spans: &Spans, heads: usize) -> Tensor {
    let (_, h) = q.dims2().unwrap();
    let d = h / heads;
    let parts: Vec<Tensor> = spans
        .iter()
        .map(|(start, t)| {
            let split = |x: &Tensor| {
                x.narrow(0, start, t)
                    .unwrap()
                    .reshape((t, heads, d))
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (q, k, v) = (split(q), split(k), split(v));
            let scores = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            crate::loss::softmax(&scores)
                .unwrap()
                .matmul(&v)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((t, h))
                .unwrap()
        })
        .collect();
    Tensor::cat(&parts, 0).unwrap()
}

#[test]
fn packed_attention_matches_per_sequence_attention_and_finite_differences() {
    let spans = Arc::new(Spans::from_lengths([5, 1, 9, 3]));
    let n = spans.tokens();
    let heads = 3;
    let s2 = spans.clone();
    check(
        "attention",
        vec![
            random(&[n, 12], 8, 1.5),
            random(&[n, 12], 9, 1.5),
            random(&[n, 12], 10, 1.0),
        ],
        move |t| attention(&t[0], &t[1], &t[2], &spans, heads).unwrap(),
        move |t| primitive_attention(&t[0], &t[1], &t[2], &s2, heads),
    );
}

/// Attention whose last head is masked (its columns times 0, as a gated step's head mask
/// does) skips that head's backward pass and still matches the reference, the mask's
/// gradient included.
#[test]
fn a_masked_head_skips_its_backward_pass_exactly() {
    let spans = Arc::new(Spans::from_lengths([4, 7, 2]));
    let n = spans.tokens();
    let s2 = spans.clone();
    check(
        "masked attention",
        vec![
            random(&[n, 12], 16, 1.5),
            random(&[n, 12], 17, 1.5),
            random(&[n, 12], 18, 1.0),
            prefix_mask(8, 12),
        ],
        move |t| {
            attention(&t[0], &t[1], &t[2], &spans, 3)
                .unwrap()
                .broadcast_mul(&t[3])
                .unwrap()
        },
        move |t| {
            primitive_attention(&t[0], &t[1], &t[2], &s2, 3)
                .broadcast_mul(&t[3])
                .unwrap()
        },
    );
}

#[test]
fn live_columns_end_at_the_last_non_zero_of_any_row() {
    let m = [
        0.0, 1.0, 0.0, 0.0, /**/ 0.0, 0.0, 0.0, 0.0, /**/ 2.0, 0.0, -3.0, 0.0,
    ];
    assert_eq!(live_columns(&m, 4), 3);
    assert_eq!(live_columns(&[0.0; 8], 4), 0);
    assert_eq!(live_columns(&[0.0, f32::NAN], 2), 2);
    assert_eq!(live_columns(&[], 0), 0);
}

#[test]
fn shapes_that_do_not_line_up_are_errors() {
    let spans = Arc::new(Spans::from_lengths([2, 2]));
    let x = random(&[4, 6], 1, 1.0);
    assert!(
        attention(&x, &x, &x, &spans, 4).is_err(),
        "6 columns, 4 heads"
    );
    assert!(attention(&x.narrow(0, 0, 3).unwrap(), &x, &x, &spans, 2).is_err());
    assert!(linear(&x, &random(&[3, 5], 2, 1.0), &random(&[3], 3, 1.0)).is_err());
    assert!(layer_norm(&x, &random(&[5], 2, 1.0), &random(&[5], 3, 1.0), 1e-12).is_err());
    assert!(gelu(&x.to_dtype(candle_core::DType::F64).unwrap()).is_err());
}
