//! Cold start over HTTP: profile-only requests on the embedded demo model,
//! with the sentence-encoder fallback and with the SmolLM2 intent model.

use crate::common;

use std::collections::HashSet;

use common::{fetched, post_json, Server};
use serde_json::{json, Value};

const ENCODER: &str = ".models/all-minilm-l6-v2/model.safetensors";
const SMOLLM: &str = ".models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Every item lies under one of the answer's inferred intents, `k` in all,
/// no item twice; returns the intents' codes.
fn check_under_intents(v: &Value, k: usize) -> HashSet<u64> {
    let intents = v["inferred_intents"].as_array().expect("inferred_intents");
    assert!(!intents.is_empty(), "{v}");
    let w: f64 = intents.iter().map(|i| i["weight"].as_f64().unwrap()).sum();
    assert!((w - 1.0).abs() < 1e-4, "weights sum to 1: {v}");
    assert!(intents.iter().all(|i| i["label"].as_str().is_some_and(|l| !l.is_empty())));
    let codes: HashSet<u64> = intents.iter().map(|i| i["code"].as_u64().unwrap()).collect();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), k, "{v}");
    let ids: HashSet<&str> = items.iter().map(|i| i["item_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), k, "distinct");
    for it in items {
        if it["source"] == "coldstart" {
            assert!(codes.contains(&it["semantic_id"][0].as_u64().unwrap()), "{it} not under {codes:?}");
        }
    }
    codes
}

#[tokio::test]
async fn profile_only_requests_use_encoder_intents_without_an_llm() {
    if fetched(ENCODER).is_none() {
        return;
    }
    // the default: no intent LLM, even where SmolLM2 is fetched
    let s = Server::start(&[]);
    let c = reqwest::Client::new();
    let v: Value = c.get(s.at("/v1/intents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["method"], "embedding");
    let labels = v["intents"].as_array().unwrap();
    assert!(labels.len() >= 4 && labels.iter().all(|l| l["label"].as_str().is_some()), "{v}");

    let profile = json!({"age": 35, "gender": "male", "interests": ["beard care", "shaving"]});
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"profile": profile, "k": 8, "steering": "hard"})).await;
    assert_eq!(st, 200, "{v}");
    check_under_intents(&v, 8);
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["source"] == "coldstart"), "{v}");
    assert_eq!(v["intent_method"], "embedding");
    assert!(v["intent_note"].as_str().unwrap().contains("no intent model"), "{v}");
    assert!(
        v["inferred_intents"][0]["label"].as_str().unwrap().contains("beard")
            || v["inferred_intents"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["label"].as_str().unwrap().contains("aftershave")),
        "{v}"
    );

    // a short history blends in: some items from the history's own generation
    let (st, v) = post_json(
        &c,
        &s.at("/v1/recommend"),
        &json!({"profile": profile, "history": ["3", "11"], "k": 10, "steering": "hard"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    check_under_intents(&v, 10);
    let sources: HashSet<&str> = v["items"].as_array().unwrap().iter().map(|i| i["source"].as_str().unwrap()).collect();
    assert!(sources.contains("coldstart") && sources.contains("generative"), "{v}");
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["item_id"] != "3" && i["item_id"] != "11"));

    // ANN per intent, still inside the intents
    let (st, v) = post_json(
        &c,
        &s.at("/v1/recommend"),
        &json!({"profile": profile, "k": 5, "strategy": "ann", "steering": "hard"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let codes = check_under_intents(&v, 5);
    assert!(v["items"].as_array().unwrap().iter().all(|i| codes.contains(&i["semantic_id"][0].as_u64().unwrap())));
    assert_eq!(v["fallback"], "requested");

    // bad input names the field
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"profile": {"agee": 3}})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("profile.agee")), "{v}");
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"profile": {"age": 400}})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("profile.age")), "{v}");
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"k": 3})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("history")), "{v}");
    let m = c.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("genrec_coldstart_requests_total{method=\"embedding\"} 3"), "{m}");
}

