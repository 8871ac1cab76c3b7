//! The crash harness (`benches/crash.sh` runs it long; the integration test
//! `crash::` runs it short in CI): one server on a durable catalog folder
//! is killed with SIGKILL at a random instant while clients upsert, delete
//! and compact through HTTP, then started again on the same folder, many
//! times over. After every restart:
//! - the catalog opens (the server becomes ready);
//! - every acknowledged edit is there with its acknowledged content: an
//!   acknowledged upsert is served with the semantic ID its answer gave, an
//!   acknowledged delete is not served;
//! - nothing that was never sent is there (ids are never reused), and an
//!   edit in flight at the kill is either wholly there or not at all.
//!
//! Each restart checks every id edited in the round before it and a sample
//! of 200 older ones; the last restart checks them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::{demo_root, Server, TempDir};

const TOKEN: &str = "crash-harness-token-0123456789";

/// What is known of an id: the last acknowledged state, and whether an
/// edit of it was in flight (sent, not answered) when the server died.
#[derive(Debug, Clone, Default)]
struct Known {
    /// `Some(semantic_id)`: served with it; `None`: deleted.
    acked: Option<Option<Vec<u64>>>,
    /// An edit whose outcome is unknown: this state, or the acknowledged one.
    in_flight: Option<Option<()>>,
    /// The round it was last edited in.
    round: usize,
}

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct CrashReport {
    pub iterations: usize,
    /// Acknowledged edits checked after restarts (each id's last one).
    pub checked: usize,
    /// Acknowledged edits missing or different after a restart (must be 0).
    pub lost: Vec<String>,
    /// States seen that were never acknowledged nor in flight (must be 0).
    pub phantoms: Vec<String>,
    /// Restarts after which the server did not become ready (must be 0).
    pub failed_starts: usize,
    pub upserts_acked: usize,
    pub deletes_acked: usize,
    pub compactions: usize,
    pub seconds: f64,
}

impl CrashReport {
    pub fn clean(&self) -> bool {
        self.lost.is_empty() && self.phantoms.is_empty() && self.failed_starts == 0
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().expect("an HTTP client")
}

/// A vector of the demo catalog's dimension, different for every `i`.
fn embedding(i: u64) -> Vec<f32> {
    (0..384u64)
        .map(|j| (((i * 7919 + j * 104_729) % 1000) as f32 / 500.0 - 1.0) + if j == i % 384 { 2.0 } else { 0.0 })
        .collect()
}

fn start(model: &str) -> Option<Server> {
    // a small log threshold: compactions start by themselves too
    let args = ["--model", model, "--admin-token", TOKEN, "--compact-log-mb", "1"];
    std::panic::catch_unwind(|| Server::start(&args)).ok()
}

/// Runs `iterations` rounds of edits and a SIGKILL at a random instant
/// within `max_run` (seeded: the same seed gives the same instants).
pub fn run(iterations: usize, max_run: Duration, seed: u64) -> CrashReport {
    let t0 = Instant::now();
    let root: TempDir = demo_root("crash");
    let model = root.0.join("a").to_string_lossy().into_owned();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    let mut report = CrashReport { iterations, ..Default::default() };
    let mut next_id = 0u64;
    for round in 0..iterations {
        let Some(s) = start(&model) else {
            report.failed_starts += 1;
            break;
        };
        verify(&s, &known, &mut report, Some((round.saturating_sub(1), &mut rng)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3u64 {
            let (url, known, stop) = (s.url.clone(), known.clone(), stop.clone());
            let first = next_id + w * 1_000_000;
            let mut wrng = ChaCha8Rng::seed_from_u64(seed ^ (round as u64 * 31 + w));
            writers.push(std::thread::spawn(move || write(&url, &known, &stop, first, round, &mut wrng)));
        }
        next_id += 3_000_000;
        let compactor = {
            let (url, stop) = (s.url.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(150));
                    let r = c.post(format!("{url}/admin/catalog/compact")).bearer_auth(TOKEN).send();
                    if r.is_ok_and(|r| r.status().is_success()) {
                        n += 1;
                    }
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(50..max_run.as_millis().max(51) as u64)));
        // SIGKILL: nothing of the server runs after this
        // SAFETY: kill(2) on the child's pid; no memory is touched.
        unsafe {
            libc::kill(s.pid() as i32, libc::SIGKILL);
        }
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            let (u, d) = w.join().expect("a writer thread");
            report.upserts_acked += u;
            report.deletes_acked += d;
        }
        report.compactions += compactor.join().expect("the compaction thread");
        drop(s);
    }
    // the last restart's check
    match start(&model) {
        Some(s) => verify(&s, &known, &mut report, None),
        None => report.failed_starts += 1,
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report
}

/// One writer: upserts of new ids, and deletes of ids it upserted, until
/// the server dies or `stop`. Returns (upserts, deletes) acknowledged.
fn write(
    url: &str,
    known: &Mutex<HashMap<String, Known>>,
    stop: &AtomicBool,
    first: u64,
    round: usize,
    rng: &mut ChaCha8Rng,
) -> (usize, usize) {
    let touch = |id: &str, state: Option<()>| {
        let mut k = known.lock().unwrap();
        let e = k.entry(id.to_string()).or_default();
        e.in_flight = Some(state);
        e.round = round;
    };
    let c = client();
    let (mut upserts, mut deletes) = (0, 0);
    let mut mine: Vec<String> = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::SeqCst) {
        if !mine.is_empty() && rng.random_range(0..4) == 0 {
            let victim = mine.swap_remove(rng.random_range(0..mine.len()));
            touch(&victim, None);
            match c.delete(format!("{url}/admin/items/{victim}")).bearer_auth(TOKEN).send() {
                Ok(r) if r.status().as_u16() == 200 => {
                    let mut k = known.lock().unwrap();
                    let e = k.entry(victim).or_default();
                    e.acked = Some(None);
                    e.in_flight = None;
                    deletes += 1;
                }
                Ok(r) if r.status().as_u16() == 404 => {}
                _ => return (upserts, deletes), // the server died: the delete stays in flight
            }
            continue;
        }
        let id = format!("c{i}");
        i += 1;
        touch(&id, Some(()));
        let body = json!({"id": id, "title": format!("crash {i}"), "embedding": embedding(i)});
        match c.post(format!("{url}/admin/items")).bearer_auth(TOKEN).json(&body).send() {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().unwrap_or(Value::Null);
                let sid: Vec<u64> =
                    v["semantic_id"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_u64).collect());
                let mut k = known.lock().unwrap();
                let e = k.entry(id.clone()).or_default();
                e.acked = Some(Some(sid));
                e.in_flight = None;
                upserts += 1;
                mine.push(id);
            }
            Ok(_) => {
                // refused (e.g. no free semantic ID): not in flight
                known.lock().unwrap().entry(id).or_default().in_flight = None;
            }
            Err(_) => return (upserts, deletes),
        }
    }
    (upserts, deletes)
}

