//! The serving engine: the model and the live catalog behind atomic pointers,
//! the batching scheduler, per-request deadlines, and the ANN fallback.
//!
//! A request resolves its history against the catalog it took at its start,
//! then either asks the scheduler for a generation (strategy `auto` or
//! `generative`) or answers from ANN recall (`ann`, no model loaded, deadline
//! passed). With `auto`, ANN also fills the list when generation returns fewer
//! than `k` items after exclusions; an item never appears twice in an answer.

pub mod admin;
pub mod catalog_info;
mod coldstart;
pub mod edits;
pub mod explore;
pub mod model_root;
pub mod pair;
pub mod replica;
mod request;
pub mod scheduler;
pub mod search;
pub mod state;
mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::catalog::{Catalog, CatalogError};
use crate::coldstart::{ColdStart, IntentWeight};
use crate::generate::{GenRequest, GenerateError, Hit};
use crate::model::ModelError;
use crate::recall::{Ann, RecallError};
pub use pair::Pair;
use request::check_controls;
pub use request::{FallbackReason, ItemSource, RecAnswer, RecItem, RecRequest, Steering, Strategy};
pub use scheduler::{BatchObserver, BatchOptions, NoObserver, WorkerHealth};
use scheduler::{Job, Scheduler, SubmitError};
pub use state::{LoadedModel, ModelInfo, ServedCatalog};

