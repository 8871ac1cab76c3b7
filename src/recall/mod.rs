//! Classic ANN recall over item embeddings: the fallback that answers when the
//! generative model cannot (no model, past the deadline, too few items left
//! after exclusions, or asked for with `"strategy": "ann"`), and the
//! candidates of search and exploration.
//!
//! [`Ann`] is the IVF index of a catalog version ([`ivf`]): an inverted file
//! over a two-level k-means tree of its own ([`quantiser`]), written with
//! each version (`genrec index`, compactions) and mapped at open; live edits
//! join their cell ([`Ann::add`]). The number of cells a query probes comes
//! from a target recall (`genrec serve --ann-recall`). It replaced two
//! indexes, measured against it in `benches/results/ann.md`: an HNSW graph
//! (recall 0.58 at 10^7, 30 minutes to build) and the trie's semantic-ID
//! cells (capacity-bounded codes, 4x slower for the same recall at 10^7).
//!
//! The user vector is a recency-weighted mean of the history's item
//! embeddings.

mod calibration;
pub mod cell_rows;
pub mod ivf;
pub mod quantiser;
mod top_k;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::catalog::{Catalog, CatalogError};
pub use ivf::Ivf;

#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("ANN index: {0}")]
    Index(String),
    #[error("embedding has {got} dimensions, the index {want}")]
    Dim { got: usize, want: usize },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
}

/// Weight of the newest history item relative to the one before it.
const RECENCY_DECAY: f32 = 0.8;

/// The process-wide target recall in millionths, set once at start.
static TARGET_PPM: AtomicU32 = AtomicU32::new((ivf::DEFAULT_TARGET_RECALL * 1e6) as u32);

