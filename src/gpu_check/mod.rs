//! `genrec gpu-check`: the workload of the device script (scripts/gpu-check.sh).
//!
//! 1. Correctness: the beam step on the device against the CPU reference
//!    ([`crate::generate::step::beam_step`]) on random tries (256 and 8,192
//!    codes per level) and logits, some non-finite (same top-B up to score
//!    differences of 1e-4), and end-to-end generation of a real
//!    checkpoint on the device against the CPU (same items), alone and as
//!    the lead of a two-member ensemble.
//! 2. The step's time for batch 1/16/64 × beam 16/64/256 over tries of 10^4,
//!    10^6 and 10^7 items with 256 codes per level (10^4 and 10^6 with
//!    OneRec's 8,192), at the middle and the last depth (the last with 20
//!    banned items per request, as real requests carry), beside two
//!    floors: the bytes it must move over the card's memory bandwidth, and
//!    the time to launch an empty kernel and wait for it.
//! 3. End-to-end requests/s and latency for batch 1/16/64 at beam 64 and 256,
//!    device and CPU in the same run.
//!
//! 1d. Live catalogs: the step on random catalogs with items added and
//!    removed above their base trie (the kernel reads the overlay's patched
//!    nodes), first-level priors, new items scored as siblings and trending
//!    lifts, against the kernel's CPU port ([`live`]); and the checkpoint's
//!    search on an edited copy of its catalog with all of those, on the
//!    device against the CPU (the same items).
//!
//! On a GPU, part 1b and part 3 also run the GPU search with the pooled
//! beam-step kernel (`"pool"` rows; serving keeps the radix kernel until
//! such a run confirms it).
//!
//! Parts 1a and 2 (the beam step alone) are in [`steps`]; this file holds
//! the options, the end-to-end parts and the run.
//!
//! With `--synthetic qwen3-0.6b|qwen3-1.7b` parts 1b and 3 run a random-weight
//! model of that shape over a random catalog built on the spot ([`synthetic`]),
//! instead of a checkpoint.
//!
//! With `--device cpu` the kernel's CPU port ([`crate::generate::kernel::mirror`])
//! stands in for the kernel, so the harness itself runs (and is tested) on
//! machines without a GPU; its timings then say nothing about a GPU.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::catalog::Catalog;
use crate::device::DeviceSpec;
use crate::generate::kernel::contract::BeamKernel;
use crate::generate::kernel::set_serving_kernel;
use crate::generate::{generate, generate_ensemble, generate_with, GenRequest, Generated, Scoring};
use crate::model::Model;
use crate::util::percentile;

pub mod live;
mod steps;
pub mod synthetic;
pub use steps::random_trie;
use steps::{bandwidth_for, check_steps, runner, time_steps};
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
    /// Timed repetitions per step configuration (end-to-end rows take
    /// their own count: see [`E2E_ROW_SECONDS`]).
    pub reps: usize,
    /// Whether part 2 (the beam step alone) runs; a second model in the same
    /// device session need not time the kernel again.
    pub step_times: bool,
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
            step_times: true,
            bandwidth_gbs: None,
            seed: 7,
        }
    }
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

/// The requests of the end-to-end checks and the CPU's answers to them,
/// computed once and compared with every device run (the CPU reference of
/// a production-size model takes most of a check's time).
struct Reference {
    reqs: Vec<GenRequest>,
    cpu: Generated,
}

/// Part 1b's requests (every third a personalized search over every fifth
/// item: allow lists at every level) and the CPU model's answers.
fn reference(cpu_model: &Model, catalog: &Catalog, opts: &CheckOptions) -> Result<Reference, CheckError> {
    let h = histories(catalog, opts.e2e_requests, opts.history_items, opts.seed);
    let mut reqs = requests(&h, 10);
    let fifths: std::sync::Arc<[u32]> = (0..catalog.len() as u32).step_by(5).collect::<Vec<u32>>().into();
    for q in reqs.iter_mut().skip(2).step_by(3) {
        q.allowed = Some(fifths.clone());
    }
    let cpu = generate(cpu_model, catalog, &reqs, 64)?;
    Ok(Reference { reqs, cpu })
}

