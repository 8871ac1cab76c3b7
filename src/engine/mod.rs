//! The serving engine: the model and the live catalog behind atomic pointers,
//! the batching scheduler, per-request deadlines, and the ANN fallback.
//!
//! A request resolves its history against the catalog it took at its start,
//! then either asks the scheduler for a generation (strategy `auto` or
//! `generative`) or answers from ANN recall (`ann`, no model loaded, deadline
//! passed). With `auto`, ANN also fills the list when generation returns fewer
//! than `k` items after exclusions; an item never appears twice in an answer.

pub mod admin;
pub mod scheduler;
pub mod snapshot;
pub mod state;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::catalog::{Catalog, CatalogError};
use crate::generate::{GenRequest, GenerateError};
use crate::model::ModelError;
use crate::recall::{AnnIndex, RecallError};
pub use scheduler::{BatchObserver, BatchOptions};
use scheduler::{Job, Scheduler, SubmitError};
pub use snapshot::Snapshot;
pub use state::{LiveCatalog, LoadedModel, ModelInfo};

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
}

/// How a request wants its items made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Generation, with ANN when it cannot answer in time or in full.
    #[default]
    Auto,
    /// Generation only: errors instead of falling back.
    Generative,
    /// ANN recall only.
    Ann,
}

/// One recommendation request, as the HTTP layer hands it over.
#[derive(Debug, Clone)]
pub struct RecRequest {
    pub history: Vec<String>,
    pub k: usize,
    pub exclude_history: bool,
    pub user_id: Option<String>,
    /// Deadline from arrival (default: the engine's).
    pub timeout_ms: Option<u64>,
    pub strategy: Strategy,
}

/// One recommended item.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecItem {
    pub item_id: String,
    pub score: f32,
    pub semantic_id: Vec<u32>,
    /// `generative` or `ann`.
    pub source: &'static str,
}

/// The answer to a [`RecRequest`].
#[derive(Debug, Clone)]
pub struct RecAnswer {
    pub items: Vec<RecItem>,
    /// `name/version` of the model that answered (absent for pure ANN answers
    /// without a model).
    pub model: Option<String>,
    /// Why ANN recall answered or filled the list, if it did: `requested`,
    /// `no_model`, `deadline`, `fill`, `error`.
    pub fallback: Option<&'static str>,
    /// History ids that are not in the catalog and were ignored.
    pub ignored_history: Vec<String>,
    /// Tokens decoded for this request.
    pub tokens: usize,
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { batch: BatchOptions::default(), timeout: Duration::from_millis(500), model_root: None, encoder: None }
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
    catalog: ArcSwap<LiveCatalog>,
    /// Serialises admin changes (model loads, catalog edits).
    admin_lock: Mutex<()>,
    scheduler: Scheduler,
    opts: EngineOptions,
    encoder: Mutex<Option<Arc<crate::catalog::embed::TextEncoder>>>,
}

impl Engine {
    /// An engine serving `catalog`, with no model until [`Engine::install`].
    pub fn new(catalog: Catalog, opts: EngineOptions, observer: Arc<dyn BatchObserver>) -> Result<Self, EngineError> {
        let ann = AnnIndex::build(&catalog, |i| catalog.is_live(i))?;
        let live = LiveCatalog { catalog, ann: Arc::new(ann) };
        Ok(Engine {
            model: ArcSwapOption::empty(),
            previous: Mutex::new(None),
            catalog: ArcSwap::from_pointee(live),
            admin_lock: Mutex::new(()),
            scheduler: Scheduler::start(opts.batch.clone(), observer).map_err(EngineError::Worker)?,
            opts,
            encoder: Mutex::new(None),
        })
    }

    /// The model in service, if any.
    pub fn model(&self) -> Option<Arc<LoadedModel>> {
        self.model.load_full()
    }

    /// The catalog in service.
    pub fn catalog(&self) -> Arc<LiveCatalog> {
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
        if req.history.is_empty() {
            return Err(EngineError::InvalidField { field: "history", message: "history must not be empty".into() });
        }
        let mut history = Vec::with_capacity(req.history.len());
        let mut ignored = Vec::new();
        for id in &req.history {
            match cat.index_of(id) {
                Some(i) => history.push(i),
                None => ignored.push(id.clone()),
            }
        }
        if history.is_empty() {
            return Err(EngineError::InvalidField {
                field: "history",
                message: format!("none of the {} history item ids is in the catalog", req.history.len()),
            });
        }
        let exclude = if req.exclude_history { history.iter().copied().collect() } else { HashSet::new() };
        Ok(Resolved { history, exclude, ignored })
    }

