//! `genrec bench-catalog`: live catalog edits against a running server, with
//! recommendation traffic beside them, through HTTP as a frontend and an
//! indexing pipeline would send them.
//!
//! 1. idle: recommendation latency with `concurrency` closed-loop clients;
//! 2. stream: NDJSON batches of upserts back to back for `seconds` (new items
//!    drawn from the synthetic catalog's mixture), the same clients running:
//!    upserts/s, and recommendation latency during the stream;
//! 3. singles: one-item upserts one after another: their latency;
//! 4. read-back: every single upsert's item is served (`GET /admin/items`)
//!    right after its answer.
//!
//! Latencies are of successful answers only; failures are counted beside them.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::dataset::synth::{Mixture, SynthOptions};
use crate::engine::edits::BatchPlacement;
use crate::util::percentile;

#[derive(Debug, Clone)]
pub struct CatalogBenchOptions {
    pub url: String,
    pub token: String,
    /// Recommendation histories (item ids).
    pub histories: Vec<Vec<String>>,
    /// The synthetic catalog the server serves (for new items' vectors).
    pub synth: SynthOptions,
    pub concurrency: usize,
    pub idle_seconds: f64,
    pub stream_seconds: f64,
    pub batch: usize,
    /// Concurrent batch senders.
    pub writers: usize,
    pub singles: usize,
    pub k: usize,
}

/// Latency percentiles of successful calls, and the failures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub ok: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub per_s: f64,
}

