//! Layer bridges for sub-encoders that skip layers (`[bridges]` of the label-free recipe):
//! closed-form affine maps, fitted on generic text, that hand the next layer a profile runs
//! what the parent's skipped layers would have handed it. The full profile never changes.
//!
//! Pipeline, per sub-encoder, one bridge after another (each fitted on the hidden states the
//! bridges before it produce): texts run through the parent and the profile in the same
//! packed batches → for the bridge after the profile's layer `l` (where `bridge_points`
//! puts one: never after its last),
//! `x` = the profile's hidden state after `l`, `y` = the parent's after layer `m − 1`, where
//! `m` is the next layer the profile runs (so `y` is what layer `m` reads in the parent) →
//! ridge regression with a bias, shrunk towards the plain skip (`W = I`, `b = 0`):
//! `[W b] = argmin Σ_tokens ‖y − W x − b‖² + μ‖W − I‖²`, `μ = ridge · tr(XᵀX) / hidden`
//! (Hoerl & Kennard, 1970), solved by Cholesky in f64 (the encoder's `linear::Ridge`) → report: on held-out texts, the squared
//! error the bridge leaves as a share of the plain skip's.

use indicatif::ProgressBar;
use mrl_encoder::kernels::{self, MatRef};
use mrl_encoder::linear::Ridge;
use mrl_encoder::{BertModel, Bridge, Observer, Profile};
use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::family::Parent;
use crate::{Result, TrainerError};

/// `[bridges]`: each sub-encoder gets closed-form affine maps after some of its layers
/// (where it skips the parent's layers, and by `at` after narrowed ones), fitted before its
/// head (`crate::bridge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    /// Training texts they are fitted on (drawn evenly); 200 held-out texts report them.
    pub texts: usize,
    /// Ridge strength towards the plain skip (relative to the inputs' mean energy).
    pub ridge: f64,
    /// `"narrowed"` (default): where a sub-encoder skips layers and after each layer it
    /// runs narrowed; `"gaps"`: only where it skips layers; `"every"`: after each of its
    /// layers but the last.
    #[serde(default)]
    pub at: BridgeAt,
}

impl BridgeSettings {
    /// Errors: `Invalid` naming the setting.
    pub fn validate(&self) -> Result<()> {
        // A LayerNorm output's channels sum to a constant, so with the bias column the
        // normal equations are singular without a ridge term.
        if self.texts == 0 || !(self.ridge.is_finite() && self.ridge > 0.0) {
            return Err(TrainerError::Invalid(
                "[bridges]: texts ≥ 1 and ridge > 0".into(),
            ));
        }
        Ok(())
    }
}

/// Fits every sub-encoder's bridges when the recipe asks for them and leaves them set on the
/// parent, so the sub-encoders are embedded through them and the checkpoint it writes holds
/// them; returns their reports.
pub(crate) fn fit_sub_bridges(
    settings: Option<&BridgeSettings>,
    parent: &mut Parent,
    (train, held_out): (&[String], &[String]),
    progress: &ProgressBar,
) -> Result<Vec<BridgeReport>> {
    let Some(b) = settings else {
        return Ok(Vec::new());
    };
    let tokenizer = parent.embedder.tokenizer();
    let fit_on: Vec<&String> = crate::data::evenly(train, b.texts).collect();
    let report_on: Vec<&String> = held_out.iter().take(200).collect();
    let tokens = (tokenizer.encode(&fit_on)?, tokenizer.encode(&report_on)?);
    let mut reports = Vec::new();
    for (pname, profile) in parent.profiles.clone().iter().skip(1) {
        let (_, report) = fit_bridges(
            parent.embedder.model_mut(),
            pname,
            profile,
            (&tokens.0, &tokens.1),
            (b.at, b.ridge),
            progress,
        )?;
        reports.extend(report);
    }
    Ok(reports)
}

/// Texts per forward pass while fitting.
const BATCH: usize = 32;

