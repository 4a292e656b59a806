//! `mrl train` (the family recipe or the elastic backbone recipe) and `mrl calibrate` (a
//! zero-shot elastic checkpoint).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use mrl::{Fetcher, DEFAULT_MODEL};
use mrl_trainer::CalibrateOptions;

use super::common::{bar, ModelArg, PrecisionArg};

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
    match table.get("recipe").and_then(|v| v.as_str()) {
        Some("heads") => return train_heads(config),
        Some("distill") => return train_distill(config),
        Some("children") => return train_children(config),
        _ => {}
    }
    super::heap::keep_freed_memory();
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

fn train_children(config: &std::path::Path) -> Result<()> {
    let cfg = mrl_trainer::children::ChildrenConfig::load(config)?;
    let progress = bar("children", cfg.steps as u64);
    let summary = mrl_trainer::children::fit_children(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "trained {} steps ({} resumed) on {} texts in {:.0}s; checkpoint in {}",
        summary.steps,
        summary.resumed_at,
        summary.texts,
        summary.seconds,
        cfg.out.join("model").display()
    );
    for (name, own, check) in &summary.children {
        println!("{name}: {own} own parameters; held-out check {check}");
    }
    Ok(())
}

fn train_distill(config: &std::path::Path) -> Result<()> {
    let cfg = mrl_trainer::distill::DistillConfig::load(config)?;
    let progress = bar("distill", 0);
    let summary = mrl_trainer::distill::fit_distill(&cfg, &progress)?;
    progress.finish_and_clear();
    eprintln!(
        "fitted the heads on {} texts ({} held out) in {:.0}s (chosen steps {:?}); checkpoint in {}",
        summary.texts.0,
        summary.texts.1,
        summary.seconds,
        summary.chosen_steps,
        cfg.out.join("model").display()
    );
    println!("Held-out neighbour recall@10 against the parent's full width:\n");
    println!("| queries | documents | dim | recall@10 | start | plain |");
    println!("|---|---|---|---|---|---|");
    for r in &summary.report {
        println!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} |",
            r.query_profile,
            r.profile,
            r.dim,
            r.recall_at_10,
            r.start_recall_at_10,
            r.plain_recall_at_10
        );
    }
    if !summary.bridges.is_empty() {
        println!(
            "\nLayer bridges: held-out mean squared error against the parent's hidden states\n"
        );
        println!("| profile | after layer | stands in for layers | tokens | plain skip | bridge | left |");
        println!("|---|---|---|---|---|---|---|");
        for b in &summary.bridges {
            println!(
                "| {} | {} | {} | {} | {:.4} | {:.4} | {:.1}% |",
                b.profile,
                b.after,
                if b.target > b.after {
                    format!("{}..={}", b.after + 1, b.target)
                } else {
                    "none (corrects its output)".into()
                },
                b.tokens,
                b.skip_mse,
                b.bridge_mse,
                if b.skip_mse > 0.0 {
                    100.0 * b.bridge_mse / b.skip_mse
                } else {
                    f64::NAN
                }
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct JudgeArgs {
    /// The checkpoint to judge.
    #[arg(long)]
    model: PathBuf,
    /// The base model it was cut from (default: the fetched all-MiniLM-L6-v2).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Another checkpoint judged beside it (e.g. the previous default).
    #[arg(long)]
    previous: Option<PathBuf>,
    /// BEIR splits to judge on, DIR:SPLIT; repeatable; `none` judges no BEIR split (default:
    /// under $MRL_SHARED_DIR, else ../shared).
    #[arg(long, value_name = "DIR:SPLIT", default_values_t = ["data/scifact:test", "data/nfcorpus:dev"]
        .map(|s| super::common::shared_path(s).display().to_string()))]
    beir: Vec<String>,
    /// STS-B-format files to judge on; repeatable; `none` judges none.
    #[arg(long, default_values_os_t = [super::common::shared_path("data/stsbenchmark/sts-dev.csv")])]
    sts: Vec<PathBuf>,
    /// The alignment rule, PROFILE=SHARE: that profile's queries against `full` documents
    /// must keep SHARE of the symmetric `full` score on every set at every size; repeatable.
    #[arg(long, value_name = "PROFILE=SHARE", default_values = ["b50=0.95", "b25=0.90"])]
    align: Vec<String>,
    /// Write the verdicts into the model's mrl.json (`aligned_with`).
    #[arg(long)]
    write: bool,
    /// Where embeddings are cached.
    #[arg(long, default_value = "runs/embeddings")]
    cache: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The dense layers' arithmetic of the judged checkpoints (the base model's rows stay
    /// f32).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
}

pub(crate) fn judge(args: JudgeArgs) -> Result<()> {
    use mrl_trainer::judge::{JudgeOptions, JudgeSet};
    let mut sets = Vec::new();
    for b in args.beir.iter().filter(|b| *b != "none") {
        let (dir, split) = b
            .rsplit_once(':')
            .with_context(|| format!("--beir {b:?}: expected DIR:SPLIT"))?;
        super::common::must_exist(std::path::Path::new(dir), "--beir")?;
        sets.push(JudgeSet::Beir {
            dir: dir.into(),
            split: split.into(),
        });
    }
    for p in args.sts.iter().filter(|p| p.as_os_str() != "none") {
        super::common::must_exist(p, "--sts")?;
        sets.push(JudgeSet::Sts { path: p.clone() });
    }
    let mut align = Vec::new();
    for a in &args.align {
        let (p, share) = a
            .split_once('=')
            .with_context(|| format!("--align {a:?}: expected PROFILE=SHARE"))?;
        let share: f64 = share
            .parse()
            .with_context(|| format!("--align {a:?}: SHARE is not a number"))?;
        align.push((p.to_string(), share));
    }
    let base = match args.base {
        Some(b) => b,
        None => Fetcher::default().ensure(&DEFAULT_MODEL)?,
    };
    let opts = JudgeOptions {
        model: args.model.clone(),
        base,
        previous: args.previous,
        sets,
        cache: args.cache,
        align,
        precision: args.precision.into(),
    };
    let progress = bar("judge", 0);
    let report = mrl_trainer::judge::judge(&opts, &progress)?;
    progress.finish_and_clear();
    print_judgement(&report.rows);
    println!();
    for v in &report.alignment {
        println!(
            "{} -> full: worst {:.1}% of full ({}), threshold {:.0}%: {}",
            v.profile,
            100.0 * v.worst_share,
            v.worst_at,
            100.0 * v.threshold,
            if v.earned { "aligned" } else { "not aligned" }
        );
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| out.display().to_string())?;
    }
    if args.write {
        mrl_trainer::judge::write_alignment(&args.model, &report.alignment)?;
        eprintln!(
            "wrote the verdicts into {}",
            args.model.join("mrl.json").display()
        );
    }
    Ok(())
}