fn items(x: &[crate::generate::Hit]) -> Vec<u32> {
    x.iter().map(|h| h.item).collect()
}

/// How many of `got`'s lists equal `want`'s, and the largest score difference.
fn compare(got: &Generated, want: &Generated) -> (usize, f32) {
    let same = got.hits.iter().zip(&want.hits).filter(|(x, y)| items(x) == items(y)).count();
    let worst = got
        .hits
        .iter()
        .zip(&want.hits)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p.score - q.score).abs()))
        .fold(0f32, f32::max);
    (same, worst)
}

/// Part 1b: the model on the device gives the CPU reference's items.
fn check_e2e(
    dev_model: &Model,
    catalog: &Catalog,
    reference: &Reference,
    opts: &CheckOptions,
) -> Result<Value, CheckError> {
    let a = generate(dev_model, catalog, &reference.reqs, 64)?;
    let (same, worst) = compare(&a, &reference.cpu);
    // decoded tokens are the live beams of every level on both devices
    Ok(
        json!({"model": dev_model.label(), "history_items": opts.history_items, "requests": reference.reqs.len(), "identical_lists": same,
        "max_score_diff": worst, "tokens_device": a.tokens, "tokens_cpu": reference.cpu.tokens}),
    )
}

/// Part 1e: the model with its semantic-ID tokens scattered through the
/// vocabulary, as an LLM layout has them ([`crate::model::llm`]): every
/// level's tokens interleaved with the others' and reversed, so that each
/// level's logits are gathered rows and the decoded tokens a lookup. The
/// device search against the CPU search of the same scattered model.
fn check_scattered(
    dev_model: &Model,
    cpu_model: &Model,
    catalog: &Catalog,
    reference: &Reference,
) -> Result<Value, CheckError> {
    let levels = cpu_model.vocab.scattered_levels();
    let err = |e: crate::model::ModelError| CheckError::Other(e.to_string());
    let (dev, cpu) =
        (dev_model.with_token_map(levels.clone()).map_err(err)?, cpu_model.with_token_map(levels).map_err(err)?);
    let a = generate(&dev, catalog, &reference.reqs, 64)?;
    let b = generate(&cpu, catalog, &reference.reqs, 64)?;
    let (same, worst) = compare(&a, &b);
    Ok(
        json!({"requests": reference.reqs.len(), "identical_lists": same, "max_score_diff": worst, "tokens_device": a.tokens, "tokens_cpu": b.tokens}),
    )
}

/// The second member of the ensemble check on `device`: the synthetic shape
/// with the next seed, a pattern-moved copy of the demo model, or (for a
/// checkpoint folder) the checkpoint itself.
fn second_member(
    opts: &CheckOptions,
    synthetic: Option<&Catalog>,
    lead: &Model,
    device: &Device,
) -> Result<Model, CheckError> {
    let f32 = candle_core::DType::F32;
    match (&opts.synthetic, synthetic, &opts.model) {
        (Some(spec), Some(cat), _) => spec.model(cat, opts.history_items.max(20), opts.seed + 1, device, f32),
        (_, _, Some(_)) => Ok(lead.clone()),
        _ => crate::model::demo::variant_as(device, f32, 0.5).map_err(|e| CheckError::Other(e.to_string())),
    }
}

/// Part 1c: a two-member ensemble searched on the device (the members' mean
/// log-probability, fed to the kernel) against the CPU search, on part 1b's
/// requests, and how many of its lists differ from the lead's alone (the
/// reference's; 0 when the members are one checkpoint twice: then the check
/// only covers the mean's arithmetic).
fn check_ensemble(
    members_dev: [&Model; 2],
    members_cpu: [&Model; 2],
    catalog: &Catalog,
    reference: &Reference,
) -> Result<Value, CheckError> {
    let reqs = &reference.reqs;
    let a = generate_ensemble(&members_dev, catalog, reqs, 64, Scoring::Model)?;
    let b = generate_ensemble(&members_cpu, catalog, reqs, 64, Scoring::Model)?;
    let (same, worst) = compare(&a, &b);
    let differ_from_lead = b.hits.iter().zip(&reference.cpu.hits).filter(|(x, y)| items(x) != items(y)).count();
    Ok(
        json!({"requests": reqs.len(), "identical_lists": same, "max_score_diff": worst, "lists_unlike_the_lead": differ_from_lead,
        "tokens_device": a.tokens, "tokens_cpu": b.tokens}),
    )
}

