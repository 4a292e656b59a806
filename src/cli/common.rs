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

pub(crate) fn load(arg: &ModelArg) -> Result<Embedder> {
    mrl::load_model_with(arg.model.as_deref(), arg.precision.into()).context("loading the model")
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

/// Tells glibc's allocator to keep freed blocks of up to 32 MiB (its largest mmap threshold)
/// in the heap rather than returning them to the kernel: a training step allocates and frees
/// the same activation and gradient buffers every step, and fresh pages cost a fault and a
/// zeroing each (about a tenth of a step, measured with `mrl bench train`). Other allocators
/// and systems are left as they are.
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before the work starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Resets the process's peak resident set (Linux: `5` into /proc/self/clear_refs), so the
/// next [`peak_rss_kib`] reports the peak from here on; a no-op where /proc lacks it. Freed
/// heap memory is handed back first (`malloc_trim`), since [`keep_freed_memory`] keeps it
/// resident and the reset starts from the resident set.
pub(crate) fn reset_peak_rss() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Caps glibc's malloc arenas at two for a long-running server, before its threads start:
/// by default glibc gives each busy thread an arena (up to 8 per core), and memory a thread
/// frees stays in its own arena, partly used pages included, which `malloc_trim` cannot hand
/// back. The 60-minute soak with the default arenas kept its heap in use flat (+0.9%) while
/// free bytes in the arenas grew 61 → 75 MiB (docs/api.md). Two arenas on this service's
/// few busy threads cost no measurable throughput. A no-op elsewhere than Linux/glibc.
pub(crate) fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before the server's threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Heap upkeep for a server that runs for weeks: every 30 s, glibc's own figures go to the
/// gauges `mrl_heap_in_use_bytes` (blocks handed out, mmapped ones included) and
/// `mrl_heap_free_bytes` (free blocks the arenas keep), and `malloc_trim(0)` hands the free
/// pages inside every arena back to the kernel. Why: with one arena per busy thread, memory
/// freed by a thread stays in its arena, split between blocks still in use, so RSS creeps up
/// under a mixed load while the bytes in use stay flat (the 60-minute soak in docs/api.md
/// shows both curves). A no-op thread elsewhere than Linux/glibc.
///
/// Errors: the thread could not be spawned.
pub(crate) fn spawn_heap_upkeep() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        metrics::describe_gauge!(
            "mrl_heap_in_use_bytes",
            metrics::Unit::Bytes,
            "Heap bytes handed out by the allocator (glibc mallinfo2: uordblks + hblkhd)."
        );
        metrics::describe_gauge!(
            "mrl_heap_free_bytes",
            metrics::Unit::Bytes,
            "Free heap bytes the allocator's arenas keep (glibc mallinfo2: fordblks); their \
             pages go back to the kernel every 30 s."
        );
        std::thread::Builder::new()
            .name("mrl-heap".into())
            .spawn(|| loop {
                // SAFETY: mallinfo2 only reads the allocator's counters.
                let info = unsafe { libc::mallinfo2() };
                metrics::gauge!("mrl_heap_in_use_bytes").set((info.uordblks + info.hblkhd) as f64);
                metrics::gauge!("mrl_heap_free_bytes").set(info.fordblks as f64);
                // SAFETY: malloc_trim only returns free heap pages to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
                std::thread::sleep(std::time::Duration::from_secs(30));
            })?;
    }
    Ok(())
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
