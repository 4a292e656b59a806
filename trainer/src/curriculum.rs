//! The budget curriculum: which compute budget a training step trains. Stage 1 samples the
//! budgets uniformly so every sub-network learns; stage 2 skews toward the full model
//! (default 0.5 / 0.3 / 0.2 over full / mid / small) so the parent recovers its quality.

use crate::router::Rng;
use crate::{Result, TrainerError};

#[derive(Debug, Clone, PartialEq)]
pub struct Curriculum {
    /// Budgets, largest (the full model) first.
    pub budgets: Vec<f64>,
    /// Steps of the uniform stage.
    pub uniform_steps: usize,
    /// Stage 2 sampling weights, one per budget.
    pub skew: Vec<f64>,
}

impl Curriculum {
    pub fn new(budgets: Vec<f64>, uniform_steps: usize, skew: Vec<f64>) -> Result<Self> {
        if budgets.is_empty() || budgets.len() != skew.len() {
            return Err(TrainerError::Invalid(format!(
                "{} budgets need as many stage-2 weights, got {}",
                budgets.len(),
                skew.len()
            )));
        }
        if skew.iter().any(|w| w.is_nan() || *w < 0.0) || skew.iter().sum::<f64>() <= 0.0 {
            return Err(TrainerError::Invalid(
                "stage-2 weights must be non-negative and not all zero".into(),
            ));
        }
        Ok(Self {
            budgets,
            uniform_steps,
            skew,
        })
    }

    /// The index of the budget step `step` trains, drawn from `rng`.
    pub fn sample(&self, step: usize, rng: &mut Rng) -> usize {
        let u = rng.uniform();
        if step < self.uniform_steps {
            return ((u * self.budgets.len() as f64) as usize).min(self.budgets.len() - 1);
        }
        let total: f64 = self.skew.iter().sum();
        let mut acc = 0.0;
        for (i, w) in self.skew.iter().enumerate() {
            acc += w / total;
            if u < acc {
                return i;
            }
        }
        self.skew.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(c: &Curriculum, steps: std::ops::Range<usize>) -> Vec<f64> {
        let mut rng = Rng::new(5);
        let mut counts = vec![0usize; c.budgets.len()];
        let n = steps.len();
        for s in steps {
            counts[c.sample(s, &mut rng)] += 1;
        }
        counts.iter().map(|&k| k as f64 / n as f64).collect()
    }

    #[test]
    fn uniform_then_skewed_to_the_full_model() {
        let c = Curriculum::new(vec![1.0, 0.5, 0.25], 20_000, vec![0.5, 0.3, 0.2]).unwrap();
        for share in shares(&c, 0..20_000) {
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{share}");
        }
        let late = shares(&c, 20_000..40_000);
        for (share, want) in late.iter().zip([0.5, 0.3, 0.2]) {
            assert!((share - want).abs() < 0.02, "{late:?}");
        }
        assert!(Curriculum::new(vec![1.0], 0, vec![]).is_err());
        assert!(Curriculum::new(vec![1.0], 0, vec![0.0]).is_err());
    }
}
