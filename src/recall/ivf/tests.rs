//! The IVF index against brute force, through compactions, live edits and
//! concurrent readers.

use super::*;
use crate::catalog::edit::NewItem;

fn catalog() -> Catalog {
    crate::model::demo::load(&candle_core::Device::Cpu).expect("embedded model").1
}

/// Exact top `k` by brute force over the served items.
fn exact(cat: &Catalog, q: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(u32, f32)> =
        (0..cat.len() as u32).filter(|&i| cat.is_served(i)).map(|i| (i, cat.embedding_dot(i, q))).collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.into_iter().take(k).map(|h| h.0).collect()
}

/// Recall@10 over 100 histories made as the calibration makes them (but
/// with another seed): five items, each from the first one's top cell
/// or, half of the time, from anywhere.
fn recall(cat: &Catalog, ivf: &Ivf, probes: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let m = ivf.items.len();
    let (mut found, mut total) = (0, 0);
    for _ in 0..100 {
        let seed = rng.random_range(0..m);
        let cell = (ivf.offsets.partition_point(|&o| o as usize <= seed) - 1) as u32;
        let t = ivf.q.top_of_cell(cell);
        let (lo, hi) =
            (ivf.offsets[ivf.q.top_cells[t] as usize] as usize, ivf.offsets[ivf.q.top_cells[t + 1] as usize] as usize);
        let history: Vec<u32> = (0..5)
            .map(|_| ivf.items[if rng.random_bool(0.5) { rng.random_range(lo..hi) } else { rng.random_range(0..m) }])
            .collect();
        let q = super::super::Ann::user_vector(cat, &history);
        let want = exact(cat, &q, 10);
        let got: Vec<u32> = ivf.nearest_probing(cat, &q, 10, probes, |_| true).iter().map(|h| h.0).collect();
        found += want.iter().filter(|w| got.contains(w)).count();
        total += want.len();
    }
    found as f64 / total as f64
}

/// Every cell probed is brute force; the calibrated count is near its
/// target on these histories; fewer cells find fewer.
#[test]
fn all_cells_are_exact_and_the_calibrated_count_is_near_its_target() {
    let cat = catalog();
    let ivf = Ivf::open(&cat, 0.9).unwrap();
    assert!(!ivf.is_mapped());
    assert_eq!(ivf.base_len(), cat.len());
    assert_eq!(recall(&cat, &ivf, ivf.cells()), 1.0);
    let r = recall(&cat, &ivf, ivf.probes());
    assert!(
        r >= 0.85 && ivf.curve().iter().any(|c| c.0 == ivf.probes() && c.1 >= 0.9),
        "recall {r} at {} of {} cells, curve {:?}",
        ivf.probes(),
        ivf.cells(),
        ivf.curve()
    );
    assert!(ivf.probes() < ivf.cells(), "{:?}", ivf.curve());
    assert!(recall(&cat, &ivf, 1) < r);
}

/// A version written with its index maps it, answers as the in-memory
/// one does, and a compaction keeps the quantiser and moves the edited
/// items.
#[test]
fn a_written_index_is_mapped_and_carried_through_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog();
    let v1 = dir.path().join("v1");
    std::fs::create_dir_all(&v1).unwrap();
    crate::catalog::dir::write_version(&cat, &v1, 1, None).unwrap();
    write_version(&cat, None, &v1).unwrap();
    let base = crate::catalog::Base::map(&v1).unwrap();
    let mut on_disk = Catalog::from_base(base);
    let ivf = Ivf::open(&on_disk, 0.95).unwrap();
    assert!(ivf.is_mapped());
    assert_eq!(recall(&on_disk, &ivf, ivf.cells()), 1.0);
    // edits: one item moved to another's vector, one removed, one new
    let (moved, gone) = (on_disk.item_id(3).to_string(), on_disk.item_id(5).to_string());
    let target = on_disk.embedding(400);
    let up = |id: &str, e: Vec<f32>| NewItem {
        id: id.into(),
        title: "x".into(),
        embedding: e,
        semantic_id: None,
        expires_at_ms: None,
    };
    on_disk.upsert(up(&moved, target.clone()), 1).unwrap();
    on_disk.remove(&gone, 2).unwrap();
    on_disk.upsert(up("brand-new", on_disk.embedding(401)), 3).unwrap();
    let v2 = dir.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    crate::catalog::dir::write_version(&on_disk, &v2, 2, None).unwrap();
    write_version(&on_disk, Some(&v1), &v2).unwrap();
    let next = Catalog::from_base(crate::catalog::Base::map(&v2).unwrap());
    let carried = Ivf::open(&next, 0.95).unwrap();
    assert_eq!(carried.q, ivf.q, "the quantiser is kept");
    assert_eq!(carried.base_len(), ivf.base_len(), "one removed, one added");
    assert_eq!(recall(&next, &carried, carried.cells()), 1.0);
    let hits = carried.nearest_probing(&next, &target, 3, carried.cells(), |_| true);
    let three = next.index_of(&moved).unwrap();
    assert!(hits.iter().any(|h| h.0 == three), "{hits:?}");
    assert!(next.index_of("brand-new").is_some_and(|i| carried.items.contains(&i)));
    assert!(!carried.items.contains(&next.index_of(&gone).unwrap_or(u32::MAX)));
}

