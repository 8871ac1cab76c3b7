//! A live world replayed in accelerated time against `genrec serve` (the
//! embedded demo model and catalog) through HTTP: live items arrive, carry a
//! lifetime and burst in popularity; users ask for recommendations, see
//! them (impression events), and interact (click events), all interleaved as
//! a platform sends them. `benches/live.sh` runs it and writes
//! `benches/results/live.md`.
//!
//! The world (time runs `--accel` times faster than the clock; the server's
//! `--events-half-life-s` is scaled alike):
//! - users are the demo world's (`genrec demo-data`): a request's history is
//!   a window of a user's sequence, and the user's *taste* is the item that
//!   follows it;
//! - live items arrive as a Poisson process (`--arrivals-per-min` world
//!   minutes), each near a random catalog item (its embedding plus a little
//!   noise), with a log-normal lifetime around 30 world minutes (sent as
//!   `expires_at`) and a Pareto popularity;
//! - a request's next interaction is, with probability `--burst-share` (when
//!   any live item lives), a live item drawn by popularity (a burst), else the
//!   taste item. `--burst-share 0` switches bursts off: the control where
//!   `trending` must show no gain;
//! - events: an impression for every item of an answer, and for the
//!   interaction an impression (when the answer did not show it: it was seen
//!   on another surface) and a click.
//!
//! Reported: next-interaction HR@10 with `trending` off and on (bursts on
//! and off), expired items served (every answer checked against the expiry
//! the bench sent), the time from a live item's upsert to its first
//! appearance in a generated list for a history of its cluster, and events
//! ingested per second alone and beside recommendation clients, with the
//! recommend p99 beside them over idle.
//!
//! cargo bench --bench live -- [--seconds 60] [--accel 60] [--burst-share 0.3] [--trending 1]
//!     [--arrivals-per-min 2] [--clients 4] [--events-rate 30000] [--seed 7] [--json FILE]
//!     [--only replay|expiry|fresh|events ...]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, TempDir};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Pareto};
use serde_json::{json, Value};

const TOKEN: &str = "live-bench-token-0123456789";

