//! One run's head fits: the shared head, then each sub-encoder's, each judged on the held-out
//! sets and guards, and the report of the chosen heads against their starts and the plain
//! parent.

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use mrl_encoder::Profile;

use super::fit::{ndcg, Fit, TIE};
use super::head::Check;
use super::linalg::{apply, matmul};
use super::recipe::{GuardRow, ReportRow};
use super::sets::Split;
use crate::data::Qrels;
use crate::metrics::MetricsLog;
use crate::Result;

/// The fitted heads with their starts, as the report and the checkpoint read them.
pub(super) struct Heads {
    /// The shared head's start: the rotation and the extra rows.
    w0: Vec<f32>,
    /// Each sub-encoder's closed-form map onto the full profile.
    pub(super) maps: Vec<(String, Vec<f32>)>,
    /// The chosen shared head.
    pub(super) shared: Vec<f32>,
    pub(super) chosen_step: usize,
    /// Each sub-encoder's chosen head and its step.
    pub(super) subs: Vec<(String, Vec<f32>, usize)>,
    /// The profiles whose rows past the parent's width were zeroed.
    pub(super) zeroed: Vec<String>,
    pub(super) width: usize,
    pub(super) hidden: usize,
}

impl Heads {
    /// The rotation baseline of a sub-encoder: the rotation after its closed-form map.
    pub(super) fn rotation_of(&self, name: &str) -> Vec<f32> {
        match self.maps.iter().find(|(n, _)| n == name) {
            Some((_, m)) => matmul(&self.w0, self.width, m, self.hidden),
            None => self.w0.clone(),
        }
    }

    /// The chosen head of profile `name` (the shared one for `full`).
    pub(super) fn head_of(&self, name: &str) -> Vec<f32> {
        match self.subs.iter().find(|(n, _, _)| n == name) {
            Some((_, h, _)) => h.clone(),
            None => self.shared.clone(),
        }
    }
}

/// The head fits of one run and what judges them: the shared context, the profiles, the
/// log, and where the parent's width and the widest size sit among the nested dims.
pub(super) struct FamilyRun<'a> {
    pub(super) fit: Fit<'a>,
    pub(super) profiles: &'a [(String, Profile)],
    /// The held-out sets' names, as the log names them.
    pub(super) names: Vec<&'a str>,
    pub(super) log: MetricsLog,
    pub(super) full_at: usize,
    pub(super) widest_at: usize,
}

impl<'a> FamilyRun<'a> {
    /// A run over `fit`'s splits that logs to `log`.
    pub(super) fn new(fit: Fit<'a>, profiles: &'a [(String, Profile)], log: MetricsLog) -> Self {
        let splits: &'a [Split] = fit.splits;
        let names = splits.iter().map(|s| s.name.as_str()).collect();
        let dims = &fit.cfg.nested_dims;
        let full_at = dims
            .iter()
            .position(|&d| d == fit.hidden)
            .unwrap_or(dims.len() - 1);
        let widest_at = dims
            .iter()
            .position(|&d| d == fit.width)
            .unwrap_or(dims.len() - 1);
        Self {
            fit,
            profiles,
            names,
            log,
            full_at,
            widest_at,
        }
    }

    /// The shared head from `w0`, then each sub-encoder's from the shared head after its map.
    pub(super) fn fit_heads(
        &mut self,
        w0: Vec<f32>,
        maps: Vec<(String, Vec<f32>)>,
        progress: &ProgressBar,
    ) -> Result<Heads> {
        let (width, hidden) = (self.fit.width, self.fit.hidden);
        let (chosen_step, shared, full_zeroed) = self.fit_shared(&w0, progress)?;
        let mut zeroed = Vec::new();
        if full_zeroed {
            zeroed.push("full".to_string());
        }
        let mut subs: Vec<(String, Vec<f32>, usize)> = Vec::new();
        let fixed = Tensor::from_vec(shared.clone(), (width, hidden), &Device::Cpu)?;
        for (pname, map) in &maps {
            let (step, head, sub_zeroed) = self.fit_sub(pname, map, &shared, &fixed, progress)?;
            if sub_zeroed {
                zeroed.push(pname.clone());
            }
            subs.push((pname.clone(), head, step));
        }
        Ok(Heads {
            w0,
            maps,
            shared,
            chosen_step,
            subs,
            zeroed,
            width,
            hidden,
        })
    }

