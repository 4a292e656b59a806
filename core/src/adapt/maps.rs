//! Query maps: one cheap profile's ridge map into the documents' space, fitted on a
//! collection's own documents and judged on the ones held out of the fit; and the neighbour
//! arithmetic the nesting figures share.

use mrl_encoder::linear::{LinearMap, Ridge};

use crate::error::{Error, Result};
use crate::store::QueryMapInfo;

/// Every `HOLD_OUT`-th sampled document is held out of a fit and judges it.
pub(super) const HOLD_OUT: usize = 8;
/// Neighbours compared by the overlap and recall figures.
pub(super) const NEIGHBOURS: usize = 10;

/// Ridge terms tried for a map (relative to the mean eigenvalue of its inputs' Gram matrix),
/// the one whose map agrees best on the selection split kept.
const RIDGE_TERMS: [f64; 7] = [1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0];
/// Texts the selection and report splits need each, or no map is fitted.
const MIN_SPLIT: usize = 8;

/// The texts a map is fitted on, each with its target vector: query-like spans cut from
/// sampled documents (targets: the documents' profile's vectors of the spans), or where the
/// documents are too short to cut spans from, the documents themselves (targets: their
/// stored full-width vectors).
pub(super) struct MapSample<'a> {
    /// Per item: its target vector.
    pub targets: Vec<&'a [f32]>,
    /// Per item: the sampled document it is or was cut from (splits keep a document's
    /// spans together).
    pub document: Vec<usize>,
    /// The sampled documents' stored full-width vectors: what neighbours are found among.
    pub candidates: Vec<&'a [f32]>,
    /// The items are the documents themselves (each its own nearest candidate, left out).
    pub items_are_documents: bool,
}

/// Which split an item of document `d` falls in: 0 fit, 1 selects the ridge term, 2 reports.
fn split(d: usize) -> usize {
    match d % HOLD_OUT {
        r if r == HOLD_OUT - 1 => 2,
        r if r == HOLD_OUT - 2 => 1,
        _ => 0,
    }
}

/// One profile's map from `inputs` (its vectors of `sample`'s items, in order) onto the
/// items' targets: ridge fits on the fit split for each of `RIDGE_TERMS` (shrunk towards the
/// identity when the widths agree: the checkpoint trained its profiles towards the full one),
/// the one whose neighbours agree best on the selection split kept, judged on the report
/// split: mean cosine, and the share of each item's `NEIGHBOURS` nearest sampled documents
/// (by target) that its mapped vector finds, and that its unmapped vector finds. Queries
/// are short, documents long: a map fitted on documents carries documents well and queries
/// badly, so spans are fitted on wherever there are any.
/// `info.profile` is left empty.
///
/// Errors: `Internal` when the counts or widths disagree or the fit fails.
pub(super) fn fit_map(
    inputs: &[Vec<f32>],
    sample: &MapSample,
) -> Result<(LinearMap, QueryMapInfo)> {
    let internal = |e: mrl_encoder::EncoderError| Error::Internal(e.to_string());
    let targets = &sample.targets;
    if inputs.len() != targets.len() || sample.document.len() != targets.len() {
        return Err(Error::Internal(format!(
            "{} vectors for {} texts",
            inputs.len(),
            targets.len()
        )));
    }
    let part = |s: usize| -> Vec<usize> {
        (0..inputs.len())
            .filter(|&i| split(sample.document[i]) == s)
            .collect()
    };
    let (fit, select, report) = (part(0), part(1), part(2));
    if select.len() < MIN_SPLIT || report.len() < MIN_SPLIT {
        return Err(Error::Internal(format!(
            "too few texts to choose and judge a map ({} and {}; {MIN_SPLIT} each needed)",
            select.len(),
            report.len()
        )));
    }
    let x: Vec<Vec<f32>> = fit.iter().map(|&i| inputs[i].clone()).collect();
    let y: Vec<Vec<f32>> = fit.iter().map(|&i| targets[i].to_vec()).collect();
    let ridge = Ridge::new(&x, &y).map_err(internal)?;
    let toward_identity = x.first().map(Vec::len) == y.first().map(Vec::len);
    let candidates: Vec<Vec<f32>> = sample.candidates.iter().map(|v| unit(v)).collect();
    let own = |i: usize| {
        if sample.items_are_documents {
            sample.document[i]
        } else {
            usize::MAX
        }
    };
    let mut best: Option<(f64, LinearMap, f64)> = None;
    for lambda in RIDGE_TERMS {
        let map = ridge.solve(lambda, toward_identity).map_err(internal)?;
        let agreement = judge(&map, inputs, targets, &candidates, &select, own)?;
        // A tie goes to the larger term: the map nearer its prior.
        if best.as_ref().is_none_or(|(b, _, _)| agreement.1 >= *b) {
            best = Some((agreement.1, map, lambda));
        }
    }
    let (_, map, lambda) =
        best.ok_or_else(|| Error::Internal("no ridge term was tried; this is a bug".into()))?;
    let (mean_cosine, neighbour_overlap, unmapped_overlap) =
        judge(&map, inputs, targets, &candidates, &report, own)?;
    let info = QueryMapInfo {
        profile: String::new(),
        sample: fit.len(),
        held_out: report.len(),
        ridge: lambda,
        mean_cosine,
        neighbour_overlap,
        unmapped_overlap,
    };
    Ok((map, info))
}

