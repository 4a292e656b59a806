//! The mrl manifest (`mrl.json`) that makes a folder an elastic checkpoint: its named
//! profiles, their own heads and alignments, nested dims and importance ranking.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{read_json, BertConfig};
use crate::error::{EncoderError, Result};
use crate::profile::Profile;

/// The newest manifest format: 2 adds profiles' `own_layers`, which a build reading only 1
/// would skip, running a child's head and bridges over the parent's layers.
pub const FORMAT: u32 = 2;

/// The file an elastic checkpoint adds beside `config.json`.
pub const MANIFEST_FILE: &str = "mrl.json";

/// `mrl.json`: what makes a folder an elastic checkpoint. The weights beside it are permuted
/// by importance, so every profile listed here is a prefix slice of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bumped when a field changes meaning.
    pub format: u32,
    /// What the weights were derived from (name and where it came from).
    pub base_model: String,
    /// Output sizes that are meant to be used as prefixes, ascending.
    pub nested_dims: Vec<usize>,
    /// Named sub-encoders, the first being the full model.
    pub profiles: Vec<NamedProfile>,
    /// Compute budget → profile name: the table a router (or the zero-shot search) chose.
    #[serde(default)]
    pub budgets: Vec<BudgetChoice>,
    /// How the permutation was chosen; absent on checkpoints that were not ranked.
    #[serde(default)]
    pub ranking: Option<Ranking>,
    /// How the checkpoint was made: tool, method, data, settings.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// A profile with its name and cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedProfile {
    pub name: String,
    #[serde(flatten)]
    pub profile: Profile,
    pub params: usize,
    /// FLOPs relative to the full encoder at [`COST_SEQ_LEN`] tokens, its layer bridges
    /// included (so a bridged profile can cost a little more than the budget it was
    /// calibrated for).
    pub relative_flops: f64,
    /// Similarity fidelity to the full model on the calibration texts (mean per-text Pearson
    /// correlation of cosine similarities), when measured (not after bridges were fitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<f64>,
    /// The profile's own Matryoshka head, `heads.{head}.weight` / `.bias` in the weights
    /// (`outputs × hidden`); absent: the shared `head` (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The profile's layer bridges, `bridges.{bridges}.LAYER.*` in the weights (see
    /// [`Bridge`](crate::model::Bridge)); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridges: Option<String>,
    /// The layers the profile owns, `own_layers.{own_layers}.*` in the weights (low-rank deltas and
    /// norms trained for it over the parent's; see `BertModel::bind_profile_layers`);
    /// absent: it runs the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_layers: Option<String>,
    /// Document profiles this profile's query vectors may be searched against (besides its
    /// own): the checkpoint was fitted or measured for that asymmetric use. Searching another
    /// profile's documents is refused ([`Manifest::check_aligned`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aligned_with: Vec<String>,
}

/// Sequence length at which relative FLOPs are quoted: a typical passage.
pub const COST_SEQ_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetChoice {
    /// Fraction of the full encoder's FLOPs.
    pub budget: f64,
    pub profile: String,
}

/// The importance order behind the permutation, in original indices: entry `i` of each list
/// is the original index now at position `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// Hidden (residual) channels. The output embedding is in this order, so original
    /// output channel `hidden_order[i]` is now channel `i`.
    pub hidden_order: Vec<usize>,
    /// Per layer, attention heads.
    pub heads: Vec<Vec<usize>>,
    /// Per layer, FFN neurons.
    pub ffn: Vec<Vec<usize>>,
    /// Layers in the order they were dropped (least important first), and the normalised
    /// MSE each one's removal cost when it was dropped.
    pub layer_drop_order: Vec<usize>,
    pub layer_drop_scores: Vec<f64>,
}

impl Manifest {
    /// Reads `dir/mrl.json` when there is one and checks its profiles against `cfg` and its
    /// nested dims against the model's output width (wider than `cfg`'s hidden size when the
    /// checkpoint has a Matryoshka head that computes more): dims up to `padded_width` (the
    /// heads' rows as stored, zero rows included) are dropped past the output width, wider
    /// ones refused.
    pub fn load(
        dir: &Path,
        cfg: &BertConfig,
        output_width: usize,
        padded_width: usize,
    ) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let m: Self = read_json(&path)?;
        let bad = |reason: String| EncoderError::UnsupportedModel {
            path: path.clone(),
            reason,
        };
        if !(1..=FORMAT).contains(&m.format) {
            return Err(bad(format!(
                "manifest format {} (this build reads 1 to {FORMAT})",
                m.format
            )));
        }
        for p in &m.profiles {
            p.profile.validate(cfg, &p.name)?;
            if p.name.contains('=') {
                return Err(bad(format!("profile name {:?} contains '='", p.name)));
            }
        }
        if m.nested_dims.contains(&0) {
            return Err(bad("nested dim 0".into()));
        }
        if let Some(&d) = m.nested_dims.iter().find(|&&d| d > padded_width) {
            return Err(bad(format!("nested dim {d} is outside 1..={output_width}")));
        }
        // Checkpoints made before heads were cut to their real width listed 512 on a 384-wide
        // model (zero rows): they still load, offering only the dims they compute.
        let mut m = m;
        let listed = m.nested_dims.len();
        m.nested_dims.retain(|&d| d <= output_width);
        if m.nested_dims.len() < listed {
            tracing::warn!(
                "{}: nested dims past the real width {output_width} are not offered (their \
                 values were zero padding)",
                path.display()
            );
        }
        Ok(Some(m))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| EncoderError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| EncoderError::io(&path, e))
    }

    pub fn profile(&self, name: &str) -> Option<&NamedProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Whether queries embedded by profile `query` may search documents embedded by
    /// `documents` (names or specs as callers wrote them): the same profile always; another
    /// one only when `query`'s entry lists it in `aligned_with`.
    ///
    /// Errors: [`EncoderError::NotAligned`] naming both.
    pub fn check_aligned(&self, query: &str, documents: &str) -> Result<()> {
        let (q, d) = (query.trim(), documents.trim());
        let declared = self
            .profile(q)
            .is_some_and(|p| p.aligned_with.iter().any(|a| a == d));
        if q == d || declared {
            return Ok(());
        }
        Err(EncoderError::NotAligned {
            query: q.to_string(),
            documents: d.to_string(),
            aligned: self
                .profile(q)
                .map(|p| p.aligned_with.clone())
                .unwrap_or_default(),
        })
    }
}
