//! LLM-layout checkpoints (semantic-ID tokens added to a text vocabulary)
//! against transformers: small random-weight Llama, Qwen2 and Qwen3 models,
//! their tokenizers and item maps written by `tests/llm_layout.py` as their
//! trainers would, served by `genrec serve --model` with only a
//! `genrec.json` added. The top-10 lists through HTTP must equal
//! transformers' `generate(num_beams=10, prefix_allowed_tokens_fn=...)` on
//! the same prompts, with the same scores; the prompts must tokenize alike.
//!
//! Needs `GENREC_PYTHON` (see `hf_compat`); skipped without it unless
//! `GENREC_REQUIRE_HF=1`.

use std::path::Path;

use candle_core::Device;
use serde_json::{json, Value};

use crate::common::{Server, TempDir};
use genrec::model::{Model, PromptText};

/// Largest allowed |genrec - transformers| of an item's summed
/// log-probability (float32, three levels).
const SCORE_TOLERANCE: f64 = 2e-3;

const TOKEN: &str = "llm-layout-token-0123456789";

/// What OneRec writes before an item's semantic-ID tokens.
const ANSWER_PREFIX: &str = "<|sid_begin|>";

fn python() -> Option<std::path::PathBuf> {
    crate::common::hf_python("llm_layout")
}

fn run_py(py: &Path, args: &[&str]) {
    crate::common::run_python(py, "tests/llm_layout.py", args)
}

/// One family's layout as its trainer publishes it.
struct Case {
    arch: &'static str,
    item_map: &'static str,
    format: &'static str,
    levels: &'static [&'static str],
    template: &'static str,
    /// The prompt goes into the tokenizer's chat template, followed by
    /// `<|sid_begin|>`.
    chat: bool,
}

const CASES: [Case; 3] = [
    // LC-Rec: the level tokens come from the item map (none named)
    Case {
        arch: "llama",
        item_map: "index.json",
        format: "index",
        levels: &[],
        template: "Below is a user's history: {history}. Which item comes next? ",
        chat: false,
    },
    Case {
        arch: "qwen2",
        item_map: "index.json",
        format: "index",
        levels: &["<a_{}>", "<b_{}>", "<c_{}>"],
        template: "[[The user: {profile}. ]]They bought {history}.[[ They search: {query}.]] Next: ",
        chat: false,
    },
    // OpenOneRec: sid2pid.json, a chat template, the answer after <|sid_begin|>
    Case {
        arch: "qwen3",
        item_map: "sid2pid.json",
        format: "sid2pid",
        levels: &["<s_a_{}>", "<s_b_{}>", "<s_c_{}>"],
        template: "  The user watched {history}. Recommend the next one.",
        chat: true,
    },
];

fn write_sidecar(dir: &Path, case: &Case) {
    std::fs::write(dir.join("prompt.txt"), format!("{}\n", case.template)).unwrap();
    let mut llm = json!({"item_map": case.item_map, "item_map_format": case.format, "prompt": "prompt.txt"});
    if !case.levels.is_empty() {
        llm["levels"] = json!(case.levels);
    }
    if case.chat {
        llm["chat"] = json!(true);
        llm["answer_prefix"] = json!(ANSWER_PREFIX);
    }
    let sidecar = json!({"format": "genrec-sidecar/1", "name": format!("llm-{}", case.arch), "max_history_items": 20, "llm": llm});
    std::fs::write(dir.join("genrec.json"), serde_json::to_vec_pretty(&sidecar).unwrap()).unwrap();
}

