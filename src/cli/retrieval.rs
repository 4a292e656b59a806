//! `mrl bench retrieval`: indexes a BEIR corpus into the embedded Qdrant store once per
//! (model, profile), runs every query of a split at every stored size (and through funnels),
//! and reports NDCG@10 / Recall@100 / MRR@10 with query latency and indexing speed as JSON,
//! a Markdown table and an SVG plot. `--adapt` adds rows from adaptive collections (re-nested
//! onto the corpus's own documents) next to the generic ones.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::sync::Arc;

use mrl::{Embedder, Embeddings, Policy};
use mrl_core::indexer::{self, IndexOptions};
use mrl_core::store::{Adapt, CollectionPrompts, VectorStore, DEFAULT_ADAPT_THRESHOLD};
use mrl_core::{Collections, SearchQuery};
use mrl_trainer::data::BeirDataset;
use mrl_trainer::eval::{evaluate, Metrics};
use serde::Serialize;

use super::common::{bar, load, profile_list, ModelArg};
use mrl::IndexBar;

#[derive(Args)]
pub struct BenchRetrievalArgs {
    #[command(flatten)]
    model: ModelArg,
    /// A BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).
    #[arg(long, default_value_os_t = super::common::shared_path("data/scifact"))]
    dataset: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// Profiles separated by ';': names, specs, or "all" for every profile of the model.
    #[arg(long, default_value = "all")]
    profiles: String,
    /// Output sizes (default: the model's nested dims that fit each profile).
    #[arg(long, value_delimiter = ',')]
    dims: Vec<usize>,
    /// Also search through a funnel: prefetch K candidates at DIM, rescore at each larger
    /// size. Repeatable.
    #[arg(long, value_name = "DIM:K")]
    funnel: Vec<String>,
    /// A model evaluated alongside with its full profile, truncated to the same sizes (the
    /// dashed line of the plot); usually the original checkpoint.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Also run each profile's naive counterpart (its first k layers and first widths) on
    /// this model, usually the original checkpoint.
    #[arg(long)]
    naive_model: Option<PathBuf>,
    /// Also search each profile's collection with queries embedded by this profile
    /// (asymmetric rows, e.g. `b50` queries against `full` documents), where the checkpoint
    /// declares the two aligned. Repeatable.
    #[arg(long, value_name = "PROFILE")]
    query_profile: Vec<String>,
    /// Brute-force search instead of Qdrant's HNSW index.
    #[arg(long)]
    exact: bool,
    /// Also evaluate each profile (and the baseline) on an adaptive collection: its sizes
    /// below the full width re-nested onto the corpus's own documents as it is indexed.
    #[arg(long)]
    adapt: bool,
    /// Documents an adaptive collection holds before its first fit.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ADAPT_THRESHOLD, requires = "adapt")]
    adapt_threshold: usize,
    /// Re-nest a reused adaptive collection now instead of keeping its last fit (after a
    /// change to how collections fit, say); the rows then carry this fit's time.
    #[arg(long, requires = "adapt")]
    refit: bool,
    /// Where the benchmark's collections live (default: $MRL_CACHE_DIR/bench-index, else
    /// ~/.cache/mrl/bench-index); an index built before is reused.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Folder that receives retrieval.json, retrieval.md and retrieval.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

/// One row of the report: a (model, profile, dim[, funnel]) evaluation.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// `profile`, `baseline` or `naive`.
    kind: &'static str,
    model: String,
    dataset: String,
    split: String,
    /// The documents' profile.
    profile: String,
    profile_spec: String,
    /// The queries' profile: `profile` itself, or another aligned with it (`--query-profile`).
    query_profile: String,
    /// Relative FLOPs of the query encoder.
    relative_flops: f64,
    dim: usize,
    /// `DIM:K` when the search went through a funnel.
    funnel: Option<String>,
    /// Searched in an adaptive collection (its rotation version; `None`: generic).
    adapted: Option<u64>,
    /// The queries went through the adaptive collection's map from their profile into the
    /// documents' space (fitted on the corpus's own documents, no labels).
    query_map: bool,
    /// How long that rotation's re-nest took (fit + rewriting every point's rotated sizes).
    renest_seconds: Option<f64>,
    search: &'static str,
    #[serde(flatten)]
    metrics: Metrics,
    search_p50_ms: f64,
    search_p99_ms: f64,
    /// Embedding one query alone (batch of one), per profile.
    embed_p50_ms: f64,
    embed_p99_ms: f64,
    index_docs_per_s: f64,
    index_reused: bool,
}