/// The items of an answer as (id, score, source).
fn listed(v: &Value) -> Vec<(String, f64, String)> {
    v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {v}"))
        .iter()
        .map(|i| {
            (
                i["item_id"].as_str().unwrap().to_string(),
                i["score"].as_f64().unwrap(),
                i["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Soft steering (the default) with weight 0 is the model's own answer: the
/// history's generation exactly, whatever the profile; with a large weight it
/// keeps to the intents, as hard steering does.
#[tokio::test]
async fn soft_steering_weight_zero_is_the_models_own_answer() {
    if fetched(ENCODER).is_none() {
        return;
    }
    let c = reqwest::Client::new();
    let s = Server::start(&["--steering-weight", "0"]);
    let young = json!({"age": 19, "gender": "female", "interests": ["lipstick"]});
    let old = json!({"age": 70, "gender": "male", "interests": ["beard care", "shaving"]});
    let ask = |body: Value| {
        let (c, url) = (c.clone(), s.at("/v1/recommend"));
        async move {
            let (st, v) = post_json(&c, &url, &body).await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    let plain = ask(json!({"history": ["3", "11"], "k": 10})).await;
    let steered = ask(json!({"history": ["3", "11"], "k": 10, "profile": young})).await;
    assert_eq!(listed(&steered), listed(&plain));
    assert!(steered["inferred_intents"].is_array(), "{steered}");
    // the demo model has no profile tokens, and says so
    assert!(steered["profile_note"].as_str().is_some_and(|n| n.contains("trained without profiles")), "{steered}");
    assert!(plain.get("profile_note").is_none(), "{plain}");
    let a = ask(json!({"profile": young, "k": 8})).await;
    let b = ask(json!({"profile": old, "k": 8})).await;
    assert_ne!(a["inferred_intents"], b["inferred_intents"]);
    assert_eq!(listed(&a), listed(&b));
    assert_eq!(listed(&a).len(), 8);
    assert!(listed(&a).iter().all(|(_, _, src)| src == "generative"), "{a}");
    drop(s);

    let s = Server::start(&["--steering-weight", "50"]);
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"profile": old, "k": 8})).await;
    assert_eq!(st, 200, "{v}");
    let codes = check_under_intents(&v, 8);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source"] == "coldstart" && codes.contains(&i["semantic_id"][0].as_u64().unwrap())),
        "{v}"
    );
    assert_ne!(listed(&v), listed(&b));
    // an unknown steering is refused, naming the field
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &json!({"profile": old, "steering": "firm"})).await;
    assert_eq!((st, v["field"].as_str()), (422, Some("steering")), "{v}");
}

#[tokio::test]
async fn profile_only_requests_use_llm_intents() {
    if fetched(SMOLLM).is_none() {
        return;
    }
    // the LLM by its name (the server runs in the repository, where
    // scripts/fetch-models.sh put it)
    let s = Server::start(&["--intent-model", "smollm2"]);
    let c = reqwest::Client::new();
    let v: Value = c.get(s.at("/v1/intents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["method"], "llm");
    let body = json!({"profile": {"age": 22, "gender": "female", "interests": ["nail art"]}, "k": 6, "timeout_ms": 60000, "steering": "hard"});
    let (st, v) = post_json(&c, &s.at("/v1/recommend"), &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["intent_method"], "llm", "{v}");
    assert!(v.get("intent_note").is_none(), "{v}");
    check_under_intents(&v, 6);
    // the same profile again: cached, same intents, fast
    let t0 = std::time::Instant::now();
    let (st, again) = post_json(&c, &s.at("/v1/recommend"), &body).await;
    assert_eq!(st, 200);
    assert_eq!(again["inferred_intents"], v["inferred_intents"]);
    assert!(t0.elapsed().as_millis() < 1000, "cached profile took {:?}", t0.elapsed());
}

/// A burst of cold-start requests: requests for one profile share one LLM
/// inference (all answered with the LLM's intents), and distinct profiles
/// never run more than two inferences at once (the rest get the encoder's
/// intents at once, with a note saying why).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_shares_inferences_and_never_runs_more_than_two() {
    let (Some(model), Some(_)) = (fetched(SMOLLM), fetched(ENCODER)) else { return };
    let model = model.to_string_lossy().into_owned();
    let s = Server::start(&["--intent-model", &model]);
    let c = reqwest::Client::new();
    let burst = |bodies: Vec<Value>| {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|b| {
                let (c, url) = (c.clone(), s.at("/v1/recommend"));
                tokio::spawn(async move { post_json(&c, &url, &b).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                let (st, v) = t.await.unwrap();
                assert_eq!(st, 200, "{v}");
                out.push(v);
            }
            out
        }
    };
    let runs = || async {
        let m = c.get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("genrec_coldstart_llm_inferences_total "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let before = runs().await;
    let same =
        json!({"profile": {"age": 41, "gender": "male", "interests": ["beard oil"]}, "k": 4, "timeout_ms": 60000});
    let answers = burst(vec![same; 6]).await;
    assert_eq!(runs().await - before, 1, "six requests for one profile run one inference");
    for v in &answers {
        assert_eq!(v["intent_method"], "llm", "every request for the profile waits for its one inference: {v}");
        assert_eq!(v["inferred_intents"], answers[0]["inferred_intents"]);
    }
    let distinct: Vec<Value> = (0..8)
        .map(|i| json!({"profile": {"age": 20 + i, "interests": [format!("hobby {i}")]}, "k": 4, "timeout_ms": 60000}))
        .collect();
    let answers = burst(distinct).await;
    let llm = answers.iter().filter(|v| v["intent_method"] == "llm").count();
    assert!((1..=2).contains(&llm), "{llm} of 8 distinct profiles ran the LLM at once");
    for v in answers.iter().filter(|v| v["intent_method"] != "llm") {
        assert!(v["intent_note"].as_str().unwrap_or("").contains("busy"), "{v}");
    }
}

#[test]
fn a_bad_prompt_template_stops_the_start_with_its_line() {
    let dir = common::TempDir::new("prompt");
    let p = dir.0.join("bad.prompt");
    std::fs::write(&p, "[user]\nAge {agee}\n[assistant]\nx\n").unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--intent-model", "none", "--prompt"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.prompt:2: unknown field {agee}"), "{err}");
}

#[test]
fn naming_an_intent_llm_that_is_not_there_stops_the_start() {
    let dir = common::TempDir::new("no-llm");
    let out = std::process::Command::new(common::bin())
        .current_dir(&dir.0)
        .args(["serve", "--addr", "127.0.0.1:0", "--intent-model", "smollm2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--intent-model smollm2") && err.contains("scripts/fetch-models.sh"), "{err}");
}
