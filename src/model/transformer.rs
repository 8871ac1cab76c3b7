//! The decoder: Llama / Qwen3 family (RMSNorm, rotary positions, SwiGLU MLP,
//! grouped-query attention), written against candle tensors so that the same
//! code trains (through a `VarMap`) and serves (from `model.safetensors`), and so
//! that beams can share their request's history KV (see [`super::kv`]).
//!
//! Tensor names follow transformers' `LlamaForCausalLM` / `Qwen3ForCausalLM`
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...), so checkpoints move both
//! ways between genrec and PyTorch. The attention itself is in [`super::attention`];
//! the weights are dense tensors or, for the intent LLM, quantized GGUF blocks
//! ([`super::proj`]); the tensor operations they share are in [`super::ops`].

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::attention::{Attention, LastRows, Qkv};
use super::config::{Arch, ModelConfig};
use super::kv::{BeamKv, HistoryKv};
use super::ops::{rms_norm, serve_linear};
use super::proj::{Embed, Head, Proj, QuantWeights, Weights};
use super::rope::RopeTables;
use super::ModelError;

/// Additive mask value for positions a query must not see (finite, so that
/// padded rows never produce NaN).
const MASKED: f32 = -1e9;
/// Tokens a prefill runs at once (see [`Transformer::prefill_in_chunks`]):
/// 128 items of 4 codes; today's 20-item histories take one chunk.
pub const PREFILL_CHUNK: usize = 512;

/// Training-time state: dropout probability and the seeded generator of masks.
pub struct Dropout<'a> {
    pub p: f32,
    pub rng: &'a mut ChaCha8Rng,
}

impl Dropout<'_> {
    fn apply(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        if self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if self.rng.random::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
        let m = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * m)?)
    }
}

fn drop(x: Tensor, d: &mut Option<Dropout>) -> Result<Tensor, ModelError> {
    match d {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// The MLP's contribution `[b, t, hidden]` to the residual stream `x` of a
/// prefill, computed on the real positions only (pads get zero).
fn mlp_on_real_rows(
    last: &LastRows,
    layer: &Layer,
    x: &Tensor,
    eps: f64,
    compute: DType,
) -> Result<Tensor, ModelError> {
    let Some((real, spread)) = &last.real else {
        return layer.mlp.forward(&rms_norm(x, &layer.post_norm, eps, false)?.to_dtype(compute)?);
    };
    let (b, t, d) = x.dims3()?;
    let packed = x.reshape((b * t, d))?.index_select(real, 0)?;
    let m = layer.mlp.forward(&rms_norm(&packed, &layer.post_norm, eps, false)?.to_dtype(compute)?)?;
    let m = Tensor::cat(&[&m, &Tensor::zeros((1, d), m.dtype(), m.device())?], 0)?;
    Ok(m.index_select(spread, 0)?.reshape((b, t, d))?)
}

/// The SwiGLU gate and up projections, split or (for serving) concatenated.
#[derive(Clone)]
enum GateUp {
    Split { gate: Proj, up: Proj },
    Fused(Linear),
}

#[derive(Clone)]
struct Mlp {
    gate_up: GateUp,
    down: Proj,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match &self.gate_up {
            GateUp::Split { gate, up } => self.down.forward(&(gate.forward(x)?.silu()? * up.forward(x)?)?),
            GateUp::Fused(gu) => self.down.serve(&super::fused::swiglu(&serve_linear(gu, x)?)?),
        }
    }
}

/// One matrix of the rows of `parts` (and their biases, if all have one).
fn concat_linear(parts: &[&Linear]) -> Result<Linear, ModelError> {
    let w: Vec<&Tensor> = parts.iter().map(|l| l.weight()).collect();
    let b: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias()).collect();
    let bias = match b {
        Some(b) => Some(Tensor::cat(&b, 0)?),
        None => None,
    };
    Ok(Linear::new(Tensor::cat(&w, 0)?.contiguous()?, bias))
}

