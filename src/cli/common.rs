//! What the commands share: the model argument and its loading, the Qdrant arguments, the
//! progress bar, profile lists and the peak-RSS reading.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mrl::{DimPolicy, Embedder, Precision};

#[derive(Args)]
pub(crate) struct ModelArg {
    /// A sentence-transformers or mrl model folder (default: models/mrl-minilm-elastic, the
    /// shipped trained checkpoint, when present; else the base model, fetched on
    /// first use).
    #[arg(long, env = "MRL_MODEL")]
    pub(crate) model: Option<PathBuf>,
    /// The dense layers' arithmetic: f32 (parity with sentence-transformers) or int8
    /// (weights quantized once at load, activations per row; VNNI kernels).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32, env = "MRL_PRECISION")]
    pub(crate) precision: PrecisionArg,
}

/// `--precision`: the encoder's `Precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PrecisionArg {
    F32,
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(a: PrecisionArg) -> Self {
        match a {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

#[derive(Args)]
pub(crate) struct QdrantArgs {
    /// A Qdrant server or cluster (gRPC address, e.g. http://localhost:6334) instead of the
    /// embedded store.
    #[arg(long, env = "MRL_QDRANT_URL")]
    pub(crate) qdrant_url: Option<String>,
    #[arg(long, env = "QDRANT_API_KEY", hide_env_values = true)]
    pub(crate) qdrant_api_key: Option<String>,
}

/// `--dim-policy`: which output sizes may be asked for (mrl-core's one rule, `DimPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DimPolicyArg {
    /// Only the checkpoint's nested dims (`mrl.json`; the native width for a plain model).
    Nested,
    /// Any prefix up to the profile's width.
    Any,
}

impl From<DimPolicyArg> for DimPolicy {
    fn from(a: DimPolicyArg) -> Self {
        match a {
            DimPolicyArg::Nested => DimPolicy::Nested,
            DimPolicyArg::Any => DimPolicy::AnyPrefix,
        }
    }
}

impl DimPolicyArg {
    /// The flag's value for a policy, so each command's default is the core's.
    pub(crate) fn of(p: DimPolicy) -> Self {
        match p {
            DimPolicy::Nested => Self::Nested,
            DimPolicy::AnyPrefix => Self::Any,
        }
    }
}

/// Loads the model (`--model`, else the shipped checkpoint wherever `mrl` finds it) and says
/// on stderr which one runs: its folder, profiles, nested dims and precision.
pub(crate) fn load(arg: &ModelArg) -> Result<Embedder> {
    let embedder = mrl::load_model_with(arg.model.as_deref(), arg.precision.into())
        .context("loading the model")?;
    tracing::info!(
        "model {}: profiles {}; dims {:?}; precision {}",
        embedder.dir().display(),
        embedder.profile_names().join(", "),
        embedder.nested_dims(),
        embedder.precision()
    );
    Ok(embedder)
}

/// `rel` inside the shared data folder, where the commands' data defaults point:
/// `$MRL_SHARED_DIR/rel`, else `../shared/rel` (the folder beside a checkout).
pub(crate) fn shared_path(rel: &str) -> PathBuf {
    std::env::var_os("MRL_SHARED_DIR")
        .map_or_else(|| PathBuf::from("../shared"), PathBuf::from)
        .join(rel)
}

/// Checks that `path` (given for `flag`) exists, so a missing default says where it was
/// looked for and how to point elsewhere.
///
/// Errors: `path` does not exist.
pub(crate) fn must_exist(path: &std::path::Path, flag: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    anyhow::bail!(
        "{flag} {} does not exist (looked in {}); give {flag}, or set MRL_SHARED_DIR to the \
         folder holding data/ and bench/",
        path.display(),
        cwd.join(path).display()
    )
}

/// `all` means every profile the model knows; otherwise names or specs separated by ';'.
pub(crate) fn profile_list(embedder: &Embedder, spec: &str) -> Vec<String> {
    if spec.trim() == "all" {
        return embedder.profile_names();
    }
    spec.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Resets the process's peak resident set (Linux: `5` into /proc/self/clear_refs), so the
/// next [`peak_rss_kib`] reports the peak from here on; a no-op where /proc lacks it. Freed
/// heap memory is handed back first, since [`super::heap::keep_freed_memory`] keeps it
/// resident and the reset starts from the resident set.
pub(crate) fn reset_peak_rss() {
    super::heap::release_freed_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set (VmHWM), where /proc has it.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub(crate) fn bar(label: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta} ({elapsed})",
        )
        .expect("the progress template is valid; this is a bug")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}
