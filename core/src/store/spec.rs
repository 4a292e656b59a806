//! What a collection is, as both stores keep it: its spec (sizes, profile, model, distance,
//! layout, adapt, prompts), the record of its current rotation, its vector and collection
//! names.

use std::collections::BTreeMap;

use mrl_encoder::Precision;
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};

/// How vectors are compared.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

/// What a collection stores and how its documents were embedded.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// Stored sizes, ascending, each one named vector `d{dim}`.
    pub dims: Vec<usize>,
    /// The profile that embeds the documents.
    pub profile: String,
    pub model: String,
    /// The dense layers' arithmetic the documents were embedded with (`f32`, and absent,
    /// for collections made before there was a choice); queries are embedded the same way.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub precision: Precision,
    pub distance: Distance,
    /// Storage for large collections (a Qdrant server); the default everywhere else.
    #[serde(default, skip_serializing_if = "Layout::is_default")]
    pub layout: Layout,
    /// Re-nest the sizes below the widest onto the collection's own documents (`None`: the
    /// model's prefixes as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapt: Option<Adapt>,
    /// The texts put before documents and text queries (none in collections made before
    /// there were prompts, which embed both without one).
    #[serde(default, flatten)]
    pub prompts: CollectionPrompts,
}

/// A collection's prompts, resolved to their text at creation so that every later write and
/// search reads them the same, whatever the model folder's config says then.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionPrompts {
    /// Put before each document's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_prompt: Option<String>,
    /// Put before each text query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_prompt: Option<String>,
}

impl CollectionPrompts {
    /// `text` after `prompt`, when there is one.
    pub fn apply(prompt: &Option<String>, text: &str) -> String {
        match prompt {
            Some(p) => format!("{p}{text}"),
            None => text.to_string(),
        }
    }
}

/// An adaptive collection's option: once it holds `threshold` documents, and again whenever it
/// has doubled since the last fit, it fits a rotation onto the uncentred principal axes of its
/// stored full-width vectors and rewrites its smaller sizes from them (`core::adapt`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adapt {
    /// Documents before the first fit (at least 1; default `DEFAULT_ADAPT_THRESHOLD`).
    pub threshold: usize,
}

/// Documents an adaptive collection holds before its first fit: about 2,000 documents fit
/// SciFact's rotation as well as all 5,183 did (measured 2026-11-29); 1,000 is where the
/// gain at 64 dims is most of it.
pub const DEFAULT_ADAPT_THRESHOLD: usize = 1000;

/// A collection's fitted rotation, as it is shown (`GET /collections/{name}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationInfo {
    /// 1 for the first fit, one more per re-nest; every point's rotated sizes are under it.
    pub version: u64,
    /// When it was fitted (RFC 3339, UTC).
    pub fitted_at: String,
    /// Documents the collection held when it was fitted (the next fit comes at twice this).
    pub points: usize,
    /// Documents whose full-width vectors it was fitted on (a sample of `points`).
    pub sample: usize,
    /// How long the re-nest took: the fit and the rewrite of every point's rotated sizes.
    #[serde(default)]
    pub seconds: f64,
    /// The checkpoint's other profiles whose queries this fit maps into the documents' space,
    /// with how well the map agrees with the documents' profile on documents held out of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryMapInfo>,
    /// Which nesting the fit kept (the PCA rotation or a learned projection) and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesting: Option<NestingInfo>,
}

/// How an adaptive collection's smaller sizes are cut (`core::adapt`): from the PCA rotation,
/// or from a projection learned on the collection's own full-width vectors, kept only when
/// it finds more of each held-out document's full-width neighbours at every rotated size.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestingInfo {
    /// `pca` or `learned`.
    pub kept: String,
    /// The rotated sizes the figures are for, ascending.
    pub dims: Vec<usize>,
    /// Documents held out of the fit that the figures are measured on.
    pub held_out: usize,
    /// Per size in `dims`: recall@10 of each held-out document's full-width neighbours
    /// (among the held-out documents) under the PCA rotation.
    pub pca_recall: Vec<f64>,
    /// The same under the learned projection.
    pub learned_recall: Vec<f64>,
    /// Gradient steps the learned projection took.
    pub steps: usize,
}