/// How one bridge did on held-out texts (mean squared error per token and channel).
#[derive(Debug, Clone, Serialize)]
pub struct BridgeReport {
    /// The sub-encoder's name.
    pub profile: String,
    /// The profile's layer whose output the bridge maps.
    pub after: usize,
    /// The parent's layer whose output it stands in for.
    pub target: usize,
    /// Tokens it was fitted on.
    pub tokens: usize,
    /// Held-out error of the plain skip (`y ≈ x`).
    pub skip_mse: f64,
    /// Held-out error of the bridge (`y ≈ W x + b`).
    pub bridge_mse: f64,
}

/// Keeps one LayerNorm output of a forward pass: the `want`-th `hidden` call (0 is the
/// embeddings, `2 + 2i` the output of the `i`-th layer the profile runs).
struct Capture {
    want: usize,
    calls: usize,
    x: Vec<f32>,
}

impl Observer for Capture {
    fn hidden(&mut self, x: &[f32], _hidden: usize) {
        if self.calls == self.want {
            self.x = x.to_vec();
        }
        self.calls += 1;
    }
}

/// The hidden states (`tokens × hidden`) after the `position`-th layer `profile` runs.
fn layer_output(
    model: &BertModel,
    batch: &[&[u32]],
    profile: &Profile,
    position: usize,
) -> Result<Vec<f32>> {
    let mut capture = Capture {
        want: 2 + 2 * position,
        calls: 0,
        x: Vec::new(),
    };
    model.forward_observed(batch, profile, &mut capture)?;
    Ok(capture.x)
}

/// Where a sub-encoder's bridges go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeAt {
    /// Only where the profile skips layers (after `l` when it runs `m > l + 1` next).
    Gaps,
    /// Where it skips layers, and after a layer it runs narrowed (fewer heads or FFN
    /// neurons than the parent's), whose output the bridge corrects.
    #[default]
    Narrowed,
    /// After each of its layers but the last.
    Every,
}

/// Which bridges `profile` gets (`at`), each with the parent's layer whose output is the
/// next layer's input: `(after, target)`. Empty for the full profile.
pub fn bridge_points(profile: &Profile, full: &Profile, at: BridgeAt) -> Vec<(usize, usize)> {
    if profile == full {
        return Vec::new();
    }
    let narrowed = profile.heads < full.heads || profile.ffn < full.ffn;
    profile
        .layers
        .windows(2)
        .filter(|w| match at {
            BridgeAt::Gaps => w[1] > w[0] + 1,
            BridgeAt::Narrowed => w[1] > w[0] + 1 || narrowed,
            BridgeAt::Every => true,
        })
        .map(|w| (w[0], w[1] - 1))
        .collect()
}

/// `XᵀX` and `XᵀY` of the bias-augmented inputs (`[x 1]`), in f64.
struct Normal {
    gram: DMatrix<f64>,
    cross: DMatrix<f64>,
    tokens: usize,
}

impl Normal {
    fn new(h: usize) -> Self {
        Self {
            gram: DMatrix::zeros(h + 1, h + 1),
            cross: DMatrix::zeros(h + 1, h),
            tokens: 0,
        }
    }

    /// Adds the tokens of one batch: `x` and `y` are `tokens × h`.
    fn add(&mut self, x: &[f32], y: &[f32], h: usize) {
        let t = x.len() / h;
        let a = h + 1;
        let mut aug = vec![1f32; t * a];
        for (row, src) in aug.chunks_exact_mut(a).zip(x.chunks_exact(h)) {
            row[..h].copy_from_slice(src);
        }
        let threads = rayon::current_num_threads();
        let xt = MatRef::rows(&aug, t, a, a).t();
        // A batch's sums are short enough for f32; the run's total is kept in f64.
        let mut g = vec![0f32; a * a];
        kernels::matmul(
            &mut g,
            a,
            xt,
            MatRef::rows(&aug, t, a, a),
            1.0,
            false,
            threads,
        );
        let mut c = vec![0f32; a * h];
        kernels::matmul(&mut c, h, xt, MatRef::rows(y, t, h, h), 1.0, false, threads);
        for i in 0..a {
            for j in 0..a {
                self.gram[(i, j)] += f64::from(g[i * a + j]);
            }
            for j in 0..h {
                self.cross[(i, j)] += f64::from(c[i * h + j]);
            }
        }
        self.tokens += t;
    }

