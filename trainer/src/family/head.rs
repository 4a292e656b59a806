//! One head's fit: AdamW on a loss from a start, judged at checks, the best eligible check
//! kept, its state saved at every check so a killed fit resumes exactly where it stopped.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::linalg::project_orthogonal;
use super::recipe::HeadTraining;
use crate::optim::{load_checkpoint, lr_at, save_checkpoint, AdamW, Params};
use crate::router::Rng;
use crate::{Result, TrainerError};

/// What one check of a head found.
pub(crate) struct Check {
    /// The check's scores (NDCG@10 or neighbour recall) per held-out set × nested dim.
    pub(crate) scores: Vec<Vec<f64>>,
    /// Spearman's ρ per guard × nested dim.
    pub(crate) guard: Vec<Vec<f64>>,
    pub(crate) eligible: bool,
}

/// Where head fits keep their state between checks (`OUT/state`), keyed by the recipe and
/// the parent: `NAME.json` (step, RNG, best so far) names the `NAME.STEP.safetensors` that
/// holds the weights, the best weights and AdamW's moments at that step. The JSON is
/// renamed into place last, so a kill -9 at any moment leaves the previous check's state.
pub(crate) struct Resume {
    dir: PathBuf,
    /// Whether a previous run of the same recipe left state here.
    pub(crate) resuming: bool,
}

/// A head fit's position at its last check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HeadProgress {
    pub(super) key: String,
    pub(super) step: usize,
    pub(super) rng: u64,
    /// `f64::to_bits`, so a resumed fit compares exactly what an uninterrupted one would.
    pub(super) running: Option<u64>,
    pub(super) best_step: usize,
    /// `f64::to_bits` of the best mean.
    pub(super) best_mean: u64,
    pub(super) weights: String,
}

impl Resume {
    /// Opens `dir` for the recipe `key`: state of another recipe (or none) is cleared.
    ///
    /// Errors: `Io` when the folder cannot be read, cleared or made.
    pub(crate) fn open(dir: &Path, key: &str) -> Result<Self> {
        let stamp = dir.join("recipe.key");
        let resuming = std::fs::read_to_string(&stamp).is_ok_and(|k| k == key);
        if !resuming {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
            }
            std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
            std::fs::write(&stamp, key).map_err(|e| TrainerError::io(&stamp, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            resuming,
        })
    }

    pub(super) fn progress_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The saved position of head `name`, if any.
    pub(super) fn load(&self, name: &str) -> Result<Option<HeadProgress>> {
        let path = self.progress_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| TrainerError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainerError::io(&path, e)),
        }
    }

    /// Saves `params` with AdamW's state, then points `NAME.json` at them and removes the
    /// previous check's weights.
    pub(super) fn save(
        &self,
        name: &str,
        at: &HeadProgress,
        params: &Params,
        opt: &AdamW,
    ) -> Result<()> {
        save_checkpoint(&self.dir.join(&at.weights), params, opt)?;
        let path = self.progress_path(name);
        let previous = self.load(name)?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(at).map_err(|e| TrainerError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(|e| TrainerError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainerError::io(&path, e))?;
        if let Some(old) = previous.filter(|p| p.weights != at.weights) {
            let _ = std::fs::remove_file(self.dir.join(old.weights));
        }
        Ok(())
    }
}

/// One head's fit: its settings and where it saves its state.
pub(crate) struct HeadRun<'a> {
    pub(crate) name: &'a str,
    pub(crate) hp: Schedule,
    pub(crate) seed: u64,
    /// `(rows, cols)` of the head.
    pub(crate) shape: (usize, usize),
    pub(crate) dims: &'a [usize],
    pub(crate) resume: &'a Resume,
    /// The log's name for the checks' scores (`ndcg_at_10`, `neighbour_recall_at_10`).
    pub(crate) metric: &'static str,
    /// After every step, project the first `cols` rows back onto the orthogonal matrices
    /// (`project_orthogonal`) and zero the rest, so full-width cosines stay the parent's.
    pub(crate) orthogonal: bool,
}

