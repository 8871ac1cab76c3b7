//! The kernel's CPU port on a live catalog: a base trie with items added,
//! replaced and removed above it (read through [`super::patch::PatchTable`]),
//! first-level priors, new items scored as siblings and trending lifts (read
//! through [`super::priors`]), held to the CPU search's step (the priors
//! added by `beam.rs`, then [`crate::generate::step::beam_step`] on the
//! catalog's trie view), bit for bit.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::contract::BeamKernel;
use super::filters::LevelFilters;
use super::mirror::{beam_step_mirror, StepInput, StepLive};
use super::patch::PatchTable;
use super::priors::{LevelPriors, TrendTables};
use crate::generate::beam::{add_level_priors, LevelAt};
use crate::generate::step::{beam_step, StepShape};
use crate::generate::trending::TrendingPriors;
use crate::gpu_check::live::{live_catalog, live_requests, random_beam, random_events};

#[derive(Default, Debug)]
struct Seen {
    steps: usize,
    patched_beams: usize,
    sibling_steps: usize,
    lifted: usize,
    first_priors: usize,
}

/// ≥ 1,000 random live catalogs and prior mixes, each level, both
/// normalisations, every selection: the mirror's step is the CPU search's.
#[test]
fn mirror_on_live_catalogs_equals_the_cpu_search_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(37);
    let mut seen = Seen::default();
    for case in 0..1000u64 {
        let (cat, sizes) = live_catalog(&mut rng, case);
        let rates = random_events(&mut rng, &cat, 60);
        let reqs = live_requests(&mut rng, &cat, &rates);
        let view = cat.trie();
        let mut table = PatchTable::default();
        table.sync(&view);
        let trend = TrendTables::new(&cat, &view, &reqs);
        seen.lifted += trend.lift.iter().filter(|&&l| l != 0.0).count().min(1);
        let new_items = crate::generate::new_items::applies(&cat, &reqs);
        let requests = reqs.len();
        for (depth, &size) in sizes.iter().enumerate() {
            let codes = size as usize;
            let beams_in = if depth == 0 { 1 } else { rng.random_range(1..6) };
            let beams_out = rng.random_range(1..10);
            let n = requests * beams_in;
            let (nodes, prefixes): (Vec<u32>, Vec<Vec<u32>>) =
                (0..n).map(|_| random_beam(&mut rng, &view, depth)).unzip();
            seen.patched_beams += nodes.iter().filter(|&&b| table.children(b).is_some()).count();
            let scores: Vec<f32> = (0..n)
                .map(|_| if rng.random_bool(0.05) { f32::NEG_INFINITY } else { -rng.random::<f32>() * 3.0 })
                .collect();
            let (ld, col0) = (codes + 4, 2);
            let poisoned = case % 5 == 4;
            let logits: Vec<f32> = (0..n * ld)
                .map(|_| match rng.random_range(0..40) {
                    0 if poisoned => f32::NAN,
                    1 if poisoned => f32::INFINITY,
                    2 if poisoned => f32::NEG_INFINITY,
                    _ => (rng.random_range(-8..8) as f32) * 0.25,
                })
                .collect();
            let norm: Vec<f32> = (0..n).map(|_| 2.0 + rng.random::<f32>()).collect();
            let filters = LevelFilters::new(&cat, &reqs, depth);
            let priors = LevelPriors::new(&cat, &reqs, depth).unwrap();
            seen.sibling_steps += (!priors.siblings.is_empty()) as usize;
            seen.first_priors += (!priors.first.is_empty()) as usize;
            // the CPU search: priors added to the level's logits, then the step
            let mut level: Vec<f32> = (0..n).flat_map(|b| logits[b * ld + col0..][..codes].to_vec()).collect();
            let trending = TrendingPriors::new(&reqs).map(|t| t.with_prefixes(prefixes.clone()));
            let at = LevelAt { level: depth, codes, nodes: &nodes, beams_in };
            add_level_priors(&cat, &view, &reqs, at, &mut level, new_items, trending.as_ref()).unwrap();
            let shape = StepShape { requests, beams_in, beams_out, codes };
            let live = StepLive { patch: Some(&table), priors: &priors, trend: &trend };
            for nm in [None, Some(&norm[..])] {
                let want = beam_step(&view, shape, &level, &scores, &nodes, nm, |r, ch| filters.keep(r, ch));
                let input = StepInput { logits: &logits, ld, col0, norm: nm, scores: &scores, nodes: &nodes };
                for selection in [BeamKernel::Radix, BeamKernel::POOL, BeamKernel::Pool { capacity: 2 }] {
                    let got =
                        beam_step_mirror(&view.base().arrays(), depth, shape, &input, &filters, live, 0, 0, selection)
                            .unwrap()
                            .step;
                    let ctx = format!("case {case} depth {depth} norm {} {selection:?}", nm.is_some());
                    assert_eq!(got.parent, want.parent, "{ctx}");
                    assert_eq!(got.code, want.code, "{ctx}");
                    assert_eq!(got.node, want.node, "{ctx}");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got.score), bits(&want.score), "{ctx}");
                    seen.steps += 1;
                }
            }
        }
    }
    eprintln!("{seen:?}");
    // every part of the live path was exercised, often
    assert!(seen.patched_beams > 2000, "{seen:?}");
    assert!(seen.sibling_steps > 200, "{seen:?}");
    assert!(seen.lifted > 300, "{seen:?}");
    assert!(seen.first_priors > 300, "{seen:?}");
}
