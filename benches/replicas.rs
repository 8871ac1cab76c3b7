//! Three `genrec serve --feed` replicas (the embedded demo model's catalog as
//! the shared folder) and one `redis-server` (append-only file synced on
//! every write), all on loopback; `benches/replicas.sh` runs it and writes
//! `benches/results/replicas.md`.
//!
//! 1. **Rate:** `--edits` item upserts from `--writers` threads, each edit to
//!    a random replica, as fast as the replicas acknowledge them. Pollers
//!    read every replica's `/readyz` `feed_position` every millisecond; an
//!    edit is applied everywhere at the first poll where all three replicas
//!    are at or past its record's position. Then 200 probe requests must get
//!    identical answers from the three.
//! 2. **Replica SIGKILL:** `--fault-edits` more; at a quarter, replica 1 is
//!    killed and started again; writers retry on another replica. Nothing
//!    acknowledged may be missing anywhere.
//! 3. **Redis SIGKILL:** the same with Redis killed and restarted after 1 s;
//!    every replica's last edit id must equal the edits the stream holds
//!    (none applied twice).
//!
//! With `--model DIR --catalog DIR` the replicas serve that model and share
//! that catalog folder as it is (pass a copy: compaction writes there); the
//! single-server baseline is then skipped, and `--compact` adds a compaction
//! on one replica and the time until every replica moved onto its version.
//!
//! cargo bench --bench replicas -- [--edits 10000] [--fault-edits 2000] [--writers 8] [--json FILE]
//!     [--model DIR --catalog DIR] [--compact]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{edits_in_stream, RedisServer};
use common::{Server, TempDir};
use genrec::feed::{Feed, Position};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const TOKEN: &str = "bench-token-0123456789";

struct Args {
    edits: usize,
    fault_edits: usize,
    writers: usize,
    json: Option<String>,
    /// A model and the shared catalog folder (default: copies of the demo's).
    model: Option<std::path::PathBuf>,
    catalog: Option<std::path::PathBuf>,
    compact: bool,
}

fn args() -> Args {
    let mut a =
        Args { edits: 10_000, fault_edits: 2_000, writers: 8, json: None, model: None, catalog: None, compact: false };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--edits" => a.edits = next.parse().expect("--edits N"),
            "--fault-edits" => a.fault_edits = next.parse().expect("--fault-edits N"),
            "--writers" => a.writers = next.parse().expect("--writers N"),
            "--json" => a.json = Some(next),
            "--model" => a.model = Some(next.into()),
            "--catalog" => a.catalog = Some(next.into()),
            "--compact" => {
                a.compact = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other} (see the file's header)"),
        }
        i += 2;
    }
    a
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

struct Cluster {
    _root: TempDir,
    model: std::path::PathBuf,
    catalog: std::path::PathBuf,
    _redis_dir: TempDir,
    redis: RedisServer,
    address: String,
    replicas: Vec<Server>,
    /// Embeddings of the catalog's first items (new items are made near them).
    embeddings: Arc<Vec<Vec<f32>>>,
    /// Ids of the catalog's first items (probe histories).
    ids: Vec<String>,
    /// Seconds from spawn to ready of each replica at start.
    start_s: Vec<f64>,
}

/// Items whose embeddings and ids the bench keeps.
const SAMPLE: u32 = 100_000;

impl Cluster {
    fn start(a: &Args) -> Cluster {
        let root = common::demo_root("bench-replicas");
        let model = a.model.clone().unwrap_or_else(|| root.0.join("a"));
        let catalog = a.catalog.clone().unwrap_or_else(|| root.0.join("catalog"));
        let redis_dir = TempDir::new("bench-redis");
        let redis = RedisServer::start(&redis_dir.0);
        let address = redis.feed("genrec-bench");
        let cat = genrec::catalog::Catalog::load(&catalog).expect("the catalog");
        let n = (cat.len() as u32).min(SAMPLE);
        let embeddings = Arc::new((0..n).map(|i| cat.embedding(i)).collect());
        let ids = (0..n.min(600)).map(|i| cat.item_id(i).to_string()).collect();
        drop(cat);
        let mut c = Cluster {
            _root: root,
            model,
            catalog,
            _redis_dir: redis_dir,
            redis,
            address,
            replicas: Vec::new(),
            embeddings,
            ids,
            start_s: Vec::new(),
        };
        for i in 0..3 {
            let t = Instant::now();
            let s = c.start_replica(&format!("r{i}"));
            c.start_s.push(t.elapsed().as_secs_f64());
            c.replicas.push(s);
        }
        c
    }

