//! Pooling of each text's token vectors into one vector, and what a sentence-transformers
//! folder runs after its transformer (`modules.json`: pooling, then optionally Normalize):
//! the modes of sentence-transformers' `Pooling` module, over packed batches (each sequence a
//! span of rows, no padding to mask).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::read_json;
use crate::error::{EncoderError, Result};

/// How token vectors become one vector: sentence-transformers' `pooling_mode_*` (one of them;
/// its concatenations of several are refused at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The average of the tokens.
    #[default]
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The largest value per dimension over the tokens.
    Max,
    /// The tokens' sum over the square root of their count.
    MeanSqrtLen,
    /// The tokens weighted by position (1, 2, …), summed, over the sum of the weights.
    WeightedMean,
    /// The last token's vector (with right padding, sentence-transformers' last unmasked one).
    LastToken,
}

impl Pooling {
    /// The `pooling_mode_*` key's suffix, for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean_tokens",
            Self::Cls => "cls_token",
            Self::Max => "max_tokens",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::WeightedMean => "weightedmean_tokens",
            Self::LastToken => "lasttoken",
        }
    }

    /// One vector per span of rows of `x` (`tokens × hidden`, row-major). An empty span pools
    /// to zeros. Formulas: sentence-transformers `models.Pooling.forward` (v6.2), with the
    /// attention mask as the span.
    pub fn pool(self, x: &[f32], hidden: usize, spans: &[Range<usize>]) -> Vec<Vec<f32>> {
        spans
            .iter()
            .map(|span| {
                let rows = x[span.start * hidden..span.end * hidden].chunks_exact(hidden);
                let mut acc = vec![0f32; hidden];
                if span.is_empty() {
                    return acc;
                }
                match self {
                    Self::Cls => acc.copy_from_slice(&x[span.start * hidden..][..hidden]),
                    Self::LastToken => acc.copy_from_slice(&x[(span.end - 1) * hidden..][..hidden]),
                    Self::Max => {
                        acc.fill(f32::NEG_INFINITY);
                        for row in rows {
                            acc.iter_mut().zip(row).for_each(|(a, &v)| *a = a.max(v));
                        }
                    }
                    Self::Mean | Self::MeanSqrtLen => {
                        for row in rows {
                            acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                        }
                        let n = span.len() as f32;
                        let by = if self == Self::Mean { n } else { n.sqrt() };
                        acc.iter_mut().for_each(|a| *a /= by);
                    }
                    Self::WeightedMean => {
                        for (i, row) in rows.enumerate() {
                            let w = (i + 1) as f32;
                            acc.iter_mut().zip(row).for_each(|(a, v)| *a += w * v);
                        }
                        let n = span.len() as f32;
                        let total = n * (n + 1.0) / 2.0;
                        acc.iter_mut().for_each(|a| *a /= total);
                    }
                }
                acc
            })
            .collect()
    }
}

/// What runs after the transformer, as the folder's `modules.json` lists it: the pooling
/// mode, and whether a `Normalize` module L2-normalises the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modules {
    /// How token vectors become one (the Pooling module's mode).
    pub pooling: Pooling,
    /// Whether sentence-transformers would return unit vectors (a `Normalize` module last).
    pub normalize: bool,
}

