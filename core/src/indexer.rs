//! The batch indexing job: a JSONL corpus streamed through read + parse + tokenize (rayon) →
//! embed (one pass) → store (every size cut, through the collection's nesting), in chunks,
//! with bounded queues between the stages; resumable after a crash at any point. An adaptive
//! collection's re-nests run as it grows, and the job ends once the last one is done.
//!
//! Resume works from two facts: a document's point id is a hash of its id, so writing it twice
//! replaces it; and after each chunk is durable in the store a progress record (the input's
//! byte offset, counts, skipped lines) is replaced atomically. A rerun after kill -9 seeks to
//! the recorded offset and at worst rewrites one chunk.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use mrl_encoder::EncoderError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collection::Collection;
use crate::collections::{Collections, CreateRequest};
use crate::documents::Document;
use crate::embeddings::Embeddings;
use crate::store::{CollectionPrompts, CollectionSpec, StoreError};

/// What an indexing job tells its caller as it goes, for a progress bar or a log: core draws
/// nothing itself. Called from the job's writer thread, hence `Sync`.
pub trait IndexProgress: Sync {
    /// The input's lines, and how many of them earlier runs of a resumed job already did.
    fn start(&self, lines: u64, done: u64);
    /// After each chunk is durable: input lines done and documents indexed, both over every
    /// run of the job.
    fn advance(&self, lines: u64, indexed: usize);
    /// A malformed line the job skipped, as it happens (the summary keeps the first ones).
    fn skipped(&self, skip: &Skip);
}

/// No progress shown (tests, callers that only want the summary).
impl IndexProgress for () {
    fn start(&self, _: u64, _: u64) {}
    fn advance(&self, _: u64, _: usize) {}
    fn skipped(&self, _: &Skip) {}
}

/// Skipped lines remembered by name; past this only the count grows.
const MAX_SKIPS_KEPT: usize = 1000;
/// Bytes of the input hashed to recognise it again on resume.
const HEAD_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason} (--strict stops at the first malformed line)")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("invalid options: {0}")]
    Options(String),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// A dim or profile the policy refuses, or a failed forward pass.
    #[error(transparent)]
    Core(#[from] crate::error::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("progress record {path}: {reason}")]
    Progress { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to index: what the collection stores (when the job creates it) and how to read.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Where progress records live (one per collection).
    pub state_dir: PathBuf,
    /// The collection to fill: what is left open (`None` dims or profile, no `adapt`) is the
    /// existing collection's, or for a new one the defaults (the model's nested dims that fit
    /// the profile, `full`, generic); see [`Collections::open_or_create`].
    pub collection: CreateRequest,
    /// Documents per upsert (and per progress record).
    pub batch: usize,
    /// Stop at the first malformed line instead of skipping it.
    pub strict: bool,
    /// Index only this part of the input (`None`: all of it).
    pub part: Option<Part>,
}

/// One of `count` disjoint parts of an input, so that `count` workers can index it together:
/// part `index` (1-based) owns the lines whose 0-based number `n` has `n % count ==
/// index − 1`. Every part is its own resumable job (its own progress record); together
/// they cover every line once. Written `i/n`, e.g. `2/4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Which part, from 1.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Part {
    /// Checks `1 ≤ index ≤ count`. Errors: why not, with the expected form.
    fn check(&self) -> Result<(), String> {
        if self.index == 0 || self.index > self.count {
            return Err(format!(
                "{}/{}: a part is i/n with 1 ≤ i ≤ n, e.g. 2/4",
                self.index, self.count
            ));
        }
        Ok(())
    }

    /// Whether the line with 1-based number `line` belongs to this part.
    fn owns(&self, line: usize) -> bool {
        (line - 1) % self.count == self.index - 1
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    /// Parses `i/n` with `1 ≤ i ≤ n`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: a part is i/n with 1 ≤ i ≤ n, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let part = Self {
            index: i.trim().parse().map_err(|_| bad())?,
            count: n.trim().parse().map_err(|_| bad())?,
        };
        part.check()?;
        Ok(part)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl IndexOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            collection: CreateRequest::default(),
            batch: 256,
            strict: false,
            part: None,
        }
    }
    pub fn dims(mut self, dims: Option<Vec<usize>>) -> Self {
        self.collection.dims = dims;
        self
    }
    pub fn profile(mut self, profile: Option<String>) -> Self {
        self.collection.profile = profile;
        self
    }
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }
    /// Index only this part of the input (see `Part`).
    pub fn part(mut self, part: Option<Part>) -> Self {
        self.part = part;
        self
    }
    /// Make a new collection adaptive, with `threshold` documents before its first fit
    /// (`None`: an existing collection's, else `DEFAULT_ADAPT_THRESHOLD`); see `Adapt`.
    pub fn adapt(mut self, adapt: bool, threshold: Option<usize>) -> Self {
        self.collection.adapt = adapt;
        self.collection.adapt_threshold = threshold;
        self
    }
    /// A new collection's prompts by name (`None`: as [`CreateRequest`] defaults them).
    pub fn prompt_names(mut self, document: Option<String>, query: Option<String>) -> Self {
        self.collection.document_prompt_name = document;
        self.collection.query_prompt_name = query;
        self
    }
}

