//! Engine tests on the embedded demo model.

use std::sync::Arc;
use std::time::Duration;

use super::*;

pub(super) fn engine(with_model: bool, opts: EngineOptions) -> Arc<Engine> {
    let (model, catalog) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    let e = Engine::new(catalog, opts, Arc::new(NoObserver)).unwrap();
    if with_model {
        e.install(model, "embedded".into()).unwrap();
    }
    e
}

pub(super) fn req(history: &[&str], k: usize, strategy: Strategy) -> RecRequest {
    RecRequest {
        history: history.iter().map(|s| s.to_string()).collect(),
        k,
        exclude_history: true,
        user_id: None,
        // far above the 500 ms default: a loaded test machine (or a panic
        // printing its backtrace) must not turn an answer into a deadline
        timeout_ms: Some(30_000),
        strategy,
        profile: None,
        steering: Steering::Soft,
        ..Default::default()
    }
}

pub(super) fn ids(a: &RecAnswer) -> Vec<String> {
    a.items.iter().map(|i| i.item_id.clone()).collect()
}

pub(super) fn first_ids(e: &Engine, n: usize) -> Vec<String> {
    let cat = e.catalog();
    (0..n as u32).map(|i| cat.catalog.item_id(i).to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_sources_and_no_duplicates() {
    let e = engine(true, EngineOptions::default());
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let g = e.recommend(&req(&h, 10, Strategy::Generative)).await.unwrap();
    assert!(g.items.iter().all(|i| i.source == ItemSource::Generative) && g.fallback.is_none());
    let a = e.recommend(&req(&h, 10, Strategy::Ann)).await.unwrap();
    assert_eq!(a.items.len(), 10);
    assert!(a.items.iter().all(|i| i.source == ItemSource::Ann));
    assert_eq!(a.fallback, Some(FallbackReason::Requested));
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
    assert_eq!((a.items.len(), a.fallback), (5, Some(FallbackReason::NoModel)));
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
    assert_eq!(a.fallback, Some(FallbackReason::Deadline));
    assert!(a.items.iter().all(|i| i.source == ItemSource::Ann) && a.items.len() == 5);
    r.strategy = Strategy::Generative;
    assert!(matches!(e.recommend(&r).await, Err(EngineError::Deadline(20))));
}

/// A panic inside a batch's generation fails that batch only: `auto`
/// answers from ANN, `generative` gets an error, the worker keeps running
/// and the next request is generated again; the panic is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_generation_fails_one_batch_and_the_worker_goes_on() {
    let e = engine(true, EngineOptions::default());
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    assert_eq!(e.worker_health(), scheduler::WorkerHealth { running: true, panics: 0 });

    e.inject_generation_panic();
    let a = e.recommend(&req(&h, 5, Strategy::Auto)).await.unwrap();
    assert_eq!(a.fallback, Some(FallbackReason::Error));
    assert!(a.items.len() == 5 && a.items.iter().all(|i| i.source == ItemSource::Ann));

    e.inject_generation_panic();
    match e.recommend(&req(&h, 5, Strategy::Generative)).await {
        Err(EngineError::Batch(m)) => assert!(m.to_string().contains("panicked"), "{m}"),
        other => panic!("expected a batch error, got {other:?}"),
    }
    assert_eq!(e.worker_health(), scheduler::WorkerHealth { running: true, panics: 2 });

    for _ in 0..3 {
        let a = e.recommend(&req(&h, 5, Strategy::Generative)).await.unwrap();
        assert!(a.fallback.is_none() && a.items.iter().all(|i| i.source == ItemSource::Generative));
    }
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
    let new = edits::ItemInput {
        id: "live-1".into(),
        title: "twin".into(),
        text: None,
        embedding: Some(emb),
        semantic_id: None,
        expires_at_ms: None,
    };
    let sid = e.upsert_item(new).unwrap().semantic_id;
    assert_eq!(e.catalog().catalog.trie().lookup(&sid), e.catalog().catalog.index_of("live-1"));
    let a = e.recommend(&req(&h, 5, Strategy::Ann)).await.unwrap();
    assert!(ids(&a).contains(&"live-1".to_string()), "{:?}", ids(&a));
}

#[test]
fn rollback_swaps_back_and_forth() {
    let e = engine(true, EngineOptions::default());
    assert!(matches!(e.rollback(), Err(EngineError::Conflict(_))));
    let (model, _) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    e.install(model, "second".into()).unwrap();
    let (cur, prev) = e.models();
    assert_eq!(cur.unwrap().source, "second");
    assert_eq!(prev.unwrap().source, "embedded");
    assert_eq!(e.rollback().unwrap().source, "embedded");
    assert_eq!(e.models().1.unwrap().source, "second");
}

/// A catalog folder of `n` random 8-d items (2 levels of 16 codes), opened
/// for writing.
pub(super) fn random_store(tag: &str, n: usize) -> (std::path::PathBuf, crate::catalog::Catalog, edits::CatalogStore) {
    use rand::{Rng, SeedableRng};
    let dir = std::env::temp_dir().join(format!("genrec-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut emb: Vec<f32> = (0..n * 8).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // unit norm, as catalog embeddings are
    for row in emb.chunks_mut(8) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    let items: Vec<crate::dataset::ItemRecord> = (0..n)
        .map(|i| crate::dataset::ItemRecord {
            id: format!("b{i}"),
            title: format!("base {i}"),
            text: format!("base {i}"),
        })
        .collect();
    let opts = crate::catalog::RqOptions { levels: 2, codebook_size: 16, iterations: 5, seed: 1, ..Default::default() };
    let (cat, _) = crate::catalog::build::build_catalog("random", &items, emb, 8, "test", &opts).unwrap();
    cat.save(&dir).unwrap();
    let (cat, store, _) = edits::open_store(&dir).unwrap();
    let edits::EditStore::Durable(store) = store else { panic!("the folder is writable") };
    (dir, cat, store)
}

/// Readers take views and ANN answers while writers upsert and delete and
/// the edit log passes the compaction threshold (compactions run beside
/// them): every view is whole (each item it serves is at its semantic ID in
/// that view's trie), no request fails, and every acknowledged edit is there
/// at the end and after reopening the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_writers_and_automatic_compaction() {
    use rand::{Rng, SeedableRng};
    let (dir, cat, store) = random_store("concurrent", 2000);
    let opts = EngineOptions { compact_edit_bytes: 200_000, ..Default::default() };
    let e = Engine::with_store(cat, edits::EditStore::Durable(store), opts, Arc::new(NoObserver)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..3u64 {
        let (e, stop) = (e.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(t);
            let mut checked = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let view = e.catalog();
                let c = &view.catalog;
                for _ in 0..20 {
                    let i = rng.random_range(0..c.len() as u32);
                    if c.is_served(i) {
                        assert_eq!(c.trie().lookup(c.sid(i)), Some(i), "a view serves item {i} but its trie does not");
                        checked += 1;
                    }
                }
                let h = format!("b{}", rng.random_range(0..2000));
                let a = e.recommend(&req(&[h.as_str()], 10, Strategy::Ann)).await.expect("an ANN answer");
                // (against a view taken after the answer: the request may
                // have taken a newer view than `view`, with items added since)
                let after = e.catalog();
                assert!(a.items.iter().all(|it| after.catalog.index_of(&it.item_id).is_some()));
                tokio::task::yield_now().await;
            }
            checked
        }));
    }
    // writers: upserts in batches, single upserts, deletes; record what was acknowledged
    let writer = {
        let e = e.clone();
        tokio::task::spawn_blocking(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
            let mut want: std::collections::HashMap<String, bool> = Default::default();
            let vec8 = |rng: &mut rand_chacha::ChaCha8Rng| {
                (0..8).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>()
            };
            for round in 0..40 {
                let lines: Vec<(usize, edits::ItemInput)> = (0..50)
                    .map(|j| {
                        let id = format!("n{round}-{j}");
                        (
                            j + 1,
                            edits::ItemInput {
                                id: id.clone(),
                                title: id,
                                text: None,
                                embedding: Some(vec8(&mut rng)),
                                semantic_id: None,
                                expires_at_ms: None,
                            },
                        )
                    })
                    .collect();
                let ids: Vec<String> = lines.iter().map(|l| l.1.id.clone()).collect();
                let out = e.upsert_batch(lines).unwrap();
                let bad: std::collections::HashSet<usize> = out.errors.iter().map(|x| x.line).collect();
                for (j, id) in ids.into_iter().enumerate() {
                    if !bad.contains(&(j + 1)) {
                        want.insert(id, true);
                    }
                }
                let victim = format!("b{}", rng.random_range(0..2000));
                if e.remove_item(&victim).is_ok() {
                    want.insert(victim, false);
                }
                let id = format!("s{round}");
                let single = edits::ItemInput {
                    id: id.clone(),
                    title: id.clone(),
                    text: None,
                    embedding: Some(vec8(&mut rng)),
                    semantic_id: None,
                    expires_at_ms: None,
                };
                if e.upsert_item(single).is_ok() {
                    want.insert(id, true);
                }
            }
            want
        })
    };
    let want = writer.await.unwrap();
    // let a compaction that the last edits started finish
    for _ in 0..200 {
        if !e.catalog_info().compacting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let info = e.catalog_info();
    assert!(info.version >= 2, "the log passed the threshold: a compaction ran ({info:?})");
    let check = |c: &crate::catalog::Catalog| {
        for (id, served) in &want {
            let i = c.index_of(id).unwrap_or_else(|| panic!("{id} unknown"));
            assert_eq!(c.is_served(i), *served, "{id}");
            if *served {
                assert_eq!(c.trie().lookup(c.sid(i)), Some(i));
            }
        }
    };
    check(&e.catalog().catalog);
    drop(e);
    let (reopened, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    check(&reopened);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Records batch sizes.
#[derive(Default)]
struct Sizes(std::sync::Mutex<Vec<usize>>);

impl BatchObserver for Sizes {
    fn queue_depth(&self, _: usize) {}
    fn batch(&self, size: usize, _: &[Duration]) {
        self.0.lock().unwrap().push(size);
    }
}

/// Requests waiting together batch only with others of their beam width: a
/// k = 100 request runs alone, the three k = 10 requests together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_batch_only_with_their_beam_width() {
    let (model, catalog) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    let sizes = Arc::new(Sizes::default());
    let opts = EngineOptions {
        batch: BatchOptions { max_wait: Duration::from_millis(300), beam: 10, ..Default::default() },
        ..Default::default()
    };
    let e = Engine::new(catalog, opts, sizes.clone()).unwrap();
    e.install(model, "embedded".into()).unwrap();
    sizes.0.lock().unwrap().clear(); // the smoke generation does not go through the queue, but be sure
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    // a long deadline: on a loaded machine a beam-100 generation may pass the default 500 ms
    let slow = |k| RecRequest { timeout_ms: Some(60_000), ..req(&h, k, Strategy::Generative) };
    let (r100, r10, r5) = (slow(100), slow(10), slow(5));
    let (wide, a, b, c) = tokio::join!(e.recommend(&r100), e.recommend(&r10), e.recommend(&r10), e.recommend(&r5));
    assert_eq!(wide.unwrap().items.len(), 100);
    for r in [a, b, c] {
        assert!(r.unwrap().fallback.is_none());
    }
    let mut got = sizes.0.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec![1, 3]);
}

