//! The command line end to end on a small synthetic world: demo-data, index
//! (with precomputed embeddings, so no encoder download is needed), train, eval.

use crate::common;

use std::collections::HashMap;
use std::process::Command;

use candle_core::{Device, Tensor};
use common::TempDir;

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(common::bin()).args(args).output().expect("run genrec");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "genrec {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn demo_data_index_train_eval() {
    let tmp = TempDir::new("cli");
    let d = |p: &str| tmp.0.join(p).to_string_lossy().into_owned();
    run(&["demo-data", "--out", &d("data"), "--items", "64", "--users", "150", "--seed", "3"]);

    // embeddings of our own: one-hot-ish vectors by item id
    let n = 64;
    let dim = 8;
    let v: Vec<f32> = (0..n * dim).map(|i| (((i / dim) * 7 + (i % dim) * 3) % 11) as f32 - 5.0).collect();
    let mut t = HashMap::new();
    t.insert("embeddings".to_string(), Tensor::from_vec(v, (n, dim), &Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, tmp.0.join("emb.safetensors")).unwrap();

    let (out, _) = run(&[
        "index",
        "--items",
        &d("data/demo.item.json"),
        "--embeddings",
        &d("emb.safetensors"),
        "--out",
        &d("cat"),
        "--levels",
        "2",
        "--codebook-size",
        "4",
        "--seed",
        "1",
    ]);
    assert!(out.contains("level 0: 4/4 codes used"), "{out}");
    assert!(out.contains("collisions:"), "{out}");
    // same seed, same IDs
    run(&[
        "index",
        "--items",
        &d("data/demo.item.json"),
        "--embeddings",
        &d("emb.safetensors"),
        "--out",
        &d("cat2"),
        "--levels",
        "2",
        "--codebook-size",
        "4",
        "--seed",
        "1",
    ]);
    for f in ["v-000001/sids.u32", "v-000001/codebooks.f32", "v-000001/trie.child_code.u32"] {
        assert_eq!(
            std::fs::read(tmp.0.join("cat").join(f)).unwrap(),
            std::fs::read(tmp.0.join("cat2").join(f)).unwrap(),
            "{f}"
        );
    }

    let (out, err) = run(&[
        "train",
        "--data",
        &d("data/demo.inter.json"),
        "--catalog",
        &d("cat"),
        "--out",
        &d("model"),
        "--epochs",
        "2",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ff",
        "64",
        "--batch-size",
        "32",
        "--valid-users",
        "20",
    ]);
    assert!(err.contains("epoch 2/2"), "{err}");
    assert!(out.contains("validation: {"), "{out}");

    let (out, _) = run(&["eval", "--data", &d("data/demo.inter.json"), "--model", &d("model"), "--max-users", "40"]);
    let last = out.lines().last().unwrap();
    let m: serde_json::Value = serde_json::from_str(last).unwrap();
    for key in ["recall@5", "ndcg@5", "recall@10", "ndcg@10"] {
        let x = m[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    assert_eq!(m["users"], 40);
    // an ensemble of a model with itself ranks as the model does
    let (out, _) = run(&[
        "eval",
        "--data",
        &d("data/demo.inter.json"),
        "--model",
        &d("model"),
        "--model",
        &d("model"),
        "--max-users",
        "40",
    ]);
    let pair: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(pair, m);

    // two members: seeds 42 and 43, the second under ens/members/1, listed
    // by the lead's sidecar; the folder evaluates (and serves) as one model
    let (out, err) = run(&[
        "train",
        "--data",
        &d("data/demo.inter.json"),
        "--catalog",
        &d("cat"),
        "--out",
        &d("ens"),
        "--epochs",
        "1",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ff",
        "64",
        "--batch-size",
        "32",
        "--valid-users",
        "20",
        "--members",
        "2",
    ]);
    assert!(err.contains("member 2 of 2 (seed 43)"), "{err}");
    assert_eq!(out.matches("trained ").count(), 2, "{out}");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.0.join("ens/genrec.json")).unwrap()).unwrap();
    assert_eq!(side["members"], serde_json::json!(["members/1"]));
    let w = |p: &str| std::fs::read(tmp.0.join(p).join("model.safetensors")).unwrap();
    assert_ne!(w("ens"), w("ens/members/1"), "the members' seeds differ");
    let (_, err) = run(&["eval", "--data", &d("data/demo.inter.json"), "--model", &d("ens"), "--max-users", "40"]);
    assert!(err.contains("2 models"), "{err}");

    // bad input fails with a message naming the problem
    let out = Command::new(common::bin())
        .args(["index", "--items", &d("missing.item.json"), "--out", &d("x")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.item.json"));
}

#[test]
fn help_explains_commands() {
    let (out, _) = run(&["--help"]);
    for cmd in ["index", "train", "eval", "serve", "demo-data"] {
        assert!(out.contains(cmd), "{out}");
    }
    let (out, _) = run(&["serve", "--help"]);
    assert!(out.contains("--model") && out.contains("GENREC_ADDR"), "{out}");
}
