//! The index build split over processes, through the binary: `genrec
//! codebooks`, three `genrec assign --shard I/3` processes at once, and the
//! merge (`genrec index --codebooks --assigned`) write the catalog a
//! one-process `genrec index` writes, byte for byte, at 10^5 items with
//! capacity moving items at every level; a missing shard or a shard of other
//! codebooks stops the merge with the reason.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{fails, ok, TempDir};

/// Every file under `dir` (relative name, bytes), sorted by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Items moved off their nearest code per level, from `genrec index`'s output.
fn moved(out: &str) -> Vec<usize> {
    out.lines()
        .filter(|l| l.starts_with("level ") && l.contains("items moved"))
        .map(|l| l.split("; ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn three_shards_merge_into_the_one_process_catalog_byte_for_byte() {
    let tmp = TempDir::new("sharded-build");
    let p = |s: &str| tmp.0.join(s).to_string_lossy().into_owned();
    let n = 100_000;
    ok(&["synth", "--out", &p("data"), "--items", &n.to_string(), "--dim", "32", "--users", "10", "--f16"]);
    let (items, emb) = (p("data/synth.jsonl"), p("data/synth.safetensors"));
    // small collision groups: capacity moves items at every level, so the
    // merge recomputes the candidates of items off their nearest path
    let opts = ["--levels", "3", "--codebook-size", "48", "--max-group", "1"];
    let build = |out: &str, extra: &[&str]| {
        let args = [&["index", "--items", &items, "--embeddings", &emb, "--out", out][..], extra].concat();
        ok(&args)
    };
    let one = build(&p("one"), &opts);
    let moved_one = moved(&one);
    assert!(moved_one.len() == 3 && moved_one.iter().all(|&m| m > 0), "{one}");

    let cb = p("work/codebooks.safetensors");
    ok(&["codebooks", "--embeddings", &emb, "--out", &cb, "--levels", "3", "--codebook-size", "48"]);
    let shards: Vec<_> = (0..3)
        .map(|i| {
            Command::new(common::bin())
                .args(["assign", "--codebooks", &cb, "--embeddings", &emb, "--out", &p("work")])
                .args(["--shard", &format!("{i}/3")])
                .output_async()
        })
        .collect();
    for s in shards {
        let out = s.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let merged = build(&p("merged"), &["--codebooks", &cb, "--assigned", &p("work"), "--max-group", "1"]);
    assert_eq!(moved(&merged), moved_one, "{merged}");
    let (a, b) = (files(&tmp.0.join("one")), files(&tmp.0.join("merged")));
    assert_eq!(a.iter().map(|f| &f.0).collect::<Vec<_>>(), b.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs between the one-process and the sharded build");
    }

    // the options that come from the codebooks file cannot be given again
    let err =
        fails(&["index", "--items", &items, "--embeddings", &emb, "--out", &p("x"), "--codebooks", &cb, "--seed", "1"]);
    assert!(err.contains("--seed"), "{err}");
    // a shard made with other codebooks is named
    let other = p("work/other.safetensors");
    ok(&["codebooks", "--embeddings", &emb, "--out", &other, "--levels", "3", "--codebook-size", "48", "--seed", "9"]);
    ok(&["assign", "--codebooks", &other, "--embeddings", &emb, "--out", &p("mixed"), "--shard", "0/2"]);
    ok(&["assign", "--codebooks", &cb, "--embeddings", &emb, "--out", &p("mixed"), "--shard", "1/2"]);
    let merge_fails = |assigned: &str| {
        fails(&[
            "index",
            "--items",
            &items,
            "--embeddings",
            &emb,
            "--out",
            &p("x"),
            "--codebooks",
            &cb,
            "--assigned",
            assigned,
        ])
    };
    let err = merge_fails(&p("mixed"));
    assert!(err.contains("assign-0-of-2.json was made with other codebooks"), "{err}");
    // a missing shard is named, and nothing is written
    std::fs::remove_file(tmp.0.join("work/assign-1-of-3.json")).unwrap();
    let err = merge_fails(&p("work"));
    assert!(err.contains("shards [1] of 3 are missing"), "{err}");
    assert!(!tmp.0.join("x").exists());
}

/// `Command::output` on a spawned child, so that several run at once.
trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn genrec")
    }
}
