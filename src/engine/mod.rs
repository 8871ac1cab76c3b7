//! The engine: what genrec serves and how it changes, in two halves.
//!
//! - The **serving side** ([`serving::Serving`]): the model and the live
//!   catalog behind atomic pointers, the batching scheduler, per-request
//!   deadlines and the ANN fallback. A request resolves its history against
//!   the catalog it took at its start, then either asks the scheduler for a
//!   generation (strategy `auto` or `generative`) or answers from ANN recall
//!   (`ann`, no model loaded, deadline passed). With `auto`, ANN also fills
//!   the list when generation returns fewer than `k` items after exclusions;
//!   an item never appears twice in an answer.
//! - The **changing side** ([`changes::Changes`]): catalog edits
//!   ([`edits`]), compaction and model changes ([`admin`]), made through the
//!   write path chosen when the engine starts ([`changes::WritePath`]): here,
//!   or through the replica feed ([`replica`]), whose thread applies them
//!   here in the same way.

pub mod admin;
pub mod catalog_info;
pub mod changes;
mod coldstart;
mod edit_pool;
pub mod edits;
pub mod events;
pub mod explore;
mod generation;
pub mod model_root;
pub mod pair;
pub mod replica;
mod request;
pub mod scheduler;
pub mod search;
pub mod serving;
pub mod state;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::catalog::{Catalog, CatalogError};
use crate::coldstart::ColdStart;
use crate::error::{BoxError, ErrorKind};
use crate::generate::GenerateError;
use crate::model::ModelError;
use crate::recall::{Ann, RecallError};
use changes::{Changes, WritePath};
pub use pair::Pair;
pub use request::{
    FallbackReason, ItemSource, RecAnswer, RecItem, RecRequest, Steering, Strategy, ValidRequest, MAX_TRENDING,
};
use scheduler::Scheduler;
pub use scheduler::{BatchObserver, BatchOptions, NoObserver, WorkerHealth};
use serving::Serving;
pub use state::{LoadedModel, ModelInfo, ServedCatalog};

