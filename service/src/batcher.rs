//! The model thread: requests queue on a bounded channel; the thread takes the oldest, adds
//! every queued request of the same profile up to a token budget, runs one packed forward
//! pass and answers each request. A full queue is refused at once (HTTP 429).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use mrl_encoder::{Embedder, Profile};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

struct Job {
    profile: Profile,
    tokens: Vec<Vec<u32>>,
    reply: Reply,
}

impl Job {
    fn token_count(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
}

/// Handle to the model thread; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Batcher {
    pub fn spawn(
        embedder: Arc<Embedder>,
        max_batch_tokens: usize,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("mrl-model".into())
            .spawn(move || run(rx, &embedder, max_batch_tokens.max(1), &m))?;
        Ok(Self {
            tx,
            capacity,
            metrics,
        })
    }

    /// Raw pooled vectors (the profile's full width) for already tokenized texts.
    pub async fn embed(
        &self,
        profile: Profile,
        tokens: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>, ApiError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            profile,
            tokens,
            reply,
        };
        // Counted before sending so the model thread's decrement can never run first.
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(job) {
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                TrySendError::Full(_) => ApiError::QueueFull {
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => {
                    ApiError::Internal("the model thread has stopped".into())
                }
            });
        }
        rx.await
            .map_err(|_| ApiError::Internal("the model thread dropped the request".into()))?
            .map_err(ApiError::Internal)
    }
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
        let profile = pending[0].profile.clone();
        let mut batch: Vec<Job> = Vec::new();
        let mut tokens = 0;
        let mut rest = VecDeque::with_capacity(pending.len());
        for job in pending.drain(..) {
            let t = job.token_count();
            // The oldest request always runs, even when it alone exceeds the budget.
            if job.profile == profile && (batch.is_empty() || tokens + t <= budget) {
                tokens += t;
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending = rest;
        metrics
            .queue_depth
            .fetch_sub(batch.len(), Ordering::Relaxed);
        let counts: Vec<usize> = batch.iter().map(|j| j.tokens.len()).collect();
        let seqs: Vec<Vec<u32>> = batch
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.tokens))
            .collect();
        metrics.batch_size.observe(seqs.len() as f64);
        metrics.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        match embedder.embed_tokens(&seqs, &profile, seqs.len().max(1)) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (job, &n) in batch.into_iter().zip(&counts) {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(n).collect();
                    // A client that went away no longer listens; nothing to do.
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}