/// Over items `which`: mean cosine of mapped input to target, and mean share of the target's
/// `NEIGHBOURS` nearest `candidates` that the mapped input finds, and that the unmapped one
/// finds (0 when the widths differ). `own(i)`: the candidate that is item `i` itself.
///
/// Errors: `Internal` when an input is not as wide as the map takes.
fn judge(
    map: &LinearMap,
    inputs: &[Vec<f32>],
    targets: &[&[f32]],
    candidates: &[Vec<f32>],
    which: &[usize],
    own: impl Fn(usize) -> usize,
) -> Result<(f64, f64, f64)> {
    let (mut cosine, mut mapped_overlap, mut plain_overlap) = (0.0, 0.0, 0.0);
    for &i in which {
        let (xi, yi) = (&inputs[i], targets[i]);
        if xi.len() != map.cols() {
            return Err(Error::Internal(format!(
                "vector {i} is {} wide, the map takes {}",
                xi.len(),
                map.cols()
            )));
        }
        let mapped = unit(&map.apply(xi));
        let target = unit(yi);
        let truth = nearest(candidates, &target, own(i));
        cosine += f64::from(dot(&mapped, &target));
        mapped_overlap += overlap(&truth, &nearest(candidates, &mapped, own(i)));
        if xi.len() == yi.len() {
            plain_overlap += overlap(&truth, &nearest(candidates, &unit(xi), own(i)));
        }
    }
    let n = which.len().max(1) as f64;
    Ok((cosine / n, mapped_overlap / n, plain_overlap / n))
}

/// Query-like spans cut from each sampled document.
pub(super) const SPANS_PER_DOCUMENT: usize = 3;

