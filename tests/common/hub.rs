//! A fake Hugging Face Hub on loopback, for `HF_ENDPOINT`: the two routes
//! genrec's pulls use (repository info at a revision, and files by revision
//! with byte ranges), repositories of commits, private repositories that
//! want a token, and a count of the files downloaded.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub type Files = BTreeMap<String, Vec<u8>>;

#[derive(Default)]
struct Repo {
    /// Branch and tag names to commits.
    refs: HashMap<String, String>,
    commits: HashMap<String, Files>,
    /// The token a private repository wants.
    token: Option<String>,
    /// Files sent with one bit flipped (their ETag still the true content's).
    corrupt: Vec<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    /// Files sent whole or from an offset (not the one-byte probes for
    /// their metadata), as `repo/file`.
    downloads: Vec<String>,
    /// Every request answered.
    requests: usize,
    /// Take connections and never answer them.
    silent: bool,
    /// Send the weights' headers and half their bytes, then nothing more.
    stall_weights: bool,
}

/// The demo checkpoint's files; `flip` changes one bit of the weights (another
/// version).
pub fn demo_files(flip: bool) -> Files {
    let dir = super::repo().join("models/demo/model");
    let mut files: Files = ["config.json", "genrec.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    if flip {
        let w = files.get_mut("model.safetensors").unwrap();
        let last = w.len() - 4;
        w[last] ^= 1;
    }
    files
}

pub struct FakeHub {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake hub");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, stop3) = (st.clone(), stop2.clone());
                std::thread::spawn(move || {
                    if st.lock().unwrap().silent {
                        // hold the connection open without a word
                        while !stop3.load(Ordering::SeqCst) {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        drop(conn);
                        return;
                    }
                    let _ = serve(conn, &st);
                });
            }
        });
        FakeHub { url: format!("http://{addr}"), state, stop, addr, thread: Some(thread) }
    }

    /// Adds a commit of `files` to `repo` and points the `refs` (branches or
    /// tags) at it; returns its hash.
    pub fn commit(&self, repo: &str, refs: &[&str], files: Files) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let sha = format!("{:040x}", 0x00c0_ffee_0000_usize + NEXT.fetch_add(1, Ordering::SeqCst));
        let mut st = self.state.lock().unwrap();
        let r = st.repos.entry(repo.to_string()).or_default();
        r.commits.insert(sha.clone(), files);
        for name in refs {
            r.refs.insert(name.to_string(), sha.clone());
        }
        sha
    }

    /// Makes `repo` private: it answers 401 without `Bearer <token>`.
    pub fn private(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().repos.entry(repo.to_string()).or_default().token = Some(token.to_string());
    }

    /// Sends `file` of `repo` with one bit flipped from now on.
    pub fn corrupt(&self, repo: &str, file: &str) {
        self.state.lock().unwrap().repos.entry(repo.to_string()).or_default().corrupt.push(file.to_string());
    }

    /// From now on takes connections and never answers (until stopped).
    pub fn go_silent(&self) {
        self.state.lock().unwrap().silent = true;
    }

    /// From now on (`true`) sends the first half of `model.safetensors` and
    /// then holds the connection open without another byte.
    pub fn stall_weights(&self, stall: bool) {
        self.state.lock().unwrap().stall_weights = stall;
    }

    /// Requests answered so far (of any kind).
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Files downloaded so far.
    pub fn downloads(&self) -> Vec<String> {
        self.state.lock().unwrap().downloads.clone()
    }

    /// Stops answering: connections are refused from now on.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the head and half of `body`, then holds the connection for a
