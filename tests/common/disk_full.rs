//! The disk-full harness (`benches/crash.sh --disk-full` runs it long; the
//! integration test `crash::a_full_disk_*` runs it short in CI): a server
//! whose catalog folder is on a small tmpfs of its own, which is then filled
//! up by another file while clients keep sending upserts and
//! recommendation requests. While the disk is full, every upsert must be
//! refused with 507 and a JSON error, a compaction must fail without leaving
//! anything behind, and recommendation latency must stay as it was; once the
//! filler is removed, upserts succeed again; after a SIGKILL and a restart,
//! every acknowledged upsert is served and no refused one is.
//!
//! Mounting a tmpfs takes root (or CAP_SYS_ADMIN); where that is not given,
//! [`run`] returns `None` and the test says it skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{repo, Server, TempDir};

const TOKEN: &str = "disk-full-harness-token-0123456789";

/// What a run found.
#[derive(Debug, Default, Clone)]
pub struct DiskFullReport {
    /// Upserts acknowledged before the disk filled up (a few, then those of
    /// the writing phase) and after it was freed.
    pub acked_before: usize,
    pub acked_writing: usize,
    pub acked_after: usize,
    /// Upserts sent while the disk was full, and how they were answered.
    pub sent_while_full: usize,
    pub refused_507: usize,
    /// Answers other than 507 while full (must be 0), with their bodies.
    pub other_answers: Vec<String>,
    /// A 507 whose body is not a JSON error (must be 0).
    pub bad_bodies: usize,
    /// The answer to a compaction asked for while the disk was full, and
    /// whether the catalog folder held anything new after it (must not).
    pub compact_status: u16,
    /// Bytes of the edit logs when the disk filled up and after the refused
    /// upserts (must be equal: a refused edit leaves no partial record).
    pub log_bytes_when_full: u64,
    pub log_bytes_after_refusals: u64,
    pub compact_left_files: Vec<String>,
    /// Acknowledged upserts not served after the restart, and refused ones
    /// served (both must be empty).
    pub lost: Vec<String>,
    pub phantoms: Vec<String>,
    /// Recommendation latency (ms) with room on the disk, without and with
    /// a client upserting meanwhile, and while the disk is full and that
    /// client's upserts are refused.
    pub p50_ms_before: f64,
    pub p99_ms_before: f64,
    pub p50_ms_writing: f64,
    pub p99_ms_writing: f64,
    pub p50_ms_full: f64,
    pub p99_ms_full: f64,
    pub seconds: f64,
}

impl DiskFullReport {
    pub fn clean(&self) -> bool {
        self.other_answers.is_empty()
            && self.bad_bodies == 0
            && self.refused_507 == self.sent_while_full
            && self.sent_while_full > 0
            && self.compact_left_files.is_empty()
            && self.log_bytes_when_full == self.log_bytes_after_refusals
            && self.lost.is_empty()
            && self.phantoms.is_empty()
    }
}

/// A tmpfs mounted on a fresh folder, unmounted on drop.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(mb: usize) -> Option<Tmpfs> {
        let dir = TempDir::new("disk-full");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&dir.0)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0 .0).status();
    }
}

fn client() -> reqwest::blocking::Client {
    super::blocking_client(20)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder on the tmpfs");
    for e in std::fs::read_dir(from).expect("read models/demo").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy the demo files");
    }
}

/// A vector of the demo catalog's dimension, different for every `i`.
fn embedding(i: u64) -> Vec<f32> {
    super::vector(i as usize, 384)
}

fn upsert(c: &reqwest::blocking::Client, s: &Server, i: u64) -> (u16, Value) {
    let body = json!({"id": format!("d{i}"), "title": format!("disk {i}"), "embedding": embedding(i)});
    match c.post(s.at("/admin/items")).bearer_auth(TOKEN).json(&body).send() {
        Ok(r) => (r.status().as_u16(), r.json().unwrap_or(Value::Null)),
        Err(e) => (0, json!(e.to_string())),
    }
}

/// Latencies (ms, sorted) of `n` recommendation requests, one at a time.
fn latencies(c: &reqwest::blocking::Client, s: &Server, n: usize) -> Vec<f64> {
    let mut ms: Vec<f64> = (0..n)
        .map(|p| {
            let history: Vec<String> = (0..4).map(|j| ((p * 13 + j * 7) % 600).to_string()).collect();
            let t = Instant::now();
            let r = c.post(s.at("/v1/recommend")).json(&json!({"history": history, "k": 10})).send();
            assert!(r.is_ok_and(|r| r.status().is_success()), "a recommendation failed");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Latencies of `requests` recommendation requests (as [`latencies`]) while
/// another client sends upserts of ids from `first` on, one after another;
/// with those upserts' answers.
fn timed_while_writing(
    c: &reqwest::blocking::Client,
    s: &Server,
    requests: usize,
    first: u64,
) -> (Vec<f64>, Vec<(u64, u16, Value)>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (s.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = client();
            let mut answers = Vec::new();
            let mut i = first;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"id": format!("d{i}"), "title": "written", "embedding": embedding(i)});
                let r = c.post(format!("{url}/admin/items")).bearer_auth(TOKEN).json(&body).send();
                answers.push(match r {
                    Ok(r) => (i, r.status().as_u16(), r.json().unwrap_or(Value::Null)),
                    Err(e) => (i, 0, json!(e.to_string())),
                });
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            answers
        })
    };
    let ms = latencies(c, s, requests);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (ms, writer.join().expect("the writer thread"))
}

