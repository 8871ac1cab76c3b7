//! Collaborative item embeddings, mixed into the content embeddings before
//! RQ-KMeans so that semantic IDs group items that users buy together, not
//! only items whose texts read alike (the idea behind LC-Rec, arXiv 2311.09049,
//! and LETTER, arXiv 2405.07314, here in its simplest form).
//!
//! Items that occur near each other in users' training sequences are counted
//! (weight 1/distance within a window), the counts turned into positive
//! pointwise mutual information (PPMI), and the PPMI matrix factorised by a
//! randomised truncated eigendecomposition (subspace iteration, then
//! Rayleigh-Ritz with a Jacobi eigensolver on the small projected matrix). An
//! item's vector is its row of the top eigenvectors scaled by the square roots
//! of the eigenvalues' magnitudes (as in word-embedding SVD of PPMI).

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
    fn mul(&self, x: &[f64], cols: usize) -> Vec<f64> {
        let n = self.start.len() - 1;
        let mut y = vec![0f64; n * cols];
        for (i, yi) in y.chunks_mut(cols).enumerate() {
            for p in self.start[i]..self.start[i + 1] {
                let (j, w) = (self.col[p] as usize, self.val[p] as f64);
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

/// Orthonormalises the `cols` columns of row-major `x` (`n × cols`) in place:
/// modified Gram-Schmidt, twice (one pass loses orthogonality when columns
/// are nearly dependent). A column with nothing left beyond the others (a
/// direction the matrix annihilates) is set to zero.
fn orthonormalise(x: &mut [f64], cols: usize) {
    let n = x.len() / cols;
    for c in 0..cols {
        let before = (0..n).map(|i| x[i * cols + c].powi(2)).sum::<f64>().sqrt();
        for _pass in 0..2 {
            for p in 0..c {
                let dot: f64 = (0..n).map(|i| x[i * cols + c] * x[i * cols + p]).sum();
                for i in 0..n {
                    x[i * cols + c] -= dot * x[i * cols + p];
                }
            }
        }
        let norm = (0..n).map(|i| x[i * cols + c].powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 1e-10 * before.max(1e-300) { 1.0 / norm } else { 0.0 };
        for i in 0..n {
            x[i * cols + c] *= inv;
        }
    }
}

/// Eigenvalues and eigenvectors (columns of row-major `v`) of the symmetric
/// `n × n` matrix `a`, by cyclic Jacobi rotations.
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off < 1e-18 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Extra basis vectors of the subspace iteration beyond `dim`.
const OVERSAMPLE: usize = 8;

/// Collaborative embeddings (`items × opts.dim`, row-major, rows L2-normalised;
/// all-zero for items that co-occur with nothing) from item-index sequences.
pub fn collaborative_embeddings(items: usize, sequences: &[Vec<u32>], opts: &CollabOptions) -> Vec<f32> {
    let dim = opts.dim.max(1);
    let q = (dim + OVERSAMPLE).min(items.max(1));
    let p = ppmi(items, sequences, opts.window.max(1));
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut basis: Vec<f64> = (0..items * q).map(|_| StandardNormal.sample(&mut rng)).collect();
    orthonormalise(&mut basis, q);
    for _ in 0..opts.iterations {
        basis = p.mul(&basis, q);
        orthonormalise(&mut basis, q);
    }
    // Rayleigh-Ritz: B = Qᵀ P Q, eigenvectors of P ≈ Q·eigvec(B)
    let pq = p.mul(&basis, q);
    let mut b = vec![0f64; q * q];
    for i in 0..items {
        let (qi, pi) = (&basis[i * q..(i + 1) * q], &pq[i * q..(i + 1) * q]);
        for r in 0..q {
            for c in 0..q {
                b[r * q + c] += qi[r] * pi[c];
            }
        }
    }
    for r in 0..q {
        for c in r + 1..q {
            let m = 0.5 * (b[r * q + c] + b[c * q + r]);
            b[r * q + c] = m;
            b[c * q + r] = m;
        }
    }
    let (vals, vecs) = jacobi_eigen(b, q);
    let mut order: Vec<usize> = (0..q).collect();
    order.sort_by(|&x, &y| vals[y].abs().total_cmp(&vals[x].abs()));
    let keep: Vec<usize> = order.into_iter().take(dim.min(q)).collect();
    let mut e = vec![0f32; items * dim];
    for i in 0..items {
        let qi = &basis[i * q..(i + 1) * q];
        for (d, &k) in keep.iter().enumerate() {
            let x: f64 = (0..q).map(|r| qi[r] * vecs[r * q + k]).sum();
            e[i * dim + d] = (x * vals[k].abs().sqrt()) as f32;
        }
    }
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
        // two groups (5 and 4 items) that only ever co-occur within themselves,
        // in random orders
        use rand::seq::SliceRandom;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seqs = Vec::new();
        for u in 0..400u32 {
            let mut s: Vec<u32> = if u % 2 == 0 { (0..5).collect() } else { (5..9).collect() };
            s.shuffle(&mut rng);
            seqs.push(s);
        }
        let d = 6;
        let e = collaborative_embeddings(10, &seqs, &CollabOptions { dim: d, ..Default::default() });
        let dot = |a: u32, b: u32| (0..d).map(|k| e[a as usize * d + k] * e[b as usize * d + k]).sum::<f32>();
        let group = |i: u32| i < 5;
        for a in 0..9 {
            let best = (0..9).filter(|&b| b != a).max_by(|&x, &y| dot(a, x).total_cmp(&dot(a, y))).unwrap();
            assert_eq!(group(a), group(best), "nearest to {a} is {best}");
            for b in (0..9).filter(|&b| group(b) != group(a)) {
                assert!(dot(a, b).abs() < 1e-3, "{a}·{b} = {}", dot(a, b));
            }
        }
        // item 9 never occurs: zero row
        assert!(e[9 * d..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn jacobi_finds_eigenpairs() {
        let a = vec![2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, -5.0];
        let (vals, v) = jacobi_eigen(a.clone(), 3);
        for k in 0..3 {
            for r in 0..3 {
                let av: f64 = (0..3).map(|c| a[r * 3 + c] * v[c * 3 + k]).sum();
                assert!((av - vals[k] * v[r * 3 + k]).abs() < 1e-9);
            }
        }
        let mut s = vals.clone();
        s.sort_by(f64::total_cmp);
        assert!((s[0] + 5.0).abs() < 1e-9 && (s[1] - 1.0).abs() < 1e-9 && (s[2] - 3.0).abs() < 1e-9);
    }

    #[test]
    fn mix_weights_and_normalises() {
        let m = mix(&[1.0, 0.0], 2, &[0.0, 1.0], 2, 0.25);
        assert!((m[0] - 0.75f32.sqrt()).abs() < 1e-6 && (m[3] - 0.5).abs() < 1e-6);
        let m = mix(&[0.0, 1.0], 2, &[0.0, 0.0], 2, 0.5);
        assert!((m[1] - 1.0).abs() < 1e-6, "no collaborative signal keeps the content direction");
    }
}
