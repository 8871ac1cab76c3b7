//! Giving every item its semantic-ID codes from learned codebooks, at
//! catalog scale, in one process or split over many (`genrec assign --shard`).
//!
//! An item's code at a level is the nearest code to its residual (what the
//! levels above left), unless capacity turns it away (see
//! [`super::rqkmeans`]), which also changes its residual below. So the work
//! has two parts:
//! 1. **Nearest paths**, per item: at every level the few nearest codes and
//!    the nearest score, assuming the item got its nearest code at each level
//!    above. Items are independent, so any range of items can be done by any
//!    process ([`nearest_paths`]).
//! 2. **Resolution**, level by level over all items ([`assign_all`]): the
//!    capacity of each code under each prefix. An item that capacity already
//!    turned away at a level above is off its nearest path; its candidates
//!    are computed again from its real residual.
//!
//! Distances are summed row by row in one fixed order ([`LevelScorer`]), never
//! by a blocked matrix product whose rounding depends on the block. So a row's
//! candidates are the same bits in any process and any block, and a sharded
//! build equals the one-process build byte for byte.

use std::ops::Range;

use rayon::prelude::*;

use super::rows::Rows;
use super::CatalogError;

/// Learned codebooks: `books[l]` is level `l`'s `[k × dim]` centroids,
/// row-major (made by [`super::rqkmeans::learn_codebooks`], or read from a
/// file, [`super::shard::CodebooksFile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Codebooks {
    pub books: Vec<Vec<f32>>,
    pub k: usize,
    pub dim: usize,
}

/// Nearest codes kept per item and level.
pub const CANDIDATES: usize = 4;
/// Rows per block of work (and per progress step).
const BLOCK: usize = 8192;

/// Scores of one residual against every code of one level: `||c||² - 2 x·c`
/// (the squared distance less the residual's own `||x||²`), summed over the
/// dimensions in order.
pub struct LevelScorer {
    /// The codebook transposed, `[dim × k]`: one dimension's values for every code.
    columns: Vec<f32>,
    norms: Vec<f32>,
    k: usize,
}

impl LevelScorer {
    pub fn new(book: &[f32], dim: usize) -> Self {
        let k = book.len() / dim.max(1);
        let mut columns = vec![0f32; k * dim];
        for (c, row) in book.chunks_exact(dim).enumerate() {
            for (d, v) in row.iter().enumerate() {
                columns[d * k + c] = *v;
            }
        }
        let norms = book.chunks_exact(dim).map(|c| c.iter().map(|x| x * x).sum()).collect();
        LevelScorer { columns, norms, k }
    }

    /// Every code's score for residual `x` into `out` (`k` values).
    pub fn scores(&self, x: &[f32], out: &mut [f32]) {
        out.fill(0.0);
        for (xd, column) in x.iter().zip(self.columns.chunks_exact(self.k)) {
            for (o, c) in out.iter_mut().zip(column) {
                *o += xd * c;
            }
        }
        for (o, n) in out.iter_mut().zip(&self.norms) {
            *o = n - 2.0 * *o;
        }
    }

    /// The `m` nearest codes into `codes` (nearest first, ties to the lower
    /// code) and the nearest code's score; `scratch` holds `k` scores.
    pub fn nearest(&self, x: &[f32], codes: &mut [u32], scratch: &mut [f32]) -> f32 {
        self.scores(x, scratch);
        nearest_into(scratch, codes);
        scratch[codes[0] as usize]
    }
}

/// [`nearest_codes`] into `codes` (its length is `m`, at most the number of
/// scores), without allocating: by insertion into the few kept.
fn nearest_into(scores: &[f32], codes: &mut [u32]) {
    // codes come in ascending order: a tie stays behind the lower code
    let mut kept = 0;
    for (c, s) in scores.iter().enumerate() {
        let mut at = kept;
        while at > 0 && s.total_cmp(&scores[codes[at - 1] as usize]).is_lt() {
            at -= 1;
        }
        if at < codes.len() {
            let end = (kept + 1).min(codes.len());
            codes.copy_within(at..end - 1, at + 1);
            codes[at] = c as u32;
            kept = end;
        }
    }
}

