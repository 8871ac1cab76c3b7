//! The Hugging Face `config.json` of a Llama-, Qwen2- or Qwen3-family causal
//! LM: the fields genrec reads and writes, with transformers' defaults.

use serde::{Deserialize, Serialize};

use super::ModelError;

/// Which attention variant the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`: optional q/k/v/o biases, no q/k norms.
    Llama,
    /// `Qwen2ForCausalLM`: biases on the q/k/v projections (always), none on
    /// the output projection, no q/k norms.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on queries and keys before rotary.
    Qwen3,
}

/// Which projections of an attention block carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBias {
    pub qkv: bool,
    pub out: bool,
}

/// Upper bounds of the config's sizes (well above any model genrec serves,
/// far below what would exhaust memory before the weights are checked).
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_HIDDEN: usize = 1 << 15;
pub const MAX_INTERMEDIATE: usize = 1 << 17;
pub const MAX_LAYERS: usize = 512;
pub const MAX_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 1024;
pub const MAX_POSITIONS: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Special tokens; a list (Llama 3's several end tokens) is read as its
    /// first entry.
    #[serde(default, deserialize_with = "one_token")]
    pub bos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "one_token")]
    pub eos_token_id: Option<u32>,
    #[serde(default, deserialize_with = "one_token")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    /// Older transformers: rotary scaling (only absent / `default` is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5 writes `{"rope_type": "default", "rope_theta": ...}` here
    /// instead of a top-level `rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Qwen2/Qwen3: sliding-window attention (not served; refused when on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_sliding_window: bool,
}

/// A token id given as a number, a list of numbers (the first is taken) or
/// null.
fn one_token<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Ids>::deserialize(d)? {
        None => None,
        Some(Ids::One(t)) => Some(t),
        Some(Ids::Many(ts)) => ts.first().copied(),
    })
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}
fn default_dtype() -> String {
    "float32".into()
}

impl ModelConfig {
    /// A Llama config of the given size (what `genrec train` writes).
    pub fn llama(vocab: usize, hidden: usize, layers: usize, heads: usize, kv_heads: usize, ff: usize) -> Self {
        ModelConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: ff,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: Some(hidden / heads),
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            attention_bias: false,
            hidden_act: "silu".into(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: "float32".into(),
            rope_scaling: None,
            rope_parameters: None,
            mlp_bias: false,
            use_sliding_window: false,
        }
    }

    pub fn arch(&self) -> Result<Arch, ModelError> {
        match self.architectures.first().map(String::as_str) {
            Some("LlamaForCausalLM") => Ok(Arch::Llama),
            Some("Qwen2ForCausalLM") => Ok(Arch::Qwen2),
            Some("Qwen3ForCausalLM") => Ok(Arch::Qwen3),
            other => Err(ModelError::Config(format!(
                "architectures {other:?}: genrec reads LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM"
            ))),
        }
    }

    /// The attention biases transformers gives this family: Llama and Qwen3
    /// put `attention_bias` on all four projections, Qwen2 always biases
    /// q/k/v and never the output.
    pub fn attention_biases(&self) -> Result<AttentionBias, ModelError> {
        Ok(match self.arch()? {
            Arch::Qwen2 => AttentionBias { qkv: true, out: false },
            Arch::Llama | Arch::Qwen3 => AttentionBias { qkv: self.attention_bias, out: self.attention_bias },
        })
    }

