//! ANN recall from the catalog's own semantic IDs: an inverted-file index
//! (IVF, Jégou et al., "Product quantization for nearest neighbor search",
//! 2011) whose lists are the trie's nodes at depth 2, or at depth 1 when
//! those would hold fewer than 64 items on average. The residual codebooks
//! split the embeddings: an item sits near the sum of its first codes'
//! centroids, so a cell `(a, b)` scores `q · C0[a] + q · C1[b]` for a query
//! `q` (two small dot-product tables per query, then one add per cell). A
//! query takes the best `probes` cells and ranks their items exactly by
//! their embeddings, which the index keeps in leaf order so that a cell is
//! one run of rows (the version's `embeddings.leaf.f16`, mapped; for a
//! version without it, a copy made at open; items edited since are read
//! from the catalog). Nothing is built ahead or
//! saved: the cells are the trie's, so an item added or removed live is in
//! its cell (or out of it) as soon as the catalog view says so.
//!
//! `probes` comes from a target recall ([`Cells::new`]): at open, 100
//! calibration queries (recency-weighted means of five items, as serving
//! builds a user vector; each item from one first-level cluster or, half of
//! the time, from anywhere: histories that wander) find their exact top
//! 10 among a sample of up to 20,000 items, and the smallest power-of-two
//! number of cells holding the target share of those neighbours is taken.
//! A sample's neighbours are farther apart than the catalog's, so this
//! errs on the side of more cells (`benches/results/ann.md` measures the
//! recall against brute force on the whole catalog).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::catalog::array::Array;
use crate::catalog::base::{dot8, Embeddings};
use crate::catalog::{leaf_order, Catalog, TrieView};

/// Deepest trie level whose nodes can be the cells.
const MAX_CELL_DEPTH: usize = 2;
/// Items a cell should hold on average: below it, cells are one level up
/// (tiny cells cost a probe each, and their scores from two centroids rank
/// them poorly: `benches/results/ann.md`).
const MIN_ITEMS_PER_CELL: usize = 64;
/// The recall@10 the cell count is chosen for by default.
pub const DEFAULT_TARGET_RECALL: f64 = 0.95;
const CALIBRATION_QUERIES: usize = 100;
const CALIBRATION_SAMPLE: usize = 20_000;

/// The cell index of one catalog version (its codebooks and probe count).
#[derive(Debug, Clone)]
pub struct Cells {
    dim: usize,
    /// Depth of the trie's nodes that are the cells (1 or 2).
    depth: usize,
    /// Codebooks of the first levels, `[codes, dim]` each.
    books: Vec<Vec<f32>>,
    /// The base version's embeddings in leaf order (row `j` is leaf
    /// `leaves_start + j`), so that a cell's items are read in one pass
    /// instead of one random row each; items edited since are read from
    /// the catalog.
    by_leaf: Embeddings,
    leaves_start: u32,
    leaves: u32,
    /// The base trie the rows follow.
    trie_id: u64,
    probes: usize,
    /// The calibration's recall at each probe count tried.
    curve: Vec<(usize, f64)>,
}

impl Cells {
    /// The index of a catalog with residual codebooks for its first two
    /// levels (and more than two levels), probing enough cells for
    /// `target` recall@10 on the calibration queries; `None` for a catalog
    /// without them (imported semantic IDs).
    pub fn new(catalog: &Catalog, target: f64) -> Option<Self> {
        let dim = catalog.manifest().embedding_dim;
        let books = catalog.codebooks();
        let view = catalog.trie();
        let sizes = view.codebook_sizes();
        let usable = (0..MAX_CELL_DEPTH.min(catalog.levels().saturating_sub(1)))
            .take_while(|&l| books.get(l).is_some_and(|b| b.len() == sizes[l] as usize * dim))
            .count();
        if usable == 0 {
            return None;
        }
        // the deepest usable level whose nodes hold enough items each
        let served = catalog.served_len().max(1);
        let depth =
            (1..=usable).rev().find(|&d| served / count_nodes(&view, d).max(1) >= MIN_ITEMS_PER_CELL).unwrap_or(1);
        let base = catalog.base();
        let a = base.trie.arrays();
        let leaves_start = a.level_start[a.codebook_sizes.len()];
        let leaves = a.leaf_item.len() as u32;
        // mapped from the version's leaf-ordered file, else copied
        let mapped = base.source.as_deref().and_then(|d| leaf_order::open(d, a.leaf_item.len(), dim));
        let by_leaf = match mapped {
            Some(rows) => Embeddings::F16(rows),
            None => ordered_rows(&base.embeddings, a.leaf_item, dim),
        };
        let mut cells = Cells {
            dim,
            depth,
            books: books[..depth].to_vec(),
            by_leaf,
            leaves_start,
            leaves,
            trie_id: base.trie.id(),
            probes: 1,
            curve: Vec::new(),
        };
        cells.calibrate(catalog, target);
        Some(cells)
    }

