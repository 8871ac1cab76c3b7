//! Replicas on one in-process feed ([`crate::feed::memory::MemoryFeed`]):
//! convergence under concurrent edits and readers, bad records, joining from
//! a compacted version, trimming, model fan-out with a local refusal, and a
//! feed that goes down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NoFeedObserver, ReplicaOptions};
use crate::catalog::Catalog;
use crate::engine::*;
use crate::feed::memory::MemoryFeed;
use crate::feed::{Feed, Position};

struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("genrec-replica-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Temp(p)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A model root with the demo checkpoint at `a` and the demo catalog saved
/// as a shared folder at `catalog`.
fn shared_root(tag: &str) -> Temp {
    let t = Temp::new(tag);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/model");
    std::fs::create_dir_all(t.0.join("a")).unwrap();
    for f in ["config.json", "genrec.json", "model.safetensors"] {
        std::fs::copy(demo.join(f), t.0.join("a").join(f)).unwrap();
    }
    let (_, catalog) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    catalog.save(&t.0.join("catalog")).unwrap();
    t
}

/// A replica of `feed` serving the shared folder's newest version.
fn replica(root: &Path, feed: &Arc<MemoryFeed>, name: &str, model_root: &Path) -> Arc<Engine> {
    replica_on(root, feed, name, model_root, crate::clock::Clock::system())
}

/// [`replica`] on a given clock.
fn replica_on(
    root: &Path,
    feed: &Arc<MemoryFeed>,
    name: &str,
    model_root: &Path,
    clock: crate::clock::Clock,
) -> Arc<Engine> {
    let dir = root.join("catalog");
    let (catalog, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    let start = super::covered_position(&catalog).unwrap();
    let opts = EngineOptions { model_root: Some(model_root.to_path_buf()), clock, ..Default::default() };
    let e = replica_engine(
        catalog,
        opts,
        feed,
        ReplicaOptions::new(name.into(), dir, super::DEFAULT_MARK_TTL, test_key()),
        start,
    );
    let (model, _) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    e.install(model, "embedded".into()).unwrap();
    e.follow_feed().unwrap();
    wait_for(|| e.feed_ready() == Some(true), "the replica catches up");
    e
}

/// The key the test replicas share.
fn test_key() -> crate::feed::auth::FeedKey {
    crate::feed::auth::FeedKey::new(b"0123456789abcdef0123456789abcdef-test".to_vec(), "test").unwrap()
}

/// An engine that takes its changes through `feed` (its feed thread not
/// started yet).
fn replica_engine(
    catalog: crate::catalog::Catalog,
    opts: EngineOptions,
    feed: &Arc<MemoryFeed>,
    replica: ReplicaOptions,
    start: Position,
) -> Arc<Engine> {
    let f: Arc<dyn Feed> = feed.clone();
    let rep = super::Replica::new(f, replica, start, Arc::new(NoFeedObserver));
    Engine::replica(catalog, rep, opts, Arc::new(NoObserver)).unwrap()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn position(e: &Engine) -> Position {
    e.feed_info().unwrap().position
}

/// Every served item with its semantic ID and title, sorted.
fn served(e: &Engine) -> Vec<(String, Vec<u32>, String)> {
    let cat = e.catalog();
    let c = &cat.catalog;
    let mut v: Vec<_> = (0..c.len() as u32)
        .filter(|&i| c.is_served(i))
        .map(|i| (c.item_id(i).to_string(), c.sid(i).to_vec(), c.title(i).to_string()))
        .collect();
    v.sort();
    v
}

fn embedding(c: &Catalog, i: u32, salt: f32) -> Vec<f32> {
    c.embedding(i).iter().enumerate().map(|(d, x)| x + salt * ((d as f32) * 0.37 + salt).sin()).collect()
}

fn item(c: &Catalog, id: &str, from: u32, salt: f32) -> edits::ItemInput {
    edits::ItemInput {
        id: id.into(),
        title: format!("t {id}"),
        text: None,
        embedding: Some(embedding(c, from, salt)),
        semantic_id: None,
        expires_at_ms: None,
    }
}

fn request(history: Vec<String>) -> RecRequest {
    RecRequest {
        history,
        k: 10,
        exclude_history: true,
        user_id: None,
        timeout_ms: Some(10_000),
        strategy: Strategy::Generative,
        profile: None,
        steering: Steering::Soft,
        ..Default::default()
    }
}

/// The two lists of served items are equal (else: their sizes and the first
/// difference, not two lists of hundreds).
fn assert_same(a: &[(String, Vec<u32>, String)], b: &[(String, Vec<u32>, String)], what: &str) {
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        a.len() == b.len() && first.is_none(),
        "{what}: {} vs {} served items; first difference: {:?}",
        a.len(),
        b.len(),
        first.map(|i| (&a[i], &b[i]))
    );
}

/// Both replicas applied the whole feed.
fn settled(feed: &MemoryFeed, replicas: &[&Arc<Engine>]) {
    let head = feed.head().unwrap().unwrap_or_default();
    wait_for(|| replicas.iter().all(|e| position(e) == head), "every replica reaches the feed's head");
}

#[test]
fn replicas_converge_under_concurrent_edits_and_readers() {
    let root = shared_root("converge");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let b = replica(&root.0, &feed, "b", &root.0);
    let base = a.catalog().catalog.clone();
    let ids: Vec<String> = (0..40u32).map(|i| base.item_id(i).to_string()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // readers: recommendations on both replicas all along
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let readers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|e| {
            let (stop, ids) = (stop.clone(), ids.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ans = handle.block_on(e.recommend(&request(ids[n % 30..n % 30 + 5].to_vec()))).unwrap();
                    assert_eq!(ans.items.len(), 10);
                    n += 1;
                }
                n
            })
        })
        .collect();
    // writers: two threads per replica, upserts under the same prefixes
    // (items made from the same base embeddings) and deletes
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let e = if t % 2 == 0 { a.clone() } else { b.clone() };
            let base = base.clone();
            std::thread::spawn(move || {
                for i in 0..25u32 {
                    let up = e.upsert_item(item(&base, &format!("w{t}-{i}"), i % 7, 0.01 * (t as f32 + 1.0))).unwrap();
                    assert_eq!(
                        e.item(&up.item_id).unwrap().semantic_id,
                        up.semantic_id,
                        "read-your-writes on this replica"
                    );
                }
                e.remove_item(&format!("w{t}-3")).unwrap();
                e.remove_item(base.item_id(100 + t)).unwrap();
            })
        })
        .collect();
    writers.into_iter().for_each(|w| w.join().unwrap());
    settled(&feed, &[&a, &b]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 0);
    let (sa, sb) = (served(&a), served(&b));
    assert_same(&sa, &sb, "both replicas serve the same items with the same semantic IDs");
    assert_eq!(sa.len(), base.served_len() + 4 * 24 - 4);
    let mut sids: Vec<&Vec<u32>> = sa.iter().map(|s| &s.1).collect();
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), sa.len(), "no two served items share a semantic ID");
    assert_eq!(a.catalog().catalog.last_edit_id(), b.catalog().catalog.last_edit_id());
    for n in 0..5 {
        let h = request(ids[n * 5..n * 5 + 5].to_vec());
        let (x, y) = (rt.block_on(a.recommend(&h)).unwrap(), rt.block_on(b.recommend(&h)).unwrap());
        let key = |r: &RecAnswer| r.items.iter().map(|i| (i.item_id.clone(), i.score.to_bits())).collect::<Vec<_>>();
        assert_eq!(key(&x), key(&y), "identical answers");
    }
}

