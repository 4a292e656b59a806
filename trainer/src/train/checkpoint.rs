//! The run's checkpoint: the trained variables with their optimizer moments, and the run's
//! position (step, RNG states, recipe); written whole or not at all, and found again on
//! resume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::recipe::TrainConfig;
use crate::optim::{load_checkpoint, save_checkpoint, AdamW, Params};
use crate::router::Rng;
use crate::{Result, TrainerError};

/// Position of a run, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RunState {
    pub(super) step: usize,
    pub(super) noise: Rng,
    pub(super) sampler: Rng,
    pub(super) config: TrainConfig,
}

/// The trained variables and their optimizers: what a checkpoint saves and a resume loads.
pub(super) struct Learner {
    pub(super) model: Params,
    pub(super) router: Params,
    pub(super) opt: AdamW,
    pub(super) ropt: AdamW,
}

impl Learner {
    /// The run's position: step 0 with the seeded RNGs, or the saved one when `ckpt` (or its
    /// `.old` twin) holds a checkpoint, whose weights and optimizer moments are then loaded.
    ///
    /// Errors: `Invalid` when the checkpoint is another recipe's or its state is unreadable.
    pub(super) fn resume(&mut self, cfg: &TrainConfig, ckpt: &Path) -> Result<RunState> {
        let fresh = RunState {
            step: 0,
            noise: Rng::new(cfg.seed),
            sampler: Rng::new(cfg.seed.wrapping_add(1)),
            config: cfg.clone(),
        };
        let Some(found) = checkpoint_dir(ckpt) else {
            return Ok(fresh);
        };
        let state_path = found.join("state.json");
        let saved: RunState = serde_json::from_slice(
            &std::fs::read(&state_path).map_err(|e| TrainerError::io(&state_path, e))?,
        )
        .map_err(|e| TrainerError::Invalid(format!("{}: {e}", state_path.display())))?;
        if saved.config != *cfg {
            return Err(TrainerError::Invalid(format!(
                "{} holds a run of another config; use a new out folder",
                found.display()
            )));
        }
        load_checkpoint(&found.join("model.safetensors"), &self.model, &mut self.opt)?;
        load_checkpoint(
            &found.join("router.safetensors"),
            &self.router,
            &mut self.ropt,
        )?;
        Ok(saved)
    }

    /// Saves the weights, the moments and `state` as the checkpoint at `ckpt`.
    pub(super) fn save(&self, ckpt: &Path, state: &RunState) -> Result<()> {
        save_run(
            ckpt,
            &self.model,
            &self.opt,
            &self.router,
            &self.ropt,
            state,
        )
    }
}

/// Writes the whole checkpoint into a fresh folder, then swaps it in: at any crash point
/// either the old or the new checkpoint is complete on disk (`checkpoint.old` covers the
/// moment between the two renames; [`checkpoint_dir`] finds it).
fn save_run(
    dir: &Path,
    model: &Params,
    opt: &AdamW,
    router: &Params,
    ropt: &AdamW,
    state: &RunState,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainerError::io(&tmp, e))?;
    save_checkpoint(&tmp.join("model.safetensors"), model, opt)?;
    save_checkpoint(&tmp.join("router.safetensors"), router, ropt)?;
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainerError::Invalid(format!("state: {e}")))?;
    std::fs::write(tmp.join("state.json"), bytes).map_err(|e| TrainerError::io(&tmp, e))?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| TrainerError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainerError::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainerError::io(&old, e))?;
    }
    Ok(())
}

/// The complete checkpoint folder to resume from, if any.
pub(super) fn checkpoint_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.with_extension("old")]
        .into_iter()
        .find(|d| d.join("state.json").exists())
}
