//! What the engine serves, each behind its own atomic pointer: the loaded model
//! (with where and when it came from) and the served catalog (a catalog view:
//! items, trie, and the ANN index that goes with it). A request takes both
//! pointers once at its start and keeps them to its end, so a swap never
//! shows it a half-applied change.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::model::Ensemble;
use crate::recall::Ann;

/// A model in (or recently in) service.
pub struct LoadedModel {
    /// One model, or several searched together.
    pub model: Ensemble,
    /// Folder it was loaded from, or "embedded".
    pub source: String,
    pub loaded_at: SystemTime,
}

/// How `GET /admin/models` shows a model.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub source: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: f64,
    /// Models searched together (1: a single model).
    pub members: usize,
}

impl LoadedModel {
    pub fn new(model: Ensemble, source: String) -> Self {
        LoadedModel { model, source, loaded_at: SystemTime::now() }
    }

    pub fn label(&self) -> String {
        self.model.label()
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.sidecar().name.clone(),
            version: self.model.fingerprint().to_string(),
            source: self.source.clone(),
            loaded_at: self.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            members: self.model.len(),
        }
    }
}

/// A catalog view in service with its ANN index. The index is shared by the
/// views over one base version and holds vectors a given view does not serve:
/// [`Ann::search`] checks every hit against the view.
pub struct ServedCatalog {
    pub catalog: Catalog,
    pub ann: Arc<Ann>,
}

impl ServedCatalog {
    /// Whether this catalog serves item `item`.
    pub fn serves(&self, item: u32) -> bool {
        (item as usize) < self.catalog.len() && self.catalog.is_served(item)
    }
}
