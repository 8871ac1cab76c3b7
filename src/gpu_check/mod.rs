//! `genrec gpu-check`: the workload of the device script (scripts/gpu-check.sh).
//!
//! 1. Correctness: the beam step on the device against the CPU reference
//!    ([`crate::generate::step::beam_step`]) on random tries (256 and 8,192
//!    codes per level) and logits, some non-finite (same top-B up to score
//!    differences of 1e-4), and end-to-end generation of a real
//!    checkpoint on the device against the CPU (same items).
//! 2. The step's time for batch 1/16/64 × beam 16/64/256 over tries of 10^4,
//!    10^6 and 10^7 items with 256 codes per level (10^4 and 10^6 with
//!    OneRec's 8,192), at the middle and the last depth (the last with 20
//!    banned items per request, as real requests carry), beside two
//!    floors: the bytes it must move over the card's memory bandwidth, and
//!    the time to launch an empty kernel and wait for it.
//! 3. End-to-end requests/s and latency for batch 1/16/64 at beam 64 and 256,
//!    device and CPU in the same run.
//!
//! With `--synthetic qwen3-0.6b|qwen3-1.7b` parts 1b and 3 run a random-weight
//! model of that shape over a random catalog built on the spot ([`synthetic`]),
//! instead of a checkpoint.
//!
//! With `--device cpu` the kernel's CPU port ([`crate::generate::kernel::mirror`])
//! stands in for the kernel, so the harness itself runs (and is tested) on
//! machines without a GPU; its timings then say nothing about a GPU.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::catalog::trie::{Trie, NONE};
use crate::catalog::Catalog;
use crate::device::DeviceSpec;
use crate::generate::kernel::mirror::{beam_step_mirror, StepInput};
use crate::generate::kernel::LevelFilters;
use crate::generate::{beam_step, generate, GenRequest, StepOutput, StepShape};
use crate::model::Model;
use crate::util::percentile;

pub mod synthetic;
use synthetic::Synthetic;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("device: {0}")]
    Device(#[from] crate::device::DeviceError),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("generate: {0}")]
    Generate(#[from] crate::generate::GenerateError),
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("{0}")]
    Other(String),
    #[error("{} part(s) failed: {}", failures.len(), failures.join("; "))]
    Failed { failures: Vec<String>, report: Box<Value> },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub device: DeviceSpec,
    /// Checkpoint for the end-to-end parts (default: the embedded demo model).
    pub model: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    /// A production-shaped random model instead of `model`.
    pub synthetic: Option<Synthetic>,
    /// History length (items) of the end-to-end requests.
    pub history_items: usize,
    /// Requests compared in the end-to-end check (part 1b).
    pub e2e_requests: usize,
    /// Trie sizes of the timing table.
    pub trie_items: Vec<usize>,
    /// Codes per level of the timing table's tries (3 levels each): 256
    /// (TIGER's codebooks) and 8,192 (OneRec's).
    pub step_codes: Vec<u32>,
    pub batches: Vec<usize>,
    pub beams: Vec<usize>,
    pub e2e_beams: Vec<usize>,
    /// Timed repetitions per step configuration.
    pub reps: usize,
    /// Memory bandwidth in GB/s for the floor (default: by card name).
    pub bandwidth_gbs: Option<f64>,
    pub seed: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            device: DeviceSpec::Cuda(0),
            model: None,
            catalog: None,
            synthetic: None,
            history_items: 20,
            e2e_requests: 64,
            trie_items: vec![10_000, 1_000_000, 10_000_000],
            step_codes: vec![256, 8192],
            batches: vec![1, 16, 64],
            beams: vec![16, 64, 256],
            e2e_beams: vec![64, 256],
            reps: 30,
            bandwidth_gbs: None,
            seed: 7,
        }
    }
}

/// Runs one beam step on some device, timed.
trait StepRunner {
    /// Runs the step `reps` times (after one untimed run); returns its output
    /// and the seconds of each timed run (launch to completion).
    fn run(&mut self, trie: &Trie, depth: usize, shape: StepShape, input: &StepInput, filters: &LevelFilters, reps: usize)
        -> Result<(StepOutput, Vec<f64>), CheckError>;
    /// Seconds to launch an empty kernel and wait for it (0 on the CPU).
    fn launch_floor(&mut self) -> Result<f64, CheckError>;
    fn name(&self) -> String;
}

