//! Criterion micro-benchmarks of the two hot inner pieces of generation: a
//! trie lookup (semantic ID → item) and one CPU beam step (restrict to valid
//! children, normalise, top-B across beams), on the embedded demo catalog and
//! on a synthetic catalog of Beauty's size.
//!
//! cargo bench --bench micro

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use genrec::catalog::Trie;
use genrec::generate::{beam_step, StepShape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random unique semantic IDs: `n` items over `levels` levels of `codes` codes.
fn random_trie(n: usize, codes: u32, rng: &mut ChaCha8Rng) -> (Trie, Vec<u32>) {
    let mut seen = std::collections::HashSet::new();
    let mut sids = Vec::with_capacity(n * 4);
    while seen.len() < n {
        let sid = [
            rng.random_range(0..codes),
            rng.random_range(0..codes),
            rng.random_range(0..codes),
            rng.random_range(0..4),
        ];
        if seen.insert(sid) {
            sids.extend_from_slice(&sid);
        }
    }
    (Trie::build(&sids, 4, &[codes, codes, codes, 4]).expect("unique ids"), sids)
}

fn trie_lookup(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (trie, sids) = random_trie(12_101, 256, &mut rng);
    let queries: Vec<&[u32]> = (0..1024).map(|_| &sids[rng.random_range(0..12_101) * 4..][..4]).collect();
    c.bench_function("trie lookup (12,101 items, 1,024 ids)", |b| {
        b.iter(|| queries.iter().filter_map(|q| trie.lookup(std::hint::black_box(q))).count())
    });
}

fn beam_step_bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (trie, _) = random_trie(12_101, 256, &mut rng);
    let mut g = c.benchmark_group("beam step, level 2 (12,101 items)");
    for (requests, beams) in [(1, 20), (32, 20), (1, 100)] {
        // beams sitting on random depth-1 nodes, scoring the 256 level-2 codes
        let ls = trie.arrays().level_start;
        let depth1: Vec<u32> = (0..requests * beams).map(|_| rng.random_range(ls[1]..ls[2])).collect();
        let logits: Vec<f32> = (0..requests * beams * 256).map(|_| rng.random_range(-8.0..0.0)).collect();
        let scores: Vec<f32> = (0..requests * beams).map(|_| rng.random_range(-4.0..0.0)).collect();
        let shape = StepShape { requests, beams_in: beams, beams_out: beams, codes: 256 };
        g.bench_with_input(BenchmarkId::from_parameter(format!("{requests} req x {beams} beams")), &(), |b, _| {
            b.iter(|| {
                beam_step(
                    &genrec::catalog::TrieView::new(&trie, None),
                    shape,
                    &logits,
                    &scores,
                    &depth1,
                    None,
                    |_, _| true,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, trie_lookup, beam_step_bench);
criterion_main!(benches);
