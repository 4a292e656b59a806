//! The model thread: requests queue on a channel; the thread takes the oldest, adds every
//! queued request of the same profile up to a token budget, runs one packed forward pass and
//! answers each request.
//!
//! The queue is bounded by work, not by channel slots: a request is admitted only while the
//! requests and tokens waiting (in the channel and in the thread's own pending list) stay within
//! `QueueLimits`; beyond them it is refused at once (HTTP 429). A request whose client has gone
//! away (its reply receiver dropped) is discarded before its forward pass and counted.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mrl_encoder::{Embedder, Profile};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

struct Job {
    profile: Profile,
    tokens: Vec<Vec<u32>>,
    /// Σ token ids over `tokens`, fixed at admission (the ids move out when batched).
    token_count: usize,
    reply: Reply,
}

/// How much work may wait for the model thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Requests waiting.
    pub requests: usize,
    /// Token ids waiting, summed over their texts. A request larger than this alone is still
    /// admitted into an empty queue, so every request the input limits allow can run.
    pub tokens: usize,
}

/// Handle to the model thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    limits: QueueLimits,
    metrics: Arc<Metrics>,
    /// Admissions check and reserve one at a time, so a refused request never counts, even
    /// for a moment, against another.
    admission: Arc<Mutex<()>>,
}

impl Batcher {
    pub fn spawn(
        embedder: Arc<Embedder>,
        max_batch_tokens: usize,
        limits: QueueLimits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("mrl-model".into())
            .spawn(move || run(rx, &embedder, max_batch_tokens.max(1), &m))?;
        Ok(Self {
            tx,
            limits: QueueLimits {
                requests: limits.requests.max(1),
                ..limits
            },
            metrics,
            admission: Arc::new(Mutex::new(())),
        })
    }

    /// Raw pooled vectors (the profile's full width) for already tokenized texts.
    ///
    /// Errors: `QueueFull` when admitting the request would exceed the queue's limits;
    /// `Internal` when the model thread has stopped or the forward pass failed.
    pub async fn embed(
        &self,
        profile: Profile,
        tokens: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let token_count = tokens.iter().map(Vec::len).sum();
        self.admit(token_count)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            profile,
            tokens,
            token_count,
            reply,
        };
        if self.tx.send(job).is_err() {
            self.release(1, token_count);
            return Err(ApiError::Internal("the model thread has stopped".into()));
        }
        rx.await
            .map_err(|_| ApiError::Internal("the model thread dropped the request".into()))?
            .map_err(ApiError::Internal)
    }

    /// Reserves room for one request of `tokens`, or refuses it. Reserved before sending, so
    /// the model thread's release can never run first; the model thread only ever lowers the
    /// counts, so a check that races it errs on the side of refusing.
    fn admit(&self, tokens: usize) -> Result<(), ApiError> {
        let _one_at_a_time = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let m = &self.metrics;
        let requests = m.queue_depth.load(Ordering::SeqCst);
        let queued = m.queue_tokens.load(Ordering::SeqCst);
        if requests >= self.limits.requests || (queued > 0 && queued + tokens > self.limits.tokens)
        {
            return Err(ApiError::QueueFull {
                requests: self.limits.requests,
                tokens: self.limits.tokens,
            });
        }
        m.queue_depth.fetch_add(1, Ordering::SeqCst);
        m.queue_tokens.fetch_add(tokens, Ordering::SeqCst);
        Ok(())
    }

    fn release(&self, requests: usize, tokens: usize) {
        release(&self.metrics, requests, tokens);
    }
}

fn release(metrics: &Metrics, requests: usize, tokens: usize) {
    metrics.queue_depth.fetch_sub(requests, Ordering::SeqCst);
    metrics.queue_tokens.fetch_sub(tokens, Ordering::SeqCst);
}

fn run(rx: Receiver<Job>, embedder: &Embedder, budget: usize, metrics: &Metrics) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            pending.push_back(job);
        }
        // Requests nobody waits for any more are not worth a forward pass.
        pending.retain(|job| {
            if job.reply.is_closed() {
                release(metrics, 1, job.token_count);
                metrics.abandoned.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                true
            }
        });
        let Some(first) = pending.front() else {
            continue;
        };
        let profile = first.profile.clone();
        let mut batch: Vec<Job> = Vec::new();
        let mut tokens = 0;
        let mut rest = VecDeque::with_capacity(pending.len());
        for job in pending.drain(..) {
            let t = job.token_count;
            // The oldest request always runs, even when it alone exceeds the budget.
            if job.profile == profile && (batch.is_empty() || tokens + t <= budget) {
                tokens += t;
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending = rest;
        release(metrics, batch.len(), tokens);
        let counts: Vec<usize> = batch.iter().map(|j| j.tokens.len()).collect();
        let seqs: Vec<Vec<u32>> = batch
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.tokens))
            .collect();
        metrics.batch_size.observe(seqs.len() as f64);
        metrics.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        // A panic in the forward pass fails this batch, not the thread every later request needs.
        let result = crate::error::catch_panic(|| {
            embedder
                .embed_tokens(&seqs, &profile, seqs.len().max(1))
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|panic| Err(format!("the forward pass panicked: {panic}")));
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (job, &n) in batch.into_iter().zip(&counts) {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
                    // A client that went away during the pass no longer listens.
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(msg) => {
                for job in batch {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}