/// A timed end-to-end row takes at least this long (or `reps` batches,
/// whichever comes first) and at least [`MIN_E2E_REPS`] batches.
const E2E_ROW_SECONDS: f64 = 2.0;
const MIN_E2E_REPS: usize = 3;

/// Part 3: batches through `generate` on one device: up to `reps` of them,
/// fewer when one batch takes long (see [`E2E_ROW_SECONDS`]).
fn time_e2e(
    model: &Model,
    catalog: &Catalog,
    batch: usize,
    beam: usize,
    reps: usize,
    scoring: Scoring,
    opts: &CheckOptions,
) -> Result<Value, CheckError> {
    let h = histories(catalog, batch, opts.history_items, opts.seed);
    let reqs = requests(&h, 10);
    let generate = |reqs: &[GenRequest]| generate_with(model, catalog, reqs, beam, scoring);
    let t = Instant::now();
    generate(&reqs)?; // warm-up (kernel JIT, allocations)
    let warm = t.elapsed().as_secs_f64();
    let reps = reps.min(((E2E_ROW_SECONDS / warm.max(1e-6)).ceil() as usize).max(MIN_E2E_REPS));
    let mut times = Vec::with_capacity(reps);
    let mut tokens = 0;
    for _ in 0..reps {
        let t = Instant::now();
        tokens = generate(&reqs)?.tokens;
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

/// Device memory in use (bytes; every model the check holds, the CUDA
/// context and the allocator's cache), or `None` on the CPU.
fn memory_in_use(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, total)| total.saturating_sub(free) as u64);
    }
    let _ = device;
    None
}

/// Published figures that part 3 of a production-size model stands beside
/// (different cards and precisions: read them as context, not as a race).
pub const ANCHORS: [&str; 3] = [
    "NVIDIA recsys-examples SID-GR: Qwen3-1.7B, beam 256, 3 tokens, 1,000-token context, batch 1: 17.6 ms p50 on an H100 (SGLang beam search: 33.5 ms); genrec's target on the H200: <= 12 ms",
    "FlashRec: OneRec-1.7B in FP8, beam 50, RTX 5090: 28.1 requests/s (SGLang 13.9, TensorRT-LLM 12.7, vLLM 3.9); genrec's target on the H200: >= 150 requests/s at the best batch size",
    "STATIC (YouTube): 0.033 ms per constrained decoding step on accelerators; genrec's beam-step target: <= 20 us at batch 64 x beam 256 over 10^6 items",
];

