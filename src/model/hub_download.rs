//! Downloads of one file of a pinned Hub commit into the Hugging Face cache
//! layout (`blobs/<etag>`, linked from `snapshots/<commit>/<file>`, as the
//! Python client and hf-hub leave them), with a read timeout on every
//! request: hf-hub's own downloads have none, so a Hub or proxy that stops
//! sending half-way would hold a pull (and a replica's feed thread) forever.
//!
//! A blob is written to a temporary name beside it, checked against the
//! SHA-256 the Hub names for weights (LFS files), synced and renamed; a
//! failed or stalled download leaves nothing in the cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

/// What a download can fail with, before it is named for the checkpoint.
#[derive(Debug)]
pub(super) enum DownloadError {
    /// The request failed: an HTTP status, or the connection (a timeout among them).
    Request(Box<ureq::Error>),
    /// The body stopped or broke off.
    Body(std::io::Error),
    /// Writing the cache.
    Io { path: PathBuf, source: std::io::Error },
    /// The content is not what the Hub's ETag names.
    Corrupt { expected: String, got: String },
}

/// The HTTP clients of one pull.
pub(super) struct Downloader {
    /// Asks the Hub without following redirects (the Hub's answer names the
    /// blob; a CDN's does not).
    direct: ureq::Agent,
    follow: ureq::Agent,
    endpoint: String,
    token: Option<String>,
    progress: bool,
}

impl Downloader {
    /// Clients whose connects and reads each give up after `timeout`.
    pub(super) fn new(endpoint: &str, token: Option<String>, timeout: Duration, progress: bool) -> Downloader {
        let agent = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .timeout_write(timeout)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
        };
        Downloader {
            direct: agent().redirects(0).build(),
            follow: agent().build(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            progress,
        }
    }

    /// Downloads `file` of `repo` at `commit` into the cache folder
    /// `repo_dir`; returns its path under `snapshots/<commit>/`.
    pub(super) fn fetch(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        repo_dir: &Path,
    ) -> Result<PathBuf, DownloadError> {
        let url = format!("{}/{repo}/resolve/{commit}/{file}", self.endpoint);
        let mut ask = self.direct.get(&url);
        if let Some(t) = &self.token {
            ask = ask.set("Authorization", &format!("Bearer {t}"));
        }
        let first = ask.call().map_err(|e| DownloadError::Request(Box::new(e)))?;
        // the Hub names the content: x-linked-etag (weights, before the
        // redirect to the CDN) or the ETag
        let etag = first
            .header("x-linked-etag")
            .or_else(|| first.header("etag"))
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        let body = if (300..400).contains(&first.status()) {
            let to = first.header("location").unwrap_or_default();
            // a relative redirect stays on the Hub (a renamed repository):
            // it keeps the token; a CDN's absolute address gets none
            let same_host = to.starts_with('/');
            let to = if same_host { format!("{}{to}", origin(&url)) } else { to.to_string() };
            let mut ask = self.follow.get(&to);
            if let (Some(t), true) = (&self.token, same_host) {
                ask = ask.set("Authorization", &format!("Bearer {t}"));
            }
            ask.call().map_err(|e| DownloadError::Request(Box::new(e)))?
        } else {
            first
        };
        // (a compressed answer's length is not the content's: not checked)
        let size: u64 = match body.header("content-encoding") {
            Some(_) => 0,
            None => body.header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0),
        };

        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|source| DownloadError::Io { path: blobs.clone(), source })?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DownloadError::Io { path, source }
        };
        let mut tmp = tempfile::Builder::new().prefix(".download-").tempfile_in(&blobs).map_err(io(&blobs))?;
        let progress = self.progress.then(|| crate::progress::Progress::new(file, size));
        let mut hasher = sha2::Sha256::new();
        let mut reader = body.into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut done = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(DownloadError::Body)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io(tmp.path()))?;
            done += n as u64;
            if let Some(p) = &progress {
                p.set(done);
            }
        }
        if let Some(p) = progress {
            p.finish();
        }
        if size > 0 && done != size {
            let message = format!("the answer ended after {done} of {size} bytes");
            return Err(DownloadError::Body(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message)));
        }
        let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let name = match etag {
            // an LFS file's ETag is its SHA-256
            Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                if !t.eq_ignore_ascii_case(&got) {
                    return Err(DownloadError::Corrupt { expected: t, got });
                }
                t.to_ascii_lowercase()
            }
            Some(t) => t,
            None => got,
        };
        crate::util::sync_file(tmp.as_file(), tmp.path()).map_err(io(tmp.path()))?;
        let blob = blobs.join(&name);
        tmp.persist(&blob).map_err(|e| DownloadError::Io { path: blob.clone(), source: e.error })?;
        crate::util::sync_dir(&blobs).map_err(io(&blobs))?;

        let link = repo_dir.join("snapshots").join(commit).join(file);
        let parent = link.parent().unwrap_or(repo_dir);
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let _ = std::fs::remove_file(&link);
        // relative, as the Python client makes it: the cache can be moved
        let depth = Path::new(file).components().count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(&name);
        std::os::unix::fs::symlink(&target, &link).map_err(io(&link))?;
        Ok(link)
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn origins() {
        assert_eq!(super::origin("https://huggingface.co/a/b/resolve/x/f"), "https://huggingface.co");
        assert_eq!(super::origin("http://127.0.0.1:8080/a"), "http://127.0.0.1:8080");
        assert_eq!(super::origin("http://h"), "http://h");
    }
}
