//! The rotation a collection's points are under, and the one cut of a raw full vector into its
//! stored and searched named vectors under it.

use std::collections::HashMap;

use mrl_encoder::linear::LinearMap;
use mrl_encoder::nested::nest;

use crate::error::{Error, Result};
use crate::store::{CollectionSpec, Funnel, RotationInfo, StoreError, StoredRotation, VectorQuery};

use serde_json::Value;

use crate::store::SearchParams;

/// A search before it is cut for a collection: the query's full vector (the raw embedding of a
/// text, or a caller's vector) and what to ask the store.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The vector every searched size is cut from: `dim` values for a generic collection's
    /// vector query, else the full width.
    pub full: Vec<f32>,
    pub dim: usize,
    pub limit: usize,
    /// `(dim, candidates)` of a prefetch.
    pub funnel: Option<(usize, usize)>,
    pub filter: Option<Value>,
    pub exact: bool,
    pub params: SearchParams,
    /// The query profile whose fitted map carries `full` into the documents' space first
    /// (`None`: `full` is in it already).
    pub profile: Option<String>,
}

/// The rotation the collection's points are under now (none before the first fit: the
/// model's prefixes, version 0, slot 0), what was fitted, and the query maps fitted with it.
#[derive(Debug, Default)]
pub(super) struct Current {
    /// `R` (`w × w`), as stored.
    pub(super) rotation: Option<LinearMap>,
    pub(super) info: Option<RotationInfo>,
    /// By query profile: its `w × c` map into the documents' full-width space.
    pub(super) maps: HashMap<String, LinearMap>,
}

impl Current {
    /// The rotation `stored` (`None`: none yet) of collection `name`, as loaded.
    ///
    /// Errors: `Store` when the matrix is malformed or not as wide as the full width.
    pub(super) fn from_stored(
        name: &str,
        spec: &CollectionSpec,
        stored: Option<StoredRotation>,
    ) -> Result<Self> {
        let Some(stored) = stored else {
            return Ok(Self::default());
        };
        // A matrix not `w × w` (another full width) is refused here, by name.
        let w = spec.widest();
        let rotation = LinearMap::from_matrix_f32(w, w, &stored.matrix_f32()?)
            .map_err(|e| StoreError::Storage(format!("{name:?}'s rotation: {e}")))?;
        let mut maps = HashMap::new();
        // A map is an option, not the collection: one that cannot be read is left out
        // (its profile's searches are refused, or ruled by the checkpoint) and the
        // collection still opens.
        for (profile, matrix) in stored.maps_f32().unwrap_or_else(|e| {
            tracing::warn!("{name:?}: its query maps cannot be read: {e}");
            Default::default()
        }) {
            match LinearMap::from_matrix_f32(w, matrix.len() / w, &matrix) {
                Ok(map) => {
                    maps.insert(profile, map);
                }
                Err(e) => tracing::warn!("{name:?}: {profile:?} query map left out: {e}"),
            }
        }
        Ok(Self {
            rotation: Some(rotation),
            info: Some(stored.info),
            maps,
        })
    }

    pub(super) fn version(&self) -> u64 {
        self.info.as_ref().map_or(0, |i| i.version)
    }

    pub(super) fn slot(&self) -> usize {
        StoredRotation::slot(self.version())
    }

    /// The named vectors of size `dims` cut from raw full vector `full` into this slot: the
    /// sizes `spec` rotates from `R·full`, the others from `full` itself, each renormalised.
    pub(super) fn nest(
        &self,
        spec: &CollectionSpec,
        full: &[f32],
        dims: &[usize],
    ) -> Result<Vec<(String, Vec<f32>)>> {
        let internal = |e: mrl_encoder::EncoderError| Error::Internal(e.to_string());
        let widest_rotated = dims.iter().copied().filter(|&d| spec.rotates(d)).max();
        let rotated = match (&self.rotation, widest_rotated) {
            (Some(r), Some(widest)) => {
                if full.len() != r.cols() {
                    return Err(Error::Internal(format!(
                        "a {}-wide vector for a {}-wide rotation; this is a bug",
                        full.len(),
                        r.cols()
                    )));
                }
                Some(r.apply_prefix(full, widest))
            }
            _ => None,
        };
        dims.iter()
            .map(|&d| {
                let source = match &rotated {
                    Some(r) if spec.rotates(d) => r.as_slice(),
                    _ => full,
                };
                Ok((
                    spec.vector_name(d, self.slot()),
                    nest(source, d, true).map_err(internal)?,
                ))
            })
            .collect()
    }

    /// The store's query for `q` under this rotation (and this fit's map for `q.profile`).
    pub(super) fn query(&self, spec: &CollectionSpec, q: &SearchQuery) -> Result<VectorQuery> {
        let sizes: Vec<usize> = std::iter::once(q.dim)
            .chain(q.funnel.map(|(d, _)| d))
            .collect();
        let mapped;
        let full = match &q.profile {
            None => q.full.as_slice(),
            Some(p) => {
                let map = self.maps.get(p).ok_or_else(|| {
                    Error::field(
                        "profile",
                        format!("this collection's current fit maps no {p:?} queries"),
                    )
                })?;
                if map.cols() != q.full.len() {
                    return Err(Error::Internal(format!(
                        "a {}-wide {p:?} query for a map from {}; this is a bug",
                        q.full.len(),
                        map.cols()
                    )));
                }
                mapped = map.apply(&q.full);
                mapped.as_slice()
            }
        };
        let cut = self.nest(spec, full, &sizes)?;
        if let Some((_, zero)) = cut.iter().find(|(_, v)| v.iter().all(|&x| x == 0.0)) {
            return Err(Error::field(
                "vector",
                format!(
                    "the query's first {} values are all zero (as float32, as the collection cuts it)",
                    zero.len()
                ),
            ));
        }
        let mut cut = cut.into_iter();
        let (using, vector) = cut
            .next()
            .ok_or_else(|| Error::Internal("a query without sizes; this is a bug".into()))?;
        let funnel = match (q.funnel, cut.next()) {
            (Some((dim, candidates)), Some((using, vector))) => Some(Funnel {
                dim,
                using,
                vector,
                candidates,
            }),
            _ => None,
        };
        Ok(VectorQuery {
            vector,
            dim: q.dim,
            using,
            limit: q.limit,
            filter: q.filter.clone(),
            funnel,
            exact: q.exact,
            params: q.params,
        })
    }
}
