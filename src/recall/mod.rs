//! Classic ANN recall over item embeddings: the fallback that answers when the
//! generative model cannot (no model, past the deadline, too few items left
//! after exclusions, or asked for with `"strategy": "ann"`).
//!
//! [`Ann`] is one of three indexes, chosen once when it opens ([`AnnKind`],
//! `genrec serve --ann`):
//!
//! - **ivf** (the default; [`ivf`]): an inverted file over a two-level
//!   k-means tree of its own ([`quantiser`]), saved with each catalog version
//!   and carried through compactions; live edits join their cell. The number
//!   of cells a query probes comes from a target recall.
//! - **cells** ([`cells`]): the catalog's own semantic IDs as an
//!   inverted file. Nothing is built, saved or added: the trie's depth-2 nodes
//!   are the cells, scored from the residual codebooks, and live edits are in
//!   their cells as soon as the catalog view has them. The number of cells a
//!   query probes comes from a target recall. Catalogs without codebooks
//!   (imported semantic IDs) take the graph.
//! - **graph** ([`hnsw`]): the base's HNSW graph saved with the catalog
//!   version (`ann.usearch`), built with all cores by the indexer and by
//!   compactions and memory-mapped at start; items added or changed since go
//!   to a second, in-memory graph. Keys are item indices in the base graph,
//!   and `generation << 32 | item` in the second (an item changed twice has
//!   two vectors there), so a hit counts only when it is the vector the
//!   request's catalog view holds for that item ([`Catalog::ann_key`]) and the
//!   item is served. Nothing is added to a graph while it is searched:
//!   usearch's concurrent insertion next to searches is not safe (a search
//!   crashed reading a vector that an insert was linking, in this crate's
//!   test), so the overlay graph takes adds under its write lock, a few
//!   hundred at a time, and searches under its read lock.
//!
//! The user vector is a recency-weighted mean of the history's item
//! embeddings.

pub mod cells;
pub mod hnsw;
pub mod ivf;
pub mod quantiser;

use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use rayon::prelude::*;

use crate::catalog::{Catalog, CatalogError};
pub use cells::Cells;
pub use hnsw::{Hnsw, Storage};
pub use ivf::Ivf;

/// The ANN index file inside a catalog version folder.
pub const ANN_FILE: &str = "ann.usearch";

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
/// Room the overlay graph starts with (it doubles when full).
const OVERLAY_CAPACITY: usize = 1 << 14;
/// Vectors added per hold of the overlay graph's write lock (searches wait
/// at most this many inserts, a few ms).
const ADD_CHUNK: usize = 128;
/// Neighbours per node and candidates examined per insert in the overlay
/// graph: it holds the items edited since the last compaction (10^5-10^6),
/// every live upsert pays for its insert, and inserts are serial.
const OVERLAY_CONNECTIVITY: usize = 8;
const OVERLAY_EXPANSION_ADD: usize = 24;

/// Which index answers ANN requests (`genrec serve --ann`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnnKind {
    /// An inverted file over k-means cells of its own, probed for a target
    /// recall.
    Ivf,
    /// The catalog's semantic-ID cells, probed for a target recall.
    Cells,
    /// The HNSW graph saved with the catalog version.
    Graph,
}

/// Why an index is not the kind asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnnFallback {
    /// Cells were asked for, but the catalog has no codebooks for them.
    NoCodebooks,
}

/// The process-wide choice, set once at start: the kind, and the cells'
/// target recall in millionths.
static KIND: AtomicU8 = AtomicU8::new(0);
static TARGET_PPM: AtomicU32 = AtomicU32::new((ivf::DEFAULT_TARGET_RECALL * 1e6) as u32);

