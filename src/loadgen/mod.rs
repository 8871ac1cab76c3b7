//! `genrec bench`: drives a running server over HTTP with real histories (the
//! test-split histories of a `NAME.inter.json` file) and reports successful
//! answers per second, items/s and the latency percentiles of successful
//! answers; 429s and other failures are counted beside them, never in them.
//!
//! Closed loop (`concurrency` clients, each sending its next request when the
//! last one is answered) measures capacity; open loop (Poisson arrivals at
//! `rate` per second, independent of answers) measures latency at a given
//! load, including queueing, as real traffic sees it.

pub mod catalog;

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp};
use serde::Serialize;
use serde_json::{json, Value};

use crate::dataset::{heldout, Interactions, Split};
use crate::util::percentile;

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// This many clients, each waiting for its answer before the next request.
    Closed { concurrency: usize },
    /// Poisson arrivals at this many requests per second.
    Open { rate: f64 },
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    Requests(usize),
    Seconds(f64),
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Server base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub load: Load,
    pub stop: Stop,
    pub k: usize,
    /// Extra fields for every request body (e.g. `strategy`, `timeout_ms`).
    pub extra: serde_json::Map<String, Value>,
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub mode: String,
    pub requests: usize,
    pub ok: usize,
    /// 429 answers.
    pub rejected: usize,
    /// Other failures (non-2xx, transport errors).
    pub errors: usize,
    /// Answers that ANN recall made or filled.
    pub fallbacks: usize,
    pub seconds: f64,
    /// Successful (200) answers per second: the throughput.
    pub ok_per_s: f64,
    /// Every request sent per second, failures included.
    pub attempted_per_s: f64,
    pub items_per_s: f64,
    /// Latency percentiles of the successful answers.
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Median latency of the failed requests (429s, errors), when any.
    pub failed_latency_ms_p50: Option<f64>,
}

impl BenchReport {
    /// A one-screen table.
    pub fn table(&self) -> String {
        let rows = [
            ("mode", self.mode.clone()),
            ("requests", self.requests.to_string()),
            ("ok / 429 / errors", format!("{} / {} / {}", self.ok, self.rejected, self.errors)),
            ("fallback answers", self.fallbacks.to_string()),
            ("seconds", format!("{:.2}", self.seconds)),
            ("ok answers/s (all requests/s)", format!("{:.1} ({:.1})", self.ok_per_s, self.attempted_per_s)),
            ("items/s", format!("{:.1}", self.items_per_s)),
            (
                "ok latency p50 / p90 / p99 / max (ms)",
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2}",
                    self.latency_ms_p50, self.latency_ms_p90, self.latency_ms_p99, self.latency_ms_max
                ),
            ),
            ("failed latency p50 (ms)", self.failed_latency_ms_p50.map_or_else(|| "-".into(), |v| format!("{v:.2}"))),
        ];
        rows.iter().map(|(k, v)| format!("{k:<36} {v}\n")).collect()
    }
}

/// One answered (or failed) request.
#[derive(Default)]
struct Tally {
    /// Latencies of successful answers.
    latencies: Vec<f64>,
    /// Latencies of failed requests.
    failed: Vec<f64>,
    ok: usize,
    rejected: usize,
    errors: usize,
    fallbacks: usize,
    items: usize,
}

/// Histories (item ids, the last 20) of the users' test split: every user's,
/// or `users` of them at even spacing. These are the users
/// `benches/generate_vs_hf.rs` sends in process with the same `--users` when
/// every id of the file is in the catalog and the model reads 20 items (as
/// for the demo and Beauty models); otherwise the two sets differ.
pub fn histories(inter: &Interactions, users: usize) -> Vec<Vec<String>> {
    let all = inter
        .sequences
        .iter()
        .filter_map(|s| heldout(s, Split::Test, 20).map(|(h, _)| h))
        .filter(|h| !h.is_empty())
        .collect();
    crate::dataset::evenly_spaced(all, users)
}

