//! The elastic checkpoint end to end on the real model: calibration writes a permuted
//! checkpoint that computes the same function, whose manifest profiles load by name, run as
//! slices and cost what they claim.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use common::{cosine, embed, embedder, model_dir, references, shared};
use mrl::{EmbedSpec, Embedder};
use mrl_trainer::{calibrate, CalibrateOptions};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrl-elastic-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small but real calibration: NFCorpus queries and passages, cut short to keep CI fast.
fn options() -> CalibrateOptions {
    let data = shared().join("data").join("nfcorpus");
    CalibrateOptions::new(vec![data.join("corpus.jsonl"), data.join("queries.jsonl")])
        .limit(64)
        .max_tokens(48)
        .search_texts(32)
}

fn elastic() -> &'static Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    E.get_or_init(|| {
        let out = scratch("checkpoint").join("ranked");
        calibrate(&model_dir(), &out, &options(), &|_, _| {
            indicatif::ProgressBar::hidden()
        })
        .expect("calibrating the base model");
        Arc::new(Embedder::load(&out).expect("loading the calibrated checkpoint"))
    })
}

#[test]
fn the_permuted_full_model_computes_the_same_embeddings() {
    let Some(_) = common::needs(&["fixtures", "data/nfcorpus"]) else {
        return;
    };
    let refs = references();
    let texts: Vec<&str> = refs.iter().map(|r| r.text.as_str()).collect();
    let e = elastic();
    let order = &e.manifest().unwrap().ranking.as_ref().unwrap().hidden_order;
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..384).collect::<Vec<_>>(), "a permutation");
    assert_ne!(order, &sorted, "calibration reordered the channels");
    let ours = embed(e, &texts, &EmbedSpec::default()).unwrap();
    let base = embed(embedder(), &texts, &EmbedSpec::default()).unwrap();
    for ((r, v), b) in refs.iter().zip(&ours).zip(&base) {
        // Output channel i of the permuted model is original channel order[i].
        let mut restored = vec![0f32; v.len()];
        for (i, &o) in order.iter().enumerate() {
            restored[o] = v[i];
        }
        let c = cosine(&restored, &r.embedding);
        assert!(c >= 0.99999, "cosine {c} to the reference for {:?}", r.text);
        assert!(cosine(&restored, b) >= 0.99999);
        // Similarities between texts need no un-permuting at all.
        assert!((cosine(v, &ours[0]) - cosine(b, &base[0])).abs() < 1e-5);
    }
}

#[test]
fn the_manifest_lists_budgeted_profiles_that_run_as_slices() {
    let Some(_) = common::needs(&["data/nfcorpus"]) else {
        return;
    };
    let e = elastic();
    let m = e.manifest().unwrap();
    assert_eq!(m.nested_dims, vec![64, 128, 256, 384]);
    let names = e.profile_names();
    assert_eq!(names, ["full", "b75", "b50", "b25"]);
    assert_eq!(m.budgets.len(), 4);
    let cfg = e.config();
    for choice in &m.budgets {
        let p = m.profile(&choice.profile).unwrap();
        let cost = p
            .profile
            .relative_cost(cfg, mrl_encoder::manifest::COST_SEQ_LEN);
        assert!((cost - p.relative_flops).abs() < 1e-12);
        assert!(cost <= choice.budget + 1e-9, "{} costs {cost}", p.name);
        assert!(cost >= 0.5 * choice.budget, "{} costs {cost}", p.name);
        assert!(p.params <= m.profiles[0].params);
        let v = embed(
            e,
            &["a query about vitamin D"],
            &EmbedSpec::default().profile(&p.name),
        )
        .unwrap();
        assert_eq!(v[0].len(), p.profile.hidden);
        let short = embed(
            e,
            &["a query"],
            &EmbedSpec::default().profile(&p.name).dim(64),
        )
        .unwrap();
        assert_eq!(short[0].len(), 64);
    }
    // Smaller budgets keep less of the full model's similarity structure.
    let fid: Vec<f64> = m.profiles[1..]
        .iter()
        .map(|p| p.fidelity.unwrap())
        .collect();
    assert!(fid.windows(2).all(|w| w[0] >= w[1]), "{fid:?}");
    assert!(fid.iter().all(|&f| f > 0.0 && f < 1.0), "{fid:?}");
    let ranking = m.ranking.as_ref().unwrap();
    assert_eq!(ranking.layer_drop_order.len(), 6);
    assert_eq!(ranking.layer_drop_scores.len(), 5);
}

#[test]
fn unknown_profile_names_list_the_known_ones() {
    let Some(_) = common::needs(&["data/nfcorpus"]) else {
        return;
    };
    let err = embed(elastic(), &["x"], &EmbedSpec::default().profile("b10")).unwrap_err();
    assert!(
        matches!(&err, mrl_core::Error::InvalidField { field, .. } if field == "profile"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("b10") && msg.contains("b50") && msg.contains("full"),
        "{msg}"
    );
}

#[test]
fn calibration_refuses_to_overwrite_or_to_rank_twice() {
    let Some(_) = common::needs(&["data/nfcorpus"]) else {
        return;
    };
    let out = scratch("refuse");
    let none = |_: &str, _: u64| indicatif::ProgressBar::hidden();
    let e = calibrate(&model_dir(), &out, &options(), &none).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    let e = calibrate(elastic().dir(), &out.join("again"), &options(), &none).unwrap_err();
    assert!(e.to_string().contains("mrl.json"), "{e}");
}

/// The head's closed-form start on the real model: a rotation fitted on the parent's
/// embeddings of NFCorpus passages keeps every full-width cosine, and on passages it was not
/// fitted on its 64-dim prefix holds more of each vector than the plain 64-dim prefix.
#[test]
fn a_rotation_fitted_on_parent_embeddings_concentrates_the_prefix() {
    let Some(_) = common::needs(&["data/nfcorpus"]) else {
        return;
    };
    let corpus = shared().join("data").join("nfcorpus").join("corpus.jsonl");
    let texts = mrl_trainer::data::sample_texts(&[corpus], 250).unwrap();
    let (fit, held) = texts.split_at(200);
    let fit: Vec<&str> = fit.iter().map(String::as_str).collect();
    let r = mrl_trainer::train::fit_rotation(embedder(), &fit, 200, 128).unwrap();
    let vectors = embed(embedder(), held, &EmbedSpec::default()).unwrap();
    let energy = |v: &[f32]| {
        v[..64].iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()
            / v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()
    };
    let (mut plain, mut rotated) = (0.0, 0.0);
    for v in &vectors {
        plain += energy(v);
        rotated += energy(&r.apply(v));
    }
    let n = vectors.len() as f64;
    let (plain, rotated) = (plain / n, rotated / n);
    eprintln!("first 64 dims hold {rotated:.3} of a held-out vector rotated, {plain:.3} plain");
    assert!(
        rotated > plain + 0.1,
        "share of each held-out vector in its first 64 dims: rotated {rotated:.3}, plain {plain:.3}"
    );
    for pair in vectors.windows(2).take(40) {
        let before = cosine(&pair[0], &pair[1]);
        let after = cosine(&r.apply(&pair[0]), &r.apply(&pair[1]));
        assert!((before - after).abs() < 1e-5, "{before} vs {after}");
    }
}