/// Without a sentence encoder a search matches title words only, says so,
/// and the model ranks those matches; without a model the text ranking
/// answers (fallback `no_model`); without history, plain search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_without_encoder_matches_title_words() {
    let e = engine(true, EngineOptions::default());
    let cat = e.catalog();
    let h = first_ids(&e, 3);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let q = RecRequest { query: Some("serum".into()), ..req(&h, 10, Strategy::Auto) };
    let a = e.recommend(&q).await.unwrap();
    assert_eq!(a.items.len(), 10);
    assert!(a.items.iter().all(|i| i.source == ItemSource::Search && !h.contains(&i.item_id.as_str())));
    let title = |id: &str| cat.catalog.title(cat.catalog.index_of(id).unwrap()).to_string();
    assert!(a.items.iter().all(|i| title(&i.item_id).contains("serum")), "{:?}", ids(&a));
    assert!(a.note.as_deref().is_some_and(|n| n.contains("title words")), "{:?}", a.note);
    assert!(a.tokens > 0 && a.fallback.is_none());
    let plain = e.recommend(&RecRequest { history: Vec::new(), ..q.clone() }).await.unwrap();
    assert_eq!(plain.items.len(), 10);
    assert_eq!(plain.tokens, 0);
    let none = engine(false, EngineOptions::default());
    let t = none.recommend(&q).await.unwrap();
    assert_eq!((t.items.len(), t.fallback), (10, Some(FallbackReason::NoModel)));
}

