//! How `genrec train` cuts an epoch into work: length-bucketed batches, each
//! batch dealt out to the data-parallel workers, and a worker's share of long
//! windows cut into micro-batches whose gradients are summed, so that memory
//! stays bounded at `--max-history 1000`.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::sequences::TrainSeq;

/// Batches for one epoch: sequences shuffled, then sorted by length within
/// pools of 32 batches, cut into batches, and the batches shuffled. Similar
/// lengths in a batch cut the padding that the model would compute for nothing
/// (most users are far shorter than the longest window), while every epoch
/// still sees a different order.
pub(super) fn length_bucketed_batches(seqs: &[TrainSeq], batch: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::with_capacity(seqs.len().div_ceil(batch));
    for pool in order.chunks_mut(batch * 32) {
        pool.sort_by_key(|&i| seqs[i].tokens.len());
        batches.extend(pool.chunks(batch).map(<[usize]>::to_vec));
    }
    batches.shuffle(rng);
    batches
}

/// One worker's part of a batch and the summed weight of its targets.
pub(super) struct Share {
    pub rows: Vec<usize>,
    pub targets: f64,
}

/// Splits a batch into `workers` parts with about equal token counts (a
/// batch is sorted by length, so rows are dealt out round-robin).
pub(super) fn split_batch(chunk: &[usize], seqs: &[TrainSeq], workers: usize) -> Vec<Share> {
    let w = workers.clamp(1, chunk.len().max(1));
    let mut shares: Vec<Share> = (0..w).map(|_| Share { rows: Vec::new(), targets: 0.0 }).collect();
    for (j, &i) in chunk.iter().enumerate() {
        let s = &mut shares[j % w];
        s.rows.push(i);
        s.targets += seqs[i].weights.iter().skip(1).map(|&w| w as f64).sum::<f64>();
    }
    shares.retain(|s| s.targets > 0.0);
    shares
}

/// Most `rows x time²` in one forward and backward pass of a training worker
/// (its attention scores and their gradients grow with it): a share of long
/// windows (`--max-history 1000`: up to 4,001 tokens) is run in micro-batches
/// under it and their gradients summed, where one pass over a batch of 64
/// windows of 800 tokens took over 24 GB (2^24: 22.5 GB, 2^22: 10.3 GB
/// peak RSS with two workers, `benches/results/long_history.md`). Today's
/// 20-item windows (81 tokens) never reach it.
const MICRO_BATCH_SCORES: usize = 1 << 22;

/// `share` in consecutive micro-batches of at most [`MICRO_BATCH_SCORES`]
/// `rows x time²` each (at least one row each).
pub(super) fn micro_batches(share: &Share, seqs: &[TrainSeq]) -> Vec<Share> {
    let mut out: Vec<Share> = Vec::new();
    let mut longest = 0usize;
    for &i in &share.rows {
        let t = seqs[i].tokens.len();
        let targets: f64 = seqs[i].weights.iter().skip(1).map(|&w| w as f64).sum();
        let fits = out.last().is_some_and(|m| (m.rows.len() + 1) * longest.max(t).pow(2) <= MICRO_BATCH_SCORES);
        match out.last_mut() {
            Some(m) if fits => {
                m.rows.push(i);
                m.targets += targets;
                longest = longest.max(t);
            }
            _ => {
                out.push(Share { rows: vec![i], targets });
                longest = t;
            }
        }
    }
    out.retain(|m| m.targets > 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(tokens: usize) -> TrainSeq {
        TrainSeq { tokens: vec![1; tokens], weights: vec![1.0; tokens] }
    }

    /// Short windows stay one pass; long ones are cut under the budget, every
    /// row kept once and the targets' weight kept in sum.
    #[test]
    fn micro_batches_bound_rows_times_time_squared() {
        let short: Vec<TrainSeq> = (0..32).map(|_| seq(81)).collect();
        let share = Share { rows: (0..32).collect(), targets: 32.0 * 80.0 };
        let m = micro_batches(&share, &short);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].rows, share.rows);
        let long: Vec<TrainSeq> = (0..32).map(|i| seq(if i < 4 { 4001 } else { 800 })).collect();
        let share = Share { rows: (0..32).rev().collect(), targets: 0.0 };
        let m = micro_batches(&share, &long);
        assert!(m.len() > 1);
        for b in &m {
            let t = b.rows.iter().map(|&i| long[i].tokens.len()).max().unwrap();
            assert!(b.rows.len() == 1 || b.rows.len() * t * t <= MICRO_BATCH_SCORES, "{} rows of {t}", b.rows.len());
        }
        let rows: Vec<usize> = m.iter().flat_map(|b| b.rows.clone()).collect();
        assert_eq!(rows, share.rows);
        let targets: f64 = m.iter().map(|b| b.targets).sum();
        assert_eq!(targets, long.iter().map(|s| (s.tokens.len() - 1) as f64).sum::<f64>());
    }
}
