//! Rotary position embeddings (RoPE, Su et al., arXiv 2104.09864) in the
//! non-interleaved layout of transformers' Llama: `x * cos + rotate_half(x) *
//! sin`. Training applies it with plain, differentiable tensor ops; serving
//! with candle's fused rope op (one pass, CPU and CUDA), which needs only the
//! half-width tables. The two give the same values.

use candle_core::{DType, Device, Tensor, D};

use super::config::ModelConfig;
use super::ModelError;

/// Positions the tables hold at most: a config's `max_position_embeddings`
/// can be far above any sequence genrec feeds (its longest is one history of
/// `max_history_items` items plus the decode levels, checked at load).
pub const TABLE_POSITIONS: usize = 16_384;

/// The angle tables of every position up to `max_position_embeddings` (at
/// most [`TABLE_POSITIONS`]).
#[derive(Clone)]
pub(super) struct RopeTables {
    /// `[max, head_dim]`, both halves equal: the differentiable form.
    cos: Tensor,
    sin: Tensor,
    /// `[max, head_dim / 2]`: the fused op's form.
    cos_half: Tensor,
    sin_half: Tensor,
}

/// The angles of the positions one forward needs, in the form it applies them.
pub(super) enum Rope {
    /// Broadcast against `[b, heads, t, head_dim]` (training).
    Plain { cos: Tensor, sin: Tensor },
    /// `[t, hd/2]` shared by the batch or `[b, t, hd/2]` per row (serving).
    Fused { cos: Tensor, sin: Tensor },
}

impl RopeTables {
    pub fn new(cfg: &ModelConfig, dtype: DType, dev: &Device) -> Result<Self, ModelError> {
        let hd = cfg.head_dim();
        let half = hd / 2;
        let inv: Vec<f32> =
            (0..half).map(|i| 1.0 / (cfg.rope_base() as f32).powf(2.0 * i as f32 / hd as f32)).collect();
        let max = cfg.max_position_embeddings.min(TABLE_POSITIONS);
        let mut cos = Vec::with_capacity(max * hd);
        let mut sin = Vec::with_capacity(max * hd);
        for p in 0..max {
            for _half in 0..2 {
                for f in &inv {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (max, hd), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max, hd), dev)?.to_dtype(dtype)?;
        let cos_half = cos.narrow(1, 0, half)?.contiguous()?;
        let sin_half = sin.narrow(1, 0, half)?.contiguous()?;
        Ok(RopeTables { cos, sin, cos_half, sin_half })
    }

    /// Positions `p .. p + t`, shared by the batch.
    pub fn range(&self, p: usize, t: usize, training: bool) -> Result<Rope, ModelError> {
        Ok(if training {
            Rope::Plain {
                cos: self.cos.narrow(0, p, t)?.unsqueeze(0)?.unsqueeze(0)?,
                sin: self.sin.narrow(0, p, t)?.unsqueeze(0)?.unsqueeze(0)?,
            }
        } else {
            Rope::Fused { cos: self.cos_half.narrow(0, p, t)?, sin: self.sin_half.narrow(0, p, t)? }
        })
    }

    /// One position per row (`pos` `[n]` u32), for `[n, heads, 1, head_dim]`
    /// (serving: decode steps and a prefill's last tokens).
    pub fn rows(&self, pos: &Tensor) -> Result<Rope, ModelError> {
        let n = pos.dim(0)?;
        let half = self.cos_half.dim(1)?;
        Ok(Rope::Fused {
            cos: self.cos_half.index_select(pos, 0)?.reshape((n, 1, half))?,
            sin: self.sin_half.index_select(pos, 0)?.reshape((n, 1, half))?,
        })
    }
}

impl Rope {
    /// `x` `[b, heads, t, head_dim]`, contiguous.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Rope::Plain { cos, sin } => {
                let half = x.dim(D::Minus1)? / 2;
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
                Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
            }
            Rope::Fused { cos, sin } => Ok(candle_nn::rotary_emb::rope(x, cos, sin)?),
        }
    }
}