#[tokio::test]
async fn llm_layout_checkpoints_serve_the_lists_transformers_generates() {
    let Some(py) = python() else { return };
    let tmp = TempDir::new("llm-layout");
    for (seed, case) in CASES.iter().enumerate() {
        let dir = tmp.0.join(case.arch);
        run_py(&py, &["write", case.arch, dir.to_str().unwrap(), &(seed + 3).to_string()]);
        write_sidecar(&dir, case);

        // in process: the layout resolves and the catalog is the item map's
        let model = Model::load(&dir, &Device::Cpu).unwrap();
        let layout = model.vocab.text_layout().expect("an LLM layout");
        let ids = layout.item_ids.clone();
        assert_eq!(model.sidecar.codebook_sizes, vec![12, 11, 10], "{}", case.arch);
        assert_eq!(layout.aliases_dropped, usize::from(case.arch == "qwen3"));
        // qwen2's levels are interleaved in the vocabulary (gathered output
        // rows); the others are contiguous (a range): OneRec's by code, LC-Rec's
        // by token id (codes taken from the map in token order)
        assert_eq!(model.vocab.level_start(0).is_none(), case.arch == "qwen2", "{}", case.arch);

        // requests: histories of 1 to 8 items; qwen2's prompt also reads the
        // profile and the query
        let mut requests = Vec::new();
        for r in 0..6usize {
            let history: Vec<String> = (0..1 + r * 7 % 8).map(|j| ids[(r * 13 + j * 29) % ids.len()].clone()).collect();
            let (profile, query) = match (case.arch, r) {
                ("qwen2", 1) => (Some(json!({"age": 30, "occupation": "astronaut"})), None),
                ("qwen2", 2) => (None, Some("a red tent")),
                ("qwen2", 3) => (Some(json!({"interests": ["drama", "tents"]})), Some("novel")),
                _ => (None, None),
            };
            requests.push((history, profile, query));
        }
        let text = |p: &Option<Value>| -> Option<String> {
            p.as_ref()
                .map(|p| serde_json::from_value::<genrec::coldstart::Profile>(p.clone()).unwrap().describe_inline())
        };
        let spec = json!({
            "template": case.template,
            "separator": ", ",
            "item_map": case.item_map,
            "format": case.format,
            "levels": case.levels,
            "beams": 10,
            "chat": case.chat,
            "answer_prefix": if case.chat { ANSWER_PREFIX } else { "" },
            "requests": requests.iter().map(|(h, p, q)| json!({"history": h, "profile": text(p), "query": q})).collect::<Vec<_>>(),
        });
        let (spec_path, out_path) = (tmp.0.join("spec.json"), tmp.0.join("out.json"));
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        run_py(&py, &["generate", dir.to_str().unwrap(), spec_path.to_str().unwrap(), out_path.to_str().unwrap()]);
        let hf: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

        // the prompts tokenize alike
        let index: std::collections::HashMap<&str, usize> =
            ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        let levels = model.sidecar.levels();
        for ((h, p, q), want) in requests.iter().zip(hf["results"].as_array().unwrap()) {
            let rows: Vec<usize> = h.iter().map(|id| index[id.as_str()]).collect();
            let codes = &layout.item_codes;
            let sids = rows.iter().map(|&r| &codes[r * levels..(r + 1) * levels]);
            let prompt = PromptText { profile: text(p), query: q.map(String::from) };
            let got = model.vocab.request_tokens(&[], &prompt, sids).unwrap();
            let want: Vec<u32> = serde_json::from_value(want["prompt_ids"].clone()).unwrap();
            assert_eq!(got, want, "{}: prompt tokens of {h:?}", case.arch);
        }

        // through HTTP: the catalog is written from the item map at start
        // (beam 10 as transformers' num_beams; the server's default is 20)
        let root = tmp.0.to_str().unwrap();
        let s = Server::start(&[
            "--model",
            dir.to_str().unwrap(),
            "--beam",
            "10",
            "--admin-token",
            TOKEN,
            "--model-root",
            root,
        ]);
        assert!(dir.join("catalog").is_dir(), "{}: the item map's catalog is written", case.arch);
        let client = reqwest::Client::new();
        for ((h, p, q), want) in requests.iter().zip(hf["results"].as_array().unwrap()) {
            let mut body = json!({"history": h, "k": 10, "exclude_history": false});
            if let Some(p) = p {
                body["profile"] = p.clone();
            }
            if let Some(q) = q {
                body["query"] = json!(q);
            }
            let r = client.post(s.at("/v1/recommend")).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}: {body}", case.arch);
            let v: Value = r.json().await.unwrap();
            let got: Vec<&str> =
                v["items"].as_array().unwrap().iter().map(|i| i["item_id"].as_str().unwrap()).collect();
            let want_items: Vec<&str> = want["items"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
            assert_eq!(got, want_items, "{}: top-10 of {body}", case.arch);
            for (g, w) in v["items"].as_array().unwrap().iter().zip(want["scores"].as_array().unwrap()) {
                let (g, w) = (g["score"].as_f64().unwrap(), w.as_f64().unwrap());
                assert!((g - w).abs() < SCORE_TOLERANCE, "{}: score {g} vs transformers {w} for {body}", case.arch);
            }
            assert!(v["model"].as_str().unwrap().starts_with(&format!("llm-{}/", case.arch)), "{v}");
        }
        eprintln!("llm_layout {}: {} requests, lists and scores equal to transformers'", case.arch, requests.len());

        // a new item names its semantic ID (the item map's catalog has no
        // embeddings to place it by), and is then read in histories
        let taken: std::collections::HashSet<&[u32]> = layout.item_codes.chunks(levels).collect();
        let free: Vec<u32> = (0..12u32)
            .flat_map(|a| (0..11u32).flat_map(move |b| (0..10u32).map(move |c| vec![a, b, c])))
            .find(|sid| !taken.contains(sid.as_slice()))
            .unwrap();
        let post = |body: Value| client.post(s.at("/admin/items")).bearer_auth(TOKEN).json(&body).send();
        let r = post(json!({"id": "new-1", "title": "a live stream"})).await.unwrap();
        assert_eq!(r.status(), 422, "{}", case.arch);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], "semantic_id", "{v}");
        let r = post(json!({"id": "new-1", "title": "a live stream", "semantic_id": free})).await.unwrap();
        assert_eq!(r.status(), 201, "{}: {}", case.arch, r.text().await.unwrap());
        let body = json!({"history": [ids[0], "new-1"], "k": 10});
        let r = client.post(s.at("/v1/recommend")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["ignored_history"].as_array().is_none_or(|a| a.is_empty()), "{v}");

        // a hot swap to another folder of the same layout (a retrained model)
        let swap = tmp.0.join(format!("{}-b", case.arch));
        std::fs::create_dir_all(&swap).unwrap();
        for f in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()) {
            std::fs::copy(&f, swap.join(f.file_name().unwrap())).unwrap();
        }
        let mut sc: Value = serde_json::from_slice(&std::fs::read(swap.join("genrec.json")).unwrap()).unwrap();
        sc["name"] = json!(format!("llm-{}-b", case.arch));
        sc["catalog"] = json!(dir.join("catalog"));
        std::fs::write(swap.join("genrec.json"), sc.to_string()).unwrap();
        let path = format!("{}-b", case.arch);
        let r =
            client.post(s.at("/admin/models")).bearer_auth(TOKEN).json(&json!({"path": path})).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}: {}", case.arch, r.text().await.unwrap());
        let r = client.post(s.at("/v1/recommend")).json(&json!({"history": [ids[1]], "k": 3})).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        assert!(v["model"].as_str().unwrap().starts_with(&format!("llm-{}-b/", case.arch)), "{v}");
    }
}