/// Chooses the index every [`Ann::open`] opens from now on.
pub fn set_ann(kind: AnnKind, target_recall: f64) {
    KIND.store(kind as u8, Ordering::Relaxed);
    TARGET_PPM.store((target_recall.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
}

fn chosen() -> (AnnKind, f64) {
    let kind = match KIND.load(Ordering::Relaxed) {
        k if k == AnnKind::Graph as u8 => AnnKind::Graph,
        k if k == AnnKind::Cells as u8 => AnnKind::Cells,
        _ => AnnKind::Ivf,
    };
    (kind, TARGET_PPM.load(Ordering::Relaxed) as f64 / 1e6)
}

/// The ANN index of a catalog (see the module comment).
pub struct Ann {
    index: Index,
    fallback: Option<AnnFallback>,
}

enum Index {
    Ivf(Ivf),
    Cells(Cells),
    /// The base version's graph and the graph of the items edited since;
    /// `adding` serialises adders, so that the room check before an add holds.
    Graph {
        base: Hnsw,
        overlay: RwLock<Hnsw>,
        adding: Mutex<()>,
    },
}

impl std::fmt::Debug for Ann {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ann").field("kind", &self.kind()).field("base", &self.base_len()).finish()
    }
}

/// Builds a graph over the items `keep` accepts (all cores), keyed by item
/// index, with `progress(done, total)` as it goes.
pub fn build_graph(
    catalog: &Catalog,
    storage: Storage,
    keep: impl Fn(u32) -> bool + Sync,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<Hnsw, RecallError> {
    let items: Vec<u32> = (0..catalog.len() as u32).filter(|&i| keep(i)).collect();
    let g = Hnsw::new(catalog.manifest().embedding_dim, storage, items.len())?;
    let done = std::sync::atomic::AtomicUsize::new(0);
    items.par_chunks(1024).try_for_each(|chunk| {
        for &i in chunk {
            g.add(i as u64, &catalog.embedding(i))?;
        }
        let d = done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed) + chunk.len();
        progress(d, items.len());
        Ok::<(), RecallError>(())
    })?;
    Ok(g)
}

/// Builds the graph of a catalog version's served items with all cores and
/// saves it as `dir/ann.usearch`, with a progress bar. Returns the graph's
/// self-recall: the share of up to 1,000 evenly spaced items that a search
/// for their own vector finds first (inserts from several threads can leave
/// a node hard to reach, unum-cloud/USearch#735; this says how many).
pub fn build_and_save(view: &Catalog, dir: &Path) -> Result<f64, RecallError> {
    let p = crate::progress::Progress::new("ANN index", view.served_len() as u64);
    let g = build_graph(view, Storage::F16, |i| view.is_served(i), |d, _| p.set(d as u64))?;
    p.finish();
    let probes: Vec<u32> =
        (0..view.len() as u32).filter(|&i| view.is_served(i)).step_by((view.served_len() / 1000).max(1)).collect();
    let found = probes
        .par_iter()
        .filter(|&&i| {
            g.nearest(&view.embedding(i), 1, |_| true).ok().and_then(|h| h.first().map(|x| x.0)) == Some(i as u64)
        })
        .count();
    g.save(&dir.join(ANN_FILE))?;
    Ok(found as f64 / probes.len().max(1) as f64)
}

/// Writes the ANN indexes of a new catalog version holding `view` into
/// `dir`, after the version in folder `prev` (if any): the IVF index always
/// ([`ivf::write_version`]; it keeps `prev`'s quantiser), and the graph when
/// `prev` has one ([`carry_version_graph`]).
pub fn write_version_indexes(view: &Catalog, prev: Option<&Path>, dir: &Path) -> Result<(), RecallError> {
    carry_version_graph(view, prev.map(|p| p.join(ANN_FILE)).as_deref(), dir)?;
    ivf::write_version(view, prev, dir)
}

/// [`write_version_graph`] when the previous version has a graph: a catalog
/// indexed without one (`genrec index` without `--ann-graph`, the default
/// since the cells index needs none) stays without one through its
/// compactions (`serve --ann graph` builds it in memory at open).
pub fn carry_version_graph(view: &Catalog, prev: Option<&Path>, dir: &Path) -> Result<(), RecallError> {
    match prev.filter(|p| p.is_file()) {
        Some(p) => write_version_graph(view, Some(p), dir),
        None => Ok(()),
    }
}

/// Writes the graph of a new catalog version holding `view` into `dir`:
/// the previous version's graph (`prev`, a file) loaded, the overlay's items
/// swapped in under their row keys, saved; or, without one, built anew.
pub fn write_version_graph(view: &Catalog, prev: Option<&Path>, dir: &Path) -> Result<(), RecallError> {
    let out = dir.join(ANN_FILE);
    let graph = match prev.filter(|p| p.is_file()) {
        Some(p) => {
            let mut g = Hnsw::load(p)?;
            let changed: Vec<(u32, bool)> = view.overlay().items().map(|(i, e)| (i, e.served)).collect();
            g.reserve_exclusive(g.len() + changed.len() + 16)?;
            for &(item, _) in &changed {
                if g.contains(item as u64) {
                    g.remove_exclusive(item as u64)?;
                }
            }
            let adds: Vec<u32> = changed.iter().filter(|c| c.1).map(|c| c.0).collect();
            let p = crate::progress::Progress::new("ANN index (edited items)", adds.len() as u64);
            let done = std::sync::atomic::AtomicUsize::new(0);
            adds.par_chunks(1024).try_for_each(|chunk| {
                for &i in chunk {
                    g.add(i as u64, &view.embedding(i))?;
                }
                p.set((done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed) + chunk.len()) as u64);
                Ok::<(), RecallError>(())
            })?;
            p.finish();
            g
        }
        None => build_graph(view, Storage::F16, |i| view.is_served(i), |_, _| {})?,
    };
    graph.save(&out)
}