/// What to evaluate: a model under a profile, at some sizes.
#[derive(Clone)]
struct Run<'a> {
    kind: &'static str,
    embedder: &'a Arc<Embedder>,
    profile: String,
    dims: Vec<usize>,
    /// Other profiles whose queries search this run's collection.
    query_profiles: Vec<String>,
    /// Index into an adaptive collection with this option.
    adapt: Option<Adapt>,
}

fn parse_funnels(specs: &[String]) -> Result<Vec<(usize, usize)>> {
    specs
        .iter()
        .map(|s| {
            let (d, k) = s
                .split_once(':')
                .with_context(|| format!("--funnel {s:?}: expected DIM:K, e.g. 64:100"))?;
            let d: usize = d
                .trim()
                .parse()
                .with_context(|| format!("--funnel {s:?}"))?;
            let k: usize = k
                .trim()
                .parse()
                .with_context(|| format!("--funnel {s:?}"))?;
            if d == 0 || k == 0 {
                bail!("--funnel {s:?}: DIM and K must be positive");
            }
            Ok((d, k))
        })
        .collect()
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[i.min(sorted_ms.len() - 1)]
}

fn p50_p99(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

fn model_name(e: &Embedder) -> String {
    e.dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| e.dir().display().to_string())
}

/// A collection name that changes whenever what it holds would: weights, profile, sizes,
/// token limit, corpus file.
fn collection_name(
    weights_sha: &str,
    profile: &mrl::Profile,
    dims: &[usize],
    max_len: usize,
    corpus: &Path,
    dataset: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(weights_sha.as_bytes());
    h.update(profile.to_string().as_bytes());
    h.update(format!("{dims:?} {max_len}").as_bytes());
    h.update(corpus.to_string_lossy().as_bytes());
    let tag: String = dataset
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    format!("{tag}-{:.16x}", h.finalize())
        .chars()
        .take(64)
        .collect()
}

