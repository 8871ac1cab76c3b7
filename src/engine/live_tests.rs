//! Live items through the engine. Lifetimes, on a clock set by hand: an item
//! is returned one millisecond before its expiry and by no path at or after
//! it, across a restart and a compaction (the replicas' test is in
//! `replica/tests.rs`). Engagement: events make a cluster the model does not
//! choose hot, and the trending prior explores it.

use std::sync::Arc;

use super::tests::{engine, first_ids, ids, random_store, req};
use super::*;
use crate::clock::Clock;

const T0: u64 = 1_900_000_000_000;

fn same_item_expiring(e: &Engine, id: &str, expires_at_ms: u64) {
    let cat = e.catalog();
    let c = &cat.catalog;
    let i = c.index_of(id).unwrap();
    let up = e
        .upsert_item(edits::ItemInput {
            id: id.into(),
            title: c.title(i).into(),
            text: None,
            embedding: Some(c.embedding(i)),
            semantic_id: Some(c.sid(i).to_vec()),
            expires_at_ms: Some(expires_at_ms),
        })
        .unwrap();
    assert_eq!(up.semantic_id, c.sid(i), "the same item, now with a lifetime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_is_served_until_one_millisecond_before_its_expiry_on_every_path() {
    let clock = Clock::manual(T0);
    let e = engine(true, EngineOptions { clock: clock.clone(), ..Default::default() });
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let generated = ids(&e.recommend(&req(&h, 10, Strategy::Generative)).await.unwrap())[0].clone();
    let recalled = ids(&e.recommend(&req(&h, 10, Strategy::Ann)).await.unwrap())[0].clone();
    let expiry = T0 + 5_000;
    for id in [&generated, &recalled] {
        same_item_expiring(&e, id, expiry);
    }
    let title = {
        let c = e.catalog();
        c.catalog.title(c.catalog.index_of(&generated).unwrap()).to_string()
    };
    let search = RecRequest { query: Some(title), ..req(&h, 10, Strategy::Auto) };
    let explore = RecRequest { explore: 0.5, ..req(&h, 20, Strategy::Auto) };
    clock.set(expiry - 1);
    assert!(ids(&e.recommend(&req(&h, 10, Strategy::Generative)).await.unwrap()).contains(&generated));
    assert!(ids(&e.recommend(&req(&h, 10, Strategy::Ann)).await.unwrap()).contains(&recalled));
    assert!(ids(&e.recommend(&search).await.unwrap()).contains(&generated), "the search finds it by its title");
    assert!(e.item(&generated).unwrap().served);
    clock.set(expiry);
    for r in [
        req(&h, 10, Strategy::Generative),
        req(&h, 10, Strategy::Auto),
        req(&h, 50, Strategy::Ann),
        search.clone(),
        explore.clone(),
    ] {
        let got = ids(&e.recommend(&r).await.unwrap());
        assert!(!got.contains(&generated) && !got.contains(&recalled), "{r:?}: {got:?}");
    }
    let info = e.item(&generated).unwrap();
    assert!(!info.served);
    assert_eq!(info.expires_at_ms, Some(expiry));
    // the sweep takes both out of the trie, as a delete would
    let (c, i) = (e.catalog(), e.catalog().catalog.index_of(&generated).unwrap());
    assert_eq!(c.catalog.trie().lookup(c.catalog.sid(i)), Some(i), "in the trie until swept");
    assert_eq!(e.sweep_expired(), 2);
    let c = e.catalog();
    assert_eq!(c.catalog.trie().lookup(c.catalog.sid(i)), None);
    assert_eq!(e.sweep_expired(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetimes_hold_across_a_restart_and_a_compaction() {
    let clock = Clock::manual(T0);
    let (dir, cat, store) = random_store("lifetimes", 300);
    let opts = EngineOptions { clock: clock.clone(), compact_edit_bytes: 0, ..Default::default() };
    let open = |cat, store| {
        Engine::with_store(cat, edits::EditStore::Durable(store), opts.clone(), Arc::new(NoObserver)).unwrap()
    };
    let reopen = || {
        let (cat, store, _) = edits::open_store(&dir).unwrap();
        let edits::EditStore::Durable(store) = store else { panic!("writable") };
        open(cat, store)
    };
    let e = open(cat, store);
    let twin = |e: &Engine, of: u32, id: &str, expires_at_ms| {
        let c = e.catalog();
        let emb: Vec<f32> = c.catalog.embedding(of).iter().map(|x| x + 0.001).collect();
        e.upsert_item(edits::ItemInput {
            id: id.into(),
            title: id.into(),
            text: None,
            embedding: Some(emb),
            semantic_id: None,
            expires_at_ms,
        })
        .unwrap()
    };
    twin(&e, 10, "short", Some(T0 + 1_000));
    twin(&e, 20, "long", Some(T0 + 100_000));
    twin(&e, 30, "forever", None);
    // ANN answers for the history of the item each twin copies
    let recalled = |e: &Arc<Engine>, of: &str| {
        let rt = tokio::runtime::Handle::current();
        let e = e.clone();
        let r = req(&[of], 3, Strategy::Ann);
        std::thread::spawn(move || ids(&rt.block_on(e.recommend(&r)).unwrap())).join().unwrap()
    };
    clock.set(T0 + 999);
    let got = recalled(&e, "b10");
    assert!(got.contains(&"short".to_string()), "{got:?}");
    drop(e);
    // a restart one millisecond before the expiry: served; at it: not
    let e = reopen();
    assert!(recalled(&e, "b10").contains(&"short".to_string()), "after a restart");
    clock.set(T0 + 1_000);
    assert!(!recalled(&e, "b10").contains(&"short".to_string()), "expired after a restart");
    assert!(recalled(&e, "b20").contains(&"long".to_string()));
    assert!(!e.item("short").unwrap().served);
    // the next edit takes it out of the trie, and a replay does the same
    twin(&e, 40, "later", None);
    let short = e.catalog().catalog.index_of("short").unwrap();
    let sid = e.catalog().catalog.sid(short).to_vec();
    assert_ne!(e.catalog().catalog.trie().lookup(&sid), Some(short));
    drop(e);
    let e = reopen();
    assert_ne!(e.catalog().catalog.trie().lookup(&sid), Some(short), "the replay expires it at the same record");
    // a compaction drops the expired item (a removed row) and keeps the
    // others' lifetimes in the new version
    let report = e.compact().unwrap();
    assert!(report.version >= 2);
    let c = e.catalog();
    assert!(c.catalog.base().is_removed(short));
    let long = c.catalog.index_of("long").unwrap();
    assert_eq!(c.catalog.base().expiry.get(long), Some(T0 + 100_000));
    assert_eq!(c.catalog.overlay().len(), 0, "folded into the version");
    assert_eq!(c.catalog.trained_rows(), 300, "the items added live stay new to the model after a compaction");
    drop(c);
    drop(e);
    let e = reopen();
    clock.set(T0 + 99_999);
    assert!(recalled(&e, "b20").contains(&"long".to_string()), "after the compaction and a restart");
    clock.set(T0 + 100_000);
    assert!(!recalled(&e, "b20").contains(&"long".to_string()));
    assert!(recalled(&e, "b30").contains(&"forever".to_string()));
    assert_eq!(e.item("long").unwrap().expires_at_ms, Some(T0 + 100_000));
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Events on the items of a first-level cluster the model's list for a
/// history does not reach: with `trending` the trending search's beams go
/// there (explored at the first level, not re-ranked at the leaves) and its
/// items take the trending share of the list, after the model's own best;
/// with share 1 the prior steers the whole list. With no events, weight 0,
/// or no item hot enough, the answer is the model's own, score for score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_explores_a_hot_cluster_and_is_inert_without_events() {
    let clock = Clock::manual(T0);
    let e = engine(true, EngineOptions { clock: clock.clone(), ..Default::default() });
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let scored = |a: &RecAnswer| a.items.iter().map(|i| (i.item_id.clone(), i.score.to_bits())).collect::<Vec<_>>();
    let plain = e.recommend(&req(&h, 10, Strategy::Generative)).await.unwrap();
    let on = RecRequest { trending: Some(2.0), ..req(&h, 10, Strategy::Generative) };
    assert_eq!(scored(&e.recommend(&on).await.unwrap()), scored(&plain), "no events: the model's own answer");
    // the first-level code least present in the answer's clusters: none of its items is listed
    let cat = e.catalog();
    let c = &cat.catalog;
    let listed: std::collections::HashSet<u32> =
        plain.items.iter().map(|i| c.sid(c.index_of(&i.item_id).unwrap())[0]).collect();
    let codes = c.manifest().codebook_sizes[0];
    let hot = (0..codes)
        .find(|code| !listed.contains(code) && (0..c.len() as u32).filter(|&i| c.sid(i)[0] == *code).count() >= 3)
        .unwrap();
    let in_hot: Vec<String> =
        (0..c.len() as u32).filter(|&i| c.sid(i)[0] == hot).map(|i| c.item_id(i).to_string()).collect();
    // the catalog sees impressions everywhere; the hot cluster's items are clicked
    let mut events = Vec::new();
    for i in (0..c.len() as u32).step_by(3) {
        events.push((
            0,
            crate::feed::record::FeedEvent {
                item_id: c.item_id(i).into(),
                kind: crate::catalog::engagement::EventKind::Impression,
                ts_ms: T0,
                value: 5.0,
            },
        ));
    }
    for id in &in_hot {
        for kind in [crate::catalog::engagement::EventKind::Impression, crate::catalog::engagement::EventKind::Click] {
            events.push((0, crate::feed::record::FeedEvent { item_id: id.clone(), kind, ts_ms: T0, value: 5.0 }));
        }
    }
    events.push((
        7,
        crate::feed::record::FeedEvent {
            item_id: "no-such-item".into(),
            kind: crate::catalog::engagement::EventKind::Click,
            ts_ms: T0,
            value: 1.0,
        },
    ));
    let events_again: Vec<_> = events[..events.len() - 1].to_vec();
    let out = e.record_events(events).unwrap();
    assert_eq!((out.errors.len(), out.errors[0].line, out.errors[0].field), (1, 7, Some("item_id")));
    let hot_listed = |a: &RecAnswer| a.items.iter().filter(|i| in_hot.contains(&i.item_id)).count();
    let with = e.recommend(&on).await.unwrap();
    assert_eq!(hot_listed(&with), 3, "the hot cluster takes the 3 trending slots: {:?}", ids(&with));
    let sources: Vec<ItemSource> = with.items.iter().map(|i| i.source).collect();
    assert!(sources[..7].iter().all(|&s| s == ItemSource::Generative), "{sources:?}");
    assert!(sources[7..].iter().all(|&s| s == ItemSource::Trending), "{sources:?}");
    assert_eq!(scored(&with)[..7], scored(&plain)[..7], "the model's own best lead");
    let whole = RecRequest { trending_share: Some(1.0), ..on.clone() };
    let whole = e.recommend(&whole).await.unwrap();
    assert!(hot_listed(&whole) >= 3, "share 1: the prior steers the whole list: {:?}", ids(&whole));
    assert!(whole.items.iter().all(|i| i.source == ItemSource::Generative));
    // an engine asking for more heat than anything has: no trending slot
    let strict = engine(true, EngineOptions { clock: clock.clone(), trending_min_ratio: 1e9, ..Default::default() });
    strict.record_events(events_again.clone()).unwrap();
    assert_eq!(scored(&strict.recommend(&on).await.unwrap()), scored(&plain), "nothing that hot: the model's own");
    let off = RecRequest { trending: Some(0.0), ..req(&h, 10, Strategy::Generative) };
    assert_eq!(scored(&e.recommend(&off).await.unwrap()), scored(&plain), "weight 0: off");
    // the rates show on the item, and decay: two hours later the prior is gone
    let rates = e.item(&in_hot[0]).unwrap().rates;
    assert!(rates.per_minute["click"] > 0.0, "{rates:?}");
    clock.set(T0 + 2 * 3600 * 1000);
    assert_eq!(hot_listed(&e.recommend(&on).await.unwrap()), hot_listed(&plain), "decayed");
}

/// A new item placed under the prefix of the model's first choice for a
/// history: with `--new-items sibling` the very next request generates it
/// right after that choice, with the same score; the items the model was
/// trained on keep their scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_item_scored_as_its_best_sibling_is_generated_next_to_it() {
    let e = engine(true, EngineOptions { new_items: NewItemScoring::Sibling, ..Default::default() });
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let before = e.recommend(&req(&h, 20, Strategy::Generative)).await.unwrap();
    let first = before.items[0].clone();
    let c = e.catalog().catalog.clone();
    let emb = c.embedding(c.index_of(&first.item_id).unwrap());
    let up = e
        .upsert_item(edits::ItemInput {
            id: "fresh".into(),
            title: "fresh".into(),
            text: None,
            embedding: Some(emb),
            semantic_id: Some(first.semantic_id[..first.semantic_id.len() - 1].to_vec()),
            expires_at_ms: None,
        })
        .unwrap();
    assert!(up.semantic_id.last() > first.semantic_id.last(), "a collision code after the first choice's");
    let after = e.recommend(&req(&h, 20, Strategy::Generative)).await.unwrap();
    let names = ids(&after);
    assert_eq!(names[0], first.item_id);
    assert_eq!(names[1], "fresh", "{names:?}");
    assert_eq!(after.items[1].score, first.score, "the best sibling's score");
    let trained: Vec<_> =
        after.items.iter().filter(|i| i.item_id != "fresh").map(|i| (i.item_id.clone(), i.score)).collect();
    let was: Vec<_> = before.items.iter().take(trained.len()).map(|i| (i.item_id.clone(), i.score)).collect();
    assert_eq!(trained, was, "the trained items keep their scores and order");
}
