//! Retrieval evaluation: NDCG@k, Recall@k and MRR@k as trec_eval computes them, exact
//! (brute-force) search over nested prefixes, and corpus embedding with a resumable cache.
//!
//! Exact search is the reference every approximate index is judged against, which is why the
//! evaluation uses it rather than a vector store.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use indicatif::ProgressBar;
use mrl_encoder::{nested, Embedder, Profile};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::data::Qrels;
use crate::error::{Result, TrainerError};

/// Mean metrics over a query set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub ndcg_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
    pub queries: usize,
}

/// trec_eval's order: score descending, ties by document id descending.
pub fn trec_sort(hits: &mut [(String, f32)]) {
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
}

fn gain(rels: &HashMap<String, i32>, id: &str) -> f64 {
    rels.get(id).copied().filter(|&g| g > 0).unwrap_or(0) as f64
}

/// NDCG@k with linear gain (trec_eval `ndcg_cut`); 0 when nothing is relevant.
pub fn ndcg_at(ranked: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let discount = |i: usize| 1.0 / ((i + 2) as f64).log2();
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, id)| gain(rels, id) * discount(i))
        .sum();
    let mut ideal: Vec<f64> = rels
        .values()
        .filter(|&&g| g > 0)
        .map(|&g| g as f64)
        .collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, g)| g * discount(i))
        .sum();
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// Share of the relevant documents (grade > 0) found in the top `k`; 0 when none is relevant.
pub fn recall_at(ranked: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    let relevant = rels.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|id| gain(rels, id) > 0.0)
        .count();
    found as f64 / relevant as f64
}

/// Reciprocal rank of the first relevant document in the top `k`, else 0.
pub fn mrr_at(ranked: &[&str], rels: &HashMap<String, i32>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|id| gain(rels, id) > 0.0)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// Averages the metrics over every query of `qrels`; a query missing from `run` counts as 0.
pub fn evaluate(run: &HashMap<String, Vec<(String, f32)>>, qrels: &Qrels) -> Metrics {
    let n = qrels.len().max(1) as f64;
    let mut m = Metrics {
        ndcg_at_10: 0.0,
        recall_at_100: 0.0,
        mrr_at_10: 0.0,
        queries: qrels.len(),
    };
    for (qid, rels) in qrels {
        let Some(hits) = run.get(qid) else { continue };
        let mut hits = hits.clone();
        trec_sort(&mut hits);
        let ranked: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
        m.ndcg_at_10 += ndcg_at(&ranked, rels, 10) / n;
        m.recall_at_100 += recall_at(&ranked, rels, 100) / n;
        m.mrr_at_10 += mrr_at(&ranked, rels, 10) / n;
    }
    m
}

/// The first `dim` values of each vector, L2-normalised, packed row-major.
pub fn nested_matrix(vectors: &[Vec<f32>], dim: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(vectors.len() * dim);
    for v in vectors {
        out.extend(nested::nest(v, dim, true)?);
    }
    Ok(out)
}

/// The `k` best documents of each query by dot product (cosine on normalised rows).
pub fn exact_search(queries: &[f32], docs: &[f32], dim: usize, k: usize) -> Vec<Vec<(usize, f32)>> {
    queries
        .par_chunks_exact(dim)
        .map(|q| {
            let mut scored: Vec<(usize, f32)> = docs
                .chunks_exact(dim)
                .map(|d| d.iter().zip(q).map(|(a, b)| a * b).sum())
                .enumerate()
                .collect();
            let k = k.min(scored.len());
            if k > 0 && k < scored.len() {
                scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                scored.truncate(k);
            }
            // Each query's hits would otherwise keep a slot per document alive.
            scored.shrink_to_fit();
            scored
        })
        .collect()
}

/// Metrics of exact search over the first `dim` values of already-embedded queries and
/// documents (rows in the order of their ids), judged by `qrels`.
pub fn exact_run_metrics(
    query_ids: &[&str],
    query_vecs: &[Vec<f32>],
    doc_ids: &[&str],
    doc_vecs: &[Vec<f32>],
    dim: usize,
    qrels: &Qrels,
) -> Result<Metrics> {
    let (qs, docs) = (
        nested_matrix(query_vecs, dim)?,
        nested_matrix(doc_vecs, dim)?,
    );
    let run: HashMap<String, Vec<(String, f32)>> = query_ids
        .iter()
        .zip(exact_search(&qs, &docs, dim, 100))
        .map(|(qid, hits)| {
            let hits = hits
                .into_iter()
                .map(|(i, score)| (doc_ids[i].to_string(), score))
                .collect();
            (qid.to_string(), hits)
        })
        .collect();
    Ok(evaluate(&run, qrels))
}

