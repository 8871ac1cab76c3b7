//! Grouped-query self-attention of the decoder (see [`super::transformer`]):
//! the projections (split as trained, fused for serving), causal attention over
//! a whole sequence, the prefill's last layer at each row's last token only,
//! and a decode step's attention over the request's shared history plus each
//! beam's own tokens (the shared-history KV of [`super::kv`]).

use candle_core::{Tensor, D};
use candle_nn::Linear;

use super::kv::BeamKv;
use super::ops::{rms_norm, serve_linear, softmax};
use super::proj::Proj;
use super::rope::Rope;
use super::ModelError;

/// The query, key and value projections: three matrices as trained and
/// stored, or (for serving) one concatenated matrix, one product instead of three.
#[derive(Clone)]
pub(super) enum Qkv {
    Split { q: Proj, k: Proj, v: Proj },
    Fused(Linear),
}

#[derive(Clone)]
pub(super) struct Attention {
    pub(super) qkv: Qkv,
    pub(super) o: Proj,
    pub(super) q_norm: Option<Tensor>,
    pub(super) k_norm: Option<Tensor>,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) eps: f64,
}

impl Attention {
    /// The output projection, in the serving form when the model is fused.
    fn project_out(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self.qkv {
            Qkv::Fused(_) => self.o.serve(x),
            Qkv::Split { .. } => self.o.forward(x),
        }
    }

