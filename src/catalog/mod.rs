//! The item catalog: item ids and titles, their embeddings, semantic IDs and
//! the trie over those IDs.
//!
//! A [`Catalog`] is a *view*: an immutable [`Base`] (one catalog version,
//! memory-mapped from disk or built in memory) plus an [`Overlay`] of the live
//! edits since that version was written. Cloning a view is O(1) and an edit
//! makes a new view in O(levels), so the engine swaps whole views behind an
//! atomic pointer and a request keeps the one it started with.
//!
//! On disk a catalog folder holds versions and an edit log ([`dir`]); one
//! version's files are described in [`format`].

pub mod array;
pub mod assign;
pub mod base;
pub mod bert;
pub mod build;
pub mod collab;
pub mod dir;
pub mod edit;
pub mod editlog;
pub mod embed;
pub mod engagement;
pub mod expiry;
pub mod format;
pub mod fullness;
pub mod idmap;
pub mod intents;
pub mod legacy;
pub mod overlay;
pub mod rows;
pub mod rqkmeans;
pub mod segment;
pub mod segments;
pub mod shard;
pub mod strings;
pub mod trie;
pub mod trie_patch;

use std::path::PathBuf;
use std::sync::Arc;

pub use base::{Base, Embeddings};
pub use format::{catalog_fingerprint, Manifest};
pub use intents::Intent;
pub use overlay::Overlay;
pub use rqkmeans::{quantize, Quantized, RqOptions};
pub use trie::Trie;
pub use trie_patch::TrieView;

use array::Array;
use idmap::IdMap;
use strings::StringTable;

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
    /// A live edit that contradicts the catalog (a semantic ID taken, no free
    /// semantic ID under a prefix).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The catalog folder is in use by another process.
    #[error("{0}")]
    Busy(String),
}

impl CatalogError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CatalogError::Io { path: path.into(), source }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            CatalogError::Conflict(_) | CatalogError::Busy(_) => ErrorKind::Conflict,
            CatalogError::NotFound(_) => ErrorKind::NotFound,
            CatalogError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            CatalogError::Io { .. }
            | CatalogError::Json { .. }
            | CatalogError::Format(_)
            | CatalogError::Tensor(_)
            | CatalogError::Tokenizer(_) => ErrorKind::Internal,
        }
    }
}

/// A catalog as requests see it: a base version and the live edits above it.
#[derive(Debug, Clone)]
pub struct Catalog {
    base: Arc<Base>,
    delta: Overlay,
}

