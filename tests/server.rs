//! The real server on a loopback port: answers, errors, health and metrics.

use crate::common;

use std::collections::HashSet;

use common::Server;
use serde_json::{json, Value};

async fn post(client: &reqwest::Client, s: &Server, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client
        .post(s.at("/v1/recommend"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.expect("JSON body");
    (status, v)
}

fn assert_error(status: u16, body: &Value, want_status: u16, field: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["field"], field, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

#[tokio::test]
async fn default_model_answers_and_rejects_bad_input() {
    let s = Server::start(&[]);
    let c = reqwest::Client::new();

    let h = c.get(s.at("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    let r = c.get(s.at("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ready: Value = r.json().await.unwrap();
    let items_in_catalog = ready["items"].as_u64().unwrap();
    assert!(items_in_catalog > 0);
    assert_eq!(ready["worker"], json!({"running": true, "panics": 0}), "{ready}");

    // a real answer: k distinct catalog items, none from the history, best first
    let history = ["3", "11", "19", "27"];
    let (st, v) = post(&c, &s, json!({"history": history, "k": 10}).to_string()).await;
    assert_eq!(st, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let ids: HashSet<&str> = items.iter().map(|i| i["item_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 10, "distinct");
    for it in items {
        let id: u64 = it["item_id"].as_str().unwrap().parse().unwrap();
        assert!(id < items_in_catalog);
        assert!(!history.contains(&it["item_id"].as_str().unwrap()));
        assert_eq!(it["source"], "generative");
        assert_eq!(it["semantic_id"].as_array().unwrap().len(), 4);
    }
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(v["model"], ready["model"]);
    assert!(v["took_ms"].as_f64().unwrap() >= 0.0);

    // numbers are item ids too; exclude_history false may return history items
    let (st, v) = post(&c, &s, json!({"history": [3, 11], "k": 1, "exclude_history": false}).to_string()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1);

    // unknown ids are ignored and reported when others remain
    let (st, v) = post(&c, &s, json!({"history": ["nope", "3"], "k": 5}).to_string()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ignored_history"], json!(["nope"]));
    assert_eq!(v["items"].as_array().unwrap().len(), 5);

    // errors name the field
    let (st, v) = post(&c, &s, "{\"history\": [\"3\"").await;
    assert_error(st, &v, 400, "body");
    let (st, v) = post(&c, &s, json!({"history": ["3"], "k": 0}).to_string()).await;
    assert_error(st, &v, 422, "k");
    let (st, v) = post(&c, &s, json!({"history": ["3"], "k": 101}).to_string()).await;
    assert_error(st, &v, 422, "k");
    let (st, v) = post(&c, &s, json!({"history": ["3"], "k": "ten"}).to_string()).await;
    assert_error(st, &v, 422, "k");
    let (st, v) = post(&c, &s, json!({"history": []}).to_string()).await;
    assert_error(st, &v, 422, "history");
    let (st, v) = post(&c, &s, json!({"k": 3}).to_string()).await;
    assert_error(st, &v, 422, "history");
    let (st, v) = post(&c, &s, json!({"history": ["nope", "never"]}).to_string()).await;
    assert_error(st, &v, 422, "history");
    let (st, v) = post(&c, &s, json!({"history": ["3"], "exclude_histroy": true}).to_string()).await;
    assert_error(st, &v, 422, "exclude_histroy");
    let (st, v) = post(&c, &s, json!({"history": [{"id": 3}]}).to_string()).await;
    assert_error(st, &v, 422, "history[0]");
    let big = json!({"history": vec!["3"; 40_000]}).to_string();
    let (st, v) = post(&c, &s, big).await;
    assert_error(st, &v, 413, "body");
    let r = c.get(s.at("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // metrics count what happened
    let m = c.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("genrec_requests_total{outcome=\"ok\"} 3"), "{m}");
    assert!(m.contains("genrec_requests_total{outcome=\"invalid\"} 10"), "{m}");
    assert!(m.contains("genrec_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("genrec_generated_tokens_total"), "{m}");
}

#[tokio::test]
async fn serves_a_model_folder_and_refuses_a_broken_one() {
    // a copy: serving a folder takes its catalog's lock and opens its edit log
    let root = common::TempDir::new("model-folder");
    for sub in ["model", "catalog"] {
        std::fs::create_dir_all(root.0.join(sub)).unwrap();
        for e in std::fs::read_dir(common::repo().join("models/demo").join(sub)).unwrap().flatten() {
            std::fs::copy(e.path(), root.0.join(sub).join(e.file_name())).unwrap();
        }
    }
    let dir = root.0.join("model");
    let s = Server::start(&["--model", dir.to_str().unwrap()]);
    let c = reqwest::Client::new();
    let (st, v) = post(&c, &s, json!({"history": ["5"], "k": 3}).to_string()).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["model"].as_str().unwrap().starts_with("demo/"));

    // a truncated checkpoint: the server refuses to start and says why
    let tmp = common::TempDir::new("broken");
    for f in ["config.json", "genrec.json"] {
        std::fs::copy(dir.join(f), tmp.0.join(f)).unwrap();
    }
    let w = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(tmp.0.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--model", tmp.0.to_str().unwrap()])
        .args(["--catalog", root.0.join("catalog").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
}

/// The admin token from a file; repeated wrong tokens from one address get
/// 429 (with Retry-After) for a while, but the right token always passes:
/// behind a load balancer every client has one address, and a guesser must
/// not lock the operators out.
#[tokio::test]
async fn admin_token_file_and_lock_out_after_failed_attempts() {
    let tmp = common::TempDir::new("token");
    let file = tmp.0.join("admin.token");
    std::fs::write(&file, "file-token-0123456789\n").unwrap();
    let s = Server::start(&["--admin-token-file", file.to_str().unwrap()]);
    let c = reqwest::Client::new();
    let get = |token: &str| c.get(s.at("/admin/catalog")).bearer_auth(token.to_string()).send();
    assert_eq!(get("file-token-0123456789").await.unwrap().status(), 200);
    for i in 0..10 {
        let r = get(&format!("wrong-{i}")).await.unwrap();
        assert_eq!(r.status(), 401, "attempt {i}");
    }
    let r = get("wrong-again").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "authorization", "{v}");
    assert_eq!(get("file-token-0123456789").await.unwrap().status(), 200, "the right token is never locked out");
    // the public API is not affected
    let (st, _) = post(&c, &s, json!({"history": ["3"], "k": 2}).to_string()).await;
    assert_eq!(st, 200);

    // a placeholder token stops the start, saying how to make a real one
    std::fs::write(&file, "change-me\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--admin-token-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");

    // an empty or missing token file stops the start with a clear error
    std::fs::write(&file, "\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--admin-token-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"), "{}", String::from_utf8_lossy(&out.stderr));
}
