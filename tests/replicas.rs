//! Three `genrec serve --feed` replicas on one real Redis: edits sent to
//! random replicas converge (same catalog, same answers), a record that does
//! not parse is skipped by all, a replica killed with SIGKILL mid-stream and
//! restarted catches up from the compacted shared folder, and Redis killed
//! and restarted (append-only file) loses nothing and applies nothing twice.

use crate::common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hub::{demo_files, FakeHub};
use common::redis::{self, edits_in_stream, RedisServer};
use common::{Server, TempDir};
use genrec::feed::Feed;
use serde_json::{json, Value};

const TOKEN: &str = "replica-token-0123456789";
const STREAM: &str = "genrec-it";

fn client() -> reqwest::blocking::Client {
    common::blocking_client(60)
}

fn start(root: &TempDir, feed: &str, name: &str) -> Server {
    start_env(root, feed, name, &[])
}

fn start_env(root: &TempDir, feed: &str, name: &str, env: &[(&str, &str)]) -> Server {
    let (key, password) = redis::secrets(&root.0);
    let s = Server::start_env(
        env,
        &[
            "--feed-key-file",
            key.to_str().unwrap(),
            "--feed-password-file",
            password.to_str().unwrap(),
            "--model",
            root.0.join("a").to_str().unwrap(),
            "--model-root",
            root.0.to_str().unwrap(),
            "--feed",
            feed,
            "--replica-name",
            name,
            "--admin-token",
            TOKEN,
            // the replica killed in step 2 stops holding trimming back soon
            "--feed-mark-ttl-s",
            "3",
        ],
    );
    let c = client();
    let until = Instant::now() + Duration::from_secs(60);
    while c.get(s.at("/readyz")).send().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < until, "replica {name} never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn get(c: &reqwest::blocking::Client, url: &str) -> Value {
    c.get(url).bearer_auth(TOKEN).send().expect("GET").json().expect("JSON")
}

/// A vector of the demo catalog's dimension, different for every `i`.
fn vector(i: usize) -> Vec<f32> {
    common::vector(i, 384)
}

/// Upserts item `id` through one of `urls` (starting at `first`), moving on
/// to the next replica after an error (a killed replica, the feed down)
/// until one acknowledges it.
fn upsert_item(c: &reqwest::blocking::Client, urls: &[String], first: usize, id: &str, i: usize) {
    let until = Instant::now() + Duration::from_secs(90);
    let mut k = first;
    loop {
        let url = &urls[k % urls.len()];
        let r = c
            .post(format!("{url}/admin/items"))
            .bearer_auth(TOKEN)
            .json(&json!({"id": id, "embedding": vector(i)}))
            .send();
        match r.map(|r| r.status().as_u16()) {
            Ok(200 | 201) => return,
            Ok(409 | 422) => panic!("{id} refused"),
            _ => {}
        }
        assert!(Instant::now() < until, "no replica acknowledged {id}");
        std::thread::sleep(Duration::from_millis(50));
        k += 1;
    }
}