/// The kernel's CPU port.
struct MirrorRunner;

impl StepRunner for MirrorRunner {
    fn run(&mut self, trie: &Trie, depth: usize, shape: StepShape, input: &StepInput, filters: &LevelFilters, reps: usize)
        -> Result<(StepOutput, Vec<f64>), CheckError> {
        let a = trie.arrays();
        let out = beam_step_mirror(&a, depth, shape, input, filters, 0, 0).map_err(CheckError::Other)?;
        let times = (0..reps)
            .map(|_| {
                let t = Instant::now();
                let _ = std::hint::black_box(beam_step_mirror(&a, depth, shape, input, filters, 0, 0));
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
    fn run(&mut self, trie: &Trie, depth: usize, shape: StepShape, input: &StepInput, filters: &LevelFilters, reps: usize)
        -> Result<(StepOutput, Vec<f64>), CheckError> {
        use crate::generate::kernel::cuda::{self, GpuFilters, Scratch, StepArgs};
        use crate::generate::kernel::gpu_search::device_trie;
        let dev = &self.dev;
        let d = Device::Cuda(dev.clone());
        let rows = shape.requests * shape.beams_in;
        let logits = candle_core::Tensor::from_slice(input.logits, (rows, input.ld), &d)?;
        let norm = input.norm.map(|n| candle_core::Tensor::from_slice(n, rows, &d)).transpose()?;
        let scores = dev.clone_htod(input.scores)?;
        let nodes = dev.clone_htod(input.nodes)?;
        let gtrie = device_trie(dev, trie)?;
        let gf = GpuFilters::upload(dev, filters)?;
        let args = StepArgs { logits: &logits, col0: input.col0, norm: norm.as_ref(), scores: &scores, nodes: &nodes, token_offset: 0, pad_token: 0 };
        let mut scratch = Scratch::default();
        let out = cuda::beam_step(dev, &gtrie, depth, shape, &args, &gf, &mut scratch)?;
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
            std::hint::black_box(cuda::beam_step(dev, &gtrie, depth, shape, &args, &gf, &mut scratch)?);
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

fn runner(device: &Device) -> Box<dyn StepRunner> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => Box::new(CudaRunner { dev: dev.clone() }),
        _ => Box::new(MirrorRunner),
    }
}

/// Memory bandwidth by card name (GB/s, the vendor's figure).
fn bandwidth_for(name: &str) -> Option<f64> {
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
fn compare_steps(want: &StepOutput, got: &StepOutput, requests: usize, beams: usize, tol: f32) -> Result<f32, String> {
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
                return Err(format!("request {r} slot {}: score {} vs reference {}", s - r * beams, got.score[s], want.score[s]));
            }
        }
        if let Some(s) = slots.clone().find(|&s| got.node[s] != NONE && !got.score[s].is_finite()) {
            return Err(format!("request {r} slot {}: a live beam with score {}", s - r * beams, got.score[s]));
        }
        let last = slots.clone().filter(|&s| want.node[s] != NONE).map(|s| want.score[s]).fold(f32::INFINITY, f32::min);
        let (w, g) = (tuples(want), tuples(got));
        for s in slots.clone().filter(|&s| got.node[s] != NONE && !w.contains(&(got.parent[s], got.code[s], got.node[s]))) {
            if (got.score[s] - last).abs() > tol {
                return Err(format!("request {r}: extra continuation (parent {}, code {}) scores {}", got.parent[s], got.code[s], got.score[s]));
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

/// Part 1a: random tries and logits, every depth, with and without the
/// model's normaliser, with intents and exclusions, and in every fourth case
/// with non-finite logits and normalisers ([`poison`]). Scores must agree
/// within 1e-4 (the kernel's expf/logf are not the CPU's correctly rounded
/// ones), so a near-tie at the last kept place may go either way.
fn check_steps(run: &mut dyn StepRunner, seed: u64) -> Result<Value, CheckError> {
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
            let level: Vec<f32> = (0..requests * beams_in).flat_map(|b| st.logits[b * st.ld + st.col0..][..codes].to_vec()).collect();
            for norm in [None, Some(&st.norm[..])] {
                let shape = StepShape { requests, beams_in, beams_out, codes };
                let want = beam_step(&crate::catalog::TrieView::new(&trie, None), shape, &level, &st.scores, &st.nodes, norm, |r, ch| filters.keep(r, ch));
                let input = StepInput { logits: &st.logits, ld: st.ld, col0: st.col0, norm, scores: &st.scores, nodes: &st.nodes };
                let (got, _) = run.run(&trie, depth, shape, &input, &filters, 0)?;
                let d = compare_steps(&want, &got, requests, beams_out, 1e-4)
                    .map_err(|e| CheckError::Other(format!("beam step case {case} depth {depth} ({requests}x{beams_in}->{beams_out}): {e}")))?;
                worst = worst.max(d);
                cases += 1;
            }
        }
    }
    Ok(json!({"cases": cases, "max_score_diff": worst, "ok": true}))
}

fn random_filters(trie: &Trie, depth: usize, requests: usize, rng: &mut ChaCha8Rng) -> LevelFilters {
    use crate::generate::kernel::NodeLists;
    let ls = trie.arrays().level_start;
    let mut lists = |lo: u32, hi: u32, count: usize| {
        let per_request: Vec<Vec<u32>> =
            (0..requests).map(|_| (0..rng.random_range(0..=count)).map(|_| rng.random_range(lo..hi)).collect()).collect();
        NodeLists::from_lists(per_request.into_iter())
    };
    match depth {
        0 => LevelFilters { allow: Some(lists(ls[1], ls[2], 6)), ban: None },
        2 => LevelFilters { allow: None, ban: Some(lists(ls[3], ls[4], 50)) },
        _ => LevelFilters::default(),
    }
}

/// Part 2: the step's time over large tries, beside its floors.
fn time_steps(run: &mut dyn StepRunner, opts: &CheckOptions, bandwidth: Option<f64>) -> Result<Vec<Value>, CheckError> {
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
            eprintln!("gpu-check: trie of {} items ({codes} codes per level) built in {:.1} s", trie.num_items(), t0.elapsed().as_secs_f64());
            for depth in [1usize, 2] {
                let layout = if trie.arrays().dense_table(depth).is_some() { "dense" } else { "csr" };
                for &r in &opts.batches {
                    for &b in &opts.beams {
                        let codes = codes as usize;
                        let st = random_step(&trie, depth, r * b, codes, &mut rng);
                        let shape = StepShape { requests: r, beams_in: b, beams_out: b, codes };
                        let input = StepInput { logits: &st.logits, ld: st.ld, col0: st.col0, norm: Some(&st.norm), scores: &st.scores, nodes: &st.nodes };
                        // the last level carries each request's exclusions
                        let filters = if depth == 2 { history_bans(&trie, r, &mut rng) } else { LevelFilters::default() };
                        let (_, mut times) = run.run(&trie, depth, shape, &input, &filters, opts.reps.max(1))?;
                        times.sort_by(f64::total_cmp);
                        let med = percentile(&times, 0.5).unwrap_or(0.0);
                        // bytes the step cannot avoid: its logits window, normalisers,
                        // beam state in and out, and the trie rows of its beams
                        let ls = trie.arrays().level_start;
                        let children = if layout == "dense" {
                            codes
                        } else {
                            ((ls[depth + 2] - ls[depth + 1]) as usize).div_ceil(((ls[depth + 1] - ls[depth]) as usize).max(1)) + 2
                        };
                        let bytes = (r * b) * (codes * 4 + 4 + 8 + children * 4) + r * b * 24;
                        let floor_mem = bandwidth.map(|gbs| bytes as f64 / (gbs * 1e9));
                        rows.push(json!({
                            "items": trie.num_items(), "codes": codes, "depth": depth, "layout": layout, "batch": r, "beam": b,
                            "filters": if depth == 2 { "20 banned items per request" } else { "none" },
                            "step_us": med * 1e6, "floor_memory_us": floor_mem.map(|f| f * 1e6), "floor_launch_us": floor_launch * 1e6,
                            "bytes": bytes,
                        }));
                    }
                }
            }
        }
    }
    Ok(rows)
}

/// Random histories of real items, the same for both devices.
fn histories(catalog: &Catalog, n: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| (0..len).map(|_| rng.random_range(0..catalog.len() as u32)).collect()).collect()
}