/// `--watch` takes a new LLM-layout folder (another training run over the
/// same item map, built in Rust: no Python needed) as it takes any checkpoint.
#[tokio::test]
async fn watch_loads_a_new_llm_layout_folder() {
    let root = TempDir::new("llm-watch");
    let a = root.0.join("a");
    crate::common::llm::write(&a, 3);
    let args =
        ["--model", a.to_str().unwrap(), "--model-root", root.0.to_str().unwrap(), "--admin-token", TOKEN, "--watch"];
    let s = Server::start(&args);
    let c = reqwest::Client::new();
    let source = || async {
        let r = c.get(s.at("/admin/models")).bearer_auth(TOKEN).send().await.unwrap();
        let v: Value = r.json().await.unwrap();
        v["current"]["source"].as_str().unwrap_or_default().to_string()
    };
    assert!(source().await.ends_with("/a"));
    // (after the watch's first look, which takes what is there as known)
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    // staged under a dot-name, renamed into place
    let staging = root.0.join(".staging-b");
    crate::common::llm::write(&staging, 4);
    std::fs::rename(&staging, root.0.join("b")).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !source().await.ends_with("/b") {
        assert!(std::time::Instant::now() < until, "b was not loaded: {}", source().await);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let r = c.post(s.at("/v1/recommend")).json(&json!({"history": ["3", "17"], "k": 5})).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // a query the prompt has no room for (128 positions; within the API's
    // 1,000 characters) fails alone, named, while a request beside it is
    // answered
    let long = vec!["item"; 150].join(" ");
    let (bad, good) = tokio::join!(
        c.post(s.at("/v1/recommend")).json(&json!({"history": ["3"], "query": long, "k": 5})).send(),
        c.post(s.at("/v1/recommend")).json(&json!({"history": ["3"], "k": 5})).send()
    );
    let bad = bad.unwrap();
    assert_eq!(bad.status(), 422);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["field"], "query", "{v}");
    assert_eq!(good.unwrap().status(), 200);
}

