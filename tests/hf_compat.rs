//! Checkpoint compatibility with Hugging Face transformers, both directions:
//! a checkpoint written by genrec loads with `AutoModelForCausalLM` and gives
//! the same next-token log-probabilities, and one written by transformers'
//! `save_pretrained` plus a genrec sidecar loads, matches and serves in genrec.
//!
//! Needs a Python with torch and transformers, named by `GENREC_PYTHON`
//! (`scripts/test.sh` sets one up). Without it the test says so and passes,
//! unless `GENREC_REQUIRE_HF=1`, as in CI.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use common::{repo, Server, TempDir};
use genrec::catalog::Catalog;
use genrec::model::config::ModelConfig;
use genrec::model::init::init_weights;
use genrec::model::{save_checkpoint, Model, Sidecar};
use serde_json::{json, Value};

/// Largest allowed |genrec - transformers| of a float32 log-probability.
const TOLERANCE: f32 = 1e-4;

fn python() -> Option<std::path::PathBuf> {
    crate::common::hf_python("hf_compat")
}

fn run_py(py: &Path, args: &[&str]) {
    crate::common::run_python(py, "tests/hf_compat.py", args)
}

fn demo_dir() -> PathBuf {
    repo().join("models/demo")
}

/// Token sequences over the demo catalog: bos, whole items, and one that ends
/// inside an item (the positions a beam step reads).
fn sequences(sidecar: &Sidecar, catalog: &Catalog) -> Vec<Vec<u32>> {
    let pick = |idx: &[u32]| sidecar.history_tokens(idx.iter().map(|&i| catalog.sid(i)));
    let mut partial = pick(&[5, 77, 300]);
    partial.extend(sidecar.sid_tokens(catalog.sid(42)).take(2));
    vec![pick(&[0]), pick(&[3, 11, 19, 250, 599]), partial, pick(&(0..30).map(|i| i * 19 % 600).collect::<Vec<_>>())]
}

/// genrec's log-probabilities `[sequence][position][token]`.
fn genrec_logprobs(model: &Model, seqs: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    seqs.iter()
        .map(|s| {
            let t = Tensor::from_slice(s, (1, s.len()), &Device::Cpu).unwrap();
            let (h, _) = model.net.forward_hidden(&t, None).unwrap();
            let lp = candle_nn::ops::log_softmax(&model.net.logits(&h).unwrap(), D::Minus1).unwrap();
            lp.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
        })
        .collect()
}

/// transformers' log-probabilities for the same sequences.
fn hf_logprobs(py: &Path, model_dir: &Path, seqs: &[Vec<u32>], tmp: &Path) -> Vec<Vec<Vec<f32>>> {
    let (inp, out) = (tmp.join("tokens.json"), tmp.join("logprobs.json"));
    std::fs::write(&inp, json!({ "sequences": seqs }).to_string()).unwrap();
    run_py(py, &["logprobs", model_dir.to_str().unwrap(), inp.to_str().unwrap(), out.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    serde_json::from_value(v["logprobs"].clone()).unwrap()
}

fn max_abs_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len(), "positions differ");
        for (p, q) in x.iter().zip(y) {
            assert_eq!(p.len(), q.len(), "vocabulary sizes differ");
            for (u, v) in p.iter().zip(q) {
                worst = worst.max((u - v).abs());
            }
        }
    }
    worst
}

/// The demo sidecar with a profile vocabulary (profile tokens after the codes).
fn profiled(sidecar: &Sidecar) -> Sidecar {
    sidecar.clone().with_profile(["age:25-34", "gender:female", "interest:drama"].map(String::from))
}

/// [`sequences`] plus two that read profile tokens after `bos`.
fn profiled_sequences(sidecar: &Sidecar, catalog: &Catalog) -> Vec<Vec<u32>> {
    let p = sidecar.profile.as_ref().expect("a profiled sidecar");
    let mut seqs = sequences(sidecar, catalog);
    seqs.push(sidecar.request_tokens(&[p.offset + 2, p.offset], [catalog.sid(7), catalog.sid(8)]));
    seqs.push(sidecar.request_tokens(&[p.offset + 1], []));
    seqs
}

/// A Qwen3 checkpoint written by genrec (the trainer writes Llama; Qwen3's
/// q/k norms and explicit head_dim are the other layout genrec reads), with
/// profile tokens in its vocabulary.
fn write_genrec_qwen3(dir: &Path, demo: &Model) {
    let mut cfg = demo.config.clone();
    let mut sidecar = profiled(&demo.sidecar);
    cfg.vocab_size = sidecar.min_vocab();
    cfg.architectures = vec!["Qwen3ForCausalLM".into()];
    cfg.model_type = "qwen3".into();
    cfg.head_dim = Some(32);
    cfg.rope_theta = 20_000.0;
    let mut w = init_weights(&cfg, 0.2, 7, &Device::Cpu).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("norm") {
            *t = (t.clone() + t.randn_like(0.0, 0.3).unwrap()).unwrap();
        }
    }
    sidecar.catalog = demo_dir().join("catalog").to_string_lossy().into_owned();
    save_checkpoint(dir, &cfg, &w, &sidecar).unwrap();
}