/// A line that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skip {
    pub line: usize,
    pub reason: String,
}

/// Where a job stands; persisted after every durable chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    collection: String,
    input: PathBuf,
    input_len: u64,
    input_head_sha256: String,
    /// Bytes of the input fully handled (indexed or skipped).
    offset: u64,
    /// Lines fully handled.
    lines: usize,
    indexed: usize,
    truncated: usize,
    skipped_count: usize,
    skipped: Vec<Skip>,
    /// Time spent over every run of the job.
    seconds: f64,
    complete: bool,
}

/// What a job did, over all its runs.
#[derive(Debug, Clone, Serialize)]
pub struct IndexSummary {
    pub collection: String,
    /// The part of the input this job indexed (`None`: all of it).
    pub part: Option<Part>,
    pub spec: CollectionSpec,
    /// Documents written by every run of this job (of its part).
    pub indexed: usize,
    /// Documents written by this run.
    pub indexed_now: usize,
    /// Line this run started from (0 for a fresh job).
    pub resumed_at_line: usize,
    /// Documents cut at the model's token limit.
    pub truncated: usize,
    pub skipped_count: usize,
    /// The first skipped lines with their reasons.
    pub skipped: Vec<Skip>,
    /// Seconds this run spent, and over all runs.
    pub seconds: f64,
    pub total_seconds: f64,
    /// Over all runs (`indexed / total_seconds`).
    pub docs_per_s: f64,
    /// Documents in the collection now (a repeated id replaces the earlier document).
    pub count: usize,
}

/// One parsed and tokenized chunk, handed from the reader to the model.
struct Chunk {
    docs: Vec<Document>,
    tokens: Vec<Vec<u32>>,
    truncated: usize,
    skips: Vec<Skip>,
    end_offset: u64,
    end_line: usize,
}

/// One embedded chunk, handed from the model to the writer.
struct Embedded {
    docs: Vec<Document>,
    /// Raw pooled vectors, one per document.
    vectors: Vec<Vec<f32>>,
    truncated: usize,
    skips: Vec<Skip>,
    end_offset: u64,
    end_line: usize,
}

fn head_sha256(path: &Path) -> Result<String, IndexError> {
    let mut head = Vec::new();
    File::open(path)
        .map_err(io(path))?
        .take(HEAD_BYTES)
        .read_to_end(&mut head)
        .map_err(io(path))?;
    Ok(format!("{:x}", Sha256::digest(&head)))
}

/// Lines in the file, for the progress bar's length.
fn count_lines(path: &Path) -> Result<u64, IndexError> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io(path))?);
    let mut n = 0u64;
    let mut last = b'\n';
    loop {
        let buf = reader.fill_buf().map_err(io(path))?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[buf.len() - 1];
        let len = buf.len();
        reader.consume(len);
    }
    Ok(n + u64::from(last != b'\n'))
}