/// minute without another byte.
fn stall_after_half(mut conn: TcpStream, headers: &[(String, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(&body[..body.len() / 2])?;
    conn.flush()?;
    std::thread::sleep(std::time::Duration::from_secs(60));
    Ok(())
}

fn respond(mut conn: TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()
}

/// The ETag the Hub sends, which names the blob in the cache: for weights
/// (LFS files) the SHA-256 of the content, as on the Hub; for the small files
/// a stand-in for their git hash.
fn etag(file: &str, bytes: &[u8]) -> String {
    if file.ends_with(".safetensors") {
        use sha2::Digest;
        return sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let path = path.replace("%2F", "/");
    // as the Hub answers: a repository that is not there is a 401 to an
    // anonymous client, and X-Error-Code says what is missing
    let missing = |conn, status: &str, code: &str| {
        respond(conn, status, &[("X-Error-Code".into(), code.into())], br#"{"error":"not found"}"#)
    };
    let no_repo = |conn| missing(conn, "401 Unauthorized", "RepoNotFound");
    let not_found = |conn| missing(conn, "404 Not Found", "EntryNotFound");
    let mut st = state.lock().unwrap();
    st.requests += 1;
    // /api/models/ORG/REPO/revision/REV
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, rev)) = rest.split_once("/revision/") else { return not_found(conn) };
        let Some(r) = st.repos.get(repo) else { return no_repo(conn) };
        if r.token.as_ref().is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}"))) {
            return respond(conn, "401 Unauthorized", &[], br#"{"error":"Invalid credentials"}"#);
        }
        let sha = r.refs.get(rev).cloned().or_else(|| r.commits.contains_key(rev).then(|| rev.to_string()));
        let Some(sha) = sha else { return missing(conn, "404 Not Found", "RevisionNotFound") };
        let siblings: Vec<_> = r.commits[&sha].keys().map(|f| serde_json::json!({"rfilename": f})).collect();
        let body = serde_json::json!({"id": repo, "sha": sha, "siblings": siblings}).to_string();
        return respond(conn, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes());
    }
    // /cdn/ORG/REPO/COMMIT/FILE: where the Hub sends weights (LFS files),
    // as to its CDN: no token asked (the real one signs the address)
    let cdn = path.strip_prefix("/cdn/").and_then(|rest| {
        let mut parts = rest.splitn(4, '/');
        let (org, name, sha, file) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some((format!("{org}/{name}"), sha.to_string(), file.to_string()))
    });
    let (repo, sha, file) = match cdn {
        Some(x) => x,
        None => {
            // /ORG/REPO/resolve/REV/FILE
            let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
                return not_found(conn);
            };
            let Some(r) = st.repos.get(repo) else { return no_repo(conn) };
            if r.token.as_ref().is_some_and(|t| auth.as_deref() != Some(&format!("Bearer {t}"))) {
                return respond(conn, "401 Unauthorized", &[], b"{}");
            }
            let Some((rev, file)) = rest.split_once('/') else { return not_found(conn) };
            let sha = r.refs.get(rev).cloned().unwrap_or_else(|| rev.to_string());
            let Some(bytes) = r.commits.get(&sha).and_then(|c| c.get(file)) else { return not_found(conn) };
            if file.ends_with(".safetensors") {
                // as the Hub answers for LFS files: a redirect naming the
                // content's SHA-256 in X-Linked-Etag (the ETag is the pointer's)
                let here = conn.local_addr()?;
                let headers = [
                    ("Location".to_string(), format!("http://{here}/cdn/{repo}/{sha}/{file}")),
                    ("X-Linked-Etag".to_string(), format!("\"{}\"", etag(file, bytes))),
                    ("ETag".to_string(), "\"0000pointer0000\"".to_string()),
                    ("X-Repo-Commit".to_string(), sha.clone()),
                ];
                return respond(conn, "302 Found", &headers, b"");
            }
            (repo.to_string(), sha, file.to_string())
        }
    };
    let (repo, file) = (repo.as_str(), file.as_str());
    let Some(r) = st.repos.get(repo) else { return no_repo(conn) };
    let Some(mut bytes) = r.commits.get(&sha).and_then(|c| c.get(file)).cloned() else { return not_found(conn) };
    let tag = etag(file, &bytes);
    if r.corrupt.iter().any(|f| f == file) {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    let headers = |from: usize, to: usize| {
        vec![
            ("ETag".to_string(), format!("\"{tag}\"")),
            ("X-Repo-Commit".to_string(), sha.clone()),
            ("Content-Range".to_string(), format!("bytes {from}-{to}/{}", bytes.len())),
        ]
    };
    let (from, to) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(bytes.len().saturating_sub(1));
            (a.min(bytes.len()), b.min(bytes.len().saturating_sub(1)))
        }
        None => (0, bytes.len().saturating_sub(1)),
    };
    if range.as_deref() != Some("bytes=0-0") {
        st.downloads.push(format!("{repo}/{file}"));
    }
    let stall = st.stall_weights && file == "model.safetensors";
    drop(st);
    let body = if from <= to && from < bytes.len() { &bytes[from..=to] } else { &[][..] };
    if stall {
        return stall_after_half(conn, &headers(from, to), body);
    }
    respond(conn, "206 Partial Content", &headers(from, to), body)
}
