//! Reading a llama-architecture GGUF file (llama.cpp's format, e.g.
//! SmolLM2-135M-Instruct Q4_1) into genrec's own transformer: the matrices stay
//! in their quantized blocks ([`crate::model::proj`]) under transformers'
//! tensor names, the norms become f32, and the byte-level BPE tokenizer is
//! rebuilt from the vocabulary and merges stored in the file.
//!
//! llama.cpp's converter permutes the rows of the query and key projections so
//! that rotary pairs are adjacent (`2i, 2i+1`); transformers (and genrec) pair
//! `i` with `i + head_dim/2`. Loading undoes that permutation (a reordering of
//! whole rows, so of whole quantized blocks), so one decoder serves both
//! checkpoint kinds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::ColdStartError;
use crate::model::config::ModelConfig;
use crate::model::proj::QuantWeights;

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
    pub weights: QuantWeights,
    pub tokenizer: Tokenizer,
}

fn md<'a>(ct: &'a Content, path: &Path, key: &str) -> Result<&'a Value, ColdStartError> {
    ct.metadata.get(key).ok_or_else(|| bad(path, format!("metadata {key:?} is missing")))
}

fn md_usize(ct: &Content, path: &Path, key: &str) -> Result<usize, ColdStartError> {
    let v = md(ct, path, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| bad(path, format!("{key}: {e}")))
}

/// Row `r` of the transformers layout is stored row `unpermuted_source(r)`:
/// llama.cpp stores each head's rows `[a0 b0 a1 b1 ...]` where transformers
/// has `[a0 a1 ... | b0 b1 ...]` (head dim `hd`).
fn unpermuted_source(r: usize, hd: usize) -> usize {
    let (head, j) = (r / hd, r % hd);
    let (half, i) = (j / (hd / 2), j % (hd / 2));
    head * hd + 2 * i + half
}

/// Undoes llama.cpp's rotary row permutation of a `[heads * head_dim, in]`
/// matrix: rows hold whole quantized blocks, so rows move as bytes.
fn unpermute(q: &QTensor, heads: usize) -> Result<QTensor, ColdStartError> {
    let (rows, cols) = q.shape().dims2()?;
    // whole heads of an even size, or the row arithmetic below divides by zero
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(ColdStartError::Model(format!(
            "a projection of {rows} rows cannot hold {heads} attention heads of an even size (the file's head_count does not fit its tensors)"
        )));
    }
    let hd = rows / heads;
    let data = q.data()?;
    let rb = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = unpermuted_source(r, hd);
        out.extend_from_slice(&data[src * rb..(src + 1) * rb]);
    }
    Ok(qtensor_from_ggml(q.dtype(), &out, vec![rows, cols], &Device::Cpu)?)
}

/// Block type that blocks without a fast CPU product are converted to: Q8_0
/// holds a Q5 model's values almost exactly, where re-quantizing to Q4_0
/// moved SmolLM2's log-probabilities by up to 3.4 nats among the likeliest
/// tokens. (Q4_1 blocks stay: genrec multiplies them itself, see
/// [`crate::model::q4_1`].)
const FAST_TARGET: GgmlDType = GgmlDType::Q8_0;

/// Rows converted at a time (bounds the f32 copy a conversion makes).
const CONVERT_ROWS: usize = 2048;

/// `q` in blocks multiplied with SIMD on x86, if it is not: Q4_0, Q4_1, Q8_0
/// and the K-quants stay as they are (`None`); Q5_0 and Q5_1 (scalar
/// products in candle, several times slower) are converted to
/// [`FAST_TARGET`], a few rows at a time. Vectors (f32) stay.
fn converted(q: &QTensor) -> Result<Option<QTensor>, ColdStartError> {
    if !matches!(q.dtype(), GgmlDType::Q5_0 | GgmlDType::Q5_1) {
        return Ok(None);
    }
    let dev = Device::Cpu;
    let (rows, cols) = q.shape().dims2()?;
    let (data, target) = (q.data()?, FAST_TARGET);
    let rb = data.len() / rows.max(1);
    let mut out = Vec::with_capacity(rows * cols / target.block_size() * target.type_size());
    for start in (0..rows).step_by(CONVERT_ROWS) {
        let n = CONVERT_ROWS.min(rows - start);
        let part = qtensor_from_ggml(q.dtype(), &data[start * rb..(start + n) * rb], vec![n, cols], &dev)?;
        out.extend_from_slice(&QTensor::quantize(&part.dequantize(&dev)?, target)?.data()?);
    }
    Ok(Some(qtensor_from_ggml(target, &out, vec![rows, cols], &dev)?))
}

