//! genrec's half of the speed comparison with transformers' constrained beam
//! search (`benches/vs_transformers.sh` runs both halves and prints the table).
//!
//! On the test histories of a data set (last 20 items, evenly spaced users) it
//! measures, for each beam width B (k = B): batched throughput (requests per
//! second over all users, in batches of `--batch` requests of similar history
//! length) and single-request latency
//! (median over `--single` requests, one at a time). It writes
//! `requests.json` (token sequences, the items' token tuples) for the Python
//! half and `genrec.json` (timings, each request's top-k item ids).
//!
//! The two measurements want different thread set-ups: throughput is best
//! with one worker per core, each running whole batches on single-threaded
//! kernels; a single request is fastest with the kernels spread over the
//! cores. A process fixes its kernels' thread count at start, so
//! `benches/vs_transformers.sh` runs `--phase batched --workers CORES` and
//! then `--phase single`, which adds its latencies to the same genrec.json.
//!
//! cargo bench --bench generate_vs_hf -- --model DIR --data NAME.inter.json --out DIR [--phase both|batched|single]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use genrec::dataset::{self, Split};
use genrec::engine::Pair;
use genrec::generate::{generate, GenRequest};
use genrec::train::eval::examples;
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Model folder (its genrec.json names the catalog).
    #[arg(long)]
    model: PathBuf,
    /// Interactions file; the test split's histories are the requests.
    #[arg(long)]
    data: PathBuf,
    /// Output folder for requests.json and genrec.json.
    #[arg(long)]
    out: PathBuf,
    /// Users (evenly spaced) whose test histories are sent.
    #[arg(long, default_value_t = 256)]
    users: usize,
    /// Requests timed one at a time for the latency median.
    #[arg(long, default_value_t = 50)]
    single: usize,
    /// Requests per batched generation.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Batched phase: this many worker threads, each generating whole batches
    /// with single-threaded kernels (one per core is the best throughput for
    /// small models on the CPU); 1 = one caller with multi-threaded kernels.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Timed passes over all requests in the batched phase (the median is reported).
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// What to measure: `batched` writes genrec.json with throughput and
    /// top-k lists, `single` adds single-request latencies to it, `both` does
    /// both in this process.
    #[arg(long, value_enum, default_value = "both")]
    phase: Phase,
    /// Beam widths (k = B), comma separated.
    #[arg(long, default_value = "10,50", value_delimiter = ',')]
    beams: Vec<usize>,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Both,
    Batched,
    Single,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Requests per second over all `reqs` in batches of similar length (median
/// of `--passes`), and each request's top-k item ids.
fn batched(
    a: &Args,
    model: &genrec::model::Model,
    catalog: &genrec::catalog::Catalog,
    reqs: &[GenRequest],
    tokens: &[Vec<u32>],
    b: usize,
) -> Result<(f64, Vec<Vec<String>>)> {
    // batches of similar history length (less padding), as a server's
    // batcher would form them; the Python half does the same
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by_key(|&i| (tokens[i].len(), i));
    let mut chunks: Vec<Vec<usize>> = order.chunks(a.batch.max(1)).map(<[usize]>::to_vec).collect();
    chunks.reverse();
    let workers = a.workers.max(1);
    // several workers: each runs in its own one-thread rayon pool, so the
    // parallel loops inside candle's ops run where they are called instead of
    // queueing on the one global pool thread that all workers would share
    let pools: Vec<rayon::ThreadPool> = if workers > 1 {
        (0..workers).map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build()).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut topk = vec![Vec::new(); reqs.len()];
    let mut pass_s = Vec::new();
    for _ in 0..a.passes.max(1) {
        let t0 = Instant::now();
        // workers take the next chunk as they finish, longest histories first
        // (a static split leaves one worker with the long batches)
        let next = AtomicUsize::new(0);
        let results: Vec<Vec<(usize, Vec<String>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let (chunks, reqs, next) = (&chunks, &reqs, &next);
                    let pool = pools.get(w);
                    s.spawn(move || -> Result<Vec<(usize, Vec<String>)>> {
                        let work = || -> Result<Vec<(usize, Vec<String>)>> {
                            let mut out = Vec::new();
                            while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                                let batch: Vec<GenRequest> = chunk.iter().map(|&i| reqs[i].clone()).collect();
                                let g = generate(model, catalog, &batch, b)?;
                                for (&i, hs) in chunk.iter().zip(g.hits) {
                                    out.push((
                                        i,
                                        hs.into_iter().map(|h| catalog.item_id(h.item).to_string()).collect(),
                                    ));
                                }
                            }
                            Ok(out)
                        };
                        match pool {
                            Some(p) => p.install(work),
                            None => work(),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("worker panicked")).collect::<Result<Vec<_>>>()
        })?;
        pass_s.push(t0.elapsed().as_secs_f64());
        for (i, ids) in results.into_iter().flatten() {
            topk[i] = ids;
        }
    }
    Ok((reqs.len() as f64 / median(pass_s), topk))
}

fn main() -> Result<()> {
    // the same process settings as `genrec serve`
    genrec::runtime::tune_allocator();
    let a = Args::parse();
    if a.workers > 1 && a.phase != Phase::Single {
        // before any thread exists: every kernel runs on its caller's thread
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    genrec::runtime::pin_thread_count();
    let threads = candle_core::utils::get_num_threads();
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let snap = Pair::load(&a.model, None, &candle_core::Device::Cpu)?;
    let (model, catalog) = (&snap.model, &snap.catalog);
    let inter = dataset::load_interactions(&a.data)?;
    let sc = &model.sidecar;
    let ex = examples(catalog, &inter, Split::Test, sc.max_history_items, Some(a.users));
    let histories: Vec<Vec<u32>> = ex.into_iter().map(|(h, _)| h).collect();
    let tokens: Vec<Vec<u32>> =
        histories.iter().map(|h| sc.history_tokens(h.iter().map(|&i| catalog.sid(i)))).collect();
    let item_tokens: Vec<Vec<u32>> =
        (0..catalog.len() as u32).map(|i| sc.sid_tokens(catalog.sid(i)).collect()).collect();
    let requests = json!({
        "model": a.model,
        "sequences": tokens,
        "item_tokens": item_tokens,
        "item_ids": (0..catalog.len() as u32).map(|i| catalog.item_id(i)).collect::<Vec<_>>(),
        "pad_token_id": sc.pad_token_id,
        "levels": sc.levels(),
        "beams": a.beams,
        "batch": a.batch,
        "passes": a.passes.max(1),
        "single": a.single.min(histories.len()),
    });
    std::fs::write(a.out.join("requests.json"), serde_json::to_vec(&requests)?)?;

    let results_path = a.out.join("genrec.json");
    let mut results = serde_json::Map::new();
    if a.phase == Phase::Single {
        let bytes = std::fs::read(&results_path)
            .with_context(|| format!("--phase single adds to {}: run --phase batched first", results_path.display()))?;
        if let serde_json::Value::Object(m) = serde_json::from_slice(&bytes)? {
            results = m;
        }
    }
    for &b in &a.beams {
        let reqs: Vec<GenRequest> = histories
            .iter()
            .map(|h| GenRequest { history: h.clone(), k: b, exclude: HashSet::new(), ..Default::default() })
            .collect();
        // warm-up (allocator, caches)
        generate(model, catalog, &reqs[..reqs.len().min(a.batch)], b)?;
        let entry = results.entry(b.to_string()).or_insert_with(|| json!({}));
        if a.phase != Phase::Single {
            let (rps, topk) = batched(&a, model, catalog, &reqs, &tokens, b)?;
            eprintln!(
                "genrec B={b}: {rps:.1} req/s batched ({} requests, {} worker(s), median of {} passes)",
                reqs.len(),
                a.workers.max(1),
                a.passes.max(1)
            );
            entry["requests_per_s"] = json!(rps);
            entry["topk"] = json!(topk);
            entry["workers"] = json!(a.workers.max(1));
        }
        if a.phase == Phase::Batched {
            continue;
        }
        let mut lat = Vec::new();
        for r in reqs.iter().take(a.single) {
            let t = Instant::now();
            generate(model, catalog, std::slice::from_ref(r), b)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let p50 = median(lat.clone());
        eprintln!(
            "genrec B={b}: single p50 {p50:.2} ms ({} requests one at a time, kernel threads {})",
            lat.len(),
            threads
        );
        entry["single_p50_ms"] = json!(p50);
        entry["single_ms"] = json!(lat);
        entry["single_threads"] = json!(threads);
    }
    std::fs::write(&results_path, serde_json::to_vec(&serde_json::Value::Object(results))?)?;
    eprintln!("wrote {}/requests.json and genrec.json", a.out.display());
    Ok(())
}
