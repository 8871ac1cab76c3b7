//! A CPU port of `kernels/beam_step.cu`, phase for phase, over the same trie
//! arrays (dense tables for the first depths, CSR below), the same 64-bit
//! candidate keys and the same selections: the radix select over every
//! candidate (`genrec_beam_step`) and the pooled one that keeps only the
//! candidates above a bound (`genrec_beam_step_pool`; see
//! [`super::contract::BeamKernel`]). It exists so that the kernel's
//! logic is tested on every machine: the tests below hold it to the CPU
//! reference ([`crate::generate::step::beam_step`]) on random tries, and
//! `genrec gpu-check` holds the kernel to both on the GPU.

use super::contract::{BeamKernel, LANES};
use super::filters::LevelFilters;
use super::patch::PatchTable;
use super::priors::{LevelPriors, TrendTables, NO_PRIORS, NO_TREND};
use crate::catalog::trie::{TrieArrays, NONE};
use crate::generate::step::{StepOutput, StepShape};

/// The kernel's inputs for one level. Row `beam` of the level's logits is
/// `logits[beam * ld + col0..][..codes]` (a column window of the full-vocabulary
/// logits: nothing is copied to cut the level out).
pub struct StepInput<'a> {
    pub logits: &'a [f32],
    pub ld: usize,
    pub col0: usize,
    pub norm: Option<&'a [f32]>,
    pub scores: &'a [f32],
    pub nodes: &'a [u32],
}

/// What the kernel writes: the step's output, and per output beam the cache
/// row to keep (`request * beams_in + parent`) and the next input token.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelOutput {
    pub step: StepOutput,
    pub row: Vec<u32>,
    pub token: Vec<u32>,
}

/// Order-preserving bits of a float (larger float, larger bits).
pub fn ord_bits(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// Inverse of [`ord_bits`].
pub fn from_ord_bits(o: u32) -> f32 {
    f32::from_bits(if o & 0x8000_0000 != 0 { o & 0x7FFF_FFFF } else { !o })
}

/// A candidate's key: score above, complement of (parent, code) below, so
/// that larger is better and ties go to the smaller (parent, code).
pub fn key(score: f32, parent: u32, code: u32, codes: u32) -> u64 {
    ((ord_bits(score) as u64) << 32) | (u32::MAX - (parent * codes + code)) as u64
}

/// The `k`-th largest key (1-based; `keys` unique, `k <= keys.len()`): 8 passes
/// of 8-bit histograms, most significant byte first, as the kernel does.
pub fn radix_select(keys: &[u64], k: usize) -> u64 {
    radix_kth(keys, k, 64)
}

/// The `k`-th largest of `keys` whose significant bits are the low `bits`
/// (a multiple of 8; repeats count once each), one 8-bit digit per pass from
/// the top.
fn radix_kth(keys: &[u64], k: usize, bits: u32) -> u64 {
    let (mut prefix, mut mask, mut remaining) = (0u64, 0u64, k as u32);
    for shift in (0..bits / 8).rev().map(|p| p * 8) {
        let mut hist = [0u32; 256];
        for &key in keys.iter().filter(|&&key| key & mask == prefix) {
            hist[((key >> shift) & 255) as usize] += 1;
        }
        let (d, above) = pick_digit(&hist, remaining);
        remaining -= above;
        prefix |= (d as u64) << shift;
        mask |= 255 << shift;
    }
    prefix
}

/// The digit of the `want`-th largest key (1-based) from a pass's histogram,
/// and how many keys lie in higher digits, found as the kernel's first warp
/// finds them: lane `l` sums the digits `255 - 8l` down to `248 - 8l`, a scan
/// over the lanes finds the first whose running sum reaches `want`, and that
/// lane walks its eight digits. (The same result as walking all 256 from the
/// top; digit 0 when even it is not reached.)
pub fn pick_digit(hist: &[u32; 256], want: u32) -> (usize, u32) {
    let lane_sum = |l: usize| (0..8).map(|j| hist[255 - 8 * l - j]).sum::<u32>();
    let mut before = 0u32;
    for lane in 0..32 {
        let sum = lane_sum(lane);
        if before + sum >= want {
            let mut acc = before;
            for j in 0..8 {
                let d = 255 - 8 * lane - j;
                if d == 0 || acc + hist[d] >= want {
                    return (d, acc);
                }
                acc += hist[d];
            }
        }
        before += sum;
    }
    (0, before - hist[0])
}

/// What a live catalog and a batch's priors add to a step: the overlay's
/// patched nodes (`None`: the base alone) and the level's priors.
#[derive(Clone, Copy)]
pub struct StepLive<'a> {
    pub patch: Option<&'a PatchTable>,
    pub priors: &'a LevelPriors,
    pub trend: &'a TrendTables,
}

