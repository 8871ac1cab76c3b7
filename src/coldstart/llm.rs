//! The intent language model: a small causal LM (SmolLM2-135M-Instruct by
//! default) that scores candidate intent labels by their log-likelihood after a
//! prompt. Free generation from a model this small wanders; scoring a closed
//! set of labels does not.
//!
//! Scoring reuses genrec's own decoder and its shared-history KV layout: the
//! prompt is prefilled once as the "history" of one request, and every
//! candidate label is one "beam" of that request, decoded token by token
//! against the prompt's keys and values. One prefill plus one batched decode
//! step per label token, for all candidates at once; candidates that begin
//! with the same tokens share those steps (one beam per distinct prefix). The
//! prompt's fixed part (system turn, few-shot examples, the user turn up to the
//! profile) is computed once and kept: a profile costs only the rest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::{gguf, ColdStartError};
use crate::model::config::ModelConfig;
use crate::model::{BeamKv, HistoryKv, Transformer};

/// Keys/values of a prompt's fixed part, by its token ids.
type PrefixKv = (Vec<u32>, Arc<Vec<(Tensor, Tensor)>>);

/// A causal LM with its tokenizer.
pub struct IntentLm {
    net: Transformer,
    tokenizer: Tokenizer,
    name: String,
    /// The tokenizer knows ChatML's `<|im_start|>` / `<|im_end|>`.
    chatml: bool,
    /// The last fixed prompt part and its keys/values (system turn and
    /// few-shot examples: the same for every profile).
    prefix: Mutex<Option<PrefixKv>>,
}

impl IntentLm {
    /// Loads a llama GGUF file, or a Hugging Face folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`) of a Llama or Qwen3 model.
    pub fn load(path: &Path) -> Result<Self, ColdStartError> {
        let dev = Device::Cpu;
        let (net, tokenizer) = if path.is_dir() {
            let read = |f: &str| {
                let p = path.join(f);
                std::fs::read(&p).map_err(|e| ColdStartError::Io(p.display().to_string(), e))
            };
            let mut config: ModelConfig = serde_json::from_slice(&read("config.json")?)
                .map_err(|e| ColdStartError::Model(format!("{}/config.json: {e}", path.display())))?;
            config.max_position_embeddings = config.max_position_embeddings.min(gguf::MAX_CONTEXT);
            let tensors = candle_core::safetensors::load_buffer(&read("model.safetensors")?, &dev)?
                .into_iter()
                .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
                .collect::<Result<_, ColdStartError>>()?;
            let tok = Tokenizer::from_bytes(read("tokenizer.json")?)
                .map_err(|e| ColdStartError::Tokenizer(format!("{}/tokenizer.json: {e}", path.display())))?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let net = Transformer::load(vb, &config)
                .map_err(|e| ColdStartError::Model(format!("{}: {e}", path.display())))?;
            (net, tok)
        } else if path.exists() {
            // the matrices stay quantized (a quarter of f32's memory or less)
            let g = gguf::load(path)?;
            let net = Transformer::load_quantized(&g.weights, &g.config)
                .map_err(|e| ColdStartError::Model(format!("{}: {e}", path.display())))?;
            (net, g.tokenizer)
        } else {
            return Err(ColdStartError::Model(format!(
                "{} not found: run scripts/fetch-models.sh to fetch SmolLM2, or leave --intent-model out (its default is none)",
                path.display()
            )));
        };
        Ok(Self::from_parts(net, tokenizer, path))
    }

    fn from_parts(net: Transformer, tokenizer: Tokenizer, path: &Path) -> Self {
        let chatml = tokenizer.token_to_id("<|im_start|>").is_some() && tokenizer.token_to_id("<|im_end|>").is_some();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        IntentLm { net, tokenizer, name, chatml, prefix: Mutex::new(None) }
    }