#[derive(Clone)]
struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// The decoder-only transformer (cloning shares the weight tensors).
#[derive(Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Embed,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Head,
    rope: RopeTables,
    device: Device,
    /// Projections fused for serving (see [`Transformer::fuse_projections`]).
    serving: bool,
    /// The residual stream's dtype: the weights', or f32 for a half-precision
    /// model once fused for serving (its matrix products stay in half).
    resid: DType,
}

impl Transformer {
    /// Builds the model from a var builder holding transformers' tensor names.
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self, ModelError> {
        Self::build(&vb, cfg)
    }

    /// Builds the model over quantized matrices (a GGUF file's, see
    /// [`super::proj`]); such a model serves only (no gradients, no fusing).
    pub fn load_quantized(w: &QuantWeights, cfg: &ModelConfig) -> Result<Self, ModelError> {
        Self::build(w, cfg)
    }

    fn build(w: &dyn Weights, cfg: &ModelConfig) -> Result<Self, ModelError> {
        cfg.validate()?;
        let arch = cfg.arch()?;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
        let embed = w.embed("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let a = format!("{l}.self_attn");
            let bias = cfg.attention_biases()?;
            let (q_norm, k_norm) = match arch {
                Arch::Qwen3 => (
                    Some(w.vector(&format!("{a}.q_norm.weight"), hd)?),
                    Some(w.vector(&format!("{a}.k_norm.weight"), hd)?),
                ),
                Arch::Llama | Arch::Qwen2 => (None, None),
            };
            let attn = Attention {
                qkv: Qkv::Split {
                    q: w.proj(&format!("{a}.q_proj"), h, nh * hd, bias.qkv)?,
                    k: w.proj(&format!("{a}.k_proj"), h, nkv * hd, bias.qkv)?,
                    v: w.proj(&format!("{a}.v_proj"), h, nkv * hd, bias.qkv)?,
                },
                o: w.proj(&format!("{a}.o_proj"), nh * hd, h, bias.out)?,
                q_norm,
                k_norm,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                eps: cfg.rms_norm_eps,
            };
            let mlp = Mlp {
                gate_up: GateUp::Split {
                    gate: w.proj(&format!("{l}.mlp.gate_proj"), h, cfg.intermediate_size, false)?,
                    up: w.proj(&format!("{l}.mlp.up_proj"), h, cfg.intermediate_size, false)?,
                },
                down: w.proj(&format!("{l}.mlp.down_proj"), cfg.intermediate_size, h, false)?,
            };
            layers.push(Layer {
                attn,
                mlp,
                input_norm: w.vector(&format!("{l}.input_layernorm.weight"), h)?,
                post_norm: w.vector(&format!("{l}.post_attention_layernorm.weight"), h)?,
            });
        }
        let norm = w.vector("model.norm.weight", h)?;
        let lm_head =
            if cfg.tie_word_embeddings { embed.tied_head()? } else { w.head("lm_head.weight", cfg.vocab_size, h)? };
        let device = w.device();
        let rope = RopeTables::new(cfg, w.dtype(), &device)?;
        let resid = w.dtype();
        Ok(Transformer { cfg: cfg.clone(), embed, layers, norm, lm_head, rope, device, serving: false, resid })
    }