#[test]
fn genrec_checkpoints_load_in_transformers_with_the_same_logprobs() {
    let Some(py) = python() else { return };
    let tmp = TempDir::new("hf-out");
    let demo = Model::load(&demo_dir().join("model"), &Device::Cpu).unwrap();
    let catalog = Catalog::load(&demo_dir().join("catalog")).unwrap();
    let seqs = sequences(&demo.sidecar, &catalog);

    // the embedded demo model, written by `genrec train`
    let diff =
        max_abs_diff(&genrec_logprobs(&demo, &seqs), &hf_logprobs(&py, &demo_dir().join("model"), &seqs, &tmp.0));
    eprintln!("genrec llama -> transformers: max |diff| {diff:e}");
    assert!(diff < TOLERANCE, "llama: max |diff| {diff}");

    let qdir = tmp.0.join("qwen3");
    write_genrec_qwen3(&qdir, &demo);
    let q = Model::load(&qdir, &Device::Cpu).unwrap();
    let seqs = profiled_sequences(&q.sidecar, &catalog);
    let diff = max_abs_diff(&genrec_logprobs(&q, &seqs), &hf_logprobs(&py, &qdir, &seqs, &tmp.0));
    eprintln!("genrec qwen3 -> transformers: max |diff| {diff:e}");
    assert!(diff < TOLERANCE, "qwen3: max |diff| {diff}");
}

#[tokio::test]
async fn transformers_checkpoints_load_and_serve_in_genrec() {
    let Some(py) = python() else { return };
    let tmp = TempDir::new("hf-in");
    let demo = Model::load(&demo_dir().join("model"), &Device::Cpu).unwrap();
    let catalog = Catalog::load(&demo_dir().join("catalog")).unwrap();
    for (i, arch) in ["llama", "qwen3"].into_iter().enumerate() {
        // the Qwen3 model also reads profile tokens
        let base = if arch == "qwen3" { profiled(&demo.sidecar) } else { demo.sidecar.clone() };
        let seqs = if arch == "qwen3" { profiled_sequences(&base, &catalog) } else { sequences(&base, &catalog) };
        let dir = tmp.0.join(arch);
        // the Qwen3 model is saved in shards with an index, as transformers
        // saves every model above its default shard size
        let mut args = vec!["write", arch];
        let (vocab, seed) = (base.min_vocab().to_string(), (i + 1).to_string());
        args.extend([vocab.as_str(), dir.to_str().unwrap(), seed.as_str()]);
        if arch == "qwen3" {
            args.push("100KB");
        }
        run_py(&py, &args);
        let sharded = dir.join("model.safetensors.index.json").exists() && !dir.join("model.safetensors").exists();
        assert_eq!(sharded, arch == "qwen3", "{arch}: shards written as asked");
        // what a PyTorch user adds: the sidecar naming the catalog
        let mut sidecar = base.clone();
        sidecar.name = format!("hf-{arch}");
        sidecar.catalog = demo_dir().join("catalog").to_string_lossy().into_owned();
        std::fs::write(dir.join("genrec.json"), serde_json::to_vec_pretty(&sidecar).unwrap()).unwrap();
        let cfg: ModelConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg.rope_base(), 5000.0, "transformers 5 keeps rope_theta in rope_parameters");

        let m = Model::load(&dir, &Device::Cpu).unwrap();
        let diff = max_abs_diff(&genrec_logprobs(&m, &seqs), &hf_logprobs(&py, &dir, &seqs, &tmp.0));
        eprintln!("transformers {arch} -> genrec: max |diff| {diff:e}");
        assert!(diff < TOLERANCE, "{arch}: max |diff| {diff}");

        let s = Server::start(&["--model", dir.to_str().unwrap()]);
        let r = reqwest::Client::new()
            .post(s.at("/v1/recommend"))
            .json(&json!({"history": ["3", "11", "19"], "k": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["items"].as_array().map(Vec::len), Some(10), "{v}");
        assert!(v["model"].as_str().is_some_and(|m| m.starts_with(&format!("hf-{arch}/"))), "{v}");
        if common::fetched(".models/all-minilm-l6-v2/model.safetensors").is_none() {
            continue;
        }
        // a new user: the profiled model reads the profile, the other says it cannot
        let r = reqwest::Client::new()
            .post(s.at("/v1/recommend"))
            .json(&json!({"profile": {"age": 30, "occupation": "astronaut"}, "k": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["items"].as_array().map(Vec::len), Some(5), "{v}");
        let note = v["profile_note"].as_str().unwrap_or_default();
        if arch == "qwen3" {
            assert!(note.contains("occupation:astronaut") && !note.contains("age"), "{v}");
        } else {
            assert!(note.contains("trained without profiles"), "{v}");
        }
    }
}