/// The `m` smallest entries' indices, nearest first (ties: lower code).
pub fn nearest_codes(row: &[f32], m: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| row[*a as usize].total_cmp(&row[*b as usize]).then(a.cmp(b));
    if m < idx.len() {
        idx.select_nth_unstable_by(m - 1, cmp);
        idx.truncate(m);
    }
    idx.sort_by(cmp);
    idx
}

/// Row `i`'s residual before `level`, given its codes at the levels above
/// (`above[l]` for `l < level`): its embedding minus those codes' centroids.
fn residual_into(rows: &dyn Rows, books: &Codebooks, above: &[u32], i: usize, out: &mut [f32]) {
    let dim = books.dim;
    rows.row_into(i, out);
    for (book, &c) in books.books.iter().zip(above) {
        let c = c as usize;
        for (r, m) in out.iter_mut().zip(&book[c * dim..(c + 1) * dim]) {
            *r -= m;
        }
    }
}

/// Candidates along items' nearest paths, read back by the resolution: for
/// row `i` and `level`, its `m` nearest codes (nearest first) and the
/// nearest score, assuming its nearest code at every level above.
pub trait NearestPaths: Sync {
    /// Codes kept per item and level.
    fn width(&self) -> usize;
    fn candidates(&self, level: usize, row: usize) -> (&[u32], f32);
}

/// Receives one block of nearest paths: `(codes, best)`.
pub type BlockSink<'a> = dyn FnMut(&[u32], &[f32]) -> Result<(), CatalogError> + 'a;

/// Nearest paths of `range`'s rows, in blocks on all cores; `sink(codes,
/// best)` receives each block in row order: `codes` is `[rows × levels × m]`,
/// `best` is `[rows × levels]`. `progress(done, total)` counts rows.
pub fn nearest_paths(
    rows: &dyn Rows,
    books: &Codebooks,
    range: Range<usize>,
    sink: &mut BlockSink,
    progress: &dyn Fn(usize, usize),
) -> Result<(), CatalogError> {
    let levels = books.books.len();
    let m = CANDIDATES.min(books.k);
    let scorers: Vec<LevelScorer> = books.books.iter().map(|b| LevelScorer::new(b, books.dim)).collect();
    let total = range.len();
    let mut start = range.start;
    while start < range.end {
        let end = (start + 8 * BLOCK).min(range.end);
        let mut codes = vec![0u32; (end - start) * levels * m];
        let mut best = vec![0f32; (end - start) * levels];
        codes.par_chunks_mut(levels * m).zip(best.par_chunks_mut(levels)).enumerate().for_each_init(
            || (vec![0f32; books.dim], vec![0f32; books.k], Vec::with_capacity(levels)),
            |(x, scratch, path), (j, (c, b))| {
                path.clear();
                for (level, s) in scorers.iter().enumerate() {
                    residual_into(rows, books, path, start + j, x);
                    let cand = &mut c[level * m..(level + 1) * m];
                    b[level] = s.nearest(x, cand, scratch);
                    path.push(cand[0]);
                }
            },
        );
        sink(&codes, &best)?;
        start = end;
        progress(start - range.start, total);
    }
    Ok(())
}

