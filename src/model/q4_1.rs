//! Matrix products over ggml's Q4_1 blocks as stored, with an AVX2 kernel:
//! candle multiplies Q4_1 with scalar code only, so the intent LLM's Q4_1
//! weights used to be converted to Q8_0 at load (1.7x their memory, and a
//! second copy of the tied output layer). Here the weights stay in their
//! 20-byte blocks of 32 values (`d`, `m` as f16, then 16 bytes of 4-bit
//! codes: value `j` is the low nibble of byte `j` for `j < 16`, the high
//! nibble of byte `j - 16` above; weight = `d * q + m`). The activations stay
//! f32 (llama.cpp's 8-bit activations moved SmolLM2's top log-probabilities
//! 40% further from the f32 model's): a block's dot product is
//! `d * Σ q·x + m * Σ x`, the codes widened to f32 for the FMA.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::ModelError;

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 20;

/// A `[rows, cols]` matrix of Q4_1 blocks (`cols` a multiple of 32).
#[derive(Clone)]
pub struct Q41Matrix {
    rows: usize,
    cols: usize,
    /// The quantized tensor the blocks live in (shared, never copied).
    tensor: Arc<QTensor>,
}

/// One activation row and the sum of each of its blocks (the `m` terms).
struct XRow<'a> {
    x: &'a [f32],
    sum: Vec<f32>,
}

fn prepare_row(x: &[f32]) -> XRow<'_> {
    XRow { x, sum: x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect() }
}

/// `d`, `m` and the 16 code bytes of block `b` of a row's bytes.
fn block(row: &[u8], b: usize) -> (f32, f32, &[u8]) {
    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
    let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
    (d, m, &blk[4..])
}

/// Dot product of one weight row with one activation row, scalar.
fn dot_scalar(row: &[u8], x: &XRow) -> f32 {
    let mut acc = 0f32;
    for b in 0..x.sum.len() {
        let (d, m, qs) = block(row, b);
        let xs = &x.x[b * BLOCK..(b + 1) * BLOCK];
        let mut qx = 0f32;
        for j in 0..16 {
            qx += (qs[j] & 0x0F) as f32 * xs[j] + (qs[j] >> 4) as f32 * xs[j + 16];
        }
        acc += d * qx + m * x.sum[b];
    }
    acc
}

/// [`block`] with the two scales converted by the F16C instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_f16c(row: &[u8], b: usize) -> (f32, f32, *const u8) {
    use std::arch::x86_64::*;
    let p = row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES].as_ptr();
    // SAFETY: the block's 20 bytes are in `row` (sliced above).
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
    (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)), p.add(4))
}

/// The 32 codes of a block (its 16 code bytes at `qs`) as four vectors of
/// eight f32: values 0..8, 8..16, 16..24 and 24..32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_codes(qs: *const u8) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::*;
    let low = _mm_set1_epi8(0x0F);
    // SAFETY: `qs` points at a block's 16 code bytes (see `block_f16c`).
    let bytes = _mm_loadu_si128(qs as *const __m128i);
    let lo = _mm_and_si128(bytes, low); // values 0..16
    let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low); // values 16..32
    let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    [f(lo), f(_mm_srli_si128(lo, 8)), f(hi), f(_mm_srli_si128(hi, 8))]
}

/// `Σ c·x` of one block's widened codes and its 32 activations at `xp`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_dot(c: &[std::arch::x86_64::__m256; 4], xp: *const f32) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes 32 readable values at `xp`.
    let mut t = _mm256_mul_ps(c[0], _mm256_loadu_ps(xp));
    t = _mm256_fmadd_ps(c[1], _mm256_loadu_ps(xp.add(8)), t);
    t = _mm256_fmadd_ps(c[2], _mm256_loadu_ps(xp.add(16)), t);
    _mm256_fmadd_ps(c[3], _mm256_loadu_ps(xp.add(24)), t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(row: &[u8], x: &XRow) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    let mut msum = 0f32;
    for b in 0..x.sum.len() {
        let (d, m, qs) = block_f16c(row, b);
        // SAFETY: `x.x` has 32 values from this block on (`x.sum` has one
        // entry per whole block).
        let t = block_dot(&widen_codes(qs), x.x.as_ptr().add(b * BLOCK));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), t, acc);
        msum += m * x.sum[b];
    }
    hsum(acc) + msum
}

/// The sum of a vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(half, _mm_shuffle_ps(half, half, 1)))
}

/// [`dot_avx2`] for four activation rows at once: each block's codes are
/// widened once and used four times (a prompt's rows share every weight).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_avx2(row: &[u8], x: [&XRow; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut msum = [0f32; 4];
    for b in 0..x[0].sum.len() {
        let (d, m, qs) = block_f16c(row, b);
        let c = widen_codes(qs);
        let dv = _mm256_set1_ps(d);
        for k in 0..4 {
            // SAFETY: as in `dot_avx2`, for each of the four rows.
            let t = block_dot(&c, x[k].x.as_ptr().add(b * BLOCK));
            acc[k] = _mm256_fmadd_ps(dv, t, acc[k]);
            msum[k] += m * x[k].sum[b];
        }
    }
    [hsum(acc[0]) + msum[0], hsum(acc[1]) + msum[1], hsum(acc[2]) + msum[2], hsum(acc[3]) + msum[3]]
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn dot(row: &[u8], x: &XRow, avx2: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by the caller).
        return unsafe { dot_avx2(row, x) };
    }
    let _ = avx2;
    dot_scalar(row, x)
}