impl Catalog {
    /// Assembles an in-memory catalog and builds its trie and id index; intent
    /// labels come from the titles (see [`intents`]).
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
        Base::from_vecs(manifest, item_ids, titles, sids, embeddings, codebooks, intents).map(Self::from_base)
    }

    /// A view of a base with no edits above it.
    pub fn from_base(base: Base) -> Self {
        let delta = Overlay::new(&base);
        Catalog { base: Arc::new(base), delta }
    }

    /// The base version under the live edits.
    pub fn base(&self) -> &Arc<Base> {
        &self.base
    }

    /// The live edits above the base.
    pub fn overlay(&self) -> &Overlay {
        &self.delta
    }

    pub fn manifest(&self) -> &Manifest {
        &self.base.manifest
    }

    /// Item indices in use (served or not): the base's rows and the items added since.
    pub fn len(&self) -> usize {
        self.delta.rows() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether item `item` is served.
    pub fn is_served(&self, item: u32) -> bool {
        match self.delta.entry(item) {
            Some(e) => e.served,
            None => (item as usize) < self.base.rows() && !self.base.is_removed(item),
        }
    }

    /// When item `item` stops being served, ms since the epoch (`None`: never).
    pub fn expires_at(&self, item: u32) -> Option<u64> {
        match self.delta.item(item) {
            Some(it) => it.expires_at_ms,
            None if (item as usize) < self.base.rows() => self.base.expiry.get(item),
            None => None,
        }
    }

    /// Whether item `item` may be returned at time `now_ms` (ms since the
    /// epoch): served, and not past its expiry ([`expiry`]).
    pub fn is_live(&self, item: u32, now_ms: u64) -> bool {
        (item as usize) < self.len() && self.is_served(item) && self.expires_at(item).is_none_or(|e| now_ms < e)
    }

    /// Served items expired at `now_ms` that are still in the trie (until the
    /// next edit record takes them out, [`expiry`]).
    pub fn expired_in_trie(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        self.delta.expiring().expired_at(now_ms).map(|e| e.1)
    }

    /// Item indices below this were in the catalog `genrec index` wrote (a
    /// model trained on it knows their semantic IDs); the ones from here on
    /// were added live.
    pub fn trained_rows(&self) -> usize {
        self.base.manifest.indexed_rows.unwrap_or(self.base.rows()).min(self.base.rows())
    }

    /// Number of items served.
    pub fn served_len(&self) -> usize {
        self.delta.served()
    }

    /// Number of codes in a semantic ID (k-means levels + collision level).
    pub fn levels(&self) -> usize {
        self.base.levels()
    }

    /// Item index of an external id (served or not).
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.delta.index_of(id).or_else(|| self.base.idmap.get(id, &self.base.ids))
    }

    /// External id of an item.
    pub fn item_id(&self, item: u32) -> &str {
        match self.delta.item(item) {
            Some(it) => &it.id,
            None => self.base.ids.get(item as usize),
        }
    }

    pub fn title(&self, item: u32) -> &str {
        match self.delta.item(item) {
            Some(it) => &it.title,
            None => self.base.titles.get(item as usize),
        }
    }

    /// Semantic ID of an item.
    pub fn sid(&self, item: u32) -> &[u32] {
        match self.delta.item(item) {
            Some(it) => &it.sid,
            None => self.base.sid(item),
        }
    }

    /// Unit-norm embedding of an item (f32, whatever the stored dtype).
    pub fn embedding(&self, item: u32) -> Vec<f32> {
        match self.delta.item(item) {
            Some(it) => it.embedding.clone(),
            None => {
                let mut v = Vec::new();
                self.base.embeddings.row_into(item as usize, self.base.manifest.embedding_dim, &mut v);
                v
            }
        }
    }

    /// Whether an item was added or changed since the base version (its
    /// embedding and semantic ID are the overlay's).
    pub fn is_edited(&self, item: u32) -> bool {
        self.delta.item(item).is_some()
    }

    /// The inner product of an item's embedding with `q` (the catalog's
    /// dimension), read where it lies.
    pub fn embedding_dot(&self, item: u32, q: &[f32]) -> f32 {
        match self.delta.item(item) {
            Some(it) => base::dot8(&it.embedding, q),
            None => self.base.embeddings.dot(item as usize, q),
        }
    }

    /// Key of the item's current vector in the ANN index (see [`crate::recall`]).
    pub fn ann_key(&self, item: u32) -> u64 {
        self.delta.item(item).map_or(item as u64, |it| it.ann_key)
    }

    /// Whether the item is served with the vector of ANN key `key` (its base
    /// row's is the item's index): one lookup, for ANN indexes that hold
    /// vectors an edit has replaced since.
    pub fn serves_vector(&self, item: u32, key: u64) -> bool {
        match self.delta.entry(item) {
            Some(e) => e.served && e.item.as_ref().map_or(item as u64, |it| it.ann_key) == key,
            None => key == item as u64 && (item as usize) < self.base.rows() && !self.base.is_removed(item),
        }
    }

    /// The k-means codebooks (empty for imported semantic IDs).
    pub fn codebooks(&self) -> &[Vec<f32>] {
        &self.base.codebooks
    }

    /// Labels of the first-level clusters (cold-start intents).
    pub fn intents(&self) -> &[Intent] {
        &self.base.intents
    }

    /// Replaces the intent labels (tests; the catalog must not be shared yet).
    pub fn set_intents(&mut self, intents: Vec<Intent>) -> Result<(), CatalogError> {
        Arc::get_mut(&mut self.base)
            .map(|b| b.intents = intents)
            .ok_or_else(|| CatalogError::Busy("the catalog is shared: intents can only be set before".into()))
    }

    /// Replaces the base trie (tests and `gpu-check` of other dense depths;
    /// the catalog must not be shared yet).
    pub(crate) fn replace_trie(&mut self, trie: Trie) {
        if let Some(b) = Arc::get_mut(&mut self.base) {
            b.trie = trie;
        }
    }

    /// The trie of the served items: the base's, with the live edits' patch.
    pub fn trie(&self) -> TrieView<'_> {
        TrieView::new(&self.base.trie, Some(self.delta.trie()))
    }

    /// Id of the last edit this view contains.
    pub fn last_edit_id(&self) -> u64 {
        self.delta.last_edit().max(self.base.manifest.last_edit_id)
    }

    /// A vector standing for an intent: its first-level codebook centroid, or
    /// the mean embedding of its items when the catalog has no codebooks.
    pub fn intent_centroid(&self, code: u32) -> Vec<f32> {
        let d = self.manifest().embedding_dim;
        if let Some(row) = self.codebooks().first().and_then(|b| b.get(code as usize * d..(code as usize + 1) * d)) {
            return row.to_vec();
        }
        let mut v = vec![0f32; d];
        for i in (0..self.len() as u32).filter(|&i| self.is_served(i) && self.sid(i)[0] == code) {
            v.iter_mut().zip(self.embedding(i)).for_each(|(a, b)| *a += b);
        }
        v
    }
}

impl Base {
    /// An in-memory base; builds the trie and the id map. Intent labels come
    /// from the titles when not given.
    pub fn from_vecs(
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
        let ids = StringTable::from_strings(&item_ids);
        let idmap = IdMap::build(&ids).map_err(|d| {
            CatalogError::Format(format!(
                "duplicate item id {:?} (rows {} and {})",
                item_ids[d.first], d.first, d.second
            ))
        })?;
        let intents = intents.unwrap_or_else(|| intents::derive(&titles, &intents::first_codes(&sids, levels)));
        let has_codebooks = !codebooks.is_empty();
        let base = Base {
            manifest: Manifest { num_items: n, has_codebooks, ..manifest },
            ids,
            titles: StringTable::from_strings(&titles),
            sids: Array::owned(sids),
            embeddings: Embeddings::F32(Array::owned(embeddings)),
            codebooks,
            trie,
            idmap,
            intents,
            removed: Array::default(),
            expiry: Default::default(),
            source: None,
        };
        base.check()?;
        Ok(base)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny_catalog() -> Catalog {
        let dim = 3;
        let emb: Vec<f32> = (0..30).map(|i| ((i * 7 % 11) as f32).sin()).collect();
        let q = quantize(
            &emb,
            dim,
            &RqOptions { levels: 2, codebook_size: 3, iterations: 5, seed: 1, ..Default::default() },
        )
        .unwrap();
        let ids: Vec<String> = (0..10).map(|i| format!("item-{i}")).collect();
        let manifest =
            Manifest::new("tiny", 10, q.codebook_sizes.clone(), dim, "test", 1, catalog_fingerprint(&ids, &q.sids));
        let titles = (0..10).map(|i| format!("title {i}")).collect();
        Catalog::new(manifest, ids, titles, q.sids, emb, q.codebooks).unwrap()
    }
}
