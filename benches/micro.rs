//! Micro-benchmarks of the two hot inner pieces of generation: a trie lookup
//! (semantic ID → item) and one CPU beam step (restrict to valid children,
//! normalise, top-B across beams), on a synthetic catalog of Beauty's size.
//! Each is timed over many rounds after a warm-up; the table gives the
//! minimum, median and maximum time per call.
//!
//! cargo bench --bench micro

use std::hint::black_box;
use std::time::{Duration, Instant};

use genrec::catalog::Trie;
use genrec::generate::{beam_step, StepShape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random unique semantic IDs: `n` items over three levels of `codes` codes
/// and a collision level of 4.
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

/// Times `f` in rounds of `per_round` calls for about `budget` after a
/// warm-up; prints min / median / max per call.
fn time(name: &str, per_round: u32, budget: Duration, mut f: impl FnMut()) {
    for _ in 0..per_round {
        f();
    }
    let mut rounds = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || rounds.len() < 11 {
        let t = Instant::now();
        for _ in 0..per_round {
            f();
        }
        rounds.push(t.elapsed().as_secs_f64() / per_round as f64);
    }
    rounds.sort_by(f64::total_cmp);
    let us = |s: f64| s * 1e6;
    println!(
        "{name:<44} {:>10.2} {:>10.2} {:>10.2}   ({} rounds)",
        us(rounds[0]),
        us(rounds[rounds.len() / 2]),
        us(rounds[rounds.len() - 1]),
        rounds.len()
    );
}

fn main() {
    let budget = Duration::from_secs(2);
    println!("{:<44} {:>10} {:>10} {:>10}", "µs per call", "min", "median", "max");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (trie, sids) = random_trie(12_101, 256, &mut rng);
    let queries: Vec<&[u32]> = (0..1024).map(|_| &sids[rng.random_range(0..12_101) * 4..][..4]).collect();
    time("trie lookup (12,101 items), 1,024 ids", 10, budget, || {
        black_box(queries.iter().filter_map(|q| trie.lookup(black_box(q))).count());
    });

    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (trie, _) = random_trie(12_101, 256, &mut rng);
    for (requests, beams) in [(1, 20), (32, 20), (1, 100)] {
        // beams sitting on random depth-1 nodes, scoring the 256 level-2 codes
        let ls = trie.arrays().level_start;
        let depth1: Vec<u32> = (0..requests * beams).map(|_| rng.random_range(ls[1]..ls[2])).collect();
        let logits: Vec<f32> = (0..requests * beams * 256).map(|_| rng.random_range(-8.0..0.0)).collect();
        let scores: Vec<f32> = (0..requests * beams).map(|_| rng.random_range(-4.0..0.0)).collect();
        let shape = StepShape { requests, beams_in: beams, beams_out: beams, codes: 256 };
        let view = genrec::catalog::TrieView::new(&trie, None);
        time(&format!("beam step, level 2: {requests} req x {beams} beams"), 20, budget, || {
            black_box(beam_step(&view, shape, &logits, &scores, &depth1, None, |_, _| true));
        });
    }
}
