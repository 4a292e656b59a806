//! The dev check inside training: a fixed slice of a BEIR dev split (its first queries and a
//! corpus of all their judged documents, topped up with others to a minimum size), embedded
//! by the current weights through the inference encoder, scored as NDCG@10 per profile ×
//! nested dim.
//!
//! A slice rather than the whole split keeps one check to a minute or two on two cores; it is
//! the same slice at every check, so the numbers are comparable along a run (they are not the
//! split's official score: the corpus is smaller, which makes retrieval easier).

use std::collections::HashSet;
use std::path::PathBuf;

use mrl_encoder::tokenize::TextTokenizer;
use mrl_encoder::{BertModel, Profile};
use serde::{Deserialize, Serialize};

use crate::data::{BeirDataset, Document, Qrels};
use crate::eval::exact_run_metrics;
use crate::{Result, TrainerError};

/// `[eval]` of a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A BEIR folder.
    pub dir: PathBuf,
    /// Its dev split (a test split is refused: never tune on test).
    pub split: String,
    /// Check every this many steps (and after the last).
    pub every: usize,
    /// At most this many queries (the split's first, in `queries.jsonl` order).
    pub queries: usize,
    /// Minimum corpus size: every judged document of the chosen queries, topped up with others
    /// in corpus order.
    pub docs: usize,
    pub max_tokens: usize,
}

/// The tokenized slice.
pub struct DevSet {
    query_ids: Vec<String>,
    queries: Vec<Vec<u32>>,
    doc_ids: Vec<String>,
    docs: Vec<Vec<u32>>,
    qrels: Qrels,
}

impl DevSet {
    pub fn load(cfg: &EvalConfig, tokenizer: &TextTokenizer) -> Result<Self> {
        let data = load_split(cfg)?;
        let (queries, docs, qrels) = slice(&data, cfg);
        let cut = |texts: Vec<&str>| -> Result<Vec<Vec<u32>>> {
            Ok(crate::calibrate::cut(
                tokenizer.encode(&texts)?,
                cfg.max_tokens,
            ))
        };
        Ok(Self {
            query_ids: queries.iter().map(|q| q.id.clone()).collect(),
            queries: cut(queries.iter().map(|q| q.text.as_str()).collect())?,
            doc_ids: docs.iter().map(|d| d.id.clone()).collect(),
            docs: cut(docs.iter().map(|d| d.text.as_str()).collect())?,
            qrels,
        })
    }

    pub fn sizes(&self) -> (usize, usize) {
        (self.queries.len(), self.docs.len())
    }

    /// NDCG@10 of `profile` at each of `dims` (exact search, cosine).
    pub fn ndcg(
        &self,
        model: &BertModel,
        profile: &Profile,
        dims: &[usize],
    ) -> Result<Vec<(usize, f64)>> {
        let q = model.forward_all(&self.queries, profile, 64)?;
        let d = model.forward_all(&self.docs, profile, 32)?;
        let query_ids: Vec<&str> = self.query_ids.iter().map(String::as_str).collect();
        let doc_ids: Vec<&str> = self.doc_ids.iter().map(String::as_str).collect();
        dims.iter()
            .map(|&dim| {
                let m = exact_run_metrics(&query_ids, &q, &doc_ids, &d, dim, &self.qrels)?;
                Ok((dim, m.ndcg_at_10))
            })
            .collect()
    }
}

fn load_split(cfg: &EvalConfig) -> Result<BeirDataset> {
    if cfg.split == "test" {
        return Err(TrainerError::Invalid(format!(
            "{}: the test split cannot be a dev set",
            cfg.dir.display()
        )));
    }
    BeirDataset::load(&cfg.dir, &cfg.split)
}

/// The first `cfg.queries` queries, their judgements, and a corpus of their judged documents
/// topped up to `cfg.docs` with others in corpus order.
fn slice<'a>(
    data: &'a BeirDataset,
    cfg: &EvalConfig,
) -> (Vec<&'a Document>, Vec<&'a Document>, Qrels) {
    let queries: Vec<&Document> = data.queries.iter().take(cfg.queries.max(1)).collect();
    let qrels: Qrels = queries
        .iter()
        .filter_map(|q| data.qrels.get(&q.id).map(|r| (q.id.clone(), r.clone())))
        .collect();
    let judged: HashSet<&str> = qrels
        .values()
        .flat_map(|r| r.keys().map(String::as_str))
        .collect();
    let (mut docs, rest): (Vec<&Document>, Vec<&Document>) = data
        .corpus
        .iter()
        .partition(|d| judged.contains(d.id.as_str()));
    let room = cfg.docs.saturating_sub(docs.len());
    docs.extend(rest.into_iter().take(room));
    (queries, docs, qrels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(split: &str) -> EvalConfig {
        EvalConfig {
            dir: crate::test_support::shared_dir(&crate::test_support::manifest_dir().join(".."))
                .join("data/nfcorpus"),
            split: split.into(),
            every: 1,
            queries: 20,
            docs: 300,
            max_tokens: 8,
        }
    }

    #[test]
    fn test_splits_are_refused() {
        let err = load_split(&cfg("test")).unwrap_err();
        assert!(err.to_string().contains("test split"), "{err}");
    }

    #[test]
    fn the_slice_holds_every_judged_document_of_its_queries() {
        let root = crate::test_support::manifest_dir().join("..");
        let Some(_) = crate::test_support::needs_shared(&root, &["data/nfcorpus"]) else {
            return;
        };
        let c = cfg("dev");
        let data = load_split(&c).unwrap();
        let (queries, docs, qrels) = slice(&data, &c);
        assert_eq!(queries.len(), 20);
        assert_eq!(qrels.len(), 20);
        let ids: HashSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), docs.len(), "no document twice");
        let judged: HashSet<&str> = qrels
            .values()
            .flat_map(|r| r.keys().map(String::as_str))
            .collect();
        let in_corpus: HashSet<&str> = data.corpus.iter().map(|d| d.id.as_str()).collect();
        assert!(judged
            .iter()
            .filter(|j| in_corpus.contains(*j))
            .all(|j| ids.contains(j)));
        assert_eq!(
            docs.len(),
            300.max(judged.iter().filter(|j| in_corpus.contains(*j)).count())
        );
    }
}