    fn start_replica(&self, name: &str) -> Server {
        let root = self.model.parent().expect("the model folder's parent is the model root");
        let (key, password) = common::redis::secrets(&self._redis_dir.0);
        let s = Server::start(&[
            "--feed-key-file",
            key.to_str().unwrap(),
            "--feed-password-file",
            password.to_str().unwrap(),
            "--model",
            self.model.to_str().unwrap(),
            "--catalog",
            self.catalog.to_str().unwrap(),
            "--model-root",
            root.to_str().unwrap(),
            "--feed",
            &self.address,
            "--replica-name",
            name,
            "--admin-token",
            TOKEN,
        ]);
        let c = client();
        while c.get(s.at("/readyz")).send().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|s| s.url.clone()).collect()
    }

    fn feed(&self) -> genrec::feed::redis::RedisFeed {
        common::redis::open_feed(&self.address)
    }
}

/// New item `i`'s embedding: a catalog item's, slightly moved.
fn vector(embeddings: &[Vec<f32>], i: usize) -> Vec<f32> {
    let base = &embeddings[(i * 7) % embeddings.len()];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
    base.iter().map(|x| x + rng.random_range(-0.02..0.02)).collect()
}

/// What sending the edits gave.
#[derive(Default)]
struct Sent {
    /// (send time, ack time, position) of each acknowledged edit.
    acks: Vec<(Instant, Instant, Position)>,
    ids: BTreeSet<String>,
    /// Answers that were not 2xx (retried on another replica).
    errors: usize,
    refused: usize,
}