/// Waits until every replica applied the whole stream, then checks that they
/// serve the same catalog and give identical answers.
fn converge(replicas: &[&Server], feed: &dyn Feed) -> u64 {
    let c = client();
    // (the first call after a Redis restart finds its connection closed)
    let head = (0..50)
        .find_map(|_| {
            feed.head().ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        })
        .expect("the feed answers")
        .unwrap_or_default()
        .to_string();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let positions: Vec<Value> =
            replicas.iter().map(|s| get(&c, &s.at("/admin/catalog"))["feed"]["position"].clone()).collect();
        if positions.iter().all(|p| p == &json!(head)) {
            break;
        }
        assert!(Instant::now() < until, "replicas did not reach {head}: {positions:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let infos: Vec<Value> = replicas.iter().map(|s| get(&c, &s.at("/admin/catalog"))).collect();
    for i in &infos[1..] {
        for field in ["served", "rows", "last_edit_id"] {
            assert_eq!(i[field], infos[0][field], "{field} differs between replicas");
        }
    }
    for p in 0..30 {
        let history: Vec<String> = (0..4).map(|j| ((p * 17 + j * 5) % 600).to_string()).collect();
        let body = json!({"history": history, "k": 10, "strategy": "generative"});
        let answers: Vec<Value> =
            replicas.iter().map(|s| common::items_and_scores(&c, &s.at("/v1/recommend"), &body)).collect();
        assert!(answers.iter().all(|a| a == &answers[0]), "probe {p}: replicas answer differently: {answers:?}");
    }
    infos[0]["last_edit_id"].as_u64().unwrap()
}

#[test]
fn three_replicas_converge_through_a_replica_kill_and_a_redis_restart() {
    if !redis::available() {
        return;
    }
    let root = common::demo_root("replicas");
    let rdir = TempDir::new("redis");
    let mut redis = RedisServer::start(&rdir.0);
    let address = redis.feed(STREAM);
    let feed = redis::open_feed(&address);
    let mut reps: Vec<Server> = (0..3).map(|i| start(&root, &address, &format!("r{i}"))).collect();
    let urls: Vec<String> = reps.iter().map(|s| s.url.clone()).collect();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let c = client();

    // 1. three writers, each to a different replica per edit, upserts and
    //    deletes, and a record that does not parse
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let (urls, acked) = (urls.clone(), acked.clone());
            std::thread::spawn(move || {
                let c = client();
                for i in (t..120).step_by(3) {
                    let id = format!("p1-{i}");
                    upsert_item(&c, &urls, i * 7, &id, i);
                    acked.lock().unwrap().insert(id);
                    if i % 10 == t && i >= 30 {
                        let victim = format!("p1-{}", i - 30);
                        let st = c
                            .delete(format!("{}/admin/items/{victim}", urls[i % 3]))
                            .bearer_auth(TOKEN)
                            .send()
                            .unwrap()
                            .status();
                        assert_eq!(st.as_u16(), 200, "delete {victim}");
                        acked.lock().unwrap().remove(&victim);
                    }
                }
            })
        })
        .collect();
    feed.append(br#"{"kind":"resize","to":3}"#, None).unwrap();
    writers.into_iter().for_each(|w| w.join().unwrap());
    converge(&reps.iter().collect::<Vec<_>>(), &feed);
    for s in &reps {
        assert_eq!(
            get(&c, &s.at("/admin/catalog"))["feed"]["skipped"],
            1,
            "the bad record is skipped by every replica"
        );
    }

    // 2. replica 1 killed mid-stream (SIGKILL), a compaction on replica 0,
    //    replica 1 restarted: it starts from the new version and catches up
    let writing = spawn_writer(vec![urls[0].clone(), urls[2].clone()], 120..240, "p2", acked.clone());
    wait_acked(&acked, "p2-", 30);
    drop(reps.remove(1)); // SIGKILL
    let compacted = c.post(format!("{}/admin/catalog/compact", urls[0])).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(compacted.status().as_u16(), 200);
    reps.insert(1, start(&root, &address, "r1-again"));
    writing.join().unwrap();
    converge(&reps.iter().collect::<Vec<_>>(), &feed);

    // 3. Redis killed (SIGKILL) mid-stream and restarted on its AOF: the
    //    replicas serve meanwhile, reconnect, and converge
    let writing = spawn_writer(urls_of(&reps), 240..360, "p3", acked.clone());
    wait_acked(&acked, "p3-", 30);
    redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    for s in &reps {
        let body = json!({"history": ["1", "2", "3"], "k": 5});
        assert_eq!(c.post(s.at("/v1/recommend")).json(&body).send().unwrap().status().as_u16(), 200, "serving goes on");
        assert_eq!(c.get(s.at("/readyz")).send().unwrap().status().as_u16(), 200, "a running replica stays ready");
    }
    let down: String = c.get(reps[0].at("/metrics")).send().unwrap().text().unwrap();
    assert!(down.contains("genrec_feed_up 0"), "the metric says the feed is down");
    redis.restart();
    writing.join().unwrap();
    let last_edit_id = converge(&reps.iter().collect::<Vec<_>>(), &feed);
    assert_eq!(last_edit_id, edits_in_stream(&feed), "every edit in the stream applied exactly once");

    // 4. a model swap on one replica fans out to all; so does a rollback
    std::fs::create_dir_all(root.0.join("b")).unwrap();
    for f in ["config.json", "genrec.json", "model.safetensors"] {
        std::fs::copy(root.0.join("a").join(f), root.0.join("b").join(f)).unwrap();
    }
    let swapped = c.post(reps[2].at("/admin/models")).bearer_auth(TOKEN).json(&json!({"path": "b"})).send().unwrap();
    assert_eq!(swapped.status().as_u16(), 200);
    let wanted = root.0.join("b").canonicalize().unwrap().display().to_string();
    converge(&reps.iter().collect::<Vec<_>>(), &feed);
    for s in &reps {
        let m = get(&c, &s.at("/admin/models"));
        assert_eq!(m["current"]["source"], json!(wanted), "every replica serves the checkpoint swapped in on one");
        assert_eq!(m["feed"]["model_change"]["kind"], "model_load");
        assert!(m["feed"]["model_change"].get("refused").is_none());
    }
    let back = c.post(reps[0].at("/admin/models/rollback")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(back.status().as_u16(), 200);
    converge(&reps.iter().collect::<Vec<_>>(), &feed);
    let sources: Vec<Value> =
        reps.iter().map(|s| get(&c, &s.at("/admin/models"))["current"]["source"].clone()).collect();
    assert!(sources.iter().all(|x| x == &sources[0] && x != &json!(wanted)), "every replica rolled back: {sources:?}");

    // 5. two more compactions: the second trims the stream (XTRIM MINID); a
    //    replica restarted after that starts from the newest version. (The
    //    replica killed in step 2 held trimming back for --feed-mark-ttl-s.)
    std::thread::sleep(Duration::from_millis(3500));
    for round in 0..2 {
        for i in 0..5 {
            let n = 400 + round * 10 + i;
            upsert_item(&c, &urls_of(&reps), n, &format!("p5-{n}"), n);
            acked.lock().unwrap().insert(format!("p5-{n}"));
        }
        converge(&reps.iter().collect::<Vec<_>>(), &feed);
        let r = c.post(reps[1].at("/admin/catalog/compact")).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "compaction {round}");
    }
    assert!(feed.trimmed_below().unwrap() > genrec::feed::Position::START, "the stream was trimmed");
    assert!(edits_in_stream(&feed) < last_edit_id, "trimmed entries are gone from the stream");
    drop(reps.remove(2));
    reps.push(start(&root, &address, "r2-again"));
    converge(&reps.iter().collect::<Vec<_>>(), &feed);
    for s in &reps {
        for id in acked.lock().unwrap().iter() {
            assert_eq!(
                get(&c, &s.at(&format!("/admin/items/{id}")))["served"],
                true,
                "{id} acknowledged but not served"
            );
        }
    }
}

