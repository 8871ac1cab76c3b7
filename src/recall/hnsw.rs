//! One HNSW graph (Malkov & Yashunin, arXiv 1603.09320) from the `usearch`
//! crate, inner-product metric over unit-norm vectors, made safe to share:
//!
//! - usearch serves as many concurrent calls as it has per-thread contexts
//!   (reserved up front) and fails the rest ("Reserve capacity ahead of
//!   searches!"), so every call here first takes one of [`THREADS`] permits;
//! - `reserve` (growing the graph) must never run while another call does:
//!   callers that add hold the owner's lock exclusively for it (see
//!   [`super::Ann`]); this type only adds within the capacity it has.

use parking_lot::{Condvar, Mutex};
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::RecallError;

/// Per-thread contexts reserved in every index, and the most concurrent calls.
pub const THREADS: usize = 64;
/// Candidates examined per insert (usearch's default is 128): half the build
/// time of a 10^7-item graph, for recall that an ANN fallback does not miss.
const EXPANSION_ADD: usize = 64;
/// Candidates examined per search (usearch's default is 64); searches are
/// the rare fallback path, and a wider one makes up for the narrower build.
const EXPANSION_SEARCH: usize = 128;

fn err(e: impl std::fmt::Display) -> RecallError {
    RecallError::Index(e.to_string())
}

/// A counting semaphore (std has none).
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Self {
        Permits { free: Mutex::new(n), cv: Condvar::new() }
    }

    fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.cv.wait(&mut free);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

/// How vectors are stored in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// Half the memory; inner products within ~1e-3 of f32.
    F16,
}

/// An HNSW index with bounded concurrency.
pub struct Hnsw {
    index: Index,
    dim: usize,
    permits: Permits,
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw").field("dim", &self.dim).field("size", &self.index.size()).finish()
    }
}

impl Hnsw {
    /// An empty index with room for `capacity` vectors.
    pub fn new(dim: usize, storage: Storage, capacity: usize) -> Result<Self, RecallError> {
        Self::with_params(dim, storage, capacity, 0, EXPANSION_ADD)
    }

    /// [`Hnsw::new`] with `connectivity` neighbours per node (0: usearch's
    /// default, 16) and `expansion_add` candidates examined per insert.
    pub fn with_params(
        dim: usize,
        storage: Storage,
        capacity: usize,
        connectivity: usize,
        expansion_add: usize,
    ) -> Result<Self, RecallError> {
        let opts = IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: match storage {
                Storage::F32 => ScalarKind::F32,
                Storage::F16 => ScalarKind::F16,
            },
            connectivity,
            expansion_add,
            expansion_search: EXPANSION_SEARCH,
            ..Default::default()
        };
        let index = Index::new(&opts).map_err(err)?;
        index.reserve_capacity_and_threads(capacity.max(16), THREADS).map_err(err)?;
        Ok(Hnsw { index, dim, permits: Permits::new(THREADS) })
    }

    /// Maps a saved index read-only (nothing read until searched).
    pub fn view(path: &Path) -> Result<Self, RecallError> {
        let p = path.to_string_lossy();
        let index = Index::restore_view(&p).map_err(|e| RecallError::Index(format!("{p}: {e}")))?;
        Self::opened(index)
    }

    /// Loads a saved index into memory (it can then grow).
    pub fn load(path: &Path) -> Result<Self, RecallError> {
        let p = path.to_string_lossy();
        let index = Index::restore(&p).map_err(|e| RecallError::Index(format!("{p}: {e}")))?;
        Self::opened(index)
    }

    fn opened(index: Index) -> Result<Self, RecallError> {
        // contexts for THREADS callers (the file does not record them); no
        // other call can run yet
        index.reserve_capacity_and_threads(index.capacity().max(index.size()), THREADS).map_err(err)?;
        index.change_expansion_search(EXPANSION_SEARCH);
        let dim = index.dimensions();
        Ok(Hnsw { index, dim, permits: Permits::new(THREADS) })
    }

    /// Saves the graph to `path` and syncs the file: a catalog version is
    /// switched to only once everything in it is on disk (a power loss
    /// after a compaction left an unsynced graph and a server that did not
    /// start).
    pub fn save(&self, path: &Path) -> Result<(), RecallError> {
        let _p = self.permits.take();
        self.index.save(&path.to_string_lossy()).map_err(err)?;
        std::fs::File::open(path)
            .and_then(|f| crate::util::sync_file(&f, path))
            .map_err(|e| RecallError::Index(format!("syncing {}: {e}", path.display())))
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// Bytes of memory the index holds (a viewed index: little).
    pub fn memory(&self) -> usize {
        self.index.memory_usage()
    }

    /// Grows the capacity. The caller must make sure no other call on this
    /// index runs (exclusive access).
    pub fn reserve_exclusive(&mut self, capacity: usize) -> Result<(), RecallError> {
        self.index.reserve_capacity_and_threads(capacity, THREADS).map_err(err)
    }

    /// Adds one vector under `key`, within the current capacity.
    pub fn add(&self, key: u64, v: &[f32]) -> Result<(), RecallError> {
        if v.len() != self.dim {
            return Err(RecallError::Dim { got: v.len(), want: self.dim });
        }
        if self.index.size() >= self.index.capacity() {
            return Err(RecallError::Index("the index is full: reserve before adding".into()));
        }
        let _p = self.permits.take();
        self.index.add(key, v).map_err(err)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.index.contains(key)
    }

    /// Removes a key (exclusive access, as for reserving).
    pub fn remove_exclusive(&mut self, key: u64) -> Result<(), RecallError> {
        self.index.remove(key).map(|_| ()).map_err(err)
    }

    /// The `k` keys nearest to `query` that `keep` accepts, best first, with
    /// inner products.
    pub fn nearest(&self, query: &[f32], k: usize, keep: impl Fn(u64) -> bool) -> Result<Vec<(u64, f32)>, RecallError> {
        if query.len() != self.dim {
            return Err(RecallError::Dim { got: query.len(), want: self.dim });
        }
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let _p = self.permits.take();
        let found = self.index.filtered_search(query, k, keep).map_err(err)?;
        Ok(found.keys.iter().zip(&found.distances).map(|(&key, &d)| (key, 1.0 - d)).collect())
    }
}
