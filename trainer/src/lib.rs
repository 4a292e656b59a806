//! mrl-trainer: turns a sentence-transformers checkpoint into an elastic one and measures it.
//!
//! The pipeline: calibration texts → activation statistics and layer-skip errors
//! (`importance`) → a function-preserving permutation → zero-shot profiles per compute budget
//! (`calibrate`) → retrieval metrics (`eval`). Elastic training grows here in the trainer issue.

pub mod calibrate;
pub mod data;
pub mod error;
pub mod eval;
pub mod importance;

pub use calibrate::{calibrate, CalibrateOptions};
pub use error::{Result, TrainerError};
