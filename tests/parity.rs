//! The encoder against sentence-transformers' own outputs for the same model, and its
//! behaviour on batching, nested sizes, profiles and hostile input.

mod common;

use common::{cosine, embed, embedder, references};
use std::sync::Arc;

use mrl::{EmbedSpec, Embedder, Embeddings, Fields, Policy, Precision};
use mrl_core::Error;

#[test]
fn token_ids_match_the_reference_exactly() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let refs = references();
    assert_eq!(refs.len(), 32);
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let ids = embedder().tokenizer().encode(&texts).unwrap();
    for (r, got) in refs.iter().zip(&ids) {
        assert_eq!(got, &r.input_ids, "token ids of {:?}", r.text);
    }
    assert!(
        refs.iter().any(|r| r.input_ids.len() == 256),
        "the fixtures hold a text truncated at 256 tokens"
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn embeddings_match_the_reference() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let e = embedder();
    let normed = embed(e, &texts, &EmbedSpec::default()).unwrap();
    let raw = embed(e, &texts, &EmbedSpec::default().normalize(false)).unwrap();
    for ((r, n), u) in refs.iter().zip(&normed).zip(&raw) {
        assert_eq!(n.len(), 384);
        let c = cosine(n, &r.embedding);
        assert!(c >= 0.9999, "cosine {c} for {:?}", r.text);
        let worst = max_abs_diff(n, &r.embedding);
        assert!(worst <= 1e-4, "max abs diff {worst} for {:?}", r.text);
        // The model's own pipeline (modules.json) ends in a Normalize module, so what
        // sentence-transformers wrote as `embedding_unnormalized` is unit-length too: our raw
        // mean-pooled vector must match it once normalised, and be the same direction.
        let ref_norm: f32 = r.unnormalized.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((ref_norm - 1.0).abs() < 1e-4, "fixture norm {ref_norm}");
        let mut u_normed = u.clone();
        mrl_encoder::nested::l2_normalize(&mut u_normed);
        let worst = max_abs_diff(&u_normed, &r.unnormalized);
        assert!(worst <= 1e-4, "raw: max abs diff {worst} for {:?}", r.text);
        let raw_norm: f32 = u.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            raw_norm > 1.5,
            "the raw vector is not normalised (norm {raw_norm})"
        );
        let norm: f32 = n.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn batch_equals_single_and_keeps_input_order() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let e = embedder();
    let single: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| embed(e, &[*t], &EmbedSpec::default()).unwrap().remove(0))
        .collect();
    for batch in [1, 7, 32] {
        let got = Embeddings::inline(e.clone(), Policy::LIBRARY)
            .batch_size(batch)
            .embed_blocking(&texts, &EmbedSpec::default(), &Fields::NATIVE)
            .unwrap()
            .vectors;
        assert_eq!(got.len(), texts.len());
        for (i, (g, s)) in got.iter().zip(&single).enumerate() {
            let c = cosine(g, s);
            assert!(c >= 0.99999, "batch {batch}, text {i}: cosine {c}");
        }
    }
    // Reversed input must give reversed output: order comes from the input, not the sort.
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let got = embed(e, &reversed, &EmbedSpec::default()).unwrap();
    for (g, s) in got.iter().zip(single.iter().rev()) {
        assert!(cosine(g, s) >= 0.99999);
    }
}

#[test]
fn nested_dims_are_renormalised_prefixes() {
    let e = embedder();
    let text = ["Matryoshka embeddings nest smaller vectors inside larger ones."];
    let full = embed(e, &text, &EmbedSpec::default().normalize(false)).unwrap();
    for dim in [1, 64, 128, 256, 384] {
        let v = embed(e, &text, &EmbedSpec::default().dim(dim)).unwrap();
        assert_eq!(v[0].len(), dim);
        let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "dim {dim}: norm {norm}");
        assert!(cosine(&v[0], &full[0][..dim]) > 0.999999, "dim {dim}");
    }
}

