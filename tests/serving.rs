//! The serving engine under load, over HTTP on loopback: hot-swap during a
//! stream of requests, refused checkpoints, overload, deadlines, live catalog
//! edits, admin authorisation and draining on SIGTERM.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, TempDir};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";

/// A model root holding the demo catalog and checkpoint `a`, plus `b`: the
/// same weights but one bit of one value, so another version.
fn model_root() -> TempDir {
    let root = TempDir::new("root");
    let demo = common::repo().join("models/demo");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    copy(&demo.join("catalog"), &root.0.join("catalog"));
    copy(&demo.join("model"), &root.0.join("a"));
    copy(&demo.join("model"), &root.0.join("b"));
    let w = root.0.join("b/model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 4; // lowest mantissa byte of the last f32
    bytes[last] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    root
}

fn start(root: &TempDir, extra: &[&str]) -> Server {
    let a = root.0.join("a");
    let mut args =
        vec!["--model", a.to_str().unwrap(), "--model-root", root.0.to_str().unwrap(), "--admin-token", TOKEN];
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v, headers)
}

async fn recommend(c: &reqwest::Client, s: &Server, body: Value) -> (u16, Value) {
    let (st, v, _) = send(c.post(s.at("/v1/recommend")).json(&body)).await;
    (st, v)
}

async fn admin(
    c: &reqwest::Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, s.at(path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let (st, v, _) = send(r).await;
    (st, v)
}

fn version(v: &Value) -> String {
    v["model"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swap_under_load_fails_nothing_and_switches_once() {
    let root = model_root();
    let s = start(&root, &[]);
    let c = reqwest::Client::new();
    // clients run until 300 ms after the swap has answered (however long it takes)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, url, stop) = (c.clone(), s.at("/v1/recommend"), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"history": [((t * 7 + i) % 500).to_string()], "k": 5});
                let r = c.post(&url).json(&body).send().await.expect("request");
                assert_eq!(r.status().as_u16(), 200);
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["items"].as_array().unwrap().len(), 5);
                seen.push(version(&v));
                i += 1;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": "b"}))).await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let new_version = v["current"]["version"].as_str().unwrap().to_string();
    assert_ne!(new_version, v["previous"]["version"].as_str().unwrap());
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        let seen = t.await.expect("a request failed");
        // per client: old model, then the new one, never back
        let switches = seen.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "{seen:?}");
        assert!(seen.last().unwrap().ends_with(&new_version));
        versions.extend(seen);
    }
    assert_eq!(versions.len(), 2, "{versions:?}");
    // the listing shows both, and rollback goes back
    let (st, v) = admin(&c, &s, reqwest::Method::GET, "/admin/models", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["current"]["version"], new_version.as_str());
    assert!(v["current"]["source"].as_str().unwrap().ends_with("b"));
    let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models/rollback", None).await;
    assert_eq!(st, 200, "{v}");
    let (_, r) = recommend(&c, &s, json!({"history": ["3"]})).await;
    assert!(!version(&r).ends_with(&new_version));
}

