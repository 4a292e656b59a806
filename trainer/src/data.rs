//! Data read from disk: BEIR folders (corpus, queries, qrels) and JSONL text files.
//!
//! Texts follow BEIR's sentence-transformers convention: a document is `title + " " + text`,
//! trimmed, so numbers are comparable with published ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

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

/// Reads JSONL texts: BEIR lines (`_id`, optional `title`, `text`), `{id, text}` objects, or
/// bare JSON strings (id = line number). A malformed line is an error naming it.
pub fn read_texts(path: &Path) -> Result<Vec<Document>> {
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
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let doc = match &v {
            Value::String(s) => Document {
                id: (i + 1).to_string(),
                text: s.clone(),
            },
            Value::Object(o) => {
                let id = match o.get("_id").or_else(|| o.get("id")) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    None => (i + 1).to_string(),
                    Some(other) => return Err(bad(format!("id must be a string, got {other}"))),
                };
                let body = o
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("missing string field \"text\"".into()))?;
                let title = o.get("title").and_then(Value::as_str).unwrap_or("");
                Document {
                    id,
                    text: format!("{title} {body}").trim().to_string(),
                }
            }
            _ => return Err(bad("expected a JSON object or string".into())),
        };
        out.push(doc);
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
        let take = per_file.min(docs.len());
        if take == 0 {
            continue;
        }
        let step = docs.len() as f64 / take as f64;
        for k in 0..take {
            let d = &docs[(k as f64 * step) as usize];
            // Interleave files so a prefix of the sample is still mixed.
            out.insert((k, f), d.text.clone());
        }
    }
    Ok(out.into_values().take(limit).collect())
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
