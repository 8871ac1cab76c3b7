//! Dynamic batching: requests wait in a bounded queue; one worker thread (off
//! the async runtime) takes the first waiting request, gathers more for up to
//! `max_wait` or until `max_batch`, and runs one batched generation for all of
//! them. A full queue refuses at once (the server answers 429); a request
//! whose caller has gone (client disconnected, or it already answered from the
//! fallback at its deadline) is dropped before it costs any work.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::state::{ServedCatalog, LoadedModel};
use crate::generate::{generate, GenRequest, Hit};

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
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_queue: 256, max_batch: 32, max_wait: Duration::from_millis(2), beam: 20 }
    }
}

/// What a generation job returns: the hits and the tokens decoded for it, or
/// the batch's error as text (one error answers every request of the batch).
pub type JobResult = Result<(Vec<Hit>, usize), String>;

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
}

/// An observer that records nothing (tests, offline evaluation).
pub struct NoObserver;

impl BatchObserver for NoObserver {
    fn queue_depth(&self, _: usize) {}
    fn batch(&self, _: usize, _: &[Duration]) {}
}

/// The queue and its worker thread.
pub struct Scheduler {
    tx: Option<SyncSender<Job>>,
    depth: Arc<AtomicUsize>,
    worker: Option<JoinHandle<()>>,
    observer: Arc<dyn BatchObserver>,
}

impl Scheduler {
    pub fn start(opts: BatchOptions, observer: Arc<dyn BatchObserver>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(opts.max_queue.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let (d, o) = (depth.clone(), observer.clone());
        let worker = std::thread::Builder::new()
            .name("genrec-batcher".into())
            .spawn(move || worker_loop(rx, opts, d, o))?;
        Ok(Scheduler { tx: Some(tx), depth, worker: Some(worker), observer })
    }

    /// Queues a job, or refuses at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let tx = self.tx.as_ref().ok_or(SubmitError::Stopped)?;
        // count before sending so the worker's decrement never underflows
        let depth = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        match tx.try_send(job) {
            Ok(()) => {
                self.observer.queue_depth(depth);
                Ok(())
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

impl Drop for Scheduler {
    /// Closes the queue and waits for the worker to finish what it holds.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// Whether two jobs can share a batch: the same model, and catalog views over
/// the same base version (a stream of live edits makes a new view per edit;
/// requests that started on different ones still batch together).
fn same_versions(a: &Job, b: &Job) -> bool {
    Arc::ptr_eq(&a.model, &b.model) && Arc::ptr_eq(a.catalog.catalog.base(), b.catalog.catalog.base())
}

fn worker_loop(rx: Receiver<Job>, opts: BatchOptions, depth: Arc<AtomicUsize>, observer: Arc<dyn BatchObserver>) {
    let max_batch = opts.max_batch.max(1);
    // jobs taken from the queue that belong to a later batch (other versions)
    let mut held: VecDeque<Job> = VecDeque::new();
    let take = |job: Job| {
        let d = depth.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        observer.queue_depth(d);
        job
    };
    loop {
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
            if batch.len() < max_batch && same_versions(&batch[0], &j) {
                batch.push(j);
            } else {
                later.push_back(j);
            }
        }
        held = later;
        while batch.len() < max_batch {
            let now = Instant::now();
            let next = if now >= until { rx.try_recv().map_err(|_| RecvTimeoutError::Timeout) } else { rx.recv_timeout(until - now) };
            match next {
                Ok(j) => {
                    let j = take(j);
                    if same_versions(&batch[0], &j) {
                        batch.push(j);
                    } else {
                        held.push_back(j);
                    }
                }
                Err(_) => break,
            }
        }
        run_batch(batch, opts.beam, &*observer);
    }
}

/// Runs one batch: drops jobs nobody waits for or past their deadline, then
/// generates for the rest and answers each.
fn run_batch(batch: Vec<Job>, beam: usize, observer: &dyn BatchObserver) {
    let now = Instant::now();
    let (live, _dropped): (Vec<Job>, Vec<Job>) =
        batch.into_iter().partition(|j| !j.reply.is_closed() && j.deadline > now);
    if live.is_empty() {
        return;
    }
    let waits: Vec<Duration> = live.iter().map(|j| now.saturating_duration_since(j.enqueued)).collect();
    observer.batch(live.len(), &waits);
    let reqs: Vec<GenRequest> = live.iter().map(|j| j.req.clone()).collect();
    // the newest of the batch's views: item indices never change within a
    // base, so every request's history and exclusions hold in it, and each
    // request then keeps the items its own view serves
    let newest = live.iter().max_by_key(|j| j.catalog.catalog.last_edit_id()).unwrap_or(&live[0]);
    let (model, catalog) = (newest.model.clone(), newest.catalog.clone());
    let span = tracing::debug_span!("batch", size = live.len());
    let _g = span.enter();
    match generate(&model.model, &catalog.catalog, &reqs, beam) {
        Ok(out) => {
            let per = out.tokens / live.len().max(1);
            for (job, hits) in live.into_iter().zip(out.hits) {
                let _ = job.reply.send(Ok((hits, per)));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "batched generation failed");
            let msg = e.to_string();
            for job in live {
                let _ = job.reply.send(Err(msg.clone()));
            }
        }
    }
}