impl Default for Modules {
    /// A folder without `modules.json`: sentence-transformers' default for a plain
    /// transformer (mean pooling, no normalisation).
    fn default() -> Self {
        Self {
            pooling: Pooling::Mean,
            normalize: false,
        }
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

impl Modules {
    /// Reads `modules.json` and its pooling module's `config.json` from `dir`. Without
    /// `modules.json`: mean pooling and no normalisation, as sentence-transformers builds a
    /// plain transformer folder.
    ///
    /// Errors: `UnsupportedModel` naming the file for a module other than Transformer,
    /// Pooling and a final Normalize (a `Dense` layer, say: it is never skipped), for several
    /// pooling modes at once or none, and for `include_prompt: false`; `Json`/`Io` for
    /// unreadable files.
    pub fn load(dir: &Path) -> Result<Self> {
        let list = dir.join("modules.json");
        if !list.exists() {
            return Ok(Self::default());
        }
        let entries: Vec<ModuleEntry> = read_json(&list)?;
        let refuse = |reason: String| EncoderError::UnsupportedModel {
            path: list.clone(),
            reason,
        };
        let mut out = Self::default();
        let mut pooled = false;
        for (i, m) in entries.iter().enumerate() {
            // sentence-transformers' own modules only: a custom class of the same name is not
            // what runs here.
            let kind = m
                .kind
                .strip_prefix("sentence_transformers.models.")
                .unwrap_or("");
            match (i, kind, pooled, out.normalize) {
                // The weights, config and tokenizer are read from the folder itself.
                (0, "Transformer", _, _) if !m.path.is_empty() => {
                    return Err(refuse(format!(
                        "module 0 (Transformer) lives in {:?}; mrl reads the transformer from \
                         the folder itself (path \"\")",
                        m.path
                    )))
                }
                (0, "Transformer", _, _) => {}
                (_, "Pooling", false, false) if i > 0 && m.path.is_empty() => {
                    return Err(refuse(format!("module {i} (Pooling) names no path")))
                }
                (_, "Pooling", false, false) if i > 0 => {
                    let path: PathBuf = dir.join(&m.path).join("config.json");
                    out.pooling = read_pooling(&path)?;
                    pooled = true;
                }
                (_, "Normalize", true, false) => out.normalize = true,
                _ => {
                    return Err(refuse(format!(
                        "module {i} ({}, path {:?}) cannot be run here: mrl runs a Transformer, \
                         then a Pooling module, then optionally Normalize, and never skips one",
                        m.kind, m.path
                    )))
                }
            }
        }
        if !pooled {
            return Err(refuse("no Pooling module after the Transformer".into()));
        }
        Ok(out)
    }
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let p: PoolingFile = read_json(path)?;
    let modes = [
        (p.pooling_mode_cls_token, Pooling::Cls),
        (p.pooling_mode_mean_tokens, Pooling::Mean),
        (p.pooling_mode_max_tokens, Pooling::Max),
        (p.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
        (p.pooling_mode_weightedmean_tokens, Pooling::WeightedMean),
        (p.pooling_mode_lasttoken, Pooling::LastToken),
    ];
    let on: Vec<Pooling> = modes.iter().filter(|(b, _)| *b).map(|(_, m)| *m).collect();
    let refuse = |reason: String| EncoderError::UnsupportedModel {
        path: path.to_path_buf(),
        reason,
    };
    if !p.include_prompt {
        return Err(refuse(
            "include_prompt: false (pooling that leaves the prompt's tokens out) is not supported"
                .into(),
        ));
    }
    match on.as_slice() {
        [one] => Ok(*one),
        [] => Err(refuse("no pooling_mode_* is set".into())),
        several => Err(refuse(format!(
            "pooling modes {} at once (their concatenation) are not supported; set one",
            several
                .iter()
                .map(|m| format!("pooling_mode_{}", m.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_pools_each_span() {
        // Three tokens then two, two dims each; and an empty span.
        let x = [1f32, 2., 3., -4., 5., 6., 7., 8., 9., 10.];
        let spans = [0..3, 3..5, 5..5];
        let pooled = |m: Pooling| m.pool(&x, 2, &spans);
        assert_eq!(
            pooled(Pooling::Mean),
            vec![vec![3., 4. / 3.], vec![8., 9.], vec![0., 0.]]
        );
        assert_eq!(pooled(Pooling::Cls)[..2], [vec![1., 2.], vec![7., 8.]]);
        assert_eq!(
            pooled(Pooling::LastToken)[..2],
            [vec![5., 6.], vec![9., 10.]]
        );
        assert_eq!(pooled(Pooling::Max)[..2], [vec![5., 6.], vec![9., 10.]]);
        let s3 = 3f32.sqrt();
        assert_eq!(pooled(Pooling::MeanSqrtLen)[0], vec![9. / s3, 4. / s3]);
        // Weights 1, 2, 3 over a total of 6.
        assert_eq!(
            pooled(Pooling::WeightedMean)[0],
            vec![(1. + 6. + 15.) / 6., (2. - 8. + 18.) / 6.]
        );
        assert_eq!(pooled(Pooling::Max)[2], vec![0., 0.]);
    }

    fn folder(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mrl-modules-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const MODULES: &str = r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn modules_json_decides_pooling_and_normalize_and_refuses_what_it_cannot_run() {
        let cls = r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}"#;
        let dir = folder(&[("modules.json", MODULES), ("1_Pooling/config.json", cls)]);
        assert_eq!(
            Modules::load(&dir).unwrap(),
            Modules {
                pooling: Pooling::Cls,
                normalize: true
            }
        );
        let two = &MODULES[..MODULES.rfind(",\n").unwrap()];
        let dir = folder(&[
            ("modules.json", &format!("{two}]")),
            ("1_Pooling/config.json", cls),
        ]);
        assert!(!Modules::load(&dir).unwrap().normalize);

        let dense = MODULES.replace(
            r#""path": "2_Normalize", "type": "sentence_transformers.models.Normalize""#,
            r#""path": "2_Dense", "type": "sentence_transformers.models.Dense""#,
        );
        let dir = folder(&[("modules.json", &dense), ("1_Pooling/config.json", cls)]);
        let e = Modules::load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("sentence_transformers.models.Dense") && e.contains("2_Dense"),
            "{e}"
        );

        let both = r#"{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#;
        let dir = folder(&[("modules.json", MODULES), ("1_Pooling/config.json", both)]);
        let e = Modules::load(&dir).unwrap_err().to_string();
        assert!(
            e.contains("pooling_mode_cls_token, pooling_mode_max_tokens"),
            "{e}"
        );

        let no_prompt = r#"{"pooling_mode_mean_tokens": true, "include_prompt": false}"#;
        let dir = folder(&[
            ("modules.json", MODULES),
            ("1_Pooling/config.json", no_prompt),
        ]);
        assert!(Modules::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("include_prompt"));

        // Without modules.json sentence-transformers builds mean pooling, whatever else is there.
        let last = r#"{"pooling_mode_lasttoken": true}"#;
        let dir = folder(&[("1_Pooling/config.json", last)]);
        assert_eq!(Modules::load(&dir).unwrap(), Modules::default());

        let moved = MODULES.replace(r#""path": "", "#, r#""path": "0_Transformer", "#);
        let dir = folder(&[("modules.json", &moved), ("1_Pooling/config.json", cls)]);
        assert!(Modules::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("0_Transformer"));
        let custom = MODULES.replace("sentence_transformers.models.Normalize", "mine.Normalize");
        let dir = folder(&[("modules.json", &custom), ("1_Pooling/config.json", cls)]);
        assert!(Modules::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("mine.Normalize"));
    }
}