/// A head fit's optimiser schedule (AdamW, warmup then cosine) and check interval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) steps: usize,
    pub(crate) lr: f64,
    pub(crate) warmup: usize,
    pub(crate) weight_decay: f64,
    pub(crate) eval_every: usize,
}

impl HeadTraining {
    pub(super) fn schedule(&self) -> Schedule {
        Schedule {
            steps: self.steps,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            eval_every: self.eval_every,
        }
    }
}

impl HeadRun<'_> {
    /// See `Fit::train`.
    pub(crate) fn fit(
        &self,
        init: &[f32],
        progress: &ProgressBar,
        mut loss: impl FnMut(&Tensor, &mut Rng) -> Result<Option<Tensor>>,
        mut check: impl FnMut(&[f32]) -> Result<Check>,
        log: &mut dyn FnMut(serde_json::Value) -> Result<()>,
        sets: &[&str],
    ) -> Result<(usize, Vec<f32>)> {
        let (hp, name) = (&self.hp, self.name);
        let tensor = |w: Vec<f32>| Tensor::from_vec(w, self.shape, &Device::Cpu);
        let var = Var::from_tensor(&tensor(init.to_vec())?)?;
        let best_var = Var::from_tensor(&tensor(init.to_vec())?)?;
        let params: Params = vec![(format!("{name}.weight"), var.clone())];
        let saved: Params = vec![
            (format!("{name}.weight"), var.clone()),
            (format!("{name}.best"), best_var.clone()),
        ];
        let mut opt = AdamW::new(hp.weight_decay);
        let mut rng = Rng::new(self.seed ^ name.len() as u64);
        let (first, mut running, mut best) = match self.resume.load(name)? {
            Some(at) => {
                load_checkpoint(&self.resume.dir.join(&at.weights), &saved, &mut opt)?;
                rng.state = at.rng;
                tracing::info!("{name}: resuming after step {}", at.step);
                (
                    at.step + 1,
                    at.running.map_or(f64::NAN, f64::from_bits),
                    (at.best_step, f64::from_bits(at.best_mean)),
                )
            }
            None => {
                let start = check(init)?;
                log(serde_json::json!({"head": name, "step": 0, "sets": sets,
                    "dims": self.dims, self.metric: start.scores,
                    "mean": mean(&start.scores), "guard_spearman": start.guard}))?;
                let best = (0, mean(&start.scores));
                self.save_at(0, &rng, f64::NAN, best, &saved, &opt)?;
                (1, f64::NAN, best)
            }
        };
        progress.set_message(format!("fitting {name}"));
        progress.set_length(hp.steps as u64);
        progress.set_position(first as u64 - 1);
        for step in first..=hp.steps {
            if let Some(l) = loss(var.as_tensor(), &mut rng)? {
                let grads = l.backward()?;
                let lr = lr_at(step - 1, hp.warmup, hp.steps, hp.lr);
                opt.update(&params, &grads, lr, 1.0)?;
                if self.orthogonal {
                    let mut w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                    project_orthogonal(&mut w, self.shape.1, false)?;
                    var.set(&tensor(w)?)?;
                }
                let v = f64::from(l.to_scalar::<f32>()?);
                running = if running.is_nan() {
                    v
                } else {
                    0.9 * running + 0.1 * v
                };
            }
            progress.inc(1);
            if step.is_multiple_of(hp.eval_every) || step == hp.steps {
                let w: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
                let Check {
                    scores,
                    guard,
                    eligible,
                } = check(&w)?;
                let m = mean(&scores);
                log(
                    serde_json::json!({"head": name, "step": step, "loss": running,
                    self.metric: scores, "mean": m, "eligible": eligible,
                    "guard_spearman": guard}),
                )?;
                tracing::info!("{name} step {step}: loss {running:.4}, held-out mean {m:.4}");
                if eligible && m > best.1 {
                    best = (step, m);
                    best_var.set(&tensor(w)?)?;
                }
                self.save_at(step, &rng, running, best, &saved, &opt)?;
            }
        }
        Ok((best.0, best_var.as_tensor().flatten_all()?.to_vec1()?))
    }

    pub(super) fn save_at(
        &self,
        step: usize,
        rng: &Rng,
        running: f64,
        best: (usize, f64),
        saved: &Params,
        opt: &AdamW,
    ) -> Result<()> {
        let at = HeadProgress {
            key: self.name.to_string(),
            step,
            rng: rng.state,
            running: running.is_finite().then_some(running.to_bits()),
            best_step: best.0,
            best_mean: best.1.to_bits(),
            weights: format!("{}.{step}.safetensors", self.name),
        };
        self.resume.save(self.name, &at, saved, opt)
    }
}