    /// A GGUF model with its weights dequantised to f32: the same decoder
    /// without the quantized products' rounding of activations, for tests
    /// that compare two computations of the same scores exactly.
    #[cfg(test)]
    pub(crate) fn load_dequantized(path: &Path) -> Result<Self, ColdStartError> {
        let g = gguf::load(path)?;
        let dev = Device::Cpu;
        let mut tensors: std::collections::HashMap<String, Tensor> = g.weights.dense.clone();
        for (name, q) in &g.weights.quant {
            tensors.insert(name.clone(), q.dequantize(&dev)?);
        }
        let net = Transformer::load(VarBuilder::from_tensors(tensors, DType::F32, &dev), &g.config)?;
        Ok(Self::from_parts(net, g.tokenizer, path))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether prompts should use ChatML turns.
    pub fn chatml(&self) -> bool {
        self.chatml
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ColdStartError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| ColdStartError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Log-probabilities of the next token after each row of `hidden` `[n, h]`.
    fn log_probs(&self, hidden: &Tensor) -> Result<Vec<Vec<f32>>, ColdStartError> {
        let logits = self.net.logits(hidden)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        Ok(lp.to_vec2::<f32>()?)
    }

    /// Mean log-probability per token of each candidate continuing `fixed`
    /// then `prompt` (candidates are tokenised on their own; give them their
    /// leading space). `fixed` is the part of the prompt that does not change
    /// between calls: its keys/values are kept and reused.
    pub fn score(&self, fixed: &str, prompt: &str, candidates: &[String]) -> Result<Vec<f32>, ColdStartError> {
        let fixed_ids = self.encode(fixed)?;
        let prompt_ids = self.encode(prompt)?;
        let cands: Vec<Vec<u32>> = candidates.iter().map(|c| self.encode(c)).collect::<Result<_, _>>()?;
        self.score_ids(&fixed_ids, &prompt_ids, &cands)
    }

    /// Keys/values of the fixed prompt part, cached.
    fn prefix_kv(&self, fixed: &[u32]) -> Result<Arc<Vec<(Tensor, Tensor)>>, ColdStartError> {
        if let Ok(slot) = self.prefix.lock() {
            if let Some((_, kv)) = slot.as_ref().filter(|(ids, _)| ids == fixed) {
                return Ok(kv.clone());
            }
        }
        let t = Tensor::from_slice(fixed, (1, fixed.len()), self.net.device())?;
        let kv = Arc::new(self.net.forward_hidden(&t, None)?.1);
        if let Ok(mut slot) = self.prefix.lock() {
            *slot = Some((fixed.to_vec(), kv.clone()));
        }
        Ok(kv)
    }

    /// [`IntentLm::score`] on token ids.
    pub fn score_ids(&self, fixed: &[u32], prompt: &[u32], cands: &[Vec<u32>]) -> Result<Vec<f32>, ColdStartError> {
        if prompt.is_empty() {
            return Err(ColdStartError::Model("empty prompt".into()));
        }
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let longest = cands.iter().map(Vec::len).max().unwrap_or(0);
        let max = self.net.config().max_position_embeddings;
        let t = fixed.len() + prompt.len();
        if t + longest > max {
            return Err(ColdStartError::Model(format!(
                "prompt of {t} tokens plus a label of {longest} exceed the model's {max} positions"
            )));
        }
        let dev = self.net.device().clone();
        let rest = Tensor::from_slice(prompt, (1, prompt.len()), &dev)?;
        let (hidden, kvs) = if fixed.is_empty() {
            self.net.forward_hidden(&rest, None)?
        } else {
            self.net.forward_after(&rest, &self.prefix_kv(fixed)?)?
        };
        let last = hidden.narrow(1, prompt.len() - 1, 1)?.squeeze(1)?;
        let hist = HistoryKv::new(kvs, &[t], t, &dev, last.dtype())?;
        let first = self.log_probs(&last)?;
        let mut sums: Vec<f32> = cands.iter().map(|c| c.first().map_or(0.0, |&tok| first[0][tok as usize])).collect();
        // candidates that share their first tokens share those steps: each
        // step decodes every distinct prefix once, as one beam of the prompt
        let mut kv = BeamKv::new(self.net.config().num_hidden_layers);
        let mut prev: HashMap<&[u32], u32> = HashMap::new();
        for j in 0..longest.saturating_sub(1) {
            // the prefixes `c[..=j]` of candidates with a token after them
            let mut nodes: Vec<&[u32]> = Vec::new();
            let mut index: HashMap<&[u32], u32> = HashMap::new();
            for c in cands.iter().filter(|c| c.len() > j + 1) {
                index.entry(&c[..=j]).or_insert_with(|| {
                    nodes.push(&c[..=j]);
                    nodes.len() as u32 - 1
                });
            }
            if j > 0 {
                let parents: Vec<u32> = nodes.iter().map(|p| prev.get(&p[..j]).copied().unwrap_or(0)).collect();
                kv.reorder(&parents)?;
            }
            let toks: Vec<u32> = nodes.iter().map(|p| p[j]).collect();
            let pos = vec![(t + j) as u32; nodes.len()];
            let hidden = self.net.decode(&hist, &mut kv, &toks, &pos)?;
            let lp = self.log_probs(&hidden)?;
            for (i, c) in cands.iter().enumerate().filter(|(_, c)| c.len() > j + 1) {
                sums[i] += lp[index[&c[..=j]] as usize][c[j + 1] as usize];
            }
            prev = index;
        }
        Ok(sums
            .iter()
            .zip(cands)
            .map(|(s, c)| if c.is_empty() { f32::NEG_INFINITY } else { s / c.len() as f32 })
            .collect())
    }

    /// Log-probabilities of the next token after `prompt`, computed by a plain
    /// full forward (no cache): the reference the cached scoring is tested against.
    pub fn next_token_log_probs(&self, prompt: &[u32]) -> Result<Vec<f32>, ColdStartError> {
        let dev = self.net.device().clone();
        let (h, _) = self.net.forward_hidden(&Tensor::from_slice(prompt, (1, prompt.len()), &dev)?, None)?;
        let last = h.narrow(1, prompt.len() - 1, 1)?.squeeze(1)?;
        Ok(self.log_probs(&last)?.remove(0))
    }
}
