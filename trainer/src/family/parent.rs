//! The frozen parent of the heads recipe: its encoder and manifest, the profiles the family
//! carries, their cached vectors of every split and guard, and the checkpoint it writes.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use mrl_encoder::manifest::{Manifest, COST_SEQ_LEN};
use mrl_encoder::{BertConfig, Embedder, Profile};

use super::recipe::{BeirSplit, FamilyConfig, GuardRow, ReportRow, RotationFit};
use super::run::Heads;
use super::sets::{held, Cached, Guard, Split};
use crate::data::BeirDataset;
use crate::eval::{embed_cached, EmbeddingCache};
use crate::{Result, TrainerError};

/// The frozen parent: its encoder and manifest, and the profiles the family carries.
pub(crate) struct Parent {
    pub(crate) embedder: Embedder,
    manifest: Manifest,
    bert: BertConfig,
    pub(crate) hidden: usize,
    /// The widest nested dim: the heads' rows.
    pub(crate) width: usize,
    /// `full` first, then the recipe's sub-encoders in its order.
    pub(crate) profiles: Vec<(String, Profile)>,
}

impl Parent {
    /// Loads the calibrated parent `dir` and the sub-encoders named in `subs`.
    ///
    /// Errors: the encoder's load errors, or `Invalid` when the parent is not calibrated,
    /// lacks a named profile, or is wider than the widest nested dim or than a sub-encoder.
    pub(crate) fn load(dir: &Path, nested_dims: &[usize], subs: &[String]) -> Result<Self> {
        let embedder = Embedder::load(dir)?;
        let manifest = embedder.manifest().cloned().ok_or_else(|| {
            TrainerError::Invalid(format!(
                "{} has no mrl.json: calibrate it first (mrl calibrate)",
                dir.display()
            ))
        })?;
        let bert = embedder.config().clone();
        let hidden = bert.hidden_size;
        let width = nested_dims.iter().copied().max().unwrap_or(0);
        if width < hidden {
            return Err(TrainerError::Invalid(format!(
                "the widest nested dim {width} is below the parent's width {hidden}"
            )));
        }
        let mut profiles: Vec<(String, Profile)> = vec![("full".into(), Profile::full(&bert))];
        for name in subs {
            let p = manifest.profile(name).ok_or_else(|| {
                TrainerError::Invalid(format!("the parent has no profile {name:?}"))
            })?;
            if p.profile.hidden != hidden {
                return Err(TrainerError::Invalid(format!(
                    "profile {name:?} is {} wide; a head maps the parent's width {hidden}",
                    p.profile.hidden
                )));
            }
            profiles.push((name.clone(), p.profile.clone()));
        }
        Ok(Self {
            embedder,
            manifest,
            bert,
            hidden,
            width,
            profiles,
        })
    }

