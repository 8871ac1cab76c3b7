//! Semantic IDs by residual k-means (RQ-KMeans, as in OneRec, arXiv 2502.18965):
//! level 0 clusters the item embeddings, each next level clusters what the
//! previous levels' centroids left unexplained. A last code separates items whose
//! quantised codes collide (as in TIGER, arXiv 2305.05065), so every item gets a
//! unique ID. Deterministic for a given seed.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
}

impl Default for RqOptions {
    fn default() -> Self {
        RqOptions { levels: 3, codebook_size: 256, iterations: 25, seed: 42 }
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
}

/// Learns codebooks on `emb` (`n × dim`, row-major) and assigns semantic IDs.
pub fn quantize(emb: &[f32], dim: usize, opts: &RqOptions) -> Result<Quantized, CatalogError> {
    if dim == 0 || emb.len() % dim != 0 || emb.is_empty() {
        return Err(CatalogError::Format("embeddings: empty or not a multiple of dim".into()));
    }
    if opts.levels == 0 || opts.codebook_size == 0 {
        return Err(CatalogError::Format("levels and codebook size must be positive".into()));
    }
    let n = emb.len() / dim;
    let k = opts.codebook_size.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut residual = emb.to_vec();
    let mut codes = vec![0u32; n * opts.levels];
    let mut codebooks = Vec::new();
    let mut used_codes = Vec::new();
    for level in 0..opts.levels {
        let centroids = kmeans(&residual, dim, k, opts.iterations, &mut rng)?;
        let assign = assign(&residual, &centroids, dim)?;
        let mut used = vec![false; k];
        for (i, &c) in assign.iter().enumerate() {
            codes[i * opts.levels + level] = c;
            used[c as usize] = true;
            let row = &mut residual[i * dim..(i + 1) * dim];
            for (r, m) in row.iter_mut().zip(&centroids[c as usize * dim..(c as usize + 1) * dim]) {
                *r -= m;
            }
        }
        used_codes.push(used.iter().filter(|u| **u).count());
        codebooks.push(centroids);
    }
    // Collision code: rank of the item among items with the same codes.
    let mut order: Vec<usize> = (0..n).collect();
    let key = |i: usize| &codes[i * opts.levels..(i + 1) * opts.levels];
    order.sort_by(|&a, &b| key(a).cmp(key(b)).then(a.cmp(&b)));
    let full = opts.levels + 1;
    let mut sids = vec![0u32; n * full];
    let (mut max_group, mut collided, mut groups) = (1usize, 0usize, 0usize);
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && key(order[end]) == key(order[start]) {
            end += 1;
        }
        let size = end - start;
        if size > 1 {
            groups += 1;
            collided += size;
        }
        max_group = max_group.max(size);
        for (rank, &item) in order[start..end].iter().enumerate() {
            sids[item * full..item * full + opts.levels].copy_from_slice(key(item));
            sids[item * full + opts.levels] = rank as u32;
        }
        start = end;
    }
    let mut codebook_sizes = vec![k as u32; opts.levels];
    codebook_sizes.push(max_group as u32);
    Ok(Quantized { codebooks, sids, codebook_sizes, collided_items: collided, collision_groups: groups, used_codes })
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
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &c) in a.iter().enumerate() {
            counts[c as usize] += 1;
            for (s, v) in sums[c as usize * dim..(c as usize + 1) * dim].iter_mut().zip(row(i)) {
                *s += *v as f64;
            }
        }
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
        let q = quantize(&x, 2, &RqOptions { levels: 2, codebook_size: 4, iterations: 20, seed: 7 }).unwrap();
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
        let o = RqOptions { levels: 3, codebook_size: 8, iterations: 15, seed: 11 };
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
        let q = quantize(&x, 2, &RqOptions { levels: 1, codebook_size: 2, iterations: 5, seed: 1 }).unwrap();
        assert_eq!(q.codebook_sizes, vec![2, 3]);
        assert_eq!(q.collision_groups, 1);
        assert_eq!(q.collided_items, 3);
        let last: Vec<u32> = (0..3).map(|i| q.sids[i * 2 + 1]).collect();
        assert_eq!(last, vec![0, 1, 2]);
    }
}