/// Codes per item for every k-means level, capacity-bounded (see
/// [`super::rqkmeans`]): `max_group` is the largest group of items that may
/// share all k-means codes (0: unbounded). `paths` gives candidates computed
/// beforehand (by shards); without them every candidate is computed here.
/// Returns `codes[item * levels + l]` and the items moved per level.
pub fn assign_all(
    rows: &dyn Rows,
    books: &Codebooks,
    max_group: usize,
    paths: Option<&dyn NearestPaths>,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<(Vec<u32>, Vec<usize>), CatalogError> {
    let (n, dim, levels, k) = (rows.len(), books.dim, books.books.len(), books.k);
    // capacity of a code at level l: what the levels below can hold
    let cap = |l: usize| -> usize {
        if max_group == 0 {
            return usize::MAX;
        }
        (l + 1..levels).fold(max_group, |c, _| c.saturating_mul(k))
    };
    if max_group > 0 && n > cap(0).saturating_mul(k) {
        return Err(CatalogError::Format(format!(
            "{n} items do not fit {levels} levels of {k} codes with groups of at most {max_group}: raise --levels or --codebook-size"
        )));
    }
    if n >= u32::MAX as usize {
        return Err(CatalogError::Format(format!("{n} items exceed the u32 item index")));
    }
    let m = CANDIDATES.min(k);
    if let Some(p) = paths {
        if p.width() != m {
            return Err(CatalogError::Format(format!("assignments keep {} codes per level, expected {m}", p.width())));
        }
    }
    let scorers: Vec<LevelScorer> = books.books.iter().map(|b| LevelScorer::new(b, dim)).collect();
    let mut codes = vec![0u32; n * levels];
    let mut moved = Vec::new();
    for (level, scorer) in scorers.iter().enumerate() {
        let label = format!("assign level {level}");
        // 1. each item's m nearest codes: from its nearest path while it is
        // on it, else from its residual
        let mut cand = vec![0u32; n * m];
        let mut best = vec![0f32; n];
        let mut done = 0;
        for (b, (cand_b, best_b)) in cand.chunks_mut(BLOCK * m).zip(best.chunks_mut(BLOCK)).enumerate() {
            let start = b * BLOCK;
            let codes = &codes;
            cand_b.par_chunks_mut(m).zip(best_b.par_iter_mut()).enumerate().for_each_init(
                || (vec![0f32; dim], vec![0f32; k]),
                |(x, scratch), (j, (c, bst))| {
                    let i = start + j;
                    let above = &codes[i * levels..i * levels + level];
                    if let Some(p) = paths {
                        let on_path = above.iter().enumerate().all(|(l, &code)| p.candidates(l, i).0[0] == code);
                        if on_path {
                            let (given, score) = p.candidates(level, i);
                            c.copy_from_slice(given);
                            *bst = score;
                            return;
                        }
                    }
                    residual_into(rows, books, above, i, x);
                    *bst = scorer.nearest(x, c, scratch);
                },
            );
            done += best_b.len();
            progress(&label, done, n);
        }
        // 2. capacity per prefix group, confident items first
        let limit = cap(level);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.par_sort_unstable_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            codes[a * levels..a * levels + level]
                .cmp(&codes[b * levels..b * levels + level])
                .then(best[a].total_cmp(&best[b]))
                .then(a.cmp(&b))
        });
        let groups: Vec<&[u32]> = order
            .chunk_by(|&a, &b| {
                codes[a as usize * levels..a as usize * levels + level]
                    == codes[b as usize * levels..b as usize * levels + level]
            })
            .collect();
        // each group's picks, in `order` (4 B per item)
        let mut picks = vec![0u32; n];
        let mut parts: Vec<&mut [u32]> = Vec::with_capacity(groups.len());
        let mut rest = picks.as_mut_slice();
        for g in &groups {
            let (part, tail) = rest.split_at_mut(g.len());
            parts.push(part);
            rest = tail;
        }
        groups.par_iter().zip(parts.into_par_iter()).for_each(|(g, out)| {
            let mut count = vec![0usize; k];
            for (&item, pick_out) in g.iter().zip(out.iter_mut()) {
                let i = item as usize;
                let first = cand[i * m];
                let pick =
                    cand[i * m..(i + 1) * m].iter().copied().find(|&c| count[c as usize] < limit).unwrap_or_else(
                        || {
                            // every near code is full: the nearest with room, from all codes
                            let mut x = vec![0f32; dim];
                            residual_into(rows, books, &codes[i * levels..i * levels + level], i, &mut x);
                            let mut all = vec![0f32; k];
                            scorer.scores(&x, &mut all);
                            nearest_codes(&all, k).into_iter().find(|&c| count[c as usize] < limit).unwrap_or(first)
                        },
                    );
                count[pick as usize] += 1;
                *pick_out = pick;
            }
        });
        drop(groups);
        let mut moved_here = 0;
        for (&item, &pick) in order.iter().zip(&picks) {
            let i = item as usize;
            moved_here += usize::from(pick != cand[i * m]);
            codes[i * levels + level] = pick;
        }
        moved.push(moved_here);
    }
    Ok((codes, moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::rqkmeans::{learn_codebooks, RqOptions, SliceRows};
    use rand::{Rng, SeedableRng};

    /// Nearest paths held in memory, for a whole catalog.
    struct InMemory {
        levels: usize,
        m: usize,
        codes: Vec<u32>,
        best: Vec<f32>,
    }

    impl NearestPaths for InMemory {
        fn width(&self) -> usize {
            self.m
        }
        fn candidates(&self, level: usize, row: usize) -> (&[u32], f32) {
            let at = (row * self.levels + level) * self.m;
            (&self.codes[at..at + self.m], self.best[row * self.levels + level])
        }
    }

    fn crowded(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        // a third of the items near one point: capacity binds at every level
        for i in 0..n / 3 {
            for d in 0..dim {
                x[i * dim + d] = 0.5 + 0.01 * rng.random_range(-1.0f32..1.0);
            }
        }
        x
    }

    /// Candidates computed beforehand in ragged blocks (as shards do) give the
    /// codes computed in one pass, bit for bit, also where capacity moves
    /// items at every level; without the recomputation of off-path items
    /// they would not.
    #[test]
    fn precomputed_paths_give_the_one_pass_codes() {
        let (n, dim) = (6000, 5);
        let x = crowded(n, dim, 11);
        let rows = SliceRows { data: &x, dim };
        let o = RqOptions { levels: 3, codebook_size: 12, iterations: 6, seed: 2, sample: 2000, max_group: 6 };
        let books = learn_codebooks(&rows, &o, &|_, _, _| {}).unwrap();
        let (want, moved) = assign_all(&rows, &books, o.max_group, None, &|_, _, _| {}).unwrap();
        assert!(moved.iter().all(|&m| m > 0), "capacity must move items at every level: {moved:?}");
        let mut paths = InMemory { levels: 3, m: CANDIDATES, codes: Vec::new(), best: Vec::new() };
        for r in [0..1777, 1777..1778, 1778..n] {
            nearest_paths(
                &rows,
                &books,
                r,
                &mut |c, b| {
                    paths.codes.extend_from_slice(c);
                    paths.best.extend_from_slice(b);
                    Ok(())
                },
                &|_, _| {},
            )
            .unwrap();
        }
        assert_eq!(paths.best.len(), n * 3);
        let (got, moved_got) = assign_all(&rows, &books, o.max_group, Some(&paths), &|_, _, _| {}).unwrap();
        assert_eq!(moved_got, moved);
        assert_eq!(got, want);
    }

    /// The selection without allocation equals the sorting one, ties included.
    #[test]
    fn nearest_into_equals_nearest_codes_with_ties() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
        for _ in 0..500 {
            let k = rng.random_range(1..40);
            let scores: Vec<f32> = (0..k).map(|_| rng.random_range(0..5) as f32).collect();
            let m = rng.random_range(1..=k.min(6));
            let mut codes = vec![0u32; m];
            nearest_into(&scores, &mut codes);
            assert_eq!(codes, nearest_codes(&scores, m), "{scores:?}");
        }
    }

    /// The row scorer ranks codes as the exact squared distance does.
    #[test]
    fn scorer_ranks_by_distance() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (k, dim) = (37, 9);
        let book: Vec<f32> = (0..k * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let s = LevelScorer::new(&book, dim);
        for _ in 0..50 {
            let x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut codes = [0u32; 4];
            let mut scratch = vec![0f32; k];
            s.nearest(&x, &mut codes, &mut scratch);
            let exact: Vec<f32> =
                book.chunks_exact(dim).map(|c| c.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()).collect();
            let want = nearest_codes(&exact, 4);
            assert_eq!(codes.to_vec(), want);
        }
    }
}