/// The checkpoint (or synthetic model) and its catalog on `device`; a
/// synthetic catalog is built once and passed in as `synthetic`.
fn load_models(
    opts: &CheckOptions,
    synthetic: Option<&Catalog>,
    device: &Device,
    dtype: candle_core::DType,
) -> Result<(Model, Catalog), CheckError> {
    if let (Some(spec), Some(cat)) = (&opts.synthetic, synthetic) {
        return Ok((spec.model(cat, opts.history_items.max(20), opts.seed, device, dtype)?, cat.clone()));
    }
    match &opts.model {
        Some(dir) => crate::engine::pair::load_pair(dir, opts.catalog.as_deref(), device, dtype)
            .map_err(|e| CheckError::Other(e.to_string())),
        None => crate::model::demo::load_as(device, dtype).map_err(|e| CheckError::Other(e.to_string())),
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
        println!(
            "beam step vs CPU reference: {} cases ({}), same top-B (max |score diff| {:.2e}) [{:.1} s]",
            steps["cases"],
            steps["kernels"],
            steps["max_score_diff"].as_f64().unwrap_or(0.0),
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let live_steps = soft("live beam step vs CPU port", live::check_live_steps(step.as_mut(), opts.seed));
    if !live_steps.is_null() {
        println!(
            "beam step on live catalogs (overlay, priors, new items, trending) vs the CPU port: {} cases, {} patched beams, same top-B (max |score diff| {:.2e}) [{:.1} s]",
            live_steps["cases"],
            live_steps["patched_beams"],
            live_steps["max_score_diff"].as_f64().unwrap_or(0.0),
            t.elapsed().as_secs_f64()
        );
    }
    let synthetic = match &opts.synthetic {
        Some(spec) => {
            let t = Instant::now();
            let c = spec.catalog(opts.seed)?;
            println!(
                "synthetic: {} over {} random semantic IDs {:?} [{:.1} s]",
                spec.shape.name(),
                c.len(),
                spec.layout.codebook_sizes(),
                t.elapsed().as_secs_f64()
            );
            Some(c)
        }
        None => None,
    };
    let synthetic = synthetic.as_ref();
    let t = Instant::now();
    let loaded = load_models(opts, synthetic, &device, candle_core::DType::F32)
        .and_then(|(dev, cat)| Ok((dev, load_models(opts, synthetic, &Device::Cpu, candle_core::DType::F32)?.0, cat)));
    let (models, mut e2e) = match loaded {
        Ok(m) => (Some(m), Value::Null),
        Err(e) => (None, soft("loading the checkpoint", Err(e))),
    };
    // the CPU's answers, computed once; without them the comparisons are
    // skipped (and reported), the timings still run
    let reference = match &models {
        Some((_, cpu_model, catalog)) => match reference(cpu_model, catalog, opts) {
            Ok(r) => {
                println!(
                    "CPU reference: {} requests of {} history items [{:.1} s with loading]",
                    r.reqs.len(),
                    opts.history_items,
                    t.elapsed().as_secs_f64()
                );
                Some(r)
            }
            Err(e) => {
                e2e = soft("CPU reference", Err(e));
                None
            }
        },
        None => None,
    };
    if let (Some((dev_model, _, catalog)), Some(reference)) = (&models, &reference) {
        e2e = soft("end-to-end f32", check_e2e(dev_model, catalog, reference, opts));
        if !e2e.is_null() {
            println!(
                "end-to-end ({}, {} items): {}/{} requests with identical top-10 lists, max |score diff| {:.2e}",
                dev_model.label(),
                catalog.len(),
                e2e["identical_lists"],
                e2e["requests"],
                e2e["max_score_diff"].as_f64().unwrap_or(0.0)
            );
            if let Some(why) = e2e_mismatch(&e2e) {
                soft("end-to-end f32", Err(CheckError::Other(why)));
            }
        }
    }
    // the same comparison with the pooled kernel in the GPU search
    let mut e2e_pool = Value::Null;
    if let (Some((dev_model, _, catalog)), Some(reference), false) = (&models, &reference, device.is_cpu()) {
        set_serving_kernel(BeamKernel::POOL);
        let r = check_e2e(dev_model, catalog, reference, opts);
        set_serving_kernel(BeamKernel::Radix);
        e2e_pool = soft("end-to-end f32, pooled kernel", r);
        if !e2e_pool.is_null() {
            println!("end-to-end with the pooled kernel: {}/{} requests with identical top-10 lists, max |score diff| {:.2e}",
                e2e_pool["identical_lists"], e2e_pool["requests"], e2e_pool["max_score_diff"].as_f64().unwrap_or(0.0));
            if let Some(why) = e2e_mismatch(&e2e_pool) {
                soft("end-to-end f32, pooled kernel", Err(CheckError::Other(why)));
            }
        }
    }
    let mut e2e_ensemble = Value::Null;
    if let (Some((dev_model, cpu_model, catalog)), Some(reference)) = (&models, &reference) {
        let r = second_member(opts, synthetic, dev_model, &device)
            .and_then(|d| Ok((d, second_member(opts, synthetic, cpu_model, &Device::Cpu)?)))
            .and_then(|(d, c)| check_ensemble([dev_model, &d], [cpu_model, &c], catalog, reference));
        e2e_ensemble = soft("end-to-end ensemble", r);
        if !e2e_ensemble.is_null() {
            println!("end-to-end, two-member ensemble: {}/{} identical top-10 lists, max |score diff| {:.2e}; {} lists unlike the lead's alone",
                e2e_ensemble["identical_lists"], e2e_ensemble["requests"], e2e_ensemble["max_score_diff"].as_f64().unwrap_or(0.0), e2e_ensemble["lists_unlike_the_lead"]);
            if let Some(why) = e2e_mismatch(&e2e_ensemble) {
                soft("end-to-end ensemble", Err(CheckError::Other(why)));
            }
        }
    }
    let mut e2e_live = Value::Null;
    if let (Some((dev_model, cpu_model, catalog)), Some(reference)) = (&models, &reference) {
        let r = live::check_live_e2e(dev_model, cpu_model, catalog, &reference.reqs, opts.seed);
        e2e_live = soft("end-to-end live catalog", r);
        if !e2e_live.is_null() {
            println!("end-to-end on an edited catalog (+{} items, soft-steered, new-item rule, trending): {}/{} identical top-10 lists, max |score diff| {:.2e}",
                e2e_live["items_added"], e2e_live["identical_lists"], e2e_live["requests"], e2e_live["max_score_diff"].as_f64().unwrap_or(0.0));
            if let Some(why) = e2e_mismatch(&e2e_live) {
                soft("end-to-end live catalog", Err(CheckError::Other(why)));
            }
        }
    }
    let mut e2e_scattered = Value::Null;
    if let (Some((dev_model, cpu_model, catalog)), Some(reference)) = (&models, &reference) {
        e2e_scattered = soft("end-to-end scattered tokens", check_scattered(dev_model, cpu_model, catalog, reference));
        if !e2e_scattered.is_null() {
            println!("end-to-end with the semantic-ID tokens scattered through the vocabulary (LLM layout): {}/{} identical top-10 lists, max |score diff| {:.2e}",
                e2e_scattered["identical_lists"], e2e_scattered["requests"], e2e_scattered["max_score_diff"].as_f64().unwrap_or(0.0));
            if let Some(why) = e2e_mismatch(&e2e_scattered) {
                soft("end-to-end scattered tokens", Err(CheckError::Other(why)));
            }
        }
    }
    // bf16 on the device: reported beside f32, not required to match exactly
    let mut bf16 = None;
    let mut e2e_bf16 = Value::Null;
    if let (Some((_, _, catalog)), false) = (&models, device.is_cpu()) {
        match load_models(opts, synthetic, &device, candle_core::DType::BF16) {
            Ok((m, _)) => {
                if let Some(reference) = &reference {
                    e2e_bf16 = soft("end-to-end bf16", check_e2e(&m, catalog, reference, opts));
                    if !e2e_bf16.is_null() {
                        println!("end-to-end in bf16 (informative): {}/{} identical top-10 lists vs the f32 CPU, max |score diff| {:.2e}",
                            e2e_bf16["identical_lists"], e2e_bf16["requests"], e2e_bf16["max_score_diff"].as_f64().unwrap_or(0.0));
                    }
                }
                bf16 = Some(m);
            }
            Err(e) => e2e_bf16 = soft("loading the model in bf16", Err(e)),
        }
    }

    let mut timing = Value::Null;
    if opts.step_times {
        println!(
            "\n## 2. Beam step time (median of {} runs; floors: bytes / {} GB/s, and an empty kernel's launch + sync)",
            opts.reps,
            bandwidth.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        );
        println!("| items | codes | depth | layout | batch | beam | step µs (radix) | step µs (pool) | memory floor µs | launch floor µs |\n|---|---|---|---|---|---|---|---|---|---|");
        timing = soft("beam step time", time_steps(step.as_mut(), opts, bandwidth).map(Value::from));
        for r in timing.as_array().into_iter().flatten() {
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} |",
                r["items"],
                r["codes"],
                r["depth"],
                r["layout"].as_str().unwrap_or(""),
                r["batch"],
                r["beam"],
                r["step_us"].as_f64().unwrap_or(0.0),
                r["pool_step_us"].as_f64().unwrap_or(0.0),
                r["floor_memory_us"].as_f64().map(|f| format!("{f:.2}")).unwrap_or_else(|| "-".into()),
                r["floor_launch_us"].as_f64().unwrap_or(0.0)
            );
        }
    }

    let mut e2e_rows = Vec::new();
    if let Some((dev_model, cpu_model, catalog)) = &models {
        println!("\n## 3. End to end ({}, k = 10, {}-item histories; GPU memory: in use after the row, every model the check holds)", dev_model.label(), opts.history_items);
        println!("| device | batch | beam | requests/s | tokens/s | p50 ms | p99 ms | GPU memory GiB |\n|---|---|---|---|---|---|---|---|");
        let (bf16_name, pool_name, bf16_pool_name) =
            (format!("{card} bf16"), format!("{card} pool"), format!("{card} bf16 pool"));
        let bf16_trie_name = format!("{card} bf16 trie-scored");
        let (radix, model_scored, trie_scored) = (BeamKernel::Radix, Scoring::Model, Scoring::Trie);
        // the device rows run the radix kernel, the "pool" rows the pooled
        // one; a CPU-only run has only the CPU rows, and a production-size
        // model is timed in bf16 (what --dtype auto serves it in), never on
        // the CPU. A production-size model also gets "trie-scored" rows
        // (scores normalised over the trie's children, whose output layer
        // covers only the level's codes; Model scoring needs the whole
        // vocabulary for its normaliser) at the largest batch: what the
        // full-vocabulary output layer costs.
        let runs: Vec<(&str, &Model, usize, BeamKernel, Scoring)> =
            match (device.is_cpu(), opts.synthetic.is_some(), &bf16) {
                (true, false, _) => vec![("cpu", cpu_model, 3, radix, model_scored)],
                (true, true, _) => vec![
                    ("cpu", cpu_model, 3, radix, model_scored),
                    ("cpu trie-scored", cpu_model, 3, radix, trie_scored),
                ],
                (false, true, Some(b)) => vec![
                    (bf16_name.as_str(), b, 20, radix, model_scored),
                    (bf16_pool_name.as_str(), b, 20, BeamKernel::POOL, model_scored),
                    (bf16_trie_name.as_str(), b, 20, radix, trie_scored),
                ],
                (false, true, None) => vec![
                    (card.as_str(), dev_model, 20, radix, model_scored),
                    (pool_name.as_str(), dev_model, 20, BeamKernel::POOL, model_scored),
                ],
                (false, false, b) => {
                    let mut r = vec![(card.as_str(), dev_model, 20, radix, model_scored)];
                    if let Some(b) = b {
                        r.push((bf16_name.as_str(), b, 20, radix, model_scored));
                    }
                    r.push((pool_name.as_str(), dev_model, 20, BeamKernel::POOL, model_scored));
                    r.push(("cpu", cpu_model, 3, radix, model_scored));
                    r
                }
            };
        let largest_batch = opts.batches.iter().copied().max().unwrap_or(1);
        for &beam in &opts.e2e_beams {
            for &batch in &opts.batches {
                for &(name, model, reps, selection, scoring) in &runs {
                    if scoring == Scoring::Trie && batch != largest_batch {
                        continue;
                    }
                    set_serving_kernel(selection);
                    let row = time_e2e(model, catalog, batch, beam, reps, scoring, opts);
                    set_serving_kernel(BeamKernel::Radix);
                    let mut row = soft(&format!("end-to-end time {name} batch {batch} beam {beam}"), row);
                    if row.is_null() {
                        continue;
                    }
                    row["device"] = json!(name);
                    row["scoring"] = json!(if scoring == Scoring::Trie { "trie" } else { "model" });
                    let mem = if name == "cpu" { None } else { memory_in_use(&device) };
                    row["gpu_memory_bytes"] = json!(mem);
                    println!(
                        "| {name} | {batch} | {beam} | {:.1} | {:.0} | {:.2} | {:.2} | {} |",
                        row["requests_per_s"].as_f64().unwrap_or(0.0),
                        row["tokens_per_s"].as_f64().unwrap_or(0.0),
                        row["p50_ms"].as_f64().unwrap_or(0.0),
                        row["p99_ms"].as_f64().unwrap_or(0.0),
                        mem.map(|m| format!("{:.1}", m as f64 / (1u64 << 30) as f64)).unwrap_or_else(|| "-".into())
                    );
                    e2e_rows.push(row);
                }
            }
        }
        if opts.synthetic.is_some() {
            println!("\nFor context (published figures, other cards):");
            for a in ANCHORS {
                println!("- {a}");
            }
        }
    }
    let report = json!({
        "card": card, "bandwidth_gbs": bandwidth, "correctness": {"steps": steps, "live_steps": live_steps, "end_to_end_live": e2e_live, "end_to_end": e2e, "end_to_end_pool": e2e_pool, "end_to_end_ensemble": e2e_ensemble, "end_to_end_scattered": e2e_scattered, "end_to_end_bf16": e2e_bf16},
        "step_times": timing, "end_to_end": e2e_rows, "anchors": ANCHORS, "failures": failures,
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
        let ens = &r["correctness"]["end_to_end_ensemble"];
        assert_eq!(ens["identical_lists"], 64, "{ens}");
        assert!(ens["lists_unlike_the_lead"].as_u64().unwrap() > 0, "the second member never mattered: {ens}");
        let live = &r["correctness"]["live_steps"];
        assert!(live["cases"].as_u64().unwrap() >= 1000 && live["patched_beams"].as_u64().unwrap() > 500, "{live}");
        let live = &r["correctness"]["end_to_end_live"];
        assert_eq!(live["identical_lists"], 64, "{live}");
        assert_eq!(live["overlay_nodes_patched"], true, "{live}");
        assert!(
            live["items_added"].as_u64().unwrap() > 0 && live["new_items_in_cpu_lists"].as_u64().unwrap() > 0,
            "{live}"
        );
        let scattered = &r["correctness"]["end_to_end_scattered"];
        assert_eq!(scattered["identical_lists"], 64, "{scattered}");
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
            synthetic: Some(Synthetic {
                shape: crate::model::synthetic::Shape::Tiny,
                layout: crate::model::synthetic::Layout::OneRec,
                items: 5_000,
            }),
            history_items: 100,
            e2e_requests: 6,
            trie_items: vec![2_000],
            batches: vec![2],
            beams: vec![8],
            e2e_beams: vec![16],
            reps: 1,
            step_times: false,
            bandwidth_gbs: Some(100.0),
            ..Default::default()
        };
        let r = run(&opts).unwrap();
        assert!(r["step_times"].is_null(), "part 2 was asked to be skipped");
        assert_eq!(r["anchors"].as_array().map(Vec::len), Some(ANCHORS.len()));
        let e2e = &r["correctness"]["end_to_end"];
        assert_eq!(e2e["identical_lists"], 6, "{e2e}");
        // the model-scored row and the trie-scored one at the largest batch
        let rows = r["end_to_end"].as_array().unwrap();
        let scorings: Vec<&str> = rows.iter().map(|x| x["scoring"].as_str().unwrap_or("")).collect();
        assert_eq!(scorings, ["model", "trie"], "{rows:?}");
        assert!(e2e["model"].as_str().is_some_and(|m| m.starts_with("synthetic-qwen3-tiny/")), "{e2e}");
        assert_eq!(e2e["history_items"], 100);
        let ens = &r["correctness"]["end_to_end_ensemble"];
        assert_eq!(ens["identical_lists"], 6, "{ens}");
        assert!(ens["lists_unlike_the_lead"].as_u64().unwrap() > 0, "{ens}");
    }

    #[test]
    fn a_differing_end_to_end_list_fails_the_check() {
        assert_eq!(e2e_mismatch(&json!({"requests": 64, "identical_lists": 64})), None);
        let why = e2e_mismatch(&json!({"requests": 64, "identical_lists": 63})).unwrap();
        assert!(why.contains("1 of 64"), "{why}");
        assert!(e2e_mismatch(&json!({"requests": 0, "identical_lists": 0})).is_some());
        assert!(e2e_mismatch(&Value::Null).is_some());
    }
}
