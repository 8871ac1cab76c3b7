//! The item catalog: item ids and texts, their embeddings, semantic IDs and the
//! trie over those IDs. A [`Catalog`] is immutable once built; the engine shares
//! it behind an `Arc` and swaps whole snapshots.

pub mod build;
pub mod collab;
pub mod edit;
pub mod embed;
pub mod intents;
pub mod rqkmeans;
pub mod store;
pub mod trie;

use std::collections::HashMap;
use std::path::PathBuf;

pub use rqkmeans::{quantize, Quantized, RqOptions};
pub use intents::Intent;
pub use store::Manifest;
pub use trie::Trie;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("catalog format: {0}")]
    Format(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A live edit that contradicts the catalog (id already served, no free
    /// semantic ID under a prefix).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

impl CatalogError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CatalogError::Io { path: path.into(), source }
    }
}

/// An immutable catalog snapshot.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub manifest: Manifest,
    /// External item ids, by item index.
    pub item_ids: Vec<String>,
    /// Item titles, by item index (for display and intent labels).
    pub titles: Vec<String>,
    /// Flat semantic IDs: `sids[item * levels + l]`.
    pub sids: Vec<u32>,
    /// Flat item embeddings: `embeddings[item * dim + j]` (L2-normalised).
    pub embeddings: Vec<f32>,
    /// `codebooks[l]`: `[codebook_sizes[l] × dim]` for the k-means levels.
    pub codebooks: Vec<Vec<f32>>,
    pub trie: Trie,
    /// Labels of the first-level clusters (cold-start intents).
    pub intents: Vec<Intent>,
    index: HashMap<String, u32>,
    /// `live[i]`: item `i` is served (false once removed by a live edit; its
    /// index stays so that other items keep theirs).
    live: Vec<bool>,
}

impl Catalog {
    /// Assembles a catalog and builds its trie and id index; intent labels
    /// come from the titles (see [`intents`]).
    pub fn new(
        manifest: Manifest,
        item_ids: Vec<String>,
        titles: Vec<String>,
        sids: Vec<u32>,
        embeddings: Vec<f32>,
        codebooks: Vec<Vec<f32>>,
    ) -> Result<Self, CatalogError> {
        Self::with_intents(manifest, item_ids, titles, sids, embeddings, codebooks, None)
    }

    /// [`Catalog::new`] with the intent labels given (from `intents.json` or a
    /// richer text than the titles); `None` derives them from the titles.
    pub fn with_intents(
        manifest: Manifest,
        item_ids: Vec<String>,
        titles: Vec<String>,
        sids: Vec<u32>,
        embeddings: Vec<f32>,
        codebooks: Vec<Vec<f32>>,
        intents: Option<Vec<Intent>>,
    ) -> Result<Self, CatalogError> {
        let n = item_ids.len();
        let levels = manifest.codebook_sizes.len();
        if sids.len() != n * levels || embeddings.len() != n * manifest.embedding_dim || titles.len() != n {
            return Err(CatalogError::Format(format!(
                "{} items but {} codes ({} levels), {} embedding values (dim {}), {} titles",
                n,
                sids.len(),
                levels,
                embeddings.len(),
                manifest.embedding_dim,
                titles.len()
            )));
        }
        let trie = Trie::build(&sids, levels, &manifest.codebook_sizes)?;
        let mut index = HashMap::with_capacity(n);
        for (i, id) in item_ids.iter().enumerate() {
            if index.insert(id.clone(), i as u32).is_some() {
                return Err(CatalogError::Format(format!("duplicate item id {id:?}")));
            }
        }
        let intents = intents.unwrap_or_else(|| intents::derive(&titles, &intents::first_codes(&sids, levels)));
        Ok(Catalog { manifest, item_ids, titles, sids, embeddings, codebooks, trie, intents, index, live: vec![true; n] })
    }

    pub fn len(&self) -> usize {
        self.item_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.item_ids.is_empty()
    }

    /// Whether item `item` is served.
    pub fn is_live(&self, item: u32) -> bool {
        self.live.get(item as usize).copied().unwrap_or(false)
    }

    /// Number of items served.
    pub fn live_len(&self) -> usize {
        self.live.iter().filter(|&&l| l).count()
    }

    /// Number of codes in a semantic ID (k-means levels + collision level).
    pub fn levels(&self) -> usize {
        self.manifest.codebook_sizes.len()
    }

    /// Item index of an external id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// Semantic ID of an item.
    pub fn sid(&self, item: u32) -> &[u32] {
        let l = self.levels();
        &self.sids[item as usize * l..(item as usize + 1) * l]
    }

    /// A vector standing for an intent: its first-level codebook centroid, or
    /// the mean embedding of its items when the catalog has no codebooks.
    pub fn intent_centroid(&self, code: u32) -> Vec<f32> {
        let d = self.manifest.embedding_dim;
        if let Some(row) = self.codebooks.first().and_then(|b| b.get(code as usize * d..(code as usize + 1) * d)) {
            return row.to_vec();
        }
        let mut v = vec![0f32; d];
        for i in (0..self.len() as u32).filter(|&i| self.sid(i)[0] == code) {
            v.iter_mut().zip(self.embedding(i)).for_each(|(a, b)| *a += b);
        }
        v
    }

    pub fn embedding(&self, item: u32) -> &[f32] {
        let d = self.manifest.embedding_dim;
        &self.embeddings[item as usize * d..(item as usize + 1) * d]
    }
}
