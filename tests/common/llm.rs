//! A small LLM-layout checkpoint folder built in Rust (no Python): a
//! word-level `tokenizer.json` with the semantic-ID tokens `<a_N>`, `<b_N>`,
//! `<c_N>` added after the text words, a random-weight Qwen2 whose vocabulary
//! holds them, an LC-Rec `index.json` and a prompt template.

use std::collections::BTreeMap;

use candle_core::Device;
use genrec::model::config::ModelConfig;
use genrec::model::init::init_weights;
use genrec::model::{save_checkpoint, Sidecar};
use serde_json::{json, Value};

use super::hub::Files;
use super::TempDir;

pub const SIZES: [u32; 3] = [5, 4, 3];
pub const ITEMS: usize = 40;
const WORDS: [&str; 8] = ["the", "user", "bought", "next", "item", "is", ",", "."];

fn token(content: &str, id: usize, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// The folder's files, by name.
pub fn files(seed: u64) -> Files {
    let items: Vec<(String, Vec<u32>)> = (0..ITEMS)
        .map(|i| {
            let i = i as u32;
            (i.to_string(), vec![i % SIZES[0], i / SIZES[0] % SIZES[1], i / 20 % SIZES[2]])
        })
        .collect();
    files_over(&SIZES, &items, seed)
}

/// The letter of level `l`'s tokens (`<a_N>`, `<b_N>`, ...).
fn letter(l: usize) -> char {
    (b'a' + l as u8) as char
}

/// An LLM-layout folder over `items` (id, codes) with a token for every code
/// of `sizes` (`levels` patterns `<a_{}>`, ...): e.g. the semantic IDs of a
/// catalog genrec indexed, so that a new item's codes come from its
/// codebooks.
pub fn files_over(sizes: &[u32], items: &[(String, Vec<u32>)], seed: u64) -> Files {
    let mut vocab: BTreeMap<String, usize> = BTreeMap::new();
    let mut added = Vec::new();
    for (i, s) in ["<pad>", "<unk>", "<s>"].iter().enumerate() {
        vocab.insert(s.to_string(), i);
        added.push(token(s, i, true));
    }
    for w in WORDS {
        let id = vocab.len();
        vocab.insert(w.to_string(), id);
    }
    for (l, &size) in sizes.iter().enumerate() {
        for c in 0..size {
            let t = format!("<{}_{c}>", letter(l));
            let id = vocab.len();
            vocab.insert(t.clone(), id);
            added.push(token(&t, id, false));
        }
    }
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let map: BTreeMap<&str, Vec<String>> = items
        .iter()
        .map(|(id, codes)| {
            (id.as_str(), codes.iter().enumerate().map(|(l, c)| format!("<{}_{c}>", letter(l))).collect())
        })
        .collect();
    let levels: Vec<String> = (0..sizes.len()).map(|l| format!("<{}_{{}}>", letter(l))).collect();
    let mut cfg = ModelConfig::llama(vocab.len() + 3, 32, 2, 4, 2, 64);
    cfg.architectures = vec!["Qwen2ForCausalLM".into()];
    cfg.model_type = "qwen2".into();
    cfg.eos_token_id = Some(0);
    // room for short prompts only: a long query is refused by position
    cfg.max_position_embeddings = 128;
    let weights = init_weights(&cfg, 0.3, seed, &Device::Cpu).unwrap();
    let dir = TempDir::new("llm-fixture");
    let sidecar: Sidecar = serde_json::from_value(json!({
        "format": "genrec-sidecar/1", "name": "llm-fixture", "max_history_items": 20,
        "llm": {"item_map": "index.json", "levels": levels, "prompt": "prompt.txt"}
    }))
    .unwrap();
    save_checkpoint(&dir.0, &cfg, &weights, &sidecar).unwrap();
    let mut files: Files = ["config.json", "model.safetensors", "genrec.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.0.join(f)).unwrap()))
        .collect();
    files.insert("tokenizer.json".into(), tokenizer.to_string().into_bytes());
    files.insert("index.json".into(), serde_json::to_vec(&map).unwrap());
    files.insert("prompt.txt".into(), b"the user bought {history} .[[ {query} .]] next item is\n".to_vec());
    files
}

/// [`files`] written to `dir`.
pub fn write(dir: &std::path::Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files(seed) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
