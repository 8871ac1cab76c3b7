//! The [`Feed`] on Redis Streams (Redis 7):
//! `redis://[USER[:PASSWORD]@]HOST:PORT/STREAM`, or `rediss://` for TLS
//! (rustls, the system's roots). A password may also come from a file
//! (`--feed-password-file`); the address shown in logs and answers never
//! holds it.
//!
//! Keys, all beside the stream `S`:
//! - `S`: the stream; each entry has one field, `r`, the record's bytes.
//! - `S:sticky:NAME`: a list of the newest records appended under that
//!   sticky name (`"<position> <payload>"`, newest first, at most
//!   [`STICKY_KEEP`]), written in the same script as the append.
//! - `S:trimmed`: the highest position entries were trimmed below.
//! - `S:lease:NAME`: a lease, `SET NX PX` with the holder's name.
//! - `S:replicas`: a hash, replica name to `"<position> <version> <ms>"`
//!   (the time is the Redis server's, from `TIME`).
//!
//! Two connections: one for the blocking reads of the applying thread, one
//! for everything else, so that an admin append never waits behind a
//! blocking read. A connection that fails is dropped and opened again by the
//! next call.

use parking_lot::Mutex;
use std::time::Duration;

use redis::{Connection, IntoConnectionInfo, Value};

use super::{Entry, Feed, FeedError, Position, ReplicaMark, STICKY_KEEP};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a non-blocking command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Appends the record and, with a second key, keeps it as the sticky one.
const APPEND_SCRIPT: &str = r#"
local id = redis.call('XADD', KEYS[1], '*', 'r', ARGV[1])
if #KEYS > 1 then
  redis.call('LPUSH', KEYS[2], id .. ' ' .. ARGV[1])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
end
return id"#;

/// Records a replica's mark with the server's time.
const MARK_SCRIPT: &str = r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ms)"#;

/// Every mark, and the server's time.
const MARKS_SCRIPT: &str = r#"
local t = redis.call('TIME')
return {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), redis.call('HGETALL', KEYS[1])}"#;

/// Raises the trim mark (never lowers it: two trims in either order leave
/// the higher), then trims the stream below the given position.
const TRIM_SCRIPT: &str = r#"
local function pos(s)
  local a, b = string.match(s or '', '^(%d+)%-(%d+)$')
  return tonumber(a), tonumber(b)
end
local nm, ns = pos(ARGV[1])
local cm, cs = pos(redis.call('GET', KEYS[2]))
if not cm or cm < nm or (cm == nm and cs < ns) then
  redis.call('SET', KEYS[2], ARGV[1])
end
return redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])"#;

/// Extends a lease only for its holder.
const RENEW_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0"#;

/// Deletes a lease only when its holder gives it back.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"#;

pub struct RedisFeed {
    client: redis::Client,
    address: String,
    stream: String,
    io: Mutex<Option<Connection>>,
    reader: Mutex<Option<Connection>>,
}

/// An address taken apart: what the Redis client connects to (with any
/// credentials), the stream, and the address to show (password masked).
struct Address {
    server: String,
    stream: String,
    shown: String,
}

/// Splits `redis[s]://[USER[:PASSWORD]@]HOST:PORT/STREAM`.
fn split_address(address: &str) -> Result<Address, FeedError> {
    let (scheme, rest) = match (address.strip_prefix("redis://"), address.strip_prefix("rediss://")) {
        (Some(rest), _) => ("redis", rest),
        (_, Some(rest)) => ("rediss", rest),
        _ => return Err(FeedError::Address(format!("{:?} does not start with redis:// or rediss://", mask(address)))),
    };
    // (a password may hold any character but '@'; the host part, none but ':')
    let (user, hosted) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, stream) = hosted
        .split_once('/')
        .ok_or_else(|| FeedError::Address(format!("{:?} names no stream: redis://HOST:PORT/STREAM", mask(address))))?;
    let server = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    if host.is_empty() {
        return Err(FeedError::Address(format!("{:?} names no server", mask(address))));
    }
    if stream.is_empty() || stream.contains('/') || stream.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FeedError::Address(format!(
            "{:?}: the stream name (after the server) must be one non-empty word without '/'",
            mask(address)
        )));
    }
    Ok(Address { server: format!("{scheme}://{server}/"), stream: stream.to_string(), shown: mask(address) })
}

/// `address` with the password of its user part replaced by `***`.
fn mask(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else { return address.to_string() };
    let Some((user, host)) = rest.rsplit_once('@') else { return address.to_string() };
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
        None => address.to_string(),
    }
}

