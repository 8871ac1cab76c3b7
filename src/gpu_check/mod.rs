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
use crate::generate::{generate, generate_ensemble, GenRequest, Scoring};
use crate::model::Model;
use crate::util::percentile;

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

/// The second member of the ensemble check on `device`: the synthetic shape
/// with the next seed, a pattern-moved copy of the demo model, or (for a
/// checkpoint folder) the checkpoint itself.
fn second_member(opts: &CheckOptions, synthetic: Option<&Catalog>, lead: &Model, device: &Device) -> Result<Model, CheckError> {
    let f32 = candle_core::DType::F32;
    match (&opts.synthetic, synthetic, &opts.model) {
        (Some(spec), Some(cat), _) => spec.model(cat, opts.history_items.max(20), opts.seed + 1, device, f32),
        (_, _, Some(_)) => Ok(lead.clone()),
        _ => crate::server::default_model::variant_as(device, f32, 0.5).map_err(|e| CheckError::Other(e.to_string())),
    }
}

/// Part 1c: a two-member ensemble searched on the device (the members' mean
/// log-probability, fed to the kernel) against the CPU search, and how many
/// of its lists differ from its lead's alone (0 when the members are one
/// checkpoint twice: then the check only covers the mean's arithmetic).
fn check_ensemble(members_dev: [&Model; 2], members_cpu: [&Model; 2], catalog: &Catalog, opts: &CheckOptions) -> Result<Value, CheckError> {
    let h = histories(catalog, opts.e2e_requests, opts.history_items, opts.seed ^ 0xe5);
    let reqs = requests(&h, 10);
    let a = generate_ensemble(&members_dev, catalog, &reqs, 64, Scoring::Model)?;
    let b = generate_ensemble(&members_cpu, catalog, &reqs, 64, Scoring::Model)?;
    let lead = generate(members_cpu[0], catalog, &reqs, 64)?;
    let items = |x: &[crate::generate::Hit]| x.iter().map(|h| h.item).collect::<Vec<_>>();
    let same = a.hits.iter().zip(&b.hits).filter(|(x, y)| items(x) == items(y)).count();
    let differ_from_lead = b.hits.iter().zip(&lead.hits).filter(|(x, y)| items(x) != items(y)).count();
    let worst = a.hits.iter().zip(&b.hits).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p.score - q.score).abs())).fold(0f32, f32::max);
    Ok(json!({"requests": reqs.len(), "identical_lists": same, "max_score_diff": worst, "lists_unlike_the_lead": differ_from_lead,
        "tokens_device": a.tokens, "tokens_cpu": b.tokens}))
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
        println!("beam step vs CPU reference: {} cases ({}), same top-B (max |score diff| {:.2e}) [{:.1} s]",
            steps["cases"], steps["kernels"], steps["max_score_diff"].as_f64().unwrap_or(0.0), t.elapsed().as_secs_f64());
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
    let mut e2e_ensemble = Value::Null;
    if let Some((dev_model, cpu_model, catalog)) = &models {
        let r = second_member(opts, synthetic, dev_model, &device)
            .and_then(|d| Ok((d, second_member(opts, synthetic, cpu_model, &Device::Cpu)?)))
            .and_then(|(d, c)| check_ensemble([dev_model, &d], [cpu_model, &c], catalog, opts));
        e2e_ensemble = soft("end-to-end ensemble", r);
        if !e2e_ensemble.is_null() {
            println!("end-to-end, two-member ensemble: {}/{} identical top-10 lists, max |score diff| {:.2e}; {} lists unlike the lead's alone",
                e2e_ensemble["identical_lists"], e2e_ensemble["requests"], e2e_ensemble["max_score_diff"].as_f64().unwrap_or(0.0), e2e_ensemble["lists_unlike_the_lead"]);
            if let Some(why) = e2e_mismatch(&e2e_ensemble) {
                soft("end-to-end ensemble", Err(CheckError::Other(why)));
            }
        }
    }
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
    println!("| items | codes | depth | layout | batch | beam | step µs (radix) | step µs (pool) | memory floor µs | launch floor µs |\n|---|---|---|---|---|---|---|---|---|---|");
    let timing = soft("beam step time", time_steps(step.as_mut(), opts, bandwidth).map(Value::from));
    for r in timing.as_array().into_iter().flatten() {
        println!("| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} |", r["items"], r["codes"], r["depth"], r["layout"].as_str().unwrap_or(""), r["batch"], r["beam"],
            r["step_us"].as_f64().unwrap_or(0.0), r["pool_step_us"].as_f64().unwrap_or(0.0),
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
        "card": card, "bandwidth_gbs": bandwidth, "correctness": {"steps": steps, "end_to_end": e2e, "end_to_end_ensemble": e2e_ensemble, "end_to_end_bf16": e2e_bf16},
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
        let ens = &r["correctness"]["end_to_end_ensemble"];
        assert_eq!(ens["identical_lists"], 64, "{ens}");
        assert!(ens["lists_unlike_the_lead"].as_u64().unwrap() > 0, "the second member never mattered: {ens}");
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
        let ens = &r["correctness"]["end_to_end_ensemble"];
        assert_eq!(ens["identical_lists"], 6, "{ens}");
        assert!(ens["lists_unlike_the_lead"].as_u64().unwrap() > 0, "{ens}");
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
}
