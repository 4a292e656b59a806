//! Data read from disk: BEIR folders (corpus, queries, qrels) and JSONL text files.
//!
//! Texts follow BEIR's sentence-transformers convention: a document is `title + " " + text`,
//! trimmed, so numbers are comparable with published ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mrl_encoder::text;
use serde_json::Value;

use crate::error::{Result, TrainerError};

/// One text with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub text: String,
}

/// Relevance judgements: query id → document id → grade.
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// A BEIR data set restricted to one split's queries.
#[derive(Debug, Clone)]
pub struct BeirDataset {
    pub dir: PathBuf,
    pub split: String,
    pub corpus: Vec<Document>,
    /// The queries that have judgements in this split, in `queries.jsonl` order.
    pub queries: Vec<Document>,
    pub qrels: Qrels,
}

impl BeirDataset {
    pub fn load(dir: &Path, split: &str) -> Result<Self> {
        let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
        let qrels = read_qrels(&qrels_path)?;
        let corpus = read_texts(&dir.join("corpus.jsonl"))?;
        let queries = read_texts(&dir.join("queries.jsonl"))?
            .into_iter()
            .filter(|q| qrels.contains_key(&q.id))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            corpus,
            queries,
            qrels,
        })
    }
}

/// Reads a qrels TSV (`query-id  corpus-id  score`, header optional). BEIR ships CRLF line
/// endings, so `\r` is stripped.
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let mut qrels: Qrels = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || (i == 0 && line.starts_with("query-id")) {
            continue;
        }
        let bad = |reason: String| TrainerError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let cols: Vec<&str> = line.split('\t').collect();
        let [q, d, score] = cols[..] else {
            return Err(bad(format!(
                "expected 3 tab-separated columns, got {}",
                cols.len()
            )));
        };
        let score: i32 = score
            .trim()
            .parse()
            .map_err(|_| bad(format!("score {score:?} is not an integer")))?;
        qrels
            .entry(q.to_string())
            .or_default()
            .insert(d.to_string(), score);
    }
    Ok(qrels)
}

/// Reads JSONL texts (`mrl_encoder::text`, the one record reader): BEIR lines (`_id`,
/// optional `title`, `text`), `{id, text}` objects, or bare JSON strings (id = line number). A
/// malformed line is an error naming it.
pub fn read_texts(path: &Path) -> Result<Vec<Document>> {
    json_lines(path, |line, v| {
        let record = text::read(&v, true).map_err(|e| e.message)?;
        let id = match record.id {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None => line.to_string(),
            Some(other) => return Err(format!("id must be a string, got {other}")),
        };
        Ok(Document {
            id,
            text: record.text,
        })
    })
}

/// Parses each non-blank line of a JSONL file and hands it, with its 1-based number, to
/// `item`; a line that is not JSON or that `item` refuses is an error naming the line.
fn json_lines<T>(
    path: &Path,
    mut item: impl FnMut(usize, Value) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TrainerError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("malformed JSON ({e})")))?;
        out.push(item(i + 1, v).map_err(bad)?);
    }
    Ok(out)
}

/// Up to `limit` texts drawn evenly from several files (every k-th line of each), so a
/// calibration set mixes, e.g., queries and passages without reading order bias.
pub fn sample_texts(paths: &[PathBuf], limit: usize) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Err(TrainerError::Invalid("no text files given".into()));
    }
    let per_file = limit.div_ceil(paths.len());
    let mut out = BTreeMap::new();
    for (f, path) in paths.iter().enumerate() {
        let docs = read_texts(path)?;
        for (k, d) in evenly(&docs, per_file).enumerate() {
            // Interleave files so a prefix of the sample is still mixed.
            out.insert((k, f), d.text.clone());
        }
    }
    Ok(out.into_values().take(limit).collect())
}

/// Up to `take` of `items` spread evenly through them (every `len / take`-th, from the
/// first), in order; all of them when `take` is at least their number.
pub fn evenly<T>(items: &[T], take: usize) -> impl Iterator<Item = &T> {
    let take = take.min(items.len());
    let step = items.len() as f64 / take.max(1) as f64;
    (0..take).map(move |k| &items[(k as f64 * step) as usize])
}

/// A training example: a query, its positive, and optionally a hard negative.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub query: String,
    pub positive: String,
    pub negative: Option<String>,
}

