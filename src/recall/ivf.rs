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
//! `probes` comes from a target recall. The calibration (at write, or at an
//! in-memory build) takes 200 queries made as serving makes a user vector
//! (recency-weighted means of five items, each from the first item's top
//! cell or, half of the time, from anywhere), finds their exact top 10 among
//! all the items (a sample's neighbours lie farther out, in cells that rank
//! lower: at 10^8 a sample of 10^5 asked for 2.7 times the cells needed),
//! and records the share found at each probe count: the curve. Any target is
//! read off it at open.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::quantiser::Quantiser;
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
const CALIBRATION_QUERIES: usize = 200;
/// Rows per block of the calibration's exact search.
const EXACT_BLOCK: usize = 16_384;
/// Items a query's probed cells hold from which both halves are scanned at
/// once (on two cores the scan of 10^6 items takes about 20 ms alone).
const PARALLEL_FROM: usize = 100_000;
/// The curve goes on until this recall (or every cell).
const CURVE_UNTIL: f64 = 0.995;
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
    let sample: Vec<f32> = picks.iter().flat_map(|&i| row(rows, i as usize, dim)).collect();
    Quantiser::train(&sample, dim, cells, SEED)
}

/// The cell of every item of `items`, with a progress bar from
/// [`PROGRESS_FROM`] items on.
fn assign_all(q: &Quantiser, rows: &Embeddings, items: &[u32], dim: usize) -> Result<Vec<u32>, RecallError> {
    let p = (items.len() >= PROGRESS_FROM).then(|| crate::progress::Progress::new("IVF cells", items.len() as u64));
    let done = AtomicUsize::new(0);
    let mut cells = vec![0u32; items.len()];
    cells.par_chunks_mut(ASSIGN_CHUNK).zip(items.par_chunks(ASSIGN_CHUNK)).try_for_each(|(out, chunk)| {
        let x: Vec<f32> = chunk.iter().flat_map(|&i| row(rows, i as usize, dim)).collect();
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

/// The vector a user of `history` (positions, oldest first) gets, as
/// [`super::Ann::user_vector`] makes it.
fn history_vector(rows: &Embeddings, history: &[usize], dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    let mut w = 1.0f32;
    for &j in history.iter().rev() {
        for (a, b) in v.iter_mut().zip(row(rows, j, dim)) {
            *a += w * b;
        }
        w *= super::RECENCY_DECAY;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Rows `lo..hi` of `rows` as f32, `[hi - lo, dim]`.
fn rows_f32(rows: &Embeddings, lo: usize, hi: usize, dim: usize) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    match rows {
        Embeddings::F32(a) => a[lo * dim..hi * dim].to_vec(),
        Embeddings::F16(a) => {
            let mut out = vec![0f32; (hi - lo) * dim];
            let halves: &[half::f16] = a[lo * dim..hi * dim].reinterpret_cast();
            halves.convert_to_f32_slice(&mut out);
            out
        }
    }
}

fn candle_error(e: candle_core::Error) -> RecallError {
    RecallError::Index(e.to_string())
}

/// The exact top 10 positions of every query among all `m` rows: the rows
/// in blocks on all cores, each block scored against every query with one
/// matrix product (at 10^8 items, 200 queries take about a minute).
fn exact_top10(rows: &Embeddings, m: usize, queries: &[Vec<f32>], dim: usize) -> Result<Vec<Vec<usize>>, RecallError> {
    let nq = queries.len();
    let dev = candle_core::Device::Cpu;
    let qt = candle_core::Tensor::from_slice(&queries.concat(), (nq, dim), &dev)
        .and_then(|t| t.t())
        .map_err(candle_error)?;
    let blocks = m.div_ceil(EXACT_BLOCK);
    let parts: Vec<Vec<Vec<(f32, usize)>>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * EXACT_BLOCK, ((b + 1) * EXACT_BLOCK).min(m));
            let x = rows_f32(rows, lo, hi, dim);
            let scores: Vec<f32> = candle_core::Tensor::from_slice(&x, (hi - lo, dim), &dev)
                .and_then(|t| t.matmul(&qt))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(candle_error)?;
            let mut tops: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(11); nq];
            for (r, row_scores) in scores.chunks_exact(nq).enumerate() {
                for (t, &s) in tops.iter_mut().zip(row_scores) {
                    if t.len() < 10 || s > t[t.len() - 1].0 {
                        t.push((s, lo + r));
                        t.sort_by(|a, b| b.0.total_cmp(&a.0));
                        t.truncate(10);
                    }
                }
            }
            Ok(tops)
        })
        .collect::<Result<_, RecallError>>()?;
    Ok((0..nq)
        .map(|q| {
            let mut all: Vec<(f32, usize)> = parts.iter().flat_map(|p| p[q].iter().copied()).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.into_iter().take(10).map(|x| x.1).collect()
        })
        .collect())
}

