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
    /// Replicas: ids (or probe requests) the replicas answered differently
    /// after converging, and rounds after which they did not converge
    /// (must be empty).
    pub diverged: Vec<String>,
    /// Replicas: times Redis was killed too.
    pub redis_kills: usize,
    pub upserts_acked: usize,
    pub deletes_acked: usize,
    pub compactions: usize,
    /// Edit logs folded into segments on request (more fold by themselves).
    pub folds: usize,
    pub seconds: f64,
}

impl CrashReport {
    pub fn clean(&self) -> bool {
        self.lost.is_empty() && self.phantoms.is_empty() && self.diverged.is_empty() && self.failed_starts == 0
    }
}

fn client() -> reqwest::blocking::Client {
    super::blocking_client(20)
}

/// A vector of the demo catalog's dimension, different for every `i`.
fn embedding(i: u64) -> Vec<f32> {
    super::vector(i as usize, 384)
}

fn start(model: &str) -> Option<Server> {
    // small thresholds: folds and compactions start by themselves too
    let args = ["--model", model, "--admin-token", TOKEN, "--compact-edits-mb", "1", "--fold-log-mb", "0.25"];
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
        verify(std::slice::from_ref(&s.url), &known, &mut report, Some((round.saturating_sub(1), &mut rng)));
        let load =
            Load::start(std::slice::from_ref(&s.url), &known, next_id, round, seed, Duration::from_millis(150), 0.7);
        next_id += 3_000_000;
        std::thread::sleep(Duration::from_millis(rng.random_range(50..max_run.as_millis().max(51) as u64)));
        sigkill(&s);
        load.stop(&mut report);
        drop(s);
    }
    // the last restart's check
    match start(&model) {
        Some(s) => verify(std::slice::from_ref(&s.url), &known, &mut report, None),
        None => report.failed_starts += 1,
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report
}

