//! Classic ANN recall over item embeddings: the fallback that answers when the
//! generative model cannot (no model, past the deadline, too few items left
//! after exclusions, or asked for with `"strategy": "ann"`).
//!
//! The index is an HNSW graph (Malkov & Yashunin, arXiv 1603.09320) from the
//! `usearch` crate, inner-product metric over the catalog's unit-norm
//! embeddings, keyed by item index. The user vector is a recency-weighted mean
//! of the history's item embeddings. The index may hold items that the current
//! catalog snapshot no longer serves (removed, or added but not yet swapped
//! in): callers filter hits through the snapshot, which keeps the trie and
//! the index consistent as seen by any one request.

use std::collections::HashSet;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::catalog::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("ANN index: {0}")]
    Index(String),
    #[error("embedding has {got} dimensions, the index {want}")]
    Dim { got: usize, want: usize },
}

fn index_err(e: impl std::fmt::Display) -> RecallError {
    RecallError::Index(e.to_string())
}

/// Weight of the newest history item relative to the one before it.
const RECENCY_DECAY: f32 = 0.8;

/// An ANN index over item embeddings.
pub struct AnnIndex {
    index: Index,
    dim: usize,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex").field("dim", &self.dim).field("size", &self.index.size()).finish()
    }
}

impl AnnIndex {
    /// Indexes every item of the catalog that `live` accepts.
    pub fn build(catalog: &Catalog, live: impl Fn(u32) -> bool) -> Result<Self, RecallError> {
        let dim = catalog.manifest.embedding_dim;
        let opts = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: ScalarKind::F32,
            ..Default::default()
        };
        let index = Index::new(&opts).map_err(index_err)?;
        index.reserve(catalog.len().max(16)).map_err(index_err)?;
        let ann = AnnIndex { index, dim };
        for i in 0..catalog.len() as u32 {
            if live(i) {
                ann.add(i, catalog.embedding(i))?;
            }
        }
        Ok(ann)
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds (or replaces) one item.
    pub fn add(&self, item: u32, embedding: &[f32]) -> Result<(), RecallError> {
        if embedding.len() != self.dim {
            return Err(RecallError::Dim { got: embedding.len(), want: self.dim });
        }
        if self.index.contains(item as u64) {
            self.index.remove(item as u64).map_err(index_err)?;
        }
        if self.index.size() + 1 >= self.index.capacity() {
            self.index.reserve((self.index.capacity() * 2).max(16)).map_err(index_err)?;
        }
        self.index.add(item as u64, embedding).map_err(index_err)
    }

    /// Removes one item (no error when absent).
    pub fn remove(&self, item: u32) -> Result<(), RecallError> {
        self.index.remove(item as u64).map(|_| ()).map_err(index_err)
    }

    /// The user vector of a history (item indices, oldest first): a
    /// recency-weighted mean of the items' embeddings, unit norm.
    pub fn user_vector(catalog: &Catalog, history: &[u32]) -> Vec<f32> {
        let dim = catalog.manifest.embedding_dim;
        let mut v = vec![0f32; dim];
        let mut w = 1.0f32;
        for &item in history.iter().rev() {
            for (a, b) in v.iter_mut().zip(catalog.embedding(item)) {
                *a += w * b;
            }
            w *= RECENCY_DECAY;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// The `k` items nearest to `query` that `keep` accepts, best first, with
    /// their inner products.
    pub fn search(&self, query: &[f32], k: usize, keep: impl Fn(u32) -> bool) -> Result<Vec<(u32, f32)>, RecallError> {
        if query.len() != self.dim {
            return Err(RecallError::Dim { got: query.len(), want: self.dim });
        }
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.index.filtered_search(query, k, |key: u64| keep(key as u32)).map_err(index_err)?;
        Ok(found.keys.iter().zip(&found.distances).map(|(&key, &d)| (key as u32, 1.0 - d)).collect())
    }

    /// [`AnnIndex::search`] for a history, leaving out `exclude`.
    pub fn recall(
        &self,
        catalog: &Catalog,
        history: &[u32],
        k: usize,
        exclude: &HashSet<u32>,
        live: impl Fn(u32) -> bool,
    ) -> Result<Vec<(u32, f32)>, RecallError> {
        let q = Self::user_vector(catalog, history);
        self.search(&q, k, |i| live(i) && !exclude.contains(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        crate::server::default_model::load(&candle_core::Device::Cpu).expect("embedded model").1
    }

    #[test]
    fn finds_an_item_by_its_own_embedding_and_honours_filters() {
        let cat = catalog();
        let ann = AnnIndex::build(&cat, |_| true).unwrap();
        assert_eq!(ann.len(), cat.len());
        let q = cat.embedding(7).to_vec();
        let hits = ann.search(&q, 5, |_| true).unwrap();
        assert_eq!(hits[0].0, 7);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        let hits = ann.search(&q, 5, |i| i != 7).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.0 != 7));
        ann.remove(7).unwrap();
        assert!(ann.search(&q, 5, |_| true).unwrap().iter().all(|h| h.0 != 7));
        ann.add(7, &q).unwrap();
        assert_eq!(ann.search(&q, 1, |_| true).unwrap()[0].0, 7);
        assert!(matches!(ann.add(1, &[0.0; 3]), Err(RecallError::Dim { .. })));
    }

    #[test]
    fn user_vector_leans_to_recent_items() {
        let cat = catalog();
        let v = AnnIndex::user_vector(&cat, &[3, 9]);
        let dot = |i: u32| cat.embedding(i).iter().zip(&v).map(|(a, b)| a * b).sum::<f32>();
        assert!(dot(9) > dot(3));
        let ann = AnnIndex::build(&cat, |_| true).unwrap();
        let ex: HashSet<u32> = [3, 9].into();
        let hits = ann.recall(&cat, &[3, 9], 10, &ex, |_| true).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| !ex.contains(&h.0)));
    }
}
