//! The GPU path. These tests always compile; the ones that need a GPU run only
//! in a `cuda` build (`cargo test --release --features cuda` with the
//! scripts/build-cuda.sh environment) on a machine with one, and say that they
//! skipped otherwise. Every GPU result is compared with the CPU reference.

use crate::common;

use std::process::Command;

/// `--device cuda:0` never panics and never starts a CPU server silently: a CPU
/// build says how to get a GPU build, a GPU build without a GPU says none was
/// found, and a GPU build with one serves.
#[test]
fn serve_on_cuda_fails_clearly_without_a_gpu() {
    if cfg!(feature = "cuda") && genrec::device::gpu_available() {
        eprintln!("skipped: a GPU is present (the GPU serving test covers it)");
        return;
    }
    let out = Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--intent-model", "none", "--device", "cuda:0"])
        .output()
        .expect("run genrec");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = if cfg!(feature = "cuda") { "no GPU found" } else { "scripts/build-cuda.sh" };
    assert!(err.contains(want), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_device_dtype_and_kernel_are_refused() {
    for (flag, value) in [("--device", "tpu:0"), ("--dtype", "f8"), ("--beam-kernel", "bitonic")] {
        let out = Command::new(common::bin())
            .args(["serve", "--addr", "127.0.0.1:0", "--intent-model", "none", flag, value])
            .output()
            .expect("run genrec");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(value), "{err}");
    }
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use crate::common::{post_json, Server};
    use genrec::gpu_check::{run, CheckOptions};
    use serde_json::json;

    fn gpu() -> bool {
        let ok = genrec::device::gpu_available();
        if !ok {
            eprintln!("skipped: no GPU on this machine");
        }
        ok
    }

    /// The kernel against the CPU reference (random tries, every depth,
    /// filters, both normalisations) and GPU against CPU generation.
    #[test]
    fn kernel_and_generation_match_the_cpu_reference() {
        if !gpu() {
            return;
        }
        let opts = CheckOptions {
            trie_items: vec![10_000],
            batches: vec![1, 8],
            beams: vec![16],
            e2e_beams: vec![16],
            reps: 2,
            ..Default::default()
        };
        let r = run(&opts).expect("gpu-check");
        assert_eq!(r["correctness"]["steps"]["ok"], true);
        let e2e = &r["correctness"]["end_to_end"];
        assert_eq!(e2e["identical_lists"], e2e["requests"], "{e2e}");
        assert!(e2e["tokens_cpu"].as_u64().unwrap() > 0, "{e2e}");
        assert_eq!(e2e["tokens_device"], e2e["tokens_cpu"], "tokens are counted alike: {e2e}");
        let pool = &r["correctness"]["end_to_end_pool"];
        assert_eq!(pool["identical_lists"], pool["requests"], "the pooled kernel: {pool}");
        assert!(pool["requests"].as_u64().unwrap() > 0, "{pool}");
        let ens = &r["correctness"]["end_to_end_ensemble"];
        assert_eq!(ens["identical_lists"], ens["requests"], "{ens}");
        assert!(ens["lists_unlike_the_lead"].as_u64().unwrap() > 0, "{ens}");
    }

    /// `serve --device cuda:0` answers as the CPU server does, with either
    /// beam-step kernel.
    #[tokio::test]
    async fn gpu_server_answers_like_the_cpu_server() {
        if !gpu() {
            return;
        }
        for kernel in ["radix", "pool"] {
            answers_like_the_cpu(&["--device", "cuda:0", "--beam-kernel", kernel]).await;
        }
    }

    async fn answers_like_the_cpu(gpu_args: &[&str]) {
        let (g, c) = (Server::start(gpu_args), Server::start(&[]));
        let client = reqwest::Client::new();
        let (_, catalog) = genrec::model::demo::load(&candle_core::Device::Cpu).unwrap();
        let history: Vec<&str> = (0..3).map(|i| catalog.item_id(i)).collect();
        let body = json!({"history": history, "k": 10, "strategy": "generative", "timeout_ms": 10000});
        let (sg, ag) = post_json(&client, &g.at("/v1/recommend"), &body).await;
        let (sc, ac) = post_json(&client, &c.at("/v1/recommend"), &body).await;
        assert_eq!((sg, sc), (200, 200), "{ag} {ac}");
        let items = |a: &serde_json::Value| {
            a["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["item_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (gi, ci) = (items(&ag), items(&ac));
        assert_eq!(gi.len(), 10, "{ag}");
        assert_eq!(gi, ci, "{gpu_args:?}");
    }
}