/// A folder of embedded texts for one model, keyed by its weights' SHA-256 (hashed once).
pub struct EmbeddingCache {
    dir: PathBuf,
    weights_sha256: String,
}

impl EmbeddingCache {
    pub fn new(dir: &Path, embedder: &Embedder) -> Result<Self> {
        let weights = embedder.dir().join("model.safetensors");
        Ok(Self {
            dir: dir.to_path_buf(),
            weights_sha256: mrl_encoder::fetch::sha256_file(&weights)?,
        })
    }

    /// The SHA-256 (hex) of the model's weights: what every entry's key starts from.
    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    fn path(&self, embedder: &Embedder, texts: &[String], profile: &Profile) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.weights_sha256.as_bytes());
        h.update(profile.to_string().as_bytes());
        h.update(embedder.tokenizer().max_len().to_le_bytes());
        // Entries are rows of this width: a model whose heads were once read wider (zero rows
        // since cut) must not read its old rows at the new width.
        let width = embedder.model().output_width(profile);
        if width != embedder.model().padded_width() {
            h.update(format!("width {width}").as_bytes());
        }
        // Bridges set after loading (the recipe fits them) change a profile's vectors
        // without changing the weights file.
        for b in embedder.model().bridges_of(profile) {
            h.update(format!("bridge after {}", b.after).as_bytes());
            for v in b.weight.iter().chain(&b.bias) {
                h.update(v.to_le_bytes());
            }
        }
        // f32 entries keep the keys they had before precisions existed.
        if embedder.precision() != mrl_encoder::Precision::F32 {
            h.update(format!("precision={}", embedder.precision()).as_bytes());
            h.update(mrl_encoder::int8::SCHEME.as_bytes());
        }
        for t in texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        self.dir.join(format!("{:x}.f32", h.finalize()))
    }
}

/// Raw (unnormalised, full-width) vectors of `texts` under `profile`, each read after
/// `prompt` when there is one, as the model's text path reads them (core's `Embeddings`: the
/// prompt, then the tokenizer at the model's limit, then the forward pass). With a cache,
/// finished chunks are appended to a file keyed by model, profile and texts, so a killed run
/// resumes where it stopped and a second run costs nothing.
pub fn embed_cached(
    embedder: &Embedder,
    texts: &[String],
    prompt: Option<&str>,
    profile: &Profile,
    cache: Option<&EmbeddingCache>,
    progress: &ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    // The key hashes the texts as the model reads them, so a prompt keys its own entries and
    // those embedded without one keep theirs.
    let prompted: Vec<String>;
    let texts: &[String] = match prompt.filter(|p| !p.is_empty()) {
        Some(p) => {
            prompted = texts.iter().map(|t| format!("{p}{t}")).collect();
            &prompted
        }
        None => texts,
    };
    let width = embedder.model().output_width(profile);
    let tokenizer = embedder.tokenizer();
    let path = match cache {
        Some(cache) => {
            let dir = &cache.dir;
            std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
            Some(cache.path(embedder, texts, profile))
        }
        None => None,
    };
    cached_rows(path.as_deref(), width, texts.len(), progress, |range| {
        let tokens = tokenizer.encode(&texts[range])?;
        Ok(embedder.embed_tokens(&tokens, profile, mrl_encoder::DEFAULT_BATCH_SIZE)?)
    })
}

/// `n` rows of `width` floats, computed `compute(range)` a chunk of 512 at a time and, with a
/// `path`, appended to that file as each chunk finishes: a killed run resumes after the last
/// whole row (a torn tail is cut off) and a finished one costs a read. The key (the file's
/// name) is the caller's: it must change whenever the rows would.
///
/// Errors: `Io` reading or writing `path`, or `compute`'s.
pub(crate) fn cached_rows(
    path: Option<&Path>,
    width: usize,
    n: usize,
    progress: &ProgressBar,
    mut compute: impl FnMut(std::ops::Range<usize>) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    const CHUNK: usize = 512;
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(n);
    let mut file = None;
    if let Some(path) = path {
        out = read_cached(path, width, n)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainerError::io(path, e))?;
        // Drop a torn tail left by a crash mid-write.
        f.set_len((out.len() * width * 4) as u64)
            .map_err(|e| TrainerError::io(path, e))?;
        file = Some((f, path));
    }
    progress.set_length(n as u64);
    progress.set_position(out.len() as u64);
    while out.len() < n {
        let vectors = compute(out.len()..(out.len() + CHUNK).min(n))?;
        if let Some((f, path)) = file.as_mut() {
            let bytes: Vec<u8> = vectors
                .iter()
                .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
                .collect();
            f.write_all(&bytes)
                .map_err(|e| TrainerError::io(*path, e))?;
        }
        progress.inc(vectors.len() as u64);
        out.extend(vectors);
    }
    Ok(out)
}