async fn one(client: &reqwest::Client, url: &str, body: Value, tally: &Mutex<Tally>) {
    let t0 = Instant::now();
    let res = client.post(url).json(&body).send().await;
    let (status, v) = match res {
        Ok(r) => {
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut t = tally.lock();
    match status {
        200 => {
            t.latencies.push(ms);
            t.ok += 1;
            t.items += v["items"].as_array().map_or(0, Vec::len);
            if !v["fallback"].is_null() {
                t.fallbacks += 1;
            }
        }
        429 => {
            t.failed.push(ms);
            t.rejected += 1;
        }
        _ => {
            t.failed.push(ms);
            t.errors += 1;
        }
    }
}

/// Runs the benchmark against a server.
/// The load generators' HTTP client: every request gives up after 30 s (a
/// hung server shows as errors, not as a bench that never ends).
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

pub async fn run(opts: &BenchOptions, histories: &[Vec<String>]) -> BenchReport {
    let url = format!("{}/v1/recommend", opts.url.trim_end_matches('/'));
    let client = http_client();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let issued = Arc::new(AtomicUsize::new(0));
    let body = {
        let extra = opts.extra.clone();
        let k = opts.k;
        let hist: Arc<Vec<Vec<String>>> = Arc::new(histories.to_vec());
        move |i: usize| {
            let mut b = extra.clone();
            b.insert("history".into(), json!(hist[i % hist.len().max(1)]));
            b.insert("k".into(), json!(k));
            Value::Object(b)
        }
    };
    let start = Instant::now();
    let done = {
        let stop = opts.stop;
        move |n: usize| match stop {
            Stop::Requests(max) => n >= max,
            Stop::Seconds(s) => start.elapsed().as_secs_f64() >= s,
        }
    };
    let mode = match opts.load {
        Load::Closed { concurrency } => {
            let mut tasks = Vec::new();
            for _ in 0..concurrency.max(1) {
                let (client, url, tally, issued, body) =
                    (client.clone(), url.clone(), tally.clone(), issued.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = issued.fetch_add(1, Ordering::SeqCst);
                        if done(n) {
                            break;
                        }
                        one(&client, &url, body(n), &tally).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            format!("closed loop, concurrency {concurrency}")
        }
        Load::Open { rate } => {
            let gap = Exp::new(rate.max(1e-3)).unwrap_or_else(|_| Exp::new(1.0).expect("valid rate"));
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            let mut next = Instant::now();
            let mut tasks = Vec::new();
            let mut n = 0;
            while !done(n) {
                next += Duration::from_secs_f64(gap.sample(&mut rng));
                tokio::time::sleep_until(next.into()).await;
                let (client, url, tally, b) = (client.clone(), url.clone(), tally.clone(), body(n));
                tasks.push(tokio::spawn(async move { one(&client, &url, b, &tally).await }));
                n += 1;
            }
            for t in tasks {
                let _ = t.await;
            }
            format!("open loop, Poisson {rate} req/s")
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let t = tally.lock();
    let mut lat = t.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let mut failed = t.failed.clone();
    failed.sort_by(f64::total_cmp);
    let requests = t.ok + t.rejected + t.errors;
    BenchReport {
        mode,
        requests,
        ok: t.ok,
        rejected: t.rejected,
        errors: t.errors,
        fallbacks: t.fallbacks,
        seconds,
        ok_per_s: t.ok as f64 / seconds.max(1e-9),
        attempted_per_s: requests as f64 / seconds.max(1e-9),
        items_per_s: t.items as f64 / seconds.max(1e-9),
        latency_ms_p50: percentile(&lat, 0.5).unwrap_or(0.0),
        latency_ms_p90: percentile(&lat, 0.9).unwrap_or(0.0),
        latency_ms_p99: percentile(&lat, 0.99).unwrap_or(0.0),
        latency_ms_max: lat.last().copied().unwrap_or(0.0),
        failed_latency_ms_p50: percentile(&failed, 0.5),
    }
}