fn requests(h: &[Vec<u32>], k: usize) -> Vec<GenRequest> {
    h.iter()
        .map(|h| GenRequest { history: h.clone(), k, exclude: h.iter().copied().collect(), ..Default::default() })
        .collect()
}

/// Why an f32 end-to-end comparison fails: any list that differs from the
/// CPU's (the check then exits non-zero).
fn e2e_mismatch(e2e: &Value) -> Option<String> {
    let (same, n) = (e2e["identical_lists"].as_u64(), e2e["requests"].as_u64());
    match (same, n) {
        (Some(s), Some(n)) if s == n && n > 0 => None,
        (Some(s), Some(n)) => Some(format!("{} of {n} top-10 lists differ from the CPU reference", n - s.min(n))),
        _ => Some(format!("no comparison in {e2e}")),
    }
}

/// Part 1b: the same checkpoint on the device and on the CPU gives the same items.
fn check_e2e(dev_model: &Model, cpu_model: &Model, catalog: &Catalog, opts: &CheckOptions) -> Result<Value, CheckError> {
    let h = histories(catalog, opts.e2e_requests, opts.history_items, opts.seed);
    let mut reqs = requests(&h, 10);
    // every third request is a personalized search over every fifth item
    // (allow lists at every level, on both devices)
    let fifths: std::sync::Arc<[u32]> = (0..catalog.len() as u32).step_by(5).collect::<Vec<u32>>().into();
    for q in reqs.iter_mut().skip(2).step_by(3) {
        q.allowed = Some(fifths.clone());
    }
    let a = generate(dev_model, catalog, &reqs, 64)?;
    let b = generate(cpu_model, catalog, &reqs, 64)?;
    let same = a.hits.iter().zip(&b.hits).filter(|(x, y)| x.iter().map(|h| h.item).eq(y.iter().map(|h| h.item))).count();
    let worst = a
        .hits
        .iter()
        .zip(&b.hits)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p.score - q.score).abs()))
        .fold(0f32, f32::max);
    // decoded tokens are the live beams of every level on both devices
    Ok(json!({"model": dev_model.label(), "history_items": opts.history_items, "requests": reqs.len(), "identical_lists": same, "max_score_diff": worst, "tokens_device": a.tokens, "tokens_cpu": b.tokens}))
}

