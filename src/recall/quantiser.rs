//! The coarse quantiser of the IVF index ([`super::ivf`]): a two-level
//! k-means tree (Nistér and Stewénius, "Scalable recognition with a
//! vocabulary tree", 2006, with two levels). A few hundred top centroids
//! split the catalog; each top cell is split again into sub-cells, as many
//! as its share of the sample, so dense regions get small cells. The
//! sub-cells are the index's cells.
//!
//! The tree is only for assignment, which must be cheap at 10^8 items and
//! for every live edit: an item goes to the nearest top centroid, then to
//! the nearest sub-cell under it (a few hundred dot products). Queries rank
//! all cells by distance (`q · c - |c|²/2` for a unit `q`), which needs no
//! tree: a neighbour just across a top cell's border is still found.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::RecallError;
use crate::catalog::base::dot8;
use crate::catalog::rqkmeans;

/// Lloyd iterations per k-means.
const KMEANS_ITERS: usize = 10;
/// Distance-matrix entries per block of an assignment (16 MB of f32).
const BLOCK_ENTRIES: usize = 1 << 22;

/// A two-level k-means tree over `dim`-dimensional rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantiser {
    pub(super) dim: usize,
    /// Top centroids, `[tops, dim]`.
    pub(super) top: Vec<f32>,
    /// The cells under top centroid `t` are `top_cells[t]..top_cells[t + 1]`.
    pub(super) top_cells: Vec<u32>,
    /// Cell centroids, `[cells, dim]`.
    pub(super) centroids: Vec<f32>,
    /// `|c|² / 2` of each cell centroid.
    half_norms: Vec<f32>,
    top_half_norms: Vec<f32>,
}

impl Quantiser {
    /// Learns a tree of about `cells` cells from `sample` (`[n, dim]`),
    /// deterministically for a given `seed`.
    pub fn train(sample: &[f32], dim: usize, cells: usize, seed: u64) -> Result<Self, RecallError> {
        let n = sample.len() / dim.max(1);
        if n == 0 || dim == 0 {
            return Err(RecallError::Index("no rows to learn the IVF cells from".into()));
        }
        let cells = cells.clamp(1, n);
        let tops = ((cells as f64).sqrt().ceil() as usize).clamp(1, cells);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let top = kmeans(sample, dim, tops, &mut rng)?;
        let top_of = assign(sample, &top, dim)?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); tops];
        for (i, &t) in top_of.iter().enumerate() {
            groups[t as usize].push(i);
        }
        // sub-cells in proportion to each top cell's share of the sample
        let subs: Vec<Vec<f32>> = groups
            .par_iter()
            .enumerate()
            .map(|(t, g)| {
                if g.is_empty() {
                    return Ok(top[t * dim..(t + 1) * dim].to_vec());
                }
                let k = ((cells as f64 * g.len() as f64 / n as f64).round() as usize).clamp(1, g.len());
                let x: Vec<f32> = g.iter().flat_map(|&i| sample[i * dim..(i + 1) * dim].iter().copied()).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                kmeans(&x, dim, k, &mut rng)
            })
            .collect::<Result<_, RecallError>>()?;
        let mut top_cells = vec![0u32];
        let mut centroids = Vec::new();
        for s in subs {
            centroids.extend_from_slice(&s);
            top_cells.push((centroids.len() / dim) as u32);
        }
        Ok(Self::from_parts(dim, top, top_cells, centroids))
    }

    /// A tree from its arrays (as saved).
    pub(super) fn from_parts(dim: usize, top: Vec<f32>, top_cells: Vec<u32>, centroids: Vec<f32>) -> Self {
        let half = |c: &[f32]| c.chunks_exact(dim).map(|r| 0.5 * dot8(r, r)).collect::<Vec<f32>>();
        let (half_norms, top_half_norms) = (half(&centroids), half(&top));
        Quantiser { dim, top, top_cells, centroids, half_norms, top_half_norms }
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.half_norms.len()
    }

    /// Number of top centroids.
    pub fn tops(&self) -> usize {
        self.top_half_norms.len()
    }

    /// Bytes held.
    pub fn memory(&self) -> usize {
        4 * (self.top.len() + self.top_cells.len() + self.centroids.len() + self.cells() + self.tops())
    }

    /// The top centroid whose cells hold `cell`.
    pub(super) fn top_of_cell(&self, cell: u32) -> usize {
        self.top_cells.partition_point(|&s| s <= cell).saturating_sub(1)
    }

    /// The cell of one row: its nearest top centroid, then the nearest cell
    /// under it.
    pub fn cell_of(&self, x: &[f32]) -> u32 {
        let nearest = |centroids: &[f32], half: &[f32]| {
            let mut best = (f32::NEG_INFINITY, 0usize);
            for (i, (c, h)) in centroids.chunks_exact(self.dim).zip(half).enumerate() {
                let s = dot8(c, x) - h;
                if s > best.0 {
                    best = (s, i);
                }
            }
            best.1
        };
        let t = nearest(&self.top, &self.top_half_norms);
        let (lo, hi) = (self.top_cells[t] as usize, self.top_cells[t + 1] as usize);
        lo as u32 + nearest(&self.centroids[lo * self.dim..hi * self.dim], &self.half_norms[lo..hi]) as u32
    }

    /// The cells of many rows (`[n, dim]`), as [`cell_of`](Self::cell_of)
    /// finds them but with matrix products.
    pub fn cells_of(&self, x: &[f32]) -> Result<Vec<u32>, RecallError> {
        let dim = self.dim;
        let tops = assign(x, &self.top, dim)?;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.tops()];
        for (i, &t) in tops.iter().enumerate() {
            groups[t as usize].push(i);
        }
        let mut out = vec![0u32; tops.len()];
        for (t, g) in groups.iter().enumerate().filter(|(_, g)| !g.is_empty()) {
            let (lo, hi) = (self.top_cells[t] as usize, self.top_cells[t + 1] as usize);
            let rows: Vec<f32> = g.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
            let local = assign(&rows, &self.centroids[lo * dim..hi * dim], dim)?;
            for (&i, c) in g.iter().zip(local) {
                out[i] = lo as u32 + c;
            }
        }
        Ok(out)
    }

    /// Every cell's score for a unit query: higher is nearer
    /// (`q · c - |c|² / 2`, the squared distance's order).
    pub fn scores(&self, q: &[f32]) -> Vec<f32> {
        self.centroids.chunks_exact(self.dim).zip(&self.half_norms).map(|(c, h)| dot8(c, q) - h).collect()
    }
}

