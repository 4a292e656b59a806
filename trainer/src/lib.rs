//! mrl-trainer: turns a sentence-transformers checkpoint into an elastic one and measures it.
//!
//! The pipeline: calibration texts → activation statistics and layer-skip errors
//! (`importance`) → a function-preserving permutation → zero-shot profiles per compute budget
//! (`calibrate`) → retrieval metrics (`eval`). Elastic training's parts so far: differentiable
//! losses (`loss`), the budget router with straight-through Gumbel-Softmax (`router`), the
//! budget curriculum (`curriculum`), the trainable, gated encoder with its Matryoshka head
//! (`student`) and its fused ops with backward passes (`fused`), AdamW with checkpoints
//! (`optim`), training pairs (`data`) and one elastic
//! step's loss (`elastic`), and the closed-form rotation onto a set's principal axes that a
//! Matryoshka head can start from (`rotation`); `train` runs the loop, and `bench` is the
//! training-step workload `mrl bench train` times. `family` is the
//! cached-teacher recipe: a frozen parent, heads fitted on its cached embeddings; `distill`
//! is its label-free twin on generic text (the shipped default), and `judge` scores a
//! checkpoint on the zero-shot dev sets and earns its profiles' alignment there.

pub mod bench;
pub mod bridge;
pub mod calibrate;
pub mod children;
pub mod curriculum;
pub mod data;
pub mod dev;
pub mod distill;
pub mod elastic;
pub mod error;
pub mod eval;
pub mod export;
pub mod family;
pub mod fused;
pub mod importance;
pub mod judge;
pub mod loss;
mod metrics;
pub mod optim;
/// The closed-form rotation lives in the encoder, where collections use it too.
pub use mrl_encoder::rotation;
pub mod router;
pub mod student;
pub mod train;

pub use calibrate::{calibrate, CalibrateOptions};
pub use error::{Result, TrainerError};

// The shared folder and the crate's folder as the end-to-end tests find them (one rule).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/qdrant.rs"]
mod shared_folder;

#[cfg(test)]
pub(crate) mod test_support {
    //! What the unit tests share: where the crate's files and `../shared` are.

    pub(crate) use super::shared_folder::{crate_dir as manifest_dir, needs_shared, shared_dir};
}
