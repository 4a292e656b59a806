//! The cached-teacher family recipe (`recipe = "heads"` in `mrl train --config FILE`): the
//! backbone stays the frozen, calibrated parent, and every profile gets a Matryoshka head
//! fitted on the parent's embeddings, cached once.
//!
//! Pipeline: BEIR corpora and queries → each profile's pooled vectors, cached on disk
//! (`eval::embed_cached`, resumable) → the shared head starts as an orthogonal rotation
//! (`rotation`: the uncentred principal axes of the training corpora, or with
//! `rotation = "qrels"` the axes of the training pairs' cross-products), zero rows past the
//! parent's width → AdamW on Matryoshka InfoNCE over the training pairs (in-batch negatives; its own
//! learning rate), checked every `eval_every` steps on held-out queries and dev splits; the
//! best check wins, and a check whose full width falls below the parent's on any held-out set
//! cannot (step 0, the rotation itself, always qualifies) → each sub-encoder's head is the
//! shared head after a closed-form map of its pooled space onto the full profile's (ridge
//! least squares on the cached vectors: distillation toward the parent, so a sub-encoder's
//! query vectors search full-profile documents) → the checkpoint: the parent's weights,
//! `head.*`, `heads.NAME.*`, and an `mrl.json`; `mrl judge --write` then declares each
//! sub-encoder aligned with `full` only where it earned it on dev sets (`judge`).

mod fit;
mod head;
mod linalg;
mod parent;
mod recipe;
mod run;
mod sets;
mod start;

use std::collections::HashMap;
use std::time::Instant;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::data::Qrels;
use crate::eval::EmbeddingCache;
use crate::metrics::MetricsLog;
use crate::{Result, TrainerError};

pub(crate) use head::{Check, HeadRun, Resume, Schedule};
pub use linalg::fit_linear_map;
pub(crate) use linalg::{apply, matmul, matrix, prefix_cosine, project_orthogonal, unit_rows};
pub(crate) use parent::Parent;
pub use recipe::{
    BeirSplit, FamilyConfig, FamilySummary, GuardRow, HeadTraining, ReportRow, RotationFit,
};
pub(crate) use sets::held;

use fit::Fit;
use run::FamilyRun;
use sets::{Guard, Split};
use start::{shared_start, sub_maps};

/// Runs the recipe: caches, fits, checks, writes `OUT/model`. Rerunning reuses the caches.
pub fn fit_family(cfg: &FamilyConfig, progress: &ProgressBar) -> Result<FamilySummary> {
    let start = Instant::now();
    let parent = Parent::load(&cfg.parent, &cfg.nested_dims, &cfg.profiles)?;

    // Every profile's pooled vectors of every corpus and query, cached once.
    let cache_dir = cfg.cache.clone().unwrap_or_else(|| cfg.out.join("cache"));
    let cache = EmbeddingCache::new(&cache_dir, &parent.embedder)?;
    let splits = parent.splits(cfg, &cache, progress)?;
    let guards = parent.guards(cfg, &cache, progress)?;
    let pairs = training_pairs(&splits);
    let total_pairs: usize = pairs.iter().map(Vec::len).sum();
    if total_pairs == 0 {
        return Err(TrainerError::Invalid(
            "the training splits gave no pairs".into(),
        ));
    }
    let w0 = shared_start(cfg, &splits, &pairs, parent.hidden, parent.width)?;
    let maps = sub_maps(cfg, &parent.profiles, &splits)?;

    std::fs::create_dir_all(&cfg.out).map_err(|e| TrainerError::io(&cfg.out, e))?;
    // Head fits keep their state at every check; a rerun of the same recipe over the same
    // parent resumes them (and appends to the log), any other starts afresh.
    let key = recipe_key(cfg, &cache, &splits, &guards)?;
    let resume = Resume::open(&cfg.out.join("state"), &key)?;
    let log = MetricsLog::open(&cfg.out.join("metrics.jsonl"), |_| resume.resuming)?;
    let held_qrels: Vec<Qrels> = splits.iter().map(|s| s.qrels_of(&s.held_out)).collect();
    let fit = Fit {
        cfg,
        splits: &splits,
        guards: &guards,
        pairs: &pairs,
        held_qrels: &held_qrels,
        width: parent.width,
        hidden: parent.hidden,
        resume: &resume,
    };
    let mut run = FamilyRun::new(fit, &parent.profiles, log);
    let heads = run.fit_heads(w0, maps, progress)?;
    let report = run.report(&heads)?;
    let guard_rows = run.guard_rows(&heads)?;
    parent.write_model(cfg, &heads, &report, &guard_rows)?;
    Ok(FamilySummary {
        seconds: start.elapsed().as_secs_f64(),
        pairs: total_pairs,
        chosen_step: heads.chosen_step,
        report,
        guards: guard_rows,
    })
}

/// Pairs of training queries and their relevant documents, per split (none for dev splits
/// and held-out queries).
fn training_pairs(splits: &[Split]) -> Vec<Vec<(usize, usize)>> {
    let mut pairs: Vec<Vec<(usize, usize)>> = Vec::new();
    for s in splits {
        let index: HashMap<&str, usize> = s
            .data
            .corpus
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.as_str(), i))
            .collect();
        let mut p = Vec::new();
        for (qi, q) in s.data.queries.iter().enumerate() {
            if s.held_out.contains(&qi) {
                continue;
            }
            let mut rels: Vec<(&String, &i32)> = s.data.qrels[&q.id].iter().collect();
            rels.sort();
            for (did, &grade) in rels {
                if let (true, Some(&di)) = (grade > 0, index.get(did.as_str())) {
                    p.push((qi, di));
                }
            }
        }
        pairs.push(p);
    }
    pairs
}

/// What the head fits' saved state is keyed by: this build, the recipe, the parent's
/// weights and what the data files hold, not only where they are.
fn recipe_key(
    cfg: &FamilyConfig,
    cache: &EmbeddingCache,
    splits: &[Split],
    guards: &[Guard],
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(serde_json::to_vec(cfg).map_err(|e| TrainerError::Invalid(e.to_string()))?);
    h.update(cache.weights_sha256().as_bytes());
    for s in splits {
        for t in s.data.corpus.iter().chain(&s.data.queries) {
            h.update(t.id.as_bytes());
            h.update(t.text.as_bytes());
        }
        let mut judged: Vec<(&String, Vec<(&String, &i32)>)> = s
            .data
            .qrels
            .iter()
            .map(|(q, r)| {
                let mut r: Vec<_> = r.iter().collect();
                r.sort();
                (q, r)
            })
            .collect();
        judged.sort();
        for (q, r) in judged {
            h.update(q.as_bytes());
            for (d, g) in r {
                h.update(d.as_bytes());
                h.update(g.to_le_bytes());
            }
        }
    }
    for g in guards {
        for x in &g.scores {
            h.update(x.to_le_bytes());
        }
    }
    Ok(format!("{:x}", h.finalize()))
}