/// Fills the file system under `dir` with one file until a write fails.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![7u8; chunk];
        while f.write_all(&block).is_ok() {}
    }
    let _ = f.sync_all();
    path
}

/// Bytes in the edit logs of a catalog folder.
fn log_bytes(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter(|f| Path::new(f).file_name().is_some_and(|n| n.to_string_lossy().starts_with("edits-")))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(files_under(&p));
        }
    }
    out.sort();
    out
}

/// One run: `requests` recommendation requests timed before and while the
/// disk is full, and as many upserts sent while it is. `None`: no tmpfs can
/// be mounted here.
pub fn run(requests: usize) -> Option<DiskFullReport> {
    let t0 = Instant::now();
    let fs = Tmpfs::mount(32)?;
    let root = fs.0 .0.clone();
    let demo = repo().join("models/demo");
    copy_dir(&demo.join("catalog"), &root.join("catalog"));
    copy_dir(&demo.join("model"), &root.join("a"));
    let model = root.join("a").display().to_string();
    let args = ["--model", model.as_str(), "--admin-token", TOKEN];
    let mut report = DiskFullReport::default();
    let c = client();
    let mut acked: Vec<u64> = Vec::new();
    let mut refused: Vec<u64> = Vec::new();
    {
        let s = Server::start(&args);
        for i in 0..20 {
            if (200..300).contains(&upsert(&c, &s, i).0) {
                acked.push(i);
            }
        }
        report.acked_before = acked.len();
        latencies(&c, &s, 20);
        let before = latencies(&c, &s, requests);
        (report.p50_ms_before, report.p99_ms_before) = (quantile(&before, 0.5), quantile(&before, 0.99));
        // the same requests beside a client upserting as fast as it can,
        // with room on the disk
        let (writing, answers) = timed_while_writing(&c, &s, requests, 100_000);
        (report.p50_ms_writing, report.p99_ms_writing) = (quantile(&writing, 0.5), quantile(&writing, 0.99));
        for (i, status, _) in answers {
            if (200..300).contains(&status) {
                acked.push(i);
                report.acked_writing += 1;
            } else {
                report.other_answers.push(format!("d{i}: {status} with room on the disk"));
            }
        }

        // the disk fills up; a writer keeps sending upserts meanwhile
        let filler = fill(&root);
        report.log_bytes_when_full = log_bytes(&root.join("catalog"));
        let catalog_files = files_under(&root.join("catalog"));
        let (full, answers) = timed_while_writing(&c, &s, requests, 1_000_000);
        (report.p50_ms_full, report.p99_ms_full) = (quantile(&full, 0.5), quantile(&full, 0.99));
        for (i, status, body) in answers {
            report.sent_while_full += 1;
            match status {
                507 => {
                    report.refused_507 += 1;
                    if !body["error"].is_string() {
                        report.bad_bodies += 1;
                    }
                }
                _ => report.other_answers.push(format!("d{i}: {status} {body}")),
            }
            if (200..300).contains(&status) {
                acked.push(i);
            } else {
                refused.push(i);
            }
        }
        report.log_bytes_after_refusals = log_bytes(&root.join("catalog"));
        let r = c.post(s.at("/admin/catalog/compact")).bearer_auth(TOKEN).send().expect("ask for a compaction");
        report.compact_status = r.status().as_u16();
        let after = files_under(&root.join("catalog"));
        // (the compaction's new edit log stays: the edits from then on are in it)
        let new_log = |f: &String| Path::new(f).file_name().is_some_and(|n| n.to_string_lossy().starts_with("edits-"));
        report.compact_left_files = after.into_iter().filter(|f| !catalog_files.contains(f) && !new_log(f)).collect();

        // room again: edits resume
        std::fs::remove_file(filler).expect("remove the filler");
        for i in 5000..5020 {
            if (200..300).contains(&upsert(&c, &s, i).0) {
                acked.push(i);
                report.acked_after += 1;
            }
        }
        // SIGKILL
        drop(s);
    }
    let s = Server::start(&args);
    let served = |i: u64| {
        c.get(s.at(&format!("/admin/items/d{i}")))
            .bearer_auth(TOKEN)
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .is_some_and(|v| v["served"] == true)
    };
    report.lost = acked.iter().filter(|&&i| !served(i)).map(|i| format!("d{i}")).collect();
    report.phantoms = refused.iter().filter(|&&i| served(i)).map(|i| format!("d{i}")).collect();
    drop(s);
    report.seconds = t0.elapsed().as_secs_f64();
    Some(report)
}