    /// The bridge after `after`: the ridge solution shrunk towards the identity, the bias
    /// row left free (`mrl_encoder::linear::Ridge`, the one ridge solve).
    ///
    /// Errors: `Invalid` when the system is not positive definite (no tokens, or no ridge
    /// term: LayerNorm outputs make `[x 1]`'s columns dependent).
    fn solve(&self, after: usize, h: usize, ridge: f64) -> Result<Bridge> {
        let failed = |e: mrl_encoder::EncoderError| {
            TrainerError::Invalid(format!(
                "the bridge after layer {after}: {e} ({} tokens)",
                self.tokens
            ))
        };
        let m = Ridge::from_sums(self.gram.clone(), self.cross.clone(), h)
            .and_then(|r| r.coefficients(ridge, true))
            .map_err(failed)?;
        // m is (h + 1) × h with y = [x 1] m: W = the first h rows transposed, b the last row.
        let mut weight = vec![0f32; h * h];
        for i in 0..h {
            for j in 0..h {
                weight[i * h + j] = m[(j, i)] as f32;
            }
        }
        let bias = (0..h).map(|i| m[(h, i)] as f32).collect();
        Ok(Bridge {
            after,
            weight,
            bias,
        })
    }
}

/// Mean squared error of `x` against `y`, mapped by `bridge` first when given.
fn mse(x: &[f32], y: &[f32], h: usize, bridge: Option<&Bridge>) -> f64 {
    let mut sum = 0f64;
    for (xr, yr) in x.chunks_exact(h).zip(y.chunks_exact(h)) {
        for (i, &yi) in yr.iter().enumerate() {
            let p = match bridge {
                Some(b) => {
                    let w = &b.weight[i * h..(i + 1) * h];
                    b.bias[i] + w.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>()
                }
                None => xr[i],
            };
            sum += f64::from(yi - p).powi(2);
        }
    }
    sum / (x.len().max(1)) as f64
}