/// Upserts items `range` (ids `TAG-i`) through `urls` on a thread.
fn spawn_writer(
    urls: Vec<String>,
    range: std::ops::Range<usize>,
    tag: &'static str,
    acked: Arc<Mutex<BTreeSet<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let c = client();
        for i in range {
            let id = format!("{tag}-{i}");
            upsert_item(&c, &urls, i, &id, i);
            acked.lock().unwrap().insert(id);
        }
    })
}

/// Waits until `n` items whose ids start with `prefix` are acknowledged.
fn wait_acked(acked: &Mutex<BTreeSet<String>>, prefix: &str, n: usize) {
    while acked.lock().unwrap().iter().filter(|id| id.starts_with(prefix)).count() < n {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A checkpoint named on the Hub and loaded on one replica reaches the others
/// pinned to the commit that replica pulled: a replica that joins after the
/// branch moved on still serves that commit.
#[test]
fn a_hub_load_reaches_every_replica_pinned_to_one_commit() {
    if !redis::available() {
        return;
    }
    let root = common::demo_root("replicas-hub");
    let rdir = TempDir::new("redis-hub");
    let redis = RedisServer::start(&rdir.0);
    let address = redis.feed("genrec-it-hub");
    let feed = redis::open_feed(&address);
    let hub = FakeHub::start();
    let first = hub.commit("genrec/demo", &["main"], demo_files(true));
    let (home0, home1) = (TempDir::new("hf-r0"), TempDir::new("hf-r1"));
    let (h0, h1) = (home0.0.display().to_string(), home1.0.display().to_string());
    let env = |home| [("HF_ENDPOINT", hub.url.as_str()), ("HF_HOME", home), ("HF_HUB_OFFLINE", "")];
    let r0 = start_env(&root, &address, "h0", &env(h0.as_str()));
    let c = client();
    let swapped =
        c.post(r0.at("/admin/models")).bearer_auth(TOKEN).json(&json!({"path": "hf:genrec/demo"})).send().unwrap();
    assert_eq!(swapped.status().as_u16(), 200);
    let pinned = json!(format!("hf:genrec/demo@{first}"));
    // the branch moves on before the second replica joins
    let second = hub.commit("genrec/demo", &["main"], demo_files(false));
    assert_ne!(first, second);
    let r1 = start_env(&root, &address, "h1", &env(h1.as_str()));
    converge(&[&r0, &r1], &feed);
    let version = swapped.json::<Value>().unwrap()["current"]["version"].clone();
    for s in [&r0, &r1] {
        let m = get(&c, &s.at("/admin/models"));
        assert_eq!((&m["current"]["source"], &m["current"]["version"]), (&pinned, &version), "{m}");
        assert_eq!(m["feed"]["model_change"]["kind"], "model_load");
    }
}

fn urls_of(reps: &[Server]) -> Vec<String> {
    reps.iter().map(|s| s.url.clone()).collect()
}

/// Someone who can reach Redis (password and all) but does not hold the
/// feed key appends an upsert and a model load, unsealed and sealed with
/// another key: every replica skips and counts them, and what the replicas
/// serve does not change.
#[test]
fn records_without_the_feed_key_change_nothing_any_replica_serves() {
    if !redis::available() {
        return;
    }
    let root = common::demo_root("replicas-forged");
    let rdir = TempDir::new("redis-forged");
    let server = RedisServer::start(&rdir.0);
    let stream = "genrec-it-forged";
    let address = server.feed(stream);
    let feed = redis::open_feed(&address);
    let reps: Vec<Server> = (0..2).map(|i| start(&root, &address, &format!("f{i}"))).collect();
    let refs: Vec<&Server> = reps.iter().collect();
    let c = client();

    let url = format!("redis://:{}@127.0.0.1:{}/", redis::PASSWORD, server.port);
    let mut con = ::redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let upsert = json!({"kind": "items", "edits": [
        {"op": "upsert", "id": "forged", "title": "forged", "embedding": vector(7)}
    ]})
    .to_string();
    let load = json!({"kind": "model_load", "path": "a"}).to_string();
    let other = genrec::feed::auth::FeedKey::new(vec![b'x'; 40], "another deployment's").unwrap();
    let sealed_elsewhere = other.seal(upsert.as_bytes());
    for payload in [upsert.as_bytes(), load.as_bytes(), &sealed_elsewhere[..]] {
        let _: String = ::redis::cmd("XADD").arg(stream).arg("*").arg("r").arg(payload).query(&mut con).unwrap();
    }
    // a real edit after them: once the replicas applied it, they passed them
    let urls: Vec<String> = reps.iter().map(|s| s.url.clone()).collect();
    upsert_item(&c, &urls, 0, "real", 3);
    converge(&refs, &feed);
    for s in &reps {
        let status = |id: &str| c.get(s.at(&format!("/admin/items/{id}"))).bearer_auth(TOKEN).send().unwrap().status();
        assert_eq!(status("forged").as_u16(), 404);
        assert_eq!(status("real").as_u16(), 200);
        let info = get(&c, &s.at("/admin/catalog"));
        assert!(info["feed"]["skipped"].as_u64().unwrap() >= 3, "{info}");
        let models = get(&c, &s.at("/admin/models"));
        assert!(models["feed"]["model_change"].is_null(), "no model change was taken: {models}");
    }
}

/// The Redis feed's scripts: the trim mark never moves backwards (it was
/// read, compared and set in three commands), and a lease is renewed and
/// given back only by its holder.
#[test]
fn the_redis_trim_mark_only_rises_and_leases_answer_only_their_holder() {
    if !redis::available() {
        return;
    }
    let rdir = TempDir::new("redis-marks");
    let server = RedisServer::start(&rdir.0);
    let feed = redis::open_feed(&server.feed("genrec-it-marks"));
    let (high, low): (genrec::feed::Position, genrec::feed::Position) =
        ("1700000000020-1".parse().unwrap(), "1700000000010-5".parse().unwrap());
    feed.trim_below(high).unwrap();
    feed.trim_below(low).unwrap();
    assert_eq!(feed.trimmed_below().unwrap(), high);
    let ttl = Duration::from_secs(60);
    assert!(feed.try_lease("compact", "a", ttl).unwrap());
    assert!(!feed.try_lease("compact", "b", ttl).unwrap());
    assert!(!feed.renew_lease("compact", "b", ttl).unwrap(), "only the holder renews");
    assert!(feed.renew_lease("compact", "a", ttl).unwrap());
    feed.release_lease("compact", "b").unwrap();
    assert!(feed.renew_lease("compact", "a", ttl).unwrap(), "another holder cannot give it back");
    feed.release_lease("compact", "a").unwrap();
    assert!(!feed.renew_lease("compact", "a", ttl).unwrap(), "given back");
}

/// An LLM-layout model (tokenizer, item map, prompt; built in Rust) through
/// the feed: the first replica writes the item map's catalog into the shared
/// folder, the second opens it, and a model load on one reaches the other.
#[test]
fn an_llm_layout_model_load_reaches_every_replica() {
    if !redis::available() {
        return;
    }
    let root = TempDir::new("replicas-llm");
    common::llm::write(&root.0.join("a"), 3);
    let rdir = TempDir::new("redis-llm");
    let redis = RedisServer::start(&rdir.0);
    let address = redis.feed("genrec-it-llm");
    let feed = redis::open_feed(&address);
    let r0 = start(&root, &address, "l0");
    let r1 = start(&root, &address, "l1");
    assert!(root.0.join("a/catalog/CURRENT").is_file());
    common::llm::write(&root.0.join("b"), 4);
    let c = client();
    let swapped = c.post(r0.at("/admin/models")).bearer_auth(TOKEN).json(&json!({"path": "b"})).send().unwrap();
    assert_eq!(swapped.status().as_u16(), 200);
    let version = swapped.json::<Value>().unwrap()["current"]["version"].clone();
    // (not `converge`: its probes are the demo catalog's ids)
    let until = Instant::now() + Duration::from_secs(30);
    while get(&c, &r1.at("/admin/models"))["current"]["version"] != version {
        assert!(Instant::now() < until, "the load did not reach the second replica");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(feed.head().is_ok());
    let body = json!({"history": ["3", "17"], "k": 5, "exclude_history": false});
    let mut answers = Vec::new();
    for s in [&r0, &r1] {
        let m = get(&c, &s.at("/admin/models"));
        assert_eq!(m["current"]["version"], version, "{m}");
        assert!(m["current"]["source"].as_str().unwrap().ends_with("/b"), "{m}");
        let r = c.post(s.at("/v1/recommend")).json(&body).send().unwrap();
        let (st, v) = (r.status().as_u16(), r.json::<Value>().unwrap());
        assert_eq!(st, 200, "{v}");
        answers.push(v["items"].clone());
    }
    assert_eq!(answers[0], answers[1]);
}
