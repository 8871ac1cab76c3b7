//! The replica feed: one ordered stream of catalog edits and model changes
//! that every replica of a deployment applies in the same order, so that
//! replicas behind a load balancer converge without a consensus of their own.
//!
//! The stream is an existing engine's (Redis Streams today, [`redis`]); this
//! module holds what does not depend on it: the [`Feed`] trait a transport
//! implements (append, read in order, trim, a lease for compaction, where
//! replicas are), stream [`Position`]s, and the [`record`] format. What a
//! replica does with the records is in [`crate::engine::replica`].

pub mod auth;
pub mod memory;
pub mod record;
pub mod redis;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A record's place in the stream, and the version of a replica that applied
/// everything up to it: Redis stream ids (`<ms>-<seq>`), ordered as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Milliseconds since the Unix epoch at which the engine took the record.
    pub ms: u64,
    /// Order among records of the same millisecond.
    pub seq: u64,
}

impl Position {
    /// Before every record.
    pub const START: Position = Position { ms: 0, seq: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = FeedError;

    fn from_str(s: &str) -> Result<Self, FeedError> {
        let bad = || FeedError::Protocol(format!("{s:?} is not a stream position (<ms>-<seq>)"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Position { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// `--feed` is not a feed address genrec understands.
    #[error("feed address {0}")]
    Address(String),
    /// The feed's server cannot be reached or dropped the connection.
    #[error("the feed is down: {0}")]
    Down(String),
    /// The server answered something genrec does not understand.
    #[error("unexpected answer from the feed: {0}")]
    Protocol(String),
}

/// One entry read from the feed: where it is and its bytes (a [`record`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub position: Position,
    pub payload: Vec<u8>,
}

/// Where a replica said it was, for trimming the feed and deleting versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaMark {
    pub name: String,
    pub position: Position,
    /// The catalog version it serves.
    pub version: u64,
    /// How long ago it said so, by the feed server's clock.
    pub age_ms: u64,
}

/// Records kept per sticky name.
pub const STICKY_KEEP: usize = 8;

/// An ordered, durable stream shared by the replicas. Implementations are
/// blocking and safe to call from several threads; a call that cannot reach
/// the server returns [`FeedError::Down`] and the next call tries again.
pub trait Feed: Send + Sync {
    /// Where the feed is, for logs and `GET /admin/catalog`.
    fn describe(&self) -> String;

    /// Appends `payload` and returns its position once the server holds it.
    /// With `sticky`, the record is also kept under that name, atomically
    /// with the append, beyond any trimming (see [`Feed::sticky`]); the
    /// newest [`STICKY_KEEP`] are kept.
    fn append(&self, payload: &[u8], sticky: Option<&str>) -> Result<Position, FeedError>;

    /// Up to `max` entries after `after`, in order; waits up to `wait` when
    /// there is none yet (an empty answer: nothing new).
    fn read_after(&self, after: Position, max: usize, wait: Duration) -> Result<Vec<Entry>, FeedError>;

    /// The newest position in the stream (`None`: nothing was ever appended).
    fn head(&self) -> Result<Option<Position>, FeedError>;

    /// The newest records appended with `sticky = name` (at most
    /// [`STICKY_KEEP`], newest first), even when the stream was trimmed past
    /// them.
    fn sticky(&self, name: &str) -> Result<Vec<Entry>, FeedError>;

    /// Drops the entries below `below` and remembers that they are gone (see
    /// [`Feed::trimmed_below`], which never moves backwards, whatever the
    /// order of two trims); returns how many were dropped.
    fn trim_below(&self, below: Position) -> Result<u64, FeedError>;

    /// The highest position given to [`Feed::trim_below`] so far: a replica
    /// whose position is below it has missed entries.
    fn trimmed_below(&self) -> Result<Position, FeedError>;

    /// Takes the lease `name` for `holder` for `ttl` (false: someone else
    /// holds it). It lapses by itself, so a holder that dies frees it.
    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError>;

    /// Extends the lease `name` by `ttl` if `holder` still holds it (false:
    /// it lapsed, and maybe someone else took it).
    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError>;

    /// Gives the lease back if `holder` still holds it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), FeedError>;

    /// Records that replica `name` has applied everything up to `position`
    /// and serves catalog version `version` (the time is the feed server's).
    fn mark(&self, name: &str, position: Position, version: u64) -> Result<(), FeedError>;

    /// Every replica's last mark, with its age by the feed server's clock (so
    /// that replicas' clocks do not matter).
    fn marks(&self) -> Result<Vec<ReplicaMark>, FeedError>;
}

/// Opens the feed an address names: `redis[s]://[USER[:PASSWORD]@]HOST:PORT/STREAM`
/// (`password`, from a file, instead of one in the address).
pub fn open(address: &str, password: Option<String>) -> Result<Box<dyn Feed>, FeedError> {
    if address.starts_with("redis://") || address.starts_with("rediss://") {
        return Ok(Box::new(redis::RedisFeed::open(address, password)?));
    }
    Err(FeedError::Address(format!(
        "expected redis://HOST:PORT/STREAM or rediss://..., not {:?}",
        address.split("://").next().unwrap_or("")
    )))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_as_numbers_and_round_trip() {
        let a: Position = "1700000000000-2".parse().unwrap();
        let b: Position = "1700000000000-10".parse().unwrap();
        let c: Position = "1700000000001-0".parse().unwrap();
        assert!(Position::START < a && a < b && b < c, "seq 10 is after seq 2 (not as strings)");
        assert_eq!(b.to_string(), "1700000000000-10");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"1700000000001-0\"");
        assert_eq!(serde_json::from_str::<Position>("\"5-6\"").unwrap(), Position { ms: 5, seq: 6 });
        for bad in ["", "12", "a-1", "1-", "-1", "1-2-3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_redis_addresses_open() {
        assert!(matches!(open("kafka://x/y", None), Err(FeedError::Address(_))));
        assert!(matches!(open("redis://127.0.0.1:1", None), Err(FeedError::Address(_))), "a stream name is needed");
        // credentials and TLS in the address; the password never shows
        let f = open("rediss://genrec:s3cret@redis.example:6380/feed", None).unwrap();
        assert_eq!(f.describe(), "rediss://genrec:***@redis.example:6380/feed");
        let f = open("redis://127.0.0.1:1/feed", Some("from-a-file".into())).unwrap();
        assert_eq!(f.describe(), "redis://127.0.0.1:1/feed");
        let e = open("redis://u:s3cret@/feed", None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