    /// Queries, keys and values of `x` `[.., hidden]` shaped `[.., heads, head_dim]`,
    /// with the Qwen3 per-head norms applied.
    fn qkv(&self, x: &Tensor, training: bool) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let mut lead: Vec<usize> = x.dims().to_vec();
        lead.pop();
        let shape = |heads: usize| {
            let mut s = lead.clone();
            s.push(heads);
            s.push(self.head_dim);
            s
        };
        let (mut q, mut k, v) = match &self.qkv {
            Qkv::Split { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused(qkv) => {
                let y = serve_linear(qkv, x)?;
                let (nq, nk) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                (y.narrow(D::Minus1, 0, nq)?, y.narrow(D::Minus1, nq, nk)?, y.narrow(D::Minus1, nq + nk, nk)?)
            }
        };
        q = q.reshape(shape(self.heads))?;
        k = k.reshape(shape(self.kv_heads))?;
        let v = v.reshape(shape(self.kv_heads))?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = rms_norm(&q, qn, self.eps, training)?;
            k = rms_norm(&k, kn, self.eps, training)?;
        }
        Ok((q, k, v))
    }

    /// Causal self-attention over a whole sequence (after `past` keys/values,
    /// if given); returns the output and the layer's post-rotary keys and
    /// values over past and new positions `[b, kv_heads, p + t, head_dim]`.
    pub(super) fn forward_full(
        &self,
        x: &Tensor,
        rot: &Rope,
        mask: &Tensor,
        training: bool,
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = self.qkv(x, training)?;
        let q = rot.apply(&q.transpose(1, 2)?.contiguous()?)?; // [b, h, t, hd]
        let mut k = rot.apply(&k.transpose(1, 2)?.contiguous()?)?.contiguous()?; // [b, kvh, t, hd]
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some((pk, pv)) = past {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        let s = k.dim(2)?;
        let g = self.heads / self.kv_heads;
        // grouped-query: view the g query heads of one kv head as extra rows
        let qg = q.reshape((b, self.kv_heads, g * t, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (qg.matmul(&k.t()?)? * scale)?; // [b, kvh, g*t, s]
        let scores = scores.reshape((b, self.kv_heads, g, t, s))?.broadcast_add(&mask.unsqueeze(0)?)?;
        let p = softmax(&scores, training)?.reshape((b, self.kv_heads, g * t, s))?;
        let out = p.matmul(&v)?.reshape((b, self.heads, t, self.head_dim))?;
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, t, self.heads * self.head_dim))?;
        Ok((self.project_out(&out)?, k, v))
    }

    /// [`Attention::forward_full`] of a prefill's last layer: keys and values
    /// `[b, kv_heads, t, head_dim]` at every position, the attention output
    /// `[b, hidden]` only at each row's last real token (`last`), which sees
    /// the row's real positions (`last.mask`).
    pub(super) fn forward_last(
        &self,
        x: &Tensor,
        rot: &Rope,
        last: &LastRows,
    ) -> Result<(Tensor, Tensor, Tensor), ModelError> {
        let (b, t, _) = x.dims3()?;
        let (kvh, hd, g) = (self.kv_heads, self.head_dim, self.heads / self.kv_heads);
        let (q, k, v) = self.qkv(x, false)?; // [b, t, heads, hd]
        let k = rot.apply(&k.transpose(1, 2)?.contiguous()?)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = q.reshape((b * t, self.heads, hd))?.index_select(&last.idx, 0)?; // [b, heads, hd]
        let q = last.rope.apply(&q.unsqueeze(2)?.contiguous()?)?; // [b, heads, 1, hd]
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.reshape((b, kvh, g, hd))?.matmul(&k.t()?)? * scale)?.broadcast_add(&last.mask)?; // [b, kvh, g, t]
        let out = softmax(&scores, false)?.matmul(&v)?.reshape((b, self.heads * hd))?;
        Ok((self.project_out(&out)?, k, v))
    }

    /// Attention of one new token per beam over its request's shared history
    /// plus the beam's own decoded tokens.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_decode(
        &self,
        x: &Tensor,
        rot: &Rope,
        hist: &(Tensor, Tensor),
        hist_mask: &Tensor,
        beams_kv: &mut BeamKv,
        layer: usize,
        beams: usize,
    ) -> Result<Tensor, ModelError> {
        let n = x.dim(0)?;
        let r = n / beams;
        let (kvh, hd, g) = (self.kv_heads, self.head_dim, self.heads / self.kv_heads);
        let (q, k, v) = self.qkv(x, false)?; // [n, heads, hd]
        let q = rot.apply(&q.unsqueeze(2)?.contiguous()?)?.squeeze(2)?;
        let k = rot.apply(&k.unsqueeze(2)?.contiguous()?)?.squeeze(2)?;
        let (kb, vb) = beams_kv.append(layer, &k.unsqueeze(2)?, &v.unsqueeze(2)?)?; // [n, kvh, s, hd]
        let s = kb.dim(2)?;
        let (hk, hv) = hist;
        let th = hk.dim(2)?;
        let scale = 1.0 / (hd as f64).sqrt();
        // history part, computed once per request for all its beams:
        // q [r, beams, kvh, g, hd] -> [r, kvh, beams*g, hd]
        let qh = q.reshape((r, beams, kvh, g, hd))?.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((
            r,
            kvh,
            beams * g,
            hd,
        ))?;
        let sh = (qh.matmul(&hk.t()?)? * scale)?.broadcast_add(hist_mask)?; // [r, kvh, beams*g, th]
        let sh =
            sh.reshape((r, kvh, beams, g, th))?.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((n, kvh, g, th))?;
        // own part: q [n, kvh, g, hd] against kb [n, kvh, s, hd], s <= levels.
        // Elementwise products and sums, not a batched matmul: a batch of
        // n * kvh products this small costs one gemm dispatch each on the CPU.
        let qb = q.reshape((n, kvh, g, 1, hd))?;
        let sb = (qb.broadcast_mul(&kb.unsqueeze(2)?)?.sum(4)? * scale)?; // [n, kvh, g, s]
        let p = softmax(&Tensor::cat(&[&sh, &sb], 3)?, false)?;
        let ph = p.narrow(3, 0, th)?;
        let pb = p.narrow(3, th, s)?;
        let ob = pb.unsqueeze(4)?.broadcast_mul(&vb.unsqueeze(2)?)?.sum(3)?; // [n, kvh, g, hd]
        let ph = ph.reshape((r, beams, kvh, g, th))?.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((
            r,
            kvh,
            beams * g,
            th,
        ))?;
        let oh = ph
            .matmul(hv)?
            .reshape((r, kvh, beams, g, hd))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((n, kvh, g, hd))?;
        let out = (oh + ob)?.reshape((n, self.heads * hd))?;
        self.project_out(&out)
    }
}

/// A prefill's rows: where each row's last real token is (`idx`, flat over
/// `batch * time`), its rotary angles, and the mask of each row's real
/// positions `[batch, 1, 1, time]`.
pub(super) struct LastRows {
    pub(super) idx: Tensor,
    pub(super) rope: Rope,
    pub(super) mask: Tensor,
    /// Where the rows are padded: the real positions (flat), and for every
    /// flat position its index among them or the extra zero row after them,
    /// so the MLP (most of a layer's arithmetic) skips the padding.
    pub(super) real: Option<(Tensor, Tensor)>,
}