/// Sends edits `range` with `writers` threads, each edit to a random
/// replica, retrying failures on another one; counts acks in `acked`.
fn send(
    embeddings: Arc<Vec<Vec<f32>>>,
    urls: &[String],
    range: std::ops::Range<usize>,
    writers: usize,
    tag: &str,
    acked: Arc<AtomicUsize>,
) -> (Sent, f64) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let out = Arc::new(Mutex::new(Sent::default()));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let (next, out, urls, acked, embeddings) =
                (next.clone(), out.clone(), urls.to_vec(), acked.clone(), embeddings.clone());
            s.spawn(move || {
                let c = client();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= range.end {
                        return;
                    }
                    let id = format!("{tag}-{i}");
                    let body = json!({"id": id, "embedding": vector(&embeddings, i)});
                    let mut k = rng.random_range(0..urls.len());
                    let until = Instant::now() + Duration::from_secs(120);
                    loop {
                        let sent = Instant::now();
                        let r = c
                            .post(format!("{}/admin/items", urls[k % urls.len()]))
                            .bearer_auth(TOKEN)
                            .json(&body)
                            .send();
                        let (status, v) = match r {
                            Ok(r) => (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null)),
                            Err(_) => (0, Value::Null),
                        };
                        if status == 200 || status == 201 {
                            let p: Position =
                                v["feed_position"].as_str().expect("feed_position in the answer").parse().unwrap();
                            let mut o = out.lock().unwrap();
                            o.acks.push((sent, Instant::now(), p));
                            o.ids.insert(id);
                            acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        let mut o = out.lock().unwrap();
                        if status == 409 || status == 422 {
                            o.refused += 1;
                            break;
                        }
                        o.errors += 1;
                        drop(o);
                        assert!(Instant::now() < until, "no replica acknowledged {id}");
                        std::thread::sleep(Duration::from_millis(20));
                        k += 1;
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let sent = std::mem::take(&mut *out.lock().unwrap());
    (sent, secs)
}

/// The baseline: `n` upserts to one server, `writers` at a time; each ack's
/// latency in seconds, and the seconds it all took.
fn send_local(embeddings: Arc<Vec<Vec<f32>>>, url: &str, n: usize, writers: usize) -> (Vec<f64>, f64) {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(Vec::with_capacity(n));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                let c = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let body = json!({"id": format!("single-{i}"), "embedding": vector(&embeddings, i)});
                    let sent = Instant::now();
                    let st = c
                        .post(format!("{url}/admin/items"))
                        .bearer_auth(TOKEN)
                        .json(&body)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16();
                    assert!(st == 200 || st == 201, "the baseline server answered {st}");
                    out.lock().unwrap().push(sent.elapsed().as_secs_f64());
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    (out.into_inner().unwrap(), secs)
}

/// Polls every replica's applied position every millisecond until `stop`.
fn poll(urls: &[String], stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<(Instant, Position)>>> {
    urls.iter()
        .map(|u| {
            let (u, stop) = (u.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(v) = c.get(format!("{u}/readyz")).send().and_then(|r| r.json::<Value>()) {
                        if let Some(p) = v["feed_position"].as_str().and_then(|p| p.parse().ok()) {
                            seen.push((Instant::now(), p));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                seen
            })
        })
        .collect()
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn get(c: &reqwest::blocking::Client, url: &str) -> Value {
    c.get(url).bearer_auth(TOKEN).send().expect("GET").json().expect("JSON")
}

/// Waits until all replicas applied the whole stream; checks that they hold
/// the same catalog and answer `probes` requests identically. Returns the
/// seconds it waited and the common last edit id.
fn converge(cluster: &Cluster, probes: usize) -> (f64, u64) {
    let c = client();
    let feed = cluster.feed();
    let t0 = Instant::now();
    let head = loop {
        if let Ok(h) = feed.head() {
            break h.unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    loop {
        let ok = cluster.replicas.iter().all(|s| {
            get(&c, &s.at("/readyz"))["feed_position"].as_str().and_then(|p| p.parse::<Position>().ok()) == Some(head)
        });
        if ok {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "replicas did not reach {head}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waited = t0.elapsed().as_secs_f64();
    let infos: Vec<Value> = cluster.replicas.iter().map(|s| get(&c, &s.at("/admin/catalog"))).collect();
    for i in &infos[1..] {
        for f in ["served", "rows", "last_edit_id"] {
            assert_eq!(i[f], infos[0][f], "{f} differs between replicas");
        }
    }
    for p in 0..probes {
        let history: Vec<&String> = (0..5).map(|j| &cluster.ids[(p * 31 + j * 7) % cluster.ids.len()]).collect();
        let body = json!({"history": history, "k": 10, "strategy": "generative"});
        let answers: Vec<Value> =
            cluster.replicas.iter().map(|s| common::items_and_scores(&c, &s.at("/v1/recommend"), &body)).collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "probe {p}: replicas answer differently");
    }
    (waited, infos[0]["last_edit_id"].as_u64().unwrap())
}

fn missing(cluster: &Cluster, ids: &BTreeSet<String>) -> usize {
    let c = client();
    let mut n = 0;
    for s in &cluster.replicas {
        for id in ids {
            if get(&c, &s.at(&format!("/admin/items/{id}")))["served"] != true {
                n += 1;
            }
        }
    }
    n
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Waits until `acked` reaches a quarter of `n`.
fn at_quarter(n: usize, acked: &AtomicUsize) {
    while acked.load(Ordering::Relaxed) < n / 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `range` on a thread; returns it and its ack counter.
fn send_in_background(
    cluster: &Cluster,
    range: std::ops::Range<usize>,
    writers: usize,
    tag: &'static str,
) -> (std::thread::JoinHandle<(Sent, f64)>, Arc<AtomicUsize>) {
    let acked = Arc::new(AtomicUsize::new(0));
    let (emb, urls, counter) = (cluster.embeddings.clone(), cluster.urls(), acked.clone());
    (std::thread::spawn(move || send(emb, &urls, range, writers, tag, counter)), acked)
}

fn main() {
    let a = args();
    let wall = Instant::now();
    let mut report = serde_json::Map::new();
    println!(
        "3 replicas + redis-server on loopback; {} writers; {} cores",
        a.writers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 0. baseline: one server without a feed (edits fsync'd to its own log)
    let (base_rate, base50, base99) = if a.catalog.is_some() {
        println!("baseline skipped: the catalog given is shared, not a copy to write to");
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        let root = common::demo_root("bench-single");
        let cat = genrec::catalog::Catalog::load(&root.0.join("catalog")).expect("the demo catalog");
        let emb = Arc::new((0..cat.len() as u32).map(|i| cat.embedding(i)).collect::<Vec<_>>());
        let s = Server::start(&["--model", root.0.join("a").to_str().unwrap(), "--admin-token", TOKEN]);
        let (sent, secs) = send_local(emb, &s.url, a.edits, a.writers);
        let mut ms: Vec<f64> = sent.iter().map(|d| d * 1e3).collect();
        (sent.len() as f64 / secs, percentile(&mut ms, 0.5), percentile(&mut ms, 0.99))
    };
    if base_rate.is_finite() {
        println!("baseline, one server without --feed (edit log fsync'd): {} edits at {base_rate:.0} edits/s; ack p50 {base50:.1} ms p99 {base99:.1} ms", a.edits);
    }
    report
        .insert("baseline_single".into(), json!({"edits_per_s": base_rate, "ack_ms": {"p50": base50, "p99": base99}}));

    let mut cluster = Cluster::start(&a);
    println!("replicas ready {:.2?} s after their start (mapping the catalog, replaying the feed)", cluster.start_s);
    report.insert("start_to_ready_s".into(), json!(cluster.start_s));
    // edits the catalog held before the bench (a large one may come edited)
    let first_edit = get(&client(), &cluster.replicas[0].at("/admin/catalog"))["last_edit_id"].as_u64().unwrap_or(0);

    // 1. rate and time-to-everywhere
    let stop = Arc::new(AtomicBool::new(false));
    let pollers = poll(&cluster.urls(), stop.clone());
    let (sent, secs) =
        send(cluster.embeddings.clone(), &cluster.urls(), 0..a.edits, a.writers, "rate", Arc::new(AtomicUsize::new(0)));
    let (settle, last_edit) = converge(&cluster, 0);
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Vec<(Instant, Position)>> = pollers.into_iter().map(|p| p.join().unwrap()).collect();
    let mut ack_ms: Vec<f64> = sent.acks.iter().map(|(s, t, _)| (*t - *s).as_secs_f64() * 1e3).collect();
    let mut everywhere_ms: Vec<f64> = sent
        .acks
        .iter()
        .map(|(s, _, p)| {
            let t = seen
                .iter()
                .map(|r| r.iter().find(|(_, q)| q >= p).map_or(f64::INFINITY, |(t, _)| (*t - *s).as_secs_f64() * 1e3))
                .fold(0.0, f64::max);
            t
        })
        .collect();
    let rate = sent.acks.len() as f64 / secs;
    let (ack50, ack99) = (percentile(&mut ack_ms, 0.5), percentile(&mut ack_ms, 0.99));
    let (ev50, ev99, evmax) = (
        percentile(&mut everywhere_ms, 0.5),
        percentile(&mut everywhere_ms, 0.99),
        percentile(&mut everywhere_ms, 1.0),
    );
    let polls: usize = seen.iter().map(Vec::len).sum();
    let (_, _) = converge(&cluster, 200);
    println!(
        "rate: {} edits acknowledged in {secs:.1} s = {rate:.0} edits/s{} ({} retried, {} refused); ack p50 {ack50:.1} ms p99 {ack99:.1} ms; \
         applied by all 3: p50 {ev50:.1} ms p99 {ev99:.1} ms max {evmax:.1} ms ({polls} polls); settled {settle:.2} s after the last ack; \
         {} edits applied on all; 200 probes identical",
        sent.acks.len(),
        if base_rate.is_finite() { format!(" ({:.2}x the baseline)", rate / base_rate) } else { String::new() },
        sent.errors,
        sent.refused,
        last_edit - first_edit
    );
    report.insert(
        "rate".into(),
        json!({"edits": sent.acks.len(), "seconds": secs, "edits_per_s": rate, "retried": sent.errors, "refused": sent.refused,
               "ack_ms": {"p50": ack50, "p99": ack99}, "applied_everywhere_ms": {"p50": ev50, "p99": ev99, "max": evmax},
               "polls": polls, "probes_identical": 200}),
    );
    let mut acked = sent.ids;

    // 2. a replica killed with SIGKILL mid-stream and started again
    let range = a.edits..a.edits + a.fault_edits;
    let (sender, count) = send_in_background(&cluster, range.clone(), a.writers, "kill");
    at_quarter(range.len(), &count);
    let killed_rss = peak_rss_mb(cluster.replicas[1].pid());
    drop(cluster.replicas.remove(1)); // SIGKILL
    let t_restart = Instant::now();
    let again = cluster.start_replica("r1-again");
    let ready_s = t_restart.elapsed().as_secs_f64();
    cluster.replicas.insert(1, again);
    let (sent, secs) = sender.join().unwrap();
    let (settle, _) = converge(&cluster, 200);
    acked.extend(sent.ids.iter().cloned());
    let lost = missing(&cluster, &acked);
    println!(
        "replica SIGKILL at {} of {} edits: restarted replica ready in {ready_s:.2} s; {} edits acknowledged in {secs:.1} s \
         ({} retried); settled {settle:.2} s after the last ack; acknowledged items missing on any replica: {lost}; 200 probes identical",
        range.len() / 4,
        range.len(),
        sent.acks.len(),
        sent.errors
    );
    assert_eq!(lost, 0, "an acknowledged edit is missing");
    report.insert(
        "replica_kill".into(),
        json!({"edits": sent.acks.len(), "retried": sent.errors, "restart_ready_s": ready_s, "settle_s": settle,
               "missing": lost, "killed_peak_rss_mb": killed_rss, "probes_identical": 200}),
    );

    // 3. Redis killed with SIGKILL mid-stream and restarted on its AOF
    let range = range.end..range.end + a.fault_edits;
    let (sender, count) = send_in_background(&cluster, range.clone(), a.writers, "redis");
    at_quarter(range.len(), &count);
    cluster.redis.kill();
    let during: Vec<u16> = cluster
        .replicas
        .iter()
        .map(|s| {
            let body = json!({"history": &cluster.ids[1..4], "k": 10});
            client().post(s.at("/v1/recommend")).json(&body).send().map_or(0, |r| r.status().as_u16())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    cluster.redis.restart();
    let (sent, secs) = sender.join().unwrap();
    let (settle, last_edit) = converge(&cluster, 200);
    let last_edit = last_edit - first_edit;
    let in_stream = edits_in_stream(&cluster.feed());
    acked.extend(sent.ids.iter().cloned());
    let lost = missing(&cluster, &acked);
    println!(
        "redis SIGKILL at {} of {} edits, restarted after 1 s: recommendations while down answered {during:?}; {} edits acknowledged in \
         {secs:.1} s ({} retried); settled {settle:.2} s after the last ack; edits applied on all 3: {last_edit} = {in_stream} edits \
         in the stream; acknowledged items missing: {lost}; 200 probes identical",
        range.len() / 4,
        range.len(),
        sent.acks.len(),
        sent.errors
    );
    assert_eq!(lost, 0, "an acknowledged edit is missing");
    assert_eq!(last_edit, in_stream, "an edit was applied twice or not at all");
    report.insert(
        "redis_kill".into(),
        json!({"edits": sent.acks.len(), "retried": sent.errors, "settle_s": settle, "missing": lost,
               "last_edit_id": last_edit, "edits_in_stream": in_stream, "recommend_status_while_down": during, "probes_identical": 200}),
    );
    // 4. a compaction on one replica; the others move onto its version
    if a.compact {
        let c = client();
        let t0 = Instant::now();
        let r: Value =
            c.post(cluster.replicas[0].at("/admin/catalog/compact")).bearer_auth(TOKEN).send().unwrap().json().unwrap();
        let compact_s = t0.elapsed().as_secs_f64();
        let version = r["version"].as_u64().expect("a compaction report");
        let mut moved = Vec::new();
        for s in &cluster.replicas {
            while get(&c, &s.at("/admin/catalog"))["version"].as_u64() != Some(version) {
                std::thread::sleep(Duration::from_millis(50));
            }
            moved.push(t0.elapsed().as_secs_f64() - compact_s);
        }
        let (settle, _) = converge(&cluster, 200);
        println!(
            "compaction on replica 0: version {version} written in {compact_s:.1} s; every replica on it {:.1} s later ({moved:.1?}); \
             settled {settle:.2} s; 200 probes identical",
            moved.iter().cloned().fold(0.0, f64::max)
        );
        report.insert(
            "compaction".into(),
            json!({"version": version, "seconds": compact_s, "replicas_moved_after_s": moved}),
        );
    }
    let rss: Vec<f64> = cluster.replicas.iter().map(|s| peak_rss_mb(s.pid())).collect();
    println!("peak RSS of the replicas: {rss:.0?} MB; wall time {:.0} s", wall.elapsed().as_secs_f64());
    report.insert("peak_rss_mb".into(), json!(rss));
    report.insert("wall_s".into(), json!(wall.elapsed().as_secs_f64()));
    if let Some(p) = a.json {
        std::fs::write(p, serde_json::to_string_pretty(&Value::Object(report)).unwrap()).unwrap();
    }
}
