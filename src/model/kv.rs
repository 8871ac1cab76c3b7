//! KV caches for beam search with a shared history.
//!
//! A request's history is prefilled once ([`HistoryKv`]: one `[requests,
//! kv_heads, time, head_dim]` tensor per layer, right-padded, with an additive
//! mask over the padding). Each beam keeps only the few tokens it decoded itself
//! ([`BeamKv`]: `[beams, kv_heads, steps, head_dim]` per layer); between steps only
//! this short part is reordered to follow the surviving parents.

use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// The history keys/values of a batch of requests, shared by all their beams.
pub struct HistoryKv {
    layers: Vec<(Tensor, Tensor)>,
    /// `[requests, 1, 1, time]`: 0 for real positions, a large negative for padding.
    mask: Tensor,
    lens: Vec<usize>,
}

impl HistoryKv {
    pub fn new(
        layers: Vec<(Tensor, Tensor)>,
        lens: &[usize],
        time: usize,
        dev: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Ok(Self::with_mask(layers, lens, Self::length_mask(lens, time, dev, dtype)?))
    }

    /// [`HistoryKv::new`] with the mask of [`HistoryKv::length_mask`] already built.
    pub fn with_mask(layers: Vec<(Tensor, Tensor)>, lens: &[usize], mask: Tensor) -> Self {
        HistoryKv { layers, mask, lens: lens.to_vec() }
    }

    /// `[rows, 1, 1, time]`: 0 at each row's first `lens[r]` positions, a large
    /// negative after them.
    pub fn length_mask(lens: &[usize], time: usize, dev: &Device, dtype: DType) -> Result<Tensor, ModelError> {
        let r = lens.len();
        let mut m = vec![0f32; r * time];
        for (i, &l) in lens.iter().enumerate() {
            for v in &mut m[i * time + l.min(time)..(i + 1) * time] {
                *v = -1e9;
            }
        }
        Ok(Tensor::from_vec(m, (r, 1, 1, time), dev)?.to_dtype(dtype)?)
    }

    pub fn requests(&self) -> usize {
        self.lens.len()
    }

    /// Real history length (tokens) of each request.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn layer(&self, i: usize) -> &(Tensor, Tensor) {
        &self.layers[i]
    }

    pub fn mask(&self) -> &Tensor {
        &self.mask
    }
}

/// The per-beam part of the cache: keys/values of the tokens each beam decoded.
pub struct BeamKv {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl BeamKv {
    pub fn new(num_layers: usize) -> Self {
        BeamKv { layers: vec![None; num_layers] }
    }

    /// Number of tokens each beam holds.
    pub fn steps(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).and_then(|(k, _)| k.dim(2).ok()).unwrap_or(0)
    }

    /// Keeps, for each new beam `i`, the cache of old beam `parents[i]`.
    pub fn reorder(&mut self, parents: &[u32]) -> Result<(), ModelError> {
        let Some(dev) = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone()) else {
            return Ok(());
        };
        self.reorder_rows(&Tensor::from_slice(parents, parents.len(), &dev)?)
    }

    /// [`BeamKv::reorder`] with the parents as a `u32` tensor on the cache's
    /// device (the GPU beam step writes them there).
    pub fn reorder_rows(&mut self, idx: &Tensor) -> Result<(), ModelError> {
        for l in self.layers.iter_mut().flatten() {
            *l = (l.0.index_select(idx, 0)?, l.1.index_select(idx, 0)?);
        }
        Ok(())
    }

    /// Appends one step (`[beams, kv_heads, 1, head_dim]`) to a layer and returns
    /// the layer's whole per-beam cache.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let next = match &self.layers[layer] {
            None => (k.contiguous()?, v.contiguous()?),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some(next.clone());
        Ok(next)
    }
}