    /// For serving: concatenates each layer's q/k/v and gate/up matrices so
    /// that each group is one matrix product (same results up to rounding).
    /// A fused model cannot be trained: its trainable tensors are gone.
    pub fn fuse_projections(&mut self) -> Result<(), ModelError> {
        if matches!(self.lm_head, Head::Quant(_)) {
            return Err(ModelError::Input("a quantized model is not fused (its projections stay as stored)".into()));
        }
        for l in &mut self.layers {
            if let Qkv::Split { q: Proj::Dense(q), k: Proj::Dense(k), v: Proj::Dense(v) } = &l.attn.qkv {
                l.attn.qkv = Qkv::Fused(concat_linear(&[q, k, v])?);
            }
            if let GateUp::Split { gate: Proj::Dense(gate), up: Proj::Dense(up) } = &l.mlp.gate_up {
                l.mlp.gate_up = GateUp::Fused(concat_linear(&[gate, up])?);
            }
        }
        // a bf16/f16 model keeps its residual stream, norms and output layer
        // in f32 (exact copies of those weights; the layers' matrix products
        // stay in half): beam search ranks by sums of log-probabilities, and
        // half-precision activations moved them by up to 0.06, leaving 17 of
        // the demo model's 64 top-10 lists as in f32 (29 with this, 38 with
        // the f32 softmax too; generate::beam::precision_tests). The final
        // hidden state is f32 because the residual stream is: logits are not
        // rounded to bf16, whose step is 0.06 near |logit| = 10.
        if let Head::Dense(w) = &self.lm_head {
            if w.dtype() != DType::F32 {
                self.lm_head = Head::Dense(w.to_dtype(DType::F32)?);
                self.norm = self.norm.to_dtype(DType::F32)?;
                for l in &mut self.layers {
                    l.input_norm = l.input_norm.to_dtype(DType::F32)?;
                    l.post_norm = l.post_norm.to_dtype(DType::F32)?;
                }
                self.resid = DType::F32;
            }
        }
        self.serving = true;
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Full causal forward over `tokens` `[batch, time]` (right-padded; pads are
    /// never seen by real tokens). Returns the final hidden states `[batch, time,
    /// hidden]` and each layer's keys/values `[batch, kv_heads, time, head_dim]`.
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        dropout: Option<Dropout>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>), ModelError> {
        self.forward_inner(tokens, None, dropout, None)
    }

    /// [`Transformer::forward_hidden`] for tokens that continue earlier
    /// positions whose keys/values are `past` (one `[batch, kv_heads, p,
    /// head_dim]` pair per layer, as returned before): a prompt's fixed part is
    /// computed once and reused. Returns the new tokens' hidden states and each
    /// layer's keys/values over past and new positions.
    pub fn forward_after(
        &self,
        tokens: &Tensor,
        past: &[(Tensor, Tensor)],
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>), ModelError> {
        if past.len() != self.layers.len() {
            return Err(ModelError::Input(format!("{} past layers for {} layers", past.len(), self.layers.len())));
        }
        self.forward_inner(tokens, Some(past), None, None)
    }

    /// The forward pass behind the public ones. With `last`, the last layer
    /// computes keys/values at every position but its attention output and
    /// MLP only at each row's last real token, and the hidden states returned
    /// are those rows' `[batch, hidden]`.
    fn forward_inner(
        &self,
        tokens: &Tensor,
        past: Option<&[(Tensor, Tensor)]>,
        mut dropout: Option<Dropout>,
        last: Option<&LastRows>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>), ModelError> {
        let training = dropout.is_some();
        let t = tokens.dim(1)?;
        let p = match past {
            Some(pv) => pv.first().map_or(Ok(0), |(k, _)| k.dim(2))?,
            None => 0,
        };
        if p + t > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{} tokens exceed max_position_embeddings {}",
                p + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (b, _) = tokens.dims2()?;
        let emb = self.embed.lookup(&tokens.flatten_all()?)?.reshape((b, t, ()))?;
        let cd = emb.dtype();
        let mut x = drop(emb, &mut dropout)?.to_dtype(self.resid)?;
        let rot = self.rope.range(p, t, training)?;
        // query i (position p + i) sees keys 0 ..= p + i
        let s = p + t;
        let mask: Vec<f32> = (0..t * s).map(|i| if i % s > p + i / s { MASKED } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, s), &self.device)?.to_dtype(cd)?;
        let mut kvs = Vec::with_capacity(self.layers.len());
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, self.cfg.rms_norm_eps, training)?.to_dtype(cd)?;
            if let (Some(last), true, None) = (last, i + 1 == n, past) {
                let (a, k, v) = layer.attn.forward_last(&h, &rot, last)?;
                let xl = (x.reshape((b * t, ()))?.index_select(&last.idx, 0)? + a.to_dtype(self.resid)?)?;
                let h = rms_norm(&xl, &layer.post_norm, self.cfg.rms_norm_eps, false)?.to_dtype(cd)?;
                x = (&xl + layer.mlp.forward(&h)?.to_dtype(self.resid)?)?;
                kvs.push((k, v));
                break;
            }
            let (a, k, v) = layer.attn.forward_full(&h, &rot, &mask, training, past.map(|pv| &pv[i]))?;
            x = (x + drop(a, &mut dropout)?.to_dtype(self.resid)?)?;
            let m = match last {
                Some(last) => mlp_on_real_rows(last, layer, &x, self.cfg.rms_norm_eps, cd)?,
                None => layer
                    .mlp
                    .forward(&rms_norm(&x, &layer.post_norm, self.cfg.rms_norm_eps, training)?.to_dtype(cd)?)?,
            };
            x = (&x + drop(m, &mut dropout)?.to_dtype(self.resid)?)?;
            kvs.push((k, v));
        }
        Ok((rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, training)?, kvs))
    }

    /// Logits over the whole vocabulary for hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        match &self.lm_head {
            Head::Dense(w) if self.serving => Ok(super::small_gemm::matmul_t(hidden, w)?),
            Head::Dense(w) => Ok(hidden.broadcast_matmul(&w.t()?)?),
            Head::Quant(q) => q.forward(hidden),
        }
    }

    /// The dense output layer's weights (`[vocab, hidden]`), `None` when
    /// quantized.
    pub fn head_weights(&self) -> Option<&Tensor> {
        match &self.lm_head {
            Head::Dense(w) => Some(w),
            Head::Quant(_) => None,
        }
    }

    /// Logits of one code level's tokens only, in code order.
    pub fn level_logits(&self, hidden: &Tensor, head: &super::LevelHead) -> Result<Tensor, ModelError> {
        match head {
            super::LevelHead::Range { start, len } => self.logits_range(hidden, *start, *len),
            super::LevelHead::Rows { weights, .. } => Ok(hidden.broadcast_matmul(&weights.t()?)?),
        }
    }

    /// Logits of the token range `start .. start + len` only (one code level).
    pub fn logits_range(&self, hidden: &Tensor, start: usize, len: usize) -> Result<Tensor, ModelError> {
        let Head::Dense(w) = &self.lm_head else {
            return Err(ModelError::Input("a token range of a quantized output layer is not computed".into()));
        };
        Ok(hidden.broadcast_matmul(&w.narrow(0, start, len)?.t()?)?)
    }

    /// Runs each request's history once. `tokens` is `[requests, time]`
    /// right-padded, `lens[r]` the real length of row `r`. Returns the shared
    /// history cache and the hidden state at each row's last real token.
    /// Histories longer than [`PREFILL_CHUNK`] tokens run in chunks of it.
    pub fn prefill(&self, tokens: &Tensor, lens: &[usize]) -> Result<(HistoryKv, Tensor), ModelError> {
        self.prefill_in_chunks(tokens, lens, PREFILL_CHUNK)
    }

    /// [`Transformer::prefill`] with chunks of `chunk` tokens: each chunk
    /// attends to the keys and values of the chunks before it, so the attention
    /// scores of a long history take `chunk x time` per head instead of
    /// `time x time` (1,000 items of 4 codes: 4,001 tokens, 16M scores per
    /// head and layer unchunked, 2M in chunks of 512). Real tokens never attend
    /// to padding: it sits after them, and attention is causal.
    pub fn prefill_in_chunks(
        &self,
        tokens: &Tensor,
        lens: &[usize],
        chunk: usize,
    ) -> Result<(HistoryKv, Tensor), ModelError> {
        let (r, t) = tokens.dims2()?;
        if lens.len() != r || lens.iter().any(|&l| l == 0 || l > t) {
            return Err(ModelError::Input(format!("prefill: lens {lens:?} do not fit {r} rows of {t}")));
        }
        if t > chunk.max(1) {
            let chunk = chunk.max(1);
            let mut past: Option<Vec<(Tensor, Tensor)>> = None;
            let mut last: Vec<Option<Tensor>> = vec![None; r];
            for c0 in (0..t).step_by(chunk) {
                let c1 = (c0 + chunk).min(t);
                let part = tokens.narrow(1, c0, c1 - c0)?;
                let (h, kvs) = self.forward_inner(&part, past.as_deref(), None, None)?;
                for (row, &l) in lens.iter().enumerate() {
                    if (c0..c1).contains(&(l - 1)) {
                        last[row] = Some(h.get(row)?.get(l - 1 - c0)?);
                    }
                }
                past = Some(kvs);
            }
            let rows: Vec<Tensor> = last.into_iter().flatten().collect();
            let hidden = Tensor::stack(&rows, 0)?;
            let mask = HistoryKv::length_mask(lens, t, &self.device, self.embed.dtype())?;
            return Ok((HistoryKv::with_mask(past.unwrap_or_default(), lens, mask), hidden));
        }
        let idx: Vec<u32> = lens.iter().enumerate().map(|(i, &l)| (i * t + l - 1) as u32).collect();
        let pos: Vec<u32> = lens.iter().map(|&l| (l - 1) as u32).collect();
        let mask = HistoryKv::length_mask(lens, t, &self.device, self.embed.dtype())?;
        let total: usize = lens.iter().sum();
        let real = if total < r * t {
            let real: Vec<u32> = (0..r * t).filter(|&f| f % t < lens[f / t]).map(|f| f as u32).collect();
            let mut spread = vec![total as u32; r * t];
            for (j, &f) in real.iter().enumerate() {
                spread[f as usize] = j as u32;
            }
            Some((Tensor::from_vec(real, total, &self.device)?, Tensor::from_vec(spread, r * t, &self.device)?))
        } else {
            None
        };
        let last = LastRows {
            idx: Tensor::from_vec(idx, r, &self.device)?,
            rope: self.rope.rows(&Tensor::from_vec(pos, r, &self.device)?)?,
            mask: mask.clone(),
            real,
        };
        let (h, kvs) = self.forward_inner(tokens, None, None, Some(&last))?;
        Ok((HistoryKv::with_mask(kvs, lens, mask), h))
    }

    /// One decode step for all beams: `tokens[n]` is beam `n`'s newest token at
    /// position `positions[n]`; beams `r * beams .. (r + 1) * beams` belong to
    /// request `r`. `beams_kv` must already be reordered to these beams. Returns
    /// the final hidden states `[n, hidden]`.
    pub fn decode(
        &self,
        hist: &HistoryKv,
        beams_kv: &mut BeamKv,
        tokens: &[u32],
        positions: &[u32],
    ) -> Result<Tensor, ModelError> {
        let n = tokens.len();
        if positions.len() != n {
            return Err(ModelError::Input(format!("decode: {n} tokens, {} positions", positions.len())));
        }
        let tok = Tensor::from_slice(tokens, n, &self.device)?;
        let pos = Tensor::from_slice(positions, n, &self.device)?;
        self.decode_ids(hist, beams_kv, &tok, &pos)
    }

    /// [`Transformer::decode`] with tokens and positions as `u32` tensors on
    /// the model's device.
    pub fn decode_ids(
        &self,
        hist: &HistoryKv,
        beams_kv: &mut BeamKv,
        tok: &Tensor,
        pos: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let n = tok.dim(0)?;
        let r = hist.requests();
        if n == 0 || n % r != 0 || pos.dim(0)? != n {
            return Err(ModelError::Input(format!("decode: {n} beams for {r} requests")));
        }
        let beams = n / r;
        let rot = self.rope.rows(pos)?;
        let emb = self.embed.lookup(tok)?; // [n, h]
        let cd = emb.dtype();
        let mut x = emb.to_dtype(self.resid)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, self.cfg.rms_norm_eps, false)?.to_dtype(cd)?;
            let a = layer.attn.forward_decode(&h, &rot, hist.layer(i), hist.mask(), beams_kv, i, beams)?;
            x = (x + a.to_dtype(self.resid)?)?;
            let h = rms_norm(&x, &layer.post_norm, self.cfg.rms_norm_eps, false)?.to_dtype(cd)?;
            x = (&x + layer.mlp.forward(&h)?.to_dtype(self.resid)?)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, false)
    }
}