#[derive(Clone)]
struct Args {
    seconds: f64,
    accel: f64,
    burst_share: f64,
    trending: f32,
    arrivals_per_min: f64,
    clients: usize,
    seed: u64,
    /// Events per second sent beside the recommendation clients.
    events_rate: f64,
    json: Option<String>,
    /// Run only these parts (`replay`: the four replays; `expiry`: one
    /// replay, bursts and trending on, to count expired items served over
    /// many requests; `fresh`, `events`); empty: all but `expiry`.
    only: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60.0,
        accel: 60.0,
        burst_share: 0.3,
        trending: 1.0,
        arrivals_per_min: 2.0,
        clients: 4,
        seed: 7,
        events_rate: 30_000.0,
        json: None,
        only: Vec::new(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--seconds" => a.seconds = val().parse().expect("--seconds"),
            "--accel" => a.accel = val().parse().expect("--accel"),
            "--burst-share" => a.burst_share = val().parse().expect("--burst-share"),
            "--trending" => a.trending = val().parse().expect("--trending"),
            "--arrivals-per-min" => a.arrivals_per_min = val().parse().expect("--arrivals-per-min"),
            "--clients" => a.clients = val().parse().expect("--clients"),
            "--seed" => a.seed = val().parse().expect("--seed"),
            "--events-rate" => a.events_rate = val().parse().expect("--events-rate"),
            "--json" => a.json = Some(val()),
            "--only" => a.only.push(val()),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The demo world: users' sequences, and the catalog (ids, embeddings, semantic IDs).
struct World {
    users: Vec<Vec<String>>,
    ids: Vec<String>,
    emb: Vec<Vec<f32>>,
}

fn world(dir: &std::path::Path) -> World {
    let st = std::process::Command::new(common::bin())
        .args(["demo-data", "--out", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("genrec demo-data");
    assert!(st.success(), "genrec demo-data failed");
    let inter: HashMap<String, Vec<Value>> =
        serde_json::from_slice(&std::fs::read(dir.join("demo.inter.json")).expect("demo.inter.json")).unwrap();
    let mut users: Vec<(String, Vec<String>)> = inter
        .into_iter()
        .map(|(u, s)| (u, s.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect()))
        .filter(|(_, s): &(String, Vec<String>)| s.len() >= 4)
        .collect();
    users.sort();
    let (_, cat) = genrec::model::demo::load(&candle_core::Device::Cpu).expect("demo catalog");
    let n = cat.len() as u32;
    World {
        users: users.into_iter().map(|u| u.1).collect(),
        ids: (0..n).map(|i| cat.item_id(i).to_string()).collect(),
        emb: (0..n).map(|i| cat.embedding(i)).collect(),
    }
}

fn serve(half_life_s: u64) -> Server {
    serve_with(half_life_s, "sibling")
}

fn serve_with(half_life_s: u64, new_items: &str) -> Server {
    Server::start(&["--admin-token", TOKEN, "--events-half-life-s", &half_life_s.to_string(), "--new-items", new_items])
}

fn recommend(c: &reqwest::blocking::Client, s: &Server, body: &Value) -> Option<Vec<String>> {
    let r = c.post(s.at("/v1/recommend")).json(body).send().ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().ok()?;
    Some(v["items"].as_array()?.iter().filter_map(|i| i["item_id"].as_str().map(str::to_string)).collect())
}

fn post_events(c: &reqwest::blocking::Client, s: &Server, lines: &[String]) -> usize {
    let r = c
        .post(s.at("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(lines.join("\n"))
        .send()
        .expect("POST /v1/events");
    assert!(r.status().is_success(), "events: {}", r.status());
    let v: Value = r.json().expect("events answer");
    v["applied"].as_u64().unwrap_or(0) as usize
}

/// A live item as the bench knows it.
#[derive(Clone)]
struct Live {
    id: String,
    /// When it expires, real ms since the epoch.
    expires: u64,
    popularity: f64,
}

struct Replay {
    requests: usize,
    hits: usize,
    burst_requests: usize,
    burst_hits: usize,
    expired_served: usize,
    live_items: usize,
    events: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// One replay of the world on a fresh server.
fn replay(w: &Arc<World>, a: &Args, trending: f32, burst_share: f64) -> Replay {
    let s = Arc::new(serve(((600.0 / a.accel).round() as u64).max(1)));
    let live: Arc<Mutex<Vec<Live>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    // arrivals
    let arrivals = {
        let (w, a, s, live, stop) = (w.clone(), a.clone(), s.clone(), live.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = common::blocking_client(30);
            let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
            let life = LogNormal::new((30.0f64 * 60_000.0).ln(), 0.5).unwrap();
            let pop = Pareto::new(1.0, 1.5).unwrap();
            let mut n = 0;
            let real_gap_ms = 60_000.0 / a.arrivals_per_min / a.accel;
            while !stop.load(Ordering::Relaxed) {
                let gap = -real_gap_ms * (1.0 - rng.random::<f64>()).ln();
                std::thread::sleep(Duration::from_secs_f64(gap / 1000.0));
                let base = rng.random_range(0..w.emb.len());
                let emb: Vec<f32> = w.emb[base].iter().map(|x| x + 0.01 * (rng.random::<f32>() - 0.5)).collect();
                let expires = now_ms() + (life.sample(&mut rng) / a.accel).max(1000.0) as u64;
                let id = format!("live-{n}");
                n += 1;
                let r = c
                    .post(s.at("/admin/items"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"id": id, "title": format!("live stream {n}"), "embedding": emb, "expires_at": expires}))
                    .send()
                    .expect("upsert");
                assert!(r.status().is_success(), "upsert: {}", r.status());
                live.lock().unwrap().push(Live { id, expires, popularity: pop.sample(&mut rng) });
            }
            n
        })
    };
    // events, flushed every 100 ms
    let sender = {
        let (s, events, stop) = (s.clone(), events.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = common::blocking_client(30);
            let mut sent = 0;
            loop {
                let done = stop.load(Ordering::Relaxed);
                let batch: Vec<String> = std::mem::take(&mut *events.lock().unwrap());
                if !batch.is_empty() {
                    sent += post_events(&c, &s, &batch);
                }
                if done {
                    return sent;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let clients: Vec<_> = (0..a.clients)
        .map(|t| {
            let (w, s, live, events) = (w.clone(), s.clone(), live.clone(), events.clone());
            let seed = a.seed * 1000 + t as u64;
            std::thread::spawn(move || {
                let c = common::blocking_client(30);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let (mut req, mut hit, mut breq, mut bhit, mut expired) = (0, 0, 0, 0, 0);
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let u = &w.users[rng.random_range(0..w.users.len())];
                    let cut = rng.random_range(3..u.len());
                    let history = &u[cut.saturating_sub(10)..cut];
                    let sent = now_ms();
                    let alive: Vec<Live> = live.lock().unwrap().iter().filter(|l| l.expires > sent).cloned().collect();
                    let burst = !alive.is_empty() && rng.random::<f64>() < burst_share;
                    let target = if burst {
                        let total: f64 = alive.iter().map(|l| l.popularity).sum();
                        let mut x = rng.random::<f64>() * total;
                        let mut pick = &alive[0];
                        for l in &alive {
                            pick = l;
                            x -= l.popularity;
                            if x <= 0.0 {
                                break;
                            }
                        }
                        pick.id.clone()
                    } else {
                        u[cut].clone()
                    };
                    let t0 = Instant::now();
                    let Some(items) = recommend(&c, &s, &json!({"history": history, "k": 10, "trending": trending}))
                    else {
                        continue;
                    };
                    lat.push(t0.elapsed().as_secs_f64() * 1e3);
                    req += 1;
                    let expiry: HashMap<String, u64> = {
                        let l = live.lock().unwrap();
                        items
                            .iter()
                            .filter(|i| i.starts_with("live-"))
                            .filter_map(|i| l.iter().find(|x| &x.id == i).map(|x| (i.clone(), x.expires)))
                            .collect()
                    };
                    expired += expiry.values().filter(|&&e| e <= sent).count();
                    let got = items.contains(&target);
                    hit += got as usize;
                    if burst {
                        breq += 1;
                        bhit += got as usize;
                    }
                    let ts = now_ms();
                    let mut ev: Vec<String> = items
                        .iter()
                        .map(|i| json!({"item_id": i, "kind": "impression", "ts": ts}).to_string())
                        .collect();
                    // the interaction: shown on this surface or elsewhere (an
                    // impression where the list did not have it), then taken
                    if !got {
                        ev.push(json!({"item_id": target, "kind": "impression", "ts": ts}).to_string());
                    }
                    ev.push(json!({"item_id": target, "kind": "click", "ts": ts}).to_string());
                    events.lock().unwrap().extend(ev);
                }
                (req, hit, breq, bhit, expired, lat)
            })
        })
        .collect();
    let mut r = Replay {
        requests: 0,
        hits: 0,
        burst_requests: 0,
        burst_hits: 0,
        expired_served: 0,
        live_items: 0,
        events: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    let mut lat = Vec::new();
    for h in clients {
        let (q, h, bq, bh, e, l) = h.join().unwrap();
        r.requests += q;
        r.hits += h;
        r.burst_requests += bq;
        r.burst_hits += bh;
        r.expired_served += e;
        lat.extend(l);
    }
    stop.store(true, Ordering::Relaxed);
    r.live_items = arrivals.join().unwrap();
    r.events = sender.join().unwrap();
    r.p50_ms = pct(&mut lat, 0.5);
    r.p99_ms = pct(&mut lat, 0.99);
    r
}

/// Time from a live item's upsert to its first appearance in a generated
/// list for a history that points at its cluster: a demo user's history,
/// and the new item placed (by `semantic_id` prefix) under the first three
/// codes of the model's first choice for it. Polled every 2 ms for up to
/// 1 s; the history is one the item was not generated for before.
fn freshness(w: &World, a: &Args, items: usize, new_items: &str) -> (Vec<f64>, usize) {
    let s = serve_with(600, new_items);
    let c = common::blocking_client(30);
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed + 99);
    let (mut times, mut never) = (Vec::new(), 0);
    let sid_of = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    for n in 0..items {
        let u = &w.users[rng.random_range(0..w.users.len())];
        let cut = rng.random_range(3..u.len());
        let history = &u[cut.saturating_sub(10)..cut];
        let body = json!({"history": history, "k": 20, "strategy": "generative", "trending": 0});
        let first: Value = c.post(s.at("/v1/recommend")).json(&body).send().expect("recommend").json().expect("answer");
        let prefix: Vec<u32> = sid_of(&first["items"][0]["semantic_id"])[..3].to_vec();
        let base = rng.random_range(0..w.emb.len());
        let emb: Vec<f32> = w.emb[base].iter().map(|x| x + 0.01 * (rng.random::<f32>() - 0.5)).collect();
        let id = format!("fresh-{n}");
        let t0 = Instant::now();
        let r = c
            .post(s.at("/admin/items"))
            .bearer_auth(TOKEN)
            .json(&json!({"id": id, "embedding": emb, "semantic_id": prefix, "ttl_s": 3600}))
            .send()
            .expect("upsert");
        if !r.status().is_success() {
            // (every collision code under that prefix is taken)
            continue;
        }
        let seen = loop {
            if recommend(&c, &s, &body).is_some_and(|items| items.contains(&id)) {
                break Some(t0.elapsed().as_secs_f64() * 1e3);
            }
            if t0.elapsed() > Duration::from_secs(1) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        match seen {
            Some(ms) => times.push(ms),
            None => never += 1,
        }
    }
    (times, never)
}

/// Recommend latencies of `clients` threads for `secs`, beside `event_threads`
/// threads sending batches of events (10,000 as fast as answered, or 1,000
/// paced to `rate` events/s in all); returns (latencies, answers/s, events/s).
fn load(
    w: &Arc<World>,
    s: &Arc<Server>,
    clients: usize,
    event_threads: usize,
    rate: Option<f64>,
    secs: f64,
) -> (Vec<f64>, f64, f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let events = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..event_threads)
        .map(|t| {
            let (w, s, events) = (w.clone(), s.clone(), events.clone());
            std::thread::spawn(move || {
                let c = common::blocking_client(60);
                let mut rng = ChaCha8Rng::seed_from_u64(50 + t as u64);
                let kinds = ["impression", "impression", "impression", "click", "watch", "purchase"];
                let batch = if rate.is_some() { 1_000 } else { 10_000 };
                let every = rate.map(|r| Duration::from_secs_f64(batch as f64 * event_threads as f64 / r));
                let mut next = Instant::now();
                while Instant::now() < end {
                    if let Some(every) = every {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += every;
                    }
                    let lines: Vec<String> = (0..batch)
                        .map(|_| {
                            let i = rng.random_range(0..w.ids.len());
                            json!({"item_id": w.ids[i], "kind": kinds[rng.random_range(0..kinds.len())]}).to_string()
                        })
                        .collect();
                    events.fetch_add(post_events(&c, &s, &lines) as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..clients)
        .map(|t| {
            let (w, s, answers) = (w.clone(), s.clone(), answers.clone());
            std::thread::spawn(move || {
                let c = common::blocking_client(60);
                let mut rng = ChaCha8Rng::seed_from_u64(80 + t as u64);
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let u = &w.users[rng.random_range(0..w.users.len())];
                    let cut = rng.random_range(3..u.len());
                    let t0 = Instant::now();
                    if recommend(&c, &s, &json!({"history": &u[cut.saturating_sub(10)..cut], "k": 10})).is_some() {
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat
            })
        })
        .collect();
    senders.into_iter().for_each(|h| h.join().unwrap());
    let lat: Vec<f64> = readers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let t = started.elapsed().as_secs_f64();
    (lat, answers.load(Ordering::Relaxed) as f64 / t, events.load(Ordering::Relaxed) as f64 / t)
}

fn main() {
    let a = args();
    let tmp = TempDir::new("live-bench");
    let w = Arc::new(world(&tmp.0));
    let mut out = serde_json::Map::new();
    println!(
        "world: {} users, {} catalog items; {}x time, live items {}/world min, lifetimes log-normal around 30 world min, \
         Pareto(1.5) popularity, half-life 10 world min; {} clients, {} s per replay",
        w.users.len(),
        w.ids.len(),
        a.accel,
        a.arrivals_per_min,
        a.clients,
        a.seconds
    );
    println!("\n| bursts | trending | requests | HR@10 | HR@10 of burst interactions | expired served | live items | events | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let run = |part: &str| (a.only.is_empty() && part != "expiry") || a.only.iter().any(|p| p == part);
    let replays = [(a.burst_share, 0.0), (a.burst_share, a.trending), (0.0, 0.0), (0.0, a.trending)];
    let expiry_only = [(a.burst_share, a.trending)];
    let chosen: &[(f64, f32)] = if run("replay") {
        &replays
    } else if run("expiry") {
        &expiry_only
    } else {
        &[]
    };
    for &(share, tw) in chosen {
        let r = replay(&w, &a, tw, share);
        let hr = r.hits as f64 / r.requests.max(1) as f64;
        let bhr = r.burst_hits as f64 / r.burst_requests.max(1) as f64;
        println!(
            "| {share} | {tw} | {} | {hr:.4} | {bhr:.4} ({} requests) | {} | {} | {} | {:.1} | {:.1} |",
            r.requests, r.burst_requests, r.expired_served, r.live_items, r.events, r.p50_ms, r.p99_ms
        );
        out.insert(
            format!("replay_bursts_{share}_trending_{tw}"),
            json!({"requests": r.requests, "hr10": hr, "burst_requests": r.burst_requests, "burst_hr10": bhr,
                   "expired_served": r.expired_served, "live_items": r.live_items, "events": r.events,
                   "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}),
        );
    }
    if run("fresh") {
        println!();
        for new_items in ["model", "sibling"] {
            let (mut times, never) = freshness(&w, &a, 60, new_items);
            let (p50, p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
            println!(
                "upsert to first generated (--new-items {new_items}; a history whose first choice's cluster it joins, k 20): \
                 p50 {p50:.1} ms, p99 {p99:.1} ms over {} items; {never} not in the top 20 within 1 s",
                times.len()
            );
            out.insert(
                format!("freshness_{new_items}"),
                json!({"p50_ms": p50, "p99_ms": p99, "found": times.len(), "never": never}),
            );
        }
    }
    if run("events") {
        let s = Arc::new(serve(600));
        let secs = 10.0;
        let (mut idle1, rps1, _) = load(&w, &s, a.clients, 0, None, secs);
        let (_, _, alone) = load(&w, &s, 0, 2, None, secs);
        let (mut busy, rps_busy, beside) = load(&w, &s, a.clients, 2, Some(a.events_rate), secs);
        let (mut idle2, rps2, _) = load(&w, &s, a.clients, 0, None, secs);
        let idle_p99 = (pct(&mut idle1, 0.99) + pct(&mut idle2, 0.99)) / 2.0;
        let busy_p99 = pct(&mut busy, 0.99);
        println!("\n| | events/s | answers/s | recommend p50 ms | recommend p99 ms |");
        println!("|---|---|---|---|---|");
        println!(
            "| {} clients, idle (before) | - | {rps1:.0} | {:.1} | {:.1} |",
            a.clients,
            pct(&mut idle1, 0.5),
            pct(&mut idle1, 0.99)
        );
        println!("| events alone (2 senders, 10,000 per batch, as fast as answered) | {alone:.0} | - | - | - |");
        println!(
            "| {} clients + events paced to {} /s (2 senders, 1,000 per batch) | {beside:.0} | {rps_busy:.0} | {:.1} | {busy_p99:.1} ({:.2}x idle) |",
            a.clients,
            a.events_rate,
            pct(&mut busy, 0.5),
            busy_p99 / idle_p99
        );
        println!(
            "| {} clients, idle (after) | - | {rps2:.0} | {:.1} | {:.1} |",
            a.clients,
            pct(&mut idle2, 0.5),
            pct(&mut idle2, 0.99)
        );
        out.insert(
        "events".into(),
        json!({"alone_per_s": alone, "beside_per_s": beside, "idle_p99_ms": idle_p99, "busy_p99_ms": busy_p99,
               "p99_ratio": busy_p99 / idle_p99, "answers_per_s_idle": (rps1 + rps2) / 2.0, "answers_per_s_busy": rps_busy}),
    );
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&Value::Object(out)).unwrap()).expect("write --json");
    }
}