/// A version saved without an index gets one written in place (learned),
/// then calibrated again keeping its lists; a server opening it maps it.
#[test]
fn an_index_is_written_into_a_version_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog();
    cat.save(dir.path()).unwrap();
    let version = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    assert!(!version.join(IVF_MANIFEST).exists(), "Catalog::save writes no index");
    let first = rewrite_in_place(&version, false).unwrap();
    assert!(!first.kept_lists && first.probes_before.is_none());
    assert_eq!(first.items, cat.len());
    let items = std::fs::read(version.join(ITEMS_FILE)).unwrap();
    let again = rewrite_in_place(&version, false).unwrap();
    assert!(again.kept_lists);
    assert_eq!((again.probes_before, again.cells), (Some(first.probes_after), first.cells));
    assert_eq!(std::fs::read(version.join(ITEMS_FILE)).unwrap(), items);
    let relearned = rewrite_in_place(&version, true).unwrap();
    assert!(!relearned.kept_lists && relearned.cells == first.cells, "the same data learns the same cells");
    let names: Vec<String> =
        std::fs::read_dir(&version).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".ivf.tmp")), "{names:?}");
    let opened = Catalog::load(dir.path()).unwrap();
    assert!(Ivf::open(&opened, 0.95).unwrap().is_mapped());
}

/// Live edits are found by their new vector at once, never by the old
/// one, and a removed item is gone.
#[test]
fn follows_live_edits() {
    let mut cat = catalog();
    let ivf = Ivf::open(&cat, 0.95).unwrap();
    let all = ivf.cells();
    let q = cat.embedding(7);
    assert_eq!(ivf.nearest_probing(&cat, &q, 1, all, |_| true)[0].0, 7);
    let id = cat.item_id(7).to_string();
    let other = cat.embedding(100);
    let placed = cat
        .upsert(NewItem { id, title: "x".into(), embedding: other.clone(), semantic_id: None, expires_at_ms: None }, 1)
        .unwrap();
    ivf.add(&[(placed.ann_key, placed.embedding.clone())]).unwrap();
    let hits = ivf.nearest_probing(&cat, &other, 2, all, |_| true);
    assert!(hits.iter().any(|h| h.0 == 7 && h.1 > 0.99), "{hits:?}");
    let old = ivf.nearest_probing(&cat, &q, 3, all, |_| true);
    assert!(old.iter().all(|h| h.0 != 7 || h.1 < 0.99), "the old vector is not scored: {old:?}");
    let gone = cat.item_id(100).to_string();
    cat.remove(&gone, 2).unwrap();
    assert!(ivf.nearest_probing(&cat, &other, 5, all, |_| true).iter().all(|h| h.0 != 100));
}

/// The scan split over two cores answers as the one-core scan does, and
/// the bounded top-k keeps what a full sort keeps (ties to the smaller
/// item).
#[test]
fn a_split_scan_and_the_bounded_top_k_answer_as_a_full_sort() {
    let cat = catalog();
    let mut ivf = Ivf::open(&cat, 0.95).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for k in [1, 10, 300] {
        let q = cat.embedding(rng.random_range(0..cat.len() as u32));
        ivf.parallel_from = usize::MAX;
        let one = ivf.nearest_probing(&cat, &q, k, 40, |i| i % 7 != 0);
        ivf.parallel_from = 0;
        let two = ivf.nearest_probing(&cat, &q, k, 40, |i| i % 7 != 0);
        assert_eq!(one, two, "k {k}");
    }
    for k in [1, 3, 64, 1000] {
        let scores: Vec<(u32, f32)> = (0..5_000u32).map(|i| (i, (rng.random_range(0..400) as f32) / 7.0)).collect();
        let mut best = TopK::new(k);
        for &(i, s) in &scores {
            best.push(i, s);
        }
        let mut want = scores.clone();
        want.sort_by(TopK::by_score);
        want.truncate(k);
        assert_eq!(best.into_sorted(), want, "k {k}");
    }
}

/// Readers racing a writer that adds vectors see every finished add and
/// never fail.
#[test]
fn concurrent_adds_and_searches() {
    let cat = catalog();
    let ivf = std::sync::Arc::new(Ivf::open(&cat, 0.95).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let (ivf, cat, stop) = (ivf.clone(), cat.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let q = cat.embedding((t * 31 + n) % cat.len() as u32);
                    assert!(!ivf.nearest(&cat, &q, 10, |_| true).is_empty());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let dim = cat.manifest().embedding_dim;
    for round in 0..200u64 {
        let v: Vec<(u64, Vec<f32>)> =
            (0..50).map(|j| ((round * 50 + j) << 32, cat.embedding((j as u32 * 7) % cat.len() as u32))).collect();
        ivf.add(&v).unwrap();
        assert_eq!(v[0].1.len(), dim);
    }
    stop.store(true, Ordering::Relaxed);
    let searches: u32 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(searches > 0);
    assert_eq!(ivf.added_len(), 200 * 50);
    assert_eq!(ivf.added.read().iter().map(Vec::len).sum::<usize>(), 200 * 50);
}