/// Query-like span `k` (< `SPANS_PER_DOCUMENT`) of sampled document `i`'s text: 4 to 24
/// consecutive words (by `i` and `k`; queries run from a few keywords to a sentence), where
/// the text has at least `MIN_SPAN_SOURCE` words; `None` otherwise. Queries are short,
/// documents long: a map fitted on documents alone carries documents well and queries
/// badly. (3–24 words, log-spaced, measured no better on SciFact test or NFCorpus dev.)
pub(super) fn span(text: &str, i: usize, k: usize) -> Option<String> {
    const LENGTHS: [usize; 6] = [4, 8, 12, 16, 20, 24];
    const MIN_SPAN_SOURCE: usize = 12;
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < MIN_SPAN_SOURCE {
        return None;
    }
    let pick = i * SPANS_PER_DOCUMENT + k;
    let len = LENGTHS[pick % LENGTHS.len()].min(words.len() / 2);
    let start = pick.wrapping_mul(7919) % (words.len() - len + 1);
    Some(words[start..start + len].join(" "))
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` at unit length (zeros stay zeros; the norm in f64, as everywhere vectors are cut).
pub(super) fn unit(v: &[f32]) -> Vec<f32> {
    let mut u = v.to_vec();
    mrl_encoder::nested::l2_normalize(&mut u);
    u
}

/// The `NEIGHBOURS` rows of `units` nearest `q` by cosine, `skip` (the query's own row) left
/// out; indexes.
pub(super) fn nearest(units: &[Vec<f32>], q: &[f32], skip: usize) -> Vec<usize> {
    top_k(units.iter().map(|u| dot(u, q)), skip)
}

/// The `NEIGHBOURS` indexes with the largest scores, `skip` left out.
pub(super) fn top_k(scores: impl Iterator<Item = f32>, skip: usize) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = scores
        .enumerate()
        .filter(|(j, _)| *j != skip)
        .map(|(j, x)| (x, j))
        .collect();
    let k = NEIGHBOURS.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.into_iter().map(|(_, j)| j).collect()
}

/// Share of `truth` that `found` holds.
pub(super) fn overlap(truth: &[usize], found: &[usize]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().filter(|t| found.contains(t)).count() as f64 / truth.len() as f64
}

/// Uniform draws in [-0.5, 0.5) from a fixed seed (a 64-bit LCG): test data that is the same
/// on every run.
#[cfg(test)]
pub(super) fn uniforms(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans are 4–24 consecutive words of a long enough text, differ by `k`, and are not cut
    /// from short texts.
    #[test]
    fn spans_are_short_runs_of_a_long_texts_words() {
        let text: String = (0..60).map(|i| format!("w{i} ")).collect();
        let spans: Vec<String> = (0..SPANS_PER_DOCUMENT)
            .filter_map(|k| span(&text, 3, k))
            .collect();
        assert_eq!(spans.len(), SPANS_PER_DOCUMENT);
        for s in &spans {
            let n = s.split_whitespace().count();
            assert!((4..=24).contains(&n) && text.contains(s.as_str()), "{s}");
        }
        assert_ne!(spans[0], spans[1]);
        assert_eq!(span("too short to cut a query from", 0, 0), None);
    }

    /// Inputs a fixed rotation away from their targets: the fitted map undoes it (held-out
    /// cosine near 1, neighbours found as the targets find them), where the unmapped inputs
    /// find few; too few texts for the splits is an error, not a silent map.
    #[test]
    fn a_map_undoes_a_linear_change_of_space() {
        let (w, n) = (12, 400);
        let mut next = uniforms(11);
        let targets: Vec<Vec<f32>> = (0..n).map(|_| (0..w).map(|_| next()).collect()).collect();
        // Reversed and negated: a linear map no identity-like guess gets right.
        let inputs: Vec<Vec<f32>> = targets
            .iter()
            .map(|t| (0..w).map(|j| -t[w - 1 - j]).collect())
            .collect();
        let sample = MapSample {
            targets: targets.iter().map(Vec::as_slice).collect(),
            document: (0..n).collect(),
            candidates: targets.iter().map(Vec::as_slice).collect(),
            items_are_documents: true,
        };
        let (map, info) = fit_map(&inputs, &sample).unwrap();
        assert_eq!((info.sample, info.held_out), (300, 50));
        assert!(info.mean_cosine > 0.99, "{info:?}");
        assert!(info.neighbour_overlap > 0.95, "{info:?}");
        assert!(info.unmapped_overlap < 0.2, "{info:?}");
        let back = map.apply(&inputs[7]);
        assert!(dot(&unit(&back), &unit(&targets[7])) > 0.99);
        let few = MapSample {
            targets: sample.targets[..40].to_vec(),
            document: (0..40).collect(),
            candidates: sample.candidates[..40].to_vec(),
            items_are_documents: true,
        };
        assert!(fit_map(&inputs[..40], &few).is_err());
    }
}
