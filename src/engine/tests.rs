//! Engine tests on the embedded demo model.

use std::sync::Arc;
use std::time::Duration;

use super::*;

fn engine(with_model: bool, opts: EngineOptions) -> Arc<Engine> {
    let (model, catalog) = crate::server::default_model::load(&candle_core::Device::Cpu).unwrap();
    let e = Engine::new(catalog, opts, Arc::new(NoObserver)).unwrap();
    if with_model {
        e.install(model, "embedded".into()).unwrap();
    }
    e
}

fn req(history: &[&str], k: usize, strategy: Strategy) -> RecRequest {
    RecRequest {
        history: history.iter().map(|s| s.to_string()).collect(),
        k,
        exclude_history: true,
        user_id: None,
        timeout_ms: None,
        strategy,
        profile: None,
    }
}

fn ids(a: &RecAnswer) -> Vec<String> {
    a.items.iter().map(|i| i.item_id.clone()).collect()
}

fn first_ids(e: &Engine, n: usize) -> Vec<String> {
    let cat = e.catalog();
    (0..n as u32).map(|i| cat.catalog.item_id(i).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_sources_and_no_duplicates() {
    let e = engine(true, EngineOptions::default());
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let g = e.recommend(&req(&h, 10, Strategy::Generative)).await.unwrap();
    assert!(g.items.iter().all(|i| i.source == "generative") && g.fallback.is_none());
    let a = e.recommend(&req(&h, 10, Strategy::Ann)).await.unwrap();
    assert_eq!(a.items.len(), 10);
    assert!(a.items.iter().all(|i| i.source == "ann"));
    assert_eq!(a.fallback, Some("requested"));
    // k larger than generation can fill from a tiny beam: ANN completes it
    let big = e.recommend(&req(&h, 60, Strategy::Auto)).await.unwrap();
    assert_eq!(big.items.len(), 60);
    let mut seen = std::collections::HashSet::new();
    assert!(ids(&big).into_iter().all(|i| seen.insert(i)), "an item appears twice");
    assert!(ids(&big).iter().all(|i| !h.contains(&i.as_str())), "history excluded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_model_answers_from_ann_or_refuses_generative() {
    let e = engine(false, EngineOptions::default());
    let h = first_ids(&e, 2);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let a = e.recommend(&req(&h, 5, Strategy::Auto)).await.unwrap();
    assert_eq!((a.items.len(), a.fallback), (5, Some("no_model")));
    assert!(matches!(e.recommend(&req(&h, 5, Strategy::Generative)).await, Err(EngineError::NotReady)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_falls_back_to_ann() {
    // a lone request waits max_wait for company: longer than its deadline
    let opts = EngineOptions {
        batch: BatchOptions { max_wait: Duration::from_millis(300), ..Default::default() },
        ..Default::default()
    };
    let e = engine(true, opts);
    let h = first_ids(&e, 2);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let mut r = req(&h, 5, Strategy::Auto);
    r.timeout_ms = Some(20);
    let a = e.recommend(&r).await.unwrap();
    assert_eq!(a.fallback, Some("deadline"));
    assert!(a.items.iter().all(|i| i.source == "ann") && a.items.len() == 5);
    r.strategy = Strategy::Generative;
    assert!(matches!(e.recommend(&r).await, Err(EngineError::Deadline(20))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_item_is_never_returned_and_added_item_is() {
    let e = engine(true, EngineOptions::default());
    let h = first_ids(&e, 2);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let before = e.recommend(&req(&h, 20, Strategy::Auto)).await.unwrap();
    let victim = before.items[0].item_id.clone();
    e.remove_item(&victim).unwrap();
    for s in [Strategy::Auto, Strategy::Ann] {
        let a = e.recommend(&req(&h, 50, s)).await.unwrap();
        assert!(!ids(&a).contains(&victim));
    }
    assert!(matches!(e.remove_item(&victim), Err(EngineError::NotFound(_))));
    // a twin of the last history item: ANN's best match
    let cat = e.catalog();
    let last = cat.catalog.index_of(h[1]).unwrap();
    let emb = cat.catalog.embedding(last).to_vec();
    let new = edits::NewItem { id: "live-1".into(), title: "twin".into(), text: None, embedding: Some(emb), semantic_id: None };
    let sid = e.upsert_item(new).unwrap().semantic_id;
    assert_eq!(e.catalog().catalog.trie().lookup(&sid), e.catalog().catalog.index_of("live-1"));
    let a = e.recommend(&req(&h, 5, Strategy::Ann)).await.unwrap();
    assert!(ids(&a).contains(&"live-1".to_string()), "{:?}", ids(&a));
}

#[test]
fn rollback_swaps_back_and_forth() {
    let e = engine(true, EngineOptions::default());
    assert!(matches!(e.rollback(), Err(EngineError::Conflict(_))));
    let (model, _) = crate::server::default_model::load(&candle_core::Device::Cpu).unwrap();
    e.install(model, "second".into()).unwrap();
    let (cur, prev) = e.models();
    assert_eq!(cur.unwrap().source, "second");
    assert_eq!(prev.unwrap().source, "embedded");
    assert_eq!(e.rollback().unwrap().source, "embedded");
    assert_eq!(e.models().1.unwrap().source, "second");
}