#[tokio::test]
async fn corrupt_and_mismatched_checkpoints_are_refused_and_the_old_model_serves() {
    let root = model_root();
    // truncated weights
    let bad = root.0.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "genrec.json"] {
        std::fs::copy(root.0.join("a").join(f), bad.join(f)).unwrap();
    }
    let w = std::fs::read(root.0.join("a/model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &w[..w.len() / 3]).unwrap();
    // a sidecar for another catalog
    let other = root.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root.0.join("a").join(f), other.join(f)).unwrap();
    }
    let mut side: Value = serde_json::from_slice(&std::fs::read(root.0.join("a/genrec.json")).unwrap()).unwrap();
    side["catalog_fingerprint"] = json!("0000000000000000");
    std::fs::write(other.join("genrec.json"), side.to_string()).unwrap();
    // a folder with files missing
    std::fs::create_dir_all(root.0.join("empty")).unwrap();
    // config.json edits: an absurd size (refused before any allocation), too
    // few positions for the longest history, sizes the weights do not have
    let config: Value = serde_json::from_slice(&std::fs::read(root.0.join("a/config.json")).unwrap()).unwrap();
    for (name, field, value) in [
        ("huge", "max_position_embeddings", json!(1_000_000_000_000u64)),
        ("short", "max_position_embeddings", json!(8)),
        ("wide", "hidden_size", json!(96)),
    ] {
        let dir = root.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.safetensors", "genrec.json"] {
            std::fs::copy(root.0.join("a").join(f), dir.join(f)).unwrap();
        }
        let mut c = config.clone();
        c[field] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    }

    let s = start(&root, &[]);
    let c = reqwest::Client::new();
    let (_, before) = recommend(&c, &s, json!({"history": ["3"]})).await;
    let cases = [
        ("bad", 422, "model.safetensors"),
        ("other", 422, "catalog"),
        ("empty", 422, "config.json"),
        // not there: the same answer as outside the root
        ("missing", 403, "no checkpoint folder under the model root"),
        ("huge", 422, "max_position_embeddings is 1000000000000"),
        ("short", 422, "positions"),
        ("wide", 422, "shape"),
    ];
    for (path, status, why) in cases {
        let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": path}))).await;
        assert_eq!(st, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{path}: {v}");
        let (st, after) = recommend(&c, &s, json!({"history": ["3"]})).await;
        assert_eq!(st, 200);
        assert_eq!(version(&after), version(&before));
    }
    let (_, v) = admin(&c, &s, reqwest::Method::GET, "/admin/models", None).await;
    assert!(v["previous"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_gets_fast_429s_and_accepted_requests_succeed() {
    let root = model_root();
    let s = start(&root, &["--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0", "--beam", "100"]);
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (c, url) = (c.clone(), s.at("/v1/recommend"));
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c.post(&url).json(&json!({"history": [(i % 500).to_string()], "k": 100})).send().await.unwrap();
            let st = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            let v: Value = r.json().await.unwrap();
            (st, retry, t0.elapsed(), v)
        }));
    }
    let (mut ok, mut rejected) = (0, 0);
    for t in tasks {
        let (st, retry, took, v) = t.await.unwrap();
        match st {
            200 => {
                ok += 1;
                assert_eq!(v["items"].as_array().unwrap().len(), 100);
            }
            429 => {
                rejected += 1;
                assert!(retry, "429 without Retry-After");
                assert!(took < Duration::from_millis(500), "a 429 took {took:?}");
                assert_eq!(v["error"].as_str().map(|e| e.contains("queue")), Some(true));
            }
            other => panic!("status {other}: {v}"),
        }
    }
    assert!(ok >= 1 && rejected >= 1, "ok {ok}, rejected {rejected}");
    let m = c.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains(&format!("genrec_requests_total{{outcome=\"rejected\"}} {rejected}")), "{m}");
    for name in
        ["genrec_queue_depth", "genrec_batch_size_bucket", "genrec_queue_wait_seconds_bucket", "genrec_model_info{"]
    {
        assert!(m.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn a_too_short_deadline_gets_an_ann_answer() {
    let root = model_root();
    // a lone request waits up to 300 ms for batch company: longer than its deadline
    let s = start(&root, &["--max-wait-ms", "300", "--max-batch", "64"]);
    let c = reqwest::Client::new();
    let (st, v) = recommend(&c, &s, json!({"history": ["3", "17"], "k": 8, "timeout_ms": 20})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["fallback"], "deadline");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    assert!(items.iter().all(|i| i["source"] == "ann"));
    // generative only: an error that says so
    let (st, v) = recommend(&c, &s, json!({"history": ["3"], "timeout_ms": 20, "strategy": "generative"})).await;
    assert_eq!(st, 504, "{v}");
    // bad values name their field
    let (st, v) = recommend(&c, &s, json!({"history": ["3"], "timeout_ms": 0})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("timeout_ms")));
    let (st, v) = recommend(&c, &s, json!({"history": ["3"], "strategy": "psychic"})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("strategy")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_catalog_removed_item_never_returns_and_added_item_is_recommended() {
    let root = model_root();
    let s = start(&root, &[]);
    let c = reqwest::Client::new();
    let (_, v) = recommend(&c, &s, json!({"history": ["3", "17"], "k": 10})).await;
    let victim = v["items"][0]["item_id"].as_str().unwrap().to_string();
    let (st, v) = admin(&c, &s, reqwest::Method::DELETE, &format!("/admin/items/{victim}"), None).await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = admin(&c, &s, reqwest::Method::DELETE, &format!("/admin/items/{victim}"), None).await;
    assert_eq!(st, 404);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, url, victim) = (c.clone(), s.at("/v1/recommend"), victim.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let strategy = if i % 5 == 0 { "ann" } else { "auto" };
                let h = [((t * 125 + i) % 600).to_string(), "3".to_string(), "17".to_string()];
                let body = json!({"history": h, "k": 20, "strategy": strategy});
                let v: Value = c.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
                let items = v["items"].as_array().expect("items");
                assert!(items.iter().all(|it| it["item_id"] != victim.as_str()), "removed item returned: {v}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("1,000 answers without the removed item");
    }
    // an item with the embedding of item 17: ANN's nearest item to a history of 17
    let cat = genrec::catalog::Catalog::load(&root.0.join("catalog")).unwrap();
    let emb = cat.embedding(cat.index_of("17").unwrap()).to_vec();
    let (st, v) = admin(
        &c,
        &s,
        reqwest::Method::POST,
        "/admin/items",
        Some(json!({"id": "live-1", "title": "new", "embedding": emb})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["semantic_id"].as_array().unwrap().len(), 4);
    let (_, v) = recommend(&c, &s, json!({"history": ["17"], "k": 5, "strategy": "ann"})).await;
    assert_eq!(v["items"][0]["item_id"], "live-1", "{v}");
    // the same id again is an upsert: the item is replaced, not added twice
    let (st, v) =
        admin(&c, &s, reqwest::Method::POST, "/admin/items", Some(json!({"id": "live-1", "embedding": emb}))).await;
    assert_eq!((st, &v["created"]), (200, &json!(false)), "{v}");
    let (st, v) = admin(&c, &s, reqwest::Method::GET, "/admin/items/live-1", None).await;
    assert_eq!((st, &v["served"], &v["title"]), (200, &json!(true), &json!("live-1")), "{v}");
    let (st, v) =
        admin(&c, &s, reqwest::Method::POST, "/admin/items", Some(json!({"id": "x", "embedding": [1.0]}))).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("embedding")));
}

#[tokio::test]
async fn admin_routes_refuse_bad_tokens_and_paths_outside_the_root() {
    let root = model_root();
    let s = start(&root, &[]);
    let c = reqwest::Client::new();
    let (st, _, _) = send(c.get(s.at("/admin/models"))).await;
    assert_eq!(st, 401);
    let (st, _, _) = send(c.get(s.at("/admin/models")).bearer_auth("wrong")).await;
    assert_eq!(st, 401);
    let (st, _, _) = send(c.delete(s.at("/admin/items/3")).bearer_auth("test-tokeN")).await;
    assert_eq!(st, 401);
    // a valid checkpoint outside the root, reached by path or through links
    let outside = common::repo().join("models/demo/model");
    std::os::unix::fs::symlink(&outside, root.0.join("linked")).unwrap();
    let half = root.0.join("half-linked");
    std::fs::create_dir_all(&half).unwrap();
    for f in ["config.json", "genrec.json"] {
        std::fs::copy(root.0.join("a").join(f), half.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(outside.join("model.safetensors"), half.join("model.safetensors")).unwrap();
    // outside and not there: one answer, so the API cannot probe the disk
    for path in ["../", "..", outside.to_str().unwrap(), "a/../../", "a/../../etc", "linked", "not-there", "/etc"] {
        let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": path}))).await;
        assert_eq!(st, 403, "{path}: {v}");
        assert_eq!(v["error"], format!("{path}: no checkpoint folder under the model root"), "{path}");
    }
    let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": "half-linked"}))).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("symbolic link"), "{v}");
    // without a configured token the admin API is off
    let plain = Server::start(&[]);
    let (st, v, _) = send(c.get(plain.at("/admin/models")).bearer_auth(TOKEN)).await;
    assert_eq!(st, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--admin-token"));
    // every answer carries a request id; a client's own is echoed
    let (_, _, h) = send(c.get(plain.at("/healthz")).header("x-request-id", "abc-1")).await;
    assert_eq!(h.get("x-request-id").unwrap(), "abc-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_requests_in_flight() {
    let root = model_root();
    // requests wait 1.5 s for batch company, so they are in flight at SIGTERM
    let mut s = start(&root, &["--max-wait-ms", "1500", "--max-batch", "64", "--timeout-ms", "10000"]);
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (c, url) = (c.clone(), s.at("/v1/recommend"));
        tasks.push(tokio::spawn(async move {
            let r = c.post(&url).json(&json!({"history": [i.to_string()], "k": 5})).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = s.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for t in tasks {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert!(v["fallback"].is_null(), "answered by the model, not cut short: {v}");
    }
    let code = s.wait_exit(Duration::from_secs(10)).expect("server exits after draining");
    assert!(code.success(), "{code:?}");
}

#[tokio::test]
async fn genrec_bench_drives_a_server_and_reports_json() {
    let s = Server::start(&[]);
    let tmp = TempDir::new("bench");
    let data = tmp.0.join("data");
    let out = std::process::Command::new(common::bin())
        .args(["demo-data", "--out", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json_path = tmp.0.join("report.json");
    let out = std::process::Command::new(common::bin())
        .args(["bench", "--url", &s.url, "--data", data.join("demo.inter.json").to_str().unwrap()])
        .args(["--concurrency", "4", "--requests", "40", "--json", json_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ok answers/s") && table.contains("p99"), "{table}");
    let r: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!((r["requests"].as_u64(), r["ok"].as_u64(), r["errors"].as_u64()), (Some(40), Some(40), Some(0)));
    assert!(r["latency_ms_p50"].as_f64().unwrap() > 0.0 && r["items_per_s"].as_f64().unwrap() > 0.0);

    // an overloaded server: its 429s are counted beside the throughput, not in it
    let busy = Server::start(&["--max-queue", "1", "--max-batch", "1", "--max-wait-ms", "0", "--beam", "100"]);
    let out = std::process::Command::new(common::bin())
        .args(["bench", "--url", &busy.url, "--data", data.join("demo.inter.json").to_str().unwrap()])
        .args(["--concurrency", "32", "--requests", "300", "--k", "100", "--json", json_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let (ok, rejected, secs) =
        (r["ok"].as_f64().unwrap(), r["rejected"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
    assert!(rejected > 0.0 && ok > 0.0, "the bench should see 429s and answers: {r}");
    assert!((r["ok_per_s"].as_f64().unwrap() - ok / secs).abs() < 1e-6 * (1.0 + ok / secs), "{r}");
    assert!((r["attempted_per_s"].as_f64().unwrap() - (ok + rejected) / secs).abs() < 1e-6 * (1.0 + ok / secs), "{r}");
    assert!(r["failed_latency_ms_p50"].as_f64().is_some(), "{r}");
    // nothing listening: a clear failure
    let out = std::process::Command::new(common::bin())
        .args([
            "bench",
            "--url",
            "http://127.0.0.1:9",
            "--data",
            data.join("demo.inter.json").to_str().unwrap(),
            "--requests",
            "3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no request succeeded"));
}

/// Copies checkpoint `from` to `to` with one more bit of its weights
/// flipped (`bit` picks which): a new version.
fn variant(root: &Path, from: &str, to: &Path, bit: usize) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "genrec.json", "model.safetensors"] {
        std::fs::copy(root.join(from).join(f), to.join(f)).unwrap();
    }
    let w = to.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let at = bytes.len() - 4 * (bit + 2); // the lowest mantissa byte of a late f32
    bytes[at] ^= 1;
    std::fs::write(&w, bytes).unwrap();
}

/// `--watch` with a relative `--model-root`: a dot-folder being staged is
/// not loaded; renamed into place with day-old file times, it is; a rollback
/// holds (the watch does not load the rolled-back checkpoint again); a new
/// checkpoint after it is loaded, and so is an ensemble whose lead was served.
#[tokio::test]
async fn watch_loads_new_checkpoints_skips_staging_and_respects_rollback() {
    let root = model_root();
    let (parent, name) = (root.0.parent().unwrap(), root.0.file_name().unwrap().to_str().unwrap());
    let a = root.0.join("a");
    let args = ["--model", a.to_str().unwrap(), "--model-root", name, "--admin-token", TOKEN, "--watch"];
    let s = Server::start_in(Some(parent), &args);
    let c = reqwest::Client::new();
    let current = || async {
        let (_, v) = admin(&c, &s, reqwest::Method::GET, "/admin/models", None).await;
        v["current"].clone()
    };
    let wait_for = |pred: Box<dyn Fn(&Value) -> bool>, what: &'static str| {
        let current = &current;
        async move {
            let until = Instant::now() + Duration::from_secs(20);
            loop {
                let v = current().await;
                if pred(&v) {
                    return v;
                }
                assert!(Instant::now() < until, "{what}: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let start = current().await;

    // staged in a dot-folder: never loaded
    let staging = root.0.join(".staging-c");
    variant(&root.0, "a", &staging, 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(current().await["version"], start["version"], "a dot-folder was loaded");

    // renamed into place with file times a day old (as `mv` or rsync -t keep them)
    let old = std::time::SystemTime::now() - Duration::from_secs(86_400);
    for f in ["config.json", "genrec.json", "model.safetensors"] {
        std::fs::File::options().write(true).open(staging.join(f)).unwrap().set_modified(old).unwrap();
    }
    std::fs::rename(&staging, root.0.join("c")).unwrap();
    let loaded =
        wait_for(Box::new(|v| v["source"].as_str().is_some_and(|s| s.ends_with("/c"))), "c was not loaded").await;
    assert_ne!(loaded["version"], start["version"]);

    // a rollback holds
    let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models/rollback", None).await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(current().await["version"], start["version"], "the watch undid the rollback");

    // until a new checkpoint comes
    variant(&root.0, "a", &root.0.join("d"), 2);
    wait_for(Box::new(|v| v["source"].as_str().is_some_and(|s| s.ends_with("/d"))), "d was not loaded").await;

    // an ensemble whose lead is a copy of a (served before) is still new: its
    // version is its members' together
    ensemble_folder(&root, "e", &["members/1"]);
    let e = wait_for(Box::new(|v| v["source"].as_str().is_some_and(|s| s.ends_with("/e"))), "e was not loaded").await;
    assert_eq!(e["members"], 2, "{e}");
}

/// Makes `root/name` a copy of checkpoint `a` whose sidecar lists `members`;
/// each member that stays under it is another model of a's layout (the demo
/// weights moved by a pattern, so its answers differ).
fn ensemble_folder(root: &TempDir, name: &str, members: &[&str]) {
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for f in ["config.json", "model.safetensors", "genrec.json"] {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    };
    let dir = root.0.join(name);
    copy(&root.0.join("a"), &dir);
    let variant = genrec::model::demo::variant_weights(0.5).unwrap();
    for m in members.iter().filter(|m| !m.contains("..")) {
        copy(&root.0.join("a"), &dir.join(m));
        std::fs::write(dir.join(m).join("model.safetensors"), &variant).unwrap();
    }
    let mut side: Value = serde_json::from_slice(&std::fs::read(dir.join("genrec.json")).unwrap()).unwrap();
    side["members"] = json!(members);
    std::fs::write(dir.join("genrec.json"), side.to_string()).unwrap();
}

#[tokio::test]
async fn an_ensemble_folder_loads_serves_and_starts_as_one_model() {
    let root = model_root();
    ensemble_folder(&root, "ens", &["members/1"]);
    ensemble_folder(&root, "escapes", &["../b"]);
    ensemble_folder(&root, "absent", &["members/9"]);
    std::fs::remove_dir_all(root.0.join("absent/members/9")).unwrap();
    ensemble_folder(&root, "nested", &["members/1"]);
    let side = root.0.join("nested/members/1/genrec.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    v["members"] = json!(["x"]);
    std::fs::write(&side, v.to_string()).unwrap();
    // a member reached through a link (to a checkpoint inside the root)
    ensemble_folder(&root, "linked", &["members/1"]);
    std::fs::remove_dir_all(root.0.join("linked/members/1")).unwrap();
    std::os::unix::fs::symlink(root.0.join("b"), root.0.join("linked/members/1")).unwrap();
    ensemble_folder(&root, "twice", &["members/1", "members/1"]);

    let s = start(&root, &[]);
    let c = reqwest::Client::new();
    let items = |v: &Value| v["items"].as_array().unwrap().iter().map(|i| i["item_id"].clone()).collect::<Vec<_>>();
    let bodies: Vec<Value> = (0..8).map(|i| json!({"history": [(i * 37).to_string(), (i * 37 + 11).to_string()], "k": 10, "strategy": "generative"})).collect();
    let mut alone = Vec::new();
    for b in &bodies {
        alone.push(items(&recommend(&c, &s, b.clone()).await.1));
    }
    let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": "ens"}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["current"]["members"], 2, "{v}");
    assert_eq!(v["previous"]["members"], 1, "{v}");
    let ens_version = v["current"]["version"].as_str().unwrap().to_string();
    assert_ne!(ens_version, v["previous"]["version"].as_str().unwrap());
    // the second member changes some answers: the mean is searched, not the lead
    let mut changed = 0;
    for (b, a) in bodies.iter().zip(&alone) {
        let (st, both) = recommend(&c, &s, b.clone()).await;
        assert_eq!(st, 200, "{both}");
        assert!(version(&both).ends_with(&ens_version), "{both}");
        assert_eq!(items(&both).len(), 10);
        changed += usize::from(items(&both) != *a);
    }
    assert!(changed > 0, "no answer of the ensemble differs from its lead's");
    // rollback goes to the single model and back
    for want in [1, 2] {
        let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models/rollback", None).await;
        assert_eq!((st, v["current"]["members"].as_u64()), (200, Some(want)), "{v}");
    }
    let refused = [
        ("escapes", "../b"),
        ("absent", "members/9"),
        ("nested", "nest"),
        ("linked", "without links"),
        ("twice", "listed twice"),
    ];
    for (path, why) in refused {
        let (st, v) = admin(&c, &s, reqwest::Method::POST, "/admin/models", Some(json!({"path": path}))).await;
        assert_eq!(st, 422, "{path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(why), "{path}: {v}");
    }
    let (_, v) = admin(&c, &s, reqwest::Method::GET, "/admin/models", None).await;
    assert_eq!(v["current"]["version"], ens_version.as_str(), "a refused ensemble changed nothing: {v}");
    // a server started on the folder serves the ensemble
    let ens = root.0.join("ens");
    let s2 = Server::start(&["--model", ens.to_str().unwrap(), "--admin-token", TOKEN]);
    let (_, v) = admin(&c, &s2, reqwest::Method::GET, "/admin/models", None).await;
    assert_eq!(
        (v["current"]["members"].as_u64(), v["current"]["version"].as_str()),
        (Some(2), Some(ens_version.as_str())),
        "{v}"
    );
}