impl Q41Matrix {
    /// Wraps a 2-D Q4_1 tensor (shared, not copied).
    pub fn new(tensor: Arc<QTensor>) -> Result<Self, ModelError> {
        if tensor.dtype() != GgmlDType::Q4_1 {
            return Err(ModelError::Weights(format!("{:?} blocks where Q4_1 was expected", tensor.dtype())));
        }
        let (rows, cols) = tensor.shape().dims2()?;
        if cols % BLOCK != 0 || tensor.data()?.len() != rows * cols / BLOCK * BLOCK_BYTES {
            return Err(ModelError::Weights(format!(
                "a Q4_1 matrix [{rows}, {cols}] with {} bytes",
                tensor.data()?.len()
            )));
        }
        Ok(Q41Matrix { rows, cols, tensor })
    }

    /// `x · wᵀ` for `x` `[.., cols]` (f32): `[.., rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let dims = x.dims().to_vec();
        if dims.last() != Some(&self.cols) {
            return Err(ModelError::Input(format!(
                "Q4_1 product: input {dims:?}, matrix [{}, {}]",
                self.rows, self.cols
            )));
        }
        let xs = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let out = self.matmul_t(&xs)?;
        let mut shape = dims;
        let last = shape.len() - 1; // not empty: its last dimension was checked
        shape[last] = self.rows;
        Ok(Tensor::from_vec(out, shape, &Device::Cpu)?.to_device(x.device())?)
    }

    /// `x · wᵀ` over row-major `x` (`n × cols` values): `n × rows` values.
    pub fn matmul_t(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        let n = x.len() / self.cols;
        let data = self.tensor.data()?;
        let row_bytes = self.cols / BLOCK * BLOCK_BYTES;
        let avx2 = has_avx2();
        let qx: Vec<XRow> = x.chunks_exact(self.cols).map(prepare_row).collect();
        // one weight row per task, against every activation row, so each
        // weight row is read from memory once; then [rows, n] -> [n, rows]
        let mut by_row = vec![0f32; self.rows * n];
        if n > 0 {
            let min_rows = (1 << 15) / (self.cols * n).max(1) + 1;
            by_row.par_chunks_mut(n).enumerate().with_min_len(min_rows).for_each(|(r, o)| {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                let mut i = 0;
                #[cfg(target_arch = "x86_64")]
                while avx2 && i + 4 <= qx.len() {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
                    let v = unsafe { dot4_avx2(row, [&qx[i], &qx[i + 1], &qx[i + 2], &qx[i + 3]]) };
                    o[i..i + 4].copy_from_slice(&v);
                    i += 4;
                }
                for (v, q) in o[i..].iter_mut().zip(&qx[i..]) {
                    *v = dot(row, q, avx2);
                }
            });
        }
        if n <= 1 {
            return Ok(by_row); // one activation row (a decode step): the layouts agree
        }
        let mut out = vec![0f32; n * self.rows];
        for (r, o) in by_row.chunks_exact(n).enumerate() {
            for (i, &v) in o.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_q41(rows: usize, cols: usize, seed: u64) -> (Arc<QTensor>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0) + 0.3).collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let deq = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (Arc::new(q), deq)
    }

    /// Equal to the dequantized weights' product in f32, to rounding; AVX2
    /// and scalar agree.
    #[test]
    fn products_match_the_dequantized_matrix() {
        let (rows, cols, n) = (70, 96, 5);
        let (q, w) = random_q41(rows, cols, 3);
        let m = Q41Matrix::new(q).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let got = m.matmul_t(&x).unwrap();
        for i in 0..n {
            for r in 0..rows {
                let exact: f32 = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
                let g = got[i * rows + r];
                assert!((g - exact).abs() < 1e-4 * (1.0 + exact.abs()), "row {i} col {r}: {g} vs {exact}");
            }
        }
        let data = m.tensor.data().unwrap();
        let row_bytes = cols / BLOCK * BLOCK_BYTES;
        let qx = prepare_row(&x[..cols]);
        for r in 0..rows {
            let row = &data[r * row_bytes..(r + 1) * row_bytes];
            let (a, s) = (dot(row, &qx, has_avx2()), dot_scalar(row, &qx));
            assert!((a - s).abs() <= 1e-4 * (1.0 + s.abs()), "{a} vs {s}");
        }
        let t = m.forward(&Tensor::from_vec(x, (n, cols), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(t.dims(), [n, rows]);
    }

    #[test]
    fn other_blocks_and_shapes_are_refused() {
        let t = Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q8 = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        assert!(Q41Matrix::new(Arc::new(q8)).is_err());
        let (q, _) = random_q41(4, 64, 1);
        let m = Q41Matrix::new(q).unwrap();
        assert!(m.forward(&Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Module;

    /// Timing probe (run by hand with --ignored --nocapture).
    #[test]
    #[ignore]
    fn q41_vs_candle_q8_0() {
        for (rows, cols) in [(1536usize, 576usize), (49152, 576)] {
            let t = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
            let q41 = Arc::new(QTensor::quantize(&t, GgmlDType::Q4_1).unwrap());
            let q8 = QTensor::quantize(&q41.dequantize(&Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
            let mine = Q41Matrix::new(q41).unwrap();
            let theirs = candle_core::quantized::QMatMul::from_qtensor(q8).unwrap();
            for n in [1usize, 8, 24] {
                let x = Tensor::randn(0f32, 1.0, (n, cols), &Device::Cpu).unwrap();
                let time = |f: &dyn Fn() -> Tensor| {
                    f();
                    let t0 = std::time::Instant::now();
                    for _ in 0..20 {
                        f();
                    }
                    t0.elapsed().as_secs_f64() / 20.0 * 1e3
                };
                let a = time(&|| mine.forward(&x).unwrap());
                let b = time(&|| theirs.forward(&x).unwrap());
                eprintln!("[{rows}x{cols}] n={n}: q4_1 (genrec) {a:.3} ms, q8_0 (candle) {b:.3} ms");
            }
        }
    }
}