/// Indexes the JSONL file `input` into `collection` of `collections`, creating it if needed,
/// resuming an unfinished run of the same job, telling `progress` how it goes.
pub fn index_file(
    collections: &Collections,
    collection: &str,
    input: &Path,
    opts: &IndexOptions,
    progress: &dyn IndexProgress,
) -> Result<IndexSummary, IndexError> {
    let embeddings = collections.embeddings().as_ref();
    let store = collections.store().as_ref();
    let start = Instant::now();
    if opts.batch == 0 {
        return Err(IndexError::Options("batch sizes must be positive".into()));
    }
    if let Some(p) = &opts.part {
        p.check()
            .map_err(|e| IndexError::Options(format!("part {e}")))?;
    }
    let input_len = std::fs::metadata(input).map_err(io(input))?.len();
    let input_abs = std::fs::canonicalize(input).map_err(io(input))?;
    let (handle, created) = collections.open_or_create(collection, &opts.collection)?;
    let spec = handle.spec().clone();
    std::fs::create_dir_all(&opts.state_dir).map_err(io(&opts.state_dir))?;
    let record_path = opts.state_dir.join(match opts.part {
        None => format!("{collection}.index.json"),
        Some(p) => format!("{collection}.part-{}-of-{}.index.json", p.index, p.count),
    });
    let fresh = Progress {
        collection: collection.to_string(),
        input: input_abs,
        input_len,
        input_head_sha256: head_sha256(input)?,
        offset: 0,
        lines: 0,
        indexed: 0,
        truncated: 0,
        skipped_count: 0,
        skipped: Vec::new(),
        seconds: 0.0,
        complete: false,
    };
    // A record only counts for the same collection (not recreated since) and the same input.
    let mut state = match (created, read_progress(&record_path)?) {
        (false, Some(p))
            if p.input == fresh.input
                && p.input_len == fresh.input_len
                && p.input_head_sha256 == fresh.input_head_sha256 =>
        {
            p
        }
        _ => fresh,
    };
    let resumed_at_line = state.lines;
    let indexed_before = state.indexed;
    let seconds_before = state.seconds;
    progress.start(count_lines(input)?, state.lines as u64);
    if !state.complete {
        let profile = embeddings.embedder().profile(Some(&spec.profile))?;
        let (chunk_tx, chunk_rx) = sync_channel::<Result<Chunk, IndexError>>(2);
        let (done_tx, done_rx) = sync_channel::<Embedded>(2);
        let outcome = std::thread::scope(|s| {
            let from = (state.offset, state.lines);
            let prompt = spec.prompts.document_prompt.clone();
            let reader =
                s.spawn(move || read_chunks(embeddings, input, from, opts, prompt, chunk_tx));
            let writer = s.spawn(|| {
                write_chunks(
                    &handle,
                    &record_path,
                    &mut state,
                    (start, seconds_before),
                    done_rx,
                    progress,
                )
            });
            let embedded = embed_chunks(embeddings, &profile, chunk_rx, done_tx);
            let written = writer
                .join()
                .expect("the writer thread panicked; this is a bug");
            reader
                .join()
                .expect("the reader thread panicked; this is a bug");
            embedded.and(written)
        });
        outcome?;
        // The collection ends under the rotation its size calls for.
        handle.finish_adapting()?;
        // Searches after a bulk load should not wait for (or miss) the background optimize.
        store.optimize(collection)?;
        state.complete = true;
        state.seconds = seconds_before + start.elapsed().as_secs_f64();
        write_progress(&record_path, &state)?;
    }
    let count = store.info(collection)?.count;
    let seconds = start.elapsed().as_secs_f64();
    Ok(IndexSummary {
        collection: collection.to_string(),
        part: opts.part,
        spec,
        indexed: state.indexed,
        indexed_now: state.indexed - indexed_before,
        resumed_at_line,
        truncated: state.truncated,
        skipped_count: state.skipped_count,
        skipped: state.skipped.clone(),
        seconds,
        total_seconds: state.seconds,
        docs_per_s: state.indexed as f64 / state.seconds.max(1e-9),
        count,
    })
}

