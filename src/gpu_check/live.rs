//! Part 1d of `genrec gpu-check`: the beam step and the search on a live
//! catalog. Random small catalogs with items added, replaced and removed
//! above their base trie, requests with first-level priors, the new-item rule
//! and trending weights: the kernel's step against its CPU port (which the
//! unit tests hold bit for bit to the CPU search's step), and a checkpoint's
//! search on an edited copy of its catalog, on the device against the CPU.
//! The world generators here also serve those unit tests
//! (`generate::kernel::live_tests`).

use std::collections::HashSet;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::steps::{compare_steps, StepRunner};
use super::CheckError;
use crate::catalog::edit::NewItem;
use crate::catalog::engagement::{Engagement, Event, EventKind};
use crate::catalog::trie::{Trie, NONE};
use crate::catalog::{catalog_fingerprint, Catalog, Manifest, TrieView};
use crate::generate::kernel::contract::BeamKernel;
use crate::generate::kernel::mirror::{beam_step_mirror, StepInput, StepLive};
use crate::generate::kernel::patch::PatchTable;
use crate::generate::kernel::priors::{LevelPriors, TrendTables};
use crate::generate::kernel::LevelFilters;
use crate::generate::trending::Trending;
use crate::generate::{generate, GenRequest, StepShape};
use crate::model::Model;

/// The clock of the worlds' events.
pub const T0: u64 = 10_000_000;

/// A random catalog of up to 40 items over 3 levels of 2-6 codes, with a
/// random dense depth and up to 24 random live edits above its base.
pub fn live_catalog(rng: &mut ChaCha8Rng, case: u64) -> (Catalog, Vec<u32>) {
    let sizes: Vec<u32> = (0..3).map(|_| rng.random_range(2..7)).collect();
    let total: u32 = sizes.iter().product();
    let n = rng.random_range(3..(total as usize).min(40));
    let sids = super::synthetic::random_sids(n, &sizes, case);
    let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let manifest = Manifest::new("live", n, sizes.clone(), 2, "none", case, catalog_fingerprint(&ids, &sids));
    let emb = (0..n * 2).map(|i| (i as f32).sin()).collect();
    let mut cat = Catalog::new(manifest, ids.clone(), ids, sids.clone(), emb, Vec::new()).expect("a valid catalog");
    let dense = Trie::build_with_dense(&sids, 3, &sizes, (case % 4) as usize).expect("distinct semantic IDs");
    cat.replace_trie(dense);
    for e in 0..rng.random_range(0..25u64) {
        if rng.random_bool(0.35) {
            let i = rng.random_range(0..cat.len() as u32);
            let id = cat.item_id(i).to_string();
            let _ = cat.remove(&id, e + 1);
            continue;
        }
        // a new item, or an existing one (served or not) at a new ID
        let id = if rng.random_bool(0.3) {
            cat.item_id(rng.random_range(0..cat.len() as u32)).to_string()
        } else {
            format!("new-{e}")
        };
        let sid: Vec<u32> = sizes.iter().map(|&s| rng.random_range(0..s)).collect();
        let item =
            NewItem { id, title: "t".into(), embedding: vec![0.6, 0.8], semantic_id: Some(sid), expires_at_ms: None };
        let _ = cat.upsert(item, e + 1); // a taken ID is refused
    }
    (cat, sizes)
}

/// Up to `n` random events on the catalog's items in the 30 s before [`T0`].
pub fn random_events(rng: &mut ChaCha8Rng, cat: &Catalog, n: usize) -> Arc<Engagement> {
    let rates = Arc::new(Engagement::new(cat.trie().codebook_sizes(), 60_000, T0));
    let events: Vec<Event> = (0..rng.random_range(0..=n))
        .map(|_| Event {
            item: rng.random_range(0..cat.len() as u32),
            kind: EventKind::ALL[rng.random_range(0..4)],
            ts_ms: T0 - rng.random_range(0..30_000),
            value: 1.0,
        })
        .collect();
    rates.add(&events, |i| cat.sid(i), T0);
    rates
}