    /// Serves one request: generation through the batching queue, ANN recall
    /// where the strategy allows it.
    pub async fn recommend(&self, req: &RecRequest) -> Result<RecAnswer, EngineError> {
        let arrived = Instant::now();
        let cat = self.catalog();
        let r = self.resolve(&cat.catalog, req)?;
        let model = self.model();
        let mut answer = RecAnswer {
            items: Vec::new(),
            model: model.as_ref().map(|m| m.label()),
            fallback: None,
            ignored_history: r.ignored.clone(),
            tokens: 0,
        };
        let model = match (req.strategy, model) {
            (Strategy::Ann, _) => return self.fill(answer, &cat, &r, req.k, "requested"),
            (Strategy::Generative, None) => return Err(EngineError::NotReady),
            (Strategy::Auto, None) => return self.fill(answer, &cat, &r, req.k, "no_model"),
            (_, Some(m)) => m,
        };
        let timeout_ms = req.timeout_ms.unwrap_or(self.opts.timeout.as_millis() as u64);
        let deadline = arrived + Duration::from_millis(timeout_ms);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            req: GenRequest { history: r.history.clone(), k: req.k, exclude: r.exclude.clone(), within: Vec::new() },
            model,
            catalog: cat.clone(),
            deadline,
            enqueued: Instant::now(),
            reply: tx,
        };
        match self.scheduler.submit(job) {
            Ok(()) => {}
            Err(SubmitError::Full) => return Err(EngineError::Overloaded),
            Err(SubmitError::Stopped) => return Err(EngineError::Stopped),
        }
        let generated = tokio::time::timeout_at(deadline.into(), rx).await;
        let hits = match generated {
            Ok(Ok(Ok((hits, tokens)))) => {
                answer.tokens = tokens;
                hits
            }
            Ok(Ok(Err(e))) if req.strategy == Strategy::Auto => {
                tracing::warn!(error = %e, "generation failed; answering from ANN recall");
                return self.fill(answer, &cat, &r, req.k, "error");
            }
            Ok(Ok(Err(e))) => return Err(EngineError::Batch(e)),
            Ok(Err(_)) => return Err(EngineError::Stopped),
            Err(_) if req.strategy == Strategy::Auto => return self.fill(answer, &cat, &r, req.k, "deadline"),
            Err(_) => return Err(EngineError::Deadline(timeout_ms)),
        };
        let c = &cat.catalog;
        answer.items = hits
            .into_iter()
            .filter(|h| cat.serves(h.item))
            .map(|h| RecItem {
                item_id: c.item_ids[h.item as usize].clone(),
                score: h.score,
                semantic_id: c.sid(h.item).to_vec(),
                source: "generative",
            })
            .collect();
        if answer.items.len() < req.k && req.strategy == Strategy::Auto {
            return self.fill(answer, &cat, &r, req.k, "fill");
        }
        Ok(answer)
    }

    /// Completes `answer` to `k` items from ANN recall, never repeating an
    /// item already in it or excluded.
    fn fill(
        &self,
        mut answer: RecAnswer,
        cat: &LiveCatalog,
        r: &Resolved,
        k: usize,
        reason: &'static str,
    ) -> Result<RecAnswer, EngineError> {
        let c = &cat.catalog;
        let mut exclude = r.exclude.clone();
        exclude.extend(answer.items.iter().filter_map(|it| c.index_of(&it.item_id)));
        let want = k.saturating_sub(answer.items.len());
        let hits = cat.ann.recall(c, &r.history, want, &exclude, |i| cat.serves(i))?;
        if !hits.is_empty() || reason != "fill" {
            answer.fallback = Some(reason);
        }
        answer.items.extend(hits.into_iter().map(|(item, score)| RecItem {
            item_id: c.item_ids[item as usize].clone(),
            score,
            semantic_id: c.sid(item).to_vec(),
            source: "ann",
        }));
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
