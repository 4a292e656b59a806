//! The sets the heads recipe reads: BEIR splits and out-of-domain guards with each profile's
//! cached vectors, and which queries are held out of training.

use std::collections::{HashMap, HashSet};

use crate::data::{BeirDataset, Qrels};
use crate::router::Rng;

/// A profile's cached (corpus, query) vectors, raw pooled, in dataset order.
pub(super) type Cached = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// One BEIR split with each profile's cached vectors.
pub(super) struct Split {
    pub(super) name: String,
    pub(super) data: BeirDataset,
    /// Profile name → (corpus vectors, query vectors), raw pooled.
    pub(super) vectors: HashMap<String, Cached>,
    /// Queries kept out of training (all of them for a dev split).
    pub(super) held_out: HashSet<usize>,
    pub(super) weight: f64,
}

impl Split {
    pub(super) fn qrels_of(&self, queries: &HashSet<usize>) -> Qrels {
        let ids: HashSet<&str> = queries
            .iter()
            .map(|&i| self.data.queries[i].id.as_str())
            .collect();
        self.data
            .qrels
            .iter()
            .filter(|(q, _)| ids.contains(q.as_str()))
            .map(|(q, r)| (q.clone(), r.clone()))
            .collect()
    }
}

/// An out-of-domain guard: scored sentence pairs with each profile's cached vectors.
pub(super) struct Guard {
    pub(super) name: String,
    pub(super) scores: Vec<f64>,
    /// Profile name → (first sentences, second sentences), raw pooled.
    pub(super) vectors: HashMap<String, Cached>,
}

/// Whether query `id` is held out: a seeded hash of the id, one in `every`.
pub(crate) fn held(id: &str, seed: u64, every: usize) -> bool {
    let mut h = Rng::new(seed);
    for b in id.bytes() {
        h.state ^= u64::from(b);
        h.next_u64();
    }
    h.next_u64().is_multiple_of(every as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_stable_and_about_one_in_n() {
        let held_n = (0..1000).filter(|i| held(&format!("q{i}"), 7, 5)).count();
        assert!((150..250).contains(&held_n), "{held_n}");
        assert_eq!(held("q1", 7, 5), held("q1", 7, 5));
    }
}