impl StepLive<'static> {
    /// The base trie, no priors.
    pub fn none() -> Self {
        StepLive { patch: None, priors: &NO_PRIORS, trend: &NO_TREND }
    }
}

/// A node's children as the kernel walks them: a dense row (`codes` slots,
/// `NONE` where the code is no child), the base's CSR run, or a patched
/// node's record.
#[derive(Clone, Copy)]
enum Slots<'a> {
    Dense(&'a [u32]),
    Csr { codes: &'a [u32], first: u32 },
    Patched { codes: &'a [u32], nodes: &'a [u32], items: &'a [u32] },
}

impl Slots<'_> {
    fn len(&self) -> usize {
        match self {
            Slots::Dense(row) => row.len(),
            Slots::Csr { codes, .. } | Slots::Patched { codes, .. } => codes.len(),
        }
    }

    /// Slot `i`: `(code, child)`; `child` is `NONE` for a dense slot whose
    /// code is no child.
    fn get(&self, i: usize) -> (u32, u32) {
        match self {
            Slots::Dense(row) => (i as u32, row[i]),
            Slots::Csr { codes, first } => (codes[i], first + i as u32),
            Slots::Patched { codes, nodes, .. } => (codes[i], nodes[i]),
        }
    }

    /// The item of slot `i`'s child (a leaf's), `NONE` for an inner node.
    fn item(&self, trie: &TrieArrays, i: usize) -> u32 {
        let (_, child) = self.get(i);
        match self {
            Slots::Patched { items, .. } => items[i],
            _ => {
                let leaves = trie.level_start[trie.codebook_sizes.len()];
                child.checked_sub(leaves).and_then(|j| trie.leaf_item.get(j as usize)).copied().unwrap_or(NONE)
            }
        }
    }

    /// The child along `code` (the slot decoded from a selected key).
    fn child_of(&self, code: u32) -> u32 {
        match self {
            Slots::Dense(row) => row[code as usize],
            Slots::Csr { codes, first } => first + codes.partition_point(|&c| c < code) as u32,
            Slots::Patched { codes, nodes, .. } => nodes[codes.partition_point(|&c| c < code)],
        }
    }
}

/// The children of `node` at `depth`: its patch record, else the base's
/// (none for an overlay node without a record).
fn slots_of<'a>(trie: &'a TrieArrays, patch: Option<&'a PatchTable>, depth: usize, node: u32) -> Slots<'a> {
    if let Some((codes, nodes, items)) = patch.and_then(|p| p.children(node)) {
        return Slots::Patched { codes, nodes, items };
    }
    let base_nodes = *trie.level_start.last().unwrap_or(&0);
    if node >= base_nodes {
        return Slots::Csr { codes: &[], first: 0 };
    }
    match trie.dense_table(depth) {
        Some(t) => {
            let codes = trie.codebook_sizes[depth] as usize;
            let row = (node - trie.level_start[depth]) as usize * codes;
            Slots::Dense(&t[row..row + codes])
        }
        None => {
            let (s, e) = (trie.child_start[node as usize] as usize, trie.child_start[node as usize + 1] as usize);
            Slots::Csr { codes: &trie.child_code[s..e], first: s as u32 + 1 }
        }
    }
}

/// One step at trie depth `depth`, as the kernel of `selection` computes it
/// (`genrec_beam_step` or `genrec_beam_step_pool`), after the launcher's
/// checks ([`super::contract::check_step`]): on the base trie with the
/// overlay's patched nodes, and each slot's logit after the level's priors.
#[allow(clippy::too_many_arguments)]
pub fn beam_step_mirror(
    trie: &TrieArrays,
    depth: usize,
    shape: StepShape,
    input: &StepInput,
    filters: &LevelFilters,
    live: StepLive,
    token_offset: u32,
    pad_token: u32,
    selection: BeamKernel,
) -> Result<KernelOutput, String> {
    super::contract::check_step(trie.codebook_sizes, depth, shape, selection)?;
    let StepShape { requests, beams_in, beams_out, codes } = shape;
    let n_out = requests * beams_out;
    let mut out = KernelOutput {
        step: StepOutput {
            parent: vec![0; n_out],
            code: vec![0; n_out],
            node: vec![NONE; n_out],
            score: vec![f32::NEG_INFINITY; n_out],
        },
        row: vec![0; n_out],
        token: vec![pad_token; n_out],
    };
    let pri = live.priors;
    for r in 0..requests {
        // phases 1-3: priors, normaliser and keys, beam by beam; each lane's
        // best score (ord bits, 0 for none) for the pooled selection
        let mut cands: Vec<u64> = Vec::new();
        let mut lane_best = vec![0u32; beams_in * LANES];
        let siblings = pri.siblings.get(r).is_some_and(|&s| s != 0);
        let trend = live.trend.weight.get(r).copied().filter(|&w| w != 0.0);
        for b in 0..beams_in {
            let row = r * beams_in + b;
            let (node, base) = (input.nodes[row], input.scores[row]);
            if node == NONE || !base.is_finite() {
                continue;
            }
            let slots = slots_of(trie, live.patch, depth, node);
            let x = &input.logits[row * input.ld + input.col0..];
            // the first-level prior, then (new-item rule) the best trained sibling
            let prior = |c: u32| match pri.first.is_empty() {
                true => x[c as usize],
                false => x[c as usize] + pri.first[r * codes + c as usize],
            };
            let valid = || (0..slots.len()).filter(|&i| slots.get(i).1 != NONE);
            let is_new = |i: usize| {
                let item = slots.item(trie, i);
                item != NONE && item >= pri.trained_rows
            };
            let best = if siblings {
                valid().filter(|&i| !is_new(i)).map(|i| prior(slots.get(i).0)).fold(f32::NEG_INFINITY, f32::max)
            } else {
                f32::NEG_INFINITY
            };
            let logit = |i: usize| {
                let (c, child) = slots.get(i);
                let mut v = prior(c);
                if siblings && best.is_finite() && is_new(i) {
                    v = v.max(best);
                }
                if let Some(w) = trend {
                    let (_, lift) = live.trend.lift(r, child).unwrap_or((w, 0.0));
                    v += w * lift;
                }
                v
            };
            let lse = match input.norm {
                Some(n) => n[row],
                None => {
                    let m = valid().map(logit).fold(f32::NEG_INFINITY, f32::max);
                    m + valid().map(|i| (logit(i) - m).exp()).sum::<f32>().ln()
                }
            };
            for i in valid() {
                let (c, ch) = slots.get(i);
                if !filters.keep(r, ch) {
                    continue;
                }
                let score = base + logit(i) - lse;
                if score.is_finite() {
                    cands.push(key(score, b as u32, c, codes as u32));
                    let best = &mut lane_best[b * LANES + i % LANES];
                    *best = (*best).max(ord_bits(score));
                }
            }
        }
        // phase 4: select and sort
        let k = cands.len().min(beams_out);
        let (sel, _) = select(&cands, &lane_best, beams_out, selection);
        debug_assert_eq!(sel.len(), k);
        // phase 5: decode
        for (j, &key) in sel.iter().enumerate() {
            let slot = r * beams_out + j;
            let idx = u32::MAX - (key & 0xFFFF_FFFF) as u32;
            let (parent, code) = (idx / codes as u32, idx % codes as u32);
            let pn = input.nodes[r * beams_in + parent as usize];
            out.step.parent[slot] = parent;
            out.step.code[slot] = code;
            out.step.node[slot] = slots_of(trie, live.patch, depth, pn).child_of(code);
            out.step.score[slot] = from_ord_bits((key >> 32) as u32);
            out.row[slot] = (r * beams_in) as u32 + parent;
            out.token[slot] = token_offset + code;
        }
        for j in k..beams_out {
            out.row[r * beams_out + j] = (r * beams_in) as u32;
        }
    }
    Ok(out)
}

/// Phase 4: the best `beams_out` of a request's candidate keys, best first,
/// and whether the pool held them (false: the radix path).
fn select(cands: &[u64], lane_best: &[u32], beams_out: usize, selection: BeamKernel) -> (Vec<u64>, bool) {
    if let BeamKernel::Pool { capacity } = selection {
        // the lanes' best are distinct candidates: at least `beams_out`
        // candidates score at or above their `beams_out`-th largest
        let bound = if lane_best.len() >= beams_out {
            let wide: Vec<u64> = lane_best.iter().map(|&b| b as u64).collect();
            radix_kth(&wide, beams_out, 32) as u32
        } else {
            0
        };
        let mut pool: Vec<u64> = cands.iter().copied().filter(|&key| (key >> 32) as u32 >= bound).collect();
        if pool.len() <= capacity {
            pool.sort_unstable_by(|a, b| b.cmp(a));
            pool.truncate(beams_out);
            return (pool, true);
        }
    }
    let threshold = if cands.len() > beams_out { radix_select(cands, beams_out) } else { 0 };
    let mut sel: Vec<u64> = cands.iter().copied().filter(|&key| key >= threshold).collect();
    sel.sort_unstable_by(|a, b| b.cmp(a));
    (sel, false)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::generate::step::beam_step;
    use crate::generate::testutil::random_catalog;
    use crate::generate::GenRequest;

    #[test]
    fn key_bits_round_trip_and_order() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(ord_bits(w[0]) <= ord_bits(w[1]), "{w:?}");
        }
        for x in xs {
            assert_eq!(from_ord_bits(ord_bits(x)).to_bits(), x.to_bits());
        }
        // same score: smaller (parent, code) wins
        assert!(key(-1.0, 0, 5, 8) > key(-1.0, 1, 0, 8));
        assert!(key(-1.0, 3, 7, 8) > key(-1.5, 0, 0, 8));
    }

    /// The kernel's warp-parallel digit search gives the serial walk's digit.
    #[test]
    fn pick_digit_equals_the_serial_walk() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case in 0..2000 {
            let mut hist = [0u32; 256];
            // sparse, dense and piled-up histograms
            let filled = [3usize, 40, 256][case % 3];
            for _ in 0..filled {
                hist[rng.random_range(0..256)] += rng.random_range(0..5);
            }
            let total: u32 = hist.iter().sum();
            for want in [1, total / 2, total, total + 1].into_iter().filter(|&w| w >= 1) {
                let (mut acc, mut d) = (0u32, 255usize);
                while d > 0 && acc + hist[d] < want {
                    acc += hist[d];
                    d -= 1;
                }
                assert_eq!(pick_digit(&hist, want), (d, acc), "case {case} want {want} of {total}");
            }
        }
    }

    /// The pooled selection gives the radix selection's keys, through the
    /// pool when the survivors fit and through the fallback when they do not;
    /// wide levels (more candidates per beam than lanes) and ties included.
    #[test]
    fn pooled_selection_equals_the_radix_selection() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        let (mut pooled, mut fell_back) = (0, 0);
        for case in 0..200 {
            let beams_in = rng.random_range(1..40);
            let codes = [3usize, 31, 64, 300][case % 4];
            let beams_out = rng.random_range(1..=256);
            let mut cands = Vec::new();
            let mut lane_best = vec![0u32; beams_in * LANES];
            for b in 0..beams_in {
                let base = -rng.random::<f32>() * 4.0;
                for c in 0..codes {
                    if rng.random_bool(0.2) {
                        continue; // no child, banned or not finite
                    }
                    // coarse logits: exact ties within and across beams
                    let score = base + (rng.random_range(-40..0) as f32) * 0.125;
                    cands.push(key(score, b as u32, c as u32, codes as u32));
                    let best = &mut lane_best[b * LANES + c % LANES];
                    *best = (*best).max(ord_bits(score));
                }
            }
            let (want, _) = select(&cands, &lane_best, beams_out, BeamKernel::Radix);
            for capacity in [super::super::contract::POOL_MAX, 40, 1] {
                let (got, in_pool) = select(&cands, &lane_best, beams_out, BeamKernel::Pool { capacity });
                assert_eq!(got, want, "case {case} capacity {capacity}");
                if in_pool {
                    pooled += 1
                } else {
                    fell_back += 1
                }
            }
        }
        assert!(pooled > 100 && fell_back > 100, "pooled {pooled}, fell back {fell_back}");
    }

    #[test]
    fn radix_select_finds_the_kth_largest() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for n in [1usize, 2, 7, 300, 5000] {
            let keys: Vec<u64> = (0..n as u64).map(|i| (rng.random::<u64>() & !0xFFFF) | i).collect();
            let mut sorted = keys.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            for k in [1, n / 2 + 1, n] {
                assert_eq!(radix_select(&keys, k), sorted[k - 1], "n {n} k {k}");
            }
        }
    }

    /// The mirror equals the CPU reference exactly (same selection, bit-equal
    /// scores) on random tries, logits, dead beams, intents, allowed sets (allow
    /// lists at every depth) and exclusions, for
    /// every dense depth, with and without the model's normaliser, and again
    /// with non-finite logits and normalisers, which neither lets through.
    #[test]
    fn mirror_equals_the_cpu_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for case in 0..24u64 {
            let sizes: Vec<u32> = (0..3).map(|_| rng.random_range(2..9)).collect();
            let total: u32 = sizes.iter().product();
            let cat = random_catalog(rng.random_range(5..total as usize), &sizes, case);
            let dense_depth = (case % 4) as usize;
            let sids: Vec<u32> = (0..cat.len() as u32).flat_map(|i| cat.sid(i).to_vec()).collect();
            let trie = crate::catalog::trie::Trie::build_with_dense(&sids, 3, &sizes, dense_depth).unwrap();
            let requests = rng.random_range(1..5);
            let reqs: Vec<GenRequest> = (0..requests)
                .map(|_| GenRequest {
                    history: Vec::new(),
                    k: 1,
                    exclude: (0..cat.len() as u32).filter(|_| rng.random_bool(0.2)).collect::<HashSet<u32>>(),
                    within: if rng.random_bool(0.5) {
                        vec![rng.random_range(0..sizes[0]), rng.random_range(0..sizes[0])]
                    } else {
                        Vec::new()
                    },
                    allowed: rng
                        .random_bool(0.4)
                        .then(|| (0..cat.len() as u32).filter(|_| rng.random_bool(0.3)).collect()),
                    ..Default::default()
                })
                .collect();
            let mut cat = cat;
            cat.replace_trie(trie);
            let view = cat.trie();
            let trie = view.base();
            // walk down the levels with random beams at each depth
            for (depth, &size) in sizes.iter().enumerate() {
                let codes = size as usize;
                let beams_in = if depth == 0 { 1 } else { rng.random_range(1..6) };
                let beams_out = rng.random_range(1..12);
                let level_nodes: Vec<u32> =
                    (trie.arrays().level_start[depth]..trie.arrays().level_start[depth + 1]).collect();
                let n = requests * beams_in;
                let nodes: Vec<u32> =
                    (0..n)
                        .map(|_| {
                            if rng.random_bool(0.15) {
                                NONE
                            } else {
                                level_nodes[rng.random_range(0..level_nodes.len())]
                            }
                        })
                        .collect();
                let scores: Vec<f32> = (0..n)
                    .map(|_| if rng.random_bool(0.05) { f32::NEG_INFINITY } else { -rng.random::<f32>() * 3.0 })
                    .collect();
                // logits inside a wider row (ld > codes, col0 > 0); some exact ties
                let (ld, col0) = (codes + 5, 3);
                let clean: Vec<f32> = (0..n * ld).map(|_| (rng.random_range(-8..8) as f32) * 0.25).collect();
                let clean_norm: Vec<f32> = (0..n).map(|_| 2.0 + rng.random::<f32>()).collect();
                // the same with non-finite values: +inf, -inf and NaN logits,
                // beams whose every logit is -inf, +inf/-inf/NaN normalisers
                let mut poisoned = clean.clone();
                for x in poisoned.iter_mut() {
                    *x = match rng.random_range(0..20) {
                        0 => f32::INFINITY,
                        1 => f32::NEG_INFINITY,
                        2 => f32::NAN,
                        _ => *x,
                    };
                }
                for row in poisoned.chunks_mut(ld).filter(|_| rng.random_bool(0.2)) {
                    row.fill(f32::NEG_INFINITY);
                }
                let poisoned_norm: Vec<f32> = clean_norm
                    .iter()
                    .map(|&v| [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, v, v, v][rng.random_range(0..6)])
                    .collect();
                for (logits, norm) in [(&clean, &clean_norm), (&poisoned, &poisoned_norm)] {
                    let level_logits: Vec<f32> =
                        (0..n).flat_map(|b| logits[b * ld + col0..b * ld + col0 + codes].to_vec()).collect();
                    let filters = LevelFilters::new(&cat, &reqs, depth);
                    let shape = StepShape { requests, beams_in, beams_out, codes };
                    for (nm, selection) in [None, Some(&norm[..])].into_iter().flat_map(|n| {
                        [(n, BeamKernel::Radix), (n, BeamKernel::POOL), (n, BeamKernel::Pool { capacity: 2 })]
                    }) {
                        let want =
                            beam_step(&view, shape, &level_logits, &scores, &nodes, nm, |r, ch| filters.keep(r, ch));
                        let input = StepInput { logits, ld, col0, norm: nm, scores: &scores, nodes: &nodes };
                        let got = beam_step_mirror(
                            &trie.arrays(),
                            depth,
                            shape,
                            &input,
                            &filters,
                            StepLive::none(),
                            100,
                            7,
                            selection,
                        )
                        .unwrap();
                        assert_eq!(got.step.parent, want.parent, "case {case} depth {depth}");
                        assert_eq!(got.step.code, want.code, "case {case} depth {depth}");
                        assert_eq!(got.step.node, want.node, "case {case} depth {depth}");
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got.step.score), bits(&want.score), "case {case} depth {depth}");
                        for s in 0..requests * beams_out {
                            let r = s / beams_out;
                            assert_eq!(got.row[s], (r * beams_in) as u32 + got.step.parent[s]);
                            let live = got.step.node[s] != NONE;
                            assert_eq!(got.token[s], if live { 100 + got.step.code[s] } else { 7 });
                            // a live beam always has a finite score: non-finite ones never survive
                            assert_eq!(live, got.step.score[s].is_finite(), "case {case} depth {depth} slot {s}");
                        }
                    }
                }
            }
        }
    }
}