/// Exploration's items come from first-level codes none of the history's
/// items have, and take `round(share x k)` of the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explored_items_come_from_intents_the_history_lacks() {
    let e = engine(true, EngineOptions::default());
    let cat = e.catalog();
    let h = first_ids(&e, 4);
    let h: Vec<&str> = h.iter().map(String::as_str).collect();
    let seen: std::collections::HashSet<u32> =
        h.iter().map(|id| cat.catalog.sid(cat.catalog.index_of(id).unwrap())[0]).collect();
    let a = e.recommend(&RecRequest { explore: 0.4, ..req(&h, 10, Strategy::Auto) }).await.unwrap();
    assert_eq!(a.items.len(), 10);
    let explored: Vec<&RecItem> = a.items.iter().filter(|i| i.source == ItemSource::Explore).collect();
    assert_eq!(explored.len(), 4);
    assert!(explored.iter().all(|i| !seen.contains(&i.semantic_id[0])));
    assert!(a.items[..6].iter().all(|i| i.source == ItemSource::Generative));
}

/// An installed ensemble answers with the search over its members' mean
/// log-probability (the library's `generate_ensemble`), which differs from
/// its lead's own answers; `GET /admin/models` counts its members, and its
/// version is neither member's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_serves_the_search_over_its_members_mean() {
    use crate::generate::{generate, generate_ensemble, GenRequest, Scoring};
    let e = engine(false, EngineOptions::default());
    let (a, _) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
    let b = crate::model::demo::variant_as(&candle_core::Device::Cpu, candle_core::DType::F32, 0.5).unwrap();
    let ens = crate::model::Ensemble::new(vec![a.clone(), b.clone()]).unwrap();
    let info = e.install(ens, "two".into()).unwrap();
    assert_eq!(info.members, 2);
    assert!(info.version != a.fingerprint && info.version != b.fingerprint);
    let cat = e.catalog();
    let beam = EngineOptions::default().batch.beam;
    let mut differ_from_lead = 0;
    for start in 0..8u32 {
        let hist: Vec<u32> = (0..3).map(|i| (start * 37 + i * 11) % cat.catalog.len() as u32).collect();
        let names: Vec<String> = hist.iter().map(|&i| cat.catalog.item_id(i).to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let served = e.recommend(&req(&names, 10, Strategy::Generative)).await.unwrap();
        let q =
            GenRequest { history: hist.clone(), k: 10, exclude: hist.iter().copied().collect(), ..Default::default() };
        let want = generate_ensemble(&[&a, &b], &cat.catalog, std::slice::from_ref(&q), beam, Scoring::Model).unwrap();
        let want: Vec<String> = want.hits[0].iter().map(|h| cat.catalog.item_id(h.item).to_string()).collect();
        assert_eq!(ids(&served), want, "history {names:?}");
        let lead = generate(&a, &cat.catalog, &[q], beam).unwrap();
        let lead: Vec<String> = lead.hits[0].iter().map(|h| cat.catalog.item_id(h.item).to_string()).collect();
        differ_from_lead += usize::from(lead != want);
    }
    assert!(
        differ_from_lead > 0,
        "the perturbed member never changed an answer: the test cannot tell the mean from the lead"
    );
    // members of another layout are refused
    let mut other = b.clone();
    other.sidecar.max_history_items += 1;
    assert!(crate::model::Ensemble::new(vec![a, other]).is_err());
}