fn read_cached(path: &Path, width: usize, max: usize) -> Result<Vec<Vec<f32>>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| TrainerError::io(path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainerError::io(path, e)),
    }
    Ok(bytes
        .chunks_exact(width * 4)
        .take(max)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

/// Pearson's correlation of `(x, y)` pairs; 0 when either side is constant.
pub fn pearson(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len().max(1) as f64;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx).powi(2);
        syy += (y - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's rank correlation of `(x, y)` pairs: Pearson's on the ranks, ties given their
/// mean rank (the STS benchmark's metric).
pub fn spearman(pairs: &[(f64, f64)]) -> f64 {
    fn ranks(values: Vec<f64>) -> Vec<f64> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
        let mut out = vec![0.0; values.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
                j += 1;
            }
            for &k in &order[i..=j] {
                out[k] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        out
    }
    let rx = ranks(pairs.iter().map(|p| p.0).collect());
    let ry = ranks(pairs.iter().map(|p| p.1).collect());
    let ranked: Vec<(f64, f64)> = rx.into_iter().zip(ry).collect();
    pearson(&ranked)
}

/// Each row's `k` nearest other rows by cosine (`rows` unit length, `[n, d]`), best first.
///
/// Errors: the tensors' errors.
pub fn nearest_neighbours(rows: &Tensor, k: usize) -> Result<Vec<Vec<usize>>> {
    const BLOCK: usize = 1024;
    let n = rows.dim(0)?;
    let t = rows.t()?.contiguous()?;
    let mut out = Vec::with_capacity(n);
    // One scratch row for every text: collecting a row's k best out of it by value would
    // keep the whole row's allocation alive in each result (in-place collect).
    let mut scored: Vec<(usize, f32)> = Vec::with_capacity(n);
    for start in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - start);
        let sims: Vec<Vec<f32>> = rows.narrow(0, start, len)?.matmul(&t)?.to_vec2()?;
        for (r, row) in sims.into_iter().enumerate() {
            scored.clear();
            scored.extend(row.into_iter().enumerate().filter(|&(j, _)| j != start + r));
            let k = k.min(scored.len());
            if k > 0 && k < scored.len() {
                scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            }
            let best = &mut scored[..k];
            best.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.push(best.iter().map(|&(j, _)| j).collect());
        }
    }
    Ok(out)
}

