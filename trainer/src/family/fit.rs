//! What the head fits share: sampling batches from the training pairs, the shared head's and
//! the sub-encoders' losses, and the checks' scores (NDCG@10 on held-out sets, Spearman's ρ
//! on the guards).

use std::collections::HashSet;

use candle_core::Tensor;
use indicatif::ProgressBar;

use super::head::{Check, HeadRun, Resume};
use super::linalg::{apply, matrix, prefix_cosine, unit_rows};
use super::recipe::FamilyConfig;
use super::sets::{Guard, Split};
use crate::data::Qrels;
use crate::eval::{exact_run_metrics, spearman};
use crate::loss::{matryoshka_info_nce, normalize_rows, similarity_distillation};
use crate::router::Rng;
use crate::{Result, TrainerError};

/// NDCG@10 differences below this are float noise in tie order (an orthogonal head computes
/// the parent's cosines up to rounding), not a loss.
pub(super) const TIE: f64 = 1e-4;
/// NDCG@10 of `queries` against `docs` (already through their heads) at `dim`.
pub(super) fn ndcg(
    split: &Split,
    qrels: &Qrels,
    q: &[Vec<f32>],
    d: &[Vec<f32>],
    dim: usize,
) -> Result<f64> {
    let keep: Vec<usize> = (0..split.data.queries.len())
        .filter(|&i| qrels.contains_key(&split.data.queries[i].id))
        .collect();
    let qids: Vec<&str> = keep
        .iter()
        .map(|&i| split.data.queries[i].id.as_str())
        .collect();
    let qv: Vec<Vec<f32>> = keep.iter().map(|&i| q[i].clone()).collect();
    let dids: Vec<&str> = split.data.corpus.iter().map(|x| x.id.as_str()).collect();
    Ok(exact_run_metrics(&qids, &qv, &dids, d, dim, qrels)?.ndcg_at_10)
}

/// Unit-length rows `picked` of `from` as a `[n, d]` tensor.
pub(super) fn rows(from: &[Vec<f32>], picked: impl Iterator<Item = usize>) -> Result<Tensor> {
    let r: Vec<Vec<f32>> = picked.map(|i| from[i].clone()).collect();
    matrix(&unit_rows(&r))
}

/// What the head fits share: the recipe, the cached splits, their training pairs.
pub(super) struct Fit<'a> {
    pub(super) cfg: &'a FamilyConfig,
    pub(super) splits: &'a [Split],
    pub(super) guards: &'a [Guard],
    pub(super) pairs: &'a [Vec<(usize, usize)>],
    pub(super) held_qrels: &'a [Qrels],
    pub(super) width: usize,
    pub(super) hidden: usize,
    pub(super) resume: &'a Resume,
}