    /// Depth of the trie's nodes that are the cells.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Cells each query probes.
    pub fn probes(&self) -> usize {
        self.probes
    }

    /// The calibration's `(probes, recall@10)` points.
    pub fn curve(&self) -> &[(usize, f64)] {
        &self.curve
    }

    /// Bytes held (the codebooks and the leaf-ordered rows).
    pub fn memory(&self) -> usize {
        4 * self.books.iter().map(Vec::len).sum::<usize>() + self.by_leaf.bytes()
    }

    /// Every cell of the view with its score for `q`: `(score, node)`.
    fn scored_cells(&self, view: &TrieView, q: &[f32]) -> Vec<(f32, u32)> {
        let tables: Vec<Vec<f32>> =
            self.books.iter().map(|b| b.chunks_exact(self.dim).map(|c| dot8(c, q)).collect()).collect();
        let mut out = Vec::new();
        for (a, n0) in view.children(0) {
            let s0 = tables[0][a as usize];
            if self.depth == 1 {
                out.push((s0, n0));
                continue;
            }
            for (b, n1) in view.children(n0) {
                out.push((s0 + tables[1][b as usize], n1));
            }
        }
        out
    }

    /// The `k` items nearest to `q` (unit norm) among the served items of
    /// the best `probes` cells that `keep` accepts, best first, with inner
    /// products.
    pub fn nearest(&self, catalog: &Catalog, q: &[f32], k: usize, keep: impl Fn(u32) -> bool) -> Vec<(u32, f32)> {
        self.nearest_probing(catalog, q, k, self.probes, keep)
    }

    /// [`nearest`](Self::nearest) with a given number of probed cells.
    pub fn nearest_probing(
        &self,
        catalog: &Catalog,
        q: &[f32],
        k: usize,
        probes: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let view = catalog.trie();
        let mut cells = self.scored_cells(&view, q);
        let probes = probes.clamp(1, cells.len().max(1));
        if cells.len() > probes {
            cells.select_nth_unstable_by(probes - 1, |x, y| y.0.total_cmp(&x.0));
            cells.truncate(probes);
        }
        let mut hits: Vec<(u32, f32)> = Vec::new();
        let mut stack = Vec::new();
        let same_base = view.base().id() == self.trie_id;
        if same_base && view.is_pristine() && catalog.overlay().is_empty() {
            // no live edit: each cell is one run of leaves, and of rows
            let leaf_item = view.base().arrays().leaf_item;
            for &(_, cell) in &cells {
                let (lo, hi) = view.base().leaf_run(cell);
                for j in lo - self.leaves_start..hi - self.leaves_start {
                    let item = leaf_item[j as usize];
                    if keep(item) {
                        hits.push((item, self.by_leaf.dot(j as usize, q)));
                    }
                }
            }
            return top(hits, k);
        }
        for &(_, cell) in &cells {
            stack.push(cell);
            while let Some(node) = stack.pop() {
                match view.item(node) {
                    Some(item) => {
                        if !keep(item) {
                            continue;
                        }
                        let j = node.wrapping_sub(self.leaves_start);
                        let score = if same_base && j < self.leaves && !catalog.is_edited(item) {
                            self.by_leaf.dot(j as usize, q)
                        } else {
                            catalog.embedding_dot(item, q)
                        };
                        hits.push((item, score));
                    }
                    None => stack.extend(view.children(node).map(|(_, n)| n)),
                }
            }
        }
        top(hits, k)
    }

