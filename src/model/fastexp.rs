//! `exp` over `f32` slices, eight lanes at a time where the CPU has AVX2 and
//! FMA: the serving forward's SwiGLU and the vocabulary normaliser of every
//! beam step spend most of their time in `exp`, which the C library computes
//! one value per call. The polynomial is Cephes' `expf` (range reduction by
//! `ln 2`, degree-5 minimax on the remainder; within 2 ulp of `exp`), and the
//! scalar path evaluates the same operations in the same order, so a value's
//! result does not depend on where it sits in a buffer (a request scores the
//! same alone as in a batch).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped to the range where `2^n` stays a normal number.
const HI: f32 = 88.376_26;
const LO: f32 = -87.336_55;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// One value, the same arithmetic as one lane of the vector path.
#[inline]
pub fn exp1(x: f32) -> f32 {
    // max then min, as the vector path: NaN becomes LO there and here
    #[allow(clippy::manual_clamp)] // clamp would keep NaN; the vector max/min does not
    let x = x.max(LO).min(HI);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r + 1.0);
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `xs[i] = exp(xs[i])`.
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        let done = unsafe { avx2::exp_in_place(xs) };
        xs[done..].iter_mut().for_each(|x| *x = exp1(*x));
        return;
    }
    xs.iter_mut().for_each(|x| *x = exp1(*x));
}

/// `ln(sum(exp(row)))`, computed as `max + ln(sum(exp(row - max)))`; `scratch`
/// is reused between calls. An empty row gives `-inf`.
pub fn log_sum_exp(row: &[f32], scratch: &mut Vec<f32>) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    scratch.clear();
    scratch.extend(row.iter().map(|&x| x - max));
    exp_in_place(scratch);
    max + scratch.iter().sum::<f32>().ln()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{HI, LN2_HI, LN2_LO, LO, LOG2E, P};

    /// Exponentiates the leading multiple of eight values; returns how many.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_in_place(xs: &mut [f32]) -> usize {
        let n8 = xs.len() / 8 * 8;
        for chunk in xs[..n8].chunks_exact_mut(8) {
            let p = chunk.as_mut_ptr();
            _mm256_storeu_ps(p, exp8(_mm256_loadu_ps(p)));
        }
        n8
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x));
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_exp_and_the_same_on_every_path() {
        let xs: Vec<f32> = (0..20_001).map(|i| -90.0 + i as f32 * 0.009).collect();
        let mut v = xs.clone();
        exp_in_place(&mut v);
        for (&x, &y) in xs.iter().zip(&v) {
            // the vector lanes and the scalar tail agree bit for bit
            assert_eq!(y.to_bits(), exp1(x).to_bits(), "x = {x}");
            let want = (x as f64).exp();
            if x > LO && x < HI {
                let rel = ((y as f64 - want) / want).abs();
                assert!(rel < 3e-7, "x = {x}: {y} vs {want} ({rel:e})");
            } else {
                assert!(!(2e-38..=2e38).contains(&y), "x = {x}: {y}");
            }
        }
        // overflow clamps to a finite value, -inf and NaN to about zero
        assert!(exp1(1000.0).is_finite() && exp1(f32::NEG_INFINITY) < 2e-38 && exp1(f32::NAN) < 2e-38);
    }

    #[test]
    fn log_sum_exp_matches_the_direct_sum() {
        let row: Vec<f32> = (0..1037).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3).collect();
        let want = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let got = log_sum_exp(&row, &mut Vec::new());
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(log_sum_exp(&[], &mut Vec::new()), f32::NEG_INFINITY);
    }
}
