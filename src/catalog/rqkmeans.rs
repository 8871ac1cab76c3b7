//! Semantic IDs by residual k-means (RQ-KMeans, as in OneRec, arXiv 2502.18965):
//! level 0 clusters the item embeddings, each next level clusters what the
//! previous levels' centroids left unexplained. A last code separates items whose
//! quantised codes collide (as in TIGER, arXiv 2305.05065), so every item gets a
//! unique ID. Deterministic for a given seed.
//!
//! At catalog scale (10^7 items) the codebooks are learned on a sample (as
//! FAISS trains k-means on at most 256 points per centroid) and every item is
//! then assigned in blocks on all cores, keeping only each item's few nearest
//! codes, never an items × codes matrix ([`super::assign`], which can also
//! split the assignment over processes). Assignment is capacity-bounded: a
//! code under a prefix takes at most `max_group × (codes of the levels below)`
//! items, so that no group of items sharing all k-means codes exceeds
//! `max_group` (the collision level's width). Items the capacity turns away go
//! to their next-nearest code, those nearest to a code first. Where no
//! capacity binds (every catalog whose natural groups are small), the result
//! is plain nearest-centroid assignment.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::assign::{assign_all, Codebooks};
pub use super::rows::{Rows, SliceRows};
use super::CatalogError;

/// Options of the quantiser.
#[derive(Debug, Clone)]
pub struct RqOptions {
    /// Number of k-means levels (the collision code comes on top).
    pub levels: usize,
    /// Codes per level (capped at the number of items).
    pub codebook_size: usize,
    /// Lloyd iterations per level.
    pub iterations: usize,
    pub seed: u64,
    /// Items the codebooks are learned on (all when the catalog is smaller).
    pub sample: usize,
    /// Largest group of items that may share all k-means codes (the
    /// collision level's width); 0: unbounded (plain nearest codes).
    pub max_group: usize,
}

/// Default sample: 256 points per centroid of a 256-code level.
pub const DEFAULT_SAMPLE: usize = 65_536;
/// Default largest collision group.
pub const DEFAULT_MAX_GROUP: usize = 32;

impl Default for RqOptions {
    fn default() -> Self {
        RqOptions {
            levels: 3,
            codebook_size: 256,
            iterations: 25,
            seed: 42,
            sample: DEFAULT_SAMPLE,
            max_group: DEFAULT_MAX_GROUP,
        }
    }
}

/// The result: codebooks per level and each item's full semantic ID.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// `codebooks[l]` is `[codes × dim]`, row-major.
    pub codebooks: Vec<Vec<f32>>,
    /// `sids[item * (levels + 1) + l]`; the last code is the collision code.
    pub sids: Vec<u32>,
    /// Codes per level, the collision level last (its size = largest collision group).
    pub codebook_sizes: Vec<u32>,
    /// Items whose k-means codes were shared with another item.
    pub collided_items: usize,
    /// Groups of items sharing the same k-means codes (size > 1).
    pub collision_groups: usize,
    /// Per k-means level: codes used by at least one item.
    pub used_codes: Vec<usize>,
    /// Items that capacity moved off their nearest code, per level.
    pub moved: Vec<usize>,
}

/// Learns codebooks on `emb` (`n × dim`, row-major) and assigns semantic IDs.
pub fn quantize(emb: &[f32], dim: usize, opts: &RqOptions) -> Result<Quantized, CatalogError> {
    if dim == 0 || !emb.len().is_multiple_of(dim) || emb.is_empty() {
        return Err(CatalogError::Format("embeddings: empty or not a multiple of dim".into()));
    }
    quantize_rows(&SliceRows { data: emb, dim }, opts, &|_, _, _| {})
}

