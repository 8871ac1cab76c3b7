//! Checkpoints pulled by name (`hf:ORG/REPO[@REVISION]`) from a fake
//! Hugging Face Hub on loopback (`HF_ENDPOINT`) into a test's own cache
//! (`HF_HOME`): at start, from the admin API, by `genrec pull`; offline and
//! with the Hub down; and each Hub failure answered with its own status.

use crate::common;

use std::collections::BTreeMap;

use common::hub::{demo_files, FakeHub};
use common::{Server, TempDir};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";
type Files = BTreeMap<String, Vec<u8>>;

/// The same checkpoint as transformers shards it: two shards and their index.
fn sharded(mut files: Files) -> Files {
    let bytes = files.remove("model.safetensors").unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = BTreeMap::new();
    for (i, part) in [a, b].into_iter().enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<_> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        files.insert(shard.clone(), safetensors::serialize(views, None).unwrap());
        map.extend(part.iter().map(|n| (n.clone(), shard.clone())));
    }
    files.insert(
        "model.safetensors.index.json".into(),
        json!({"metadata": {}, "weight_map": map}).to_string().into_bytes(),
    );
    files
}

fn env<'a>(hub_url: &'a str, home: &'a TempDir) -> Vec<(&'static str, &'a str)> {
    vec![("HF_ENDPOINT", hub_url), ("HF_HOME", home.0.to_str().unwrap()), ("HF_TOKEN", ""), ("HF_HUB_OFFLINE", "")]
}

/// `genrec pull hf:genrec/demo` with `env`: its output and how long it took.
fn pull_demo(env: &[(&str, &str)]) -> (std::process::Output, std::time::Duration) {
    let t = std::time::Instant::now();
    let out = common::isolate(&mut std::process::Command::new(common::bin()))
        .args(["pull", "hf:genrec/demo"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out, t.elapsed())
}

fn blocking_json(r: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let r = r.send().expect("request");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn source(s: &Server) -> String {
    let c = reqwest::blocking::Client::new();
    let (st, v) = blocking_json(c.get(s.at("/admin/models")).bearer_auth(TOKEN));
    assert_eq!(st, 200, "{v}");
    v["current"]["source"].as_str().unwrap().to_string()
}

/// `genrec serve` that must fail to start: its stderr.
fn failed_start(env: &[(&str, &str)], args: &[&str]) -> String {
    let out = common::isolate(&mut std::process::Command::new(common::bin()))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "started: {err}");
    err
}

#[test]
fn serve_starts_from_a_hub_name_then_from_the_cache() {
    let mut hub = FakeHub::start();
    let sha = hub.commit("genrec/demo", &["main"], demo_files(false));
    let (home, root) = (TempDir::new("hf-home"), common::demo_root("hub-serve"));
    let catalog = root.0.join("catalog");
    let url = hub.url.clone();
    let base_env = env(&url, &home);
    let args = ["--model", "hf:genrec/demo", "--catalog", catalog.to_str().unwrap(), "--admin-token", TOKEN];
    let body = json!({"history": ["3", "17"], "k": 5});
    let c = reqwest::blocking::Client::new();

    let s = Server::start_env(&base_env, &args);
    assert_eq!(source(&s), format!("hf:genrec/demo@{sha}"));
    let pulled = common::items_and_scores(&c, &s.at("/v1/recommend"), &body);
    drop(s);
    // the same answers as the same files in a folder
    let local = Server::start(&["--model", root.0.join("a").to_str().unwrap(), "--catalog", catalog.to_str().unwrap()]);
    assert_eq!(pulled, common::items_and_scores(&c, &local.at("/v1/recommend"), &body));
    drop(local);
    // in the standard cache layout, each file once
    let repo_dir = home.0.join("hub/models--genrec--demo");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), sha);
    assert!(repo_dir.join(format!("snapshots/{sha}/model.safetensors")).is_file());
    assert_eq!(hub.downloads().len(), 3, "{:?}", hub.downloads());

    // started again: the commit's files are cached, nothing is downloaded
    let s = Server::start_env(&base_env, &args);
    assert_eq!(source(&s), format!("hf:genrec/demo@{sha}"));
    drop(s);
    assert_eq!(hub.downloads().len(), 3, "{:?}", hub.downloads());
    // a Hub name without --catalog says what to pass
    let err = failed_start(&base_env, &["--model", "hf:genrec/demo"]);
    assert!(err.contains("--catalog"), "{err}");

    // offline: the cache only, not one request to the Hub; a name the cache
    // lacks stops the start, saying why
    let mut offline = base_env.clone();
    offline.retain(|(k, _)| *k != "HF_HUB_OFFLINE");
    offline.push(("HF_HUB_OFFLINE", "1"));
    let asked = hub.requests();
    let s = Server::start_env(&offline, &args);
    assert_eq!(source(&s), format!("hf:genrec/demo@{sha}"));
    drop(s);
    let err = failed_start(&offline, &["--model", "hf:genrec/other", "--catalog", catalog.to_str().unwrap()]);
    assert!(err.contains("hf:genrec/other") && err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(hub.requests(), asked, "offline starts asked the Hub");

    // the Hub down: a server still starts, from the revision the cache holds
    hub.stop();
    let s = Server::start_env(&base_env, &args);
    assert_eq!(common::items_and_scores(&c, &s.at("/v1/recommend"), &body), pulled);
}