    /// The shared head: its chosen step, its weights, and whether its rows past the parent's
    /// width were zeroed (`drop_unearned_width`).
    pub(super) fn fit_shared(
        &mut self,
        w0: &[f32],
        progress: &ProgressBar,
    ) -> Result<(usize, Vec<f32>, bool)> {
        let (ctx, full_at) = (&self.fit, self.full_at);
        let log = &mut self.log;
        // The shared head: NDCG@10 of the full profile at every nested dim on every held-out
        // set; a check whose full width falls below the parent's anywhere is not eligible.
        let baseline = ctx.scores("full", "full", w0, w0)?;
        let guard0 = ctx.guard_scores("full", w0)?;
        let (chosen_step, mut w) = ctx.train(
            "head",
            w0,
            progress,
            |w, rng| ctx.shared_loss(w, rng),
            |w| {
                let scores = ctx.scores("full", "full", w, w)?;
                let guard = ctx.guard_scores("full", w)?;
                let kept = scores
                    .iter()
                    .zip(&baseline)
                    .all(|(s, b)| s[full_at..].iter().all(|&x| x >= b[full_at] - TIE))
                    && ctx.within_guard(&guard, &guard0);
                Ok(Check {
                    scores,
                    guard,
                    eligible: kept,
                })
            },
            &mut |line| log.write(&line),
            &self.names,
        )?;
        let full_scores = ctx.scores("full", "full", &w, &w)?;
        let zeroed = drop_unearned_width(&mut w, &full_scores, full_at, self.widest_at, ctx.hidden);
        Ok((chosen_step, w, zeroed))
    }

    /// Sub-encoder `pname`'s head: from the closed-form map, trained so that its queries find
    /// full-profile documents (the shared head, fixed) and its own documents. Returns its
    /// chosen step, its weights, and whether its rows past the parent's width were zeroed.
    pub(super) fn fit_sub(
        &mut self,
        pname: &str,
        map: &[f32],
        shared: &[f32],
        fixed: &Tensor,
        progress: &ProgressBar,
    ) -> Result<(usize, Vec<f32>, bool)> {
        let ctx = &self.fit;
        let log = &mut self.log;
        let init = matmul(shared, ctx.width, map, ctx.hidden);
        let sub_guard0 = ctx.guard_scores(pname, &init)?;
        let (step, mut head) = ctx.train(
            &format!("heads.{pname}"),
            &init,
            progress,
            |wp, rng| ctx.sub_loss(pname, fixed, wp, rng),
            |wp| {
                let asym = ctx.scores(pname, "full", wp, shared)?;
                let sym = ctx.scores(pname, pname, wp, wp)?;
                let guard = ctx.guard_scores(pname, wp)?;
                let eligible = ctx.within_guard(&guard, &sub_guard0);
                Ok(Check {
                    scores: [asym, sym].concat(),
                    guard,
                    eligible,
                })
            },
            &mut |line| log.write(&line),
            &self.names,
        )?;
        // Judged on what the head is for: its queries on full documents and on its own.
        let both = [
            ctx.scores(pname, "full", &head, shared)?,
            ctx.scores(pname, pname, &head, &head)?,
        ]
        .concat();
        let zeroed =
            drop_unearned_width(&mut head, &both, self.full_at, self.widest_at, ctx.hidden);
        Ok((step, head, zeroed))
    }