impl Fit<'_> {
    /// A batch of (query, document) index pairs from one training split (drawn by weight, so
    /// in-batch negatives share a corpus), no query or document twice.
    pub(super) fn sample(&self, rng: &mut Rng) -> Option<(&Split, Vec<(usize, usize)>)> {
        let total: f64 = self.splits.iter().map(|s| s.weight).sum();
        let mut u = rng.uniform() * total;
        let si = self.splits.iter().position(|s| {
            u -= s.weight;
            u < 0.0 && s.weight > 0.0
        })?;
        let p = &self.pairs[si];
        let (mut seen, mut asked, mut batch) = (HashSet::new(), HashSet::new(), Vec::new());
        for _ in 0..self.cfg.head.batch * 4 {
            if batch.len() == self.cfg.head.batch || p.is_empty() {
                break;
            }
            let (qi, di) = p[(rng.next_u64() % p.len() as u64) as usize];
            // A document (or a query) twice in a batch would be its own negative.
            if !seen.contains(&di) && asked.insert(qi) {
                seen.insert(di);
                batch.push((qi, di));
            }
        }
        (batch.len() >= 2).then_some((&self.splits[si], batch))
    }

    /// Matryoshka InfoNCE over the recipe's dims.
    pub(super) fn nce(&self, q: &Tensor, d: &Tensor) -> Result<Tensor> {
        Ok(matryoshka_info_nce(
            q,
            d,
            &self.cfg.nested_dims,
            &self.cfg.dim_weights,
            self.cfg.head.temperature,
        )?)
    }

    /// `1 − cos` between each row of `student` and of the (detached) `teacher` on every
    /// nested prefix, averaged with the recipe's dim weights.
    pub(super) fn cosine_distance(&self, student: &Tensor, teacher: &Tensor) -> Result<Tensor> {
        let total: f64 = self.cfg.dim_weights.iter().sum();
        let mut sum: Option<Tensor> = None;
        for (&dim, &w) in self.cfg.nested_dims.iter().zip(&self.cfg.dim_weights) {
            let s = normalize_rows(&student.narrow(1, 0, dim)?)?;
            let t = normalize_rows(&teacher.narrow(1, 0, dim)?.detach())?;
            let cos = (s * t)?.sum(1)?.mean_all()?;
            let term = ((cos.neg()? + 1.0)? * (w / total))?;
            sum = Some(match sum {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        sum.ok_or_else(|| TrainerError::Invalid("no nested dims".into()))
    }

    /// NDCG@10 per held-out set × nested dim: queries by `query_profile` through `wq`,
    /// documents by `doc_profile` through `wd`.
    pub(super) fn scores(
        &self,
        query_profile: &str,
        doc_profile: &str,
        wq: &[f32],
        wd: &[f32],
    ) -> Result<Vec<Vec<f64>>> {
        self.splits
            .iter()
            .zip(self.held_qrels)
            .map(|(s, qrels)| {
                let q = apply(wq, self.width, &s.vectors[query_profile].1);
                let d = apply(wd, self.width, &s.vectors[doc_profile].0);
                self.cfg
                    .nested_dims
                    .iter()
                    .map(|&dim| ndcg(s, qrels, &q, &d, dim))
                    .collect()
            })
            .collect()
    }

    /// Spearman's ρ per guard × nested dim of `profile`'s pairs through `w`.
    pub(super) fn guard_scores(&self, profile: &str, w: &[f32]) -> Result<Vec<Vec<f64>>> {
        self.guards
            .iter()
            .map(|g| {
                let (a, b) = &g.vectors[profile];
                let (a, b) = (apply(w, self.width, a), apply(w, self.width, b));
                Ok(self
                    .cfg
                    .nested_dims
                    .iter()
                    .map(|&dim| {
                        let pairs: Vec<(f64, f64)> = a
                            .iter()
                            .zip(&b)
                            .zip(&g.scores)
                            .map(|((x, y), &s)| (prefix_cosine(x, y, dim), s))
                            .collect();
                        spearman(&pairs)
                    })
                    .collect())
            })
            .collect()
    }

    /// Whether every guard at every dim is within the tolerance of the start's (always, when
    /// no tolerance is set).
    pub(super) fn within_guard(&self, guard: &[Vec<f64>], start: &[Vec<f64>]) -> bool {
        let Some(tolerance) = self.cfg.guard_tolerance else {
            return true;
        };
        let slack = tolerance + TIE;
        guard
            .iter()
            .flatten()
            .zip(start.iter().flatten())
            .all(|(g, g0)| *g >= g0 - slack)
    }

    /// The shared head's loss on one batch through `w`: InfoNCE of the full profile's
    /// queries on its documents, plus the anchor to the parent's in-batch similarities.
    pub(super) fn shared_loss(&self, w: &Tensor, rng: &mut Rng) -> Result<Option<Tensor>> {
        let (cfg, hidden) = (self.cfg, self.hidden);
        let Some((s, batch)) = self.sample(rng) else {
            return Ok(None);
        };
        let (docs, queries) = &s.vectors["full"];
        let q = rows(queries, batch.iter().map(|b| b.0))?;
        let d = rows(docs, batch.iter().map(|b| b.1))?;
        let wt = w.t()?;
        let (qo, d_out) = (q.matmul(&wt)?, d.matmul(&wt)?);
        let mut loss = self.nce(&qo, &d_out)?;
        if cfg.head.anchor_weight > 0.0 {
            let parent = Tensor::cat(&[&q, &d], 0)?;
            let out = Tensor::cat(&[&qo, &d_out], 0)?;
            let t = cfg.head.temperature;
            let anchor = (similarity_distillation(&out.narrow(1, 0, hidden)?, &parent, t)?
                + similarity_distillation(&out, &parent, t)?)?;
            loss = (loss + (anchor * cfg.head.anchor_weight)?)?;
        }
        Ok(Some(loss))
    }

    /// Sub-encoder `pname`'s loss on one batch through `wp`: InfoNCE of its queries on the
    /// full profile's documents (through the shared head `fixed`) and on its own, plus the
    /// distillation toward the full profile.
    pub(super) fn sub_loss(
        &self,
        pname: &str,
        fixed: &Tensor,
        wp: &Tensor,
        rng: &mut Rng,
    ) -> Result<Option<Tensor>> {
        let Some((s, batch)) = self.sample(rng) else {
            return Ok(None);
        };
        let (sub_docs, sub_queries) = &s.vectors[pname];
        let full_docs = &s.vectors["full"].0;
        let full_queries = &s.vectors["full"].1;
        let q = rows(sub_queries, batch.iter().map(|b| b.0))?.matmul(&wp.t()?)?;
        let df = rows(full_docs, batch.iter().map(|b| b.1))?.matmul(&fixed.t()?)?;
        let ds = rows(sub_docs, batch.iter().map(|b| b.1))?.matmul(&wp.t()?)?;
        let mut loss = (self.nce(&q, &df)? + self.nce(&q, &ds)?)?;
        if self.cfg.head.anchor_weight > 0.0 {
            // Distillation: each text's vector toward the full profile's own.
            let qf = rows(full_queries, batch.iter().map(|b| b.0))?.matmul(&fixed.t()?)?;
            let student = Tensor::cat(&[&q, &ds], 0)?;
            let teacher = Tensor::cat(&[&qf, &df], 0)?;
            let distill = self.cosine_distance(&student, &teacher)?;
            loss = (loss + (distill * self.cfg.head.anchor_weight)?)?;
        }
        Ok(Some(loss))
    }

    /// AdamW on `loss(W, rng)` from `init` (`width × hidden`, row-major), checked at step 0,
    /// every `eval_every` steps and at the end by `check(W)`; returns the eligible check with
    /// the best mean score (step 0 when none beats it) and logs each check as a JSON line.
    /// Resumes from the recipe's saved state at the last check (`Resume`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn train(
        &self,
        name: &str,
        init: &[f32],
        progress: &ProgressBar,
        loss: impl FnMut(&Tensor, &mut Rng) -> Result<Option<Tensor>>,
        check: impl FnMut(&[f32]) -> Result<Check>,
        log: &mut dyn FnMut(serde_json::Value) -> Result<()>,
        sets: &[&str],
    ) -> Result<(usize, Vec<f32>)> {
        let run = HeadRun {
            name,
            hp: self.cfg.head.schedule(),
            seed: self.cfg.seed,
            shape: (self.width, self.hidden),
            dims: &self.cfg.nested_dims,
            resume: self.resume,
            metric: "ndcg_at_10",
            orthogonal: false,
        };
        run.fit(init, progress, loss, check, log, sets)
    }
}
