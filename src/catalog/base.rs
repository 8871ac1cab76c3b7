//! The base of a catalog: the immutable arrays of one catalog version (item
//! ids and titles, semantic IDs, embeddings, codebooks, the trie, the id map,
//! intent labels). Built in memory by `genrec index` and the tests, or
//! memory-mapped from a version folder (see [`super::format`]). Live edits
//! never change a base; they go to the [`super::overlay::Overlay`] above it
//! until a compaction writes a new version.

use super::array::Array;
use super::expiry::BaseExpiry;
use super::idmap::IdMap;
use super::strings::StringTable;
use super::trie::Trie;
use super::{CatalogError, Intent, Manifest};

/// Item embeddings, `[rows × dim]`, in the dtype they were stored in.
#[derive(Clone, Debug)]
pub enum Embeddings {
    F32(Array<f32>),
    /// IEEE half precision (bits), as catalog versions store them: half the
    /// bytes, and well within what ANN recall and semantic-ID assignment need.
    F16(Array<u16>),
}

/// The inner product of a half-precision row (bits) with `q`: eight values
/// at a time with F16C and FMA where the CPU has them, else in f32 after a
/// block conversion.
fn dot_f16(row: &[u16], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_f16_avx2(row, q) };
    }
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    let row: &[half::f16] = row.reinterpret_cast();
    let mut buf = [0f32; 64];
    let mut sum = 0f32;
    for (h, qq) in row.chunks(64).zip(q.chunks(64)) {
        let b = &mut buf[..h.len()];
        h.convert_to_f32_slice(b);
        sum += dot8(b, qq);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(row: &[u16], q: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len().min(q.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, within both slices.
        let h = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
        let x = _mm256_cvtph_ps(h);
        acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(q.as_ptr().add(i)), acc);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let tail: f32 = (i..n).map(|j| half::f16::from_bits(row[j]).to_f32() * q[j]).sum();
    lanes.iter().sum::<f32>() + tail
}

/// An inner product in eight independent lanes (vectorised; the order of
/// the additions differs from a plain sum by rounding only).
pub(crate) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Default for Embeddings {
    fn default() -> Self {
        Embeddings::F32(Array::default())
    }
}

impl Embeddings {
    /// Row `i` as f32 into `out` (cleared first).
    pub fn row_into(&self, i: usize, dim: usize, out: &mut Vec<f32>) {
        out.clear();
        match self {
            Embeddings::F32(a) => out.extend_from_slice(&a[i * dim..(i + 1) * dim]),
            Embeddings::F16(a) => {
                out.extend(a[i * dim..(i + 1) * dim].iter().map(|&b| half::f16::from_bits(b).to_f32()))
            }
        }
    }

    /// The inner product of row `i` with `q` (`dim` values), without
    /// copying the row out.
    pub fn dot(&self, i: usize, q: &[f32]) -> f32 {
        let dim = q.len();
        match self {
            Embeddings::F32(a) => dot8(&a[i * dim..(i + 1) * dim], q),
            Embeddings::F16(a) => dot_f16(&a[i * dim..(i + 1) * dim], q),
        }
    }

    pub fn values(&self) -> usize {
        match self {
            Embeddings::F32(a) => a.len(),
            Embeddings::F16(a) => a.len(),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Embeddings::F32(a) => a.bytes(),
            Embeddings::F16(a) => a.bytes(),
        }
    }

    pub fn dtype(&self) -> &'static str {
        match self {
            Embeddings::F32(_) => "f32",
            Embeddings::F16(_) => "f16",
        }
    }
}

/// One catalog version's immutable data.
#[derive(Debug)]
pub struct Base {
    pub manifest: Manifest,
    pub ids: StringTable,
    pub titles: StringTable,
    /// Flat semantic IDs: `sids[row * levels + l]`.
    pub sids: Array<u32>,
    pub embeddings: Embeddings,
    /// `codebooks[l]`: `[codebook_sizes[l] × dim]` for the k-means levels
    /// (empty when the semantic IDs were imported).
    pub codebooks: Vec<Vec<f32>>,
    pub trie: Trie,
    pub idmap: IdMap,
    pub intents: Vec<Intent>,
    /// Rows kept for their index but not served (removed before the last
    /// compaction), sorted.
    pub removed: Array<u32>,
    /// Expiry times of the served rows that have one ([`super::expiry`]).
    pub expiry: BaseExpiry,
    /// The version folder it was read from (none: built in memory).
    pub source: Option<std::path::PathBuf>,
}

impl Base {
    /// Checks that the arrays agree with the manifest and each other.
    pub fn check(&self) -> Result<(), CatalogError> {
        let n = self.manifest.num_items;
        let levels = self.manifest.codebook_sizes.len();
        let dim = self.manifest.embedding_dim;
        let bad = |m: String| Err(CatalogError::Format(m));
        if self.ids.len() != n || self.titles.len() != n {
            return bad(format!("{n} items but {} ids and {} titles", self.ids.len(), self.titles.len()));
        }
        if self.sids.len() != n * levels {
            return bad(format!("{n} items of {levels} codes but {} codes", self.sids.len()));
        }
        if self.embeddings.values() != n * dim {
            return bad(format!("{n} items of dimension {dim} but {} embedding values", self.embeddings.values()));
        }
        if self.removed.windows(2).any(|w| w[0] >= w[1]) || self.removed.last().is_some_and(|&r| r as usize >= n) {
            return bad("removed rows must be sorted, unique and in range".into());
        }
        self.expiry.check(n).map_err(CatalogError::Format)?;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.manifest.num_items
    }

    pub fn levels(&self) -> usize {
        self.manifest.codebook_sizes.len()
    }

    /// Whether row `i` was removed before this version was written.
    pub fn is_removed(&self, i: u32) -> bool {
        !self.removed.is_empty() && self.removed.binary_search(&i).is_ok()
    }

    pub fn sid(&self, i: u32) -> &[u32] {
        let l = self.levels();
        &self.sids[i as usize * l..(i as usize + 1) * l]
    }

    /// Bytes per part, for `GET /admin/catalog` and the scale bench.
    pub fn memory(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("ids", self.ids.bytes()),
            ("titles", self.titles.bytes()),
            ("semantic_ids", self.sids.bytes()),
            ("embeddings", self.embeddings.bytes()),
            ("trie", self.trie.bytes()),
            ("id_map", self.idmap.bytes()),
            ("expiry", self.expiry.bytes()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The vectorised inner products equal a plain f64 sum of the converted
    /// values (to f32 rounding), for rows with and without a tail.
    #[test]
    fn inner_products_match_a_plain_sum() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for dim in [1usize, 7, 8, 31, 64, 100] {
            let rows = 5;
            let vals: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
            let bits: Vec<u16> = vals.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            let (e32, e16) = (Embeddings::F32(Array::owned(vals.clone())), Embeddings::F16(Array::owned(bits.clone())));
            for i in 0..rows {
                let want32: f64 = (0..dim).map(|j| vals[i * dim + j] as f64 * q[j] as f64).sum();
                let want16: f64 =
                    (0..dim).map(|j| half::f16::from_bits(bits[i * dim + j]).to_f32() as f64 * q[j] as f64).sum();
                assert!((e32.dot(i, &q) as f64 - want32).abs() < 1e-5, "f32 dim {dim} row {i}");
                assert!((e16.dot(i, &q) as f64 - want16).abs() < 1e-5, "f16 dim {dim} row {i}");
            }
        }
    }
}
