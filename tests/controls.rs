//! Product controls through the real server: personalized search (`query`),
//! the diversity cap and exploration, and their 422s.

use crate::common;

use std::collections::{HashMap, HashSet};

use common::{post_json, Server};
use serde_json::{json, Value};

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().expect("items").iter().map(|i| i["item_id"].as_str().unwrap().to_string()).collect()
}

fn first_codes(v: &Value) -> Vec<u64> {
    v["items"].as_array().unwrap().iter().map(|i| i["semantic_id"][0].as_u64().unwrap()).collect()
}

/// The demo catalog's titles by item id.
fn titles() -> HashMap<String, String> {
    let text = std::fs::read_to_string(common::repo().join("models/demo/catalog/items.json")).unwrap();
    let items: Vec<Value> = serde_json::from_str(&text).unwrap();
    items.iter().map(|i| (i["id"].as_str().unwrap().to_string(), i["title"].as_str().unwrap().to_string())).collect()
}

#[tokio::test]
async fn search_diversity_and_exploration_work_through_the_api() {
    let s = Server::start(&[]);
    let c = reqwest::Client::new();
    let url = s.at("/v1/recommend");
    let titles = titles();
    let encoder = common::fetched(".models/all-minilm-l6-v2").is_some();

    // plain search (no history): an exact title leads, every item is "search"
    let (st, v) = post_json(&c, &url, &json!({"query": "velvet face serum no. 1", "k": 5})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v)[0], "1", "{v}");
    assert!(v["items"].as_array().unwrap().iter().all(|i| i["source"] == "search"), "{v}");
    // personalized: the same matches ranked by the model for each history
    let history = ["3", "11", "19"];
    let (st, a) = post_json(&c, &url, &json!({"query": "serum", "history": history, "k": 10})).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(ids(&a).len(), 10);
    assert!(ids(&a).iter().all(|i| !history.contains(&i.as_str())));
    assert!(a["items"].as_array().unwrap().iter().all(|i| i["source"] == "search"), "{a}");
    if !encoder {
        // title words only, and it says so
        assert!(ids(&a).iter().all(|i| titles[i].contains("serum")), "{a}");
        assert!(a["note"].as_str().is_some_and(|n| n.contains("title words")), "{a}");
    }
    let (_, b) = post_json(&c, &url, &json!({"query": "serum", "history": ["100", "200", "300"], "k": 10})).await;
    assert_ne!(ids(&a), ids(&b), "the history reorders the matches");
    // a query about nothing in the catalog: no items, a note, never an error
    let (st, v) = post_json(&c, &url, &json!({"query": "zzqxv", "history": history})).await;
    assert_eq!(st, 200, "{v}");
    assert!(ids(&v).is_empty());
    assert!(v["note"].as_str().is_some_and(|n| n.contains("matches")), "{v}");
    // a query with few matches returns fewer than k and says so
    let (st, v) = post_json(&c, &url, &json!({"query": "velvet face serum no. 1", "history": history, "k": 100})).await;
    assert_eq!(st, 200, "{v}");
    if ids(&v).len() < 100 {
        assert!(v["note"].as_str().is_some(), "{v}");
    }

    // diversity: at most 2 items per first-level code, still k items
    let (st, v) = post_json(&c, &url, &json!({"history": history, "k": 10, "diversity": {"max_per_intent": 2}})).await;
    assert_eq!(st, 200, "{v}");
    let codes = first_codes(&v);
    assert_eq!(codes.len(), 10, "{v}");
    let mut per: HashMap<u64, usize> = HashMap::new();
    codes.iter().for_each(|c| *per.entry(*c).or_default() += 1);
    assert!(per.values().all(|&n| n <= 2), "{codes:?}");
    let (_, plain) = post_json(&c, &url, &json!({"history": history, "k": 10})).await;
    let plain_distinct = first_codes(&plain).into_iter().collect::<HashSet<_>>().len();
    assert!(per.len() >= plain_distinct, "{} clusters capped, {plain_distinct} uncapped", per.len());

    // exploration: 3 of 10 from intents the history lacks, deterministic
    let body = json!({"history": history, "k": 10, "explore": 0.3});
    let (st, v) = post_json(&c, &url, &body).await;
    assert_eq!(st, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    let explored: Vec<&Value> = items.iter().filter(|i| i["source"] == "explore").collect();
    assert_eq!(explored.len(), 3, "{v}");
    let (_, again) = post_json(&c, &url, &body).await;
    assert_eq!(ids(&v), ids(&again));
    // the history's own intents (its items' first codes, read from an
    // answer that may return them)
    let (_, mine) = post_json(&c, &url, &json!({"history": history, "k": 100, "exclude_history": false})).await;
    let seen: HashSet<u64> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| history.contains(&i["item_id"].as_str().unwrap()))
        .map(|i| i["semantic_id"][0].as_u64().unwrap())
        .collect();
    assert!(!seen.is_empty());
    assert!(explored.iter().all(|i| !seen.contains(&i["semantic_id"][0].as_u64().unwrap())), "{v}");

    // a new user's profile: exploration follows the profile's intents too
    if encoder {
        let body = json!({"profile": {"age": 30, "interests": ["lipstick"]}, "k": 10, "explore": 0.3});
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 200, "{v}");
        let n = v["items"].as_array().unwrap().iter().filter(|i| i["source"] == "explore").count();
        assert_eq!(n, 3, "{v}");
        let (_, again) = post_json(&c, &url, &body).await;
        assert_eq!(ids(&v), ids(&again));
    }

    // bad input: 422 naming the field
    for (body, field) in [
        (json!({"query": "", "history": history}), "query"),
        (json!({"query": "   "}), "query"),
        (json!({"query": "a".repeat(1001)}), "query"),
        (json!({"history": history, "diversity": {"max_per_intent": 0}}), "diversity.max_per_intent"),
        (json!({"history": history, "k": 5, "diversity": {"max_per_intent": 6}}), "diversity.max_per_intent"),
        (json!({"history": history, "explore": 1.5}), "explore"),
        (json!({"history": history, "explore": -0.1}), "explore"),
        (json!({"history": history, "diversity": {"max_per_intent": 2, "other": 1}}), "diversity.other"),
    ] {
        let (st, v) = post_json(&c, &url, &body).await;
        assert_eq!(st, 422, "{body} -> {v}");
        assert_eq!(v["field"], field, "{body} -> {v}");
    }
}
