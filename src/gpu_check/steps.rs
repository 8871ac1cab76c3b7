//! The beam step alone, parts 1a and 2 of `genrec gpu-check`: who runs it
//! (the kernel, or its CPU port on a machine without a GPU), random tries,
//! beams and filters to run it on, its comparison with the CPU reference, and
//! its timing beside the memory and launch floors.

use std::collections::HashSet;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::{synthetic, CheckError, CheckOptions};
use crate::catalog::trie::{Trie, NONE};
use crate::generate::kernel::contract::BeamKernel;
use crate::generate::kernel::mirror::{beam_step_mirror, StepInput, StepLive};
use crate::generate::kernel::LevelFilters;
use crate::generate::{beam_step, StepOutput, StepShape};
use crate::util::percentile;

/// Runs one beam step on some device, timed.
pub(super) trait StepRunner {
    /// Runs the step with the kernel of `selection` `reps` times (after one
    /// untimed run); returns its output and the seconds of each timed run
    /// (launch to completion).
    #[allow(clippy::too_many_arguments)] // the beam-step contract's inputs, as the kernels take them
    fn run(
        &mut self,
        trie: &Trie,
        depth: usize,
        shape: StepShape,
        input: &StepInput,
        filters: &LevelFilters,
        live: StepLive,
        reps: usize,
        selection: BeamKernel,
    ) -> Result<(StepOutput, Vec<f64>), CheckError>;
    /// Seconds to launch an empty kernel and wait for it (0 on the CPU).
    fn launch_floor(&mut self) -> Result<f64, CheckError>;
    fn name(&self) -> String;
}

/// The kernel's CPU port.
struct MirrorRunner;

impl StepRunner for MirrorRunner {
    fn run(
        &mut self,
        trie: &Trie,
        depth: usize,
        shape: StepShape,
        input: &StepInput,
        filters: &LevelFilters,
        live: StepLive,
        reps: usize,
        selection: BeamKernel,
    ) -> Result<(StepOutput, Vec<f64>), CheckError> {
        let a = trie.arrays();
        let step = || beam_step_mirror(&a, depth, shape, input, filters, live, 0, 0, selection);
        let out = step().map_err(CheckError::Other)?;
        let times = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let _ = std::hint::black_box(step());
                t.elapsed().as_secs_f64()
            })
            .collect();
        Ok((out.step, times))
    }

    fn launch_floor(&mut self) -> Result<f64, CheckError> {
        Ok(0.0)
    }

    fn name(&self) -> String {
        "cpu (kernel's CPU port)".into()
    }
}

#[cfg(feature = "cuda")]
struct CudaRunner {
    dev: candle_core::cuda_backend::CudaDevice,
}

#[cfg(feature = "cuda")]
impl StepRunner for CudaRunner {
    fn run(
        &mut self,
        trie: &Trie,
        depth: usize,
        shape: StepShape,
        input: &StepInput,
        filters: &LevelFilters,
        live: StepLive,
        reps: usize,
        selection: BeamKernel,
    ) -> Result<(StepOutput, Vec<f64>), CheckError> {
        use crate::generate::kernel::cuda::{
            self, GpuFilters, GpuLive, GpuPatch, GpuPriors, GpuTrend, Scratch, StepArgs,
        };
        use crate::generate::kernel::gpu_beam::device_trie;
        let dev = &self.dev;
        let d = Device::Cuda(dev.clone());
        let rows = shape.requests * shape.beams_in;
        let logits = candle_core::Tensor::from_slice(input.logits, (rows, input.ld), &d)?;
        let norm = input.norm.map(|n| candle_core::Tensor::from_slice(n, rows, &d)).transpose()?;
        let scores = dev.clone_htod(input.scores)?;
        let nodes = dev.clone_htod(input.nodes)?;
        let gtrie = device_trie(dev, trie)?;
        let gf = GpuFilters::upload(dev, filters)?;
        let mut patch = GpuPatch::new(dev)?;
        if let Some(table) = live.patch {
            patch.apply(dev, table, &table.full_sync())?;
        }
        let (priors, trend) = (GpuPriors::upload(dev, live.priors)?, GpuTrend::upload(dev, live.trend)?);
        let gl = GpuLive { patch: &patch, priors: &priors, trend: &trend };
        let args = StepArgs {
            logits: &logits,
            col0: input.col0,
            norm: norm.as_ref(),
            scores: &scores,
            nodes: &nodes,
            token_offset: 0,
            pad_token: 0,
        };
        let mut scratch = Scratch::default();
        let out = cuda::beam_step(dev, &gtrie, depth, shape, &args, &gf, &gl, &mut scratch, selection)?;
        let step = StepOutput {
            parent: dev.clone_dtoh(&out.parent)?,
            code: dev.clone_dtoh(&out.code)?,
            node: dev.clone_dtoh(&out.node)?,
            score: dev.clone_dtoh(&out.score)?,
        };
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            cuda::synchronize(dev)?;
            let t = Instant::now();
            std::hint::black_box(cuda::beam_step(dev, &gtrie, depth, shape, &args, &gf, &gl, &mut scratch, selection)?);
            cuda::synchronize(dev)?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok((step, times))
    }

