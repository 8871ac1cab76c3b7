//! Inference-only fused operations: one pass over memory instead of several
//! candle ops, for the small matrices of a recommendation model where every
//! op's dispatch and temporary buffer count. Training keeps the plain,
//! differentiable ops; each function here falls back to them off the CPU.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows below this many elements run on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// `silu(x[.., :ff]) * x[.., ff:]` for `x` `[.., 2 * ff]`, the output of the
/// concatenated gate and up projections of a SwiGLU MLP.
pub fn swiglu(x: &Tensor) -> candle_core::Result<Tensor> {
    let two_ff = x.dim(D::Minus1)?;
    if two_ff % 2 != 0 {
        candle_core::bail!("swiglu: last dimension {two_ff} is odd");
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&SwiGlu);
    }
    let ff = two_ff / 2;
    x.narrow(D::Minus1, 0, ff)?.silu()? * x.narrow(D::Minus1, ff, ff)?.contiguous()?
}

/// Softmax over the last dimension with the vectorised exp (masked scores,
/// however negative, give about zero).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&Softmax);
    }
    candle_nn::ops::softmax_last_dim(&x.contiguous()?)
}

/// A custom op's input as the f32 slice its contiguous layout covers.
pub(super) fn cpu_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{op}: f32 only on the CPU") };
    let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("{op}: input must be contiguous") };
    Ok(&data[start..end])
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "genrec-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = cpu_f32("softmax", storage, layout)?;
        let n = layout.shape().dims().last().copied().unwrap_or(0);
        if n == 0 {
            candle_core::bail!("softmax: empty last dimension");
        }
        let mut out = data.to_vec();
        let row = |r: &mut [f32]| {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            r.iter_mut().for_each(|v| *v -= max);
            super::fastexp::exp_in_place(r);
            let inv = 1.0 / r.iter().sum::<f32>();
            // a masked score's exp is about the smallest normal float (exp
            // clamps its input at -87.3), and divided by the sum it becomes
            // subnormal: each product that reads a subnormal takes a
            // microcode assist on Intel cores, which made attention's two
            // small products a third of a batched search on Beauty. Flushed
            // to zero, the search is ~1.5x faster (benches/results/serving.md).
            // The row's largest value is at least 1/n and never flushed; NaN
            // passes as before.
            r.iter_mut().for_each(|v| {
                let p = *v * inv;
                *v = if p < f32::MIN_POSITIVE { 0.0 } else { p };
            });
        };
        if crate::runtime::parallel(out.len(), PARALLEL_MIN) {
            out.par_chunks_mut(n).for_each(row);
        } else {
            out.chunks_mut(n).for_each(row);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "genrec-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = cpu_f32("swiglu", storage, layout)?;
        let mut dims = layout.shape().dims().to_vec();
        let ff = dims.last().copied().unwrap_or(0) / 2;
        if ff == 0 {
            candle_core::bail!("swiglu: empty last dimension");
        }
        let rows = src.len() / (2 * ff);
        let mut out = vec![0f32; rows * ff];
        let row = |(o, x): (&mut [f32], &[f32])| {
            let (g, u) = x.split_at(ff);
            // candle's silu, x / (1 + exp(-x)), with the vectorised exp
            o.iter_mut().zip(g).for_each(|(o, &g)| *o = -g);
            super::fastexp::exp_in_place(o);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + *o) * u;
            }
        };
        if crate::runtime::parallel(out.len(), PARALLEL_MIN) {
            out.par_chunks_mut(ff).zip(src.par_chunks(2 * ff)).for_each(row);
        } else {
            out.chunks_mut(ff).zip(src.chunks(2 * ff)).for_each(row);
        }
        if let Some(last) = dims.last_mut() {
            *last = ff;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused op equals the plain ops it replaces, small and large.
    #[test]
    fn swiglu_equals_silu_times_up() {
        for (rows, ff) in [(3usize, 5usize), (300, 512)] {
            let x = Tensor::randn(0f32, 2.0, (rows, 2 * ff), &Device::Cpu).unwrap();
            let want = (x.narrow(1, 0, ff).unwrap().silu().unwrap() * x.narrow(1, ff, ff).unwrap()).unwrap();
            let got = swiglu(&x).unwrap();
            assert_eq!(got.dims(), &[rows, ff]);
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // the vectorised exp is within a few ulp: relative to the largest value
            assert!(d / scale < 1e-5, "{d} of {scale}");
        }
        assert!(swiglu(&Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()).is_err());
    }

    #[test]
    fn softmax_equals_candles() {
        for (rows, n) in [(3usize, 5usize), (400, 300)] {
            let mut x = Tensor::randn(0f32, 3.0, (rows, n), &Device::Cpu).unwrap();
            if n == 5 {
                // a masked score, as attention masks add them
                let mask = Tensor::new(&[0f32, -1e9, 0.0, 0.0, f32::NEG_INFINITY], &Device::Cpu).unwrap();
                x = x.broadcast_add(&mask).unwrap();
            }
            let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
            let got = softmax_last_dim(&x).unwrap();
            let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // probabilities: a few ulp of exp and of the sum, on random inputs
            assert!(d < 1e-5, "{d}");
        }
    }

    /// Masked scores give probabilities of exactly zero, never subnormal
    /// ones (which slow every product that reads them).
    #[test]
    fn masked_scores_give_zero_not_subnormal_probabilities() {
        let mut row = vec![0f32; 40];
        row.extend([-1e9f32; 24]); // a padded history: 40 real positions, 24 masked
        row.extend([-95.0f32, -88.0, -70.0, f32::NEG_INFINITY]);
        let x = Tensor::from_vec(row, (1, 68), &Device::Cpu).unwrap();
        let p = softmax_last_dim(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(p.iter().all(|v| *v == 0.0 || v.is_normal()), "{p:?}");
        assert!(p[40..66].iter().all(|&v| v == 0.0) && p[67] == 0.0, "{:?}", &p[40..]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
