//! `x · wᵀ`, the projections of the serving forward on the CPU.
//!
//! Few rows (a decode step has `beams` rows, a single history a few dozen): a
//! general gemm packs the whole weight matrix into its own layout on every
//! call, which for ten rows costs more than the arithmetic; here each group of
//! four weight rows is read straight from the row-major `[out, in]` matrix as
//! stored (the layout of a Hugging Face `nn.Linear`) and used for every input
//! row while it sits in L1. Many rows (batches): the packing pays for itself
//! and the `gemm` crate runs, as in candle, but into an output buffer that is
//! not zeroed first (candle's is; at these sizes zeroing costs a tenth of the
//! product).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::fused::cpu_f32;

/// Products with more input rows than this go to the `gemm` crate.
pub const MAX_ROWS: usize = 96;
/// Products with fewer multiply-adds than this run on the calling thread.
const PARALLEL_MIN: usize = 1 << 20;
/// Weight rows per parallel task.
const COLS_PER_TASK: usize = 64;

/// `x [.., k] · w[n, k]ᵀ -> [.., n]`; on the CPU in f32 with the small-product
/// kernel up to [`MAX_ROWS`] rows of `x`, `gemm` above. Inference only (no
/// gradient).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && w.rank() == 2 {
        return x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &SmallGemm);
    }
    x.broadcast_matmul(&w.t()?)
}

struct SmallGemm;

impl CustomOp2 for SmallGemm {
    fn name(&self) -> &'static str {
        "genrec-small-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (cpu_f32("small gemm", xs, xl)?, cpu_f32("small gemm", ws, wl)?);
        let (n, k) = wl.shape().dims2()?;
        let mut dims = xl.shape().dims().to_vec();
        if dims.last() != Some(&k) {
            candle_core::bail!("small gemm: x {:?} against w [{n}, {k}]", dims);
        }
        let m = x.len() / k.max(1);
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        if m > MAX_ROWS {
            return Ok((CpuStorage::F32(large(x, m, k, w, n)), Shape::from(dims)));
        }
        let mut out = vec![0f32; m * n];
        let dst = SyncPtr(out.as_mut_ptr());
        let task = |c0: usize| {
            let c1 = (c0 + COLS_PER_TASK).min(n);
            // SAFETY: tasks write disjoint column ranges of `out`, which outlives them.
            unsafe { kernel(x, m, k, w, c0, c1, n, dst) };
        };
        if crate::runtime::parallel(m * n * k, PARALLEL_MIN) {
            (0..n).step_by(COLS_PER_TASK).collect::<Vec<_>>().into_par_iter().for_each(task);
        } else {
            (0..n).step_by(COLS_PER_TASK).for_each(task);
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `x[m, k] · w[n, k]ᵀ` by the `gemm` crate, threaded as candle threads it.
fn large(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the pointers cover x [m, k] (row stride k), w read as wᵀ [k, n]
    // (column stride k) and out [m, n] (row stride n); with `read_dst` false
    // gemm writes every element of `out` without reading it, so the length
    // can be set afterwards.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
        out.set_len(m * n);
    }
    out
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used to write disjoint columns from parallel tasks.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Columns `c0 .. c1` of `out[m, n] = x[m, k] · w[n, k]ᵀ`.
///
/// # Safety
/// `out` points to `m * n` floats, and no other thread writes these columns.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(x: &[f32], m: usize, k: usize, w: &[f32], c0: usize, c1: usize, n: usize, out: SyncPtr) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return avx2::kernel(x, m, k, w, c0, c1, n, out);
    }
    for i in 0..m {
        let xi = &x[i * k..(i + 1) * k];
        for j in c0..c1 {
            *out.0.add(i * n + j) = dot(xi, &w[j * k..(j + 1) * k]);
        }
    }
}

/// The scalar fallback's dot product.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::SyncPtr;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Two input rows against four weight rows per inner loop (eight
    /// accumulators), eight lanes of `k` at a time; leftover rows and columns
    /// take one dot product at a time, `k`'s tail is summed lane by lane.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[f32],
        c0: usize,
        c1: usize,
        n: usize,
        out: SyncPtr,
    ) {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut j = c0;
        while j + 4 <= c1 {
            let mut i = 0;
            while i + 2 <= m {
                block_2x4(xp.add(i * k), wp.add(j * k), k, out.0.add(i * n + j), n);
                i += 2;
            }
            if i < m {
                for c in 0..4 {
                    *out.0.add(i * n + j + c) = dot(xp.add(i * k), wp.add((j + c) * k), k);
                }
            }
            j += 4;
        }
        for j in j..c1 {
            for i in 0..m {
                *out.0.add(i * n + j) = dot(xp.add(i * k), wp.add(j * k), k);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // the accumulators are indexed by (row, column)
    unsafe fn block_2x4(x: *const f32, w: *const f32, k: usize, out: *mut f32, n: usize) {
        let k8 = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut kk = 0;
        while kk < k8 {
            let x0 = _mm256_loadu_ps(x.add(kk));
            let x1 = _mm256_loadu_ps(x.add(k + kk));
            for c in 0..4 {
                let wv = _mm256_loadu_ps(w.add(c * k + kk));
                acc[0][c] = _mm256_fmadd_ps(x0, wv, acc[0][c]);
                acc[1][c] = _mm256_fmadd_ps(x1, wv, acc[1][c]);
            }
            kk += 8;
        }
        for r in 0..2 {
            for c in 0..4 {
                let mut s = hsum(acc[r][c]);
                for t in k8..k {
                    s += *x.add(r * k + t) * *w.add(c * k + t);
                }
                *out.add(r * n + c) = s;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(x: *const f32, w: *const f32, k: usize) -> f32 {
        let k8 = k / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut kk = 0;
        while kk < k8 {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(kk)), _mm256_loadu_ps(w.add(kk)), acc);
            kk += 8;
        }
        let mut s = hsum(acc);
        for t in k8..k {
            s += *x.add(t) * *w.add(t);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Equal to candle's matmul for shapes with and without tails (rows, columns
    /// and `k` not multiples of the blocking), small and parallel.
    #[test]
    fn equals_candle_matmul() {
        // the last two take the gemm path
        for (m, k, n) in [
            (1usize, 8usize, 4usize),
            (3, 13, 7),
            (10, 128, 2048),
            (33, 1024, 130),
            (96, 64, 1041),
            (97, 24, 9),
            (700, 128, 640),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let got = matmul_t(&x, &w).unwrap();
            assert_eq!(got.dims(), &[m, n]);
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4 * (k as f32).sqrt(), "{m}x{k}x{n}: {d}");
        }
        // leading dimensions are kept
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 16), &Device::Cpu).unwrap();
        assert_eq!(matmul_t(&x, &w).unwrap().dims(), &[2, 3, 5]);
    }
}