/// Part 3: batches through `generate` on one device.
fn time_e2e(model: &Model, catalog: &Catalog, batch: usize, beam: usize, reps: usize, opts: &CheckOptions) -> Result<Value, CheckError> {
    let h = histories(catalog, batch, opts.history_items, opts.seed);
    let reqs = requests(&h, 10);
    generate(model, catalog, &reqs, beam)?; // warm-up (kernel JIT, allocations)
    let mut times = Vec::with_capacity(reps);
    let mut tokens = 0;
    for _ in 0..reps {
        let t = Instant::now();
        tokens = generate(model, catalog, &reqs, beam)?.tokens;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = percentile(&times, 0.5).unwrap_or(f64::NAN);
    Ok(json!({
        "batch": batch, "beam": beam, "reps": reps,
        "requests_per_s": batch as f64 / med,
        "tokens_per_s": tokens as f64 / med,
        "p50_ms": med * 1e3,
        "p99_ms": percentile(&times, 0.99).unwrap_or(f64::NAN) * 1e3,
    }))
}

/// The checkpoint (or synthetic model) and its catalog on `device`; a
/// synthetic catalog is built once and passed in as `synthetic`.
fn load_models(opts: &CheckOptions, synthetic: Option<&Catalog>, device: &Device, dtype: candle_core::DType) -> Result<(Model, Catalog), CheckError> {
    if let (Some(spec), Some(cat)) = (&opts.synthetic, synthetic) {
        return Ok((spec.model(cat, opts.history_items.max(20), opts.seed, device, dtype)?, cat.clone()));
    }
    match &opts.model {
        Some(dir) => crate::engine::pair::load_pair(dir, opts.catalog.as_deref(), device, dtype).map_err(|e| CheckError::Other(e.to_string())),
        None => crate::server::default_model::load_as(device, dtype).map_err(|e| CheckError::Other(e.to_string())),
    }
}

/// Runs all three parts; prints a table to stdout and returns the JSON report.
pub fn run(opts: &CheckOptions) -> Result<Value, CheckError> {
    let device = opts.device.open()?;
    let mut step = runner(&device);
    let card = step.name();
    let bandwidth = opts.bandwidth_gbs.or_else(|| bandwidth_for(&card));
    println!("# genrec gpu-check on {card}");
    // A device run is scarce: a part that fails is reported and the others
    // still run; the whole check fails at the end.
    let mut failures: Vec<String> = Vec::new();
    let mut soft = |part: &str, r: Result<Value, CheckError>| match r {
        Ok(v) => v,
        Err(e) => {
            println!("FAILED ({part}): {e}");
            failures.push(format!("{part}: {e}"));
            Value::Null
        }
    };

    let t = Instant::now();
    println!("\n## 1. Correctness");
    let steps = soft("beam step vs CPU", check_steps(step.as_mut(), opts.seed));
    if !steps.is_null() {
        println!("beam step vs CPU reference: {} cases, same top-B (max |score diff| {:.2e}) [{:.1} s]",
            steps["cases"], steps["max_score_diff"].as_f64().unwrap_or(0.0), t.elapsed().as_secs_f64());
    }
    let synthetic = match &opts.synthetic {
        Some(spec) => {
            let t = Instant::now();
            let c = spec.catalog(opts.seed)?;
            println!("synthetic: {} over {} random semantic IDs {:?} [{:.1} s]", spec.shape.name(), c.len(), spec.layout.codebook_sizes(), t.elapsed().as_secs_f64());
            Some(c)
        }
        None => None,
    };
    let synthetic = synthetic.as_ref();
    let loaded = load_models(opts, synthetic, &device, candle_core::DType::F32)
        .and_then(|(dev, cat)| Ok((dev, load_models(opts, synthetic, &Device::Cpu, candle_core::DType::F32)?.0, cat)));
    let (models, e2e) = match loaded {
        Ok((dev_model, cpu_model, catalog)) => {
            let e2e = soft("end-to-end f32", check_e2e(&dev_model, &cpu_model, &catalog, opts));
            if !e2e.is_null() {
                println!("end-to-end ({}, {} items): {}/{} requests with identical top-10 lists, max |score diff| {:.2e}",
                    dev_model.label(), catalog.len(), e2e["identical_lists"], e2e["requests"], e2e["max_score_diff"].as_f64().unwrap_or(0.0));
                if let Some(why) = e2e_mismatch(&e2e) {
                    soft("end-to-end f32", Err(CheckError::Other(why)));
                }
            }
            (Some((dev_model, cpu_model, catalog)), e2e)
        }
        Err(e) => (None, soft("loading the checkpoint", Err(e))),
    };
    // bf16 on the device: reported beside f32, not required to match exactly
    let mut bf16 = None;
    let mut e2e_bf16 = Value::Null;
    if let (Some((_, cpu_model, catalog)), false) = (&models, device.is_cpu()) {
        let r = load_models(opts, synthetic, &device, candle_core::DType::BF16)
            .and_then(|(m, _)| check_e2e(&m, cpu_model, catalog, opts).map(|r| (m, r)));
        match r {
            Ok((m, r)) => {
                println!("end-to-end in bf16 (informative): {}/{} identical top-10 lists vs the f32 CPU, max |score diff| {:.2e}",
                    r["identical_lists"], r["requests"], r["max_score_diff"].as_f64().unwrap_or(0.0));
                bf16 = Some(m);
                e2e_bf16 = r;
            }
            Err(e) => e2e_bf16 = soft("end-to-end bf16", Err(e)),
        }
    }

    println!("\n## 2. Beam step time (median of {} runs; floors: bytes / {} GB/s, and an empty kernel's launch + sync)", opts.reps,
        bandwidth.map(|b| b.to_string()).unwrap_or_else(|| "?".into()));
    println!("| items | codes | depth | layout | batch | beam | step µs | memory floor µs | launch floor µs |\n|---|---|---|---|---|---|---|---|---|");
    let timing = soft("beam step time", time_steps(step.as_mut(), opts, bandwidth).map(Value::from));
    for r in timing.as_array().into_iter().flatten() {
        println!("| {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} |", r["items"], r["codes"], r["depth"], r["layout"].as_str().unwrap_or(""), r["batch"], r["beam"],
            r["step_us"].as_f64().unwrap_or(0.0),
            r["floor_memory_us"].as_f64().map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
            r["floor_launch_us"].as_f64().unwrap_or(0.0));
    }

    let mut e2e_rows = Vec::new();
    if let Some((dev_model, cpu_model, catalog)) = &models {
        println!("\n## 3. End to end ({}, k = 10, {}-item histories)\n| device | batch | beam | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|", dev_model.label(), opts.history_items);
        for &beam in &opts.e2e_beams {
            for &batch in &opts.batches {
                // on a CPU-only run the device rows would repeat the CPU rows;
                // a synthetic production-size model is not timed on the CPU
                let bf16_name = format!("{card} bf16");
                let mut runs: Vec<(&str, &Model, usize)> = match (device.is_cpu(), opts.synthetic.is_some()) {
                    (true, _) => vec![("cpu", cpu_model, 3)],
                    (false, true) => vec![(card.as_str(), dev_model, 20)],
                    (false, false) => vec![(card.as_str(), dev_model, 20), ("cpu", cpu_model, 3)],
                };
                if let Some(m) = &bf16 {
                    runs.insert(1, (bf16_name.as_str(), m, 20));
                }
                for (name, model, reps) in runs {
                    let mut row = soft(&format!("end-to-end time {name} batch {batch} beam {beam}"), time_e2e(model, catalog, batch, beam, reps, opts));
                    if row.is_null() {
                        continue;
                    }
                    row["device"] = json!(name);
                    println!("| {name} | {batch} | {beam} | {:.1} | {:.2} | {:.2} |", row["requests_per_s"].as_f64().unwrap_or(0.0),
                        row["p50_ms"].as_f64().unwrap_or(0.0), row["p99_ms"].as_f64().unwrap_or(0.0));
                    e2e_rows.push(row);
                }
            }
        }
    }
    let report = json!({
        "card": card, "bandwidth_gbs": bandwidth, "correctness": {"steps": steps, "end_to_end": e2e, "end_to_end_bf16": e2e_bf16},
        "step_times": timing, "end_to_end": e2e_rows, "failures": failures,
    });
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(CheckError::Failed { failures, report: Box::new(report) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole harness on the CPU (the kernel's port standing in): the
    /// comparison must pass and every table must have its rows.
    #[test]
    fn harness_runs_on_the_cpu() {
        let opts = CheckOptions {
            device: DeviceSpec::Cpu,
            trie_items: vec![2_000],
            batches: vec![1, 3],
            beams: vec![8],
            e2e_beams: vec![16],
            reps: 2,
            bandwidth_gbs: Some(100.0),
            ..Default::default()
        };
        let r = run(&opts).unwrap();
        assert_eq!(r["correctness"]["steps"]["ok"], true);
        assert_eq!(r["correctness"]["end_to_end"]["identical_lists"], 64);
        // 2 code widths x 2 depths x 2 batches x 1 beam
        let rows = r["step_times"].as_array().unwrap();
        assert_eq!(rows.len(), 2 * 2 * 2, "{rows:?}");
        assert!(rows.iter().any(|x| x["codes"] == 8192) && rows.iter().any(|x| x["filters"] != "none"));
        assert_eq!(r["end_to_end"].as_array().unwrap().len(), 2);
    }

    /// The same with a synthetic Qwen3-shaped model over a random catalog,
    /// long histories and fewer compared requests.
    #[test]
    fn harness_runs_a_synthetic_model_on_the_cpu() {
        let opts = CheckOptions {
            device: DeviceSpec::Cpu,
            synthetic: Some(Synthetic { shape: crate::model::synthetic::Shape::Tiny, layout: crate::model::synthetic::Layout::OneRec, items: 5_000 }),
            history_items: 100,
            e2e_requests: 6,
            trie_items: vec![2_000],
            batches: vec![2],
            beams: vec![8],
            e2e_beams: vec![16],
            reps: 1,
            bandwidth_gbs: Some(100.0),
            ..Default::default()
        };
        let r = run(&opts).unwrap();
        let e2e = &r["correctness"]["end_to_end"];
        assert_eq!(e2e["identical_lists"], 6, "{e2e}");
        assert!(e2e["model"].as_str().is_some_and(|m| m.starts_with("synthetic-qwen3-tiny/")), "{e2e}");
        assert_eq!(e2e["history_items"], 100);
        assert_eq!(r["end_to_end"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_differing_end_to_end_list_fails_the_check() {
        assert_eq!(e2e_mismatch(&json!({"requests": 64, "identical_lists": 64})), None);
        let why = e2e_mismatch(&json!({"requests": 64, "identical_lists": 63})).unwrap();
        assert!(why.contains("1 of 64"), "{why}");
        assert!(e2e_mismatch(&json!({"requests": 0, "identical_lists": 0})).is_some());
        assert!(e2e_mismatch(&Value::Null).is_some());
    }

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
