//! `mrl bench train`: steps/s, tokens/s and peak RSS of a full training step (forward,
//! backward, clipping, AdamW) per kernel set and profile, beside PyTorch running the same
//! steps on the same batches from the same weights (`scripts/bench_train.py` in the venv of
//! `scripts/torch.sh`), reported as ratios from this one run. Rows land in `--out` as they
//! are measured, so a rerun after a crash measures only what is missing.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use mrl_trainer::bench::{StepBenchOptions, Workload};
use mrl_trainer::student::Kernels;
use serde::{Deserialize, Serialize};

use super::common::{bar, peak_rss_kib, reset_peak_rss};
use super::heap::keep_freed_memory;

#[derive(Args)]
pub(crate) struct BenchTrainArgs {
    /// The model whose weights start the student; its manifest names the profiles.
    #[arg(long, default_value_os_t = mrl::find_shipped_model().unwrap_or_else(|looked| looked[0].clone()))]
    model: PathBuf,
    /// BEIR folder whose judged pairs fill the batches.
    #[arg(long, default_value_os_t = super::common::shared_path("data/scifact"))]
    data: PathBuf,
    #[arg(long, default_value = "train")]
    split: String,
    /// Pairs per step (the elastic recipe's 32).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per text at most (the recipe's 128).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Timed steps per row.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Untimed steps before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Profiles, separated by ','.
    #[arg(long, value_delimiter = ',', default_value = "full,b50")]
    profiles: Vec<String>,
    /// mrl's kernel sets to measure, separated by ',': fused, primitive.
    #[arg(long, value_delimiter = ',', default_value = "fused,primitive")]
    kernels: Vec<String>,
    /// The python of a venv with torch (`scripts/torch.sh` prints it); without it, no
    /// PyTorch rows.
    #[arg(long)]
    torch: Option<PathBuf>,
    #[arg(long, default_value = "scripts/bench_train.py")]
    torch_script: PathBuf,
    /// Folder for train.json and train.md (and the rows measured so far).
    #[arg(long, default_value = "docs/bench/train")]
    out: PathBuf,
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    engine: String,
    profile: String,
    seconds: Vec<f64>,
    tokens_per_step: f64,
    losses: Vec<f64>,
    peak_rss_mib: f64,
    /// Per timed step: forward, backward, optimizer seconds (mrl's rows only).
    #[serde(default)]
    phases: Vec<[f64; 3]>,
    /// The options that produced it; rows of other options are measured again.
    key: String,
}

