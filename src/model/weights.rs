//! The weights file checked before any tensor data is read: the tensors a
//! config implies (transformers' names, shapes), their dtypes, and nothing the
//! model code would silently ignore. A checkpoint that fails here costs the
//! server a header parse, not gigabytes of copies.

use std::collections::HashMap;

use safetensors::{Dtype, SafeTensors};

use super::config::ModelConfig;
use super::init::tensor_shapes as expected;
use super::ModelError;

/// Tensors a checkpoint may carry that the model recomputes (older
/// transformers saved the rotary frequencies).
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Parses the headers of the weight files `shards` (name, bytes; offsets
/// checked, no data copied) and checks them against `cfg`: every expected
/// tensor present once with its shape, in f32, f16 or bf16, and no tensor the
/// model would not read. Returns each shard's tensor names.
pub fn check<'a>(shards: &[(&'a str, &[u8])], cfg: &ModelConfig) -> Result<Vec<(&'a str, Vec<String>)>, ModelError> {
    let mut found: HashMap<String, (&str, Vec<usize>, Dtype)> = HashMap::new();
    let mut names = Vec::with_capacity(shards.len());
    for &(shard, bytes) in shards {
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Weights(format!("{shard}: {e}")))?;
        let mut here = Vec::new();
        for (name, view) in st.tensors() {
            if let Some((other, _, _)) = found.get(&name) {
                return Err(ModelError::Weights(format!("tensor {name} is in both {other} and {shard}")));
            }
            found.insert(name.clone(), (shard, view.shape().to_vec(), view.dtype()));
            here.push(name);
        }
        names.push((shard, here));
    }
    let files = shards.iter().map(|s| s.0).collect::<Vec<_>>().join(", ");
    let bad = |m: String| ModelError::Weights(format!("{files}: {m}"));
    let want = expected(cfg)?;
    for (name, shape) in &want {
        let (shard, have, dtype) = found.get(name).ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        if have != shape {
            return Err(ModelError::Weights(format!(
                "{shard}: tensor {name} has shape {have:?}, config.json implies {shape:?}"
            )));
        }
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ModelError::Weights(format!("{shard}: tensor {name} is {dtype:?}; f32, f16 or bf16 are read")));
        }
    }
    let known: std::collections::HashSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = found.keys().filter(|n| !known.contains(n.as_str()) && !ignorable(n)).collect();
    if !extra.is_empty() {
        extra.sort();
        let more = if extra.len() > 3 { format!(" and {} more", extra.len() - 3) } else { String::new() };
        extra.truncate(3);
        let extra: Vec<&str> = extra.into_iter().map(String::as_str).collect();
        return Err(bad(format!(
            "tensors the model would not read: {}{more} (a config.json that does not match the weights?)",
            extra.join(", ")
        )));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WEIGHTS_FILE;

    fn cfg() -> ModelConfig {
        ModelConfig::llama(40, 16, 2, 4, 2, 24)
    }

    fn file(cfg: &ModelConfig, edit: impl FnOnce(&mut Vec<(String, Vec<usize>)>)) -> Vec<u8> {
        let mut t = expected(cfg).unwrap();
        edit(&mut t);
        let tensors: HashMap<String, candle_core::Tensor> = t
            .into_iter()
            .map(|(n, s)| {
                (n, candle_core::Tensor::zeros(s, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap())
            })
            .collect();
        safetensors::serialize(&tensors, None).unwrap()
    }

    #[test]
    fn a_matching_file_passes_and_each_defect_is_named() {
        let c = cfg();
        check(&[(WEIGHTS_FILE, &file(&c, |_| {}))], &c).unwrap();
        let err = |f: Vec<u8>| check(&[(WEIGHTS_FILE, &f)], &c).unwrap_err().to_string();
        let e = err(file(&c, |t| t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight")));
        assert!(e.contains("model.layers.1.mlp.up_proj.weight is missing"), "{e}");
        let e = err(file(&c, |t| t[0].1 = vec![41, 16]));
        assert!(e.contains("model.embed_tokens.weight has shape [41, 16]"), "{e}");
        let e = err(file(&c, |t| t.push(("model.layers.0.self_attn.o_proj.bias".into(), vec![16]))));
        assert!(e.contains("would not read: model.layers.0.self_attn.o_proj.bias"), "{e}");
        check(
            &[(WEIGHTS_FILE, &file(&c, |t| t.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![2]))))],
            &c,
        )
        .unwrap();
        let e = err(b"\x08\x00\x00\x00\x00\x00\x00\x00{}".to_vec());
        assert!(e.contains(WEIGHTS_FILE), "{e}");
        // the same tensors over two files pass; a tensor in both is named
        let all = expected(&c).unwrap();
        let part = |keep: &dyn Fn(usize) -> bool| {
            file(&c, |t| *t = all.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, x)| x.clone()).collect())
        };
        let (a, b) = (part(&|i| i % 2 == 0), part(&|i| i % 2 == 1));
        let names = check(&[("a.safetensors", &a), ("b.safetensors", &b)], &c).unwrap();
        assert_eq!(names.iter().map(|(_, n)| n.len()).sum::<usize>(), all.len());
        let b2 = part(&|i| i % 2 == 1 || i == 0);
        let e = check(&[("a.safetensors", &a), ("b.safetensors", &b2)], &c).unwrap_err().to_string();
        assert!(e.contains(&format!("tensor {} is in both a.safetensors and b.safetensors", all[0].0)), "{e}");
        let e = check(&[("a.safetensors", &a)], &c).unwrap_err().to_string();
        assert!(e.contains(&format!("tensor {} is missing", all[1].0)), "{e}");
        // a config asking for huge tensors fails on the header, before any allocation
        let mut huge = c.clone();
        huge.num_hidden_layers = 200;
        huge.hidden_size = 8192;
        huge.intermediate_size = 32768;
        let e = check(&[(WEIGHTS_FILE, &file(&c, |_| {}))], &huge).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
    }
}