/// Neighbour recall@10 at each of `dims`: for each query row, the share of `truth[i]` (its
/// 10 true neighbours among `docs`) found in the top 10 of `docs` by the `dim`-wide prefix
/// cosine, row `i` itself excluded (queries and documents are the same texts).
///
/// Errors: a dim wider than the rows.
pub fn neighbour_recall(
    queries: &[Vec<f32>],
    docs: &[Vec<f32>],
    truth: &[Vec<usize>],
    dims: &[usize],
) -> Result<Vec<f64>> {
    dims.iter()
        .map(|&dim| {
            let (q, d) = (nested_matrix(queries, dim)?, nested_matrix(docs, dim)?);
            let found = exact_search(&q, &d, dim, 11);
            let total: f64 = found
                .into_iter()
                .enumerate()
                .map(|(i, mut hits)| {
                    hits.retain(|h| h.0 != i);
                    hits.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let want: HashSet<usize> = truth[i].iter().take(10).copied().collect();
                    let got = hits.iter().take(10).filter(|h| want.contains(&h.0)).count();
                    got as f64 / want.len().max(1) as f64
                })
                .sum();
            Ok(total / queries.len().max(1) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_ranks_with_ties_and_ignores_scale() {
        let monotone: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), f64::from(i).exp()))
            .collect();
        assert!((spearman(&monotone) - 1.0).abs() < 1e-12);
        let reversed: Vec<(f64, f64)> = monotone.iter().map(|&(x, y)| (x, -y)).collect();
        assert!((spearman(&reversed) + 1.0).abs() < 1e-12);
        // Ties share their mean rank: x ranks 0, 1.5, 1.5, 3 against y ranks 0, 1, 2, 3.
        let tied = [(1.0, 1.0), (2.0, 2.0), (2.0, 3.0), (5.0, 4.0)];
        let want = pearson(&[(0.0, 0.0), (1.5, 1.0), (1.5, 2.0), (3.0, 3.0)]);
        assert!((spearman(&tied) - want).abs() < 1e-12 && want < 1.0);
        assert_eq!(spearman(&[(1.0, 2.0), (1.0, 3.0)]), 0.0);
    }

    fn rels(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn ndcg_matches_hand_computation() {
        // Binary: relevant at ranks 1 and 3, two relevant in total.
        let r = rels(&[("a", 1), ("c", 1)]);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at(&["a", "b", "c"], &r, 10) - dcg / idcg).abs() < 1e-12);
        // Graded, linear gain: ranking (1, 2) against ideal (2, 1).
        let r = rels(&[("x", 1), ("y", 2)]);
        let dcg = 1.0 + 2.0 / 3f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at(&["x", "y"], &r, 10) - dcg / idcg).abs() < 1e-12);
        // Cut-off: a relevant document past k gains nothing.
        assert_eq!(ndcg_at(&["b", "a"], &rels(&[("a", 1)]), 1), 0.0);
        // Nothing relevant (grade 0 is not relevant).
        assert_eq!(ndcg_at(&["a"], &rels(&[("a", 0)]), 10), 0.0);
    }

    #[test]
    fn recall_and_mrr() {
        let r = rels(&[("a", 1), ("c", 2), ("z", 1)]);
        assert!((recall_at(&["a", "b", "c"], &r, 100) - 2.0 / 3.0).abs() < 1e-12);
        assert!((recall_at(&["a", "b", "c"], &r, 1) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(mrr_at(&["b", "c", "a"], &r, 10), 0.5);
        assert_eq!(mrr_at(&["b", "c"], &r, 1), 0.0);
        assert_eq!(recall_at(&["a"], &rels(&[]), 100), 0.0);
    }

    #[test]
    fn ties_break_by_descending_id_and_queries_average() {
        let mut hits = vec![
            ("a".to_string(), 0.5),
            ("b".to_string(), 0.5),
            ("c".into(), 0.9),
        ];
        trec_sort(&mut hits);
        let ids: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
        assert_eq!(ids, ["c", "b", "a"]);

        let mut qrels = Qrels::new();
        qrels.insert("q1".into(), rels(&[("a", 1)]));
        qrels.insert("q2".into(), rels(&[("z", 1)]));
        let mut run = HashMap::new();
        run.insert("q1".to_string(), vec![("a".to_string(), 1.0)]);
        // q2 has no hits at all: it still counts, as 0.
        let m = evaluate(&run, &qrels);
        assert_eq!(m.queries, 2);
        assert!((m.ndcg_at_10 - 0.5).abs() < 1e-12);
        assert!((m.mrr_at_10 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn exact_search_finds_the_nearest() {
        let docs = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let hits = exact_search(&[0.0, 1.0], &docs, 2, 2);
        let mut ids: Vec<usize> = hits[0].iter().map(|h| h.0).collect();
        ids.sort();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn neighbours_and_recall_agree_with_a_brute_force_count() {
        use crate::family::{prefix_cosine, unit_rows};
        let mut rng = crate::router::Rng::new(3);
        let data = unit_rows(
            &(0..50)
                .map(|_| (0..6).map(|_| (rng.uniform() - 0.5) as f32).collect())
                .collect::<Vec<Vec<f32>>>(),
        );
        let cosine = |a: &[f32], b: &[f32]| prefix_cosine(a, b, a.len());
        let x = Tensor::from_vec(data.concat(), (50, 6), &candle_core::Device::Cpu).unwrap();
        let near = nearest_neighbours(&x, 10).unwrap();
        for (i, n) in near.iter().enumerate() {
            let mut all: Vec<(f64, usize)> = (0..50)
                .filter(|&j| j != i)
                .map(|j| (cosine(&data[i], &data[j]), j))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0));
            let want: Vec<usize> = all.iter().take(10).map(|p| p.1).collect();
            assert_eq!(n, &want, "row {i}");
        }
        // Full width finds every true neighbour; a 1-dim prefix finds fewer.
        let r = neighbour_recall(&data, &data, &near, &[6, 1]).unwrap();
        assert!((r[0] - 1.0).abs() < 1e-12, "{r:?}");
        assert!(r[1] < 0.9, "{r:?}");
    }
}
