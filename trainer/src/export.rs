//! Half-precision export of a checkpoint (`mrl model export`): the weights cast to f16 for
//! shipping (half the bytes), with the cost measured as the cosine between the f32 and the
//! f16 model's embeddings of sample texts, per profile at the largest dim.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use indicatif::ProgressBar;
use mrl_encoder::{nested, Embedder};
use serde::Serialize;

use crate::eval::embed_cached;
use crate::{Result, TrainerError};

/// The measured cost of the cast, per profile.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub texts: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// (profile, mean cosine, minimum cosine) of f16 against f32 embeddings.
    pub cosine: Vec<(String, f64, f64)>,
}

/// Writes `model` with f16 weights to `out` (which must not exist) and compares the two on
/// `texts`.
pub fn export_f16(model: &Path, out: &Path, texts: &[String]) -> Result<ExportReport> {
    if out.exists() {
        return Err(TrainerError::Invalid(format!(
            "{} exists; export writes a new folder",
            out.display()
        )));
    }
    let source = Embedder::load(model)?;
    let weights = model.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let half = tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F16)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    let manifest = source
        .manifest()
        .cloned()
        .ok_or_else(|| TrainerError::Invalid(format!("{} has no mrl.json", model.display())))?;
    crate::calibrate::write_checkpoint(model, out, &half, &manifest)?;
    let exported = Embedder::load(out)?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| TrainerError::io(p, e))
    };
    let mut cosine = Vec::new();
    // Unit vectors of the profile's full width, as the server returns them at its largest dim.
    let unit = |e: &Embedder, name: &str| -> Result<Vec<Vec<f32>>> {
        let profile = e.profile(Some(name))?;
        let mut vectors = embed_cached(e, texts, None, &profile, None, &ProgressBar::hidden())?;
        vectors.iter_mut().for_each(|v| nested::l2_normalize(v));
        Ok(vectors)
    };
    for name in source.profile_names() {
        let a = unit(&source, &name)?;
        let b = unit(&exported, &name)?;
        let cos: Vec<f64> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| f64::from(p * q)).sum())
            .collect();
        let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
        let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
        cosine.push((name, mean, min));
    }
    Ok(ExportReport {
        texts: texts.len(),
        bytes_before: size(&weights)?,
        bytes_after: size(&out.join("model.safetensors"))?,
        cosine,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importance::tests::{tiny_config, tiny_tensors};

    #[test]
    fn refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("mrl-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = export_f16(&dir, &dir, &[]).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        // The cast itself is candle's; what matters is that f16 weights load back as f32.
        let cfg = tiny_config();
        let t = tiny_tensors(&cfg, 1);
        let half: HashMap<_, _> = t
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::F16).unwrap()))
            .collect();
        let a = mrl_encoder::BertModel::from_tensors(t, &cfg).unwrap();
        let b = mrl_encoder::BertModel::from_tensors(half, &cfg).unwrap();
        let seqs = crate::importance::tests::tiny_seqs();
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let p = mrl_encoder::Profile::full(&cfg);
        let (x, y) = (a.forward(&rows, &p).unwrap(), b.forward(&rows, &p).unwrap());
        for (u, v) in x.iter().zip(&y) {
            for (p, q) in u.iter().zip(v) {
                assert!((p - q).abs() < 1e-2, "{p} vs {q}");
            }
        }
    }
}