/// Lifetimes on three replicas: an item upserted through one with an expiry
/// is returned by all three one millisecond before it and by none at it
/// (their clocks set by hand), and once a record's time (the feed's) passes
/// the expiry, every replica takes it out of its trie at that record, so a
/// new item under the same prefix gets the same semantic ID everywhere.
#[test]
fn replicas_expire_an_item_alike() {
    use crate::catalog::expiry::system_ms;
    let root = shared_root("expiry");
    let feed = Arc::new(MemoryFeed::new());
    let clock = crate::clock::Clock::manual(system_ms());
    let reps: Vec<Arc<Engine>> =
        ["a", "b", "c"].iter().map(|n| replica_on(&root.0, &feed, n, &root.0, clock.clone())).collect();
    let base = reps[0].catalog().catalog.clone();
    let expiry = system_ms() + 300;
    let live = edits::ItemInput { expires_at_ms: Some(expiry), ..item(&base, "live", 5, 0.001) };
    let up = reps[0].upsert_item(live).unwrap();
    settled(&feed, &reps.iter().collect::<Vec<_>>());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ann = RecRequest { strategy: Strategy::Ann, ..request(vec![base.item_id(5).to_string()]) };
    let answers = |e: &Arc<Engine>| -> Vec<String> {
        rt.block_on(e.recommend(&ann)).unwrap().items.into_iter().map(|i| i.item_id).collect()
    };
    clock.set(expiry - 1);
    for e in &reps {
        assert!(answers(e).contains(&"live".to_string()), "served 1 ms before its expiry");
    }
    clock.set(expiry);
    for e in &reps {
        assert!(!answers(e).contains(&"live".to_string()), "never at its expiry");
        assert!(!e.item("live").unwrap().served);
    }
    // a record after the expiry, by the feed's clock
    while system_ms() <= expiry {
        std::thread::sleep(Duration::from_millis(20));
    }
    let levels = up.semantic_id.len();
    let next =
        edits::ItemInput { semantic_id: Some(up.semantic_id[..levels - 1].to_vec()), ..item(&base, "next", 7, 0.002) };
    let got = reps[1].upsert_item(next).unwrap();
    settled(&feed, &reps.iter().collect::<Vec<_>>());
    assert_eq!(got.semantic_id, up.semantic_id, "the expired item's ID is free at this record");
    let first = served(&reps[0]);
    assert!(!first.iter().any(|s| s.0 == "live"));
    for e in &reps[1..] {
        assert_same(&first, &served(e), "every replica expired it at the same record");
        assert_eq!(e.item("next").unwrap().semantic_id, up.semantic_id);
    }
}