impl Row {
    fn steps_per_s(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        1.0 / s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

fn kernel_set(name: &str) -> Result<Kernels> {
    match name.trim() {
        "fused" => Ok(Kernels::Fused),
        "primitive" => Ok(Kernels::Primitive),
        other => bail!("--kernels: {other:?} is not fused or primitive"),
    }
}

pub(crate) fn run(args: BenchTrainArgs) -> Result<()> {
    keep_freed_memory();
    let kernels = args
        .kernels
        .iter()
        .map(|k| Ok((k.trim().to_string(), kernel_set(k)?)))
        .collect::<Result<Vec<_>>>()?;
    super::common::must_exist(&args.data, "--data")?;
    let mut opts = StepBenchOptions::new(args.model.clone(), args.data.clone());
    opts.split = args.split.clone();
    opts.batch = args.batch;
    opts.max_tokens = args.max_tokens;
    opts.steps = args.steps;
    opts.warmup = args.warmup;
    let key = format!(
        "{}|{}|{}|{}|{}|{}|{}",
        args.model.display(),
        args.data.display(),
        args.split,
        args.batch,
        args.max_tokens,
        args.steps,
        args.warmup
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let rows_path = args.out.join("rows.jsonl");
    let mut rows: Vec<Row> = std::fs::read_to_string(&rows_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Row>(l).ok())
        .filter(|r| r.key == key)
        .collect();
    let have = |rows: &[Row], engine: &str, profile: &str| {
        rows.iter()
            .any(|r| r.engine == engine && r.profile == profile)
    };
    eprintln!(
        "preparing {} batches of {} pairs…",
        args.warmup + args.steps,
        args.batch
    );
    let workload = Workload::prepare(opts)?;
    let profiles = args
        .profiles
        .iter()
        .map(|name| {
            let p = workload
                .embedder
                .profile(Some(name))
                .with_context(|| format!("--profiles {name}"))?;
            Ok((name.trim().to_string(), p))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut append = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&rows_path)
        .with_context(|| rows_path.display().to_string())?;
    let mut save = |row: Row, rows: &mut Vec<Row>| -> Result<()> {
        writeln!(append, "{}", serde_json::to_string(&row)?)?;
        rows.push(row);
        Ok(())
    };
    let total = profiles.len() * (kernels.len() + usize::from(args.torch.is_some()));
    let progress = bar("bench train", total as u64);
    for (name, profile) in &profiles {
        for (kname, k) in &kernels {
            let engine = format!("mrl {kname}");
            if !have(&rows, &engine, name) {
                progress.set_message(format!("{engine} {name}"));
                reset_peak_rss();
                let m = workload.run(*k, profile)?;
                let rss = peak_rss_kib().map_or(f64::NAN, |k| k as f64 / 1024.0);
                let row = Row {
                    engine,
                    profile: name.clone(),
                    seconds: m.seconds,
                    tokens_per_step: m.tokens_per_step,
                    losses: m.losses,
                    phases: m.phases,
                    peak_rss_mib: rss,
                    key: key.clone(),
                };
                save(row, &mut rows)?;
            }
            progress.inc(1);
        }
    }
    if let Some(python) = &args.torch {
        let missing: Vec<(String, _)> = profiles
            .iter()
            .filter(|(n, _)| !have(&rows, "pytorch", n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            progress.set_message("pytorch");
            let spec = workload.write_spec(&args.out.join("torch-spec"), &missing)?;
            let out = Command::new(python)
                .arg(&args.torch_script)
                .arg(&spec)
                .output()
                .with_context(|| format!("running {}", python.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    args.torch_script.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("the PyTorch script printed {line:?}"))?;
                let row = Row {
                    engine: "pytorch".into(),
                    profile: v["profile"].as_str().unwrap_or_default().to_string(),
                    seconds: serde_json::from_value(v["seconds"].clone())?,
                    tokens_per_step: v["tokens_per_step"].as_f64().unwrap_or(f64::NAN),
                    losses: serde_json::from_value(v["losses"].clone())?,
                    peak_rss_mib: v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                    phases: Vec::new(),
                    key: key.clone(),
                };
                save(row, &mut rows)?;
            }
            let _ = std::fs::remove_dir_all(args.out.join("torch-spec"));
        }
        progress.inc(missing.len() as u64);
    }
    progress.finish_and_clear();
    let table = table(&rows, &profiles, &args);
    println!("{table}");
    std::fs::write(args.out.join("train.md"), &table)?;
    std::fs::write(
        args.out.join("train.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "options": key, "threads": rayon_threads(),
            "matmul": mrl_encoder::kernels::matmul_backend(), "rows": rows,
        }))?,
    )?;
    eprintln!("wrote {}/train.{{json,md}}", args.out.display());
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The Markdown table: per profile, each engine's rates, RSS, first loss, and its speed as a
/// multiple of PyTorch's and of mrl's primitive kernels from the same run.
fn table(rows: &[Row], profiles: &[(String, mrl::Profile)], args: &BenchTrainArgs) -> String {
    let mut t = format!(
        "Training step, {} pairs × ≤{} tokens, {} timed steps after {} warm-up, \
         {} threads, mrl's matmul: {} (`mrl bench train`; steps/s is the median step's)\n\n\
         | profile | engine | steps/s | tokens/s | peak RSS MiB | first loss | × PyTorch | × primitive |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.batch,
        args.max_tokens,
        args.steps,
        args.warmup,
        rayon_threads(),
        mrl_encoder::kernels::matmul_backend()
    );
    for (name, _) in profiles {
        let find = |engine: &str| {
            rows.iter()
                .find(|r| r.engine == engine && &r.profile == name)
        };
        let ratio = |r: &Row, base: Option<&Row>| {
            base.map_or("–".to_string(), |b| {
                format!("{:.2}×", r.steps_per_s() / b.steps_per_s())
            })
        };
        for r in rows.iter().filter(|r| &r.profile == name) {
            t.push_str(&format!(
                "| {name} | {} | {:.3} | {:.0} | {:.0} | {:.5} | {} | {} |\n",
                r.engine,
                r.steps_per_s(),
                r.steps_per_s() * r.tokens_per_step,
                r.peak_rss_mib,
                r.losses.first().copied().unwrap_or(f64::NAN),
                ratio(r, find("pytorch")),
                ratio(r, find("mrl primitive")),
            ));
        }
    }
    t
}