/// Random requests: exclusions, intents, allowed sets, first-level priors,
/// the new-item rule and trending weights over `rates` at two moments.
pub fn live_requests(rng: &mut ChaCha8Rng, cat: &Catalog, rates: &Arc<Engagement>) -> Vec<GenRequest> {
    let n = cat.len() as u32;
    let first = cat.trie().codebook_sizes()[0];
    (0..rng.random_range(1..5))
        .map(|_| GenRequest {
            k: 1,
            exclude: (0..n).filter(|_| rng.random_bool(0.15)).collect::<HashSet<u32>>(),
            within: if rng.random_bool(0.3) { vec![rng.random_range(0..first)] } else { Vec::new() },
            allowed: rng.random_bool(0.2).then(|| (0..n).filter(|_| rng.random_bool(0.5)).collect()),
            first_level_prior: if rng.random_bool(0.5) {
                (0..first)
                    .map(|_| if rng.random_bool(0.1) { f32::NEG_INFINITY } else { rng.random_range(-2.0..2.0) })
                    .collect()
            } else {
                Vec::new()
            },
            new_items_as_siblings: rng.random_bool(0.6),
            trending: rng.random_bool(0.6).then(|| Trending {
                weight: [0.0, 0.5, 1.0, 3.0, -1.0][rng.random_range(0..5)],
                rates: rates.clone(),
                now_ms: T0 + [0, 0, 7_000][rng.random_range(0..3)],
            }),
            ..Default::default()
        })
        .collect()
}

/// A beam at a random node of `depth` (random children down from the root)
/// with its codes; a dead beam (`NONE`) with any codes.
pub fn random_beam(rng: &mut ChaCha8Rng, view: &TrieView, depth: usize) -> (u32, Vec<u32>) {
    let mut node = 0u32;
    let mut codes = Vec::new();
    for _ in 0..depth {
        let kids: Vec<(u32, u32)> = view.children(node).collect();
        if kids.is_empty() || rng.random_bool(0.03) {
            return (NONE, vec![0; depth]);
        }
        let (c, n) = kids[rng.random_range(0..kids.len())];
        codes.push(c);
        node = n;
    }
    (node, codes)
}

/// Part 1d, the step: 200 random live catalogs, every level, with and
/// without the model's normaliser, both selections; the device's step
/// against the CPU port's (scores within 1e-4, as in part 1a).
pub(super) fn check_live_steps(run: &mut dyn StepRunner, seed: u64) -> Result<Value, CheckError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x11fe);
    let (mut cases, mut worst, mut patched) = (0, 0f32, 0);
    for case in 0..200u64 {
        let (cat, sizes) = live_catalog(&mut rng, case);
        let rates = random_events(&mut rng, &cat, 60);
        let reqs = live_requests(&mut rng, &cat, &rates);
        let view = cat.trie();
        let mut table = PatchTable::default();
        table.sync(&view);
        let trend = TrendTables::new(&cat, &view, &reqs);
        let requests = reqs.len();
        for (depth, &size) in sizes.iter().enumerate() {
            let codes = size as usize;
            let beams_in = if depth == 0 { 1 } else { rng.random_range(1..6) };
            let beams_out = rng.random_range(1..10);
            let n = requests * beams_in;
            let nodes: Vec<u32> = (0..n).map(|_| random_beam(&mut rng, &view, depth).0).collect();
            patched += nodes.iter().filter(|&&b| table.children(b).is_some()).count();
            let scores: Vec<f32> = (0..n).map(|_| -rng.random::<f32>() * 3.0).collect();
            let (ld, col0) = (codes + 4, 2);
            let logits: Vec<f32> = (0..n * ld).map(|_| rng.random_range(-4.0..4.0)).collect();
            let norm: Vec<f32> = (0..n).map(|_| 4.0 + rng.random::<f32>()).collect();
            let filters = LevelFilters::new(&cat, &reqs, depth);
            let priors = LevelPriors::new(&cat, &reqs, depth)?;
            let live = StepLive { patch: Some(&table), priors: &priors, trend: &trend };
            let shape = StepShape { requests, beams_in, beams_out, codes };
            for nm in [None, Some(&norm[..])] {
                let input = StepInput { logits: &logits, ld, col0, norm: nm, scores: &scores, nodes: &nodes };
                let a = view.base().arrays();
                let want = beam_step_mirror(&a, depth, shape, &input, &filters, live, 0, 0, BeamKernel::Radix)
                    .map_err(CheckError::Other)?
                    .step;
                for selection in [BeamKernel::Radix, BeamKernel::POOL] {
                    let (got, _) = run.run(view.base(), depth, shape, &input, &filters, live, 0, selection)?;
                    let d = compare_steps(&want, &got, requests, beams_out, 1e-4).map_err(|e| {
                        CheckError::Other(format!("live beam step ({selection:?}) case {case} depth {depth}: {e}"))
                    })?;
                    worst = worst.max(d);
                    cases += 1;
                }
            }
        }
    }
    Ok(json!({"cases": cases, "patched_beams": patched, "max_score_diff": worst, "ok": true}))
}