/// The mean of every score (0 when there are none).
pub(super) fn mean(scores: &[Vec<f64>]) -> f64 {
    let all: Vec<f64> = scores.iter().flatten().copied().collect();
    all.iter().sum::<f64>() / all.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::recipe::RotationFit;

    /// A head fit killed after a check and rerun ends exactly where an uninterrupted fit
    /// does: same chosen step, same weights, and the two logs together equal the one.
    #[test]
    fn a_killed_head_fit_resumes_from_its_last_check() {
        let hp = HeadTraining {
            steps: 10,
            batch: 2,
            lr: 0.05,
            warmup: 1,
            weight_decay: 0.0,
            temperature: 0.05,
            eval_every: 2,
            anchor_weight: 0.0,
            extra_init: 0.0,
            rotation: RotationFit::Documents,
        };
        let dims = [2usize];
        let init = vec![0f32; 6];
        // The loss draws from the RNG, so a resume that lost its RNG state would diverge.
        let loss = |fail_at: Option<usize>| {
            let mut calls = 0usize;
            move |w: &Tensor, rng: &mut Rng| -> Result<Option<Tensor>> {
                calls += 1;
                if fail_at == Some(calls) {
                    return Err(TrainerError::Invalid("killed".into()));
                }
                let noise = rng.uniform() as f32;
                let target = Tensor::new(&[[1f32, 2.], [3., 4.], [5., noise]], &Device::Cpu)?;
                Ok(Some((w - target)?.sqr()?.sum_all()?))
            }
        };
        let check = |w: &[f32]| -> Result<Check> {
            let score = -w.iter().map(|x| f64::from(x - 3.0).abs()).sum::<f64>();
            Ok(Check {
                scores: vec![vec![score]],
                guard: vec![],
                eligible: true,
            })
        };
        let run = |dir: &Path, fail_at: Option<usize>, lines: &mut Vec<String>| {
            let resume = Resume::open(dir, "recipe").unwrap();
            let head = HeadRun {
                name: "head",
                hp: hp.schedule(),
                seed: 3,
                shape: (3, 2),
                dims: &dims,
                resume: &resume,
                metric: "ndcg_at_10",
                orthogonal: false,
            };
            let mut log = |v: serde_json::Value| -> Result<()> {
                lines.push(v.to_string());
                Ok(())
            };
            head.fit(
                &init,
                &ProgressBar::hidden(),
                loss(fail_at),
                check,
                &mut log,
                &["set"],
            )
        };
        let tmp = std::env::temp_dir().join(format!("mrl-heads-{}", std::process::id()));
        let mut whole_log = Vec::new();
        let whole = run(&tmp.join("a"), None, &mut whole_log).unwrap();
        let mut parts_log = Vec::new();
        let b = tmp.join("b");
        assert!(run(&b, Some(7), &mut parts_log).is_err());
        assert_eq!(parts_log.len(), 4, "checks at 0, 2, 4, 6 before the kill");
        let resumed = run(&b, None, &mut parts_log).unwrap();
        assert_eq!(resumed, whole);
        assert_eq!(parts_log, whole_log);
        // Another recipe's state is not resumed.
        let mut fresh_log = Vec::new();
        Resume::open(&b, "another recipe").unwrap();
        let again = run(&b, None, &mut fresh_log);
        assert!(again.is_ok() && fresh_log.len() == whole_log.len());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