/// Nearest centroid of every row (squared distance), in blocks whose
/// distance matrix stays small.
fn assign(x: &[f32], centroids: &[f32], dim: usize) -> Result<Vec<u32>, RecallError> {
    let k = (centroids.len() / dim).max(1);
    let rows_per_block = (BLOCK_ENTRIES / k).max(1);
    let mut out = Vec::with_capacity(x.len() / dim);
    for block in x.chunks(rows_per_block * dim) {
        out.extend(rqkmeans::assign(block, centroids, dim)?);
    }
    Ok(out)
}

/// Lloyd's k-means from `k` distinct random rows; an empty cluster takes a
/// random row.
fn kmeans(x: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>, RecallError> {
    let n = x.len() / dim;
    let k = k.clamp(1, n);
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut centroids: Vec<f32> = order[..k].iter().flat_map(|&i| row(i).iter().copied()).collect();
    if k == n {
        return Ok(centroids);
    }
    for _ in 0..KMEANS_ITERS {
        let a = assign(x, &centroids, dim)?;
        let (sums, counts) = rqkmeans::cluster_sums(x, dim, &a, k);
        for c in 0..k {
            let dst = &mut centroids[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                dst.copy_from_slice(row(rng.random_range(0..n)));
            } else {
                for (d, s) in dst.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                    *d = (*s / counts[c] as f64) as f32;
                }
            }
        }
    }
    Ok(centroids)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // a mixture of 20 directions, so the data has cells to find
        let centres: Vec<f32> = (0..20 * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = rng.random_range(0..20);
            let v: Vec<f32> = (0..dim).map(|j| centres[c * dim + j] + 0.4 * rng.random_range(-1.0f32..1.0)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            out.extend(v.iter().map(|x| x / norm));
        }
        out
    }

    /// Batch and one-row assignment agree, every cell is under one top, and
    /// training is deterministic.
    #[test]
    fn batch_and_single_assignment_agree() {
        let dim = 16;
        let x = unit_rows(5_000, dim, 1);
        let q = Quantiser::train(&x, dim, 200, 7).unwrap();
        assert!(q.cells() >= 150 && q.cells() <= 250, "{} cells", q.cells());
        assert_eq!(*q.top_cells.last().unwrap() as usize, q.cells());
        let batch = q.cells_of(&x).unwrap();
        let single: Vec<u32> = x.chunks_exact(dim).map(|r| q.cell_of(r)).collect();
        let same = batch.iter().zip(&single).filter(|(a, b)| a == b).count();
        // (ties between equally near centroids may break apart in f32)
        assert!(same >= x.len() / dim - 5, "{same} of {} agree", x.len() / dim);
        assert_eq!(q, Quantiser::train(&x, dim, 200, 7).unwrap());
        // a row sits in its own cell's top
        for (i, &c) in batch.iter().enumerate().step_by(97) {
            let t = q.top_of_cell(c);
            assert!(q.top_cells[t] <= c && c < q.top_cells[t + 1], "row {i}");
        }
    }
}