/// (query, relevant document) pairs of a BEIR split: one per qrels line with grade > 0.
/// Refuses SciFact's public test split, which is for evaluation only.
pub fn beir_pairs(dir: &Path, split: &str) -> Result<Vec<Pair>> {
    if split == "test" && dir.file_name().is_some_and(|n| n == "scifact") {
        return Err(TrainerError::Invalid(
            "SciFact's test split is the public benchmark: train on train, tune on dev".into(),
        ));
    }
    let qrels = read_qrels(&dir.join("qrels").join(format!("{split}.tsv")))?;
    let corpus: HashMap<String, String> = read_texts(&dir.join("corpus.jsonl"))?
        .into_iter()
        .map(|d| (d.id, d.text))
        .collect();
    let queries: HashMap<String, String> = read_texts(&dir.join("queries.jsonl"))?
        .into_iter()
        .map(|d| (d.id, d.text))
        .collect();
    // Sorted, so the pair list (and a seeded shuffle of it) is the same on every run.
    let mut judged: Vec<(&String, &HashMap<String, i32>)> = qrels.iter().collect();
    judged.sort_by(|a, b| a.0.cmp(b.0));
    let mut pairs = Vec::new();
    for (qid, rels) in judged {
        let Some(query) = queries.get(qid) else {
            continue;
        };
        let mut docs: Vec<(&String, &i32)> = rels.iter().filter(|(_, &g)| g > 0).collect();
        docs.sort();
        for (did, _) in docs {
            if let Some(doc) = corpus.get(did) {
                pairs.push(Pair {
                    query: query.clone(),
                    positive: doc.clone(),
                    negative: None,
                });
            }
        }
    }
    Ok(pairs)
}

/// One scored STS-B pair: two sentences and their human similarity score (0–5).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    /// The first sentence.
    pub a: String,
    /// The second sentence.
    pub b: String,
    /// The human similarity score, 0–5.
    pub score: f64,
}

/// Every STS-B pair with its score. Lines split on TAB (the file is not quoted CSV); the
/// score is column 5, the sentences columns 6 and 7 (some rows carry two more columns).
///
/// Errors: `Io`, or `Data` naming the line with too few columns or a score that is not a
/// number.
pub fn sts_scored(path: &Path) -> Result<Vec<ScoredPair>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
        if cols.len() < 7 {
            return Err(TrainerError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!(
                    "expected at least 7 tab-separated columns, got {}",
                    cols.len()
                ),
            });
        }
        let score: f64 = cols[4].trim().parse().map_err(|_| TrainerError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            reason: format!("score {:?} is not a number", cols[4]),
        })?;
        pairs.push(ScoredPair {
            a: cols[5].to_string(),
            b: cols[6].to_string(),
            score,
        });
    }
    Ok(pairs)
}

/// STS-B pairs scored at least `min_score` (0–5) as positives (`sts_scored`, filtered).
pub fn sts_pairs(path: &Path, min_score: f64) -> Result<Vec<Pair>> {
    Ok(sts_scored(path)?
        .into_iter()
        .filter(|p| p.score >= min_score)
        .map(|p| Pair {
            query: p.a,
            positive: p.b,
            negative: None,
        })
        .collect())
}

/// JSONL `{query, positive[, negative]}` pairs.
pub fn jsonl_pairs(path: &Path) -> Result<Vec<Pair>> {
    json_lines(path, |_, v| {
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let (Some(query), Some(positive)) = (field("query"), field("positive")) else {
            return Err("a pair needs string fields \"query\" and \"positive\"".into());
        };
        Ok(Pair {
            query,
            positive,
            negative: field("negative"),
        })
    })
}

/// A seeded Fisher–Yates shuffle, then batches of `size` whose texts have similar lengths:
/// chunks of `size * 8` pairs are sorted by query length before being cut, which bounds
/// padding while keeping the batch order random. Pairs in one batch never share a positive,
/// since an in-batch duplicate would be a false negative.
pub fn length_aware_batches(pairs: &[Pair], size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = crate::router::Rng::new(seed);
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let size = size.max(2);
    let mut batches = Vec::new();
    // Batches left open at the end of a chunk stay open into the next one: closing them early
    // made batches of one pair, which carry no contrastive signal.
    let mut open: Vec<Vec<usize>> = Vec::new();
    for chunk in order.chunks(size * 8) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| pairs[i].query.len());
        // Each pair joins the first open batch without its positive.
        for i in chunk {
            let slot = open
                .iter()
                .position(|b| !b.iter().any(|&j| pairs[j].positive == pairs[i].positive));
            match slot {
                Some(k) => open[k].push(i),
                None => open.push(vec![i]),
            }
            if let Some(k) = open.iter().position(|b| b.len() == size) {
                batches.push(open.remove(k));
            }
        }
    }
    // Lone leftovers all share one positive (else they would have joined one batch): they
    // are left out of this epoch.
    batches.extend(open.into_iter().filter(|b| b.len() > 1));
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mrl-data-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn qrels_strip_crlf_and_header() {
        let p = write(
            "q.tsv",
            "query-id\tcorpus-id\tscore\r\n1\td1\t1\r\n1\td2\t2\r\n2\td3\t0\r\n",
        );
        let q = read_qrels(&p).unwrap();
        assert_eq!(q["1"]["d2"], 2);
        assert_eq!(q["2"]["d3"], 0);
        let p = write("bad.tsv", "query-id\tcorpus-id\tscore\n1\td1\n");
        let e = read_qrels(&p).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("3 tab-separated"), "{e}");
    }

    #[test]
    fn texts_join_title_and_name_bad_lines() {
        let p = write(
            "t.jsonl",
            "{\"_id\":\"a\",\"title\":\"T\",\"text\":\"body\"}\n\"plain\"\n{\"id\":7,\"text\":\"x\"}\n",
        );
        let t = read_texts(&p).unwrap();
        assert_eq!(t[0].text, "T body");
        assert_eq!(t[1].id, "2");
        assert_eq!(t[2].id, "7");
        let p = write("b.jsonl", "{\"text\":\"ok\"}\n{\"title\":\"no text\"}\n");
        let e = read_texts(&p).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("text"), "{e}");
    }

    #[test]
    fn samples_interleave_files() {
        let a = write("a.jsonl", "\"a1\"\n\"a2\"\n\"a3\"\n\"a4\"\n");
        let b = write("bb.jsonl", "\"b1\"\n\"b2\"\n");
        let s = sample_texts(&[a, b], 4).unwrap();
        assert_eq!(s, vec!["a1", "b1", "a3", "b2"]);
    }
}

