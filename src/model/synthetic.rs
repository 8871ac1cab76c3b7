//! Production-shaped models with random weights, built where they run: the
//! GPU benchmarks need Qwen3-0.6B and -1.7B shapes (the sizes of the
//! generative recommenders genrec is compared with: NVIDIA recsys-examples'
//! SID-GR on Qwen3-1.7B, FlashRec on OneRec-1.7B) without carrying gigabytes
//! of weights to the device. The vocabulary is the semantic-ID tokens alone,
//! so the output layer is as wide as the codebooks (as FlashRec computes it).
//! Weights are a seeded, position-keyed hash, so any device and dtype build
//! the same model, in parallel.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::config::ModelConfig;
use super::init::tensor_shapes;
use super::{Model, ModelError, Sidecar, Transformer};
use crate::catalog::Manifest;

/// The decoder shapes genrec knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Qwen3-0.6B: 28 layers, hidden 1024, 16 heads, 8 KV heads, head dim 128, MLP 3072.
    Qwen3_0_6B,
    /// Qwen3-1.7B: 28 layers, hidden 2048, 16 heads, 8 KV heads, head dim 128, MLP 6144.
    Qwen3_1_7B,
    /// A 2-layer Qwen3 of the same kind, small enough for tests on a CPU.
    Tiny,
}

impl Shape {
    /// (layers, hidden, heads, kv heads, head dim, MLP width).
    fn dims(self) -> (usize, usize, usize, usize, usize, usize) {
        match self {
            Shape::Qwen3_0_6B => (28, 1024, 16, 8, 128, 3072),
            Shape::Qwen3_1_7B => (28, 2048, 16, 8, 128, 6144),
            Shape::Tiny => (2, 64, 4, 2, 16, 128),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shape::Qwen3_0_6B => "qwen3-0.6b",
            Shape::Qwen3_1_7B => "qwen3-1.7b",
            Shape::Tiny => "qwen3-tiny",
        }
    }

    /// A Qwen3 config of this shape over `vocab` tokens (tied embeddings and
    /// rotary base as in the released models).
    pub fn config(self, vocab: usize) -> ModelConfig {
        let (layers, hidden, heads, kv, head_dim, ff) = self.dims();
        let mut c = ModelConfig::llama(vocab, hidden, layers, heads, kv, ff);
        c.architectures = vec!["Qwen3ForCausalLM".into()];
        c.model_type = "qwen3".into();
        c.head_dim = Some(head_dim);
        c.rope_theta = 1_000_000.0;
        c.max_position_embeddings = 32_768;
        c.tie_word_embeddings = true;
        c.torch_dtype = "bfloat16".into();
        c
    }
}

/// The semantic-ID layouts of the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 3 levels of 8,192 codes (OneRec).
    OneRec,
    /// 4 levels of 256 codes (TIGER).
    Tiger,
}

impl Layout {
    pub fn codebook_sizes(self) -> Vec<u32> {
        match self {
            Layout::OneRec => vec![8192; 3],
            Layout::Tiger => vec![256; 4],
        }
    }
}

/// A uniform value in [-1, 1) from a 64-bit key (splitmix64's finaliser).
fn hash_unit(key: u64) -> f32 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) / (1u64 << 23) as f32 - 1.0
}

/// Random weights for `cfg` on the CPU in f32: matrices uniform with standard
/// deviation `std` (norms 1 + 0.1 x uniform), each value keyed by (seed,
/// tensor, position).
pub fn random_weights(cfg: &ModelConfig, std: f32, seed: u64) -> Result<HashMap<String, Tensor>, ModelError> {
    // uniform on [-a, a) has standard deviation a / sqrt(3)
    let a = std * 3f32.sqrt();
    let mut out = HashMap::new();
    for (t, (name, shape)) in tensor_shapes(cfg)?.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let base = seed.wrapping_mul(0x1000_0000_0000_0001) ^ ((t as u64) << 40);
        let norm = name.ends_with("norm.weight");
        let data: Vec<f32> = (0..n)
            .into_par_iter()
            .with_min_len(1 << 16)
            .map(|i| {
                let u = hash_unit(base.wrapping_add(i as u64));
                if norm {
                    1.0 + 0.1 * u
                } else {
                    a * u
                }
            })
            .collect();
        out.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// A model of `shape` with random weights over the catalog described by
/// `manifest`, on `device` in `dtype`, reading up to `max_history_items`.
/// Weight standard deviation 0.05 (0.5 for the tied embedding, so that the
/// next-code distributions are peaked and ties rare).
pub fn build(
    shape: Shape,
    manifest: &Manifest,
    max_history_items: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Model, ModelError> {
    let sidecar = Sidecar::for_catalog(&format!("synthetic-{}", shape.name()), ".", manifest, max_history_items);
    let config = shape.config(sidecar.min_vocab());
    config.validate()?;
    sidecar.check_positions(&config)?;
    let mut w = random_weights(&config, 0.05, seed)?;
    if let Some(e) = w.get_mut("model.embed_tokens.weight") {
        *e = (&*e * 10.0)?;
    }
    let w = w
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?.to_device(device)?)))
        .collect::<Result<HashMap<_, _>, ModelError>>()?;
    let mut net = Transformer::load(VarBuilder::from_tensors(w, dtype, device), &config)?;
    net.fuse_projections()?;
    let version = format!("{}-seed{seed}", shape.name());
    Model::assemble(net, config, sidecar, version, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_released_models() {
        // parameters besides the (vocabulary-sized) embedding; with Qwen3's
        // 151,936-token tied embedding they make the model cards' 0.6B
        // (596,049,920) and 1.7B (1,720,574,976) totals
        let body = |s: Shape| -> usize {
            let c = s.config(3);
            tensor_shapes(&c)
                .unwrap()
                .iter()
                .filter(|(n, _)| !n.contains("embed"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum()
        };
        assert_eq!(body(Shape::Qwen3_0_6B) + 151_936 * 1024, 596_049_920);
        assert_eq!(body(Shape::Qwen3_1_7B) + 151_936 * 2048, 1_720_574_976);
        assert_eq!(Layout::OneRec.codebook_sizes(), [8192; 3]);
        assert_eq!(Layout::Tiger.codebook_sizes(), [256; 4]);
    }

    #[test]
    fn weights_repeat_and_have_their_spread() {
        let c = Shape::Tiny.config(40);
        let (a, b) = (random_weights(&c, 0.05, 3).unwrap(), random_weights(&c, 0.05, 3).unwrap());
        let q = "model.layers.1.self_attn.q_proj.weight";
        let v = a[q].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, b[q].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std - 0.05).abs() < 0.003, "{std}");
        let other = random_weights(&c, 0.05, 4).unwrap()[q].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(v, other);
    }
}
