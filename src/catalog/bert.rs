//! The BERT encoder (Devlin et al. 2019, "BERT: Pre-training of Deep
//! Bidirectional Transformers") behind the item text embeddings: token,
//! position and segment embeddings, then post-norm layers of bidirectional
//! self-attention and a GELU feed-forward block. It reads a Hugging Face
//! `BertModel` checkpoint (`config.json` + safetensors with HF names, with or
//! without a `bert.` prefix), such as all-MiniLM-L6-v2; the pooler is not
//! used. Checked against candle-transformers' BERT on MiniLM
//! (`testdata/minilm_reference.json`).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, LayerNormConfig, Linear, VarBuilder};

/// The fields of a Hugging Face BERT `config.json` the encoder needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_kind")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_kind() -> String {
    "absolute".into()
}

/// How the feed-forward block's activation is computed.
#[derive(Debug, Clone, Copy)]
enum Activation {
    /// `gelu`: the exact form, x·Φ(x).
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => candle_core::bail!("unsupported hidden_act {other:?} in the encoder's config.json"),
        })
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A BERT encoder on the CPU in f32.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    segments: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    activation: Activation,
}

impl Bert {
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        if cfg.position_embedding_type != "absolute" {
            candle_core::bail!("unsupported position_embedding_type {:?} (absolute only)", cfg.position_embedding_type);
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let (h, eps) = (cfg.hidden_size, LayerNormConfig { eps: cfg.layer_norm_eps, ..Default::default() });
        let emb = vb.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let (attention, ffn_out) = (l.pp("attention"), l.pp("output"));
                Ok(Layer {
                    query: linear(h, h, attention.pp("self.query"))?,
                    key: linear(h, h, attention.pp("self.key"))?,
                    value: linear(h, h, attention.pp("self.value"))?,
                    attention_out: linear(h, h, attention.pp("output.dense"))?,
                    attention_norm: layer_norm(h, eps, attention.pp("output.LayerNorm"))?,
                    intermediate: linear(h, cfg.intermediate_size, l.pp("intermediate.dense"))?,
                    output: linear(cfg.intermediate_size, h, ffn_out.pp("dense"))?,
                    output_norm: layer_norm(h, eps, ffn_out.pp("LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            words: embedding(cfg.vocab_size, h, emb.pp("word_embeddings"))?,
            positions: embedding(cfg.max_position_embeddings, h, emb.pp("position_embeddings"))?,
            segments: embedding(cfg.type_vocab_size, h, emb.pp("token_type_embeddings"))?,
            embeddings_norm: layer_norm(h, eps, emb.pp("LayerNorm"))?,
            layers,
            heads: cfg.num_attention_heads,
            activation: Activation::parse(&cfg.hidden_act)?,
        })
    }

    /// The last layer's hidden states `[batch, tokens, hidden]` for token ids
    /// `[batch, tokens]` (one segment) whose real tokens are marked 1 in
    /// `mask` (`[batch, tokens]`, u32); padding attends and is attended to
    /// by nothing.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, tokens as u32, device)?.unsqueeze(0)?;
        let x = self.words.forward(ids)?.broadcast_add(&self.positions.forward(&positions)?)?;
        let x = x.broadcast_add(&self.segments.forward(&Tensor::zeros((1, 1), DType::U32, device)?)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        // a large negative score on padded keys: [batch, 1, 1, tokens]
        let blocked = (1.0 - mask.to_dtype(DType::F32)?)?.affine(f32::MIN as f64, 0.0)?;
        let blocked = blocked.reshape((batch, 1, 1, tokens))?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &blocked)?;
        }
        Ok(x)
    }

    fn layer(&self, l: &Layer, x: &Tensor, blocked: &Tensor) -> Result<Tensor> {
        let (batch, tokens, hidden) = x.dims3()?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| t.reshape((batch, tokens, self.heads, head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(l.query.forward(x)?)?;
        let k = split(l.key.forward(x)?)?;
        let v = split(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?.broadcast_add(blocked)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, tokens, hidden))?;
        let x = l.attention_norm.forward(&(l.attention_out.forward(&context)? + x)?)?;
        let inner = self.activation.apply(&l.intermediate.forward(&x)?)?;
        l.output_norm.forward(&(l.output.forward(&inner)? + &x)?)
    }
}

/// Mean of the hidden states over the real tokens, scaled to unit length
/// (Sentence-BERT pooling): `[batch, hidden]`.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let mean = summed.broadcast_div(&m.sum(1)?.clamp(1e-9, f64::MAX)?)?;
    let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}