/// One query profile an adaptive collection maps into its documents' space (`core::adapt`):
/// a ridge map fitted on the collection's own documents embedded by both profiles.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryMapInfo {
    /// The query profile (a name of the checkpoint's profiles).
    pub profile: String,
    /// Texts the map was fitted on: sampled documents, and query-like spans cut from them.
    pub sample: usize,
    /// Texts held out of the fit (and of choosing its ridge term), on which the figures
    /// below are measured.
    pub held_out: usize,
    /// The ridge term kept (relative to the mean eigenvalue of the inputs' Gram matrix),
    /// chosen on a third split of the sample.
    pub ridge: f64,
    /// Mean cosine between a held-out text's mapped vector and its documents'-profile
    /// vector, at full width (1 = the same vector).
    pub mean_cosine: f64,
    /// Share of a held-out text's 10 nearest sampled documents (full width, by its
    /// documents'-profile vector) that its mapped vector finds too: how far a search by this
    /// profile agrees with one by the documents' profile.
    pub neighbour_overlap: f64,
    /// The same share with the profile's vector used as it is (unmapped), for comparison;
    /// 0 when the profile's width differs from the documents'.
    pub unmapped_overlap: f64,
}

/// A collection's fitted rotation as the store keeps it: what is shown, and the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRotation {
    #[serde(flatten)]
    pub info: RotationInfo,
    /// The `w × w` rotation, row-major, f32 little-endian, base64 (standard alphabet).
    pub matrix: String,
    /// Per query profile (`info.queries`), its `w × c` map into the documents' space,
    /// row-major (`c`: the profile's width), encoded as `matrix` is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maps: BTreeMap<String, String>,
}

impl StoredRotation {
    /// The rotation slot (0 or 1) whose named vectors hold this version's sizes; version 0
    /// (no fit yet) is slot 0.
    pub fn slot(version: u64) -> usize {
        (version % 2) as usize
    }

    /// The stored form of a `w × w` row-major matrix, without query maps.
    pub fn new(info: RotationInfo, matrix: &[f32]) -> Self {
        Self {
            info,
            matrix: encode_f32(matrix),
            maps: BTreeMap::new(),
        }
    }

    /// The matrix back as f32, row-major.
    ///
    /// Errors: `Storage` when it is not base64 of whole f32s.
    pub fn matrix_f32(&self) -> Result<Vec<f32>> {
        decode_f32(&self.matrix)
    }

    /// Each query map back as f32, row-major, by profile.
    ///
    /// Errors: `Storage` when one is not base64 of whole f32s.
    pub fn maps_f32(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        self.maps
            .iter()
            .map(|(p, m)| Ok((p.clone(), decode_f32(m)?)))
            .collect()
    }
}

/// f32s as stored: little-endian bytes, base64 (standard alphabet).
pub fn encode_f32(values: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `encode_f32` undone.
///
/// Errors: `Storage` when it is not base64 of whole f32s.
fn decode_f32(text: &str) -> Result<Vec<f32>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| StoreError::Storage(format!("a stored matrix is not base64: {e}")))?;
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Storage(
            "a stored matrix is not a whole number of f32s".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// How a large collection is laid out on a Qdrant server: sharding, replication, and per size
/// where its vectors live and how they are indexed — the Matryoshka funnel pattern of
/// Qdrant's docs keeps the small prefetch sizes as int8 in RAM and the widest size, used only
/// to rescore, on disk without an HNSW graph. The embedded store has one shard with every
/// size as floats in RAM under the default HNSW, and refuses anything else
/// (`StoreError::Unsupported`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Shards the collection is split into (Qdrant's `shard_number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Copies of each shard (`replication_factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Replicas that must apply a write before it is acknowledged (`write_consistency_factor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_consistency: Option<u32>,
    /// Keep the widest size's vectors on disk (memory-mapped) instead of in RAM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_disk: bool,
    /// Sizes that also keep a scalar int8 copy in RAM, searched first and rescored with the
    /// floats (4× less RAM per size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantize: Vec<usize>,
    /// HNSW settings per size; `m = 0` builds no graph (a size used only to rescore).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hnsw: Vec<HnswSize>,
}

