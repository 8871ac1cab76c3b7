//! ANN recall from an inverted file of the catalog's embeddings (IVF,
//! Jégou et al., "Product quantization for nearest neighbor search", 2011,
//! here with exact scores): a coarse quantiser of its own
//! ([`super::quantiser`], about `8 √n` cells) sorts the served items into
//! cells; a query ranks every cell by its centroid, takes the best
//! `probes` and ranks their items exactly by their embeddings.
//!
//! A version folder holds the index (written by `genrec index` and by every
//! compaction; [`write_version`]):
//!
//! | file | what |
//! |---|---|
//! | `ivf.top.f32`, `ivf.top_cells.u32`, `ivf.centroids.f32` | the quantiser |
//! | `ivf.offsets.u32` | cell `c` holds positions `offsets[c]..offsets[c + 1]` |
//! | `ivf.items.u32` | the item at each position |
//! | `embeddings.ivf.f16` | the item's embedding at each position, so a cell is one run of rows |
//! | `ivf.json` | sizes and the calibration curve; written last |
//!
//! A compaction keeps the quantiser and moves only the items edited since
//! (`genrec index` learns a new one). A version without the files (older
//! ones, catalogs made in memory) gets the index built at open.
//!
//! Live edits: [`Ivf::add`] puts a new vector's key in its cell's list of
//! added keys (one tree descent). A query counts a position or an added key
//! only when it is the vector the request's catalog view holds for that item
//! and the item is served ([`Catalog::serves_vector`]), so an item edited
//! since the base is scored once, by its current vector.
//!
//! `probes` comes from a target recall, read at open off the calibration
//! curve written with the version ([`super::calibration`]).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::calibration::{calibrate, probes_for};
use super::quantiser::Quantiser;
use super::top_k::TopK;
use super::{cell_rows, RecallError};
use crate::catalog::array::{write_array, Array};
use crate::catalog::base::Embeddings;
use crate::catalog::{format, Catalog, CatalogError};

/// The index's manifest in a version folder; the other files are named in it.
pub const IVF_MANIFEST: &str = "ivf.json";
const TOP_FILE: &str = "ivf.top.f32";
const TOP_CELLS_FILE: &str = "ivf.top_cells.u32";
const CENTROIDS_FILE: &str = "ivf.centroids.f32";
const OFFSETS_FILE: &str = "ivf.offsets.u32";
const ITEMS_FILE: &str = "ivf.items.u32";
/// The embeddings in cell order.
pub const ROWS_FILE: &str = "embeddings.ivf.f16";
const FORMAT: u32 = 1;

/// Cells per square root of the item count (faiss's guide: 4-16).
const CELLS_PER_ROOT: f64 = 8.0;
const MAX_CELLS: usize = 65_536;
/// Fewest items per cell on average (small catalogs).
const MIN_ITEMS_PER_CELL: usize = 4;
/// Training sample: this many rows per cell, at least `MIN_SAMPLE`.
const SAMPLE_PER_CELL: usize = 32;
const MIN_SAMPLE: usize = 100_000;
/// Rows assigned per task when every item is put in its cell.
const ASSIGN_CHUNK: usize = 131_072;
/// Item counts from which the long steps show progress.
const PROGRESS_FROM: usize = 1_000_000;
const SEED: u64 = 0x1f_5eed;
/// Items a query's probed cells hold from which both halves are scanned at
/// once (on two cores the scan of 10^6 items takes about 20 ms alone).
const PARALLEL_FROM: usize = 100_000;
/// The recall@10 the probe count is chosen for by default.
pub const DEFAULT_TARGET_RECALL: f64 = 0.95;

/// What `ivf.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IvfManifest {
    format: u32,
    dim: usize,
    tops: usize,
    cells: usize,
    /// Positions (items in the lists).
    items: usize,
    /// `(probes, recall@10)` from the calibration.
    curve: Vec<(usize, f64)>,
}