/// An error with its causes ("error sending request" says nothing of a
/// timeout or a closed connection; its sources do).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn latency(mut ms: Vec<f64>, failed: usize, seconds: f64) -> Latency {
    ms.sort_by(f64::total_cmp);
    Latency {
        ok: ms.len(),
        failed,
        p50_ms: percentile(&ms, 0.5).unwrap_or(0.0),
        p99_ms: percentile(&ms, 0.99).unwrap_or(0.0),
        max_ms: ms.last().copied().unwrap_or(0.0),
        per_s: ms.len() as f64 / seconds.max(1e-9),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CatalogBenchReport {
    pub recommend_idle: Latency,
    pub recommend_during_stream: Latency,
    /// p99 during the stream over p99 idle.
    pub recommend_p99_ratio: f64,
    /// Items applied by the batch endpoint.
    pub upserts_applied: usize,
    /// Lines the batch endpoint refused (a full catalog among the reasons).
    pub upsert_errors: usize,
    /// Where the applied items' semantic IDs landed (the batch answers'
    /// `placement`, summed up).
    pub placement: BatchPlacement,
    pub stream_seconds: f64,
    pub upserts_per_s: f64,
    /// Latency of one batch request.
    pub batch_latency: Latency,
    pub single_upsert: Latency,
    /// Single upserts whose item was not served right after the answer.
    pub not_visible_after_ack: usize,
}

impl CatalogBenchReport {
    pub fn table(&self) -> String {
        let l = |x: &Latency| {
            format!("{:.2} / {:.2} / {:.2} ms ({} ok, {} failed)", x.p50_ms, x.p99_ms, x.max_ms, x.ok, x.failed)
        };
        let rows = [
            ("recommend idle p50 / p99 / max", l(&self.recommend_idle)),
            ("recommend during upserts", l(&self.recommend_during_stream)),
            ("p99 during / p99 idle", format!("{:.2}", self.recommend_p99_ratio)),
            (
                "upserts applied (batch endpoint)",
                format!("{} in {:.1} s, {} errors", self.upserts_applied, self.stream_seconds, self.upsert_errors),
            ),
            ("upserts/s", format!("{:.0}", self.upserts_per_s)),
            (
                "placed off the nearest codes",
                format!(
                    "{} of {} (by first level moved {:?}), extra distance mean {:.4}, max {:.4}",
                    self.placement.moved(),
                    self.placement.placed,
                    self.placement.moved_at_level,
                    self.placement.extra_distance_sum / self.placement.moved().max(1) as f64,
                    self.placement.extra_distance_max
                ),
            ),
            ("batch request p50 / p99 / max", l(&self.batch_latency)),
            ("single upsert p50 / p99 / max", l(&self.single_upsert)),
            (
                "served right after the answer",
                format!(
                    "{} of {}",
                    self.single_upsert.ok - self.not_visible_after_ack.min(self.single_upsert.ok),
                    self.single_upsert.ok
                ),
            ),
        ];
        rows.iter().map(|(k, v)| format!("{k:<36} {v}\n")).collect()
    }
}

/// Closed-loop recommendation clients until `stop` (none with concurrency
/// 0); returns (ms, failures).
async fn recommend_clients(o: &CatalogBenchOptions, stop: Arc<AtomicBool>) -> (Vec<f64>, usize) {
    if o.concurrency == 0 {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return (Vec::new(), 0);
    }
    let url = format!("{}/v1/recommend", o.url.trim_end_matches('/'));
    let client = super::http_client();
    let out = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let hist = Arc::new(o.histories.clone());
    let mut tasks = Vec::new();
    for t in 0..o.concurrency {
        let (client, url, out, stop, hist, k) =
            (client.clone(), url.clone(), out.clone(), stop.clone(), hist.clone(), o.k);
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"history": hist[i % hist.len().max(1)], "k": k});
                i += 7;
                let t0 = Instant::now();
                let ok = match client.post(&url).json(&body).send().await {
                    Ok(r) => r.status().is_success() && r.json::<Value>().await.is_ok(),
                    Err(_) => false,
                };
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                let mut g = out.lock();
                if ok {
                    g.0.push(ms);
                } else {
                    g.1 += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let g = out.lock();
    (g.0.clone(), g.1)
}

/// The id of the `n`-th new item (after the catalog's `items`).
fn new_id(o: &SynthOptions, n: usize) -> String {
    format!("new-{}", o.items + n)
}

/// One new item's NDJSON line.
fn item_line(mix: &Mixture, o: &SynthOptions, n: usize) -> String {
    let mut v = vec![0f32; o.dim];
    mix.item(o.items + n, o, &mut v);
    let emb: Vec<String> = v.iter().map(|x| format!("{x:.5}")).collect();
    format!(r#"{{"id":"{}","title":"new item {n}","embedding":[{}]}}"#, new_id(o, n), emb.join(","))
}

/// Runs the four phases.
pub async fn run(o: &CatalogBenchOptions) -> Result<CatalogBenchReport, String> {
    let client = super::http_client();
    let items_url = format!("{}/admin/items", o.url.trim_end_matches('/'));
    let mix = Arc::new(Mixture::new(&o.synth));

    // 1. idle
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        let s = o.idle_seconds;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(s)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let t0 = Instant::now();
    let (idle, idle_failed) = recommend_clients(o, stop).await;
    let _ = timer.await;
    let recommend_idle = latency(idle, idle_failed, t0.elapsed().as_secs_f64());

    // 2. the stream of batches, with the clients running
    let stop = Arc::new(AtomicBool::new(false));
    let readers = {
        let (o2, stop) = (o.clone(), stop.clone());
        tokio::spawn(async move { recommend_clients(&o2, stop).await })
    };
    let start = Instant::now();
    // writers send batches back to back, each building its next batch while
    // the last one is in flight; item numbers come from one counter
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..o.writers.max(1) {
        let (client, url, token, mix, synth, counter) =
            (client.clone(), items_url.clone(), o.token.clone(), mix.clone(), o.synth.clone(), counter.clone());
        let (batch, seconds) = (o.batch, o.stream_seconds);
        writers.push(tokio::spawn(async move {
            let build = |from: usize| {
                let (mix, s) = (mix.clone(), synth.clone());
                tokio::task::spawn_blocking(move || {
                    (from..from + batch).map(|n| item_line(&mix, &s, n)).collect::<Vec<_>>().join("\n")
                })
            };
            let (mut applied, mut errors, mut ms) = (0usize, 0usize, Vec::new());
            let mut placement = BatchPlacement::default();
            let mut pending = build(counter.fetch_add(batch, Ordering::SeqCst));
            while start.elapsed().as_secs_f64() < seconds {
                let body = pending.await.map_err(|e| e.to_string())?;
                pending = build(counter.fetch_add(batch, Ordering::SeqCst));
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| format!("after {:.1} s: {}", t.elapsed().as_secs_f64(), error_chain(&e)))?;
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                if status != 200 {
                    return Err(format!("batch answered {status}: {v}"));
                }
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                applied += v["applied"].as_u64().unwrap_or(0) as usize;
                errors += v["errors"].as_array().map_or(0, Vec::len);
                placement.merge(&serde_json::from_value(v["placement"].clone()).unwrap_or_default());
            }
            Ok::<_, String>((applied, errors, ms, placement))
        }));
    }
    let (mut applied, mut errors, mut batch_ms) = (0usize, 0usize, Vec::new());
    let mut placement = BatchPlacement::default();
    for w in writers {
        let (a, e, ms, p) = w.await.map_err(|e| e.to_string())??;
        applied += a;
        errors += e;
        batch_ms.extend(ms);
        placement.merge(&p);
    }
    let next = counter.load(Ordering::SeqCst);
    let stream_seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (during, during_failed) = readers.await.map_err(|e| e.to_string())?;
    let recommend_during_stream = latency(during, during_failed, stream_seconds);
    let batch_latency = latency(batch_ms, 0, stream_seconds);

    // 3-4. single upserts, each read back at once
    let mut single_ms = Vec::new();
    let (mut single_failed, mut invisible) = (0, 0);
    let t0 = Instant::now();
    for s in 0..o.singles {
        let n = next + s;
        let line = item_line(&mix, &o.synth, n);
        let t = Instant::now();
        let r = client
            .post(&items_url)
            .bearer_auth(&o.token)
            .header("content-type", "application/json")
            .body(line)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                single_ms.push(t.elapsed().as_secs_f64() * 1e3);
                let got: Value = client
                    .get(format!("{items_url}/{}", new_id(&o.synth, n)))
                    .bearer_auth(&o.token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .unwrap_or(Value::Null);
                if got["served"] != json!(true) {
                    invisible += 1;
                }
            }
            _ => single_failed += 1,
        }
    }
    let single_upsert = latency(single_ms, single_failed, t0.elapsed().as_secs_f64());
    Ok(CatalogBenchReport {
        recommend_p99_ratio: recommend_during_stream.p99_ms / recommend_idle.p99_ms.max(1e-9),
        recommend_idle,
        recommend_during_stream,
        upserts_applied: applied,
        upsert_errors: errors,
        placement,
        stream_seconds,
        upserts_per_s: applied as f64 / stream_seconds.max(1e-9),
        batch_latency,
        single_upsert,
        not_visible_after_ack: invisible,
    })
}