/// Events sent to two replicas reach all three through the feed, and every
/// replica holds the same rates (relative 1e-9: the sums are order-free).
#[test]
fn replicas_agree_on_engagement_rates() {
    use crate::catalog::engagement::EventKind;
    use crate::feed::record::FeedEvent;
    let root = shared_root("events");
    let feed = Arc::new(MemoryFeed::new());
    let now = crate::catalog::expiry::system_ms();
    // (one clock for all: the rates are read at the same moment)
    let clock = crate::clock::Clock::manual(now);
    let reps: Vec<Arc<Engine>> =
        ["a", "b", "c"].iter().map(|n| replica_on(&root.0, &feed, n, &root.0, clock.clone())).collect();
    let base = reps[0].catalog().catalog.clone();
    let senders: Vec<_> = (0..2)
        .map(|t| {
            let (e, base) = (reps[t].clone(), base.clone());
            std::thread::spawn(move || {
                for round in 0..20u64 {
                    let lines = (0..50u32)
                        .map(|i| {
                            let item = (i * 7 + t as u32 + round as u32) % 60;
                            let ev = FeedEvent {
                                item_id: base.item_id(item).into(),
                                kind: EventKind::ALL[(i as usize + t) % 4],
                                ts_ms: now - round * 1000,
                                value: 1.0 + i as f32 / 10.0,
                            };
                            (i as usize + 1, ev)
                        })
                        .collect();
                    let out = e.record_events(lines).unwrap();
                    assert!(out.errors.is_empty() && out.feed_position.is_some());
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().unwrap());
    settled(&feed, &reps.iter().collect::<Vec<_>>());
    let rates = |e: &Engine, id: &str| e.item(id).unwrap().rates.per_minute;
    let mut checked = 0;
    for i in 0..60u32 {
        let id = base.item_id(i);
        let first = rates(&reps[0], id);
        for e in &reps[1..] {
            for (kind, x) in rates(e, id) {
                let y = first[&kind];
                assert!((x - y).abs() <= 1e-9 * y.abs().max(1e-9), "{id} {kind}: {x} vs {y}");
                checked += (y > 0.0) as usize;
            }
        }
    }
    assert!(checked > 100, "{checked} non-zero rates compared");
}

#[test]
fn bad_records_are_skipped_alike_and_failed_edits_fail_everywhere() {
    let root = shared_root("bad");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let b = replica(&root.0, &feed, "b", &root.0);
    let base = a.catalog().catalog.clone();
    feed.append_raw(&test_key().seal(b"not json"));
    feed.append_raw(&test_key().seal(br#"{"kind":"resize","to":3}"#));
    // someone with access to the feed's server but not the key: a well-formed
    // upsert and a model load, unsealed and sealed with another key
    let forged = serde_json::json!({"kind": "items", "edits": [
        {"op": "upsert", "id": "forged", "title": "forged", "embedding": embedding(&base, 3, 0.2)}
    ]})
    .to_string();
    feed.append_raw(forged.as_bytes());
    let other = crate::feed::auth::FeedKey::new(vec![7; 32], "other").unwrap();
    feed.append_raw(&other.seal(forged.as_bytes()));
    feed.append_raw(br#"{"kind":"model_load","path":"hf:evil/model"}"#);
    let sid = base.sid(5).to_vec();
    // a semantic ID that is taken: fails on every replica the same way
    let taken = edits::ItemInput { semantic_id: Some(sid), ..item(&base, "dup", 5, 0.0) };
    assert!(matches!(a.upsert_item(taken), Err(EngineError::Conflict(_))));
    let ok = b.upsert_item(item(&base, "fine", 9, 0.02)).unwrap();
    settled(&feed, &[&a, &b]);
    for e in [&a, &b] {
        let info = e.feed_info().unwrap();
        assert_eq!(info.skipped, 5, "two that do not parse, three not sealed with the key");
        assert_eq!(e.item("fine").unwrap().semantic_id, ok.semantic_id);
        assert!(e.item("dup").is_err());
        assert!(e.item("forged").is_err(), "a record without the key changes nothing");
        assert!(info.model_change.is_none(), "nor loads a model");
    }
    assert_same(&served(&a), &served(&b), "a and b");
    assert_eq!(a.catalog().catalog.last_edit_id(), 1, "the failed edit took no edit id");
}

#[test]
fn compaction_records_its_position_joiners_replay_after_it_and_trimming_keeps_what_replicas_need() {
    let root = shared_root("join");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let base = a.catalog().catalog.clone();
    for i in 0..5 {
        a.upsert_item(item(&base, &format!("x{i}"), i, 0.03)).unwrap();
    }
    let r1 = a.compact().unwrap();
    assert_eq!(r1.version, 2);
    assert_eq!(feed.len(), 5, "the version before has no position: nothing trimmed");
    for i in 5..9 {
        a.upsert_item(item(&base, &format!("x{i}"), i, 0.03)).unwrap();
    }
    // an active replica that is still at the first of these edits holds the
    // trim back to its position
    let slow_at = feed.read_after(Position::START, 1, Duration::ZERO).unwrap()[0].position;
    feed.mark("slow", slow_at, 2).unwrap();
    let r2 = a.compact().unwrap();
    assert_eq!(r2.version, 3);
    assert_eq!(
        feed.read_after(Position::START, 1, Duration::ZERO).unwrap()[0].position,
        slow_at,
        "the slow replica's records stay"
    );
    assert!(root.0.join("catalog/v-000002").exists(), "the version the slow replica serves stays");
    // once it has moved on, the next compaction trims below the version before
    feed.mark("slow", feed.head().unwrap().unwrap(), 3).unwrap();
    a.upsert_item(item(&base, "x8b", 8, 0.05)).unwrap();
    let r2 = a.compact().unwrap();
    assert_eq!(r2.version, 4);
    let v3_position: Position =
        crate::catalog::dir::version_feed_position(&root.0.join("catalog"), 3).unwrap().unwrap().parse().unwrap();
    let kept = feed.read_after(Position::START, 100, Duration::ZERO).unwrap();
    assert_eq!(kept.first().map(|e| e.position), Some(v3_position), "trimmed below the version before the newest");
    assert_eq!(kept.len(), 2);
    assert!(!root.0.join("catalog/v-000002").exists(), "versions nobody serves are deleted");
    a.upsert_item(item(&base, "x9", 9, 0.03)).unwrap();
    // a replica that joins now starts from version 4 and replays one record
    let c = replica(&root.0, &feed, "c", &root.0);
    assert_eq!(c.catalog().catalog.manifest().version, 4);
    settled(&feed, &[&a, &c]);
    assert_same(&served(&a), &served(&c), "a and c");
    // the compacting replica moves onto its new version (bounded overlay)
    wait_for(|| a.catalog().catalog.manifest().version == 4, "the writer rebases on its version");
    assert_same(&served(&a), &served(&c), "a and c");
    assert!(a.catalog().catalog.overlay().len() <= 1);
}

#[test]
fn a_replica_below_the_trimmed_feed_reloads_the_newest_version() {
    let root = shared_root("trimmed");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let base = a.catalog().catalog.clone();
    // an engine opened from the first version, which joins only after two
    // compactions trimmed the feed past it
    let dir = root.0.join("catalog");
    let (old, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    for round in 0..2 {
        for i in 0..3 {
            a.upsert_item(item(&base, &format!("r{round}-{i}"), i, 0.05)).unwrap();
        }
        a.compact().unwrap();
    }
    a.upsert_item(item(&base, "last", 1, 0.07)).unwrap();
    assert!(feed.trimmed_below().unwrap() > Position::START);
    let late = replica_engine(
        old,
        EngineOptions { model_root: Some(root.0.clone()), ..Default::default() },
        &feed,
        ReplicaOptions::new("late".into(), dir, super::DEFAULT_MARK_TTL, test_key()),
        Position::START,
    );
    late.follow_feed().unwrap();
    settled(&feed, &[&a, &late]);
    assert_same(&served(&a), &served(&late), "nothing the trimmed entries held is missing");
}

#[test]
fn model_changes_fan_out_and_a_replica_that_cannot_load_keeps_its_model() {
    let root = shared_root("models");
    let elsewhere = Temp::new("other-root");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let b = replica(&root.0, &feed, "b", &root.0);
    // c's model root lacks the checkpoint
    let c = replica(&root.0, &feed, "c", &elsewhere.0);
    let info = a.load_checkpoint("a").unwrap();
    settled(&feed, &[&a, &b, &c]);
    assert_eq!(b.model().unwrap().info().source, info.source, "b loaded what a published");
    assert_eq!(c.model().unwrap().source, "embedded", "c kept its model");
    let change = c.feed_info().unwrap().model_change.unwrap();
    assert!(change.refused.is_some(), "c says it refused");
    assert!(b.feed_info().unwrap().model_change.unwrap().refused.is_none());
    // a rollback from b puts every replica back on the embedded model
    b.rollback().unwrap();
    settled(&feed, &[&a, &b, &c]);
    for e in [&a, &b, &c] {
        assert_eq!(e.model().unwrap().source, "embedded");
    }
    assert!(c.feed_info().unwrap().model_change.unwrap().refused.is_none(), "c already served it");
    // a replica that joins later serves the newest model change that loads:
    // "broken" is refused everywhere, so everyone stays on "a"
    a.load_checkpoint("a").unwrap();
    // (every file is there, so it is published; its weights do not load)
    std::fs::create_dir_all(root.0.join("broken")).unwrap();
    for f in ["config.json", "genrec.json"] {
        std::fs::copy(root.0.join("a").join(f), root.0.join("broken").join(f)).unwrap();
    }
    std::fs::write(root.0.join("broken/model.safetensors"), b"not safetensors").unwrap();
    assert!(matches!(b.load_checkpoint("broken"), Err(EngineError::Refused(_))));
    settled(&feed, &[&a, &b, &c]);
    let d = replica(&root.0, &feed, "d", &root.0);
    assert_eq!(d.model().unwrap().info().source, info.source);
    assert_eq!(a.model().unwrap().info().source, info.source);
    // an ensemble fans out whole: every replica that has it serves both members
    let ens = root.0.join("ens");
    std::fs::create_dir_all(ens.join("members/1")).unwrap();
    for f in ["config.json", "genrec.json", "model.safetensors"] {
        std::fs::copy(root.0.join("a").join(f), ens.join(f)).unwrap();
        std::fs::copy(root.0.join("a").join(f), ens.join("members/1").join(f)).unwrap();
    }
    std::fs::write(ens.join("members/1/model.safetensors"), crate::model::demo::variant_weights(0.5).unwrap()).unwrap();
    crate::model::ensemble::list_members(&ens, &["members/1".to_string()]).unwrap();
    let info = b.load_checkpoint("ens").unwrap();
    assert_eq!(info.members, 2);
    settled(&feed, &[&a, &b, &c, &d]);
    for e in [&a, &d] {
        let m = e.model().unwrap().info();
        assert_eq!((m.members, &m.version), (2, &info.version));
    }
    assert_eq!(c.model().unwrap().info().members, 1, "c cannot load it and keeps its model");
}

#[test]
fn a_feed_that_goes_down_refuses_edits_and_serving_goes_on() {
    let root = shared_root("down");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let base = a.catalog().catalog.clone();
    a.upsert_item(item(&base, "before", 1, 0.04)).unwrap();
    feed.set_down(true);
    wait_for(|| !a.feed_info().unwrap().connected, "the replica sees the feed down");
    assert!(matches!(a.upsert_item(item(&base, "during", 2, 0.04)), Err(EngineError::Feed(_))));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let h = (0..5u32).map(|i| base.item_id(i).to_string()).collect();
    assert_eq!(rt.block_on(a.recommend(&request(h))).unwrap().items.len(), 10, "serving goes on");
    assert_eq!(a.feed_ready(), Some(true), "a running replica stays ready on its last state");
    feed.set_down(false);
    wait_for(|| a.feed_info().unwrap().connected, "the replica reconnects");
    a.upsert_item(item(&base, "after", 3, 0.04)).unwrap();
    assert!(a.item("before").is_ok() && a.item("after").is_ok() && a.item("during").is_err());
}

#[test]
fn a_replica_that_cannot_reach_the_feed_at_start_is_not_ready_until_it_does() {
    let root = shared_root("start-down");
    let feed = Arc::new(MemoryFeed::new());
    let dir = root.0.join("catalog");
    let (catalog, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    feed.append_raw(br#"{"kind":"items","edits":[]}"#);
    feed.set_down(true);
    let e = replica_engine(
        catalog,
        EngineOptions::default(),
        &feed,
        ReplicaOptions::new("late".into(), dir, super::DEFAULT_MARK_TTL, test_key()),
        Position::START,
    );
    e.follow_feed().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(e.feed_ready(), Some(false), "not ready before it has seen the feed's head");
    assert!(matches!(e.upsert_item(item(&e.catalog().catalog, "x", 1, 0.1)), Err(EngineError::CatchingUp)));
    feed.set_down(false);
    wait_for(|| e.feed_ready() == Some(true), "ready once caught up");
    assert_eq!(position(&e), feed.head().unwrap().unwrap());
}

/// A replica whose feed stalled (here: reads hang): a batch's record is in
/// the feed but not applied here in time. Its lines are reported pending
/// with the record's position, not as failed (a client that resent failed
/// lines duplicated them); once the feed moves again they are applied.
/// And while its feed thread makes no progress the replica is not ready
/// (it went on serving an old catalog as if current).
#[test]
fn a_stalled_feed_makes_the_replica_unready_and_its_timed_out_lines_pending() {
    let root = shared_root("stalled");
    let feed = Arc::new(MemoryFeed::new());
    let dir = root.0.join("catalog");
    let (catalog, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    let start = super::covered_position(&catalog).unwrap();
    let mut opts = ReplicaOptions::new("stalls".into(), dir, super::DEFAULT_MARK_TTL, test_key());
    opts.apply_wait = Duration::from_millis(300);
    opts.stall_after = Duration::from_millis(1500);
    let e = replica_engine(catalog, EngineOptions::default(), &feed, opts, start);
    e.follow_feed().unwrap();
    wait_for(|| e.feed_ready() == Some(true), "the replica catches up");
    let base = e.catalog().catalog.clone();

    feed.set_stalled(true);
    let lines: Vec<(usize, edits::ItemInput)> =
        (1..=3).map(|i| (i, item(&base, &format!("late-{i}"), i as u32, 0.03))).collect();
    let out = e.upsert_batch(lines).unwrap();
    assert_eq!((out.applied, out.errors.len()), (0, 0), "{out:?}");
    assert_eq!(out.pending, vec![1, 2, 3], "{out:?}");
    let at = out.feed_position.expect("the position of the pending record");
    assert!(at > start);
    assert_eq!(e.feed_ready(), Some(true), "not stalled for long yet");
    wait_for(|| e.feed_ready() == Some(false), "the stalled replica stops saying it is ready");

    feed.set_stalled(false);
    wait_for(|| e.feed_ready() == Some(true), "ready again once the feed moves");
    wait_for(|| e.feed_applied().is_some_and(|p| p >= at), "the pending record is applied");
    for i in 1..=3 {
        assert!(e.catalog().catalog.index_of(&format!("late-{i}")).is_some(), "late-{i} is served");
    }
}

/// A compaction whose lease lapsed while it wrote the version (a stall, a
/// lost connection; another replica may have taken the lease) switches
/// nothing and leaves nothing: it used to switch anyway, so two compactions
/// could write and delete each other's versions. With its lease kept, the
/// next compaction switches.
#[test]
fn a_compaction_that_lost_its_lease_switches_nothing() {
    let root = shared_root("lease");
    let feed = Arc::new(MemoryFeed::new());
    let a = replica(&root.0, &feed, "a", &root.0);
    let base = a.catalog().catalog.clone();
    a.upsert_item(item(&base, "x", 1, 0.05)).unwrap();
    let dir = root.0.join("catalog");
    let before = crate::catalog::dir::version_of(&dir).unwrap();
    feed.set_leases_lapse(true);
    let err = a.compact().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("lease lapsed"), "{err}");
    assert_eq!(crate::catalog::dir::version_of(&dir).unwrap(), before, "nothing switched");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(feed.trimmed_below().unwrap(), Position::START, "nothing trimmed");
    feed.set_leases_lapse(false);
    assert_eq!(a.compact().unwrap().version, before + 1);
}

#[test]
fn the_trim_mark_never_moves_backwards() {
    let feed = MemoryFeed::new();
    let (high, low) = (Position { ms: 20, seq: 1 }, Position { ms: 10, seq: 5 });
    feed.trim_below(high).unwrap();
    feed.trim_below(low).unwrap();
    assert_eq!(feed.trimmed_below().unwrap(), high);
}