    /// Rotary base: `rope_parameters.rope_theta` when present, else `rope_theta`.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(self.rope_theta)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks every size against a bound (a config sizes allocations: an
    /// unbounded field could abort the process before the weights are even
    /// looked at) and the shape relations the model code relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.arch()?;
        let bad = |m: String| Err(ModelError::Config(m));
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.kv_heads(), MAX_HEADS),
            ("head_dim", self.head_dim(), MAX_HEAD_DIM),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ];
        for (field, v, max) in sizes {
            if v == 0 || v > max {
                return bad(format!("{field} is {v}; it must be between 1 and {max}"));
            }
        }
        for (field, v) in [("rms_norm_eps", self.rms_norm_eps), ("rope_theta", self.rope_base())] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{field} is {v}; it must be a positive number"));
            }
        }
        if self.num_attention_heads == 0 || self.kv_heads() == 0 || self.num_hidden_layers == 0 {
            return bad("heads and layers must be positive".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for rotary positions", self.head_dim()));
        }
        if self.hidden_act != "silu" {
            return bad(format!("hidden_act {:?}: only silu (SwiGLU) is supported", self.hidden_act));
        }
        for (field, v) in [("rope_scaling", &self.rope_scaling), ("rope_parameters", &self.rope_parameters)] {
            let kind = v.as_ref().filter(|v| !v.is_null()).map(|v| v.get("rope_type").or_else(|| v.get("type")));
            if let Some(kind) = kind {
                if kind.and_then(serde_json::Value::as_str).unwrap_or("default") != "default" {
                    return bad(format!("{field}: only the default rotary embedding is supported, got {kind:?}"));
                }
            }
        }
        if self.mlp_bias {
            return bad("mlp_bias is not supported".into());
        }
        if self.use_sliding_window {
            return bad("use_sliding_window: sliding-window attention is not supported".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_llama_and_qwen3_configs() {
        let llama: ModelConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":100,
                "hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(llama.arch().unwrap(), Arch::Llama);
        assert_eq!(llama.head_dim(), 8);
        llama.validate().unwrap();
        let mut qwen = llama.clone();
        qwen.architectures = vec!["Qwen3ForCausalLM".into()];
        qwen.head_dim = Some(16);
        assert_eq!(qwen.arch().unwrap(), Arch::Qwen3);
        assert_eq!(qwen.head_dim(), 16);
        let mut bad = llama.clone();
        bad.num_key_value_heads = Some(3);
        assert!(bad.validate().is_err());
        bad.architectures = vec!["GPT2LMHeadModel".into()];
        assert!(bad.arch().is_err());
        let mut qwen2 = llama.clone();
        qwen2.architectures = vec!["Qwen2ForCausalLM".into()];
        assert_eq!(qwen2.arch().unwrap(), Arch::Qwen2);
        assert_eq!(qwen2.attention_biases().unwrap(), AttentionBias { qkv: true, out: false });
        qwen2.use_sliding_window = true;
        assert!(qwen2.validate().unwrap_err().to_string().contains("sliding"));
        let mut biased = llama.clone();
        biased.attention_bias = true;
        assert_eq!(biased.attention_biases().unwrap(), AttentionBias { qkv: true, out: true });
    }

    #[test]
    fn every_size_is_bounded_and_named() {
        let ok = ModelConfig::llama(100, 32, 2, 4, 2, 64);
        ok.validate().unwrap();
        type Case = (&'static str, fn(&mut ModelConfig));
        let cases: [Case; 6] = [
            ("vocab_size", |c| c.vocab_size = MAX_VOCAB + 1),
            ("num_hidden_layers", |c| c.num_hidden_layers = usize::MAX),
            ("max_position_embeddings", |c| c.max_position_embeddings = 1 << 40),
            ("intermediate_size", |c| c.intermediate_size = 0),
            ("head_dim", |c| c.head_dim = Some(4096)),
            ("rms_norm_eps", |c| c.rms_norm_eps = f64::NAN),
        ];
        for (field, edit) in cases {
            let mut c = ok.clone();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn reads_rope_theta_from_transformers5_rope_parameters() {
        let mut c: ModelConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":100,
                "hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,
                "rope_parameters":{"rope_theta":5000.0,"rope_type":"default"}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_base(), 5000.0);
        c.rope_parameters = Some(serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
        assert!(c.validate().unwrap_err().to_string().contains("yarn"));
        c.rope_parameters = None;
        assert_eq!(c.rope_base(), 10_000.0);
    }

    #[test]
    fn reads_special_tokens_given_as_a_number_a_list_or_null() {
        let base = r#""architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":100,
            "hidden_size":32,"intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4"#;
        let c: ModelConfig =
            serde_json::from_str(&format!(r#"{{{base},"eos_token_id":[7,9],"bos_token_id":3,"pad_token_id":null}}"#))
                .unwrap();
        assert_eq!((c.eos_token_id, c.bos_token_id, c.pad_token_id), (Some(7), Some(3), None));
        let c: ModelConfig = serde_json::from_str(&format!("{{{base}}}")).unwrap();
        assert_eq!(c.eos_token_id, None);
    }
}