fn down(e: redis::RedisError) -> FeedError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        FeedError::Down(e.to_string())
    } else {
        FeedError::Protocol(e.to_string())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// One stream entry: `[id, [field, value, ...]]`.
fn entry(v: &Value) -> Result<Entry, FeedError> {
    let bad = || FeedError::Protocol(format!("not a stream entry: {v:?}"));
    let parts = items(v).ok_or_else(bad)?;
    let id = parts.first().and_then(text).ok_or_else(bad)?;
    let position: Position = id.parse()?;
    let fields: Vec<&Value> = match parts.get(1) {
        Some(Value::Map(m)) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Some(f) => items(f).ok_or_else(bad)?.iter().collect(),
        None => return Err(bad()),
    };
    // an entry without the `r` field (written by something else) is an empty
    // payload: it fails to parse as a record and is skipped like any other
    let payload = fields
        .chunks(2)
        .find(|kv| kv.first().and_then(|k| text(k)).as_deref() == Some("r"))
        .and_then(|kv| kv.get(1))
        .map(|v| match v {
            Value::BulkString(b) => b.clone(),
            other => text(other).unwrap_or_default().into_bytes(),
        })
        .unwrap_or_default();
    Ok(Entry { position, payload })
}

impl RedisFeed {
    /// Checks the address; connects on first use (a server that is down now
    /// is retried by every call).
    /// `password`, if given, is used instead of one in the address.
    pub fn open(address: &str, password: Option<String>) -> Result<Self, FeedError> {
        let a = split_address(address)?;
        let shown = a.shown.clone();
        let bad = |e: redis::RedisError| FeedError::Address(format!("{shown:?}: {e}"));
        let mut info = a.server.as_str().into_connection_info().map_err(bad)?;
        if let Some(p) = password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(bad)?;
        Ok(RedisFeed { client, address: a.shown, stream: a.stream, io: Mutex::new(None), reader: Mutex::new(None) })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.stream)
    }

    /// Runs `f` on the connection in `slot` (opened when needed); drops the
    /// connection when the call fails for want of the server.
    fn with<T>(
        &self,
        slot: &Mutex<Option<Connection>>,
        read_timeout: Duration,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, FeedError> {
        let mut guard = slot.lock();
        if guard.is_none() {
            let c = self.client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(down)?;
            c.set_write_timeout(Some(COMMAND_TIMEOUT)).map_err(down)?;
            *guard = Some(c);
        }
        let Some(con) = guard.as_mut() else { return Err(FeedError::Down("no connection".into())) };
        con.set_read_timeout(Some(read_timeout)).map_err(down)?;
        match f(con) {
            Ok(v) => Ok(v),
            Err(e) => {
                let e = down(e);
                if matches!(e, FeedError::Down(_)) {
                    *guard = None;
                }
                Err(e)
            }
        }
    }

    fn io<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, FeedError> {
        self.with(&self.io, COMMAND_TIMEOUT, f)
    }
}

impl Feed for RedisFeed {
    fn describe(&self) -> String {
        self.address.clone()
    }

    fn append(&self, payload: &[u8], sticky: Option<&str>) -> Result<Position, FeedError> {
        let id: String = self.io(|c| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(APPEND_SCRIPT);
            match sticky {
                Some(name) => cmd.arg(2).arg(&self.stream).arg(self.key(&format!("sticky:{name}"))),
                None => cmd.arg(1).arg(&self.stream),
            };
            cmd.arg(payload).arg(STICKY_KEEP).query(c)
        })?;
        id.parse()
    }

    fn read_after(&self, after: Position, max: usize, wait: Duration) -> Result<Vec<Entry>, FeedError> {
        let block_ms = wait.as_millis().max(1) as u64;
        let reply: Value = self.with(&self.reader, wait + COMMAND_TIMEOUT, |c| {
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(max.max(1))
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(after.to_string())
                .query(c)
        })?;
        let streams: Vec<&Value> = match &reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
            other => items(other)
                .ok_or_else(|| FeedError::Protocol(format!("XREAD answered {other:?}")))?
                .iter()
                .filter_map(|s| items(s).and_then(|kv| kv.get(1)))
                .collect(),
        };
        let mut out = Vec::new();
        for s in streams {
            for e in items(s).ok_or_else(|| FeedError::Protocol(format!("XREAD entries {s:?}")))? {
                out.push(entry(e)?);
            }
        }
        Ok(out)
    }

    fn head(&self) -> Result<Option<Position>, FeedError> {
        let reply: Value =
            self.io(|c| redis::cmd("XREVRANGE").arg(&self.stream).arg("+").arg("-").arg("COUNT").arg(1).query(c))?;
        match items(&reply).and_then(|a| a.first()) {
            Some(e) => Ok(Some(entry(e)?.position)),
            None => Ok(None),
        }
    }

    fn sticky(&self, name: &str) -> Result<Vec<Entry>, FeedError> {
        let key = self.key(&format!("sticky:{name}"));
        let kept: Vec<Vec<u8>> = self.io(|c| redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(c))?;
        let mut out = Vec::with_capacity(kept.len());
        for k in kept {
            let split = k
                .iter()
                .position(|&b| b == b' ')
                .ok_or_else(|| FeedError::Protocol(format!("{key}: an element without a position")))?;
            let position = std::str::from_utf8(&k[..split]).map_err(|e| FeedError::Protocol(e.to_string()))?.parse()?;
            out.push(Entry { position, payload: k[split + 1..].to_vec() });
        }
        Ok(out)
    }

    fn trim_below(&self, below: Position) -> Result<u64, FeedError> {
        let key = self.key("trimmed");
        self.io(|c| {
            redis::cmd("EVAL").arg(TRIM_SCRIPT).arg(2).arg(&self.stream).arg(&key).arg(below.to_string()).query(c)
        })
    }

    fn trimmed_below(&self) -> Result<Position, FeedError> {
        let key = self.key("trimmed");
        let v: Option<String> = self.io(|c| redis::cmd("GET").arg(&key).query(c))?;
        v.map_or(Ok(Position::START), |s| s.parse())
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError> {
        let key = self.key(&format!("lease:{name}"));
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> =
            self.io(|c| redis::cmd("SET").arg(&key).arg(holder).arg("NX").arg("PX").arg(ms).query(c))?;
        Ok(set.is_some())
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError> {
        let key = self.key(&format!("lease:{name}"));
        let ms = ttl.as_millis().max(1) as u64;
        let renewed: i64 =
            self.io(|c| redis::cmd("EVAL").arg(RENEW_SCRIPT).arg(1).arg(&key).arg(holder).arg(ms).query(c))?;
        Ok(renewed == 1)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), FeedError> {
        let key = self.key(&format!("lease:{name}"));
        self.io(|c| redis::cmd("EVAL").arg(RELEASE_SCRIPT).arg(1).arg(&key).arg(holder).query::<i64>(c))?;
        Ok(())
    }

    fn mark(&self, name: &str, position: Position, version: u64) -> Result<(), FeedError> {
        let key = self.key("replicas");
        let v = format!("{position} {version}");
        self.io(|c| redis::cmd("EVAL").arg(MARK_SCRIPT).arg(1).arg(&key).arg(name).arg(v).query::<i64>(c))?;
        Ok(())
    }

    fn marks(&self) -> Result<Vec<ReplicaMark>, FeedError> {
        let key = self.key("replicas");
        let (now, all): (u64, Vec<(String, String)>) =
            self.io(|c| redis::cmd("EVAL").arg(MARKS_SCRIPT).arg(1).arg(&key).query(c))?;
        let mut out = Vec::new();
        for (name, v) in all {
            let parts: Vec<&str> = v.split(' ').collect();
            let [p, version, at] = parts[..] else { continue };
            let (Ok(position), Ok(version), Ok(at)) = (p.parse(), version.parse(), at.parse::<u64>()) else { continue };
            out.push(ReplicaMark { name, position, version, age_ms: now.saturating_sub(at) });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = split_address("redis://127.0.0.1:6379/genrec").unwrap();
        assert_eq!((a.server.as_str(), a.stream.as_str()), ("redis://127.0.0.1:6379/", "genrec"));
        let a = split_address("rediss://user:p/w@host:1/s").unwrap();
        assert_eq!((a.server.as_str(), a.stream.as_str()), ("rediss://user:p/w@host:1/", "s"));
        assert_eq!(a.shown, "rediss://user:***@host:1/s");
        for bad in ["redis://host:1", "redis://host:1/", "redis:///s", "redis://h/a/b", "http://h/s", "redis://h/a b"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_entries_parse_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let e = Value::Array(vec![bulk("5-1"), Value::Array(vec![bulk("r"), bulk("{}")])]);
        assert_eq!(entry(&e).unwrap(), Entry { position: Position { ms: 5, seq: 1 }, payload: b"{}".to_vec() });
        let e3 = Value::Array(vec![bulk("6-0"), Value::Map(vec![(bulk("r"), bulk("x"))])]);
        assert_eq!(entry(&e3).unwrap().payload, b"x");
        let other = Value::Array(vec![bulk("7-0"), Value::Array(vec![bulk("f"), bulk("x")])]);
        assert!(entry(&other).unwrap().payload.is_empty(), "no r field: an empty payload, skipped later");
        assert!(entry(&Value::Array(vec![bulk("nope")])).is_err());
    }

    #[test]
    fn a_server_that_is_down_is_reported_as_down() {
        // port 1 on loopback refuses at once
        let f = RedisFeed::open("redis://127.0.0.1:1/s", None).unwrap();
        assert!(matches!(f.head(), Err(FeedError::Down(_))));
        assert!(matches!(f.append(b"{}", None), Err(FeedError::Down(_))));
    }
}
