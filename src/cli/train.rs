//! `mrl train` (the family recipe or the elastic backbone recipe) and `mrl calibrate` (a
//! zero-shot elastic checkpoint).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use mrl::{Fetcher, DEFAULT_MODEL};
use mrl_trainer::CalibrateOptions;

use super::common::{bar, ModelArg};

#[derive(Args)]
pub(crate) struct CalibrateArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// JSONL texts (BEIR corpus or queries, {text} objects or JSON strings); repeat to mix
    /// files, which are sampled evenly.
    #[arg(long, required = true)]
    pub(crate) texts: Vec<PathBuf>,
    /// Folder to create for the elastic checkpoint.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Calibration texts in all.
    #[arg(long, default_value_t = 1024)]
    pub(crate) limit: usize,
    /// Tokens per calibration text.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: usize,
    /// Texts used for the depth ranking and the profile search.
    #[arg(long, default_value_t = 256)]
    pub(crate) search_texts: usize,
    /// Compute budgets (fractions of the full FLOPs) that get a profile.
    #[arg(long, value_delimiter = ',', default_value = "0.75,0.5,0.25")]
    pub(crate) budgets: Vec<f64>,
    /// Nested output sizes to list in the manifest.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,384")]
    pub(crate) dims: Vec<usize>,
}

pub(crate) fn train(config: &std::path::Path) -> Result<()> {
    // `recipe = "heads"` marks the cached-teacher recipe (frozen parent, fitted heads).
    let text = std::fs::read_to_string(config).with_context(|| config.display().to_string())?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", config.display()))?;
    if table.get("recipe").and_then(|v| v.as_str()) == Some("heads") {
        return train_heads(config);
    }
    super::common::keep_freed_memory();
    let cfg = mrl_trainer::train::TrainConfig::load(config)?;
    let progress = bar("train", cfg.steps as u64);
    let summary = mrl_trainer::train::train(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "trained {} steps ({} resumed) on {} pairs in {:.0}s; checkpoint in {}",
        summary.steps,
        summary.resumed_at,
        summary.pairs,
        summary.seconds,
        cfg.out.join("model").display()
    );
    for (budget, p) in &summary.profiles {
        println!("budget {budget}: {p}");
    }
    Ok(())
}

fn train_heads(config: &std::path::Path) -> Result<()> {
    let cfg = mrl_trainer::family::FamilyConfig::load(config)?;
    let progress = bar("heads", 0);
    let summary = mrl_trainer::family::fit_family(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "fitted the heads on {} pairs in {:.0}s (chosen step {}); checkpoint in {}",
        summary.pairs,
        summary.seconds,
        summary.chosen_step,
        cfg.out.join("model").display()
    );
    println!("| held-out set | documents | queries | dim | NDCG@10 | rotation | plain |");
    println!("|---|---|---|---|---|---|---|");
    for r in &summary.report {
        println!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.4} |",
            r.set,
            r.profile,
            r.query_profile,
            r.dim,
            r.ndcg_at_10,
            r.rotation_ndcg_at_10,
            r.plain_ndcg_at_10
        );
    }
    if !summary.guards.is_empty() {
        println!("\n| guard | profile | dim | Spearman | rotation | plain |");
        println!("|---|---|---|---|---|---|");
        for g in &summary.guards {
            println!(
                "| {} | {} | {} | {:.4} | {:.4} | {:.4} |",
                g.guard, g.profile, g.dim, g.spearman, g.rotation_spearman, g.plain_spearman
            );
        }
    }
    Ok(())
}

pub(crate) fn calibrate(args: CalibrateArgs) -> Result<()> {
    let source = match &args.model.model {
        Some(d) => d.clone(),
        None => Fetcher::default().ensure(&DEFAULT_MODEL)?,
    };
    let opts = CalibrateOptions::new(args.texts)
        .limit(args.limit)
        .max_tokens(args.max_tokens)
        .search_texts(args.search_texts)
        .budgets(args.budgets)
        .nested_dims(args.dims);
    let start = Instant::now();
    let manifest = mrl_trainer::calibrate(&source, &args.out, &opts, &bar)?;
    eprintln!(
        "wrote {} in {:.0}s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    println!("| profile | layers | heads | ffn | hidden | params | relative FLOPs | fidelity |");
    println!("|---|---|---|---|---|---|---|---|");
    for p in &manifest.profiles {
        let layers: Vec<String> = p.profile.layers.iter().map(|l| l.to_string()).collect();
        println!(
            "| {} | {} | {} | {} | {} | {:.1}M | {:.3} | {} |",
            p.name,
            layers.join("+"),
            p.profile.heads,
            p.profile.ffn,
            p.profile.hidden,
            p.params as f64 / 1e6,
            p.relative_flops,
            p.fidelity.map_or("-".into(), |f| format!("{f:.4}"))
        );
    }
    Ok(())
}
