//! The IVF index's calibration ([`super::ivf`]): how many cells a query must
//! probe for a target recall@10. 200 queries made as serving makes a user
//! vector (recency-weighted means of five items, each from the first item's
//! top cell or, half of the time, from anywhere) find their exact top 10
//! among all the items (a sample's neighbours lie farther out, in cells
//! that rank lower: at 10^8 a sample of 10^5 asked for 2.7 times the cells
//! needed); the share of them in the best `p` cells, for `p` about √2
//! apart, is the curve written with the version.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::quantiser::Quantiser;
use super::RecallError;
use crate::catalog::base::Embeddings;

const SEED: u64 = 0x1f_5eed ^ 0xca1;
const CALIBRATION_QUERIES: usize = 200;
/// Rows per block of the exact search.
const EXACT_BLOCK: usize = 16_384;
/// The curve goes on until this recall (or every cell).
const CURVE_UNTIL: f64 = 0.995;

/// Rows `lo..hi` of `rows` as f32, `[hi - lo, dim]`.
fn rows_f32(rows: &Embeddings, lo: usize, hi: usize, dim: usize) -> Vec<f32> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    match rows {
        Embeddings::F32(a) => a[lo * dim..hi * dim].to_vec(),
        Embeddings::F16(a) => {
            let mut out = vec![0f32; (hi - lo) * dim];
            let halves: &[half::f16] = a[lo * dim..hi * dim].reinterpret_cast();
            halves.convert_to_f32_slice(&mut out);
            out
        }
    }
}

fn candle_error(e: candle_core::Error) -> RecallError {
    RecallError::Index(e.to_string())
}

/// The exact top 10 positions of every query among all `m` rows: the rows
/// in blocks on all cores, each block scored against every query with one
/// matrix product (at 10^8 items, 200 queries take about a minute).
fn exact_top10(rows: &Embeddings, m: usize, queries: &[Vec<f32>], dim: usize) -> Result<Vec<Vec<usize>>, RecallError> {
    let nq = queries.len();
    let dev = candle_core::Device::Cpu;
    let qt = candle_core::Tensor::from_slice(&queries.concat(), (nq, dim), &dev)
        .and_then(|t| t.t())
        .map_err(candle_error)?;
    let blocks = m.div_ceil(EXACT_BLOCK);
    let parts: Vec<Vec<Vec<(f32, usize)>>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * EXACT_BLOCK, ((b + 1) * EXACT_BLOCK).min(m));
            let x = rows_f32(rows, lo, hi, dim);
            let scores: Vec<f32> = candle_core::Tensor::from_slice(&x, (hi - lo, dim), &dev)
                .and_then(|t| t.matmul(&qt))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(candle_error)?;
            let mut tops: Vec<Vec<(f32, usize)>> = vec![Vec::with_capacity(11); nq];
            for (r, row_scores) in scores.chunks_exact(nq).enumerate() {
                for (t, &s) in tops.iter_mut().zip(row_scores) {
                    if t.len() < 10 || s > t[t.len() - 1].0 {
                        t.push((s, lo + r));
                        t.sort_by(|a, b| b.0.total_cmp(&a.0));
                        t.truncate(10);
                    }
                }
            }
            Ok(tops)
        })
        .collect::<Result<_, RecallError>>()?;
    Ok((0..nq)
        .map(|q| {
            let mut all: Vec<(f32, usize)> = parts.iter().flat_map(|p| p[q].iter().copied()).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.into_iter().take(10).map(|x| x.1).collect()
        })
        .collect())
}

/// The calibration curve (see the module comment) of lists `offsets` over
/// `rows` in position order.
pub(super) fn calibrate(
    q: &Quantiser,
    offsets: &[u32],
    rows: &Embeddings,
    dim: usize,
) -> Result<Vec<(usize, f64)>, RecallError> {
    let m = *offsets.last().unwrap_or(&0) as usize;
    if m == 0 {
        return Ok(vec![(1, 1.0)]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let cell_at = |j: usize| (offsets.partition_point(|&o| o as usize <= j) - 1) as u32;
    let histories: Vec<Vec<usize>> = (0..CALIBRATION_QUERIES)
        .map(|_| {
            let seed = rng.random_range(0..m);
            let t = q.top_of_cell(cell_at(seed));
            let (lo, hi) = (offsets[q.top_cells[t] as usize] as usize, offsets[q.top_cells[t + 1] as usize] as usize);
            (0..5)
                .map(|_| match rng.random_bool(0.5) && hi > lo {
                    true => rng.random_range(lo..hi),
                    false => rng.random_range(0..m),
                })
                .collect()
        })
        .collect();
    // (the vector serving makes of a history: `Ann::user_vector`)
    let queries: Vec<Vec<f32>> = histories
        .iter()
        .map(|h| {
            let mut row = Vec::new();
            super::recency_mean(
                dim,
                h.iter().map(|&j| {
                    rows.row_into(j, dim, &mut row);
                    row.clone()
                }),
            )
        })
        .collect();
    let exact = exact_top10(rows, m, &queries, dim)?;
    // for every (query, neighbour): how many cells score above the neighbour's
    let ranks: Vec<usize> = queries
        .par_iter()
        .zip(&exact)
        .flat_map_iter(|(v, top)| {
            let scores = q.scores(v);
            top.iter()
                .map(|&j| {
                    let own = scores[cell_at(j) as usize];
                    scores.iter().filter(|&&s| s > own).count()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let cells = q.cells();
    let mut curve = Vec::new();
    let mut probes = 1usize;
    loop {
        let recall = ranks.iter().filter(|&&r| r < probes).count() as f64 / ranks.len().max(1) as f64;
        curve.push((probes, recall));
        if recall >= CURVE_UNTIL || probes >= cells {
            return Ok(curve);
        }
        // about √2 apart: 1, 2, 3, 4, 6, 8, 12, 16, ...
        probes = if probes.is_power_of_two() && probes >= 2 { probes + probes / 2 } else { probes.next_power_of_two() };
        probes = probes.max(curve.last().map_or(1, |c| c.0 + 1)).min(cells);
    }
}

/// The smallest probe count on `curve` that reaches `target` (the largest
/// tried when none does).
pub(super) fn probes_for(curve: &[(usize, f64)], target: f64) -> usize {
    curve.iter().find(|c| c.1 >= target).or(curve.last()).map_or(1, |c| c.0)
}