/// `serve --scoring trie` normalises each code over the trie's valid
/// children (only the level's semantic-ID rows of the output layer): the
/// probabilities of all items sum to one; the default (`model`, over the
/// whole vocabulary, as transformers) leaves mass on the text tokens.
#[tokio::test]
async fn trie_scoring_serves_a_distribution_over_the_items() {
    let root = TempDir::new("llm-scoring");
    let dir = root.0.join("m");
    crate::common::llm::write(&dir, 5);
    let body = json!({"history": ["3", "17"], "k": 100, "exclude_history": false});
    let mut sums = Vec::new();
    for scoring in ["trie", "model"] {
        let s = Server::start(&["--model", dir.to_str().unwrap(), "--scoring", scoring, "--beam", "40"]);
        let r = reqwest::Client::new().post(s.at("/v1/recommend")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), crate::common::llm::ITEMS, "{scoring}: every item");
        sums.push(items.iter().map(|i| i["score"].as_f64().unwrap().exp()).sum::<f64>());
    }
    assert!((sums[0] - 1.0).abs() < 1e-3, "trie: {}", sums[0]);
    assert!(sums[1] < 0.99, "model: {}", sums[1]);
}

/// An LLM trained on the semantic IDs of a catalog genrec indexed: its item
/// map is that catalog's IDs as tokens, `--catalog` names the catalog, and
/// an item upserted by its embedding gets its codes from the catalog's
/// codebooks (no `semantic_id` needed), then reads in histories.
#[tokio::test]
async fn an_llm_layout_over_a_genrec_catalog_places_new_items_by_its_codebooks() {
    let root = crate::common::demo_root("llm-genrec-catalog");
    let catalog = root.0.join("catalog");
    let cat = genrec::catalog::Catalog::load(&catalog).unwrap();
    let sizes = cat.manifest().codebook_sizes.clone();
    let items: Vec<(String, Vec<u32>)> =
        (0..cat.len() as u32).map(|i| (cat.item_id(i).to_string(), cat.sid(i).to_vec())).collect();
    let dir = root.0.join("llm");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in crate::common::llm::files_over(&sizes, &items, 9) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let s = Server::start(&[
        "--model",
        dir.to_str().unwrap(),
        "--catalog",
        catalog.to_str().unwrap(),
        "--admin-token",
        TOKEN,
    ]);
    let c = reqwest::Client::new();
    let embedding = crate::common::vector(7, cat.manifest().embedding_dim);
    let r = c
        .post(s.at("/admin/items"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "fresh-1", "title": "new", "embedding": embedding}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["semantic_id"].as_array().map(Vec::len), Some(sizes.len()), "{v}");
    let r = c.post(s.at("/v1/recommend")).json(&json!({"history": ["3", "fresh-1"], "k": 5})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["ignored_history"].as_array().is_none_or(|a| a.is_empty()), "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(5), "{v}");
}