/// Fits `name`'s bridges (see the module header) on `train` and reports them on `held`
/// (token ids); leaves them set on `model`'s `profile`.
///
/// Errors: the encoder's, or `Invalid` for a profile narrower than the parent or a singular
/// fit.
pub fn fit_bridges(
    model: &mut BertModel,
    name: &str,
    profile: &Profile,
    (train, held): (&[Vec<u32>], &[Vec<u32>]),
    (at, ridge): (BridgeAt, f64),
    progress: &ProgressBar,
) -> Result<(Vec<Bridge>, Vec<BridgeReport>)> {
    let full = Profile::full(model.config());
    let h = full.hidden;
    if profile.hidden != h {
        return Err(TrainerError::Invalid(format!(
            "profile {name:?} is {} wide; bridges map the parent's width {h}",
            profile.hidden
        )));
    }
    let points = bridge_points(profile, &full, at);
    let mut bridges: Vec<Bridge> = Vec::new();
    let mut reports = Vec::new();
    model.set_bridges(profile, Vec::new())?;
    let batches = |seqs: &[Vec<u32>]| -> Vec<Vec<usize>> {
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        mrl_encoder::tokenize::plan_batches(&lengths, BATCH)
    };
    let (train_batches, held_batches) = (batches(train), batches(held));
    for &(after, target) in &points {
        let position = profile
            .layers
            .iter()
            .position(|&l| l == after)
            .ok_or_else(|| TrainerError::Invalid(format!("layer {after} is not {name:?}'s")))?;
        progress.set_message(format!("bridge {name} after layer {after}"));
        progress.set_length(train_batches.len() as u64);
        progress.set_position(0);
        let mut normal = Normal::new(h);
        for idx in &train_batches {
            let rows: Vec<&[u32]> = idx.iter().map(|&i| train[i].as_slice()).collect();
            let x = layer_output(model, &rows, profile, position)?;
            let y = layer_output(model, &rows, &full, target)?;
            normal.add(&x, &y, h);
            progress.inc(1);
        }
        let bridge = normal.solve(after, h, ridge)?;
        let (mut skip, mut fitted, mut n) = (0f64, 0f64, 0usize);
        for idx in &held_batches {
            let rows: Vec<&[u32]> = idx.iter().map(|&i| held[i].as_slice()).collect();
            let x = layer_output(model, &rows, profile, position)?;
            let y = layer_output(model, &rows, &full, target)?;
            let t = x.len() / h;
            skip += mse(&x, &y, h, None) * t as f64;
            fitted += mse(&x, &y, h, Some(&bridge)) * t as f64;
            n += t;
        }
        let n = n.max(1) as f64;
        tracing::info!(
            "bridge {name} after layer {after}: held-out error {:.4} against the plain skip's {:.4}",
            fitted / n,
            skip / n
        );
        reports.push(BridgeReport {
            profile: name.to_string(),
            after,
            target,
            tokens: normal.tokens,
            skip_mse: skip / n,
            bridge_mse: fitted / n,
        });
        bridges.push(bridge);
        model.set_bridges(profile, bridges.clone())?;
    }
    Ok((bridges, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_sit_at_gaps_or_after_every_layer_but_the_last_and_target_the_next_ones_input() {
        let p = |layers: Vec<usize>| Profile {
            layers,
            heads: 12,
            ffn: 1536,
            hidden: 384,
        };
        let full = p((0..6).collect());
        let every = BridgeAt::Every;
        assert!(bridge_points(&full, &full, every).is_empty());
        let sub = p(vec![0, 4, 5]);
        assert_eq!(bridge_points(&sub, &full, every), vec![(0, 3), (4, 4)]);
        assert_eq!(bridge_points(&sub, &full, BridgeAt::Gaps), vec![(0, 3)]);
        assert_eq!(bridge_points(&sub, &full, BridgeAt::Narrowed), vec![(0, 3)]);
        let narrow = Profile {
            ffn: 768,
            ..p(vec![0, 4, 5])
        };
        assert_eq!(
            bridge_points(&narrow, &full, BridgeAt::Narrowed),
            vec![(0, 3), (4, 4)]
        );
        assert_eq!(
            bridge_points(&p(vec![0, 1, 3]), &full, BridgeAt::Gaps),
            vec![(1, 2)]
        );
        assert_eq!(bridge_points(&p(vec![2]), &full, every), vec![]);
    }

    /// The tiny random BERT of the importance tests, with `extra` tensors added.
    fn tiny(extra: Vec<(String, Vec<f32>, Vec<usize>)>) -> (BertModel, Vec<Vec<u32>>) {
        use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
        use candle_core::{Device, Tensor};
        let cfg = tiny_config();
        let mut t = tiny_tensors(&cfg, 5);
        for (name, v, shape) in extra {
            t.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
        }
        (BertModel::from_tensors(t, &cfg).unwrap(), tiny_seqs())
    }

    fn eye(h: usize) -> Vec<f32> {
        (0..h * h)
            .map(|k| if k / h == k % h { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn a_bridge_changes_its_own_profile_only_and_the_identity_changes_nothing() {
        let (plain, seqs) = tiny(vec![]);
        let cfg = plain.config().clone();
        let h = cfg.hidden_size;
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let sub = Profile {
            layers: vec![0, 3],
            ..Profile::full(&cfg)
        };
        let full = Profile::full(&cfg);
        // Loaded from the weights and bound by name, as a checkpoint's manifest does.
        let (mut m, _) = tiny(vec![
            ("bridges.sub.0.weight".into(), eye(h), vec![h, h]),
            ("bridges.sub.0.bias".into(), vec![0.0; h], vec![h]),
        ]);
        assert!(m.bind_profile_bridges("nope", &sub).is_err());
        let not_run = Profile {
            layers: vec![1, 3],
            ..sub.clone()
        };
        assert!(m.bind_profile_bridges("sub", &not_run).is_err());
        assert!(m.bind_profile_bridges("sub", &full).is_err());
        let ends_at_0 = Profile {
            layers: vec![0],
            ..sub.clone()
        };
        assert!(m.bind_profile_bridges("sub", &ends_at_0).is_err());
        m.bind_profile_bridges("sub", &sub).unwrap();
        assert_eq!(m.bridges_of(&sub).len(), 1);
        let close = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| (x - y).abs() < 1e-5)
        };
        let identity = m.forward(&rows, &sub).unwrap();
        assert!(close(&identity, &plain.forward(&rows, &sub).unwrap()));
        let mut rng = crate::router::Rng::new(4);
        let weight: Vec<f32> = (0..h * h).map(|_| rng.uniform() as f32 - 0.5).collect();
        let bridge = Bridge {
            after: 0,
            weight,
            bias: vec![0.1; h],
        };
        m.set_bridges(&sub, vec![bridge]).unwrap();
        assert!(!close(&m.forward(&rows, &sub).unwrap(), &identity));
        assert!(close(
            &m.forward(&rows, &full).unwrap(),
            &plain.forward(&rows, &full).unwrap()
        ));
    }

    #[test]
    fn fitted_bridges_leave_less_error_than_the_plain_skip() {
        let (mut model, _) = tiny(vec![]);
        let cfg = model.config().clone();
        let sub = Profile {
            layers: vec![0, 2, 3],
            ..Profile::full(&cfg)
        };
        let seqs: Vec<Vec<u32>> = (0..200u32)
            .map(|i| (0..5 + i % 17).map(|j| (i * 13 + j * 7) % 50).collect())
            .collect();
        let (train, held) = seqs.split_at(160);
        let (bridges, reports) = fit_bridges(
            &mut model,
            "sub",
            &sub,
            (train, held),
            (BridgeAt::Every, 1e-3),
            &ProgressBar::hidden(),
        )
        .unwrap();
        assert_eq!(bridges.len(), 2);
        assert_eq!(
            reports
                .iter()
                .map(|r| (r.after, r.target))
                .collect::<Vec<_>>(),
            vec![(0, 1), (2, 2)]
        );
        for r in &reports {
            assert!(r.bridge_mse < r.skip_mse * 0.9, "{r:?}");
        }
        assert_eq!(model.bridges_of(&sub), bridges);
    }

    #[test]
    fn the_normal_equations_recover_an_affine_map() {
        let h = 4;
        let w = [
            0.9f32, 0.1, 0.0, -0.2, 0.0, 1.1, 0.3, 0.0, 0.2, 0.0, 0.8, 0.1, 0.0, -0.1, 0.0, 1.2,
        ];
        let b = [0.5f32, -0.25, 0.0, 1.0];
        let mut rng = crate::router::Rng::new(3);
        let x: Vec<f32> = (0..200 * h)
            .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
            .collect();
        let truth = Bridge {
            after: 0,
            weight: w.to_vec(),
            bias: b.to_vec(),
        };
        let y: Vec<f32> = x
            .chunks_exact(h)
            .flat_map(|r| {
                (0..h).map(move |i| b[i] + (0..h).map(|j| w[i * h + j] * r[j]).sum::<f32>())
            })
            .collect();
        let mut normal = Normal::new(h);
        normal.add(&x[..100 * h], &y[..100 * h], h);
        normal.add(&x[100 * h..], &y[100 * h..], h);
        let fit = normal.solve(0, h, 0.0).unwrap();
        for (a, e) in fit.weight.iter().zip(&w).chain(fit.bias.iter().zip(&b)) {
            assert!((a - e).abs() < 1e-3, "{a} vs {e}");
        }
        assert!(mse(&x, &y, h, Some(&fit)) < 1e-6);
        assert!(mse(&x, &y, h, None) > 0.01);
        assert!(mse(&x, &y, h, Some(&truth)) < 1e-9);
        // A huge ridge term leaves the plain skip's weight (the bias is not shrunk).
        let skip = normal.solve(0, h, 1e9).unwrap();
        for i in 0..h {
            for j in 0..h {
                let eye = if i == j { 1.0 } else { 0.0 };
                assert!((skip.weight[i * h + j] - eye).abs() < 1e-3);
            }
        }
    }
}