/// Sets the recall@10 every [`Ann::open`] probes enough cells for from now on
/// (`genrec serve --ann-recall`).
pub fn set_target_recall(target: f64) {
    TARGET_PPM.store((target.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
}

fn target_recall() -> f64 {
    TARGET_PPM.load(Ordering::Relaxed) as f64 / 1e6
}

/// Writes the ANN index of a new catalog version holding `view` into `dir`,
/// after the version in folder `prev` (if any), whose quantiser it keeps
/// ([`ivf::write_version`]).
pub fn write_version_index(view: &Catalog, prev: Option<&Path>, dir: &Path) -> Result<(), RecallError> {
    ivf::write_version(view, prev, dir)
}

/// The recency-weighted mean of `rows` (oldest first; the newest weighs
/// 1, the one before [`RECENCY_DECAY`], ...), unit norm.
fn recency_mean(dim: usize, rows: impl DoubleEndedIterator<Item = Vec<f32>>) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    let mut w = 1.0f32;
    for row in rows.rev() {
        for (a, b) in v.iter_mut().zip(row) {
            *a += w * b;
        }
        w *= RECENCY_DECAY;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The ANN index of a catalog version (see the module comment).
#[derive(Debug)]
pub struct Ann {
    ivf: Ivf,
}

impl Ann {
    /// The index of `catalog`'s version with the vectors its overlay holds,
    /// probing for the process's target recall.
    pub fn open(catalog: &Catalog) -> Result<Self, RecallError> {
        Self::open_for(catalog, target_recall())
    }

    /// [`open`](Self::open) for a given target recall@10.
    pub fn open_for(catalog: &Catalog, target: f64) -> Result<Self, RecallError> {
        Ok(Ann { ivf: Ivf::open(catalog, target)? })
    }

    /// The index itself.
    pub fn ivf(&self) -> &Ivf {
        &self.ivf
    }

    /// Cells a query probes.
    pub fn probes(&self) -> usize {
        self.ivf.probes()
    }

    /// Items in the version's lists.
    pub fn base_len(&self) -> usize {
        self.ivf.base_len()
    }

    /// Vectors added since the version was written.
    pub fn added_len(&self) -> usize {
        self.ivf.added_len()
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.ivf.memory()
    }

    /// Adds the vectors of edited items (`(ann_key, embedding)`, see
    /// [`Catalog::ann_key`]); a hit counts only while the request's view
    /// holds that vector for the item, so replaced ones need no removal.
    pub fn add(&self, items: &[(u64, Vec<f32>)]) -> Result<(), RecallError> {
        self.ivf.add(items)
    }

    /// The recency-weighted mean of the history's embeddings, unit norm.
    pub fn user_vector(catalog: &Catalog, history: &[u32]) -> Vec<f32> {
        recency_mean(catalog.manifest().embedding_dim, history.iter().map(|&i| catalog.embedding(i)))
    }

    /// The `k` served items nearest to `query` that `keep` accepts, best
    /// first, with inner products.
    pub fn nearest(
        &self,
        catalog: &Catalog,
        query: &[f32],
        k: usize,
        keep: impl Fn(u32) -> bool + Sync,
    ) -> Result<Vec<(u32, f32)>, RecallError> {
        let dim = catalog.manifest().embedding_dim;
        if query.len() != dim {
            return Err(RecallError::Dim { got: query.len(), want: dim });
        }
        Ok(self.ivf.nearest(catalog, query, k, keep))
    }

    /// The `k` items nearest to a user of `history`, none of `exclude`.
    pub fn recall(
        &self,
        catalog: &Catalog,
        history: &[u32],
        k: usize,
        exclude: &HashSet<u32>,
    ) -> Result<Vec<(u32, f32)>, RecallError> {
        let q = Self::user_vector(catalog, history);
        self.nearest(catalog, &q, k, |i| !exclude.contains(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::edit::NewItem;

    fn catalog() -> Catalog {
        crate::model::demo::load(&candle_core::Device::Cpu).expect("embedded model").1
    }

    #[test]
    fn finds_an_item_by_its_own_embedding_and_follows_edits() {
        let mut cat = catalog();
        let ann = Ann::open_for(&cat, 0.95).unwrap();
        assert_eq!(ann.base_len(), cat.len());
        let q = cat.embedding(7);
        let hits = ann.nearest(&cat, &q, 5, |_| true).unwrap();
        assert_eq!(hits[0].0, 7);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        let hits = ann.nearest(&cat, &q, 5, |i| i != 7).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.0 != 7));
        let before = cat.clone();
        let id = cat.item_id(7).to_string();
        cat.remove(&id, 1).unwrap();
        assert!(ann.nearest(&cat, &q, 5, |_| true).unwrap().iter().all(|h| h.0 != 7));
        assert_eq!(ann.nearest(&before, &q, 1, |_| true).unwrap()[0].0, 7);
        let other = cat.embedding(100);
        let up = cat
            .upsert(
                NewItem {
                    id: id.clone(),
                    title: "x".into(),
                    embedding: other.clone(),
                    semantic_id: None,
                    expires_at_ms: None,
                },
                2,
            )
            .unwrap();
        ann.add(&[(up.ann_key, up.embedding.clone())]).unwrap();
        let hits = ann.nearest(&cat, &other, 2, |_| true).unwrap();
        assert!(hits.iter().any(|h| h.0 == 7), "{hits:?}");
        assert!(ann.nearest(&cat, &q, 3, |_| true).unwrap().iter().all(|h| h.0 != 7 || h.1 < 0.99));
        assert!(matches!(ann.nearest(&cat, &[0.0; 3], 1, |_| true), Err(RecallError::Dim { .. })));
    }

    #[test]
    fn user_vector_leans_to_recent_items() {
        let cat = catalog();
        let v = Ann::user_vector(&cat, &[3, 9]);
        let dot = |i: u32| cat.embedding(i).iter().zip(&v).map(|(a, b)| a * b).sum::<f32>();
        assert!(dot(9) > dot(3));
        let ann = Ann::open(&cat).unwrap();
        let ex: HashSet<u32> = [3, 9].into();
        let hits = ann.recall(&cat, &[3, 9], 10, &ex).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| !ex.contains(&h.0)));
    }

    #[test]
    fn a_compacted_version_is_on_disk_before_current_names_it() {
        use crate::catalog::dir::{self, CURRENT_FILE};
        let dir_path = std::env::temp_dir().join(format!("genrec-synced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir_path);
        crate::catalog::tests::tiny_catalog().save(&dir_path).unwrap();
        let (cat, _, mut wd, _) = dir::open_writable(&dir_path).unwrap();
        let (_, number) = wd.rotate().unwrap();
        let index = |v: &Catalog, d: &std::path::Path| {
            write_version_index(v, None, d).map_err(|e| CatalogError::Format(e.to_string()))
        };
        let vdir = wd.commit_version(&cat, number, &index).unwrap();
        let synced = crate::util::synced::under(&dir_path);
        let current = synced.iter().rposition(|p| p == &dir_path.join(CURRENT_FILE)).expect("CURRENT is synced");
        let version = format!("v-{number:06}");
        let names: Vec<String> =
            std::fs::read_dir(&vdir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n == ivf::IVF_MANIFEST), "{names:?}");
        assert!(names.iter().any(|n| n == ivf::ROWS_FILE), "{names:?}");
        for name in names {
            let before = synced[..current].iter().any(|p| {
                p.file_name().is_some_and(|f| f.to_string_lossy() == name)
                    && p.parent().and_then(|d| d.file_name()).is_some_and(|d| d.to_string_lossy().starts_with(&version))
            });
            assert!(before, "{name} of {version} was not synced before CURRENT named it");
        }
        drop(wd);
        std::fs::remove_dir_all(&dir_path).unwrap();
    }
}