/// An edited copy of `catalog`: every 40th item removed and, for every 50th,
/// a new item beside it (its prefix, the lowest free last code, its
/// embedding), indexed rows unchanged so the new ones count as new.
pub fn edited_copy(catalog: &Catalog) -> Result<Catalog, CheckError> {
    let mut cat = catalog.clone();
    let n = cat.len() as u32;
    let mut edit = 0u64;
    for i in (0..n).step_by(40) {
        edit += 1;
        let id = cat.item_id(i).to_string();
        cat.remove(&id, edit)?;
    }
    let levels = cat.levels();
    let last = cat.trie().codebook_sizes()[levels - 1];
    for i in (7..n).step_by(50) {
        let prefix = cat.sid(i)[..levels - 1].to_vec();
        let view = cat.trie();
        let Some(code) = view.free_code(view.walk(&prefix), last) else { continue };
        let mut sid = prefix;
        sid.push(code);
        let mut embedding = cat.embedding(i);
        if embedding.iter().all(|&x| x == 0.0) {
            embedding[0] = 1.0; // a synthetic catalog's zero embedding
        }
        edit += 1;
        let item = NewItem {
            id: format!("live-{i}"),
            title: "live".into(),
            embedding,
            semantic_id: Some(sid),
            expires_at_ms: None,
        };
        cat.upsert(item, edit)?;
    }
    Ok(cat)
}

/// Part 1d, the search: part 1b's requests on [`edited_copy`] of the
/// catalog, soft-steered (a first-level prior), with the new-item rule and a
/// trending weight over events on a few hundred items; the device's search
/// against the CPU's, list for list.
pub(super) fn check_live_e2e(
    dev_model: &Model,
    cpu_model: &Model,
    catalog: &Catalog,
    reqs: &[GenRequest],
    seed: u64,
) -> Result<Value, CheckError> {
    let cat = edited_copy(catalog)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xe2e);
    let rates = random_events(&mut rng, &cat, 2_000);
    let first = cat.trie().codebook_sizes()[0];
    let reqs: Vec<GenRequest> = reqs
        .iter()
        .map(|q| GenRequest {
            first_level_prior: (0..first).map(|_| rng.random_range(-1.0..1.0)).collect(),
            new_items_as_siblings: true,
            trending: Some(Trending { weight: 1.0, rates: rates.clone(), now_ms: T0 }),
            ..q.clone()
        })
        .collect();
    let a = generate(dev_model, &cat, &reqs, 64)?;
    let b = generate(cpu_model, &cat, &reqs, 64)?;
    let (same, worst) = super::compare(&a, &b);
    let new_items = b.hits.iter().flatten().filter(|h| h.item as usize >= catalog.len()).count();
    Ok(json!({
        "requests": reqs.len(), "identical_lists": same, "max_score_diff": worst,
        "items_added": cat.len() - catalog.len(), "overlay_nodes_patched": !cat.trie().is_pristine(),
        "new_items_in_cpu_lists": new_items, "tokens_device": a.tokens, "tokens_cpu": b.tokens,
    }))
}
