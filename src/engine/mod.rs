//! The serving engine: the current model + catalog snapshot behind an atomic
//! pointer, and the request path from external item ids to generated items.
//!
//! A request takes one snapshot at its start and uses it to the end, so a swap
//! of model or catalog never shows it a half-applied change.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::catalog::{Catalog, CatalogError};
use crate::generate::{generate, GenRequest, GenerateError};
use crate::model::{Model, ModelError};

/// Largest `k` a request may ask for.
pub const MAX_K: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is well-formed but cannot be served as asked (HTTP 422).
    #[error("{message}")]
    InvalidField { field: &'static str, message: String },
    /// No model is loaded (HTTP 503).
    #[error("no model is loaded")]
    NotReady,
    #[error("generation failed: {0}")]
    Generate(#[from] GenerateError),
    #[error("model and catalog do not match: {0}")]
    Mismatch(String),
    #[error("loading model: {0}")]
    LoadModel(#[from] ModelError),
    #[error("loading catalog: {0}")]
    LoadCatalog(#[from] CatalogError),
}

/// A model with the catalog it generates over.
pub struct Snapshot {
    pub model: Arc<Model>,
    pub catalog: Arc<Catalog>,
}

impl Snapshot {
    /// Pairs a model with a catalog after checking that they belong together.
    pub fn new(model: Model, catalog: Catalog) -> Result<Self, EngineError> {
        model
            .sidecar
            .validate(model.config.vocab_size, &catalog.manifest)
            .map_err(|e| EngineError::Mismatch(e.to_string()))?;
        Ok(Snapshot { model: Arc::new(model), catalog: Arc::new(catalog) })
    }

    /// Loads a model folder and its catalog: `catalog_dir` when given, else the
    /// folder its `genrec.json` names.
    pub fn load(model_dir: &Path, catalog_dir: Option<&Path>, dev: &candle_core::Device) -> Result<Self, EngineError> {
        let model = Model::load(model_dir, dev)?;
        let dir = catalog_dir
            .map(Path::to_path_buf)
            .or_else(|| model.catalog_dir())
            .ok_or_else(|| EngineError::Mismatch("the model names no catalog: pass --catalog".into()))?;
        let catalog = Catalog::load(&dir)?;
        Self::new(model, catalog)
    }
}

/// One recommendation request, as the HTTP layer hands it over.
#[derive(Debug, Clone)]
pub struct RecRequest {
    pub history: Vec<String>,
    pub k: usize,
    pub exclude_history: bool,
    pub user_id: Option<String>,
}

/// One recommended item.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecItem {
    pub item_id: String,
    pub score: f32,
    pub semantic_id: Vec<u32>,
    pub source: &'static str,
}

/// The answer to a [`RecRequest`].
#[derive(Debug, Clone)]
pub struct RecAnswer {
    pub items: Vec<RecItem>,
    /// `name/version` of the model that answered.
    pub model: String,
    /// History ids that are not in the catalog and were ignored.
    pub ignored_history: Vec<String>,
    /// Tokens decoded for this request.
    pub tokens: usize,
}

/// Engine options.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Beam width (raised to `k` when a request asks for more).
    pub beam: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { beam: 20 }
    }
}

pub struct Engine {
    current: ArcSwapOption<Snapshot>,
    opts: EngineOptions,
}

impl Engine {
    pub fn new(snapshot: Option<Snapshot>, opts: EngineOptions) -> Self {
        Engine { current: ArcSwapOption::new(snapshot.map(Arc::new)), opts }
    }

    /// The snapshot in service, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Replaces the snapshot atomically; requests in flight keep the old one.
    pub fn swap(&self, next: Snapshot) -> Option<Arc<Snapshot>> {
        self.current.swap(Some(Arc::new(next)))
    }

    /// Serves one request (blocking: run it off the async runtime).
    pub fn recommend(&self, req: &RecRequest) -> Result<RecAnswer, EngineError> {
        if req.k == 0 || req.k > MAX_K {
            return Err(EngineError::InvalidField { field: "k", message: format!("k must be between 1 and {MAX_K}") });
        }
        if req.history.is_empty() {
            return Err(EngineError::InvalidField { field: "history", message: "history must not be empty".into() });
        }
        let snap = self.snapshot().ok_or(EngineError::NotReady)?;
        let cat = &snap.catalog;
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
        let exclude: HashSet<u32> = if req.exclude_history { history.iter().copied().collect() } else { HashSet::new() };
        let gen = GenRequest { history, k: req.k, exclude };
        let out = generate(&snap.model, cat, std::slice::from_ref(&gen), self.opts.beam)?;
        let items = out
            .hits
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|h| RecItem {
                item_id: cat.item_ids[h.item as usize].clone(),
                score: h.score,
                semantic_id: cat.sid(h.item).to_vec(),
                source: "generative",
            })
            .collect();
        Ok(RecAnswer { items, model: snap.model.label(), ignored_history: ignored, tokens: out.tokens })
    }
}
