//! Reading a llama-architecture GGUF file (llama.cpp's format, e.g.
//! SmolLM2-135M-Instruct Q4_1) into genrec's own transformer: the weights are
//! dequantised to f32 under transformers' tensor names, and the byte-level BPE
//! tokenizer is rebuilt from the vocabulary and merges stored in the file.
//!
//! llama.cpp's converter permutes the rows of the query and key projections so
//! that rotary pairs are adjacent (`2i, 2i+1`); transformers (and genrec) pair
//! `i` with `i + head_dim/2`. Loading undoes that permutation, so one decoder
//! serves both checkpoint kinds.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::ColdStartError;
use crate::model::config::ModelConfig;

/// Longest prompt plus label the intent model is asked to read.
pub const MAX_CONTEXT: usize = 2048;

/// GGUF token type of control tokens (`<|im_start|>`, ...).
const CONTROL_TOKEN: i32 = 3;

fn bad(path: &Path, msg: impl std::fmt::Display) -> ColdStartError {
    ColdStartError::Model(format!("{}: {msg}", path.display()))
}

/// Weights under transformers' names, the config and the tokenizer of a GGUF file.
pub struct GgufModel {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

fn md<'a>(ct: &'a Content, path: &Path, key: &str) -> Result<&'a Value, ColdStartError> {
    ct.metadata.get(key).ok_or_else(|| bad(path, format!("metadata {key:?} is missing")))
}

fn md_usize(ct: &Content, path: &Path, key: &str) -> Result<usize, ColdStartError> {
    let v = md(ct, path, key)?;
    v.to_u32().map(|x| x as usize).or_else(|_| v.to_u64().map(|x| x as usize)).map_err(|e| bad(path, format!("{key}: {e}")))
}

/// Undoes llama.cpp's rotary row permutation of a `[heads * head_dim, in]` matrix.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor, ColdStartError> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    Ok(w.reshape((heads, hd / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?)
}

/// Reads a llama GGUF file.
pub fn load(path: &Path) -> Result<GgufModel, ColdStartError> {
    let mut f = std::fs::File::open(path).map_err(|e| ColdStartError::Io(path.display().to_string(), e))?;
    let ct = Content::read(&mut f).map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
    let arch = md(&ct, path, "general.architecture")?.to_string().map_err(|e| bad(path, e))?.clone();
    if arch != "llama" {
        return Err(bad(path, format!("architecture {arch:?}: GGUF intent models must be llama-architecture (use a safetensors folder for others)")));
    }
    let heads = md_usize(&ct, path, "llama.attention.head_count")?;
    let kv_heads = md_usize(&ct, path, "llama.attention.head_count_kv").unwrap_or(heads);
    let layers = md_usize(&ct, path, "llama.block_count")?;
    let hidden = md_usize(&ct, path, "llama.embedding_length")?;
    let ff = md_usize(&ct, path, "llama.feed_forward_length")?;
    let eps = md(&ct, path, "llama.attention.layer_norm_rms_epsilon")?.to_f32().map_err(|e| bad(path, e))? as f64;
    let theta = ct.metadata.get("llama.rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0) as f64;
    let context = md_usize(&ct, path, "llama.context_length").unwrap_or(MAX_CONTEXT);

    let dev = Device::Cpu;
    let mut read = |name: &str| -> Result<Tensor, ColdStartError> {
        let q = ct.tensor(&mut f, name, &dev).map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        Ok(q.dequantize(&dev)?)
    };
    let mut tensors = HashMap::new();
    let embed = read("token_embd.weight")?;
    let vocab = embed.dim(0)?;
    let tied = !ct.tensor_infos.contains_key("output.weight");
    if !tied {
        tensors.insert("lm_head.weight".to_string(), read("output.weight")?);
    }
    tensors.insert("model.embed_tokens.weight".to_string(), embed);
    tensors.insert("model.norm.weight".to_string(), read("output_norm.weight")?);
    for i in 0..layers {
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        let h = |n: &str| format!("model.layers.{i}.{n}.weight");
        tensors.insert(h("self_attn.q_proj"), unpermute(&read(&g("attn_q"))?, heads)?);
        tensors.insert(h("self_attn.k_proj"), unpermute(&read(&g("attn_k"))?, kv_heads)?);
        tensors.insert(h("self_attn.v_proj"), read(&g("attn_v"))?);
        tensors.insert(h("self_attn.o_proj"), read(&g("attn_output"))?);
        tensors.insert(h("mlp.gate_proj"), read(&g("ffn_gate"))?);
        tensors.insert(h("mlp.up_proj"), read(&g("ffn_up"))?);
        tensors.insert(h("mlp.down_proj"), read(&g("ffn_down"))?);
        tensors.insert(h("input_layernorm"), read(&g("attn_norm"))?);
        tensors.insert(h("post_attention_layernorm"), read(&g("ffn_norm"))?);
    }
    let mut config = ModelConfig::llama(vocab, hidden, layers, heads, kv_heads, ff);
    config.rms_norm_eps = eps;
    config.rope_theta = theta;
    config.tie_word_embeddings = tied;
    config.max_position_embeddings = context.min(MAX_CONTEXT);
    let tokenizer = tokenizer(&ct, path)?;
    Ok(GgufModel { config, tensors, tokenizer })
}

fn strings(ct: &Content, path: &Path, key: &str) -> Result<Vec<String>, ColdStartError> {
    md(ct, path, key)?
        .to_vec()
        .map_err(|e| bad(path, format!("{key}: {e}")))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| bad(path, format!("{key}: {e}"))))
        .collect()
}

/// The byte-level BPE tokenizer stored in the file (`tokenizer.ggml.model` =
/// `gpt2`): digits split one by one, then GPT-2's byte-level pre-tokenizer;
/// control tokens are special tokens, matched whole in prompts.
fn tokenizer(ct: &Content, path: &Path) -> Result<Tokenizer, ColdStartError> {
    let model = md(ct, path, "tokenizer.ggml.model")?.to_string().map_err(|e| bad(path, e))?;
    if model != "gpt2" {
        return Err(bad(path, format!("tokenizer model {model:?}: only byte-level BPE (gpt2) is read from GGUF")));
    }
    let tokens = strings(ct, path, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(ct, path, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec().map_err(|e| bad(path, e))?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        None => Vec::new(),
    };
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ColdStartError::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    let pre: Vec<PreTokenizerWrapper> = vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()];
    tok.with_pre_tokenizer(Some(Sequence::new(pre)));
    tok.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == CONTROL_TOKEN)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&special);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_half_split_rotary_rows() {
        // one head of dim 4: HF rows [a0 a1 | b0 b1] are stored as [a0 b0 a1 b1]
        let stored = Tensor::new(&[[0f32], [2.], [1.], [3.]], &Device::Cpu).unwrap();
        let hf = unpermute(&stored, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(hf, vec![0., 1., 2., 3.]);
    }
}