/// The IVF index of one catalog version, with the vectors added since.
#[derive(Debug)]
pub struct Ivf {
    q: Quantiser,
    offsets: Array<u32>,
    items: Array<u32>,
    rows: Embeddings,
    /// Keys of the vectors added since the base, per cell.
    added: RwLock<Vec<Vec<u64>>>,
    added_len: AtomicUsize,
    curve: Vec<(usize, f64)>,
    probes: usize,
    /// Whether the lists were read from the version folder.
    mapped: bool,
    /// [`PARALLEL_FROM`] (tests lower it).
    parallel_from: usize,
}

/// Cells for `n` items.
fn cells_for(n: usize) -> usize {
    ((CELLS_PER_ROOT * (n as f64).sqrt()).round() as usize).min(MAX_CELLS).min(n / MIN_ITEMS_PER_CELL).max(1)
}

/// The lists of `items` in `cells` (one cell each): offsets and the items
/// in cell order, in their given order within a cell (a counting sort:
/// at 10^8 items no pairs are sorted).
fn lists(items: &[u32], cell_of: &[u32], cells: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; cells + 1];
    for &c in cell_of {
        offsets[c as usize + 1] += 1;
    }
    for c in 0..cells {
        offsets[c + 1] += offsets[c];
    }
    let mut next = offsets.clone();
    let mut out = vec![0u32; items.len()];
    for (&item, &c) in items.iter().zip(cell_of) {
        out[next[c as usize] as usize] = item;
        next[c as usize] += 1;
    }
    (offsets, out)
}

/// Row `i` of `rows` as f32.
fn row(rows: &Embeddings, i: usize, dim: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(dim);
    rows.row_into(i, dim, &mut v);
    v
}

/// The rows of `items` as f32, `[items, dim]`, through one buffer.
fn gather(rows: &Embeddings, items: &[u32], dim: usize) -> Vec<f32> {
    let (mut out, mut one) = (Vec::with_capacity(items.len() * dim), Vec::with_capacity(dim));
    for &i in items {
        rows.row_into(i as usize, dim, &mut one);
        out.extend_from_slice(&one);
    }
    out
}

/// Learns a quantiser from a sample of `items`' rows.
fn train(rows: &Embeddings, items: &[u32], dim: usize) -> Result<Quantiser, RecallError> {
    let cells = cells_for(items.len());
    let want = (cells * SAMPLE_PER_CELL).max(MIN_SAMPLE);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut picks: Vec<u32> = if items.len() <= want {
        items.to_vec()
    } else {
        (0..want).map(|_| items[rng.random_range(0..items.len())]).collect()
    };
    // in row order: at 10^8 the rows are read from disk
    picks.sort_unstable();
    let sample = gather(rows, &picks, dim);
    Quantiser::train(&sample, dim, cells, SEED)
}

/// The cell of every item of `items`, with a progress bar from
/// [`PROGRESS_FROM`] items on.
fn assign_all(q: &Quantiser, rows: &Embeddings, items: &[u32], dim: usize) -> Result<Vec<u32>, RecallError> {
    let p = (items.len() >= PROGRESS_FROM).then(|| crate::progress::Progress::new("IVF cells", items.len() as u64));
    let done = AtomicUsize::new(0);
    let mut cells = vec![0u32; items.len()];
    cells.par_chunks_mut(ASSIGN_CHUNK).zip(items.par_chunks(ASSIGN_CHUNK)).try_for_each(|(out, chunk)| {
        let x = gather(rows, chunk, dim);
        out.copy_from_slice(&q.cells_of(&x)?);
        if let Some(p) = &p {
            p.set((done.fetch_add(chunk.len(), Ordering::Relaxed) + chunk.len()) as u64);
        }
        Ok::<(), RecallError>(())
    })?;
    if let Some(p) = p {
        p.finish();
    }
    Ok(cells)
}

/// The served items of `view`, ascending.
fn served_items(view: &Catalog) -> Vec<u32> {
    (0..view.len() as u32).into_par_iter().filter(|&i| view.is_served(i)).collect()
}