    /// Chooses `probes` for `target` (see the module comment).
    fn calibrate(&mut self, catalog: &Catalog, target: f64) {
        let view = catalog.trie();
        let mut rng = ChaCha8Rng::seed_from_u64(0xce11);
        let served: Vec<u32> = (0..catalog.len() as u32).filter(|&i| catalog.is_served(i)).collect();
        if served.is_empty() {
            return;
        }
        let sample: Vec<u32> = if served.len() <= CALIBRATION_SAMPLE {
            served.clone()
        } else {
            (0..CALIBRATION_SAMPLE).map(|_| served[rng.random_range(0..served.len())]).collect()
        };
        let cell_of = |item: u32| view.walk(&catalog.sid(item)[..self.depth]);
        // for every (query, neighbour): how many cells score above the neighbour's
        let mut ranks: Vec<usize> = Vec::new();
        for _ in 0..CALIBRATION_QUERIES {
            let seed = served[rng.random_range(0..served.len())];
            let cluster = view.walk(&catalog.sid(seed)[..1]).unwrap_or(0);
            let history: Vec<u32> = (0..5)
                .map(|_| match rng.random_bool(0.5) {
                    true => random_leaf(&view, cluster, &mut rng).unwrap_or(seed),
                    false => served[rng.random_range(0..served.len())],
                })
                .collect();
            let q = super::Ann::user_vector(catalog, &history);
            let mut exact: Vec<(f32, u32)> = sample.iter().map(|&i| (catalog.embedding_dot(i, &q), i)).collect();
            let top = 10.min(exact.len());
            exact.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
            let cells = self.scored_cells(&view, &q);
            for &(_, item) in &exact[..top] {
                let Some(cell) = cell_of(item) else { continue };
                let own = cells.iter().find(|c| c.1 == cell).map_or(f32::NEG_INFINITY, |c| c.0);
                ranks.push(cells.iter().filter(|c| c.0 > own).count());
            }
        }
        let cells = count_nodes(&view, self.depth).max(1);
        let mut probes = 1;
        self.curve.clear();
        loop {
            let recall = ranks.iter().filter(|&&r| r < probes).count() as f64 / ranks.len().max(1) as f64;
            self.curve.push((probes, recall));
            if recall >= target || probes >= cells {
                break;
            }
            probes *= 2;
        }
        self.probes = probes.min(cells);
    }
}

/// The best `k` hits, best first (ties to the smaller item).
pub(super) fn top(mut hits: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, by_score);
        hits.truncate(k);
    }
    hits.sort_by(by_score);
    hits.truncate(k);
    hits
}

/// `rows` reordered: row `j` is the embedding of `leaf_item[j]` (leaf order
/// here, cell order in [`super::ivf`]).
pub(super) fn ordered_rows(rows: &Embeddings, leaf_item: &[u32], dim: usize) -> Embeddings {
    use rayon::prelude::*;
    match rows {
        Embeddings::F32(a) => {
            let mut out = vec![0f32; leaf_item.len() * dim];
            out.par_chunks_mut(dim.max(1)).zip(leaf_item.par_iter()).for_each(|(row, &i)| {
                row.copy_from_slice(&a[i as usize * dim..(i as usize + 1) * dim]);
            });
            Embeddings::F32(Array::owned(out))
        }
        Embeddings::F16(a) => {
            let mut out = vec![0u16; leaf_item.len() * dim];
            out.par_chunks_mut(dim.max(1)).zip(leaf_item.par_iter()).for_each(|(row, &i)| {
                row.copy_from_slice(&a[i as usize * dim..(i as usize + 1) * dim]);
            });
            Embeddings::F16(Array::owned(out))
        }
    }
}

/// Nodes of the view at `depth`.
fn count_nodes(view: &TrieView, depth: usize) -> usize {
    let mut level = vec![0u32];
    for _ in 0..depth {
        level = level.iter().flat_map(|&n| view.children(n).map(|(_, c)| c)).collect();
    }
    level.len()
}