/// The calibration curve (see the module comment) of lists `offsets` over
/// `rows` in position order.
fn calibrate(q: &Quantiser, offsets: &[u32], rows: &Embeddings, dim: usize) -> Result<Vec<(usize, f64)>, RecallError> {
    let m = *offsets.last().unwrap_or(&0) as usize;
    if m == 0 {
        return Ok(vec![(1, 1.0)]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED ^ 0xca1);
    let cell_at = |j: usize| (offsets.partition_point(|&o| o as usize <= j) - 1) as u32;
    let histories: Vec<Vec<usize>> = (0..CALIBRATION_QUERIES)
        .map(|_| {
            let seed = rng.random_range(0..m);
            let t = q.top_of_cell(cell_at(seed));
            let (lo, hi) = (offsets[q.top_cells[t] as usize] as usize, offsets[q.top_cells[t + 1] as usize] as usize);
            (0..5)
                .map(|_| match rng.random_bool(0.5) && hi > lo {
                    true => rng.random_range(lo..hi),
                    false => rng.random_range(0..m),
                })
                .collect()
        })
        .collect();
    let queries: Vec<Vec<f32>> = histories.iter().map(|h| history_vector(rows, h, dim)).collect();
    let exact = exact_top10(rows, m, &queries, dim)?;
    // for every (query, neighbour): how many cells score above the neighbour's
    let ranks: Vec<usize> = queries
        .par_iter()
        .zip(&exact)
        .flat_map_iter(|(v, top)| {
            let scores = q.scores(v);
            top.iter()
                .map(|&j| {
                    let own = scores[cell_at(j) as usize];
                    scores.iter().filter(|&&s| s > own).count()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let cells = q.cells();
    let mut curve = Vec::new();
    let mut probes = 1usize;
    loop {
        let recall = ranks.iter().filter(|&&r| r < probes).count() as f64 / ranks.len().max(1) as f64;
        curve.push((probes, recall));
        if recall >= CURVE_UNTIL || probes >= cells {
            return Ok(curve);
        }
        // about √2 apart: 1, 2, 3, 4, 6, 8, 12, 16, ...
        probes = if probes.is_power_of_two() && probes >= 2 { probes + probes / 2 } else { probes.next_power_of_two() };
        probes = probes.max(curve.last().map_or(1, |c| c.0 + 1)).min(cells);
    }
}

/// The smallest probe count on `curve` that reaches `target` (the largest
/// tried when none does).
fn probes_for(curve: &[(usize, f64)], target: f64) -> usize {
    curve.iter().find(|c| c.1 >= target).or(curve.last()).map_or(1, |c| c.0)
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

/// The best `k` hits of a scan, best first (ties to the smaller item),
/// kept in a buffer that is cut back to `k` whenever it fills, so that a
/// scan of 10^6 items holds a few hundred and skips most below the cut.
struct TopK {
    k: usize,
    hits: Vec<(u32, f32)>,
    /// The `k`-th best score at the last cut: lower ones cannot enter.
    floor: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK { k, hits: Vec::with_capacity(Self::room(k)), floor: f32::NEG_INFINITY }
    }

    fn room(k: usize) -> usize {
        (4 * k).max(256)
    }

    fn by_score(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    fn push(&mut self, item: u32, score: f32) {
        if score < self.floor || self.k == 0 {
            return;
        }
        self.hits.push((item, score));
        if self.hits.len() >= Self::room(self.k) {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.hits.len() > self.k {
            self.hits.select_nth_unstable_by(self.k - 1, Self::by_score);
            self.hits.truncate(self.k);
            self.floor = self.hits.iter().map(|h| h.1).fold(f32::INFINITY, f32::min);
        }
    }

    fn merge(mut self, other: TopK) -> TopK {
        for (item, score) in other.hits {
            self.push(item, score);
        }
        self
    }

    fn into_sorted(mut self) -> Vec<(u32, f32)> {
        self.cut();
        self.hits.sort_by(Self::by_score);
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::edit::NewItem;

    fn catalog() -> Catalog {
        crate::model::demo::load(&candle_core::Device::Cpu).expect("embedded model").1
    }

    /// Exact top `k` by brute force over the served items.
    fn exact(cat: &Catalog, q: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<(u32, f32)> =
            (0..cat.len() as u32).filter(|&i| cat.is_served(i)).map(|i| (i, cat.embedding_dot(i, q))).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|h| h.0).collect()
    }

    /// Recall@10 over 100 histories made as the calibration makes them (but
    /// with another seed): five items, each from the first one's top cell
    /// or, half of the time, from anywhere.
    fn recall(cat: &Catalog, ivf: &Ivf, probes: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let m = ivf.items.len();
        let (mut found, mut total) = (0, 0);
        for _ in 0..100 {
            let seed = rng.random_range(0..m);
            let cell = (ivf.offsets.partition_point(|&o| o as usize <= seed) - 1) as u32;
            let t = ivf.q.top_of_cell(cell);
            let (lo, hi) = (
                ivf.offsets[ivf.q.top_cells[t] as usize] as usize,
                ivf.offsets[ivf.q.top_cells[t + 1] as usize] as usize,
            );
            let history: Vec<u32> = (0..5)
                .map(|_| {
                    ivf.items[if rng.random_bool(0.5) { rng.random_range(lo..hi) } else { rng.random_range(0..m) }]
                })
                .collect();
            let q = super::super::Ann::user_vector(cat, &history);
            let want = exact(cat, &q, 10);
            let got: Vec<u32> = ivf.nearest_probing(cat, &q, 10, probes, |_| true).iter().map(|h| h.0).collect();
            found += want.iter().filter(|w| got.contains(w)).count();
            total += want.len();
        }
        found as f64 / total as f64
    }

    /// Every cell probed is brute force; the calibrated count is near its
    /// target on these histories; fewer cells find fewer.
    #[test]
    fn all_cells_are_exact_and_the_calibrated_count_is_near_its_target() {
        let cat = catalog();
        let ivf = Ivf::open(&cat, 0.9).unwrap();
        assert!(!ivf.is_mapped());
        assert_eq!(ivf.base_len(), cat.len());
        assert_eq!(recall(&cat, &ivf, ivf.cells()), 1.0);
        let r = recall(&cat, &ivf, ivf.probes());
        assert!(
            r >= 0.85 && ivf.curve().iter().any(|c| c.0 == ivf.probes() && c.1 >= 0.9),
            "recall {r} at {} of {} cells, curve {:?}",
            ivf.probes(),
            ivf.cells(),
            ivf.curve()
        );
        assert!(ivf.probes() < ivf.cells(), "{:?}", ivf.curve());
        assert!(recall(&cat, &ivf, 1) < r);
    }

    /// A version written with its index maps it, answers as the in-memory
    /// one does, and a compaction keeps the quantiser and moves the edited
    /// items.
    #[test]
    fn a_written_index_is_mapped_and_carried_through_a_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog();
        let v1 = dir.path().join("v1");
        std::fs::create_dir_all(&v1).unwrap();
        crate::catalog::dir::write_version(&cat, &v1, 1, None).unwrap();
        write_version(&cat, None, &v1).unwrap();
        let base = crate::catalog::Base::map(&v1).unwrap();
        let mut on_disk = Catalog::from_base(base);
        let ivf = Ivf::open(&on_disk, 0.95).unwrap();
        assert!(ivf.is_mapped());
        assert_eq!(recall(&on_disk, &ivf, ivf.cells()), 1.0);
        // edits: one item moved to another's vector, one removed, one new
        let (moved, gone) = (on_disk.item_id(3).to_string(), on_disk.item_id(5).to_string());
        let target = on_disk.embedding(400);
        let up = |id: &str, e: Vec<f32>| NewItem {
            id: id.into(),
            title: "x".into(),
            embedding: e,
            semantic_id: None,
            expires_at_ms: None,
        };
        on_disk.upsert(up(&moved, target.clone()), 1).unwrap();
        on_disk.remove(&gone, 2).unwrap();
        on_disk.upsert(up("brand-new", on_disk.embedding(401)), 3).unwrap();
        let v2 = dir.path().join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        crate::catalog::dir::write_version(&on_disk, &v2, 2, None).unwrap();
        write_version(&on_disk, Some(&v1), &v2).unwrap();
        let next = Catalog::from_base(crate::catalog::Base::map(&v2).unwrap());
        let carried = Ivf::open(&next, 0.95).unwrap();
        assert_eq!(carried.q, ivf.q, "the quantiser is kept");
        assert_eq!(carried.base_len(), ivf.base_len(), "one removed, one added");
        assert_eq!(recall(&next, &carried, carried.cells()), 1.0);
        let hits = carried.nearest_probing(&next, &target, 3, carried.cells(), |_| true);
        let three = next.index_of(&moved).unwrap();
        assert!(hits.iter().any(|h| h.0 == three), "{hits:?}");
        assert!(next.index_of("brand-new").is_some_and(|i| carried.items.contains(&i)));
        assert!(!carried.items.contains(&next.index_of(&gone).unwrap_or(u32::MAX)));
    }

    /// A version saved without an index gets one written in place (learned),
    /// then calibrated again keeping its lists; a server opening it maps it.
    #[test]
    fn an_index_is_written_into_a_version_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog();
        cat.save(dir.path()).unwrap();
        let version = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
        assert!(!version.join(IVF_MANIFEST).exists(), "Catalog::save writes no index");
        let first = rewrite_in_place(&version, false).unwrap();
        assert!(!first.kept_lists && first.probes_before.is_none());
        assert_eq!(first.items, cat.len());
        let items = std::fs::read(version.join(ITEMS_FILE)).unwrap();
        let again = rewrite_in_place(&version, false).unwrap();
        assert!(again.kept_lists);
        assert_eq!((again.probes_before, again.cells), (Some(first.probes_after), first.cells));
        assert_eq!(std::fs::read(version.join(ITEMS_FILE)).unwrap(), items);
        let relearned = rewrite_in_place(&version, true).unwrap();
        assert!(!relearned.kept_lists && relearned.cells == first.cells, "the same data learns the same cells");
        let names: Vec<String> = std::fs::read_dir(&version)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".ivf.tmp")), "{names:?}");
        let opened = Catalog::load(dir.path()).unwrap();
        assert!(Ivf::open(&opened, 0.95).unwrap().is_mapped());
    }

    /// Live edits are found by their new vector at once, never by the old
    /// one, and a removed item is gone.
    #[test]
    fn follows_live_edits() {
        let mut cat = catalog();
        let ivf = Ivf::open(&cat, 0.95).unwrap();
        let all = ivf.cells();
        let q = cat.embedding(7);
        assert_eq!(ivf.nearest_probing(&cat, &q, 1, all, |_| true)[0].0, 7);
        let id = cat.item_id(7).to_string();
        let other = cat.embedding(100);
        let placed = cat
            .upsert(
                NewItem { id, title: "x".into(), embedding: other.clone(), semantic_id: None, expires_at_ms: None },
                1,
            )
            .unwrap();
        ivf.add(&[(placed.ann_key, placed.embedding.clone())]).unwrap();
        let hits = ivf.nearest_probing(&cat, &other, 2, all, |_| true);
        assert!(hits.iter().any(|h| h.0 == 7 && h.1 > 0.99), "{hits:?}");
        let old = ivf.nearest_probing(&cat, &q, 3, all, |_| true);
        assert!(old.iter().all(|h| h.0 != 7 || h.1 < 0.99), "the old vector is not scored: {old:?}");
        let gone = cat.item_id(100).to_string();
        cat.remove(&gone, 2).unwrap();
        assert!(ivf.nearest_probing(&cat, &other, 5, all, |_| true).iter().all(|h| h.0 != 100));
    }

    /// The scan split over two cores answers as the one-core scan does, and
    /// the bounded top-k keeps what a full sort keeps (ties to the smaller
    /// item).
    #[test]
    fn a_split_scan_and_the_bounded_top_k_answer_as_a_full_sort() {
        let cat = catalog();
        let mut ivf = Ivf::open(&cat, 0.95).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for k in [1, 10, 300] {
            let q = cat.embedding(rng.random_range(0..cat.len() as u32));
            ivf.parallel_from = usize::MAX;
            let one = ivf.nearest_probing(&cat, &q, k, 40, |i| i % 7 != 0);
            ivf.parallel_from = 0;
            let two = ivf.nearest_probing(&cat, &q, k, 40, |i| i % 7 != 0);
            assert_eq!(one, two, "k {k}");
        }
        for k in [1, 3, 64, 1000] {
            let scores: Vec<(u32, f32)> = (0..5_000u32).map(|i| (i, (rng.random_range(0..400) as f32) / 7.0)).collect();
            let mut best = TopK::new(k);
            for &(i, s) in &scores {
                best.push(i, s);
            }
            let mut want = scores.clone();
            want.sort_by(TopK::by_score);
            want.truncate(k);
            assert_eq!(best.into_sorted(), want, "k {k}");
        }
    }

    /// Readers racing a writer that adds vectors see every finished add and
    /// never fail.
    #[test]
    fn concurrent_adds_and_searches() {
        let cat = catalog();
        let ivf = std::sync::Arc::new(Ivf::open(&cat, 0.95).unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|t| {
                let (ivf, cat, stop) = (ivf.clone(), cat.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let q = cat.embedding((t * 31 + n) % cat.len() as u32);
                        assert!(!ivf.nearest(&cat, &q, 10, |_| true).is_empty());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let dim = cat.manifest().embedding_dim;
        for round in 0..200u64 {
            let v: Vec<(u64, Vec<f32>)> =
                (0..50).map(|j| ((round * 50 + j) << 32, cat.embedding((j as u32 * 7) % cat.len() as u32))).collect();
            ivf.add(&v).unwrap();
            assert_eq!(v[0].1.len(), dim);
        }
        stop.store(true, Ordering::Relaxed);
        let searches: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(searches > 0);
        assert_eq!(ivf.added_len(), 200 * 50);
        assert_eq!(ivf.added.read().iter().map(Vec::len).sum::<usize>(), 200 * 50);
    }
}