/// Writes the IVF index of the version being written to `dir` (which holds
/// its `embeddings.f16` already), for the served items of `view`. With the
/// folder of the version it follows (`prev`, holding an index of the same
/// dimension), its quantiser is kept and only the items that `view` changed
/// are placed again; otherwise one is learned.
pub fn write_version(view: &Catalog, prev: Option<&Path>, dir: &Path) -> Result<(), RecallError> {
    let dim = view.manifest().embedding_dim;
    let n = view.len();
    let rows = Array::<u16>::map(&dir.join("embeddings.f16"), n * dim)?;
    let emb = Embeddings::F16(rows.clone());
    let prev = prev.and_then(|p| match Ivf::map(p, dim) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!("{}: {e}; learning new IVF cells", p.display());
            None
        }
    });
    let (q, items, cell_of) = match prev {
        Some(old) => {
            // the old lists but the items the view changed, then those placed again
            let overlay = view.overlay();
            let (mut items, mut cell_of) = (Vec::with_capacity(old.items.len()), Vec::with_capacity(old.items.len()));
            for c in 0..old.q.cells() {
                let (lo, hi) = (old.offsets[c] as usize, old.offsets[c + 1] as usize);
                for &i in old.items[lo..hi].iter().filter(|&&i| (i as usize) < n && overlay.entry(i).is_none()) {
                    items.push(i);
                    cell_of.push(c as u32);
                }
            }
            let mut moved: Vec<u32> = overlay.items().filter(|(_, e)| e.served).map(|(i, _)| i).collect();
            moved.sort_unstable();
            cell_of.extend(assign_all(&old.q, &emb, &moved, dim)?);
            items.extend(moved);
            (old.q, items, cell_of)
        }
        None => {
            let items = served_items(view);
            if items.is_empty() {
                return Ok(());
            }
            let q = train(&emb, &items, dim)?;
            let cell_of = assign_all(&q, &emb, &items, dim)?;
            (q, items, cell_of)
        }
    };
    if items.is_empty() {
        return Ok(());
    }
    let (offsets, items) = lists(&items, &cell_of, q.cells());
    drop(cell_of);
    cell_rows::write(&dir.join(ROWS_FILE), &rows, &items, dim)?;
    let ordered = Embeddings::F16(Array::<u16>::map(&dir.join(ROWS_FILE), items.len() * dim)?);
    let curve = calibrate(&q, &offsets, &ordered, dim)?;
    write_array(&dir.join(TOP_FILE), &q.top)?;
    write_array(&dir.join(TOP_CELLS_FILE), &q.top_cells)?;
    write_array(&dir.join(CENTROIDS_FILE), &q.centroids)?;
    write_array(&dir.join(OFFSETS_FILE), &offsets)?;
    write_array(&dir.join(ITEMS_FILE), &items)?;
    let m = IvfManifest { format: FORMAT, dim, tops: q.tops(), cells: q.cells(), items: items.len(), curve };
    let json = serde_json::to_vec_pretty(&m).map_err(|e| RecallError::Index(e.to_string()))?;
    format::write_file(&dir.join(IVF_MANIFEST), &json)?;
    Ok(())
}

/// What [`rewrite_in_place`] did.
#[derive(Debug, Clone, Serialize)]
pub struct RewriteReport {
    /// Whether the version had an index whose quantiser and lists were kept.
    pub kept_lists: bool,
    pub cells: usize,
    pub items: usize,
    /// The probe count for [`DEFAULT_TARGET_RECALL`] before (none: no index)
    /// and after.
    pub probes_before: Option<usize>,
    pub probes_after: usize,
    pub seconds: f64,
}

