//! Dynamic batching: requests wait in a bounded queue; a worker thread (off
//! the async runtime; `workers` of them take turns at the queue) takes the
//! first waiting request, gathers more for up to `max_wait` or until
//! `max_batch`, and runs batched generations for them. A full queue refuses at once (the server answers 429); a request
//! whose caller has gone (client disconnected, or it already answered from the
//! fallback at its deadline) is dropped before it costs any work.
//!
//! A panic inside a batch's generation is caught: that batch's requests get
//! an error (strategy `auto` then answers from ANN recall), the panic is
//! counted, and the worker goes on with the next batch. Should the worker's
//! own loop panic, it is started again; [`Scheduler::health`] says whether it
//! runs and how many panics it survived (`/readyz`, `/metrics`).

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::state::{LoadedModel, ServedCatalog};
use crate::generate::{generate_ensemble, GenRequest, Hit, Scoring};

/// Batching settings.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Requests that may wait; more are refused.
    pub max_queue: usize,
    /// Requests per batched generation.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Beam width.
    pub beam: usize,
    /// How codes are normalised ([`Scoring`]); an ensemble always scores
    /// with its members' own probabilities.
    pub scoring: Scoring,
    /// Worker threads taking batches from the queue. With more than one,
    /// each runs its kernels on its own one-thread pool (one worker per core
    /// beats one worker whose kernels split every product over the cores,
    /// for models as small as genrec's CPU ones).
    pub workers: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_queue: 256,
            max_batch: 32,
            max_wait: Duration::ZERO,
            beam: 20,
            scoring: Scoring::Model,
            workers: 1,
        }
    }
}

/// What a generation job returns: the hits and the tokens decoded for it, or
/// the batch's error as text (one error answers every request of the batch).
pub type JobResult = Result<(Vec<Hit>, usize), SharedError>;

/// A batch's failure, shared by the requests of the batch.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// A batched generation that panicked.
#[derive(Debug, thiserror::Error)]
#[error("generation panicked: {0}")]
pub struct Panicked(String);

/// One request waiting for generation.
pub struct Job {
    pub req: GenRequest,
    pub model: Arc<LoadedModel>,
    pub catalog: Arc<ServedCatalog>,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full (HTTP 429).
    Full,
    /// The worker has stopped.
    Stopped,
}

/// Observer of the scheduler's work, for metrics.
pub trait BatchObserver: Send + Sync + 'static {
    fn queue_depth(&self, depth: usize);
    fn batch(&self, size: usize, queue_waits: &[Duration]);
    /// A batch's generation (or the worker loop) panicked.
    fn worker_panic(&self) {}
}

/// An observer that records nothing (tests, offline evaluation).
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn queue_depth(&self, _: usize) {}
    fn batch(&self, _: usize, _: &[Duration]) {}
}

/// The worker's health, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerHealth {
    /// The worker thread runs (false only if it ended for good).
    pub running: bool,
    /// Panics caught since start (each failed one batch).
    pub panics: u64,
}

/// What the worker shares with the scheduler.
struct Shared {
    scoring: Scoring,
    depth: AtomicUsize,
    panics: AtomicU64,
    /// Test hook: the next batch panics (set only by tests).
    panic_next: AtomicBool,
}

/// The queue and its worker threads.
pub struct Scheduler {
    tx: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    observer: Arc<dyn BatchObserver>,
}

