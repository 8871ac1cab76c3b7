//! Tensor operations the decoder's layers share: RMSNorm, the softmax of
//! attention (half-precision inputs normalised in f32), and the serving
//! projection that sends few rows through the small-product kernel.

use candle_core::{DType, Tensor, D};
use candle_nn::Linear;

use super::ModelError;

pub(super) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, training: bool) -> Result<Tensor, ModelError> {
    if training {
        // plain ops: differentiable
        let dt = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let y = x32.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dt)?;
        Ok(y.broadcast_mul(w)?)
    } else {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?)
    }
}

/// Softmax over the last dimension; a half-precision input is normalised in
/// f32 and returned in its own dtype (in bf16 the attention weights of the
/// demo model lost 8 of 64 top-10 lists against f32).
pub(super) fn softmax(x: &Tensor, training: bool) -> Result<Tensor, ModelError> {
    if training {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    } else if x.dtype() != DType::F32 {
        Ok(super::fused::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
    } else {
        Ok(super::fused::softmax_last_dim(x)?)
    }
}

/// A serving projection (no gradient): few rows go through the small-product
/// kernel instead of a general gemm.
pub(super) fn serve_linear(lin: &Linear, x: &Tensor) -> Result<Tensor, ModelError> {
    let y = super::small_gemm::matmul_t(x, lin.weight())?;
    Ok(match lin.bias() {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}
