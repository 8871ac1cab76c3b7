//! The admin routes' bearer token: at least [`MIN_TOKEN_BYTES`] long,
//! compared in constant time. A client address that keeps sending wrong
//! tokens is answered 429 for a while; the right token is always let
//! through, so that behind a load balancer (one address for every client)
//! someone guessing cannot lock the operators out. Runs as a middleware in
//! front of every `/admin` route.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::AppState;

/// Shortest admin token accepted: 16 bytes (128 bits of a random token;
/// `openssl rand -hex 16` gives 32 characters). Placeholders such as
/// `change-me` are refused at start.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Failed attempts from one address that start a lock-out.
pub const MAX_FAILURES: u32 = 10;
/// How long failures are remembered, and how long a lock-out lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (the oldest entries go first when full).
const TRACKED: usize = 10_000;

/// The configured token and the failures seen per client address.
pub struct AdminAuth {
    token: String,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    /// When the first failure of the current window happened.
    since: Instant,
}

/// Why a token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the admin token file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the admin token {0} is empty")]
    Empty(String),
    #[error(
        "the admin token {0} is {1} bytes; it must be at least {MIN_TOKEN_BYTES} (for example: openssl rand -hex 16)"
    )]
    Short(String, usize),
}

impl AdminAuth {
    pub fn new(token: String) -> Result<Self, TokenError> {
        Self::checked(token, "given")
    }

    fn checked(token: String, what: &str) -> Result<Self, TokenError> {
        if token.trim().is_empty() {
            return Err(TokenError::Empty(what.into()));
        }
        if token.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::Short(what.into(), token.len()));
        }
        Ok(AdminAuth { token, failures: Mutex::new(HashMap::new()) })
    }

    /// The token in `path` (its first line, surrounding whitespace removed),
    /// so that it never shows in `ps` as a command-line argument would.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Io { path: path.display().to_string(), source })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        Self::checked(token, &format!("in {}", path.display()))
    }

    /// Whether `given` is the token, compared in constant time (`subtle`:
    /// the time taken never depends on where `given` first differs).
    fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.token.as_bytes().ct_eq(given).into()
    }

    /// Seconds left of `ip`'s lock-out, if it is locked out.
    fn locked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.failures.lock();
        let f = map.get(&ip)?;
        let left = WINDOW.checked_sub(now.duration_since(f.since)).filter(|l| !l.is_zero())?;
        (f.count >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock();
        if map.len() >= TRACKED && !map.contains_key(&ip) {
            map.retain(|_, f| now.duration_since(f.since) < WINDOW);
            if map.len() >= TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.since).map(|(ip, _)| *ip) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(ip).or_insert(Failures { count: 0, since: now });
        if now.duration_since(f.since) >= WINDOW {
            *f = Failures { count: 0, since: now };
        }
        f.count += 1;
    }

    fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().remove(&ip);
    }
}

/// The middleware: 404 when the admin API is off; the route runs for the
/// right token, whatever the address did before; a missing or wrong token
/// is 429 from a locked-out address, else 401 (and counted).
pub async fn authorise(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(auth) = &st.admin else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            None,
            "the admin API is off: start genrec serve with --admin-token-file (or --admin-token)",
        )
        .into_response();
    };
    let ip = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let now = Instant::now();
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let why = match given {
        None => "missing bearer token",
        Some(t) if auth.matches(t.as_bytes()) => {
            auth.succeeded(ip);
            return next.run(req).await;
        }
        Some(_) => "wrong bearer token",
    };
    if let Some(secs) = auth.locked(ip, now) {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            Some("authorization"),
            format!("too many failed admin attempts from {ip}; retry in {secs} s"),
        )
        .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    auth.failed(ip, now);
    ApiError::new(StatusCode::UNAUTHORIZED, Some("authorization"), why).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let a = AdminAuth::new("s3cret-token-0123".into()).unwrap();
        assert!(a.matches(b"s3cret-token-0123"));
        for wrong in [&b""[..], b"s3cret-token-012", b"s3cret-token-01234", b"S3cret-token-0123", b"s3cret-token-0124"]
        {
            assert!(!a.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(matches!(AdminAuth::new("  ".into()), Err(TokenError::Empty(_))));
        // placeholders and short tokens are refused, with what to do
        let short = AdminAuth::new("change-me".into()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(short.contains("at least 16") && short.contains("openssl rand"), "{short}");
    }

    #[test]
    fn lock_out_after_repeated_failures_and_expiry() {
        let a = AdminAuth::new("t".repeat(MIN_TOKEN_BYTES)).unwrap();
        let (ip, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            a.failed(ip, t0);
        }
        assert_eq!(a.locked(ip, t0), None);
        a.failed(ip, t0);
        assert_eq!(a.locked(ip, t0), Some(WINDOW.as_secs()));
        assert_eq!(a.locked(other, t0), None, "other addresses are not locked out");
        assert_eq!(a.locked(ip, t0 + WINDOW), None, "the lock-out ends");
        a.failed(ip, t0 + WINDOW);
        assert_eq!(a.locked(ip, t0 + WINDOW), None, "a new window starts its count again");
    }

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = std::env::temp_dir().join(format!("genrec-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        std::fs::write(&p, "  abc123abc123abc123 \nignored\n").unwrap();
        assert!(AdminAuth::from_file(&p).unwrap().matches(b"abc123abc123abc123"));
        std::fs::write(&p, "change-me\n").unwrap();
        assert!(matches!(AdminAuth::from_file(&p), Err(TokenError::Short(_, 9))));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(AdminAuth::from_file(&p), Err(TokenError::Empty(_))));
        assert!(matches!(AdminAuth::from_file(&dir.join("none")), Err(TokenError::Io { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
