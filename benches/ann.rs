//! ANN recall measured honestly: recall@10 of the ANN fallback against exact
//! brute force, for query vectors built the way serving builds them (the
//! recency-weighted mean of a user's history: every item of a test user's
//! sequence but the last), per number of probed cells and for the count the
//! index calibrates itself to (`serve --ann-recall`, default 0.95), beside
//! for the IVF index. In-process: the index alone, no HTTP.
//! `benches/results/ann.md` keeps the tables (with those of the semantic-ID
//! cells and the HNSW graph, measured by this bench before they were
//! removed).
//!
//!     cargo bench --bench ann -- --catalog DIR --data NAME.inter.json [--queries 1000] [--max-probes N]

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;

use genrec::catalog::{dir::open_read_only, Catalog};
use genrec::recall::{Ann, Ivf};

struct Args {
    catalog: PathBuf,
    data: PathBuf,
    queries: usize,
    target: f64,
    max_probes: usize,
}

fn args() -> Args {
    let mut a =
        Args { catalog: PathBuf::new(), data: PathBuf::new(), queries: 1000, target: 0.95, max_probes: 1 << 16 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--catalog" => a.catalog = val().into(),
            "--data" => a.data = val().into(),
            "--queries" => a.queries = val().parse().expect("--queries N"),
            "--target" => a.target = val().parse().expect("--target RECALL"),
            "--max-probes" => a.max_probes = val().parse().expect("--max-probes N"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!a.catalog.as_os_str().is_empty() && !a.data.as_os_str().is_empty(), "--catalog DIR --data FILE");
    a
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Exact top 10 of every query over every served item: items in blocks,
/// each block's vectors converted once and scored against all queries.
fn exact_top10(cat: &Catalog, queries: &[Vec<f32>]) -> Vec<Vec<u32>> {
    let n = cat.len() as u32;
    let dim = queries.first().map_or(0, Vec::len);
    let blocks: Vec<u32> = (0..n).step_by(4096).collect();
    let partial: Vec<Vec<Vec<(f32, u32)>>> = blocks
        .par_iter()
        .map(|&start| {
            let end = (start + 4096).min(n);
            let items: Vec<u32> = (start..end).filter(|&i| cat.is_served(i)).collect();
            let vecs: Vec<f32> = items.iter().flat_map(|&i| cat.embedding(i)).collect();
            queries
                .iter()
                .map(|q| {
                    let mut top: Vec<(f32, u32)> = Vec::with_capacity(11);
                    for (j, v) in vecs.chunks_exact(dim).enumerate() {
                        let mut acc = [0f32; 8];
                        for (a, b) in v.chunks_exact(8).zip(q.chunks_exact(8)) {
                            for l in 0..8 {
                                acc[l] += a[l] * b[l];
                            }
                        }
                        let tail: f32 = v
                            .chunks_exact(8)
                            .remainder()
                            .iter()
                            .zip(q.chunks_exact(8).remainder())
                            .map(|(a, b)| a * b)
                            .sum();
                        let s = acc.iter().sum::<f32>() + tail;
                        if top.len() < 10 || s > top[top.len() - 1].0 {
                            top.push((s, items[j]));
                            top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                            top.truncate(10);
                        }
                    }
                    top
                })
                .collect()
        })
        .collect();
    (0..queries.len())
        .map(|qi| {
            let mut all: Vec<(f32, u32)> = partial.iter().flat_map(|b| b[qi].iter().copied()).collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.into_iter().take(10).map(|x| x.1).collect()
        })
        .collect()
}

/// The next probe count of a sweep, about √2 apart: 1, 2, 3, 4, 6, 8, 12, ...
fn next_probes(p: usize) -> usize {
    if p >= 2 && p.is_power_of_two() {
        p + p / 2
    } else {
        p.next_power_of_two().max(p + 1)
    }
}

/// Recall@10 and latency of `search` over the queries.
fn measure(queries: &[Vec<f32>], exact: &[Vec<u32>], search: impl Fn(&[f32]) -> Vec<u32>) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(queries.len());
    let (mut found, mut total) = (0usize, 0usize);
    for (q, want) in queries.iter().zip(exact) {
        let t = Instant::now();
        let got = search(q);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        found += got.iter().filter(|i| want.contains(i)).count();
        total += want.len();
    }
    times.sort_by(f64::total_cmp);
    (found as f64 / total.max(1) as f64, percentile(&times, 0.5), percentile(&times, 0.99))
}

fn main() {
    let a = args();
    let t = Instant::now();
    let (cat, _) = open_read_only(&a.catalog).expect("a catalog folder");
    println!(
        "catalog {} ({} items, {} served) opened in {:.1} s",
        a.catalog.display(),
        cat.len(),
        cat.served_len(),
        t.elapsed().as_secs_f64()
    );
    let inter = genrec::dataset::load_interactions(&a.data).expect("an interactions file");
    let step = (inter.sequences.len() / a.queries).max(1);
    let queries: Vec<Vec<f32>> = inter
        .sequences
        .iter()
        .step_by(step)
        .filter_map(|seq| {
            let hist: Vec<u32> = seq[..seq.len().saturating_sub(1)].iter().filter_map(|id| cat.index_of(id)).collect();
            (!hist.is_empty()).then(|| Ann::user_vector(&cat, &hist))
        })
        .take(a.queries)
        .collect();
    let t = Instant::now();
    let exact = exact_top10(&cat, &queries);
    println!(
        "{} queries (users' histories but the last item); exact top 10 by brute force in {:.1} s",
        queries.len(),
        t.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let t = Instant::now();
    let ivf = Ivf::open(&cat, a.target).expect("the IVF index");
    let ivf_open_s = t.elapsed().as_secs_f64();
    println!(
        "ivf index ({} cells, {}) opened in {:.2} s: {} probes for {:.2}; calibration curve {:?}",
        ivf.cells(),
        if ivf.is_mapped() { "mapped from the version" } else { "built at open" },
        ivf_open_s,
        ivf.probes(),
        a.target,
        ivf.curve()
    );
    println!("\n| index | probes | recall@10 | p50 ms | p99 ms |\n|---|---|---|---|---|");
    let mut probes = 1;
    while probes <= a.max_probes.min(ivf.cells()) {
        let (r, p50, p99) = measure(&queries, &exact, |q| {
            ivf.nearest_probing(&cat, q, 10, probes, |_| true).into_iter().map(|x| x.0).collect()
        });
        let mark = if probes == ivf.probes() { " (calibrated)" } else { "" };
        println!("| ivf | {probes}{mark} | {r:.4} | {p50:.2} | {p99:.2} |");
        rows.push(serde_json::json!({"index": "ivf", "probes": probes, "calibrated": probes == ivf.probes(), "recall_at_10": r, "p50_ms": p50, "p99_ms": p99}));
        if r >= 0.9995 && probes >= ivf.probes() {
            break;
        }
        probes = next_probes(probes);
    }
    println!("\npeak RSS {:.0} MB", peak_rss_mb());
    println!(
        "{}",
        serde_json::json!({"catalog": a.catalog, "items": cat.len(), "queries": queries.len(), "ivf_cells": ivf.cells(), "ivf_probes": ivf.probes(), "ivf_open_s": ivf_open_s, "ivf_mapped": ivf.is_mapped(), "rows": rows, "peak_rss_mb": peak_rss_mb()})
    );
}