/// Reads lines from the recorded offset, parses and tokenizes them, and sends chunks of
/// `opts.batch` documents. Stops quietly when the receiver hangs up.
fn read_chunks(
    embeddings: &Embeddings,
    path: &Path,
    (start_offset, start_line): (u64, usize),
    opts: &IndexOptions,
    prompt: Option<String>,
    tx: SyncSender<Result<Chunk, IndexError>>,
) {
    let result = (|| -> Result<(), IndexError> {
        let mut file = File::open(path).map_err(io(path))?;
        file.seek(SeekFrom::Start(start_offset)).map_err(io(path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (mut offset, mut line_no) = (start_offset, start_line);
        let mut docs = Vec::new();
        let mut skips = Vec::new();
        let mut raw = Vec::new();
        loop {
            raw.clear();
            let n = reader.read_until(b'\n', &mut raw).map_err(io(path))?;
            let eof = n == 0;
            let theirs = opts.part.is_some_and(|p| !p.owns(line_no + 1));
            if !eof {
                offset += n as u64;
                line_no += 1;
            }
            if !eof && !theirs {
                match parse_line(&raw) {
                    Ok(Some(doc)) => docs.push(doc),
                    Ok(None) => {}
                    Err(reason) if opts.strict => {
                        return Err(IndexError::Malformed {
                            path: path.to_path_buf(),
                            line: line_no,
                            reason,
                        })
                    }
                    Err(reason) => skips.push(Skip {
                        line: line_no,
                        reason,
                    }),
                }
            }
            if docs.len() >= opts.batch || (eof && (!docs.is_empty() || !skips.is_empty())) {
                let texts: Vec<String> = docs
                    .iter()
                    .map(|d: &Document| CollectionPrompts::apply(&prompt, &d.text))
                    .collect();
                let tokens = embeddings.tokenize(&texts, "documents")?;
                let truncated = tokens.truncated;
                let chunk = Chunk {
                    tokens: tokens.ids,
                    docs: std::mem::take(&mut docs),
                    truncated,
                    skips: std::mem::take(&mut skips),
                    end_offset: offset,
                    end_line: line_no,
                };
                if tx.send(Ok(chunk)).is_err() {
                    return Ok(());
                }
            }
            if eof {
                return Ok(());
            }
        }
    })();
    if let Err(e) = result {
        let _ = tx.send(Err(e));
    }
}

/// A document, `None` for a blank line, or why the line is malformed.
fn parse_line(raw: &[u8]) -> Result<Option<Document>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON ({e})"))?;
    Document::from_json(&value).map(Some).map_err(|e| e.message)
}

/// The model stage: runs on the calling thread, so the encoder keeps every core it asks for.
fn embed_chunks(
    embeddings: &Embeddings,
    profile: &mrl_encoder::Profile,
    rx: Receiver<Result<Chunk, IndexError>>,
    tx: SyncSender<Embedded>,
) -> Result<(), IndexError> {
    for chunk in rx {
        let chunk = chunk?;
        let vectors = embeddings.forward_blocking(profile, chunk.tokens)?;
        let embedded = Embedded {
            docs: chunk.docs,
            vectors,
            truncated: chunk.truncated,
            skips: chunk.skips,
            end_offset: chunk.end_offset,
            end_line: chunk.end_line,
        };
        if tx.send(embedded).is_err() {
            // The writer failed; its error is the one to report.
            return Ok(());
        }
    }
    Ok(())
}

/// Upserts each chunk (durable on return) and then records the progress, in input order.
fn write_chunks(
    collection: &Collection,
    record_path: &Path,
    state: &mut Progress,
    (start, seconds_before): (Instant, f64),
    rx: Receiver<Embedded>,
    progress: &dyn IndexProgress,
) -> Result<(), IndexError> {
    for chunk in rx {
        let n = chunk.docs.len();
        collection.store_vectors(chunk.docs, chunk.vectors)?;
        for skip in &chunk.skips {
            progress.skipped(skip);
        }
        state.indexed += n;
        state.truncated += chunk.truncated;
        state.skipped_count += chunk.skips.len();
        let room = MAX_SKIPS_KEPT.saturating_sub(state.skipped.len());
        state.skipped.extend(chunk.skips.into_iter().take(room));
        state.offset = chunk.end_offset;
        state.lines = chunk.end_line;
        state.seconds = seconds_before + start.elapsed().as_secs_f64();
        write_progress(record_path, state)?;
        progress.advance(state.lines as u64, state.indexed);
    }
    Ok(())
}

fn read_progress(path: &Path) -> Result<Option<Progress>, IndexError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IndexError::Progress {
                path: path.to_path_buf(),
                reason: format!("{e}; delete it to start the job over"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Replaces the record atomically: a crash leaves the old one or the new one, never half.
fn write_progress(path: &Path, state: &Progress) -> Result<(), IndexError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| IndexError::Progress {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_skip_or_refuse() {
        assert!(parse_line(b"  \r\n").unwrap().is_none());
        let d = parse_line(b"{\"_id\": \"1\", \"title\": \"\", \"text\": \"t\"}\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((d.id.as_str(), d.text.as_str()), ("1", "t"));
        assert!(parse_line(b"{\"text\": ")
            .unwrap_err()
            .contains("malformed JSON"));
        assert!(parse_line(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        assert!(parse_line(b"{\"id\": \"x\"}").unwrap_err().contains("text"));
    }

    #[test]
    fn parts_split_lines_disjointly_and_completely() {
        let parts: Vec<Part> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for line in 1..=30 {
            let owners = parts.iter().filter(|p| p.owns(line)).count();
            assert_eq!(owners, 1, "line {line}");
        }
        assert!(parts[0].owns(1) && parts[1].owns(2) && parts[2].owns(3) && parts[0].owns(4));
        assert_eq!(parts[1].to_string(), "2/3");
        for bad in ["0/3", "4/3", "1/0", "1", "a/b", "1/3/4", ""] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
    }

    #[test]
    fn line_count_handles_a_missing_final_newline() {
        let dir = std::env::temp_dir().join(format!("mrl-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, "a\nb\nc").unwrap();
        assert_eq!(count_lines(&p).unwrap(), 3);
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(count_lines(&p).unwrap(), 2);
        std::fs::write(&p, "").unwrap();
        assert_eq!(count_lines(&p).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