impl Scheduler {
    pub fn start(opts: BatchOptions, observer: Arc<dyn BatchObserver>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(opts.max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            scoring: opts.scoring,
            depth: AtomicUsize::new(0),
            panics: AtomicU64::new(0),
            panic_next: AtomicBool::new(false),
        });
        let n = opts.workers.max(1);
        let mut workers = Vec::with_capacity(n);
        for w in 0..n {
            let (rx, sh, o, opts) = (rx.clone(), shared.clone(), observer.clone(), opts.clone());
            let pool = if n > 1 {
                Some(rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(std::io::Error::other)?)
            } else {
                None
            };
            workers.push(std::thread::Builder::new().name(format!("genrec-batcher-{w}")).spawn(move || {
                // jobs taken from the queue that belong to a later batch (other versions)
                let mut held = VecDeque::new();
                let mut run = || {
                    // the loop catches panics per batch; this restarts it should anything else panic
                    while catch_unwind(AssertUnwindSafe(|| worker_loop(&rx, &opts, &sh, &*o, &mut held))).is_err() {
                        sh.panics.fetch_add(1, Ordering::Relaxed);
                        o.worker_panic();
                        tracing::error!("a batching worker panicked; restarting it");
                        // held jobs may be half-handled: dropping them answers their callers (Stopped)
                        held.clear();
                    }
                };
                match &pool {
                    Some(p) => p.install(run),
                    None => run(),
                }
            })?);
        }
        Ok(Scheduler { tx: Some(tx), shared, workers, observer })
    }

    /// Whether the worker runs, and the panics it survived.
    pub fn health(&self) -> WorkerHealth {
        WorkerHealth {
            running: !self.workers.is_empty() && self.workers.iter().all(|w| !w.is_finished()),
            panics: self.shared.panics.load(Ordering::Relaxed),
        }
    }

    /// Test hook: makes the next batch's generation panic.
    #[cfg(test)]
    pub(crate) fn inject_panic(&self) {
        self.shared.panic_next.store(true, Ordering::SeqCst);
    }

    /// Queues a job, or refuses at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        // count before sending so the worker's decrement never underflows
        let depth = self.shared.depth.fetch_add(1, Ordering::SeqCst) + 1;
        match tx.try_send(job) {
            Ok(()) => {
                self.observer.queue_depth(depth);
                Ok(())
            }
            Err(e) => {
                self.shared.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

impl Drop for Scheduler {
    /// Closes the queue and waits for the workers to finish what they hold.
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The beam width a job runs with: the server's, or its `k` when larger.
fn beam_of(job: &Job, beam: usize) -> usize {
    job.req.k.max(beam)
}

/// Whether two jobs can share a batch: the same model, catalog views over
/// the same base version (a stream of live edits makes a new view per edit;
/// requests that started on different ones still batch together), and the
/// same beam width (a batch runs one: a k = 100 request must not make k = 10
/// requests beside it search with 100 beams).
fn can_share(a: &Job, b: &Job, beam: usize) -> bool {
    Arc::ptr_eq(&a.model, &b.model)
        && Arc::ptr_eq(a.catalog.catalog.base(), b.catalog.catalog.base())
        && beam_of(a, beam) == beam_of(b, beam)
}

fn worker_loop(
    rx: &Mutex<Receiver<Job>>,
    opts: &BatchOptions,
    shared: &Shared,
    observer: &dyn BatchObserver,
    held: &mut VecDeque<Job>,
) {
    let max_batch = opts.max_batch.max(1);
    let take = |job: Job| {
        let d = shared.depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        observer.queue_depth(d);
        job
    };
    loop {
        // one worker at a time takes a batch from the queue
        let rx = rx.lock();
        let first = match held.pop_front() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => take(j),
                Err(_) => return, // queue closed and drained
            },
        };
        let until = first.enqueued + opts.max_wait;
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        while let Some(j) = held.pop_front() {
            if batch.len() < max_batch && can_share(&batch[0], &j, opts.beam) {
                batch.push(j);
            } else {
                later.push_back(j);
            }
        }
        *held = later;
        while batch.len() < max_batch {
            let now = Instant::now();
            let next = if now >= until {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(until - now)
            };
            match next {
                Ok(j) => {
                    let j = take(j);
                    if can_share(&batch[0], &j, opts.beam) {
                        batch.push(j);
                    } else {
                        held.push_back(j);
                    }
                }
                Err(_) => break,
            }
        }
        drop(rx);
        run_batch(batch, opts.beam, shared, observer);
    }
}

/// Runs one batch: drops jobs nobody waits for or past their deadline, then
/// generates for the rest, one generation per history length, and answers
/// each. A generation pads its histories to its longest, and prefill attention
/// costs the square of that length: one padded batch of mixed lengths cost
/// more per request than single requests (demo model, 16 clients: 330-390
/// against 530-600 answers/s), groups of equal length cost less (630-700).
fn run_batch(batch: Vec<Job>, beam: usize, shared: &Shared, observer: &dyn BatchObserver) {
    let now = Instant::now();
    let (mut waiting, _dropped): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|j| !j.reply.is_closed() && j.deadline > now);
    let Some(first) = waiting.first() else { return };
    let longest = first.model.model.sidecar().max_history_items.max(1);
    let len = |j: &Job| j.req.history.len().clamp(1, longest);
    waiting.sort_by_key(len);
    while !waiting.is_empty() {
        let n = waiting.iter().take_while(|j| len(j) == len(&waiting[0])).count();
        let rest = waiting.split_off(n);
        run_group(waiting, beam, now, shared, observer);
        waiting = rest;
    }
}

/// One generation for jobs of one history length.
fn run_group(waiting: Vec<Job>, beam: usize, now: Instant, shared: &Shared, observer: &dyn BatchObserver) {
    let waits: Vec<Duration> = waiting.iter().map(|j| now.saturating_duration_since(j.enqueued)).collect();
    observer.batch(waiting.len(), &waits);
    let reqs: Vec<GenRequest> = waiting.iter().map(|j| j.req.clone()).collect();
    // the newest of the batch's views: item indices never change within a
    // base, so every request's history and exclusions hold in it, and each
    // request then keeps the items its own view serves
    let newest = waiting.iter().max_by_key(|j| j.catalog.catalog.last_edit_id()).unwrap_or(&waiting[0]);
    let (model, catalog) = (newest.model.clone(), newest.catalog.clone());
    let span = tracing::debug_span!("batch", size = waiting.len());
    let _g = span.enter();
    let result = catch_unwind(AssertUnwindSafe(|| {
        if shared.panic_next.swap(false, Ordering::SeqCst) {
            panic!("injected by a test");
        }
        let members = model.model.members();
        let scoring = if members.len() > 1 { Scoring::Model } else { shared.scoring };
        generate_ensemble(&members, &catalog.catalog, &reqs, beam, scoring)
    }));
    let result = match result {
        Ok(r) => r.map_err(|e| Arc::new(e) as SharedError),
        Err(payload) => {
            shared.panics.fetch_add(1, Ordering::Relaxed);
            observer.worker_panic();
            let what = panic_message(&*payload);
            tracing::error!(panic = %what, size = waiting.len(), "batched generation panicked; its requests get an error");
            Err(Arc::new(Panicked(what)) as SharedError)
        }
    };
    match result {
        Ok(out) => {
            let per = out.tokens / waiting.len().max(1);
            for (job, hits) in waiting.into_iter().zip(out.hits) {
                let _ = job.reply.send(Ok((hits, per)));
            }
        }
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&*e), "batched generation failed");
            for job in waiting {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The text of a panic's payload (`panic!` with a string or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