impl Ann {
    /// The index for a catalog view, of the kind chosen with [`set_ann`]
    /// (cells by default).
    pub fn open(catalog: &Catalog) -> Result<Self, RecallError> {
        let (kind, target) = chosen();
        Self::open_as(catalog, kind, target)
    }

    /// The index of `kind` for a catalog view: the cells probed for
    /// `target` recall@10, or the base version's saved graph (mapped; built
    /// in memory when the version has none) with the items the view's
    /// overlay serves added to the overlay graph. Cells fall back to the
    /// graph for a catalog without codebooks.
    pub fn open_as(catalog: &Catalog, kind: AnnKind, target: f64) -> Result<Self, RecallError> {
        let mut fallback = None;
        if kind == AnnKind::Ivf {
            return Ok(Ann { index: Index::Ivf(Ivf::open(catalog, target)?), fallback: None });
        }
        if kind == AnnKind::Cells {
            match Cells::new(catalog, target) {
                Some(c) => return Ok(Ann { index: Index::Cells(c), fallback: None }),
                None => fallback = Some(AnnFallback::NoCodebooks),
            }
        }
        let saved = catalog.base().source.as_ref().map(|d| d.join(ANN_FILE)).filter(|p| p.is_file());
        let base = match saved {
            Some(p) => Hnsw::view(&p)?,
            None => {
                let b = catalog.base();
                build_graph(catalog, Storage::F32, |i| (i as usize) < b.rows() && !b.is_removed(i), |_, _| {})?
            }
        };
        if base.dim() != catalog.manifest().embedding_dim {
            return Err(RecallError::Dim { got: base.dim(), want: catalog.manifest().embedding_dim });
        }
        let overlay = Hnsw::with_params(
            catalog.manifest().embedding_dim,
            Storage::F16,
            OVERLAY_CAPACITY,
            OVERLAY_CONNECTIVITY,
            OVERLAY_EXPANSION_ADD,
        )?;
        let ann = Ann { index: Index::Graph { base, overlay: RwLock::new(overlay), adding: Mutex::new(()) }, fallback };
        let items: Vec<(u64, Vec<f32>)> = catalog
            .overlay()
            .items()
            .filter_map(|(_, e)| e.item.as_ref().filter(|_| e.served).map(|it| (it.ann_key, it.embedding.clone())))
            .collect();
        ann.add(&items)?;
        Ok(ann)
    }

    /// The kind of index this is.
    pub fn kind(&self) -> AnnKind {
        match self.index {
            Index::Ivf(_) => AnnKind::Ivf,
            Index::Cells(_) => AnnKind::Cells,
            Index::Graph { .. } => AnnKind::Graph,
        }
    }

    /// Why it is not the kind asked for, if it is not.
    pub fn fallback(&self) -> Option<AnnFallback> {
        self.fallback
    }

    /// Cells a query probes (cells only).
    pub fn probes(&self) -> Option<usize> {
        match &self.index {
            Index::Ivf(i) => Some(i.probes()),
            Index::Cells(c) => Some(c.probes()),
            Index::Graph { .. } => None,
        }
    }