#[cfg(test)]
mod tests {
    use crate::generate::testutil::{random_catalog, random_model};
    use candle_core::{Device, Tensor};

    /// The training forward (differentiable rope and norms) and the serving
    /// forward (candle's fused rope, fused projections) agree.
    #[test]
    fn training_and_serving_forwards_agree() {
        let cat = random_catalog(20, &[4, 4, 3], 1);
        for arch in ["LlamaForCausalLM", "Qwen3ForCausalLM"] {
            let net = random_model(&cat, arch, 2).net;
            let mut served = net.clone();
            served.fuse_projections().unwrap();
            let toks = Tensor::from_slice(&[1u32, 5, 9, 13, 7, 2, 10, 4], (2, 4), &Device::Cpu).unwrap();
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
            let (h_train, kv_train) =
                net.forward_hidden(&toks, Some(super::Dropout { p: 0.0, rng: &mut rng })).unwrap();
            let (h_serve, kv_serve) = served.forward_hidden(&toks, None).unwrap();
            let diff =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff(&h_train, &h_serve) < 1e-5, "{arch}");
            assert!(
                diff(&kv_train[1].0, &kv_serve[1].0) < 1e-5 && diff(&kv_train[1].1, &kv_serve[1].1) < 1e-5,
                "{arch}"
            );
        }
    }

    /// A prompt's second part run after the first part's cached keys/values
    /// gives the hidden states and keys/values of one full forward.
    #[test]
    fn forward_after_a_cached_prefix_equals_one_full_forward() {
        let cat = random_catalog(20, &[4, 4, 3], 1);
        let net = random_model(&cat, "Qwen3ForCausalLM", 2).net;
        let toks: Vec<u32> = vec![1, 5, 9, 13, 7, 2, 10, 4];
        let dev = Device::Cpu;
        let full = Tensor::from_slice(&toks, (1, 8), &dev).unwrap();
        let (h_full, kv_full) = net.forward_hidden(&full, None).unwrap();
        let head = Tensor::from_slice(&toks[..5], (1, 5), &dev).unwrap();
        let (_, past) = net.forward_hidden(&head, None).unwrap();
        let tail = Tensor::from_slice(&toks[5..], (1, 3), &dev).unwrap();
        let (h_tail, kv) = net.forward_after(&tail, &past).unwrap();
        let diff =
            |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&h_full.narrow(1, 5, 3).unwrap(), &h_tail) < 1e-5);
        assert!(diff(&kv_full[1].0, &kv[1].0) < 1e-5 && diff(&kv_full[1].1, &kv[1].1) < 1e-5);
    }

    /// A prefill in chunks (here of 3 and 7 tokens over rows of 5 to 23)
    /// gives the last hidden states of one prefill, and the same next step.
    #[test]
    fn chunked_prefill_equals_one_prefill() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        for arch in ["LlamaForCausalLM", "Qwen3ForCausalLM"] {
            let mut net = random_model(&cat, arch, 2).net;
            net.fuse_projections().unwrap();
            let lens = [23usize, 5, 14];
            let t = 23;
            let flat: Vec<u32> =
                (0..3 * t).map(|i| if i % t < lens[i / t] { 3 + (i as u32 * 7) % 11 } else { 0 }).collect();
            let toks = Tensor::from_vec(flat, (3, t), &Device::Cpu).unwrap();
            let (kv_one, h_one) = net.prefill_in_chunks(&toks, &lens, usize::MAX).unwrap();
            let diff =
                |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            for chunk in [3, 7] {
                let (kv, h) = net.prefill_in_chunks(&toks, &lens, chunk).unwrap();
                assert!(diff(&h_one, &h) < 1e-5, "{arch} chunk {chunk}");
                // one decode step of two beams per request reads the cache the same
                let step = |kv: &super::HistoryKv| {
                    let mut beams = super::BeamKv::new(net.cfg.num_hidden_layers);
                    let pos: Vec<u32> = lens.iter().flat_map(|&l| [l as u32, l as u32]).collect();
                    net.decode(kv, &mut beams, &[4, 5, 6, 7, 8, 9], &pos).unwrap()
                };
                assert!(diff(&step(&kv_one), &step(&kv)) < 1e-5, "{arch} chunk {chunk}");
            }
        }
    }
}