    fn launch_floor(&mut self) -> Result<f64, CheckError> {
        let mut t: Vec<f64> = (0..200)
            .map(|_| {
                let s = Instant::now();
                crate::generate::kernel::cuda::launch_noop(&self.dev).map(|_| s.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(percentile(&t, 0.5).unwrap_or(0.0))
    }

    fn name(&self) -> String {
        crate::generate::kernel::cuda::card_name(&self.dev)
    }
}

pub(super) fn runner(device: &Device) -> Box<dyn StepRunner> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => Box::new(CudaRunner { dev: dev.clone() }),
        _ => Box::new(MirrorRunner),
    }
}

/// Memory bandwidth by card name (GB/s, the vendor's figure).
pub(super) fn bandwidth_for(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") {
        Some(4800.0)
    } else if n.contains("H100") && n.contains("PCIE") {
        Some(2000.0)
    } else if n.contains("H100") {
        Some(3350.0)
    } else {
        None
    }
}

/// A trie of about `n` random items over three levels of 256 codes: every
/// ID of the 256³ space is taken with probability n / 256³.
pub fn random_trie(n: usize, seed: u64) -> Result<Trie, CheckError> {
    let sizes = [256u32, 256, 256];
    let space = 256usize.pow(3);
    if n > space {
        return Err(CheckError::Other(format!("at most {space} items in a 256x256x256 trie")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let p = n as f64 / space as f64;
    let mut sids = Vec::with_capacity(n * 3 + 1024);
    for id in 0..space as u32 {
        if rng.random_bool(p) {
            sids.extend_from_slice(&[id >> 16, (id >> 8) & 255, id & 255]);
        }
    }
    Ok(Trie::build(&sids, 3, &sizes)?)
}

/// A trie of `n` distinct random semantic IDs over 3 levels of `codes` codes
/// (the 256-code tries come from [`random_trie`], as before).
fn random_trie_of(n: usize, codes: u32, seed: u64) -> Result<Trie, CheckError> {
    if codes == 256 {
        return random_trie(n, seed);
    }
    let space = (codes as f64).powi(3);
    if n as f64 > space / 2.0 {
        return Err(CheckError::Other(format!("{n} items do not fit half of a {codes}^3 code space")));
    }
    Ok(Trie::build(&synthetic::random_sids(n, &[codes; 3], seed), 3, &[codes; 3])?)
}

/// What a request carries at the last level: its history's 20 items banned
/// (random leaves here), as every real request excludes what it has seen.
fn history_bans(trie: &Trie, requests: usize, rng: &mut ChaCha8Rng) -> LevelFilters {
    use crate::generate::kernel::NodeLists;
    let ls = trie.arrays().level_start;
    let lists = (0..requests).map(|_| (0..20).map(|_| rng.random_range(ls[3]..ls[4])).collect::<Vec<u32>>());
    LevelFilters { allow: None, ban: Some(NodeLists::from_lists(lists)) }
}

/// Random beams at `depth`: live nodes of that depth, finite scores, a few
/// dead beams; logits in a row wider than the level (as in the real vocabulary).
struct RandomStep {
    logits: Vec<f32>,
    ld: usize,
    col0: usize,
    norm: Vec<f32>,
    scores: Vec<f32>,
    nodes: Vec<u32>,
}

fn random_step(trie: &Trie, depth: usize, rows: usize, codes: usize, rng: &mut ChaCha8Rng) -> RandomStep {
    let ls = trie.arrays().level_start;
    let (a, b) = (ls[depth], ls[depth + 1]);
    let (ld, col0) = (codes + 8, 4);
    RandomStep {
        logits: (0..rows * ld).map(|_| rng.random_range(-6.0f32..6.0)).collect(),
        ld,
        col0,
        norm: (0..rows).map(|_| 8.0 + rng.random::<f32>()).collect(),
        scores: (0..rows).map(|_| -rng.random::<f32>() * 5.0).collect(),
        nodes: (0..rows).map(|_| if rng.random_bool(0.02) { NONE } else { rng.random_range(a..b) }).collect(),
    }
}

/// Same top-B up to exact ties: scores agree within `tol` slot by slot, and a
/// continuation chosen by only one side scores (within `tol`) the same as the
/// other side's last kept one. Returns the largest score difference.
pub(super) fn compare_steps(
    want: &StepOutput,
    got: &StepOutput,
    requests: usize,
    beams: usize,
    tol: f32,
) -> Result<f32, String> {
    let mut worst = 0f32;
    for r in 0..requests {
        let slots = r * beams..(r + 1) * beams;
        let live = |o: &StepOutput| slots.clone().filter(|&s| o.node[s] != NONE).count();
        if live(want) != live(got) {
            return Err(format!("request {r}: {} live beams, reference {}", live(got), live(want)));
        }
        let tuples = |o: &StepOutput| -> HashSet<(u32, u32, u32)> {
            slots.clone().filter(|&s| o.node[s] != NONE).map(|s| (o.parent[s], o.code[s], o.node[s])).collect()
        };
        for s in slots.clone().filter(|&s| want.node[s] != NONE) {
            let d = (want.score[s] - got.score[s]).abs();
            worst = worst.max(d);
            if d > tol {
                return Err(format!(
                    "request {r} slot {}: score {} vs reference {}",
                    s - r * beams,
                    got.score[s],
                    want.score[s]
                ));
            }
        }
        if let Some(s) = slots.clone().find(|&s| got.node[s] != NONE && !got.score[s].is_finite()) {
            return Err(format!("request {r} slot {}: a live beam with score {}", s - r * beams, got.score[s]));
        }
        let last = slots.clone().filter(|&s| want.node[s] != NONE).map(|s| want.score[s]).fold(f32::INFINITY, f32::min);
        let (w, g) = (tuples(want), tuples(got));
        for s in
            slots.clone().filter(|&s| got.node[s] != NONE && !w.contains(&(got.parent[s], got.code[s], got.node[s])))
        {
            if (got.score[s] - last).abs() > tol {
                return Err(format!(
                    "request {r}: extra continuation (parent {}, code {}) scores {}",
                    got.parent[s], got.code[s], got.score[s]
                ));
            }
        }
        if w.len() != g.len() {
            return Err(format!("request {r}: duplicate continuations"));
        }
    }
    Ok(worst)
}

/// Non-finite inputs, which the kernel must drop as the CPU does: +inf, -inf
/// and NaN logits, a beam whose logits are all -inf, +inf and NaN normalisers.
fn poison(st: &mut RandomStep, rng: &mut ChaCha8Rng) {
    for x in st.logits.iter_mut() {
        *x = match rng.random_range(0..50) {
            0 => f32::INFINITY,
            1 => f32::NEG_INFINITY,
            2 => f32::NAN,
            _ => *x,
        };
    }
    let rows = st.norm.len();
    st.logits[..st.ld].fill(f32::NEG_INFINITY);
    st.norm[rng.random_range(0..rows)] = f32::NAN;
    st.norm[rng.random_range(0..rows)] = f32::INFINITY;
}

/// The kernels part 1a holds to the CPU reference: the radix selection, the
/// pooled one, and the pooled one with a pool so small that most steps take
/// its fallback.
const CHECKED: [(BeamKernel, &str); 3] = [
    (BeamKernel::Radix, "radix"),
    (BeamKernel::POOL, "pool"),
    (BeamKernel::Pool { capacity: 48 }, "pool of 48 (fallback)"),
];

/// Part 1a: random tries and logits, every depth, with and without the
/// model's normaliser, with intents and exclusions, and in every fourth case
/// with non-finite logits and normalisers ([`poison`]), for each kernel of
/// [`CHECKED`]. Scores must agree within 1e-4 (the kernel's expf/logf are not
/// the CPU's correctly rounded ones), so a near-tie at the last kept place
/// may go either way.
pub(super) fn check_steps(run: &mut dyn StepRunner, seed: u64) -> Result<Value, CheckError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cases = 0;
    let mut worst = 0f32;
    // cases 12-15: OneRec-wide levels of 8,192 codes
    for case in 0..16u64 {
        let n = [300usize, 5_000, 60_000][case as usize % 3];
        let width = if case < 12 { 256 } else { 8192 };
        let trie = random_trie_of(n, width, seed + case)?;
        for depth in 0..3 {
            let requests = [1usize, 5, 17][rng.random_range(0..3)];
            let beams_in = if depth == 0 { 1 } else { [1usize, 16, 64][rng.random_range(0..3)] };
            let beams_out = [1usize, 10, 64, 256][rng.random_range(0..4)];
            let codes = width as usize;
            let mut st = random_step(&trie, depth, requests * beams_in, codes, &mut rng);
            if case % 4 == 3 {
                poison(&mut st, &mut rng);
            }
            // filters: a few allowed first-level nodes / banned leaves per request
            let filters = random_filters(&trie, depth, requests, &mut rng);
            let level: Vec<f32> =
                (0..requests * beams_in).flat_map(|b| st.logits[b * st.ld + st.col0..][..codes].to_vec()).collect();
            for norm in [None, Some(&st.norm[..])] {
                let shape = StepShape { requests, beams_in, beams_out, codes };
                let want = beam_step(
                    &crate::catalog::TrieView::new(&trie, None),
                    shape,
                    &level,
                    &st.scores,
                    &st.nodes,
                    norm,
                    |r, ch| filters.keep(r, ch),
                );
                let input = StepInput {
                    logits: &st.logits,
                    ld: st.ld,
                    col0: st.col0,
                    norm,
                    scores: &st.scores,
                    nodes: &st.nodes,
                };
                for (selection, kernel) in CHECKED {
                    let (got, _) = run.run(&trie, depth, shape, &input, &filters, StepLive::none(), 0, selection)?;
                    let d = compare_steps(&want, &got, requests, beams_out, 1e-4).map_err(|e| {
                        CheckError::Other(format!(
                            "beam step ({kernel}) case {case} depth {depth} ({requests}x{beams_in}->{beams_out}): {e}"
                        ))
                    })?;
                    worst = worst.max(d);
                    cases += 1;
                }
            }
        }
    }
    Ok(json!({"cases": cases, "kernels": CHECKED.map(|(_, k)| k), "max_score_diff": worst, "ok": true}))
}

fn random_filters(trie: &Trie, depth: usize, requests: usize, rng: &mut ChaCha8Rng) -> LevelFilters {
    use crate::generate::kernel::NodeLists;
    let ls = trie.arrays().level_start;
    let mut lists = |lo: u32, hi: u32, count: usize| {
        let per_request: Vec<Vec<u32>> = (0..requests)
            .map(|_| (0..rng.random_range(0..=count)).map(|_| rng.random_range(lo..hi)).collect())
            .collect();
        NodeLists::from_lists(per_request.into_iter())
    };
    match depth {
        0 => LevelFilters { allow: Some(lists(ls[1], ls[2], 6)), ban: None },
        2 => LevelFilters { allow: None, ban: Some(lists(ls[3], ls[4], 50)) },
        _ => LevelFilters::default(),
    }
}

/// Part 2: the step's time over large tries, beside its floors.
pub(super) fn time_steps(
    run: &mut dyn StepRunner,
    opts: &CheckOptions,
    bandwidth: Option<f64>,
) -> Result<Vec<Value>, CheckError> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let floor_launch = run.launch_floor()?;
    let mut rows = Vec::new();
    for &codes in &opts.step_codes {
        for &n in &opts.trie_items {
            if codes != 256 && n > 1_000_000 {
                continue; // 10^7 of 8,192^3: the same CSR depths as 10^6, at 10x the build time
            }
            let t0 = Instant::now();
            let trie = random_trie_of(n, codes, opts.seed)?;
            eprintln!(
                "gpu-check: trie of {} items ({codes} codes per level) built in {:.1} s",
                trie.num_items(),
                t0.elapsed().as_secs_f64()
            );
            for depth in [1usize, 2] {
                let layout = if trie.arrays().dense_table(depth).is_some() { "dense" } else { "csr" };
                for &r in &opts.batches {
                    for &b in &opts.beams {
                        let codes = codes as usize;
                        let st = random_step(&trie, depth, r * b, codes, &mut rng);
                        let shape = StepShape { requests: r, beams_in: b, beams_out: b, codes };
                        let input = StepInput {
                            logits: &st.logits,
                            ld: st.ld,
                            col0: st.col0,
                            norm: Some(&st.norm),
                            scores: &st.scores,
                            nodes: &st.nodes,
                        };
                        // the last level carries each request's exclusions
                        let filters =
                            if depth == 2 { history_bans(&trie, r, &mut rng) } else { LevelFilters::default() };
                        let mut median = |selection| -> Result<f64, CheckError> {
                            let (_, mut times) = run.run(
                                &trie,
                                depth,
                                shape,
                                &input,
                                &filters,
                                StepLive::none(),
                                opts.reps.max(1),
                                selection,
                            )?;
                            times.sort_by(f64::total_cmp);
                            Ok(percentile(&times, 0.5).unwrap_or(0.0))
                        };
                        let med = median(BeamKernel::Radix)?;
                        let med_pool = median(BeamKernel::POOL)?;
                        // bytes the step cannot avoid: its logits window, normalisers,
                        // beam state in and out, and the trie rows of its beams
                        let ls = trie.arrays().level_start;
                        let children = if layout == "dense" {
                            codes
                        } else {
                            ((ls[depth + 2] - ls[depth + 1]) as usize)
                                .div_ceil(((ls[depth + 1] - ls[depth]) as usize).max(1))
                                + 2
                        };
                        let bytes = (r * b) * (codes * 4 + 4 + 8 + children * 4) + r * b * 24;
                        let floor_mem = bandwidth.map(|gbs| bytes as f64 / (gbs * 1e9));
                        rows.push(json!({
                            "items": trie.num_items(), "codes": codes, "depth": depth, "layout": layout, "batch": r, "beam": b,
                            "filters": if depth == 2 { "20 banned items per request" } else { "none" },
                            "step_us": med * 1e6, "pool_step_us": med_pool * 1e6, "floor_memory_us": floor_mem.map(|f| f * 1e6), "floor_launch_us": floor_launch * 1e6,
                            "bytes": bytes,
                        }));
                    }
                }
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_catches_a_wrong_selection() {
        let want = StepOutput { parent: vec![0, 0], code: vec![1, 2], node: vec![5, 6], score: vec![-1.0, -2.0] };
        assert!(compare_steps(&want, &want.clone(), 1, 2, 1e-4).is_ok());
        let mut tie = want.clone();
        tie.code[1] = 3;
        tie.node[1] = 7;
        assert!(compare_steps(&want, &tie, 1, 2, 1e-4).is_ok(), "a tie at the boundary may differ");
        let mut bad = want.clone();
        bad.score[1] = -1.5;
        assert!(compare_steps(&want, &bad, 1, 2, 1e-4).is_err());
        let mut dead = want.clone();
        dead.node[1] = NONE;
        assert!(compare_steps(&want, &dead, 1, 2, 1e-4).is_err());
        let mut nan = want.clone();
        nan.score[1] = f32::NAN;
        assert!(compare_steps(&want, &nan, 1, 2, 1e-4).unwrap_err().contains("a live beam with score NaN"));
    }
}