    /// Vectors in the base graph (0 for cells: nothing is indexed).
    pub fn base_len(&self) -> usize {
        match &self.index {
            Index::Ivf(i) => i.base_len(),
            Index::Cells(_) => 0,
            Index::Graph { base, .. } => base.len(),
        }
    }

    /// Vectors in the overlay graph (stale ones included; 0 for cells).
    pub fn overlay_len(&self) -> usize {
        match &self.index {
            Index::Ivf(i) => i.added_len(),
            Index::Cells(_) => 0,
            Index::Graph { overlay, .. } => overlay.read().len(),
        }
    }

    /// Bytes of memory the index holds.
    pub fn memory(&self) -> usize {
        match &self.index {
            Index::Ivf(i) => i.memory(),
            Index::Cells(c) => c.memory(),
            Index::Graph { base, overlay, .. } => base.memory() + overlay.read().memory(),
        }
    }

    /// Adds vectors to the overlay graph (keys from [`Catalog::ann_key`]),
    /// [`ADD_CHUNK`] at a time under the graph's write lock (growing it first
    /// when it lacks room), so that no search runs beside an insert. Cells
    /// need nothing: an edited item is in its cell through the catalog view.
    pub fn add(&self, items: &[(u64, Vec<f32>)]) -> Result<(), RecallError> {
        let (overlay, adding) = match &self.index {
            Index::Ivf(i) => return i.add(items),
            Index::Cells(_) => return Ok(()),
            Index::Graph { overlay, adding, .. } => (overlay, adding),
        };
        let _one_adder = adding.lock();
        for chunk in items.chunks(ADD_CHUNK) {
            let mut g = overlay.write();
            if g.len() + chunk.len() > g.capacity() {
                let want = ((g.len() + chunk.len()) * 2).max(OVERLAY_CAPACITY);
                g.reserve_exclusive(want)?;
            }
            for (k, v) in chunk {
                g.add(*k, v)?;
            }
        }
        Ok(())
    }

    /// The user vector of a history (item indices, oldest first): a
    /// recency-weighted mean of the items' embeddings, unit norm.
    pub fn user_vector(catalog: &Catalog, history: &[u32]) -> Vec<f32> {
        let dim = catalog.manifest().embedding_dim;
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

    /// The `k` items nearest to `query` that the view serves (with the vector
    /// it holds for them) and `keep` accepts, best first, with inner products.
    pub fn nearest(
        &self,
        catalog: &Catalog,
        query: &[f32],
        k: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<(u32, f32)>, RecallError> {
        let dim = catalog.manifest().embedding_dim;
        if query.len() != dim {
            return Err(RecallError::Dim { got: query.len(), want: dim });
        }
        let (base, overlay) = match &self.index {
            // (the view's trie holds only served items)
            Index::Ivf(i) => return Ok(i.nearest(catalog, query, k, keep)),
            Index::Cells(c) => return Ok(c.nearest(catalog, query, k, keep)),
            Index::Graph { base, overlay, .. } => (base, overlay),
        };
        let current = |key: u64| {
            let item = key as u32;
            (item as usize) < catalog.len() && catalog.is_served(item) && catalog.ann_key(item) == key && keep(item)
        };
        let mut hits = base.nearest(query, k, current)?;
        let g = overlay.read();
        if !g.is_empty() {
            hits.extend(g.nearest(query, k, current)?);
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
        }
        Ok(hits.into_iter().map(|(key, s)| (key as u32, s)).collect())
    }

    /// [`Ann::search`] for a history, leaving out `exclude`.
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
        for kind in [AnnKind::Graph, AnnKind::Cells, AnnKind::Ivf] {
            finds_and_follows(kind);
        }
    }

    fn finds_and_follows(kind: AnnKind) {
        let mut cat = catalog();
        let ann = Ann::open_as(&cat, kind, 0.95).unwrap();
        assert_eq!(ann.kind(), kind);
        if kind == AnnKind::Graph {
            assert_eq!(ann.base_len(), cat.len());
        }
        let q = cat.embedding(7);
        let hits = ann.nearest(&cat, &q, 5, |_| true).unwrap();
        assert_eq!(hits[0].0, 7);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        let hits = ann.nearest(&cat, &q, 5, |i| i != 7).unwrap();
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|h| h.0 != 7));
        // a removed item is gone for views after the removal, not before
        let before = cat.clone();
        let id = cat.item_id(7).to_string();
        cat.remove(&id, 1).unwrap();
        assert!(ann.nearest(&cat, &q, 5, |_| true).unwrap().iter().all(|h| h.0 != 7));
        assert_eq!(ann.nearest(&before, &q, 1, |_| true).unwrap()[0].0, 7);
        // served again with another vector: found by the new one only
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