/// Largest `k` a request may ask for.
pub const MAX_K: usize = 100;
/// Largest `timeout_ms` a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is well-formed but cannot be served as asked (HTTP 422).
    #[error("{message}")]
    InvalidField { field: &'static str, message: String },
    /// No model is loaded and the request asked for generation (HTTP 503).
    #[error("no model is loaded")]
    NotReady,
    /// The queue is full (HTTP 429).
    #[error("overloaded: the request queue is full")]
    Overloaded,
    /// A `generative` request missed its deadline (HTTP 504).
    #[error("generation did not finish within {0} ms")]
    Deadline(u64),
    #[error("generation failed: {0}")]
    Generate(#[from] GenerateError),
    #[error("ANN recall failed: {0}")]
    Recall(#[from] RecallError),
    #[error("model and catalog do not match: {0}")]
    Mismatch(String),
    #[error("loading model: {0}")]
    LoadModel(#[from] ModelError),
    /// A checkpoint named `hf:ORG/REPO` could not be pulled from the Hub.
    #[error("{0}")]
    Hub(#[from] crate::model::hub::HubError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// An admin request that names something outside what it may touch (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// A checkpoint that failed validation (HTTP 422); the old model keeps serving.
    #[error("checkpoint refused: {0}")]
    Refused(String),
    /// An admin request that contradicts the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the batching worker has stopped")]
    Stopped,
    #[error("starting the batching worker: {0}")]
    Worker(std::io::Error),
    /// A batched generation failed (the error is shared by the batch's requests).
    #[error("generation failed: {0}")]
    Batch(String),
    /// A profile request while no intent model or encoder is configured (HTTP 503).
    #[error("cold start is not available: {0}")]
    ColdStart(String),
    /// The replica feed cannot be reached or answered something unexpected
    /// (HTTP 503).
    #[error("replica feed: {0}")]
    Feed(#[from] crate::feed::FeedError),
    /// This replica is still catching up with the feed and takes no change
    /// yet (HTTP 503).
    #[error("this replica is still catching up with the replica feed: retry shortly or on another replica")]
    CatchingUp,
    /// The change is in the feed at this position but this replica did not
    /// apply it in time; it will (HTTP 503).
    #[error("the change is in the replica feed at {0} but this replica did not apply it in time (it will when it catches up)")]
    NotAppliedYet(crate::feed::Position),
}

/// Engine options.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub batch: BatchOptions,
    /// Default deadline of a request.
    pub timeout: Duration,
    /// Folder under which `POST /admin/models` may load checkpoints.
    pub model_root: Option<PathBuf>,
    /// Sentence-encoder folder for `POST /admin/items` with text.
    pub encoder: Option<PathBuf>,
    /// Where hot-swapped checkpoints are loaded, and in which dtype.
    pub device: candle_core::Device,
    pub dtype: crate::device::DTypeChoice,
    /// Compact the catalog when its edit log grows past this many bytes (0: never).
    pub compact_log_bytes: u64,
    /// Weight of the intents' log-prior in soft steering ([`Steering::Soft`]).
    pub steering_weight: f32,
    /// Items the query's embedding contributes to a search's allowed set.
    pub search_candidates: usize,
    /// Weight of the model's log-probability in a personalized search's ranking.
    pub search_model_weight: f32,
}

/// Default weight of soft steering, chosen on MovieLens-100K validation users
/// (`benches/results/coldstart.md`): the best of 0, 0.1, 0.25, 0.5, 1 with
/// LLM intents; 1 halves NDCG, and hard steering is far below.
pub const DEFAULT_STEERING_WEIGHT: f32 = 0.1;

/// Default edit-log size that starts a compaction: 1 GiB (about 1.5M upserts
/// of 64-d items).
pub const DEFAULT_COMPACT_LOG_BYTES: u64 = 1 << 30;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch: BatchOptions::default(),
            timeout: Duration::from_millis(500),
            model_root: None,
            encoder: None,
            device: candle_core::Device::Cpu,
            dtype: crate::device::DTypeChoice::Auto,
            compact_log_bytes: DEFAULT_COMPACT_LOG_BYTES,
            steering_weight: DEFAULT_STEERING_WEIGHT,
            search_candidates: search::DEFAULT_SEARCH_CANDIDATES,
            search_model_weight: search::DEFAULT_SEARCH_MODEL_WEIGHT,
        }
    }
}

/// A request resolved against one catalog.
struct Resolved {
    history: Vec<u32>,
    exclude: HashSet<u32>,
    ignored: Vec<String>,
}

pub struct Engine {
    model: ArcSwapOption<LoadedModel>,
    previous: Mutex<Option<Arc<LoadedModel>>>,
    /// The catalog view requests take (published once its edits are durable).
    catalog: ArcSwap<ServedCatalog>,
    /// The edit side: the newest view, the edit log, views waiting for a sync.
    writer: Mutex<edits::Writer>,
    /// Threads that run edits, below serving's priority.
    edit_pool: edits::EditPool,
    /// Serialises model changes.
    admin_lock: Mutex<()>,
    /// `--model-root`, resolved once at start.
    model_root: Option<model_root::ModelRoot>,
    /// This engine, for background jobs it starts (compaction).
    me: OnceLock<Weak<Engine>>,
    scheduler: Scheduler,
    opts: EngineOptions,
    encoder: Mutex<Option<Arc<crate::catalog::embed::TextEncoder>>>,
    coldstart: ArcSwapOption<ColdStart>,
    /// The feed this engine is a replica of (`genrec serve --feed`).
    replica: OnceLock<Arc<replica::Replica>>,
}

impl Engine {
    /// An engine serving `catalog` (edits kept in memory only), with no
    /// model until [`Engine::install`].
    pub fn new(
        catalog: Catalog,
        opts: EngineOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Arc<Self>, EngineError> {
        Self::with_store(catalog, edits::EditStore::Memory, opts, observer)
    }

    /// An engine serving `catalog`, whose edits go to `store`'s log when
    /// durable (see [`edits::open_store`]).
    pub fn with_store(
        catalog: Catalog,
        store: edits::EditStore,
        opts: EngineOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Arc<Self>, EngineError> {
        let model_root = match &opts.model_root {
            Some(p) => Some(model_root::ModelRoot::new(p).map_err(|e| EngineError::Refused(e.to_string()))?),
            None => None,
        };
        let ann = Ann::open(&catalog)?;
        let served = Arc::new(ServedCatalog { catalog, ann: Arc::new(ann) });
        let writer = edits::Writer::new(served.clone(), store);
        let engine = Arc::new(Engine {
            model: ArcSwapOption::empty(),
            previous: Mutex::new(None),
            catalog: ArcSwap::new(served),
            writer: Mutex::new(writer),
            edit_pool: edits::EditPool::start().map_err(EngineError::Worker)?,
            admin_lock: Mutex::new(()),
            model_root,
            me: OnceLock::new(),
            scheduler: Scheduler::start(opts.batch.clone(), observer).map_err(EngineError::Worker)?,
            opts,
            encoder: Mutex::new(None),
            coldstart: ArcSwapOption::empty(),
            replica: OnceLock::new(),
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        Ok(engine)
    }

    /// The model in service, if any.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.model.load_full()
    }

    /// Whether the batching worker runs, and the panics it survived.
    pub fn worker_health(&self) -> scheduler::WorkerHealth {
        self.scheduler.health()
    }

    /// Test hook: the next batched generation panics.
    #[cfg(test)]
    pub(crate) fn inject_generation_panic(&self) {
        self.scheduler.inject_panic();
    }

    /// The catalog in service.
    pub fn catalog(&self) -> Arc<ServedCatalog> {
        self.catalog.load_full()
    }

    fn resolve(&self, cat: &Catalog, req: &RecRequest) -> Result<Resolved, EngineError> {
        if req.k == 0 || req.k > MAX_K {
            return Err(EngineError::InvalidField { field: "k", message: format!("k must be between 1 and {MAX_K}") });
        }
        if req.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
            return Err(EngineError::InvalidField {
                field: "timeout_ms",
                message: format!("timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"),
            });
        }
        if let Some(p) = &req.profile {
            p.check().map_err(|(field, message)| EngineError::InvalidField { field, message })?;
        }
        check_controls(req)?;
        if req.history.is_empty() && req.profile.is_none() && req.query.is_none() {
            return Err(EngineError::InvalidField {
                field: "history",
                message: "history must not be empty (a new user without history sends a profile)".into(),
            });
        }
        let mut history = Vec::with_capacity(req.history.len());
        let mut ignored = Vec::new();
        for id in &req.history {
            match cat.index_of(id) {
                Some(i) => history.push(i),
                None => ignored.push(id.clone()),
            }
        }
        if history.is_empty() && req.profile.is_none() && req.query.is_none() {
            return Err(EngineError::InvalidField {
                field: "history",
                message: format!("none of the {} history item ids is in the catalog", req.history.len()),
            });
        }
        let exclude = if req.exclude_history { history.iter().copied().collect() } else { HashSet::new() };
        Ok(Resolved { history, exclude, ignored })
    }

    /// Serves one request: generation through the batching queue, ANN recall
    /// where the strategy allows it; a profile with no or a short history goes
    /// through cold start.
    pub async fn recommend(&self, req: &RecRequest) -> Result<RecAnswer, EngineError> {
        let arrived = Instant::now();
        let cat = self.catalog();
        let r = self.resolve(&cat.catalog, req)?;
        if let Some(query) = &req.query {
            return self.recommend_search(req, query, &cat, &r, arrived).await;
        }
        if let Some(profile) = req.profile.as_ref().filter(|_| r.history.len() < coldstart::SHORT_HISTORY) {
            return self.recommend_coldstart(req, profile, &cat, &r, arrived).await;
        }
        let model = self.model();
        let mut answer = RecAnswer::new(model.as_ref().map(|m| m.label()), r.ignored.clone());
        let model = match (req.strategy, model) {
            (Strategy::Ann, _) => return self.fill(answer, &cat, &r, req.k, FallbackReason::Requested),
            (Strategy::Generative, None) => return Err(EngineError::NotReady),
            (Strategy::Auto, None) => return self.fill(answer, &cat, &r, req.k, FallbackReason::NoModel),
            (_, Some(m)) => m,
        };
        let timeout_ms = self.timeout_ms(req);
        let deadline = arrived + Duration::from_millis(timeout_ms);
        let gen = GenRequest {
            history: r.history.clone(),
            k: req.k,
            exclude: r.exclude.clone(),
            max_per_intent: req.max_per_intent,
            ..Default::default()
        };
        let (outcome, explored) = self.generate_exploring(gen, req.explore, model, &cat, deadline).await?;
        let hits = match outcome {
            Generation::Done(hits, tokens) => {
                answer.tokens = tokens;
                hits
            }
            Generation::Failed(e) if req.strategy == Strategy::Auto => {
                tracing::warn!(error = %e, "generation failed; answering from ANN recall");
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Error);
            }
            Generation::Failed(e) => return Err(EngineError::Batch(e)),
            Generation::Stopped if req.strategy == Strategy::Auto => {
                tracing::warn!("the batching worker dropped the request; answering from ANN recall");
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Error);
            }
            Generation::Stopped => return Err(EngineError::Stopped),
            Generation::Late if req.strategy == Strategy::Auto => {
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Deadline)
            }
            Generation::Late => return Err(EngineError::Deadline(timeout_ms)),
        };
        answer.items = items_of(&cat, hits, ItemSource::Generative);
        explore::mark_explored(&mut answer.items, &cat.catalog, &explored);
        if answer.items.len() < req.k {
            // ANN would not keep to the cap: a capped answer says why it is short
            if let Some(cap) = req.max_per_intent {
                answer.note = Some(format!("{} items within max_per_intent {cap}", answer.items.len()));
            } else if req.strategy == Strategy::Auto {
                return self.fill(answer, &cat, &r, req.k, FallbackReason::Fill);
            }
        }
        Ok(answer)
    }

    fn timeout_ms(&self, req: &RecRequest) -> u64 {
        req.timeout_ms.unwrap_or(self.opts.timeout.as_millis() as u64)
    }

    /// Queues one generation; the receiver gets its result.
    fn submit(
        &self,
        req: GenRequest,
        model: Arc<LoadedModel>,
        cat: &Arc<ServedCatalog>,
        deadline: Instant,
    ) -> Result<tokio::sync::oneshot::Receiver<scheduler::JobResult>, EngineError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job { req, model, catalog: cat.clone(), deadline, enqueued: Instant::now(), reply: tx };
        match self.scheduler.submit(job) {
            Ok(()) => Ok(rx),
            Err(SubmitError::Full) => Err(EngineError::Overloaded),
            Err(SubmitError::Stopped) => Err(EngineError::Stopped),
        }
    }

    /// Completes `answer` to `k` items from ANN recall by the history, never
    /// repeating an item already in it or excluded.
    fn fill(
        &self,
        answer: RecAnswer,
        cat: &ServedCatalog,
        r: &Resolved,
        k: usize,
        reason: FallbackReason,
    ) -> Result<RecAnswer, EngineError> {
        let want = k.saturating_sub(answer.items.len());
        self.ann_shares(answer, cat, r, &[Share { intent: None, k: want }], reason)
    }

    /// Answers shares from ANN recall: an intent's share by its first-level
    /// centroid, among the items under its code; the history's share by the
    /// history. Never repeats an item already in `answer` or excluded; sets
    /// `fallback` to `reason` (for `fill`, only when it added something).
    fn ann_shares(
        &self,
        mut answer: RecAnswer,
        cat: &ServedCatalog,
        r: &Resolved,
        shares: &[Share],
        reason: FallbackReason,
    ) -> Result<RecAnswer, EngineError> {
        let c = &cat.catalog;
        let mut taken: HashSet<u32> = r.exclude.clone();
        taken.extend(answer.items.iter().filter_map(|it| c.index_of(&it.item_id)));
        let mut added = 0;
        for s in shares {
            let hits = match s.intent {
                Some(i) => {
                    let q = c.intent_centroid(i.code);
                    cat.ann.search(c, &q, s.k, |x| !taken.contains(&x) && c.sid(x)[0] == i.code)?
                }
                None if !r.history.is_empty() => cat.ann.recall(c, &r.history, s.k, &taken)?,
                None => Vec::new(),
            };
            for (item, score) in hits {
                taken.insert(item);
                added += 1;
                answer.items.push(RecItem::new(c, item, score, ItemSource::Ann));
            }
        }
        if added > 0 || reason != FallbackReason::Fill {
            answer.fallback = Some(reason);
        }
        Ok(answer)
    }
}

/// One share of an answer: `k` items from an intent's sub-trie, or from the
/// history's own generation (or ANN recall) when `intent` is `None`.
struct Share<'a> {
    intent: Option<&'a IntentWeight>,
    k: usize,
}

/// Generated items that the catalog still serves.
fn items_of(cat: &ServedCatalog, hits: Vec<Hit>, source: ItemSource) -> Vec<RecItem> {
    hits.into_iter()
        .filter(|h| cat.serves(h.item))
        .map(|h| RecItem::new(&cat.catalog, h.item, h.score, source))
        .collect()
}

/// How a queued generation ended.
enum Generation {
    Done(Vec<Hit>, usize),
    Failed(String),
    Stopped,
    /// The deadline passed first.
    Late,
}

async fn wait(rx: tokio::sync::oneshot::Receiver<scheduler::JobResult>, deadline: Instant) -> Generation {
    match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(Ok((hits, tokens)))) => Generation::Done(hits, tokens),
        Ok(Ok(Err(e))) => Generation::Failed(e),
        Ok(Err(_)) => Generation::Stopped,
        Err(_) => Generation::Late,
    }
}

#[cfg(test)]
mod tests;
