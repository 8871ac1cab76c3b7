//! Collaborative item embeddings, mixed into the content embeddings before
//! RQ-KMeans so that semantic IDs group items that users buy together, not
//! only items whose texts read alike (the idea behind LC-Rec, arXiv 2311.09049,
//! and LETTER, arXiv 2405.07314, here in its simplest form).
//!
//! Items that occur near each other in users' training sequences are counted
//! (weight 1/distance within a window), the counts turned into positive
//! pointwise mutual information (PPMI), and the PPMI matrix reduced to `dim`
//! dimensions by randomised subspace iteration. An item's vector is its row of
//! `P·Q` (Q an orthonormal basis of P's dominant subspace): the rank-`dim`
//! approximation of P up to a rotation, which RQ-KMeans, working with
//! Euclidean distances, cannot tell apart from the singular vectors.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// How the collaborative embeddings are made.
#[derive(Debug, Clone)]
pub struct CollabOptions {
    /// Dimensions kept.
    pub dim: usize,
    /// Items at most this far apart in a sequence count as co-occurring.
    pub window: usize,
    /// Subspace (power) iterations.
    pub iterations: usize,
    pub seed: u64,
}

impl Default for CollabOptions {
    fn default() -> Self {
        CollabOptions { dim: 64, window: 3, iterations: 8, seed: 42 }
    }
}

/// Symmetric sparse matrix in compressed rows.
struct Csr {
    start: Vec<usize>,
    col: Vec<u32>,
    val: Vec<f32>,
}

impl Csr {
    /// `y = self · x` for `x` of `cols` columns stored row-major (`n × cols`).
    fn mul(&self, x: &[f32], cols: usize) -> Vec<f32> {
        let n = self.start.len() - 1;
        let mut y = vec![0f32; n * cols];
        for (i, yi) in y.chunks_mut(cols).enumerate() {
            for p in self.start[i]..self.start[i + 1] {
                let (j, w) = (self.col[p] as usize, self.val[p]);
                for (a, b) in yi.iter_mut().zip(&x[j * cols..(j + 1) * cols]) {
                    *a += w * b;
                }
            }
        }
        y
    }
}

/// PPMI of weighted co-occurrence counts; items never seen get empty rows.
fn ppmi(items: usize, sequences: &[Vec<u32>], window: usize) -> Csr {
    let mut rows: Vec<HashMap<u32, f32>> = vec![HashMap::new(); items];
    for s in sequences {
        for a in 0..s.len() {
            for b in a + 1..s.len().min(a + 1 + window) {
                let w = 1.0 / (b - a) as f32;
                let (x, y) = (s[a], s[b]);
                *rows[x as usize].entry(y).or_default() += w;
                *rows[y as usize].entry(x).or_default() += w;
            }
        }
    }
    let sums: Vec<f64> = rows.iter().map(|r| r.values().map(|&v| v as f64).sum()).collect();
    let total: f64 = sums.iter().sum();
    let mut csr = Csr { start: vec![0], col: Vec::new(), val: Vec::new() };
    for (i, r) in rows.iter().enumerate() {
        let mut entries: Vec<(u32, f32)> = r
            .iter()
            .filter_map(|(&j, &c)| {
                let pmi = (c as f64 * total / (sums[i] * sums[j as usize])).ln();
                (pmi > 0.0).then_some((j, pmi as f32))
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        for (j, v) in entries {
            csr.col.push(j);
            csr.val.push(v);
        }
        csr.start.push(csr.col.len());
    }
    csr
}

/// Orthonormalises the `cols` columns of row-major `x` (`n × cols`) in place
/// (modified Gram-Schmidt; a column that vanishes is left zero).
fn orthonormalise(x: &mut [f32], cols: usize) {
    let n = x.len() / cols;
    for c in 0..cols {
        for p in 0..c {
            let dot: f64 = (0..n).map(|i| x[i * cols + c] as f64 * x[i * cols + p] as f64).sum();
            for i in 0..n {
                x[i * cols + c] -= (dot as f32) * x[i * cols + p];
            }
        }
        let norm = (0..n).map(|i| (x[i * cols + c] as f64).powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 1e-9 { (1.0 / norm) as f32 } else { 0.0 };
        for i in 0..n {
            x[i * cols + c] *= inv;
        }
    }
}

/// Collaborative embeddings (`items × opts.dim`, row-major, rows L2-normalised;
/// all-zero for items that co-occur with nothing) from item-index sequences.
pub fn collaborative_embeddings(items: usize, sequences: &[Vec<u32>], opts: &CollabOptions) -> Vec<f32> {
    let dim = opts.dim.max(1);
    let p = ppmi(items, sequences, opts.window.max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut q: Vec<f32> = (0..items * dim).map(|_| StandardNormal.sample(&mut rng)).collect();
    orthonormalise(&mut q, dim);
    for _ in 0..opts.iterations {
        q = p.mul(&q, dim);
        orthonormalise(&mut q, dim);
    }
    let mut e = p.mul(&q, dim);
    for row in e.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 1e-12 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    e
}

/// Concatenates unit-norm content rows (`dim_a`) and collaborative rows
/// (`dim_b`) as `[sqrt(1-w)·a, sqrt(w)·b]`, then re-normalises each row (an item
/// without collaborative signal keeps its content direction).
pub fn mix(content: &[f32], dim_a: usize, collab: &[f32], dim_b: usize, weight: f32) -> Vec<f32> {
    let (wa, wb) = ((1.0 - weight).max(0.0).sqrt(), weight.max(0.0).sqrt());
    let mut out = Vec::with_capacity(content.len() / dim_a * (dim_a + dim_b));
    for (a, b) in content.chunks(dim_a).zip(collab.chunks(dim_b)) {
        let start = out.len();
        out.extend(a.iter().map(|x| x * wa));
        out.extend(b.iter().map(|x| x * wb));
        let row = &mut out[start..];
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_bought_together_embed_close() {
        // two groups of items that only ever co-occur within their group
        let mut seqs = Vec::new();
        for u in 0..200u32 {
            let g = (u % 2) * 5;
            seqs.push((0..5).map(|i| g + (i + u) % 5).collect::<Vec<u32>>());
        }
        let e = collaborative_embeddings(11, &seqs, &CollabOptions { dim: 4, ..Default::default() });
        let dot = |a: usize, b: usize| (0..4).map(|d| e[a * 4 + d] * e[b * 4 + d]).sum::<f32>();
        assert!(dot(0, 1) > 0.5 && dot(5, 6) > 0.5, "same group: {} {}", dot(0, 1), dot(5, 6));
        assert!(dot(0, 5).abs() < 0.2, "other group: {}", dot(0, 5));
        // item 10 never occurs: zero row
        assert!(e[40..44].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn mix_weights_and_normalises() {
        let m = mix(&[1.0, 0.0], 2, &[0.0, 1.0], 2, 0.25);
        assert!((m[0] - 0.75f32.sqrt()).abs() < 1e-6 && (m[3] - 0.5).abs() < 1e-6);
        let m = mix(&[0.0, 1.0], 2, &[0.0, 0.0], 2, 0.5);
        assert!((m[1] - 1.0).abs() < 1e-6, "no collaborative signal keeps the content direction");
    }
}
