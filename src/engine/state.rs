//! What the engine serves, each behind its own atomic pointer: the loaded model
//! (with where and when it came from) and the live catalog (items, trie, ANN
//! index). A request takes both pointers once at its start and keeps them to
//! its end, so a swap never shows it a half-applied change.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::catalog::Catalog;
use crate::model::Model;
use crate::recall::AnnIndex;

/// A model in (or recently in) service.
pub struct LoadedModel {
    pub model: Model,
    /// Folder it was loaded from, or "embedded".
    pub source: String,
    pub loaded_at: SystemTime,
}

/// How `GET /admin/models` shows a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub source: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: f64,
}

impl LoadedModel {
    pub fn new(model: Model, source: String) -> Self {
        LoadedModel { model, source, loaded_at: SystemTime::now() }
    }

    pub fn label(&self) -> String {
        self.model.label()
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.sidecar.name.clone(),
            version: self.model.version.clone(),
            source: self.source.clone(),
            loaded_at: self.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        }
    }
}

/// The catalog in service with its ANN index. The index is shared by
/// successive catalogs and may hold items a given catalog does not serve:
/// every hit is checked with [`LiveCatalog::serves`].
pub struct LiveCatalog {
    pub catalog: Catalog,
    pub ann: Arc<AnnIndex>,
}

impl LiveCatalog {
    /// Whether this catalog serves item `item`.
    pub fn serves(&self, item: u32) -> bool {
        (item as usize) < self.catalog.len() && self.catalog.is_live(item)
    }
}
