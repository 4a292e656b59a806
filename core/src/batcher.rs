//! The model thread: requests queue on a channel; the thread takes the oldest, adds every
//! queued request of the same profile up to a token budget, runs one packed forward pass and
//! answers each request.
//!
//! The queue is bounded by work, not by channel slots: a request is admitted only while the
//! requests and tokens waiting (in the channel and in the thread's own pending list) stay within
//! `QueueLimits`; beyond them it is refused at once (`Error::QueueFull`, HTTP 429). A request
//! whose caller has gone away (its reply receiver dropped) is discarded before its forward pass
//! and counted. Queue depth, batch sizes and tokens go to the `metrics` facade
//! (`mrl_queue_depth`, `mrl_queue_tokens`, `mrl_batch_texts`, `mrl_tokens_total`,
//! `mrl_requests_abandoned_total`); whoever installed a recorder renders them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use mrl_encoder::{Embedder, Profile};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::panic::catch_panic;

/// What waits for the model thread: the admission counts, mirrored to the gauges.
#[derive(Default)]
struct Queue {
    /// Requests waiting.
    depth: AtomicUsize,
    /// Token ids waiting, summed over the waiting requests.
    tokens: AtomicUsize,
}

impl Queue {
    fn publish(&self) {
        metrics::gauge!("mrl_queue_depth").set(self.depth.load(Ordering::SeqCst) as f64);
        metrics::gauge!("mrl_queue_tokens").set(self.tokens.load(Ordering::SeqCst) as f64);
    }
}

/// The model thread's answer to one request: its raw pooled vectors, or why not.
type Answer = Result<Vec<Vec<f32>>, String>;
type Reply = oneshot::Sender<Answer>;

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
    queue: Arc<Queue>,
    /// Admissions check and reserve one at a time, so a refused request never counts, even
    /// for a moment, against another.
    admission: Arc<Mutex<()>>,
}

impl Batcher {
    /// Starts the model thread: batches of at most `max_batch_tokens` token ids (the oldest
    /// request always runs, however long), at most `limits` waiting.
    pub fn spawn(
        embedder: Arc<Embedder>,
        max_batch_tokens: usize,
        limits: QueueLimits,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let queue = Arc::new(Queue::default());
        queue.publish();
        let q = queue.clone();
        std::thread::Builder::new()
            .name("mrl-model".into())
            .spawn(move || run(rx, &embedder, max_batch_tokens.max(1), &q))?;
        Ok(Self {
            tx,
            limits: QueueLimits {
                requests: limits.requests.max(1),
                ..limits
            },
            queue,
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
    ) -> Result<Vec<Vec<f32>>, Error> {
        let rx = self.submit(profile, tokens)?;
        Self::answer(rx.await)
    }

    /// [`embed`](Self::embed) for a caller on a plain thread (not an async task): it blocks
    /// until the model thread answers.
    pub fn embed_blocking(
        &self,
        profile: Profile,
        tokens: Vec<Vec<u32>>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let rx = self.submit(profile, tokens)?;
        Self::answer(rx.blocking_recv())
    }

    /// Admits and queues one request; its answer comes on the returned receiver.
    fn submit(
        &self,
        profile: Profile,
        tokens: Vec<Vec<u32>>,
    ) -> Result<oneshot::Receiver<Answer>, Error> {
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
            return Err(Error::Internal("the model thread has stopped".into()));
        }
        Ok(rx)
    }

    fn answer(got: Result<Answer, oneshot::error::RecvError>) -> Result<Vec<Vec<f32>>, Error> {
        got.map_err(|_| Error::Internal("the model thread dropped the request".into()))?
            .map_err(Error::Internal)
    }

    /// Reserves room for one request of `tokens`, or refuses it. Reserved before sending, so
    /// the model thread's release can never run first; the model thread only ever lowers the
    /// counts, so a check that races it errs on the side of refusing.
    fn admit(&self, tokens: usize) -> Result<(), Error> {
        let _one_at_a_time = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let q = &self.queue;
        let requests = q.depth.load(Ordering::SeqCst);
        let queued = q.tokens.load(Ordering::SeqCst);
        if requests >= self.limits.requests || (queued > 0 && queued + tokens > self.limits.tokens)
        {
            return Err(Error::QueueFull {
                requests: self.limits.requests,
                tokens: self.limits.tokens,
            });
        }
        q.depth.fetch_add(1, Ordering::SeqCst);
        q.tokens.fetch_add(tokens, Ordering::SeqCst);
        q.publish();
        Ok(())
    }

    fn release(&self, requests: usize, tokens: usize) {
        release(&self.queue, requests, tokens);
    }
}

fn release(queue: &Queue, requests: usize, tokens: usize) {
    queue.depth.fetch_sub(requests, Ordering::SeqCst);
    queue.tokens.fetch_sub(tokens, Ordering::SeqCst);
    queue.publish();
}

fn run(rx: Receiver<Job>, embedder: &Embedder, budget: usize, queue: &Queue) {
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
                release(queue, 1, job.token_count);
                metrics::counter!("mrl_requests_abandoned_total").increment(1);
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
        release(queue, batch.len(), tokens);
        let counts: Vec<usize> = batch.iter().map(|j| j.tokens.len()).collect();
        let seqs: Vec<Vec<u32>> = batch
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.tokens))
            .collect();
        metrics::histogram!("mrl_batch_texts").record(seqs.len() as f64);
        metrics::counter!("mrl_tokens_total").increment(tokens as u64);
        // A panic in the forward pass fails this batch, not the thread every later request needs.
        let result = catch_panic(|| {
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
