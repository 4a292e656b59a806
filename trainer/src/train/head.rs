//! The Matryoshka head's start (`[head]`): the identity, or the rotation onto the uncentred
//! principal axes of the parent's embeddings.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use mrl_encoder::{Embedder, Profile};

use super::checkpoint::checkpoint_dir;
use super::recipe::{HeadInit, TrainConfig};
use crate::data::Pair;
use crate::rotation::Rotation;
use crate::router::Rng;
use crate::student::MatryoshkaHead;
use crate::Result;

/// The `d × d` identity, row-major.
fn identity(d: usize) -> Vec<f32> {
    let mut m = vec![0f32; d * d];
    m.iter_mut().step_by(d + 1).for_each(|x| *x = 1.0);
    m
}

/// The rotation onto the principal axes of the parent's embeddings of (up to `limit` of)
/// `texts`, taken evenly through them, each cut at `max_tokens`.
pub fn fit_rotation(
    parent: &Embedder,
    texts: &[&str],
    limit: usize,
    max_tokens: usize,
) -> Result<Rotation> {
    let step = texts.len().div_ceil(limit.max(1)).max(1);
    let picked: Vec<&str> = texts.iter().step_by(step).copied().collect();
    let tokens = crate::calibrate::cut(parent.tokenizer().encode(&picked)?, max_tokens);
    let vectors = parent.embed_tokens(&tokens, &Profile::full(parent.config()), 64)?;
    Ok(Rotation::fit(&vectors)?)
}

/// The Matryoshka head as `[head]` starts it (`None`: identity init within the parent's
/// width needs no head). A rotation is fitted on the unlabeled texts, else on the pairs'
/// documents, unless `ckpt` holds a checkpoint to load the head from; `init_rng` draws an
/// identity head's rows beyond the parent's width.
pub(super) fn build_head(
    cfg: &TrainConfig,
    teacher: &Embedder,
    (pairs, unlabeled): (&[Pair], &[String]),
    vars: &VarMap,
    device: &Device,
    init_rng: &mut Rng,
    ckpt: &Path,
) -> Result<Option<MatryoshkaHead>> {
    let hidden = teacher.config().hidden_size;
    let head_width = *cfg
        .loss
        .nested_dims
        .iter()
        .max()
        .expect("validated non-empty");
    Ok(match cfg.head.init {
        HeadInit::Identity if head_width > hidden => Some(MatryoshkaHead::new(
            hidden,
            head_width,
            vars,
            DType::F32,
            device,
            init_rng,
        )?),
        HeadInit::Identity => None,
        HeadInit::Rotation => {
            // A resumed run loads the head from its checkpoint: no fit needed.
            let rotation = if checkpoint_dir(ckpt).is_some() {
                identity(hidden)
            } else {
                let limit = cfg.head.fit_texts.unwrap_or(2048);
                let texts: Vec<&str> = if unlabeled.is_empty() {
                    pairs.iter().map(|p| p.positive.as_str()).collect()
                } else {
                    unlabeled.iter().map(String::as_str).collect()
                };
                let fitted = fit_rotation(teacher, &texts, limit, cfg.max_tokens)?;
                tracing::info!(
                    "head: rotation fitted on {} texts; 64 axes hold {:.1}% of their energy",
                    texts.len().min(limit),
                    100.0 * fitted.energy(64)
                );
                fitted.matrix_f32()
            };
            Some(MatryoshkaHead::from_rotation(
                &rotation,
                head_width.max(hidden),
                vars,
                DType::F32,
                device,
            )?)
        }
    })
}