    /// Every profile's pooled vectors of `a` and of `b`, through the cache; `what` names
    /// the texts in the progress message.
    pub(crate) fn embed(
        &self,
        what: &str,
        (a, b): (&[String], &[String]),
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<HashMap<String, Cached>> {
        let mut vectors = HashMap::new();
        for (pname, profile) in &self.profiles {
            progress.set_message(format!("embedding {what} ({pname})"));
            let va = embed_cached(&self.embedder, a, None, profile, Some(cache), progress)?;
            let vb = embed_cached(&self.embedder, b, None, profile, Some(cache), progress)?;
            vectors.insert(pname.clone(), (va, vb));
        }
        Ok(vectors)
    }

    /// The training sources, then the dev splits, each with its cached vectors.
    ///
    /// Errors: `Invalid` for a test split, or the data's and the encoder's errors.
    pub(super) fn splits(
        &self,
        cfg: &FamilyConfig,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Vec<Split>> {
        let sets = cfg
            .sources
            .iter()
            .map(|s| (s, true))
            .chain(cfg.dev.iter().map(|s| (s, false)));
        sets.map(|(src, train)| self.split(cfg, src, train, cache, progress))
            .collect()
    }

    /// One split with its cached vectors; a training split holds out every `holdout`-th
    /// query, a dev split all of them.
    pub(super) fn split(
        &self,
        cfg: &FamilyConfig,
        src: &BeirSplit,
        train: bool,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Split> {
        if src.split == "test" {
            return Err(TrainerError::Invalid("never fit on a test split".into()));
        }
        let data = BeirDataset::load(&src.dir, &src.split)?;
        let dir_name = src.dir.file_name().map_or_else(
            || src.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let name = format!("{dir_name}/{}", src.split);
        let corpus: Vec<String> = data.corpus.iter().map(|d| d.text.clone()).collect();
        let queries: Vec<String> = data.queries.iter().map(|d| d.text.clone()).collect();
        let vectors = self.embed(&name, (&corpus, &queries), cache, progress)?;
        let held_out: HashSet<usize> = (0..data.queries.len())
            .filter(|&i| !train || held(&data.queries[i].id, cfg.seed, cfg.holdout))
            .collect();
        Ok(Split {
            name: if train {
                format!("{name} held-out")
            } else {
                name
            },
            data,
            vectors,
            held_out,
            weight: if train { src.weight } else { 0.0 },
        })
    }

    /// The out-of-domain guards with their cached vectors.
    ///
    /// Errors: the guard files' and the encoder's errors.
    pub(super) fn guards(
        &self,
        cfg: &FamilyConfig,
        cache: &EmbeddingCache,
        progress: &ProgressBar,
    ) -> Result<Vec<Guard>> {
        let mut guards = Vec::new();
        for path in &cfg.guards {
            let pairs = crate::data::sts_scored(path)?;
            let (a, b): (Vec<String>, Vec<String>) =
                pairs.iter().map(|p| (p.a.clone(), p.b.clone())).unzip();
            let what = path.display().to_string();
            let vectors = self.embed(&what, (&a, &b), cache, progress)?;
            guards.push(Guard {
                name: path.display().to_string(),
                scores: pairs.iter().map(|p| p.score).collect(),
                vectors,
            });
        }
        Ok(guards)
    }

    /// The checkpoint, `OUT/model`: the parent's weights with `head.*` and `heads.NAME.*`;
    /// no sub-encoder is declared aligned with `full` until `judge` finds it earned. A
    /// previous `OUT/model` is replaced.
    pub(super) fn write_model(
        &self,
        cfg: &FamilyConfig,
        heads: &Heads,
        report: &[ReportRow],
        guard_rows: &[GuardRow],
    ) -> Result<()> {
        let subs: Vec<(String, Vec<f32>)> = self
            .profiles
            .iter()
            .skip(1)
            .map(|(n, _)| (n.clone(), heads.head_of(n)))
            .collect();
        self.write_heads(
            &cfg.parent,
            &cfg.out.join("model"),
            &cfg.nested_dims,
            &heads.shared,
            &subs,
            self.provenance(cfg, heads, report, guard_rows),
        )
    }

    /// Writes a checkpoint to `model_dir` (replaced if present): the parent's weights (read
    /// from `parent_dir`) with the shared head `shared` (`width × hidden`, row-major), each
    /// sub-encoder's own head, and the layer bridges each sub-encoder runs in the parent now
    /// (`bridges.NAME.LAYER.*`; those its heads were fitted through, in place of any the
    /// file had); a bridged profile's params and relative FLOPs count its bridges and its
    /// fidelity (measured without them) is dropped. The manifest keeps the
    /// parent's ranking and the budgets of the profiles carried (the calibration's, before
    /// bridges), and declares no alignment (alignment is earned on dev sets by `judge`,
    /// never declared by a fit).
    ///
    /// Errors: `Io` and the tensors' errors.
    pub(crate) fn write_heads(
        &self,
        parent_dir: &Path,
        model_dir: &Path,
        nested_dims: &[usize],
        shared: &[f32],
        subs: &[(String, Vec<f32>)],
        provenance: serde_json::Value,
    ) -> Result<()> {
        let (width, hidden, bert) = (self.width, self.hidden, &self.bert);
        let mut tensors =
            candle_core::safetensors::load(parent_dir.join("model.safetensors"), &Device::Cpu)?;
        // The bridges written are the ones the parent runs now (below), whatever the file had.
        tensors.retain(|k, _| !k.starts_with("bridges."));
        let zeros = Tensor::zeros(width, DType::F32, &Device::Cpu)?;
        let put = |t: &mut HashMap<String, Tensor>, name: &str, w: Vec<f32>| -> Result<()> {
            t.insert(
                format!("{name}.weight"),
                Tensor::from_vec(w, (width, hidden), &Device::Cpu)?,
            );
            t.insert(format!("{name}.bias"), zeros.clone());
            Ok(())
        };
        put(&mut tensors, "head", shared.to_vec())?;
        let mut named = vec![crate::calibrate::named(
            "full".into(),
            Profile::full(bert),
            bert,
            None,
        )];
        for (pname, head) in subs {
            let profile = self
                .profiles
                .iter()
                .find(|(n, _)| n == pname)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| TrainerError::Invalid(format!("no profile {pname:?}")))?;
            put(&mut tensors, &format!("heads.{pname}"), head.clone())?;
            let mut p = crate::calibrate::named(pname.clone(), profile, bert, None);
            p.fidelity = self.manifest.profile(pname).and_then(|q| q.fidelity);
            p.head = Some(pname.clone());
            // Its own layers stay in the weights and are what the head was fitted through.
            p.own_layers = self
                .manifest
                .profile(pname)
                .and_then(|q| q.own_layers.clone());
            let list = self.embedder.model().bridges_of(&p.profile);
            if !list.is_empty() {
                p.params += list.len() * (hidden * hidden + hidden);
                for b in list {
                    let name = format!("bridges.{pname}.{}", b.after);
                    let w = Tensor::from_vec(b.weight, (hidden, hidden), &Device::Cpu)?;
                    tensors.insert(format!("{name}.weight"), w);
                    let bias = Tensor::from_vec(b.bias, hidden, &Device::Cpu)?;
                    tensors.insert(format!("{name}.bias"), bias);
                }
                p.relative_flops = self
                    .embedder
                    .model()
                    .relative_flops(&p.profile, COST_SEQ_LEN);
                p.bridges = Some(pname.clone());
                p.fidelity = None;
            }
            named.push(p);
        }
        let out_manifest = Manifest {
            nested_dims: nested_dims.to_vec(),
            profiles: named,
            budgets: self
                .manifest
                .budgets
                .iter()
                .filter(|b| subs.iter().any(|(n, _)| *n == b.profile))
                .cloned()
                .collect(),
            provenance,
            ..self.manifest.clone()
        };
        if model_dir.exists() {
            std::fs::remove_dir_all(model_dir).map_err(|e| TrainerError::io(model_dir, e))?;
        }
        crate::calibrate::write_checkpoint(parent_dir, model_dir, &tensors, &out_manifest)
    }

    /// The checkpoint's provenance: how it was fitted, the chosen steps and what the held-out
    /// sets and guards found.
    pub(super) fn provenance(
        &self,
        cfg: &FamilyConfig,
        heads: &Heads,
        report: &[ReportRow],
        guard_rows: &[GuardRow],
    ) -> serde_json::Value {
        serde_json::json!({
            "trained_from": cfg.parent,
            "method": format!("frozen parent; Matryoshka head from the rotation fitted on the training {}, then InfoNCE on cached embeddings; sub-encoder heads by least squares onto the full profile", match cfg.head.rotation { RotationFit::Documents => "corpora's principal axes", RotationFit::Qrels => "pairs' cross-products" }),
            "chosen_step": heads.chosen_step,
            "chosen_steps": heads.subs.iter().map(|(n, _, s)| (n.clone(), *s)).collect::<HashMap<_, _>>(),
            "widest_zeroed": heads.zeroed,
            "recipe": cfg,
            "held_out": report,
            "guards": guard_rows,
            "parent_provenance": self.manifest.provenance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::linalg::apply;
    use crate::router::Rng;

    /// A profile bound to `heads.NAME` goes through that head; others through `head`.
    #[test]
    fn a_bound_profile_head_replaces_the_shared_one_for_that_profile_only() {
        use crate::importance::tests::{tiny_config, tiny_seqs, tiny_tensors};
        let cfg = tiny_config();
        let h = cfg.hidden_size;
        let plain = mrl_encoder::BertModel::from_tensors(tiny_tensors(&cfg, 5), &cfg).unwrap();
        let small = Profile::first_layers(&cfg, 2).unwrap();
        let full = Profile::full(&cfg);
        let seqs = tiny_seqs();
        let rows: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let mut rng = Rng::new(9);
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.uniform() - 0.5) as f32).collect() };
        let (shared, own) = (rand(2 * h * h), rand(2 * h * h));
        let mut t = tiny_tensors(&cfg, 5);
        for (name, w) in [("head", &shared), ("heads.small", &own)] {
            t.insert(
                format!("{name}.weight"),
                Tensor::from_vec(w.clone(), (2 * h, h), &Device::Cpu).unwrap(),
            );
            t.insert(
                format!("{name}.bias"),
                Tensor::zeros(2 * h, DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let mut headed = mrl_encoder::BertModel::from_tensors(t, &cfg).unwrap();
        assert!(headed.bind_profile_head("nope", &small).is_err());
        headed.bind_profile_head("small", &small).unwrap();
        for (profile, w) in [(&small, &own), (&full, &shared)] {
            let want = apply(w, 2 * h, &plain.forward(&rows, profile).unwrap());
            let got = headed.forward(&rows, profile).unwrap();
            assert_eq!(headed.output_width(profile), 2 * h);
            for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }
}