#[test]
fn genrec_pull_fetches_a_private_repository_with_the_token() {
    let hub = FakeHub::start();
    let sha = hub.commit("genrec/private", &["main"], sharded(demo_files(false)));
    hub.private("genrec/private", "hf_secret");
    let home = TempDir::new("hf-pull");
    let pull = |token: &str| {
        let mut e = env(&hub.url, &home);
        e.retain(|(k, _)| *k != "HF_TOKEN");
        e.push(("HF_TOKEN", token));
        common::isolate(&mut std::process::Command::new(common::bin()))
            .args(["pull", "hf:genrec/private"])
            .envs(e)
            .output()
            .unwrap()
    };
    let out = pull("");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("needs HF_TOKEN") && err.contains("401"), "{err}");
    let out = pull("hf_secret");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // stdout: the snapshot folder, holding the index and both shards
    let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(dir, home.0.join(format!("hub/models--genrec--private/snapshots/{sha}")));
    for f in [
        "config.json",
        "genrec.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(hub.downloads().len(), 5, "{:?}", hub.downloads());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_loads_hub_checkpoints_and_answers_each_failure_with_its_status() {
    let mut hub = FakeHub::start();
    let main = hub.commit("genrec/demo", &["main"], demo_files(false));
    // a tag: other weights, sharded; also a pull request's branch
    let v1 = hub.commit("genrec/demo", &["v1", "refs/pr/1"], sharded(demo_files(true)));
    // an ensemble: the lead and one member in a folder below it
    let mut ens = demo_files(false);
    let mut sidecar: Value = serde_json::from_slice(&ens["genrec.json"]).unwrap();
    sidecar["members"] = json!(["members/1"]);
    ens.insert("genrec.json".into(), serde_json::to_vec(&sidecar).unwrap());
    ens.extend(demo_files(true).into_iter().map(|(f, b)| (format!("members/1/{f}"), b)));
    hub.commit("genrec/ensemble", &["main"], ens);
    let mut broken = demo_files(false);
    broken.remove("genrec.json");
    hub.commit("genrec/broken", &["main"], broken);
    hub.commit("genrec/private", &["main"], demo_files(false));
    hub.private("genrec/private", "hf_secret");
    let corrupt = hub.commit("genrec/corrupt", &["main"], demo_files(false));
    hub.corrupt("genrec/corrupt", "model.safetensors");

    let (home, root) = (TempDir::new("hf-admin"), common::demo_root("hub-admin"));
    let a = root.0.join("a");
    let url = hub.url.clone();
    let s = Server::start_env(&env(&url, &home), &["--model", a.to_str().unwrap(), "--admin-token", TOKEN]);
    let c = reqwest::Client::new();
    let load = |path: &str| {
        let (c, url, body) = (c.clone(), s.at("/admin/models"), json!({"path": path}));
        async move {
            let r = c.post(url).bearer_auth(TOKEN).json(&body).send().await.expect("request");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // by tag, sharded: served, and named by its commit; no --model-root needed
    let (st, v) = load("hf:genrec/demo@v1").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["current"]["source"], format!("hf:genrec/demo@{v1}"));
    assert_ne!(v["current"]["version"], v["previous"]["version"]);
    let r: Value = c
        .post(s.at("/v1/recommend"))
        .json(&json!({"history": ["3"], "k": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["items"].as_array().map(Vec::len), Some(5), "{r}");
    assert!(r["model"].as_str().unwrap().ends_with(v["current"]["version"].as_str().unwrap()), "{r}");
    // the default branch; rollback goes back to the tag's commit
    let (st, v) = load("hf:genrec/demo").await;
    assert_eq!((st, v["current"]["source"].clone()), (200, json!(format!("hf:genrec/demo@{main}"))), "{v}");
    let r = c.post(s.at("/admin/models/rollback")).bearer_auth(TOKEN).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["current"]["source"], format!("hf:genrec/demo@{v1}"), "{v}");
    // a revision with slashes (escaped in the URL, folders under refs/)
    let (st, v) = load("hf:genrec/demo@refs/pr/1").await;
    assert_eq!((st, v["current"]["source"].clone()), (200, json!(format!("hf:genrec/demo@{v1}"))), "{v}");
    assert_eq!(std::fs::read_to_string(home.0.join("hub/models--genrec--demo/refs/refs/pr/1")).unwrap(), v1);
    // an ensemble's member comes along
    let (st, v) = load("hf:genrec/ensemble").await;
    assert_eq!((st, v["current"]["members"].clone()), (200, json!(2)), "{v}");

    // each failure its own status, the model in service unchanged
    for (path, status, says) in [
        ("hf:../demo", 422, "ORG/REPO"),
        ("hf:genrec/demo@bad..rev", 422, "revision"),
        ("hf:genrec/missing", 404, "no such repository"),
        ("hf:genrec/demo@no-such-tag", 404, "revision no-such-tag"),
        ("hf:genrec/private", 403, "needs HF_TOKEN"),
        ("hf:genrec/broken", 422, "genrec.json"),
        ("hf:genrec/corrupt", 502, "SHA-256"),
    ] {
        let (st, v) = load(path).await;
        assert_eq!(st, status, "{path}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(says), "{path}: {v}");
        // a malformed name is the request's `path` at fault
        if path == "hf:../demo" || path == "hf:genrec/demo@bad..rev" {
            assert_eq!(v["field"], "path", "{path}: {v}");
        }
    }
    // the corrupted download is not left in the cache
    let snapshot = home.0.join(format!("hub/models--genrec--corrupt/snapshots/{corrupt}"));
    assert!(snapshot.join("config.json").is_file() && !snapshot.join("model.safetensors").exists());
    // the Hub down: a name pinned to a cached commit loads from the cache;
    // any other is a 502 (an admin load wants what the Hub has now, not an
    // older cached revision)
    hub.stop();
    let (st, v) = load(&format!("hf:genrec/demo@{v1}")).await;
    assert_eq!((st, v["current"]["source"].clone()), (200, json!(format!("hf:genrec/demo@{v1}"))), "{v}");
    for path in ["hf:genrec/demo@v1", "hf:genrec/private"] {
        let (st, v) = load(path).await;
        assert_eq!(st, 502, "{path}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains("could not be reached"), "{path}: {v}");
    }
    let v: Value = c.get(s.at("/admin/models")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["current"]["source"], format!("hf:genrec/demo@{v1}"), "{v}");
}

#[test]
fn a_hub_that_never_answers_fails_a_pull_in_time_and_a_start_uses_the_cache() {
    let hub = FakeHub::start();
    let sha = hub.commit("genrec/demo", &["main"], demo_files(false));
    let (home, root) = (TempDir::new("hf-silent"), common::demo_root("hub-silent"));
    let mut e = env(&hub.url, &home);
    e.push(("GENREC_HUB_TIMEOUT_S", "1"));
    let pull = || pull_demo(&e);
    let (out, _) = pull();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hub.go_silent();
    // the connection is taken and never answered: the pull gives up
    let (out, took) = pull();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("could not be reached"), "{err}");
    assert!(took < std::time::Duration::from_secs(15), "gave up after {took:?}");
    // a server starting serves the revision the cache holds
    let catalog = root.0.join("catalog");
    let s = Server::start_env(
        &e,
        &["--model", "hf:genrec/demo", "--catalog", catalog.to_str().unwrap(), "--admin-token", TOKEN],
    );
    assert_eq!(source(&s), format!("hf:genrec/demo@{sha}"));
}

/// A download that stops half-way (the Hub, or a proxy, keeps the connection
/// and sends nothing more) fails within the read timeout instead of holding
/// the pull forever, leaves nothing in the cache, and the next pull gets the
/// whole file.
#[test]
fn a_download_that_stalls_half_way_fails_in_time_and_leaves_nothing() {
    let hub = FakeHub::start();
    let sha = hub.commit("genrec/demo", &["main"], demo_files(false));
    let home = TempDir::new("hf-stall");
    let mut e = env(&hub.url, &home);
    e.push(("GENREC_HUB_TIMEOUT_S", "1"));
    let pull = || pull_demo(&e);
    hub.stall_weights(true);
    let (out, took) = pull();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model.safetensors"), "{err}");
    assert!(took < std::time::Duration::from_secs(20), "gave up after {took:?}");
    let repo = home.0.join("hub/models--genrec--demo");
    let snapshot = repo.join(format!("snapshots/{sha}"));
    assert!(!snapshot.join("model.safetensors").exists(), "a partial weights file is in the snapshot");
    let blobs: Vec<_> = std::fs::read_dir(repo.join("blobs")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(
        blobs.iter().all(|b| !b.to_string_lossy().starts_with(".download")),
        "a partial download stayed: {blobs:?}"
    );
    hub.stall_weights(false);
    let (out, _) = pull();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let weights = std::fs::read(snapshot.join("model.safetensors")).unwrap();
    assert_eq!(weights, std::fs::read(common::repo().join("models/demo/model/model.safetensors")).unwrap());
}

/// An LLM-layout folder on the Hub: the pull fetches the files its `llm`
/// section names (tokenizer, item map, prompt), a start without `--catalog`
/// says to pass one, and with one the item map's catalog is written there and
/// served; the same folder on disk answers the same.
#[test]
fn an_llm_layout_checkpoint_serves_from_the_hub_with_its_tokenizer_item_map_and_prompt() {
    let hub = FakeHub::start();
    let sha = hub.commit("genrec/llm", &["main"], common::llm::files(3));
    let home = TempDir::new("hf-llm");
    let url = hub.url.clone();
    let base_env = env(&url, &home);
    let err = failed_start(&base_env, &["--model", "hf:genrec/llm"]);
    assert!(err.contains("--catalog DIR") && err.contains("item map"), "{err}");
    let work = TempDir::new("hub-llm-work");
    let catalog = work.0.join("catalog");
    let args = ["--model", "hf:genrec/llm", "--catalog", catalog.to_str().unwrap(), "--admin-token", TOKEN];
    let s = Server::start_env(&base_env, &args);
    assert_eq!(source(&s), format!("hf:genrec/llm@{sha}"));
    let mut got = hub.downloads();
    got.sort();
    for f in ["genrec.json", "index.json", "prompt.txt", "tokenizer.json"] {
        assert!(got.iter().any(|d| d.ends_with(f)), "{f} not fetched: {got:?}");
    }
    assert!(catalog.join("CURRENT").is_file(), "the item map's catalog is written to --catalog");
    let c = reqwest::blocking::Client::new();
    let body = json!({"history": ["3", "17"], "k": 5, "exclude_history": false});
    let pulled = common::items_and_scores(&c, &s.at("/v1/recommend"), &body);
    assert_eq!(pulled.as_array().map(Vec::len), Some(5), "{pulled}");
    drop(s);
    let local_dir = work.0.join("folder");
    common::llm::write(&local_dir, 3);
    let local = Server::start(&["--model", local_dir.to_str().unwrap()]);
    assert_eq!(common::items_and_scores(&c, &local.at("/v1/recommend"), &body), pulled);
}
