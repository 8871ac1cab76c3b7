//! Fresh weights for a config, with transformers' tensor names: normal(0, std)
//! for matrices, ones for norms, zeros for biases. Seeded, so training runs
//! repeat exactly.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::{Arch, ModelConfig};
use super::ModelError;

/// Name and shape of every tensor of a checkpoint for `cfg`.
pub fn tensor_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let (h, hd, ff) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.kv_heads());
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        v.push((format!("{p}.self_attn.q_proj.weight"), vec![nh * hd, h]));
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![nkv * hd, h]));
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![nkv * hd, h]));
        v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, nh * hd]));
        let bias = cfg.attention_biases()?;
        if bias.qkv {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![nh * hd]));
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![nkv * hd]));
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![nkv * hd]));
        }
        if bias.out {
            v.push((format!("{p}.self_attn.o_proj.bias"), vec![h]));
        }
        if cfg.arch()? == Arch::Qwen3 {
            v.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            v.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        v.push((format!("{p}.mlp.gate_proj.weight"), vec![ff, h]));
        v.push((format!("{p}.mlp.up_proj.weight"), vec![ff, h]));
        v.push((format!("{p}.mlp.down_proj.weight"), vec![h, ff]));
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    Ok(v)
}

/// Random initial weights for `cfg`.
pub fn init_weights(
    cfg: &ModelConfig,
    std: f32,
    seed: u64,
    dev: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, std).map_err(|e| ModelError::Config(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, shape) in tensor_shapes(cfg)? {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, dev)?);
    }
    Ok(out)
}
