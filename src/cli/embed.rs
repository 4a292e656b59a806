//! `mrl embed`: texts from the arguments or stdin (one per line) to JSON lines, through
//! mrl-core's `Embeddings` on the caller's thread.

use std::io::{BufRead, BufWriter, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use mrl::{EmbedSpec, Embeddings, Fields, Policy};
use mrl_encoder::text;
use serde::Serialize;

use super::common::{load, DimPolicyArg, ModelArg};

/// How the CLI names the options the core checks.
const FIELDS: Fields = Fields {
    texts: "texts",
    dim: "--dim",
    profile: "--profile",
};

#[derive(Args)]
pub(crate) struct EmbedArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Output size: a prefix of the full vector, re-normalised.
    #[arg(long)]
    pub(crate) dim: Option<usize>,
    /// Profile name ("full") or spec such as "layers=3,heads=8".
    #[arg(long)]
    pub(crate) profile: Option<String>,
    /// Emit the raw pooled vector (its prefix) instead of an L2-normalised one (default: as
    /// the model's modules.json says; sentence-transformers folders mostly normalise).
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// One of the model's prompts by name (config_sentence_transformers.json), put before
    /// each text (default: the model's default prompt, if it has one).
    #[arg(long, conflicts_with = "prompt")]
    pub(crate) prompt_name: Option<String>,
    /// A literal prompt put before each text.
    #[arg(long)]
    pub(crate) prompt: Option<String>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = mrl_encoder::DEFAULT_BATCH_SIZE)]
    pub(crate) batch_size: usize,
    /// Texts to embed; stdin is read when none are given.
    pub(crate) texts: Vec<String>,
    /// Which sizes --dim may ask for.
    #[arg(long, value_enum, default_value_t = DimPolicyArg::of(Policy::LIBRARY.dims))]
    pub(crate) dim_policy: DimPolicyArg,
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    dim: usize,
    embedding: &'a [f32],
}

/// One input text and the id it came with, if any.
struct Input {
    id: Option<serde_json::Value>,
    text: String,
}

/// A line as typed (plain text), or a JSON string or record (`mrl_encoder::text`, the one
/// reader: `text`, an optional `title` joined before it, an id echoed back).
fn parse_line(line: &str) -> Result<Input> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('"') {
        let value: serde_json::Value =
            serde_json::from_str(line).context("a line that starts like JSON must be JSON")?;
        let record = text::read(&value, true)?;
        return Ok(Input {
            id: record.id.cloned(),
            text: record.text,
        });
    }
    Ok(Input {
        id: None,
        text: line.to_string(),
    })
}

pub(crate) fn run(args: EmbedArgs) -> Result<()> {
    let policy = Policy {
        dims: args.dim_policy.into(),
        ..Policy::LIBRARY
    };
    let embeddings =
        Embeddings::inline(Arc::new(load(&args.model)?), policy).batch_size(args.batch_size);
    let spec = EmbedSpec {
        profile: args.profile.clone(),
        dim: args.dim,
        normalize: args.no_normalize.then_some(false),
        prompt_name: args.prompt_name.clone(),
        prompt: args.prompt.clone(),
    };
    // Validate options before reading stdin, so a typo fails at once.
    embeddings.resolve(&spec, &FIELDS)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut index = 0;
    let mut flush = |inputs: &mut Vec<Input>, out: &mut BufWriter<_>| -> Result<()> {
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        let vectors = if texts.is_empty() {
            Vec::new()
        } else {
            embeddings.embed_blocking(&texts, &spec, &FIELDS)?.vectors
        };
        for (input, v) in inputs.iter().zip(vectors) {
            let line = EmbedLine {
                index,
                id: input.id.as_ref(),
                dim: v.len(),
                embedding: &v,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            index += 1;
        }
        inputs.clear();
        out.flush()?;
        Ok(())
    };
    let mut pending: Vec<Input> = Vec::new();
    if !args.texts.is_empty() {
        pending.extend(args.texts.into_iter().map(|text| Input { id: None, text }));
        return flush(&mut pending, &mut out);
    }
    // Chunked so a long stream starts printing early and memory stays bounded.
    let chunk = (args.batch_size * 8).max(1);
    for (n, raw) in std::io::stdin().lock().split(b'\n').enumerate() {
        let raw = raw.context("reading stdin")?;
        let line = String::from_utf8(raw)
            .with_context(|| format!("stdin line {} is not valid UTF-8", n + 1))?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        pending.push(parse_line(line).with_context(|| format!("stdin line {}", n + 1))?);
        if pending.len() >= chunk {
            flush(&mut pending, &mut out)?;
        }
    }
    flush(&mut pending, &mut out)
}