#[cfg(test)]
mod pair_tests {
    use super::*;

    fn pair(q: &str, p: &str) -> Pair {
        Pair {
            query: q.into(),
            positive: p.into(),
            negative: None,
        }
    }

    #[test]
    fn batches_cover_every_pair_once_without_shared_positives() {
        let pairs: Vec<Pair> = (0..50)
            .map(|i| pair(&"q".repeat(1 + i % 13), &format!("doc {}", i % 7)))
            .collect();
        let batches = length_aware_batches(&pairs, 4, 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        let before = seen.len();
        seen.dedup();
        assert_eq!(seen.len(), before, "a pair twice");
        // Only lone leftovers sharing one positive (8 pairs at most here) are left out.
        assert!(seen.len() >= 50 - 8, "{} of 50 pairs batched", seen.len());
        for b in &batches {
            assert!((2..=4).contains(&b.len()), "{b:?}");
            let mut pos: Vec<&str> = b.iter().map(|&i| pairs[i].positive.as_str()).collect();
            pos.sort();
            pos.dedup();
            assert_eq!(pos.len(), b.len(), "shared positive in {b:?}");
        }
        assert_eq!(batches, length_aware_batches(&pairs, 4, 3), "seeded");
        assert_ne!(batches, length_aware_batches(&pairs, 4, 4));
    }

    #[test]
    fn training_pairs_from_sts_beir_and_jsonl() {
        let dir = std::env::temp_dir().join(format!("mrl-pairs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("qrels")).unwrap();
        let sts = dir.join("sts.csv");
        std::fs::write(
            &sts,
            "g\tf\ty\t1\t4.5\tA plane.\tAn air plane.\r\ng\tf\ty\t2\t1.0\tA cat.\tA car.\textra\textra\n",
        )
        .unwrap();
        assert_eq!(
            sts_pairs(&sts, 4.0).unwrap(),
            vec![pair("A plane.", "An air plane.")]
        );
        std::fs::write(&sts, "too\tfew\n").unwrap();
        assert!(sts_pairs(&sts, 4.0).is_err());

        std::fs::write(
            dir.join("corpus.jsonl"),
            "{\"_id\":\"d1\",\"title\":\"T\",\"text\":\"one\"}\n{\"_id\":\"d2\",\"text\":\"two\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("queries.jsonl"),
            "{\"_id\":\"q\",\"text\":\"ask\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("qrels").join("train.tsv"),
            "query-id\tcorpus-id\tscore\r\nq\td1\t1\r\nq\td2\t0\r\n",
        )
        .unwrap();
        assert_eq!(
            beir_pairs(&dir, "train").unwrap(),
            vec![pair("ask", "T one")]
        );

        let jl = dir.join("pairs.jsonl");
        std::fs::write(
            &jl,
            "{\"query\":\"a\",\"positive\":\"b\",\"negative\":\"c\"}\n\n",
        )
        .unwrap();
        let p = jsonl_pairs(&jl).unwrap();
        assert_eq!(p[0].negative.as_deref(), Some("c"));
        std::fs::write(&jl, "{\"query\":\"a\"}\n").unwrap();
        assert!(jsonl_pairs(&jl).is_err());
        let _ = std::fs::remove_dir_all(&dir);

        let scifact = std::path::PathBuf::from("scifact");
        assert!(
            beir_pairs(&scifact, "test").is_err(),
            "the test split is refused"
        );
    }
}