/// The same against three replicas on one Redis feed (append-only file
/// synced on every write), all serving one shared catalog folder: each round
/// one replica, chosen at random, is killed at a random instant, and in
/// about half the rounds Redis too; the writers go on through the living
/// replicas for a moment after the kills. Then Redis and the replica are
/// restarted, every replica must reach the feed's head, and every id is read
/// from all three, which must agree with each other and with what was
/// acknowledged; a few recommendation requests must get identical answers.
pub fn run_replicas(iterations: usize, max_run: Duration, seed: u64) -> CrashReport {
    use super::redis::{self, RedisServer};
    let t0 = Instant::now();
    let root: TempDir = demo_root("crash-replicas");
    let rdir = TempDir::new("crash-redis");
    let mut rds = RedisServer::start(&rdir.0);
    let address = rds.feed("genrec-crash");
    let feed = redis::open_feed(&address);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let known: Arc<Mutex<HashMap<String, Known>>> = Arc::default();
    let mut report = CrashReport { iterations, ..Default::default() };
    let names = ["r0", "r1", "r2"];
    let mut replicas: Vec<Option<Server>> = names.iter().map(|n| start_replica(&root, &address, n)).collect();
    let mut next_id = 0u64;
    for round in 0..=iterations {
        for (i, r) in replicas.iter_mut().enumerate() {
            if r.is_none() {
                *r = start_replica(&root, &address, names[i]);
                report.failed_starts += usize::from(r.is_none());
            }
        }
        let live: Vec<&Server> = replicas.iter().flatten().collect();
        if live.len() < names.len() {
            break;
        }
        let urls: Vec<String> = live.iter().map(|s| s.url.clone()).collect();
        if let Err(why) = converged(&urls, &feed) {
            report.diverged.push(format!("round {round}: {why}"));
        }
        let last = round == iterations;
        verify(&urls, &known, &mut report, (!last).then(|| (round.saturating_sub(1), &mut rng)));
        report.diverged.extend(same_answers(&urls).err().map(|why| format!("round {round}: {why}")));
        if last {
            break;
        }
        let load = Load::start(&urls, &known, next_id, round, seed, Duration::from_millis(300), 0.0);
        next_id += 3_000_000;
        let run_ms = rng.random_range(50..max_run.as_millis().max(51) as u64);
        let victim = rng.random_range(0..names.len());
        let redis_at = rng.random_bool(0.5).then(|| rng.random_range(0..=run_ms));
        let mut slept = 0;
        if let Some(at) = redis_at.filter(|&at| at < run_ms) {
            std::thread::sleep(Duration::from_millis(at));
            rds.kill();
            report.redis_kills += 1;
            slept = at;
        }
        std::thread::sleep(Duration::from_millis(run_ms - slept));
        if let Some(s) = replicas[victim].take() {
            sigkill(&s);
        }
        if redis_at == Some(run_ms) {
            rds.kill();
            report.redis_kills += 1;
        }
        // the others go on taking edits (or refusing them, Redis down)
        std::thread::sleep(Duration::from_millis(300));
        if redis_at.is_some() {
            rds.restart();
        }
        std::thread::sleep(Duration::from_millis(200));
        load.stop(&mut report);
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report
}

fn start_replica(root: &TempDir, feed: &str, name: &str) -> Option<Server> {
    let (key, password) = super::redis::secrets(&root.0);
    let model = root.0.join("a");
    let args = [
        "--model",
        model.to_str()?,
        "--model-root",
        root.0.to_str()?,
        "--feed",
        feed,
        "--feed-key-file",
        key.to_str()?,
        "--feed-password-file",
        password.to_str()?,
        "--replica-name",
        name,
        "--admin-token",
        TOKEN,
        "--compact-edits-mb",
        "1",
        // a killed replica stops holding trimming back soon
        "--feed-mark-ttl-s",
        "3",
    ];
    let s = std::panic::catch_unwind(|| Server::start(&args)).ok()?;
    let c = client();
    let until = Instant::now() + Duration::from_secs(60);
    while c.get(s.at("/readyz")).send().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(s)
}

/// Waits (up to a minute) until every replica has applied the feed to its
/// head and they hold the same catalog.
fn converged(urls: &[String], feed: &dyn genrec::feed::Feed) -> Result<(), String> {
    let c = client();
    let until = Instant::now() + Duration::from_secs(60);
    let info = |url: &String| -> Value {
        c.get(format!("{url}/admin/catalog")).bearer_auth(TOKEN).send().and_then(|r| r.json()).unwrap_or(Value::Null)
    };
    loop {
        // (the first call after a Redis restart may find its connection closed)
        let head = feed.head().ok().map(|p| p.unwrap_or_default().to_string());
        let infos: Vec<Value> = urls.iter().map(info).collect();
        let at_head = head.is_some() && infos.iter().all(|i| i["feed"]["position"].as_str() == head.as_deref());
        if at_head {
            for field in ["served", "rows", "last_edit_id"] {
                if infos.iter().any(|i| i[field] != infos[0][field]) {
                    return Err(format!("{field} differs: {:?}", infos.iter().map(|i| &i[field]).collect::<Vec<_>>()));
                }
            }
            return Ok(());
        }
        if Instant::now() > until {
            let at: Vec<&Value> = infos.iter().map(|i| &i["feed"]["position"]).collect();
            return Err(format!("the replicas did not reach the feed's head {head:?}: {at:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A few recommendation requests, answered identically by every replica.
fn same_answers(urls: &[String]) -> Result<(), String> {
    let c = client();
    for p in 0..8usize {
        let history: Vec<String> = (0..4).map(|j| ((p * 17 + j * 5) % 600).to_string()).collect();
        let body = json!({"history": history, "k": 10, "strategy": "generative"});
        let answers: Vec<Value> =
            urls.iter().map(|u| super::items_and_scores(&c, &format!("{u}/v1/recommend"), &body)).collect();
        if answers.iter().any(|a| a != &answers[0]) {
            return Err(format!("probe {p} answered differently: {answers:?}"));
        }
    }
    Ok(())
}

/// SIGKILL: nothing of the server runs after this.
fn sigkill(s: &Server) {
    // SAFETY: kill(2) on the child's pid; no memory is touched.
    unsafe {
        libc::kill(s.pid() as i32, libc::SIGKILL);
    }
}

/// Three writers and a compactor running against `urls`.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<std::thread::JoinHandle<(usize, usize)>>,
    compactor: std::thread::JoinHandle<(usize, usize)>,
}

impl Load {
    /// Writers edit ids from `first` on (each its own million), each edit
    /// through a random one of `urls`; the compactor asks a random one for a
    /// compaction, or a fold (a share `fold_share` of the time), every
    /// `compact_every`.
    fn start(
        urls: &[String],
        known: &Arc<Mutex<HashMap<String, Known>>>,
        first: u64,
        round: usize,
        seed: u64,
        compact_every: Duration,
        fold_share: f64,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..3u64)
            .map(|w| {
                let (urls, known, stop) = (urls.to_vec(), known.clone(), stop.clone());
                let mut wrng = ChaCha8Rng::seed_from_u64(seed ^ (round as u64 * 31 + w));
                let first = first + w * 1_000_000;
                std::thread::spawn(move || write(&urls, &known, &stop, first, round, &mut wrng))
            })
            .collect();
        let compactor = {
            let (urls, stop) = (urls.to_vec(), stop.clone());
            let mut crng = ChaCha8Rng::seed_from_u64(seed ^ (round as u64 * 31 + 7));
            std::thread::spawn(move || {
                let c = client();
                let (mut compactions, mut folds) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(compact_every);
                    let url = &urls[crng.random_range(0..urls.len())];
                    let fold = crng.random_bool(fold_share);
                    let what = if fold { "fold" } else { "compact" };
                    let r = c.post(format!("{url}/admin/catalog/{what}")).bearer_auth(TOKEN).send();
                    if r.is_ok_and(|r| r.status().is_success()) {
                        *(if fold { &mut folds } else { &mut compactions }) += 1;
                    }
                }
                (compactions, folds)
            })
        };
        Load { stop, writers, compactor }
    }

    fn stop(self, report: &mut CrashReport) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.writers {
            let (u, d) = w.join().expect("a writer thread");
            report.upserts_acked += u;
            report.deletes_acked += d;
        }
        let (compactions, folds) = self.compactor.join().expect("the compaction thread");
        report.compactions += compactions;
        report.folds += folds;
    }
}

/// One writer: upserts of new ids, and deletes of ids it upserted, each
/// through a random one of `urls`, until `stop`, or, with one server, until
/// it dies. An edit whose answer did not come (a killed server, the feed
/// down) stays in flight: it may or may not have happened. Returns
/// (upserts, deletes) acknowledged.
fn write(
    urls: &[String],
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
    let settle = |id: &str, acked: Option<Option<Vec<u64>>>| {
        let mut k = known.lock().unwrap();
        let e = k.entry(id.to_string()).or_default();
        if acked.is_some() {
            e.acked = acked;
        }
        e.in_flight = None;
    };
    // one server: no answer means it died, which ends the round, and a
    // refusal means nothing was done; several: the others go on, and a
    // refusal may hide a record in the feed (a timeout waiting to apply it)
    let single = urls.len() == 1;
    let c = client();
    let (mut upserts, mut deletes) = (0, 0);
    let mut mine: Vec<String> = Vec::new();
    let mut i = first;
    while !stop.load(Ordering::SeqCst) {
        let url = &urls[rng.random_range(0..urls.len())];
        if !mine.is_empty() && rng.random_range(0..4) == 0 {
            let victim = mine.swap_remove(rng.random_range(0..mine.len()));
            touch(&victim, None);
            match c.delete(format!("{url}/admin/items/{victim}")).bearer_auth(TOKEN).send().map(|r| r.status()) {
                Ok(st) if st.as_u16() == 200 => {
                    settle(&victim, Some(None));
                    deletes += 1;
                }
                // not there (a replica that has not applied its upsert yet):
                // nothing was sent; it stays as it was
                Ok(st) if st.as_u16() == 404 => {
                    settle(&victim, None);
                    mine.push(victim);
                }
                Err(_) if single => return (upserts, deletes),
                Ok(_) if single => settle(&victim, None),
                // the delete stays in flight
                _ => std::thread::sleep(Duration::from_millis(20)),
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
                settle(&id, Some(Some(sid)));
                upserts += 1;
                mine.push(id);
            }
            // refused for what it is (no free semantic ID): nothing was sent
            Ok(r) if single || matches!(r.status().as_u16(), 409 | 422) => settle(&id, None),
            Err(_) if single => return (upserts, deletes),
            // the upsert stays in flight
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    (upserts, deletes)
}

/// Checks the ids the harness knows against the restarted servers (all of
/// them, or with `Some((round, rng))` those edited in `round` and a sample
/// of 200 others): each must answer the same (else it is `diverged`), and
/// that answer must be the acknowledged state or the one in flight.
fn verify(
    urls: &[String],
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
        let found: Vec<Option<Vec<u64>>> = urls.iter().map(|url| served_as(&c, url, id)).collect();
        let now = found[0].clone();
        if found.iter().any(|f| f != &now) {
            report.diverged.push(format!("{id}: {found:?}"));
        }
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

/// The semantic ID `url` serves item `id` with, `None` when it does not serve it.
fn served_as(c: &reqwest::blocking::Client, url: &str, id: &str) -> Option<Vec<u64>> {
    let r = c.get(format!("{url}/admin/items/{id}")).bearer_auth(TOKEN).send().expect("GET an item");
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    (status == 200 && v["served"] == true)
        .then(|| v["semantic_id"].as_array().map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_u64).collect()))
}