    /// Searches from 8 threads while 100k vectors are added (the overlay
    /// graph grows several times meanwhile): no search fails or crashes, and
    /// every added vector is there and found by its own vector afterwards.
    #[test]
    fn concurrent_adds_and_searches() {
        let dim = 8;
        let n = 100_000usize;
        let ann = std::sync::Arc::new(Ann {
            index: Index::Graph {
                base: Hnsw::new(dim, Storage::F32, 16).unwrap(),
                overlay: RwLock::new(Hnsw::new(dim, Storage::F32, 64).unwrap()),
                adding: Mutex::new(()),
            },
            fallback: None,
        });
        fn overlay(ann: &Ann) -> parking_lot::RwLockReadGuard<'_, Hnsw> {
            match &ann.index {
                Index::Graph { overlay, .. } => overlay.read(),
                Index::Ivf(_) | Index::Cells(_) => unreachable!("a graph"),
            }
        }
        let vec_of = move |i: usize| -> Vec<f32> {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
            let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let searchers: Vec<_> = (0..8)
            .map(|t| {
                let (ann, stop) = (ann.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut searches = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let q = vec_of(t * 7919 + searches);
                        let g = overlay(&ann);
                        g.nearest(&q, 10, |_| true).expect("a search never fails");
                        drop(g);
                        searches += 1;
                        // leave the cores to the adder (and to other tests)
                        std::thread::sleep(std::time::Duration::from_micros(300));
                    }
                    searches
                })
            })
            .collect();
        for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let items: Vec<(u64, Vec<f32>)> = chunk.iter().map(|&i| (i as u64, vec_of(i))).collect();
            ann.add(&items).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let searches: usize = searchers.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(searches > 0);
        let g = overlay(&ann);
        assert_eq!(g.len(), n);
        let missing: Vec<usize> = (0..n).filter(|&i| !g.contains(i as u64)).collect();
        assert!(missing.is_empty(), "{} adds missing: {:?}", missing.len(), &missing[..missing.len().min(10)]);
        // found by search, not only present: the nearest to its own vector
        let probes: Vec<usize> = (0..n).step_by(97).collect();
        let found = probes.iter().filter(|&&i| g.nearest(&vec_of(i), 1, |_| true).unwrap()[0].0 == i as u64).count();
        assert_eq!(found, probes.len(), "every probed vector is its own nearest neighbour");
    }

    /// Every file of a compacted catalog version, the ANN graph among them,
    /// is synced before `CURRENT` names the version (the graph was not: a
    /// power loss after a compaction could leave a server that does not
    /// start).
    #[test]
    fn a_compacted_version_is_on_disk_before_current_names_it() {
        use crate::catalog::dir::{self, CURRENT_FILE};
        let dir_path = std::env::temp_dir().join(format!("genrec-synced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir_path);
        crate::catalog::tests::tiny_catalog().save(&dir_path).unwrap();
        let (cat, _, mut wd, _) = dir::open_writable(&dir_path).unwrap();
        let (_, number) = wd.rotate().unwrap();
        let graph = |v: &Catalog, d: &std::path::Path| {
            write_version_graph(v, None, d).map_err(|e| CatalogError::Format(e.to_string()))
        };
        let vdir = wd.commit_version(&cat, number, &graph).unwrap();
        let synced = crate::util::synced::under(&dir_path);
        let current = synced.iter().rposition(|p| p == &dir_path.join(CURRENT_FILE)).expect("CURRENT is synced");
        let version = format!("v-{number:06}");
        let names: Vec<String> =
            std::fs::read_dir(&vdir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n == ANN_FILE), "{names:?}");
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
