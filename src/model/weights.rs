//! The weights file checked before any tensor data is read: the tensors a
//! config implies (transformers' names, shapes), their dtypes, and nothing the
//! model code would silently ignore. A checkpoint that fails here costs the
//! server a header parse, not gigabytes of copies.

use safetensors::{Dtype, SafeTensors};

use super::config::ModelConfig;
use super::init::tensor_shapes as expected;
use super::{ModelError, WEIGHTS_FILE};

/// Tensors a checkpoint may carry that the model recomputes (older
/// transformers saved the rotary frequencies).
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Parses the header of `bytes` (offsets checked, no data copied) and checks
/// it against `cfg`: every expected tensor present with its shape, in f32,
/// f16 or bf16, and no tensor the model would not read.
pub fn check(bytes: &[u8], cfg: &ModelConfig) -> Result<(), ModelError> {
    let bad = |m: String| ModelError::Weights(format!("{WEIGHTS_FILE}: {m}"));
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let want = expected(cfg)?;
    for (name, shape) in &want {
        let view = st.tensor(name).map_err(|_| bad(format!("tensor {name} is missing")))?;
        if view.shape() != shape.as_slice() {
            return Err(bad(format!("tensor {name} has shape {:?}, config.json implies {shape:?}", view.shape())));
        }
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(bad(format!("tensor {name} is {:?}; f32, f16 or bf16 are read", view.dtype())));
        }
    }
    let known: std::collections::HashSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<String> =
        st.names().into_iter().filter(|n| !known.contains(*n) && !ignorable(n)).map(str::to_string).collect();
    if !extra.is_empty() {
        extra.sort();
        let more = if extra.len() > 3 { format!(" and {} more", extra.len() - 3) } else { String::new() };
        extra.truncate(3);
        return Err(bad(format!(
            "tensors the model would not read: {}{more} (a config.json that does not match the weights?)",
            extra.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg() -> ModelConfig {
        ModelConfig::llama(40, 16, 2, 4, 2, 24)
    }

    fn file(cfg: &ModelConfig, edit: impl FnOnce(&mut Vec<(String, Vec<usize>)>)) -> Vec<u8> {
        let mut t = expected(cfg).unwrap();
        edit(&mut t);
        let tensors: HashMap<String, candle_core::Tensor> = t
            .into_iter()
            .map(|(n, s)| (n, candle_core::Tensor::zeros(s, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap()))
            .collect();
        safetensors::serialize(&tensors, None).unwrap()
    }

    #[test]
    fn a_matching_file_passes_and_each_defect_is_named() {
        let c = cfg();
        check(&file(&c, |_| {}), &c).unwrap();
        let err = |f: Vec<u8>| check(&f, &c).unwrap_err().to_string();
        let e = err(file(&c, |t| t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")));
        assert!(e.contains("model.layers.1.mlp.up_proj.weight is missing"), "{e}");
        let e = err(file(&c, |t| t[0].1 = vec![41, 16]));
        assert!(e.contains("model.embed_tokens.weight has shape [41, 16]"), "{e}");
        let e = err(file(&c, |t| t.push(("model.layers.0.self_attn.o_proj.bias".into(), vec![16]))));
        assert!(e.contains("would not read: model.layers.0.self_attn.o_proj.bias"), "{e}");
        check(&file(&c, |t| t.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![2]))), &c).unwrap();
        let e = err(b"\x08\x00\x00\x00\x00\x00\x00\x00{}".to_vec());
        assert!(e.contains(WEIGHTS_FILE), "{e}");
        // a config asking for huge tensors fails on the header, before any allocation
        let mut huge = c.clone();
        huge.num_hidden_layers = 200;
        huge.hidden_size = 8192;
        huge.intermediate_size = 32768;
        let e = check(&file(&c, |_| {}), &huge).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
    }
}