/// Largest `k` a request may ask for.
pub const MAX_K: usize = 100;
/// Largest `timeout_ms` a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Why a request or a change failed. Each variant has a transport-neutral
/// [`ErrorKind`] ([`EngineError::kind`]) that the server maps to a status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is well-formed but cannot be served as asked.
    #[error("{message}")]
    InvalidField { field: &'static str, message: String },
    /// No model is loaded and the request asked for generation.
    #[error("no model is loaded")]
    NotReady,
    /// The queue is full.
    #[error("overloaded: the request queue is full")]
    Overloaded,
    /// A `generative` request missed its deadline.
    #[error("generation did not finish within {0} ms")]
    Deadline(u64),
    #[error("generation failed: {0}")]
    Generate(#[from] GenerateError),
    #[error("ANN recall failed: {0}")]
    Recall(#[from] RecallError),
    /// A model whose vocabulary does not fit the catalog in service.
    #[error("model and catalog do not match: {0}")]
    Mismatch(#[source] ModelError),
    #[error("loading model: {0}")]
    LoadModel(#[from] ModelError),
    /// A checkpoint named `hf:ORG/REPO` could not be pulled from the Hub.
    #[error("{0}")]
    Hub(#[from] crate::model::hub::HubError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// An admin request that names something outside what it may touch.
    #[error("{0}")]
    Forbidden(String),
    /// A checkpoint that failed validation; the old model keeps serving.
    #[error("checkpoint refused: {0}")]
    Refused(#[source] BoxError),
    /// An admin request that contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the batching worker has stopped")]
    Stopped,
    #[error("starting the batching worker: {0}")]
    Worker(#[source] std::io::Error),
    /// A batched generation failed (the error is shared by the batch's requests).
    #[error("generation failed: {0}")]
    Batch(#[source] scheduler::SharedError),
    /// A profile request while no intent model or encoder is configured, or
    /// intent inference failed.
    #[error("cold start is not available: {0}")]
    ColdStart(#[source] BoxError),
    /// The replica feed cannot be reached or answered something unexpected.
    #[error("replica feed: {0}")]
    Feed(#[from] crate::feed::FeedError),
    /// This replica is still catching up with the feed and takes no change yet.
    #[error("this replica is still catching up with the replica feed: retry shortly or on another replica")]
    CatchingUp,
    /// The change is in the feed at this position but this replica did not
    /// apply it in time; it will.
    #[error(
        "the change is in the replica feed at {0} but this replica did not apply it in time (it will when it catches up)"
    )]
    NotAppliedYet(crate::feed::Position),
}

impl EngineError {
    /// What kind of failure this is (the server's status comes from it).
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidField { field, .. } => ErrorKind::invalid(field),
            EngineError::Refused(_) => ErrorKind::Invalid { field: None },
            EngineError::NotReady
            | EngineError::Stopped
            | EngineError::ColdStart(_)
            | EngineError::Feed(_)
            | EngineError::CatchingUp
            | EngineError::NotAppliedYet(_) => ErrorKind::Unavailable,
            EngineError::Overloaded => ErrorKind::Overloaded,
            EngineError::Deadline(_) => ErrorKind::Timeout,
            EngineError::Forbidden(_) => ErrorKind::Forbidden,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Hub(h) => h.kind(),
            EngineError::Catalog(c) => c.kind(),
            EngineError::Generate(_)
            | EngineError::Batch(_)
            | EngineError::Worker(_)
            | EngineError::Recall(_)
            | EngineError::Mismatch(_)
            | EngineError::LoadModel(_) => ErrorKind::Internal,
        }
    }

    /// A checkpoint refused for `why` (an error, or a message).
    pub(crate) fn refused(why: impl Into<BoxError>) -> Self {
        EngineError::Refused(why.into())
    }
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
    /// Compact the catalog (write a whole new version) when the edits above
    /// its version on disk, its segments and its log together, pass this
    /// many bytes (0: only on request). A replica's shared folder has no
    /// segments: its log counts.
    pub compact_edit_bytes: u64,
    /// Fold the edit log into a segment when it passes this many bytes (0:
    /// never; see [`crate::catalog::segments`]).
    pub fold_log_bytes: u64,
    /// Weight of the intents' log-prior in soft steering ([`Steering::Soft`]).
    pub steering_weight: f32,
    /// Items the query's embedding contributes to a search's allowed set.
    pub search_candidates: usize,
    /// Weight of the model's log-probability in a personalized search's ranking.
    pub search_model_weight: f32,
    /// The time lifetimes are decided by (the system's; tests set one).
    pub clock: crate::clock::Clock,
    /// Half-life of the engagement counts (`POST /v1/events`).
    pub events_half_life_ms: u64,
    /// Weight of the trending prior when a request does not give one (0: off).
    pub trending_weight: f32,
    /// Share of `k` the trending search takes when a request does not say
    /// (1: the prior is on the whole list; [`explore`]).
    pub trending_share: f32,
    /// How many times the catalog's engagement rate an item needs to take a
    /// trending slot.
    pub trending_min_ratio: f32,
    /// What engagement is divided by before nodes are compared.
    pub trending_exposure: crate::catalog::engagement::Exposure,
    /// How items added since the catalog was indexed are scored at the last level.
    pub new_items: NewItemScoring,
}

/// How generation scores the collision code of an item added after the
/// catalog was indexed (which the model never saw; see
/// [`crate::generate::new_items`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NewItemScoring {
    /// The model's own logit (transformers' `generate` gives the same).
    Model,
    /// The best logit among its trained siblings under the same prefix, when
    /// higher than its own.
    #[default]
    Sibling,
}

/// Default weight of the trending prior: off, since with the default share
/// every trending request runs two searches (see `benches/results/live.md`).
pub const DEFAULT_TRENDING_WEIGHT: f32 = 0.0;
/// Default share of a list the trending search takes: 3 of 10.
pub const DEFAULT_TRENDING_SHARE: f32 = 0.3;
/// Default rate, over the catalog's, that an item needs for a trending slot
/// (`benches/results/live.md`: 4.5x let popular personal picks in and cost
/// the control world 8%; 12x cost it nothing).
pub const DEFAULT_TRENDING_MIN_RATIO: f32 = 12.0;

/// How often a local engine takes expired items out of its trie (requests
/// exclude them from their expiry on, whatever this is).
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// A thread that sweeps expired items until the engine is dropped.
fn start_expiry_sweeper(engine: Weak<Engine>) -> Result<(), EngineError> {
    std::thread::Builder::new()
        .name("genrec-expiry".into())
        .spawn(move || loop {
            std::thread::sleep(SWEEP_EVERY);
            let Some(e) = engine.upgrade() else { return };
            e.sweep_expired();
        })
        .map(|_| ())
        .map_err(EngineError::Worker)
}

/// Default weight of soft steering, chosen on MovieLens-100K validation users
/// (`benches/results/coldstart.md`): the best of 0, 0.1, 0.25, 0.5, 1 with
/// LLM intents; 1 halves NDCG, and hard steering is far below.
pub const DEFAULT_STEERING_WEIGHT: f32 = 0.1;

/// Default size of the edits above a version (its segments and log) that
/// starts a compaction: 1 GiB (about 3M item states in segments, or 1.5M
/// upserts in the log, of 64-d items).
pub const DEFAULT_COMPACT_EDIT_BYTES: u64 = 1 << 30;
/// The default log size that folds the log into a segment: 64 MiB (about
/// 90k upserts of 64-d items).
pub const DEFAULT_FOLD_LOG_BYTES: u64 = 64 << 20;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch: BatchOptions::default(),
            timeout: Duration::from_millis(500),
            model_root: None,
            encoder: None,
            device: candle_core::Device::Cpu,
            dtype: crate::device::DTypeChoice::Auto,
            compact_edit_bytes: DEFAULT_COMPACT_EDIT_BYTES,
            fold_log_bytes: DEFAULT_FOLD_LOG_BYTES,
            steering_weight: DEFAULT_STEERING_WEIGHT,
            search_candidates: search::DEFAULT_SEARCH_CANDIDATES,
            search_model_weight: search::DEFAULT_SEARCH_MODEL_WEIGHT,
            clock: crate::clock::Clock::system(),
            events_half_life_ms: crate::catalog::engagement::DEFAULT_HALF_LIFE_MS,
            trending_weight: DEFAULT_TRENDING_WEIGHT,
            trending_share: DEFAULT_TRENDING_SHARE,
            trending_min_ratio: DEFAULT_TRENDING_MIN_RATIO,
            trending_exposure: Default::default(),
            new_items: NewItemScoring::Sibling,
        }
    }
}

/// The engine: the serving side and the changing side (see the module's
/// comment), and the options both read.
pub struct Engine {
    serving: Serving,
    changes: Changes,
    opts: EngineOptions,
    /// This engine, for background jobs it starts (compaction, the feed thread).
    me: OnceLock<Weak<Engine>>,
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

    /// An engine serving `catalog`, whose edits are made here and go to
    /// `store`'s log when durable (see [`edits::open_store`]).
    pub fn with_store(
        catalog: Catalog,
        store: edits::EditStore,
        opts: EngineOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Arc<Self>, EngineError> {
        Self::start(catalog, store, WritePath::Local, opts, observer)
    }

    /// An engine serving `catalog` as one replica of `replica`'s feed: every
    /// edit and model change goes through the feed. The feed thread starts
    /// with [`Engine::follow_feed`] (after the model given at start is in).
    pub fn replica(
        catalog: Catalog,
        replica: Arc<replica::Replica>,
        opts: EngineOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Arc<Self>, EngineError> {
        Self::start(catalog, edits::EditStore::Memory, WritePath::Replicated(replica), opts, observer)
    }

    fn start(
        catalog: Catalog,
        store: edits::EditStore,
        path: WritePath,
        opts: EngineOptions,
        observer: Arc<dyn BatchObserver>,
    ) -> Result<Arc<Self>, EngineError> {
        let ann = Ann::open(&catalog)?;
        let served = Arc::new(ServedCatalog { catalog, ann: Arc::new(ann) });
        let changes = Changes::new(path, edits::Writer::new(served.clone(), store), &opts)?;
        let scheduler = Scheduler::start(opts.batch.clone(), observer).map_err(EngineError::Worker)?;
        let engine = Arc::new(Engine {
            serving: Serving::new(served, scheduler, opts.clone()),
            changes,
            opts,
            me: OnceLock::new(),
        });
        let _ = engine.me.set(Arc::downgrade(&engine));
        if engine.changes.replica().is_none() {
            start_expiry_sweeper(Arc::downgrade(&engine))?;
        }
        Ok(engine)
    }

    /// This engine, for a background job (none while it is being dropped).
    fn me(&self) -> Option<Arc<Engine>> {
        self.me.get().and_then(Weak::upgrade)
    }

    /// Checks a request ([`RecRequest::validate`]) and serves it (see
    /// [`serving::Serving::recommend`]).
    pub async fn recommend(&self, req: &RecRequest) -> Result<RecAnswer, EngineError> {
        self.serving.recommend(req.validate()?).await
    }

    /// The model in service, if any.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.serving.model()
    }

    /// The catalog in service.
    pub fn catalog(&self) -> Arc<ServedCatalog> {
        self.serving.catalog()
    }

    /// The engine's time, ms since the epoch (lifetimes and event decay).
    pub fn now_ms(&self) -> u64 {
        self.opts.clock.now_ms()
    }

    /// Whether the batching worker runs, and the panics it survived.
    pub fn worker_health(&self) -> scheduler::WorkerHealth {
        self.serving.scheduler.health()
    }

    /// Test hook: the next batched generation panics.
    #[cfg(test)]
    pub(crate) fn inject_generation_panic(&self) {
        self.serving.scheduler.inject_panic();
    }

    /// Sets (or clears) cold-start intent inference; its sentence encoder, if
    /// any, also serves queries and `POST /admin/items` (one copy in memory).
    pub fn set_coldstart(&self, cs: Option<Arc<ColdStart>>) {
        if let Some(enc) = cs.as_ref().and_then(|c| c.encoder()) {
            self.serving.share_encoder(enc);
        }
        self.serving.coldstart.store(cs);
    }

    pub fn coldstart(&self) -> Option<Arc<ColdStart>> {
        self.serving.coldstart.load_full()
    }
}

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod tests;