/// A full disk: an edit whose record cannot be written is refused with the
/// NoSpace kind (507), leaves nothing behind (the half-written frame is cut
/// off, so the log still reads), serving goes on, and edits succeed again
/// once there is room; after a restart every acknowledged edit is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_edits_without_losing_or_tearing_anything() {
    let (dir, cat, store) = random_store("disk-full", 300);
    let log = store.log.path().to_path_buf();
    let e = Engine::with_store(cat, edits::EditStore::Durable(store), EngineOptions::default(), Arc::new(NoObserver))
        .unwrap();
    let base = e.catalog().catalog.clone();
    let new = |id: &str, from: u32| edits::ItemInput {
        id: id.into(),
        title: id.into(),
        text: None,
        embedding: Some(base.embedding(from).iter().map(|x| x * 0.9 + 0.01).collect()),
        semantic_id: None,
        expires_at_ms: None,
    };
    e.upsert_item(new("before", 1)).unwrap();
    crate::catalog::editlog::disk_full::next(&log, 1);
    let Err(refused) = e.upsert_item(new("refused", 2)) else { panic!("the disk is full: the upsert must fail") };
    assert_eq!(refused.kind(), crate::error::ErrorKind::NoSpace, "{refused}");
    assert!(e.catalog().catalog.index_of("refused").is_none(), "nothing of it is served");
    assert!(e
        .recommend(&req(&first_ids(&e, 3).iter().map(String::as_str).collect::<Vec<_>>(), 5, Strategy::Ann))
        .await
        .is_ok());
    e.upsert_item(new("after", 3)).unwrap();
    drop(e);
    let (again, _) = crate::catalog::dir::open_read_only(&dir).unwrap();
    assert!(again.index_of("before").is_some() && again.index_of("after").is_some());
    assert!(again.index_of("refused").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
