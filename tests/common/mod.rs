//! Helpers for integration tests: run the real `genrec` binary.

#![allow(dead_code)]

pub mod crash;
pub mod disk_full;
pub mod heap;
pub mod hub;
pub mod llm;
pub mod redis;
pub mod schema;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_genrec")
}

/// Runs the `genrec` binary: (success, stdout, stderr).
pub fn genrec(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().expect("run genrec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that must succeed: its stdout.
pub fn ok(args: &[&str]) -> String {
    let (good, out, err) = genrec(args);
    assert!(good, "genrec {args:?} failed:\n{out}\n{err}");
    out
}

/// A command that must fail: its stderr.
pub fn fails(args: &[&str]) -> String {
    let (good, out, err) = genrec(args);
    assert!(!good, "genrec {args:?} should fail:\n{out}");
    err
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Clears the settings of the machine running the tests that would change
/// what a server started by a test does: the Hugging Face client's (a test
/// sets its own) and HTTP proxies (the Hub client does not honour NO_PROXY,
/// so a proxy would swallow a test's loopback Hub).
pub fn isolate(cmd: &mut Command) -> &mut Command {
    for k in ["HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "XDG_CACHE_HOME"] {
        cmd.env_remove(k);
    }
    for k in ["http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(k);
    }
    cmd
}

/// A vector of `dim` values, different for every `i` (new items' embeddings).
pub fn vector(i: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| (((i * 7919 + j * 104_729) % 1000) as f32 / 500.0 - 1.0) + if j == i % dim { 2.0 } else { 0.0 })
        .collect()
}

/// A blocking HTTP client whose requests give up after `seconds`.
pub fn blocking_client(seconds: u64) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(seconds)).build().expect("an HTTP client")
}

/// A fresh temporary folder, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("genrec-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A model root holding copies of the demo catalog (`catalog`, a folder of
/// the first format) and the demo model (`a`), so that a test's server may
/// write there.
pub fn demo_root(tag: &str) -> TempDir {
    let root = TempDir::new(tag);
    let demo = repo().join("models/demo");
    for (from, to) in [("catalog", "catalog"), ("model", "a")] {
        std::fs::create_dir_all(root.0.join(to)).expect("create a folder of the model root");
        for e in std::fs::read_dir(demo.join(from)).expect("read models/demo").flatten() {
            std::fs::copy(e.path(), root.0.join(to).join(e.file_name())).expect("copy the demo files");
        }
    }
    root
}

/// A `genrec serve` process on a free loopback port, killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Starts `genrec serve --addr 127.0.0.1:0 <args>` and waits for its address.
    pub fn start(args: &[&str]) -> Server {
        Self::start_in(None, args)
    }

    /// [`Server::start`] with the working directory `cwd`.
    pub fn start_in(cwd: Option<&std::path::Path>, args: &[&str]) -> Server {
        Self::start_cmd(cwd, &[], args)
    }

    /// [`Server::start`] with these environment variables set.
    pub fn start_env(env: &[(&str, &str)], args: &[&str]) -> Server {
        Self::start_cmd(None, env, args)
    }

    fn start_cmd(cwd: Option<&std::path::Path>, env: &[(&str, &str)], args: &[&str]) -> Server {
        let mut cmd = Command::new(bin());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        isolate(&mut cmd).envs(env.iter().copied());
        let mut child = cmd
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn genrec serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("genrec listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).expect("server did not report its address");
        Server { child, url }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs a JSON body; returns the status and the JSON answer.
pub async fn post_json(c: &reqwest::Client, url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = c.post(url).json(body).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

/// A model fetched by scripts/fetch-models.sh, or `None` to skip
/// (`GENREC_REQUIRE_MODELS=1` makes a missing model a failure).
pub fn fetched(rel: &str) -> Option<PathBuf> {
    let p = repo().join(rel);
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("GENREC_REQUIRE_MODELS").is_err(), "{} missing: run scripts/fetch-models.sh", p.display());
    eprintln!("skipping: {} missing", p.display());
    None
}

/// The items and scores a recommendation request gets from `url` (for
/// comparing replicas' answers).
pub fn items_and_scores(c: &reqwest::blocking::Client, url: &str, body: &serde_json::Value) -> serde_json::Value {
    let v: serde_json::Value = c.post(url).json(body).send().expect("request").json().expect("JSON body");
    let items = v["items"].as_array().expect("items");
    serde_json::json!(items.iter().map(|it| (it["item_id"].clone(), it["score"].clone())).collect::<Vec<_>>())
}

/// The Python with torch and transformers named by `GENREC_PYTHON`, for the
/// tests against transformers (`test` names the one asking); `None` (the
/// test says it is skipped and passes) without it, unless
/// `GENREC_REQUIRE_HF=1`, as in CI.
pub fn hf_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("GENREC_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var("GENREC_REQUIRE_HF").as_deref() != Ok("1"),
                "GENREC_REQUIRE_HF=1 but GENREC_PYTHON is not set"
            );
            eprintln!("{test}: skipped (set GENREC_PYTHON to a Python with torch and transformers)");
            None
        }
    }
}

/// Runs `script` (under the repository) with `args` on `py`; its stderr on failure.
pub fn run_python(py: &std::path::Path, script: &str, args: &[&str]) {
    let out = Command::new(py).arg(repo().join(script)).args(args).output().expect("run python");
    assert!(out.status.success(), "{script} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}