/// `q` in fast blocks (see [`converted`]).
fn fast_blocks(q: QTensor) -> Result<QTensor, ColdStartError> {
    Ok(converted(&q)?.unwrap_or(q))
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
    let mut read = |name: &str| -> Result<QTensor, ColdStartError> {
        ct.tensor(&mut f, name, &dev).map_err(|e| bad(path, format!("tensor {name}: {e}")))
    };
    let mut quant = HashMap::new();
    let mut dense = HashMap::new();
    // the embedding table is only looked up (rows dequantised one by one): it
    // keeps its blocks; a tied output layer shares them (Q4_1) or gets its own copy in fast blocks
    let embed = Arc::new(read("token_embd.weight")?);
    let vocab = embed.shape().dims2()?.0;
    let head = match ct.tensor_infos.contains_key("output.weight") {
        true => Arc::new(fast_blocks(read("output.weight")?)?),
        false => converted(&embed)?.map_or_else(|| embed.clone(), Arc::new),
    };
    quant.insert("lm_head.weight".to_string(), head);
    quant.insert("model.embed_tokens.weight".to_string(), embed);
    dense.insert("model.norm.weight".to_string(), read("output_norm.weight")?.dequantize(&dev)?);
    for i in 0..layers {
        let g = |n: &str| format!("blk.{i}.{n}.weight");
        let h = |n: &str| format!("model.layers.{i}.{n}.weight");
        quant.insert(h("self_attn.q_proj"), Arc::new(fast_blocks(unpermute(&read(&g("attn_q"))?, heads)?)?));
        quant.insert(h("self_attn.k_proj"), Arc::new(fast_blocks(unpermute(&read(&g("attn_k"))?, kv_heads)?)?));
        for (ours, theirs) in [
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"),
            ("mlp.gate_proj", "ffn_gate"),
            ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ] {
            quant.insert(h(ours), Arc::new(fast_blocks(read(&g(theirs))?)?));
        }
        dense.insert(h("input_layernorm"), read(&g("attn_norm"))?.dequantize(&dev)?);
        dense.insert(h("post_attention_layernorm"), read(&g("ffn_norm"))?.dequantize(&dev)?);
    }
    let mut config = ModelConfig::llama(vocab, hidden, layers, heads, kv_heads, ff);
    config.rms_norm_eps = eps;
    config.rope_theta = theta;
    config.tie_word_embeddings = false; // the output layer is its own entry (above: its own tensor, or the embedding's blocks shared)
    config.max_position_embeddings = context.min(MAX_CONTEXT);
    let tokenizer = tokenizer(&ct, path)?;
    Ok(GgufModel { config, weights: QuantWeights { quant, dense, device: dev }, tokenizer })
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
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| ColdStartError::Tokenizer(e.to_string()))?;
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
    tok.add_special_tokens(special).map_err(|e| bad(path, format!("special tokens: {e}")))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_restores_half_split_rotary_rows() {
        // one head of dim 4: HF rows [a0 a1 | b0 b1] are stored as [a0 b0 a1 b1]
        let src: Vec<usize> = (0..4).map(|r| unpermuted_source(r, 4)).collect();
        assert_eq!(src, vec![0, 2, 1, 3]);
        // two heads of dim 4: each head separately
        let src: Vec<usize> = (0..8).map(|r| unpermuted_source(r, 4)).collect();
        assert_eq!(src, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // on an f32 tensor: stored rows [0 2 1 3] come back as [0 1 2 3]
        let dev = Device::Cpu;
        let stored = candle_core::Tensor::new(&[[0f32; 32], [2.; 32], [1.; 32], [3.; 32]], &dev).unwrap();
        let q = QTensor::quantize(&stored, candle_core::quantized::GgmlDType::F32).unwrap();
        let hf = unpermute(&q, 1).unwrap().dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(hf.iter().map(|r| r[0]).collect::<Vec<_>>(), vec![0., 1., 2., 3.]);
    }

    /// A file whose head count does not fit its projections is refused with
    /// a reason (it divided by zero at start: 8 heads over 4 rows).
    #[test]
    fn a_head_count_that_does_not_fit_the_rows_is_an_error() {
        let dev = Device::Cpu;
        let rows = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &dev).unwrap();
        let q = QTensor::quantize(&rows, candle_core::quantized::GgmlDType::F32).unwrap();
        for heads in [8, 3, 0, 4] {
            let e = unpermute(&q, heads).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("head_count"), "{heads} heads: {e}");
        }
        assert!(unpermute(&q, 2).is_ok());
    }
}