/// A random leaf under `node`, following random children down.
fn random_leaf(view: &TrieView, mut node: u32, rng: &mut ChaCha8Rng) -> Option<u32> {
    loop {
        if let Some(item) = view.item(node) {
            return Some(item);
        }
        let kids: Vec<u32> = view.children(node).map(|(_, n)| n).collect();
        if kids.is_empty() {
            return None;
        }
        node = kids[rng.random_range(0..kids.len())];
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
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    /// Probing every cell is brute force; the calibrated count reaches the
    /// target on real user-like queries; fewer cells find less.
    #[test]
    fn all_cells_are_exact_and_the_calibrated_count_meets_its_target() {
        let cat = catalog();
        let cells = Cells::new(&cat, 0.95).expect("the demo catalog has codebooks");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut found, mut one_cell, mut total) = (0, 0, 0);
        for _ in 0..200 {
            let h: Vec<u32> = (0..5).map(|_| rng.random_range(0..cat.len() as u32)).collect();
            let q = crate::recall::Ann::user_vector(&cat, &h);
            let want = exact(&cat, &q, 10);
            let all: Vec<u32> = cells.nearest_probing(&cat, &q, 10, usize::MAX, |_| true).iter().map(|x| x.0).collect();
            assert_eq!(all, want, "every cell probed: brute force");
            let got = cells.nearest(&cat, &q, 10, |_| true);
            found += got.iter().filter(|x| want.contains(&x.0)).count();
            one_cell += cells.nearest_probing(&cat, &q, 10, 1, |_| true).iter().filter(|x| want.contains(&x.0)).count();
            total += want.len();
        }
        let recall = found as f64 / total as f64;
        let single = one_cell as f64 / total as f64;
        eprintln!("probes {} recall {recall:.3} (one cell {single:.3}); curve {:?}", cells.probes(), cells.curve());
        assert!(recall >= 0.9, "recall {recall} with {} probes", cells.probes());
        assert!(single < recall, "one cell finds less ({single})");
    }

    /// A version that carries its rows in leaf order (written until the IVF
    /// index became the default): the index maps them (no copy), they are
    /// the rows a copy would hold, and the answers are those of an index over
    /// a copy (the same version without the file).
    #[test]
    fn a_saved_version_is_mapped_in_leaf_order() {
        let cat = catalog();
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (dir.path().join("with"), dir.path().join("without"));
        cat.save(&with).unwrap();
        cat.save(&without).unwrap();
        let version = std::fs::read_dir(&with).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
        assert!(!version.join(leaf_order::LEAF_FILE).exists(), "no longer written");
        let dim = cat.manifest().embedding_dim;
        let rows = Array::<u16>::map(&version.join("embeddings.f16"), cat.len() * dim).unwrap();
        leaf_order::write(&version, &rows, cat.base().trie.arrays().leaf_item, dim).unwrap();
        let (with, without) = (Catalog::load(&with).unwrap(), Catalog::load(&without).unwrap());
        let (mapped, copied) = (Cells::new(&with, 0.95).unwrap(), Cells::new(&without, 0.95).unwrap());
        match (&mapped.by_leaf, &copied.by_leaf) {
            (Embeddings::F16(a), Embeddings::F16(b)) => {
                assert!(a.is_mapped() && !b.is_mapped(), "mapped from the file / copied at open");
                assert_eq!(&a[..], &b[..]);
            }
            _ => panic!("a saved version holds f16 rows"),
        }
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for _ in 0..50 {
            let h: Vec<u32> = (0..5).map(|_| rng.random_range(0..cat.len() as u32)).collect();
            let q = crate::recall::Ann::user_vector(&with, &h);
            let a = mapped.nearest_probing(&with, &q, 10, 4, |_| true);
            let b = copied.nearest_probing(&without, &q, 10, 4, |_| true);
            assert_eq!(a.len(), 10);
            assert_eq!(a, b);
        }
    }

    /// Live edits are in their cells at once: an added item is found by its
    /// own vector, a removed one never, and `keep` filters.
    #[test]
    fn follows_live_edits_through_the_trie() {
        let mut cat = catalog();
        let cells = Cells::new(&cat, 0.95).unwrap();
        let v = cat.embedding(5);
        let sid5 = cat.sid(5).to_vec();
        let view = cat.trie();
        let free = view.free_code(view.walk(&sid5[..2]), cat.trie().codebook_sizes()[2]).unwrap();
        let item = NewItem {
            id: "fresh".into(),
            title: "fresh".into(),
            embedding: v.clone(),
            semantic_id: Some(vec![sid5[0], sid5[1], free]),
            expires_at_ms: None,
        };
        let placed = cat.upsert(item, 1).unwrap();
        let got = cells.nearest(&cat, &v, 2, |_| true);
        let items: Vec<u32> = got.iter().map(|x| x.0).collect();
        assert!(items.contains(&placed.item) && items.contains(&5), "{items:?}");
        let id5 = cat.item_id(5).to_string();
        cat.remove(&id5, 2).unwrap();
        let got = cells.nearest(&cat, &v, 5, |_| true);
        assert!(!got.iter().any(|x| x.0 == 5), "a removed item is never found");
        let got = cells.nearest(&cat, &v, 5, |i| i != placed.item);
        assert!(!got.iter().any(|x| x.0 == placed.item), "keep filters");
    }
}
