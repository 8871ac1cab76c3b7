//! Checkpoints whose weights transformers splits over several files
//! (`save_pretrained` above its shard size, as for every model of a billion
//! parameters): `model.safetensors.index.json` names each tensor's shard, and
//! genrec reads the shards as one set of tensors. A checkpoint holds either
//! `model.safetensors` or the index and its shards.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;

use serde::Deserialize;

use super::{ModelError, WEIGHTS_FILE};
use crate::util::fingerprint;

pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The part of the index genrec reads (transformers also writes `metadata`).
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// A checkpoint's weight files, opened: `model.safetensors` alone (no
/// index), or every shard an index names.
pub struct WeightFiles {
    pub index: Option<Vec<u8>>,
    pub files: Vec<(String, File)>,
}

impl WeightFiles {
    /// Opens the weights through `open` (a file name inside the checkpoint
    /// folder; the engine opens them without following links):
    /// `model.safetensors` when it opens, else the index and its shards.
    /// When neither is there, the error is the single file's.
    pub fn open<E: std::fmt::Display>(open: impl Fn(&str) -> Result<File, E>) -> Result<Self, ModelError> {
        let single = match open(WEIGHTS_FILE) {
            Ok(f) => return Ok(WeightFiles { index: None, files: vec![(WEIGHTS_FILE.to_string(), f)] }),
            Err(e) => e,
        };
        let Ok(mut index_file) = open(INDEX_FILE) else {
            return Err(ModelError::Weights(single.to_string()));
        };
        let mut index = Vec::new();
        std::io::Read::read_to_end(&mut index_file, &mut index)
            .map_err(|e| ModelError::Io { path: INDEX_FILE.into(), source: e })?;
        let files = shard_names(&index)?
            .into_iter()
            .map(|name| {
                open(&name)
                    .map(|f| (name, f))
                    .map_err(|e| ModelError::Weights(format!("{INDEX_FILE} names a shard that does not open: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(WeightFiles { index: Some(index), files })
    }
}

fn parse(index: &[u8]) -> Result<Index, ModelError> {
    serde_json::from_slice(index).map_err(|e| ModelError::Json { path: INDEX_FILE.into(), source: e })
}

/// The shard files an index names, sorted, each a plain `*.safetensors` file
/// name in the checkpoint's own folder (no paths: an index cannot point
/// outside it).
pub fn shard_names(index: &[u8]) -> Result<Vec<String>, ModelError> {
    let names: BTreeSet<String> = parse(index)?.weight_map.into_values().collect();
    if names.is_empty() {
        return Err(ModelError::Weights(format!("{INDEX_FILE}: the weight map is empty")));
    }
    for n in &names {
        let plain = crate::util::is_plain_file_name(n) && n.ends_with(".safetensors");
        if !plain {
            return Err(ModelError::Weights(format!(
                "{INDEX_FILE}: shard {n:?} is not a .safetensors file name in the checkpoint folder"
            )));
        }
    }
    Ok(names.into_iter().collect())
}

/// Checks that every tensor the shards hold is in the shard the index says,
/// and that the index names no tensor the shards lack. `tensors` lists each
/// shard's tensor names.
pub fn check_placement(index: &[u8], tensors: &[(&str, Vec<String>)]) -> Result<(), ModelError> {
    let map = parse(index)?.weight_map;
    let bad = |m: String| Err(ModelError::Weights(format!("{INDEX_FILE}: {m}")));
    let mut seen = 0;
    for (shard, names) in tensors {
        for n in names {
            match map.get(n) {
                Some(s) if s == shard => seen += 1,
                Some(s) => return bad(format!("tensor {n} is in {shard}, the index says {s}")),
                None => return bad(format!("tensor {n} of {shard} is not in the index")),
            }
        }
    }
    if seen != map.len() {
        let missing = map.iter().find(|(n, s)| !tensors.iter().any(|(sh, names)| sh == s && names.contains(n)));
        let (n, s) = missing.map_or(("?", "?"), |(n, s)| (n.as_str(), s.as_str()));
        return bad(format!("tensor {n} is not in its shard {s}"));
    }
    Ok(())
}

/// The weights' fingerprint: the content hash of `model.safetensors`, or for
/// shards, of each shard's name and fingerprint in order (first 12 hex digits).
pub fn weights_fingerprint(shards: &[(&str, &[u8])]) -> String {
    let full = match shards {
        [(name, bytes)] if *name == WEIGHTS_FILE => fingerprint(bytes),
        _ => {
            fingerprint(shards.iter().map(|(n, b)| format!("{n}:{}\n", fingerprint(b))).collect::<String>().as_bytes())
        }
    };
    full[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_plain_shards_only() {
        let idx = |m: &str| format!(r#"{{"metadata": {{"total_size": 8}}, "weight_map": {m}}}"#).into_bytes();
        let names = shard_names(&idx(r#"{"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}"#)).unwrap();
        assert_eq!(names, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        for bad in [
            r#"{"a": "../x.safetensors"}"#,
            r#"{"a": "/etc/x.safetensors"}"#,
            r#"{"a": "x.bin"}"#,
            r#"{"a": ".x.safetensors"}"#,
            "{}",
        ] {
            assert!(shard_names(&idx(bad)).is_err(), "{bad}");
        }
        assert!(shard_names(b"{").is_err());
    }

    #[test]
    fn placement_must_match_the_index() {
        let idx = br#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#;
        let t = |a: &[&str], b: &[&str]| {
            let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            vec![("s1.safetensors", v(a)), ("s2.safetensors", v(b))]
        };
        check_placement(idx, &t(&["a"], &["b"])).unwrap();
        let e = |a: &[&str], b: &[&str]| check_placement(idx, &t(a, b)).unwrap_err().to_string();
        assert!(e(&["a", "b"], &[]).contains("tensor b is in s1.safetensors, the index says s2.safetensors"));
        assert!(e(&["a"], &[]).contains("tensor b is not in its shard s2.safetensors"));
        assert!(e(&["a", "z"], &["b"]).contains("tensor z of s1.safetensors is not in the index"));
    }

    #[test]
    fn versions_of_one_file_are_unchanged_and_shards_differ_by_content() {
        assert_eq!(weights_fingerprint(&[(WEIGHTS_FILE, b"abc")]), fingerprint(b"abc")[..12]);
        let v = weights_fingerprint(&[("s1.safetensors", b"abc"), ("s2.safetensors", b"def")]);
        assert_ne!(v, weights_fingerprint(&[("s1.safetensors", b"abc"), ("s2.safetensors", b"deg")]));
        assert_ne!(v, weights_fingerprint(&[("s1.safetensors", b"def"), ("s2.safetensors", b"abc")]));
    }
}