/// [`quantize`] over any rows; `progress(phase, done, total)` reports the
/// long phases (`"codebooks"`, `"assign level L"`).
pub fn quantize_rows(
    rows: &dyn Rows,
    opts: &RqOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<Quantized, CatalogError> {
    let books = learn_codebooks(rows, opts, progress)?;
    let (codes, moved) = assign_all(rows, &books, opts.max_group, None, progress)?;
    Ok(with_collision_codes(codes, books.books, opts.levels, books.k, moved))
}

/// Learns the codebooks of every level on a uniform sample of `rows`
/// (`opts.sample`; every row when the catalog is smaller), each level on what
/// the levels above left of the sample.
pub fn learn_codebooks(
    rows: &dyn Rows,
    opts: &RqOptions,
    progress: &(dyn Fn(&str, usize, usize) + Sync),
) -> Result<Codebooks, CatalogError> {
    let (n, dim) = (rows.len(), rows.dim());
    if dim == 0 || n == 0 {
        return Err(CatalogError::Format("embeddings: no rows".into()));
    }
    if opts.levels == 0 || opts.codebook_size == 0 {
        return Err(CatalogError::Format("levels and codebook size must be positive".into()));
    }
    if n >= u32::MAX as usize {
        return Err(CatalogError::Format(format!("{n} items exceed the u32 item index")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    // the sample: every row when the catalog is small enough
    let sample_rows: Vec<usize> = if n <= opts.sample.max(1) {
        (0..n).collect()
    } else {
        let mut v = rand::seq::index::sample(&mut rng, n, opts.sample.max(1)).into_vec();
        v.sort_unstable();
        v
    };
    let s = sample_rows.len();
    let mut residual = vec![0f32; s * dim];
    residual.par_chunks_mut(dim).zip(sample_rows.par_iter()).for_each(|(out, &i)| rows.row_into(i, out));
    let k = opts.codebook_size.min(s);
    let mut books = Vec::new();
    for level in 0..opts.levels {
        progress("codebooks", level, opts.levels);
        let centroids = kmeans(&residual, dim, k, opts.iterations, &mut rng)?;
        let a = assign(&residual, &centroids, dim)?;
        residual.par_chunks_mut(dim).zip(a.par_iter()).for_each(|(row, &c)| {
            for (r, m) in row.iter_mut().zip(&centroids[c as usize * dim..(c as usize + 1) * dim]) {
                *r -= m;
            }
        });
        books.push(centroids);
    }
    progress("codebooks", opts.levels, opts.levels);
    Ok(Codebooks { books, k, dim })
}

/// Appends the collision code (rank among the items with the same k-means
/// codes, by item) and gathers the statistics. Every code must be below `k`.
pub(crate) fn with_collision_codes(
    codes: Vec<u32>,
    codebooks: Vec<Vec<f32>>,
    levels: usize,
    k: usize,
    moved: Vec<usize>,
) -> Quantized {
    let n = codes.len() / levels;
    let key = |i: usize| &codes[i * levels..(i + 1) * levels];
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.par_sort_unstable_by(|&a, &b| key(a as usize).cmp(key(b as usize)).then(a.cmp(&b)));
    let full = levels + 1;
    let mut sids = vec![0u32; n * full];
    let (mut max_group, mut collided, mut groups) = (1usize, 0usize, 0usize);
    for g in order.chunk_by(|&a, &b| key(a as usize) == key(b as usize)) {
        if g.len() > 1 {
            groups += 1;
            collided += g.len();
        }
        max_group = max_group.max(g.len());
        for (rank, &item) in g.iter().enumerate() {
            let item = item as usize;
            sids[item * full..item * full + levels].copy_from_slice(key(item));
            sids[item * full + levels] = rank as u32;
        }
    }
    let used_codes = (0..levels)
        .map(|l| {
            let mut used = vec![false; k];
            (0..n).for_each(|i| used[codes[i * levels + l] as usize] = true);
            used.iter().filter(|u| **u).count()
        })
        .collect();
    let mut codebook_sizes = vec![k as u32; levels];
    codebook_sizes.push(max_group as u32);
    Quantized { codebooks, sids, codebook_sizes, collided_items: collided, collision_groups: groups, used_codes, moved }
}

/// Nearest centroid of every row (squared Euclidean), with a BLAS-style matmul.
pub fn assign(x: &[f32], centroids: &[f32], dim: usize) -> Result<Vec<u32>, CatalogError> {
    let n = x.len() / dim;
    let k = centroids.len() / dim;
    let dev = Device::Cpu;
    let xt = Tensor::from_slice(x, (n, dim), &dev)?;
    let ct = Tensor::from_slice(centroids, (k, dim), &dev)?;
    // ||x - c||² = ||x||² - 2 x·c + ||c||²; ||x||² is constant per row.
    let cn = ct.sqr()?.sum(1)?; // [k]
    let dots = xt.matmul(&ct.t()?)?; // [n, k]
    let d = dots.affine(-2.0, 0.0)?.broadcast_add(&cn.unsqueeze(0)?)?;
    Ok(d.argmin(1)?.to_vec1::<u32>()?)
}

/// Per cluster of `assignment` (one of `k` per row of `x`): the sum of its
/// rows in f64 (`[k, dim]`) and its size.
pub(crate) fn cluster_sums(x: &[f32], dim: usize, assignment: &[u32], k: usize) -> (Vec<f64>, Vec<usize>) {
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    for (row, &c) in x.chunks_exact(dim).zip(assignment) {
        counts[c as usize] += 1;
        for (s, v) in sums[c as usize * dim..(c as usize + 1) * dim].iter_mut().zip(row) {
            *s += *v as f64;
        }
    }
    (sums, counts)
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Lloyd's k-means with k-means++ seeding; empty clusters are re-seeded with the
/// point farthest from its centroid.
fn kmeans(x: &[f32], dim: usize, k: usize, iters: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>, CatalogError> {
    let n = x.len() / dim;
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    // k-means++ seeding
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centroids.extend_from_slice(row(first));
    let mut best: Vec<f32> = (0..n).map(|i| sq_dist(row(i), row(first))).collect();
    for _ in 1..k {
        let total: f64 = best.iter().map(|&d| d as f64).sum();
        let pick = if total <= 0.0 {
            rng.random_range(0..n)
        } else {
            let mut t = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &d) in best.iter().enumerate() {
                t -= d as f64;
                if t <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        };
        let c = row(pick).to_vec();
        for (i, b) in best.iter_mut().enumerate() {
            let d = sq_dist(row(i), &c);
            if d < *b {
                *b = d;
            }
        }
        centroids.extend_from_slice(&c);
    }
    for _ in 0..iters {
        let a = assign(x, &centroids, dim)?;
        let (sums, counts) = cluster_sums(x, dim, &a, k);
        let mut next = vec![0f32; k * dim];
        let mut empty = Vec::new();
        for c in 0..k {
            if counts[c] == 0 {
                empty.push(c);
                next[c * dim..(c + 1) * dim].copy_from_slice(&centroids[c * dim..(c + 1) * dim]);
                continue;
            }
            for j in 0..dim {
                next[c * dim + j] = (sums[c * dim + j] / counts[c] as f64) as f32;
            }
        }
        if !empty.is_empty() {
            // farthest points (from their own centroid) become the new centroids
            let mut far: Vec<(f32, usize)> = a
                .iter()
                .enumerate()
                .map(|(i, &c)| (sq_dist(row(i), &next[c as usize * dim..(c as usize + 1) * dim]), i))
                .collect();
            far.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
            for (slot, (_, i)) in empty.iter().zip(far) {
                next[slot * dim..(slot + 1) * dim].copy_from_slice(row(i));
            }
        }
        let moved: f32 = sq_dist(&next, &centroids);
        centroids = next;
        if moved < 1e-10 {
            break;
        }
    }
    Ok(centroids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(seed: u64) -> Vec<f32> {
        // four well-separated 2-d blobs of 25 points
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0), (10.0, 10.0)];
        let mut v = Vec::new();
        for (cx, cy) in centers {
            for _ in 0..25 {
                v.push(cx + rng.random_range(-1.0f32..1.0));
                v.push(cy + rng.random_range(-1.0f32..1.0));
            }
        }
        v
    }

    #[test]
    fn first_level_recovers_blobs_and_ids_are_unique() {
        let x = blobs(3);
        let q =
            quantize(&x, 2, &RqOptions { levels: 2, codebook_size: 4, iterations: 20, seed: 7, ..Default::default() })
                .unwrap();
        // items of one blob share their first code, different blobs differ
        for b in 0..4 {
            let c0 = q.sids[b * 25 * 3];
            for i in b * 25..(b + 1) * 25 {
                assert_eq!(q.sids[i * 3], c0);
            }
        }
        let firsts: std::collections::BTreeSet<u32> = (0..4).map(|b| q.sids[b * 25 * 3]).collect();
        assert_eq!(firsts.len(), 4);
        let ids: std::collections::BTreeSet<&[u32]> = (0..100).map(|i| &q.sids[i * 3..i * 3 + 3]).collect();
        assert_eq!(ids.len(), 100, "collision code makes IDs unique");
        assert_eq!(q.used_codes[0], 4);
        assert_eq!(q.codebook_sizes.len(), 3);
    }

    #[test]
    fn same_seed_same_ids_and_residuals_shrink() {
        let x = blobs(5);
        let o = RqOptions { levels: 3, codebook_size: 8, iterations: 15, seed: 11, ..Default::default() };
        let a = quantize(&x, 2, &o).unwrap();
        let b = quantize(&x, 2, &o).unwrap();
        assert_eq!(a.sids, b.sids);
        // reconstruction error falls with each level
        let mut errs = Vec::new();
        for upto in 1..=3 {
            let mut e = 0.0;
            for i in 0..100 {
                let mut r = [x[i * 2], x[i * 2 + 1]];
                for l in 0..upto {
                    let c = a.sids[i * 4 + l] as usize;
                    r[0] -= a.codebooks[l][c * 2];
                    r[1] -= a.codebooks[l][c * 2 + 1];
                }
                e += r[0] * r[0] + r[1] * r[1];
            }
            errs.push(e);
        }
        assert!(errs[1] < errs[0] && errs[2] < errs[1], "{errs:?}");
    }

    #[test]
    fn identical_embeddings_get_distinct_collision_codes() {
        let x = vec![1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 5.0];
        let q =
            quantize(&x, 2, &RqOptions { levels: 1, codebook_size: 2, iterations: 5, seed: 1, ..Default::default() })
                .unwrap();
        assert_eq!(q.codebook_sizes, vec![2, 3]);
        assert_eq!(q.collision_groups, 1);
        assert_eq!(q.collided_items, 3);
        let last: Vec<u32> = (0..3).map(|i| q.sids[i * 2 + 1]).collect();
        assert_eq!(last, vec![0, 1, 2]);
    }

    /// The whole-matrix RQ-KMeans of earlier versions: k-means and nearest
    /// codes over every item, level after level.
    fn reference(x: &[f32], dim: usize, o: &RqOptions) -> Vec<u32> {
        let n = x.len() / dim;
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let mut residual = x.to_vec();
        let k = o.codebook_size.min(n);
        let mut codes = vec![0u32; n * o.levels];
        for level in 0..o.levels {
            let c = kmeans(&residual, dim, k, o.iterations, &mut rng).unwrap();
            let a = assign(&residual, &c, dim).unwrap();
            for (i, &code) in a.iter().enumerate() {
                codes[i * o.levels + level] = code;
                for (r, m) in
                    residual[i * dim..(i + 1) * dim].iter_mut().zip(&c[code as usize * dim..(code as usize + 1) * dim])
                {
                    *r -= m;
                }
            }
        }
        codes
    }

    fn random(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Where no capacity binds, the blocked assignment gives exactly the
    /// whole-matrix nearest codes (the catalogs of earlier versions).
    #[test]
    fn without_binding_capacity_codes_are_the_nearest_ones() {
        let (n, dim) = (20_000, 6);
        let x = random(n, dim, 1);
        for max_group in [0, 1_000_000] {
            let o = RqOptions { levels: 2, codebook_size: 16, iterations: 8, seed: 5, sample: n, max_group };
            let q = quantize(&x, dim, &o).unwrap();
            let want = reference(&x, dim, &o);
            let got: Vec<u32> = (0..n).flat_map(|i| q.sids[i * 3..i * 3 + 2].to_vec()).collect();
            assert_eq!(got, want, "max_group {max_group}");
            assert_eq!(q.moved, vec![0, 0]);
        }
    }

    /// Crowded data (many near-duplicates): no group of items sharing their
    /// k-means codes exceeds the bound, and every ID stays unique.
    #[test]
    fn max_group_bounds_every_collision_group() {
        let dim = 4;
        let mut x = random(4000, dim, 2);
        // a quarter of the items on one point, another quarter on another
        for i in 0..1000 {
            x[i * dim..(i + 1) * dim].copy_from_slice(&[0.5, 0.5, 0.5, 0.5]);
        }
        for i in 1000..2000 {
            x[i * dim..(i + 1) * dim].copy_from_slice(&[-0.5, 0.2, 0.1, 0.0]);
        }
        let free = quantize(
            &x,
            dim,
            &RqOptions { levels: 2, codebook_size: 16, iterations: 10, seed: 3, sample: 1000, max_group: 0 },
        )
        .unwrap();
        assert!(*free.codebook_sizes.last().unwrap() >= 1000, "{:?}", free.codebook_sizes);
        let o = RqOptions { levels: 2, codebook_size: 16, iterations: 10, seed: 3, sample: 1000, max_group: 16 };
        let q = quantize(&x, dim, &o).unwrap();
        assert!(*q.codebook_sizes.last().unwrap() <= 16, "{:?}", q.codebook_sizes);
        assert!(q.moved.iter().sum::<usize>() > 0);
        let ids: std::collections::BTreeSet<&[u32]> = (0..4000).map(|i| &q.sids[i * 3..i * 3 + 3]).collect();
        assert_eq!(ids.len(), 4000);
        // too many items for the bound is an error, not a silent overflow
        let tight = RqOptions { levels: 1, codebook_size: 4, iterations: 2, seed: 1, sample: 100, max_group: 2 };
        assert!(quantize(&x[..40 * dim], dim, &tight).is_err());
        // sampled codebooks: the same seed gives the same IDs
        let a = quantize(&x, dim, &RqOptions { sample: 500, ..o.clone() }).unwrap();
        let b = quantize(&x, dim, &RqOptions { sample: 500, ..o }).unwrap();
        assert_eq!(a.sids, b.sids);
    }
}