pub fn run(args: BenchRetrievalArgs) -> Result<()> {
    let embedder = Arc::new(load(&args.model)?);
    let baseline = args
        .baseline
        .as_deref()
        .map(|d| mrl::load_model(Some(d)).context("loading --baseline"))
        .transpose()?
        .map(Arc::new);
    let naive = args
        .naive_model
        .as_deref()
        .map(|d| mrl::load_model(Some(d)).context("loading --naive-model"))
        .transpose()?
        .map(Arc::new);
    let funnels = parse_funnels(&args.funnel)?;
    super::common::must_exist(&args.dataset, "--dataset")?;
    let data = BeirDataset::load(&args.dataset, &args.split)
        .with_context(|| format!("loading {}", args.dataset.display()))?;
    let corpus_path = std::fs::canonicalize(args.dataset.join("corpus.jsonl"))?;
    let dataset_name = std::fs::canonicalize(&args.dataset)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    eprintln!(
        "{}: {} documents, {} {} queries",
        args.dataset.display(),
        data.corpus.len(),
        data.queries.len(),
        args.split
    );
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| mrl_encoder::fetch::default_cache_dir().join("bench-index"));
    let store = mrl_core::store::open(&data_dir, None, None)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;

    let mut runs: Vec<Run> = Vec::new();
    let mut all_dims: Vec<usize> = Vec::new();
    for name in profile_list(&embedder, &args.profiles) {
        let profile = embedder.profile(Some(&name))?;
        let width = embedder.model().output_width(&profile);
        let dims: Vec<usize> = if args.dims.is_empty() {
            let mut d: Vec<usize> = embedder
                .nested_dims()
                .into_iter()
                .filter(|&d| d <= width)
                .collect();
            if !d.contains(&width) {
                d.push(width);
            }
            d
        } else {
            args.dims.clone()
        };
        all_dims.extend(&dims);
        let naive_spec = format!(
            "layers={},heads={},ffn={},hidden={}",
            profile.layers.len(),
            profile.heads,
            profile.ffn,
            profile.hidden
        );
        let mut query_profiles = Vec::new();
        for qp in args.query_profile.iter().filter(|&qp| *qp != name) {
            match embedder.check_aligned(qp, &name) {
                Ok(()) => query_profiles.push(qp.clone()),
                Err(e) => eprintln!("skipping queries by {qp} on {name}: {e}"),
            }
        }
        runs.push(Run {
            kind: "profile",
            embedder: &embedder,
            profile: name,
            dims: dims.clone(),
            query_profiles,
            adapt: None,
        });
        if let Some(n) = &naive {
            runs.push(Run {
                kind: "naive",
                embedder: n,
                profile: naive_spec,
                dims,
                query_profiles: Vec::new(),
                adapt: None,
            });
        }
    }
    all_dims.sort_unstable();
    all_dims.dedup();
    if let Some(b) = &baseline {
        let dims = all_dims
            .iter()
            .copied()
            .filter(|&d| d <= b.max_dim())
            .collect();
        runs.push(Run {
            kind: "baseline",
            embedder: b,
            profile: "full".into(),
            dims,
            query_profiles: Vec::new(),
            adapt: None,
        });
    }
    if args.adapt {
        // Checked (at least 1) with the collection's spec, as on every path.
        let adapt = Adapt {
            threshold: args.adapt_threshold,
        };
        // An adaptive collection maps the checkpoint's other profiles into its documents'
        // space, aligned or not: each gets its rows against it (or the ones asked for).
        let adapted: Vec<Run> = runs
            .iter()
            .filter(|r| r.kind != "naive")
            .map(|r| Run {
                adapt: Some(adapt),
                query_profiles: match (r.kind, args.query_profile.is_empty()) {
                    ("profile", true) => r
                        .embedder
                        .profile_names()
                        .into_iter()
                        .filter(|p| *p != r.profile)
                        .collect(),
                    ("profile", false) => args
                        .query_profile
                        .iter()
                        .filter(|p| **p != r.profile)
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                },
                ..r.clone()
            })
            .collect();
        runs.extend(adapted);
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut shas: HashMap<PathBuf, String> = HashMap::new();
    for run in &runs {
        rows.extend(evaluate_run(
            run,
            &data,
            &store,
            &data_dir,
            (&corpus_path, &dataset_name),
            &funnels,
            (args.exact, args.refit),
            &mut shas,
        )?);
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("retrieval.json");
    std::fs::write(&json, serde_json::to_string_pretty(&rows)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let table = markdown(&rows);
    std::fs::write(args.out.join("retrieval.md"), &table)?;
    std::fs::write(
        args.out.join("retrieval.svg"),
        plot(&rows, &format!("{dataset_name} {}", args.split))?,
    )?;
    print!("{table}");
    eprintln!("wrote {}/retrieval.{{json,md,svg}}", args.out.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn evaluate_run(
    run: &Run,
    data: &BeirDataset,
    store: &Arc<dyn VectorStore>,
    data_dir: &Path,
    (corpus_path, dataset_name): (&Path, &str),
    funnels: &[(usize, usize)],
    (exact, refit): (bool, bool),
    shas: &mut HashMap<PathBuf, String>,
) -> Result<Vec<Row>> {
    let embeddings = Arc::new(Embeddings::inline(run.embedder.clone(), Policy::LIBRARY));
    let collections = Collections::new(store.clone(), embeddings.clone());
    let e: &Embedder = run.embedder;
    let profile = e.profile(Some(&run.profile))?;
    let width = e.model().output_width(&profile);
    // The collection stores the evaluated sizes and every funnel's prefetch size.
    let mut stored: Vec<usize> = run.dims.clone();
    stored.extend(funnels.iter().map(|f| f.0).filter(|&d| d <= width));
    stored.sort_unstable();
    stored.dedup();
    let sha = match shas.get(e.dir()) {
        Some(s) => s.clone(),
        None => {
            let s = mrl_encoder::fetch::sha256_file(&e.dir().join("model.safetensors"))?;
            shas.insert(e.dir().to_path_buf(), s.clone());
            s
        }
    };
    let name = collection_name(
        &sha,
        &profile,
        &stored,
        e.tokenizer().max_len(),
        corpus_path,
        &match run.adapt {
            Some(a) => format!("{dataset_name}-adapt{}", a.threshold),
            None => dataset_name.to_string(),
        },
    );
    let label = format!(
        "{} {}{}",
        model_name(e),
        run.profile,
        if run.adapt.is_some() { " adapted" } else { "" }
    );
    let opts = IndexOptions::new(data_dir.join("jobs"))
        .dims(Some(stored.clone()))
        .profile(Some(run.profile.clone()))
        .adapt(run.adapt.is_some(), run.adapt.map(|a| a.threshold));
    let summary = indexer::index_file(
        &collections,
        &name,
        corpus_path,
        &opts,
        &IndexBar(&bar(&label, 0)),
    )
    .with_context(|| format!("indexing {} for {label}", corpus_path.display()))?;
    if summary.count != data.corpus.len() {
        bail!(
            "collection {name} holds {} documents, the corpus {}; delete {} to rebuild",
            summary.count,
            data.corpus.len(),
            data_dir.display()
        );
    }
    let reused = summary.indexed_now == 0;
    let collection = collections.open(&name)?;
    // A reused collection may still be due the re-nest a crash interrupted.
    collection.finish_adapting()?;
    // The adapted rows are those of a fit on the whole corpus: the last automatic fit came
    // when the collection had doubled, before the last documents arrived.
    let rotation = match run.adapt {
        Some(_) => match collection.info()?.rotation {
            Some(r) if r.points == summary.count && !refit => Some(r),
            _ => Some(collection.renest_now()?),
        },
        None => None,
    };
    if let Some(r) = &rotation {
        eprintln!(
            "{label}: rotation {} fitted on {} of {} documents; that re-nest took {:.2} s",
            r.version, r.sample, r.points, r.seconds
        );
        if let Some(n) = &r.nesting {
            eprintln!(
                "{label}: kept {} nesting at {:?}: held-out recall@10 PCA {:?}, learned {:?}",
                n.kept, n.dims, n.pca_recall, n.learned_recall
            );
        }
        for q in &r.queries {
            eprintln!(
                "{label}: {} queries mapped (ridge {}): held-out mean cosine {:.4}, \
                 neighbour overlap {:.3} (unmapped {:.3})",
                q.profile, q.ridge, q.mean_cosine, q.neighbour_overlap, q.unmapped_overlap
            );
        }
    }
    let adapted = rotation.as_ref().map(|r| r.version);
    let renest_seconds = rotation.as_ref().map(|r| r.seconds);
    eprintln!(
        "{label}: {} documents {} ({:.1} docs/s)",
        summary.count,
        if reused { "reused" } else { "indexed" },
        summary.docs_per_s
    );

    let mut plan: Vec<(usize, Option<(usize, usize)>)> =
        run.dims.iter().map(|&d| (d, None)).collect();
    for &(fd, k) in funnels {
        for &d in run.dims.iter().filter(|&&d| d > fd && fd <= width) {
            plan.push((d, Some((fd, k))));
        }
    }
    let mut rows = Vec::new();
    for query_profile in std::iter::once(&run.profile).chain(&run.query_profiles) {
        let qp = e.profile(Some(query_profile))?;
        // The collection's own map when it has one, else the checkpoint's declared alignment.
        let mapped = (query_profile != &run.profile && collection.maps_queries_of(query_profile))
            .then(|| query_profile.clone());
        if query_profile != &run.profile && mapped.is_none() {
            if let Err(err) = e.check_aligned(query_profile, &run.profile) {
                eprintln!("skipping queries by {query_profile} on {label}: {err}");
                continue;
            }
        }
        // Queries are embedded one at a time, as a search service sees them.
        let mut vectors = Vec::with_capacity(data.queries.len());
        let mut embed_ms = Vec::with_capacity(data.queries.len());
        for q in &data.queries {
            let t = Instant::now();
            let text = CollectionPrompts::apply(&collection.spec().prompts.query_prompt, &q.text);
            let (mut v, _) = embeddings.raw_blocking(&[text], &qp, "query")?;
            embed_ms.push(t.elapsed().as_secs_f64() * 1e3);
            vectors.push(v.pop().expect("one text gives one vector; this is a bug"));
        }
        let (embed_p50_ms, embed_p99_ms) = p50_p99(embed_ms);
        let cost = e
            .model()
            .relative_flops(&qp, mrl_encoder::manifest::COST_SEQ_LEN);
        // A mapped profile as wide as the documents' also runs unmapped: what the map adds.
        let mut variants = vec![mapped.clone()];
        if mapped.is_some() && e.model().output_width(&qp) == width {
            variants.push(None);
        }
        for (&(dim, funnel), mapped) in plan
            .iter()
            .flat_map(|p| variants.iter().map(move |m| (p, m)))
        {
            let mut results: HashMap<String, Vec<(String, f32)>> = HashMap::new();
            let mut search_ms = Vec::with_capacity(vectors.len());
            for (q, v) in data.queries.iter().zip(&vectors) {
                let query = SearchQuery {
                    full: v.clone(),
                    dim,
                    limit: 100,
                    funnel,
                    filter: None,
                    exact,
                    params: Default::default(),
                    profile: mapped.clone(),
                };
                let t = Instant::now();
                let hits = collection.run(&query)?;
                search_ms.push(t.elapsed().as_secs_f64() * 1e3);
                results.insert(
                    q.id.clone(),
                    hits.into_iter().map(|h| (h.id, h.score)).collect(),
                );
            }
            let (search_p50_ms, search_p99_ms) = p50_p99(search_ms);
            rows.push(Row {
                kind: run.kind,
                model: model_name(e),
                dataset: dataset_name.to_string(),
                split: data.split.clone(),
                profile: run.profile.clone(),
                profile_spec: profile.to_string(),
                query_profile: query_profile.clone(),
                relative_flops: cost,
                dim,
                funnel: funnel.map(|(d, k)| format!("{d}:{k}")),
                adapted,
                query_map: mapped.is_some(),
                renest_seconds,
                search: if exact { "exact" } else { "hnsw" },
                metrics: evaluate(&results, &data.qrels),
                search_p50_ms,
                search_p99_ms,
                embed_p50_ms,
                embed_p99_ms,
                index_docs_per_s: summary.docs_per_s,
                index_reused: reused,
            });
        }
    }
    Ok(rows)
}

/// `profile`, or `queries → documents` for an asymmetric row.
fn label(r: &Row) -> String {
    let base = if r.query_profile == r.profile {
        r.profile.clone()
    } else {
        format!(
            "{} → {}{}",
            r.query_profile,
            r.profile,
            match (r.query_map, r.adapted) {
                (true, _) => " mapped",
                (false, Some(_)) => " unmapped",
                (false, None) => "",
            }
        )
    };
    match r.adapted {
        Some(v) => format!("{base} adapted (rotation {v})"),
        None => base,
    }
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| model | profile | rel. FLOPs | dim | funnel | NDCG@10 | Recall@100 | MRR@10 | \
         search p50 / p99 ms | embed p50 / p99 ms | index docs/s |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.3} | {} | {} | {:.4} | {:.4} | {:.4} | {:.2} / {:.2} | {:.1} / {:.1} | {:.1} |",
            r.model,
            match r.kind {
                "profile" => "",
                "baseline" => " (baseline)",
                _ => " (naive)",
            },
            label(r),
            r.relative_flops,
            r.dim,
            r.funnel.as_deref().unwrap_or("-"),
            r.metrics.ndcg_at_10,
            r.metrics.recall_at_100,
            r.metrics.mrr_at_10,
            r.search_p50_ms,
            r.search_p99_ms,
            r.embed_p50_ms,
            r.embed_p99_ms,
            r.index_docs_per_s,
        );
    }
    s
}

/// NDCG@10 against dim (log scale), one line per profile, the baseline dashed; direct
/// searches only (funnels and naive cuts are in the table). Drawn by plotters as SVG.
fn plot(rows: &[Row], title: &str) -> Result<String> {
    use plotters::prelude::*;
    /// One line of the plot: label, dashed (the baseline), (dim, NDCG@10) points.
    type Series = (String, bool, Vec<(f64, f64)>);
    let mut series: Vec<Series> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.funnel.is_none() && r.kind != "naive")
    {
        let label = if r.kind == "baseline" {
            format!(
                "baseline: {}{}",
                r.model,
                if r.adapted.is_some() { " adapted" } else { "" }
            )
        } else {
            label(r)
        };
        let point = (r.dim as f64, r.metrics.ndcg_at_10);
        match series.iter_mut().find(|s| s.0 == label) {
            Some(s) => s.2.push(point),
            None => series.push((label, r.kind == "baseline", vec![point])),
        }
    }
    let xs = || series.iter().flat_map(|s| s.2.iter().map(|p| p.0));
    let dmin = xs().fold(f64::INFINITY, f64::min).min(64.0);
    let dmax = xs().fold(0.0, f64::max).max(dmin * 2.0);
    let ymax = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let ymax = ((ymax * 10.0).ceil() / 10.0).max(0.1);
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the plot: {e}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("NDCG@10 vs dim — {title}"), ("sans-serif", 16))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((dmin * 0.9..dmax * 1.1).log_scale(), 0.0..ymax)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("dim (log scale)")
            .y_desc("NDCG@10")
            .x_label_formatter(&|d| format!("{d:.0}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .draw()
            .map_err(|e| draw(&e))?;
        for (i, (label, dashed, points)) in series.iter().enumerate() {
            let mut pts = points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = if *dashed {
                RGBColor(85, 85, 85)
            } else {
                let (r, g, b) = Palette99::pick(i).to_rgba().rgb();
                RGBColor(r, g, b)
            };
            let style = color.stroke_width(2);
            let drawn = if *dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style))
            }
            .map_err(|e| draw(&e))?;
            drawn
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| draw(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
        root.present().map_err(|e| draw(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_funnel_specs() {
        let (p50, p99) = p50_p99((1..=100).map(f64::from).collect());
        assert_eq!((p50, p99), (51.0, 99.0));
        assert_eq!(p50_p99(vec![]), (0.0, 0.0));
        assert_eq!(parse_funnels(&["64:100".into()]).unwrap(), [(64, 100)]);
        assert!(parse_funnels(&["64".into()]).is_err());
        assert!(parse_funnels(&["0:10".into()]).is_err());
    }
}