/// One size's HNSW settings (Qdrant's defaults where unset: m 16, ef_construct 100).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HnswSize {
    /// The stored size these settings are for.
    pub dim: usize,
    /// Links per node (0: no graph).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<u64>,
    /// Candidates considered while building (at least 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_construct: Option<u64>,
}

impl Layout {
    /// Every option, by its field name.
    pub const OPTIONS: [&'static str; 6] = [
        "shards",
        "replicas",
        "write_consistency",
        "on_disk",
        "quantize",
        "hnsw",
    ];

    /// Whether nothing is set (what every store supports).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The options that differ from the default, by field name.
    pub fn options_set(&self) -> Vec<&'static str> {
        let set = [
            self.shards.is_some(),
            self.replicas.is_some(),
            self.write_consistency.is_some(),
            self.on_disk,
            !self.quantize.is_empty(),
            !self.hnsw.is_empty(),
        ];
        Self::OPTIONS
            .iter()
            .zip(set)
            .filter_map(|(name, on)| on.then_some(*name))
            .collect()
    }

    /// Checks the values against the collection's stored sizes `dims`.
    ///
    /// Errors: `Unsupported` naming the option: a count of 0, more write consistency than
    /// replicas, an `ef_construct` below 4, or a size that is not stored (or named twice).
    pub fn check(&self, dims: &[usize]) -> Result<()> {
        let bad = |option: &str, message: String| {
            Err(StoreError::Unsupported {
                option: option.to_string(),
                message,
            })
        };
        for (option, value) in [
            ("shards", self.shards),
            ("replicas", self.replicas),
            ("write_consistency", self.write_consistency),
        ] {
            if value == Some(0) {
                return bad(option, format!("{option} must be at least 1"));
            }
        }
        if self.write_consistency > self.replicas.or(Some(1)) {
            return bad(
                "write_consistency",
                "write_consistency cannot exceed replicas".into(),
            );
        }
        if let Some(h) = self
            .hnsw
            .iter()
            .find(|h| h.ef_construct.is_some_and(|e| e < 4))
        {
            return bad(
                "hnsw",
                format!("hnsw ef_construct must be at least 4 (size {})", h.dim),
            );
        }
        let mut seen = Vec::new();
        for (option, dim) in self
            .quantize
            .iter()
            .map(|&d| ("quantize", d))
            .chain(self.hnsw.iter().map(|h| ("hnsw", h.dim)))
        {
            if !dims.contains(&dim) || seen.contains(&(option, dim)) {
                return bad(
                    option,
                    format!(
                        "{option} names size {dim} twice or a size not stored; stored: {dims:?}"
                    ),
                );
            }
            seen.push((option, dim));
        }
        Ok(())
    }
}

impl CollectionSpec {
    /// The widest stored size: an adaptive collection's full width, kept unrotated, from
    /// which its other sizes are cut.
    pub fn widest(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    /// Whether size `dim` is rotated by the collection's fit (an adaptive collection's sizes
    /// below its widest: the widest's cosines do not change under a rotation).
    pub fn rotates(&self, dim: usize) -> bool {
        self.adapt.is_some() && dim < self.widest()
    }

    /// The sizes the collection's fit rotates, ascending (none for a generic collection).
    pub fn rotated_dims(&self) -> Vec<usize> {
        self.dims
            .iter()
            .copied()
            .filter(|&d| self.rotates(d))
            .collect()
    }

    /// The named vector holding size `dim` in rotation slot `slot` (0 or 1): `d{dim}`, and
    /// `d{dim}_1` for slot 1 of a rotated size (a re-nest fills the slot not in use, then
    /// switches to it).
    pub fn vector_name(&self, dim: usize, slot: usize) -> String {
        if slot == 1 && self.rotates(dim) {
            format!("{}_1", vector_name(dim))
        } else {
            vector_name(dim)
        }
    }

    /// Every named vector the collection has, with its size.
    pub fn vectors(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for &d in &self.dims {
            out.push((vector_name(d), d));
            if self.rotates(d) {
                out.push((self.vector_name(d, 1), d));
            }
        }
        out
    }

    /// The size of named vector `name`, if the collection has it.
    pub(crate) fn size_of(&self, name: &str) -> Option<usize> {
        self.vectors()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
    }
}

/// The named vector of a stored size (slot 0).
pub fn vector_name(dim: usize) -> String {
    format!("d{dim}")
}

pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}