#[test]
fn bad_dims_and_profiles_are_typed_errors_naming_the_value() {
    let e = embedder();
    for dim in [0, 385, 100_000] {
        match embed(e, &["x"], &EmbedSpec::default().dim(dim)) {
            Err(Error::InvalidField { field, message }) => {
                assert_eq!(field, "dim");
                assert!(message.contains(&dim.to_string()) && message.contains("384"));
            }
            other => panic!("dim {dim}: {other:?}"),
        }
    }
    let err = embed(e, &["x"], &EmbedSpec::default().profile("turbo")).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidField { field, .. } if field == "profile"),
        "{err:?}"
    );
    assert!(err.to_string().contains("turbo") && err.to_string().contains("1..=6"));
    let err = embed(e, &["x"], &EmbedSpec::default().profile("layers=9")).unwrap_err();
    assert!(err.to_string().contains("1..=6"), "{err}");
    // A profile narrower than the dim asked for is caught too.
    let err = embed(
        e,
        &["x"],
        &EmbedSpec::default().profile("hidden=128").dim(256),
    )
    .unwrap_err();
    assert!(err.to_string().contains("1..=128"), "{err}");
}

/// The int8 encoder (dense layers quantized, the rest f32) keeps each embedding within
/// cosine 0.99 of the f32 one on the fixtures, for sub-encoders and narrow widths too, and
/// holds its dense weights in about a quarter of the bytes.
#[test]
fn int8_embeddings_stay_within_the_cosine_bound_of_f32() {
    let Some(_) = common::needs(&["fixtures"]) else {
        return;
    };
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let f32 = embedder();
    let int8 = Arc::new(Embedder::load_with(common::model_dir(), Precision::Int8).unwrap());
    assert_eq!(int8.precision(), Precision::Int8);
    for profile in ["full", "layers=3", "layers=2,heads=6,ffn=512,hidden=192"] {
        let spec = EmbedSpec::default().profile(profile);
        let (a, b) = (
            embed(f32, &texts, &spec).unwrap(),
            embed(&int8, &texts, &spec).unwrap(),
        );
        let cos: Vec<f64> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
        let mean = cos.iter().sum::<f64>() / cos.len() as f64;
        let min = cos.iter().copied().fold(1.0, f64::min);
        assert!(
            mean >= 0.99 && min >= 0.97,
            "{profile}: mean {mean}, min {min}"
        );
        assert!(mean < 0.999999, "{profile}: int8 did not run");
    }
    let (dense32, dense8) = (f32.model().dense_bytes(), int8.model().dense_bytes());
    assert!(
        dense8 * 10 < dense32 * 3,
        "int8 dense weights {dense8} B vs f32 {dense32} B"
    );
}

#[test]
fn hostile_inputs_do_not_panic() {
    let e = embedder();
    let none: [&str; 0] = [];
    assert!(embed(e, &none, &EmbedSpec::default()).unwrap().is_empty());
    let huge = "lorem ipsum dolor sit amet ".repeat(4_000);
    assert!(huge.len() > 100_000);
    let weird = "\u{0}\u{FFFD}\u{202E}🚀".repeat(100);
    let out = embed(
        e,
        &["", huge.as_str(), weird.as_str()],
        &EmbedSpec::default(),
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    for v in &out {
        assert!(v.iter().all(|x| x.is_finite()));
    }
    let ids = e.tokenizer().encode(&[huge.as_str()]).unwrap();
    assert_eq!(
        ids[0].len(),
        256,
        "long input is truncated at max_seq_length"
    );
}

#[test]
fn a_first_layers_profile_runs_and_differs_from_full() {
    let e = embedder();
    let text = ["Elastic encoders keep several sub-networks in one checkpoint."];
    let full = embed(e, &text, &EmbedSpec::default()).unwrap();
    let half = embed(e, &text, &EmbedSpec::default().profile("layers=3")).unwrap();
    let narrow = embed(
        e,
        &text,
        &EmbedSpec::default().profile("layers=2,heads=6,ffn=512,hidden=192"),
    )
    .unwrap();
    assert_eq!(half[0].len(), 384);
    assert_eq!(narrow[0].len(), 192);
    let c = cosine(&full[0], &half[0]);
    assert!(
        c < 0.999,
        "a 3-layer encoder is not the 6-layer one (cos {c})"
    );
    assert!(narrow[0].iter().all(|x| x.is_finite()));
    // "full" by name is the same as no profile.
    let named = embed(e, &text, &EmbedSpec::default().profile("full")).unwrap();
    assert!(cosine(&named[0], &full[0]) > 0.999999);
}