    /// The report: every profile, symmetric and as a query encoder against full documents.
    pub(super) fn report(&self, heads: &Heads) -> Result<Vec<ReportRow>> {
        let mut report = Vec::new();
        for (s, qrels) in self.fit.splits.iter().zip(self.fit.held_qrels) {
            for (pname, _) in self.profiles {
                let pairs_of: Vec<&str> = if pname == "full" {
                    vec!["full"]
                } else {
                    vec![pname.as_str(), "full"]
                };
                for doc_profile in pairs_of {
                    self.report_pair(heads, s, qrels, pname, doc_profile, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// The report's rows of `query_profile`'s queries against `doc_profile`'s documents on
    /// split `s`, one per nested dim.
    pub(super) fn report_pair(
        &self,
        heads: &Heads,
        s: &Split,
        qrels: &Qrels,
        query_profile: &str,
        doc_profile: &str,
        report: &mut Vec<ReportRow>,
    ) -> Result<()> {
        let (width, hidden) = (self.fit.width, self.fit.hidden);
        let q_raw = &s.vectors[query_profile].1;
        let d_raw = &s.vectors[doc_profile].0;
        let (q, d) = (
            apply(&heads.head_of(query_profile), width, q_raw),
            apply(&heads.head_of(doc_profile), width, d_raw),
        );
        let (q0, d0) = (
            apply(&heads.rotation_of(query_profile), width, q_raw),
            apply(&heads.rotation_of(doc_profile), width, d_raw),
        );
        for &dim in &self.fit.cfg.nested_dims {
            report.push(ReportRow {
                set: s.name.clone(),
                profile: doc_profile.to_string(),
                query_profile: query_profile.to_string(),
                dim,
                ndcg_at_10: ndcg(s, qrels, &q, &d, dim)?,
                rotation_ndcg_at_10: ndcg(s, qrels, &q0, &d0, dim)?,
                plain_ndcg_at_10: if dim <= hidden {
                    ndcg(s, qrels, q_raw, d_raw, dim)?
                } else {
                    f64::NAN
                },
            });
        }
        Ok(())
    }

    /// Out-of-domain guards: the chosen heads, their starts, the plain prefix.
    pub(super) fn guard_rows(&self, heads: &Heads) -> Result<Vec<GuardRow>> {
        let (ctx, width, hidden) = (&self.fit, self.fit.width, self.fit.hidden);
        let mut plain_head = vec![0f32; width * hidden];
        for i in 0..hidden {
            plain_head[i * hidden + i] = 1.0;
        }
        let mut guard_rows = Vec::new();
        for (pname, _) in self.profiles {
            let chosen = ctx.guard_scores(pname, &heads.head_of(pname))?;
            let start = ctx.guard_scores(pname, &heads.rotation_of(pname))?;
            let plain = ctx.guard_scores(pname, &plain_head)?;
            for (gi, g) in ctx.guards.iter().enumerate() {
                for (di, &dim) in ctx.cfg.nested_dims.iter().enumerate() {
                    guard_rows.push(GuardRow {
                        guard: g.name.clone(),
                        profile: pname.clone(),
                        dim,
                        spearman: chosen[gi][di],
                        rotation_spearman: start[gi][di],
                        plain_spearman: if dim <= hidden {
                            plain[gi][di]
                        } else {
                            f64::NAN
                        },
                    });
                }
            }
        }
        Ok(guard_rows)
    }
}

/// Width past the parent's must earn its place: when the widest size scores below the
/// parent's width on any held-out set (`scores[set][dim]`), the rows past `hidden` are
/// zeroed, so the widest size then ranks exactly as the parent's width does. Returns
/// whether it zeroed them.
pub(super) fn drop_unearned_width(
    w: &mut [f32],
    scores: &[Vec<f64>],
    full_at: usize,
    widest_at: usize,
    hidden: usize,
) -> bool {
    if widest_at == full_at || scores.iter().all(|s| s[widest_at] >= s[full_at]) {
        return false;
    }
    w[hidden * hidden..].fill(0.0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::linalg::prefix_cosine;

    #[test]
    fn the_widest_size_is_zeroed_unless_it_beats_the_parents_width_everywhere() {
        // 3 rows of width 2: one extra row past the parent's width (hidden = 2).
        let head = vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
        let (full_at, widest_at) = (0, 1);
        let mut w = head.clone();
        let earned = [vec![0.30, 0.31], vec![0.50, 0.50]];
        assert!(!drop_unearned_width(&mut w, &earned, full_at, widest_at, 2));
        assert_eq!(w, head);
        let lost_once = [vec![0.30, 0.31], vec![0.50, 0.49]];
        assert!(drop_unearned_width(
            &mut w, &lost_once, full_at, widest_at, 2
        ));
        assert_eq!(w, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        // Zeroed rows leave every cosine at the widest size equal to the parent's width's.
        let (a, b) = (
            apply(&w, 3, &[vec![0.3, 0.9]]),
            apply(&w, 3, &[vec![0.7, -0.2]]),
        );
        let (c2, c3) = (
            prefix_cosine(&a[0], &b[0], 2),
            prefix_cosine(&a[0], &b[0], 3),
        );
        assert!((c2 - c3).abs() < 1e-12, "{c2} vs {c3}");
        // No width past the parent's: nothing to judge.
        let mut same = head.clone();
        assert!(!drop_unearned_width(&mut same, &lost_once, 1, 1, 2));
    }
}