/// Checks the ids the harness knows against the restarted server: all of
/// them, or (`Some((round, rng))`) those edited in `round` and a sample of
/// 200 others.
fn verify(
    s: &Server,
    known: &Mutex<HashMap<String, Known>>,
    report: &mut CrashReport,
    sample: Option<(usize, &mut ChaCha8Rng)>,
) {
    let c = client();
    let mut k = known.lock().unwrap();
    let mut older = 0;
    let (round, mut rng) = match sample {
        Some((r, rng)) => (Some(r), Some(rng)),
        None => (None, None),
    };
    let others = k.values().filter(|v| round.is_some_and(|r| v.round != r) && v.in_flight.is_none()).count().max(1);
    for (id, state) in k.iter_mut() {
        if let (Some(r), Some(rng)) = (round, rng.as_mut()) {
            let recent = state.round == r || state.in_flight.is_some();
            if !recent {
                // about 200 of the older ones
                if rng.random_range(0..others) >= 200 || older >= 200 {
                    continue;
                }
                older += 1;
            }
        }
        let r = c.get(s.at(&format!("/admin/items/{id}"))).bearer_auth(TOKEN).send().expect("GET an item");
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        let now: Option<Vec<u64>> = (status == 200 && v["served"] == true).then(|| {
            v["semantic_id"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_u64).collect())
        });
        let acked_ok = match &state.acked {
            Some(Some(sid)) => now.as_ref() == Some(sid),
            Some(None) => now.is_none(),
            None => now.is_none(),
        };
        let flight_ok = match state.in_flight {
            Some(Some(())) => now.is_some(),
            Some(None) => now.is_none(),
            None => false,
        };
        if state.acked.is_some() {
            report.checked += 1;
        }
        if !acked_ok && !flight_ok {
            let what = format!("{id}: acknowledged {:?}, in flight {:?}, found {now:?}", state.acked, state.in_flight);
            if state.acked.is_some() {
                report.lost.push(what);
            } else {
                report.phantoms.push(what);
            }
        }
        // what the restart shows is now the state to keep
        if flight_ok && !acked_ok {
            state.acked = Some(now);
        }
        state.in_flight = None;
    }
}