/// The judgement as one Markdown table: a row per set × size, a column per (model, query
/// profile → document profile), each cell the score and its share of the base model's full
/// width.
fn print_judgement(rows: &[mrl_trainer::judge::JudgeRow]) {
    let label = |r: &mrl_trainer::judge::JudgeRow| match r.model.as_str() {
        "base" => "base (plain prefix)".to_string(),
        "rotation" => "rotation baseline".to_string(),
        m if r.query_profile == r.profile => format!("{m} {}", r.profile),
        m => format!("{m} {} → {}", r.query_profile, r.profile),
    };
    let mut columns: Vec<String> = Vec::new();
    let mut keys: Vec<(String, &'static str, usize)> = Vec::new();
    for r in rows {
        let c = label(r);
        if !columns.contains(&c) {
            columns.push(c);
        }
        let k = (r.set.clone(), r.metric, r.dim);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    println!("| set | metric | dim | {} |", columns.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(columns.len()));
    for (set, metric, dim) in &keys {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| {
                rows.iter()
                    .find(|r| r.set == *set && r.dim == *dim && label(r) == *c)
                    .map_or("–".to_string(), |r| {
                        format!("{:.4} ({:.1}%)", r.score, 100.0 * r.share_of_base)
                    })
            })
            .collect();
        println!("| {set} | {metric} | {dim} | {} |", cells.join(" | "));
    }
}

pub(crate) fn calibrate(args: CalibrateArgs) -> Result<()> {
    // Calibration ranks the model's own f32 weights and writes f32 tensors.
    if args.model.precision != PrecisionArg::F32 {
        bail!("--precision int8: calibration runs the f32 model; leave --precision out");
    }
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