/// Writes the IVF index of the catalog version in folder `version` into
/// that folder again (`genrec catalog ann`): for a version written before the
/// index existed (which otherwise builds it in memory at every open), or to
/// calibrate it again. A version that has one keeps its quantiser and lists,
/// unless `relearn` (a catalog that grew through live edits far past the
/// size its cells were learned for: compactions keep them).
/// The new files are written in a temporary folder inside, synced, then
/// renamed over the old ones with `ivf.json` last: a process that mapped
/// the old files keeps reading them. The caller holds the catalog folder's
/// writer lock, so that no compaction removes the version meanwhile.
pub fn rewrite_in_place(version: &Path, relearn: bool) -> Result<RewriteReport, RecallError> {
    let t = std::time::Instant::now();
    let base = crate::catalog::Base::map(version)?;
    let dim = base.manifest.embedding_dim;
    let before = Ivf::map(version, dim).ok().flatten();
    let probes_before = before.as_ref().map(|i| probes_for(&i.curve, DEFAULT_TARGET_RECALL));
    let kept_lists = before.is_some() && !relearn;
    drop(before);
    let view = Catalog::from_base(base);
    let tmp =
        tempfile::Builder::new().prefix(".ivf.tmp-").tempdir_in(version).map_err(|e| CatalogError::io(version, e))?;
    let rows_link = tmp.path().join("embeddings.f16");
    // (relative: the temporary folder is inside the version's)
    std::os::unix::fs::symlink("../embeddings.f16", &rows_link).map_err(|e| CatalogError::io(&rows_link, e))?;
    write_version(&view, kept_lists.then_some(version), tmp.path())?;
    std::fs::remove_file(&rows_link).map_err(|e| CatalogError::io(&rows_link, e))?;
    format::sync_dir(tmp.path())?;
    for name in [TOP_FILE, TOP_CELLS_FILE, CENTROIDS_FILE, OFFSETS_FILE, ITEMS_FILE, ROWS_FILE, IVF_MANIFEST] {
        let (from, to) = (tmp.path().join(name), version.join(name));
        std::fs::rename(&from, &to).map_err(|e| CatalogError::io(&to, e))?;
    }
    format::sync_dir(version)?;
    let after = Ivf::map(version, dim)?.ok_or_else(|| RecallError::Index("the rewritten index is missing".into()))?;
    Ok(RewriteReport {
        kept_lists,
        cells: after.cells(),
        items: after.base_len(),
        probes_before,
        probes_after: probes_for(&after.curve, DEFAULT_TARGET_RECALL),
        seconds: t.elapsed().as_secs_f64(),
    })
}

impl Ivf {
    /// The index of `catalog`'s version: mapped from its folder when written
    /// there, else built in memory; then the vectors its overlay holds are
    /// added. `target` is the recall@10 the probe count is read off for.
    pub fn open(catalog: &Catalog, target: f64) -> Result<Self, RecallError> {
        let base = catalog.base();
        let dim = catalog.manifest().embedding_dim;
        let mapped = match base.source.as_deref() {
            Some(d) => Self::map(d, dim).unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; building the IVF index in memory", d.display());
                None
            }),
            None => None,
        };
        let mut ivf = match mapped {
            Some(ivf) => ivf,
            None => Self::build(catalog)?,
        };
        if let Embeddings::F16(rows) = &ivf.rows {
            // the rows in cell order are what every query reads (12.8 GB at
            // 10^8): read ahead in the background, so that a fresh server is
            // not answering from the disk for its first minutes
            let ahead = rows.clone();
            let spawned = std::thread::Builder::new().name("genrec-ivf-readahead".into()).spawn(move || {
                let t = std::time::Instant::now();
                let bytes = ahead.read_ahead();
                if bytes > 0 {
                    tracing::info!(bytes, seconds = t.elapsed().as_secs_f64(), "ANN rows read ahead");
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("no read-ahead of the ANN rows: {e}");
            }
        }
        ivf.probes = probes_for(&ivf.curve, target);
        // what the overlay changed: vectors of their own, and base rows the lists lack
        let vectors: Vec<(u64, Vec<f32>)> = catalog
            .overlay()
            .items()
            .filter(|(_, e)| e.served)
            .filter_map(|(i, e)| match &e.item {
                Some(it) => Some((it.ann_key, it.embedding.clone())),
                None if base.is_removed(i) => Some((i as u64, row(&base.embeddings, i as usize, dim))),
                None => None,
            })
            .collect();
        ivf.add(&vectors)?;
        Ok(ivf)
    }

    /// The index in `dir` (`None` when it has none).
    fn map(dir: &Path, dim: usize) -> Result<Option<Self>, RecallError> {
        let path = dir.join(IVF_MANIFEST);
        if !path.is_file() {
            return Ok(None);
        }
        let bad = |what: String| RecallError::Index(format!("{}: {what}", path.display()));
        let text = std::fs::read(&path).map_err(|e| CatalogError::io(&path, e))?;
        let m: IvfManifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT || m.dim != dim {
            return Err(bad(format!("format {} of {} dimensions, not {FORMAT} of {dim}", m.format, m.dim)));
        }
        let top = Array::<f32>::map(&dir.join(TOP_FILE), m.tops * dim)?.to_vec();
        let top_cells = Array::<u32>::map(&dir.join(TOP_CELLS_FILE), m.tops + 1)?.to_vec();
        let centroids = Array::<f32>::map(&dir.join(CENTROIDS_FILE), m.cells * dim)?.to_vec();
        let offsets = Array::<u32>::map(&dir.join(OFFSETS_FILE), m.cells + 1)?;
        let items = Array::<u32>::map(&dir.join(ITEMS_FILE), m.items)?;
        let rows = Array::<u16>::map(&dir.join(ROWS_FILE), m.items * dim)?;
        // (every top centroid has at least one cell: a live edit descends into one)
        let sorted = m.tops > 0
            && top_cells.first() == Some(&0)
            && top_cells.last() == Some(&(m.cells as u32))
            && top_cells.windows(2).all(|w| w[0] < w[1]);
        if !sorted || offsets[m.cells] as usize != m.items || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad("its lists do not add up".into()));
        }
        let q = Quantiser::from_parts(dim, top, top_cells, centroids);
        Ok(Some(Self::from_lists(q, offsets, items, Embeddings::F16(rows), m.curve, true)))
    }

    /// The index of `catalog`'s base, built in memory.
    fn build(catalog: &Catalog) -> Result<Self, RecallError> {
        let base = catalog.base();
        let dim = catalog.manifest().embedding_dim;
        let items: Vec<u32> = (0..base.rows() as u32).into_par_iter().filter(|&i| !base.is_removed(i)).collect();
        if items.is_empty() {
            let q = Quantiser::from_parts(dim, vec![0.0; dim], vec![0, 1], vec![0.0; dim]);
            return Ok(Self::from_lists(
                q,
                Array::owned(vec![0, 0]),
                Array::default(),
                Embeddings::default(),
                vec![],
                false,
            ));
        }
        let t = std::time::Instant::now();
        let q = train(&base.embeddings, &items, dim)?;
        let cell_of = assign_all(&q, &base.embeddings, &items, dim)?;
        let (offsets, items) = lists(&items, &cell_of, q.cells());
        let rows = cell_rows::copy(&base.embeddings, &items, dim);
        let curve = calibrate(&q, &offsets, &rows, dim)?;
        if items.len() >= 1_000_000 {
            tracing::info!(
                "IVF index of {} items built in memory in {:.1}s (the version has none on disk)",
                items.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(Self::from_lists(q, Array::owned(offsets), Array::owned(items), rows, curve, false))
    }

    fn from_lists(
        q: Quantiser,
        offsets: Array<u32>,
        items: Array<u32>,
        rows: Embeddings,
        curve: Vec<(usize, f64)>,
        mapped: bool,
    ) -> Self {
        let added = RwLock::new(vec![Vec::new(); q.cells()]);
        Ivf {
            q,
            offsets,
            items,
            rows,
            added,
            added_len: AtomicUsize::new(0),
            curve,
            probes: 1,
            mapped,
            parallel_from: PARALLEL_FROM,
        }
    }

    /// Cells each query probes.
    pub fn probes(&self) -> usize {
        self.probes
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.q.cells()
    }

    /// The calibration's `(probes, recall@10)` points.
    pub fn curve(&self) -> &[(usize, f64)] {
        &self.curve
    }

    /// Items in the base lists.
    pub fn base_len(&self) -> usize {
        self.items.len()
    }

    /// Vectors added since the base.
    pub fn added_len(&self) -> usize {
        self.added_len.load(Ordering::Relaxed)
    }

    /// Whether the lists are the version folder's (not built at open).
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// Bytes held in memory (mapped files count in the page cache instead).
    pub fn memory(&self) -> usize {
        let owned = |bytes: usize, mapped: bool| if mapped { 0 } else { bytes };
        self.q.memory()
            + owned(self.offsets.bytes() + self.items.bytes() + self.rows.bytes(), self.mapped)
            + 8 * self.added_len()
    }

    /// Puts vectors (`(key, embedding)`, see [`super`]) in their cells.
    pub fn add(&self, vectors: &[(u64, Vec<f32>)]) -> Result<(), RecallError> {
        if vectors.is_empty() {
            return Ok(());
        }
        let cells: Vec<u32> = if vectors.len() < 64 {
            vectors.iter().map(|(_, v)| self.q.cell_of(v)).collect()
        } else {
            let x: Vec<f32> = vectors.iter().flat_map(|(_, v)| v.iter().copied()).collect();
            self.q.cells_of(&x)?
        };
        let mut added = self.added.write();
        for ((key, _), c) in vectors.iter().zip(cells) {
            added[c as usize].push(*key);
        }
        self.added_len.fetch_add(vectors.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The `k` items nearest to `q` (unit norm) among the served items of
    /// the best `probes` cells that `keep` accepts, best first, with inner
    /// products.
    pub fn nearest_probing(
        &self,
        catalog: &Catalog,
        q: &[f32],
        k: usize,
        probes: usize,
        keep: impl Fn(u32) -> bool + Sync,
    ) -> Vec<(u32, f32)> {
        let scores = self.q.scores(q);
        let mut cells: Vec<(f32, u32)> = scores.into_iter().zip(0u32..).collect();
        let probes = probes.clamp(1, cells.len().max(1));
        if cells.len() > probes {
            cells.select_nth_unstable_by(probes - 1, |x, y| y.0.total_cmp(&x.0));
            cells.truncate(probes);
        }
        let pristine = catalog.overlay().is_empty();
        let scan = |cells: &[(f32, u32)]| {
            let mut best = TopK::new(k);
            for &(_, c) in cells {
                let (lo, hi) = (self.offsets[c as usize] as usize, self.offsets[c as usize + 1] as usize);
                for (j, &item) in self.items[lo..hi].iter().enumerate() {
                    // the score first: most items fall below the cut, and the
                    // checks (a map lookup with live edits, the caller's
                    // filter) run only for the few that do not. The lists
                    // hold only the version's served rows.
                    let score = self.rows.dot(lo + j, q);
                    if score < best.floor {
                        continue;
                    }
                    if (pristine || catalog.serves_vector(item, item as u64)) && keep(item) {
                        best.push(item, score);
                    }
                }
            }
            best
        };
        let items: usize =
            cells.iter().map(|&(_, c)| (self.offsets[c as usize + 1] - self.offsets[c as usize]) as usize).sum();
        let mut best = if items >= self.parallel_from {
            let half = cells.len().div_ceil(2);
            let (a, b) = rayon::join(|| scan(&cells[..half]), || scan(&cells[half..]));
            a.merge(b)
        } else {
            scan(&cells)
        };
        if self.added_len() > 0 {
            let keys: Vec<u64> = {
                let added = self.added.read();
                cells.iter().flat_map(|&(_, c)| added[c as usize].iter().copied()).collect()
            };
            for key in keys {
                let item = key as u32;
                if catalog.serves_vector(item, key) && keep(item) {
                    best.push(item, catalog.embedding_dot(item, q));
                }
            }
        }
        best.into_sorted()
    }

    /// [`nearest_probing`](Self::nearest_probing) with the calibrated count.
    pub fn nearest(
        &self,
        catalog: &Catalog,
        q: &[f32],
        k: usize,
        keep: impl Fn(u32) -> bool + Sync,
    ) -> Vec<(u32, f32)> {
        self.nearest_probing(catalog, q, k, self.probes, keep)
    }
}

#[cfg(test)]
mod tests;
