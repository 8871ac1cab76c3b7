//! Records the replicas can trust: every record a replica appends is sealed
//! with an HMAC-SHA256 (RFC 2104) under a key all replicas of a deployment
//! share (`--feed-key-file`), and a record whose seal does not check is
//! skipped by every replica, logged and counted, never applied. Someone who
//! can reach the feed's server but does not hold the key cannot change what
//! any replica serves.
//!
//! A sealed payload is `genrec-hmac1 <64 hex digits> <record>`: the seal
//! covers the record's bytes as they are.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted, in bytes (a key from `openssl rand -hex 32` is 64).
pub const MIN_KEY_BYTES: usize = 32;
/// What a sealed payload starts with.
const TAG: &[u8] = b"genrec-hmac1 ";
/// Hex digits of a seal.
const SEAL_HEX: usize = 64;

/// The key the replicas seal and check records with.
#[derive(Clone)]
pub struct FeedKey(Vec<u8>);

impl std::fmt::Debug for FeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FeedKey(..)")
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the feed key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "the feed key {0} is {1} bytes; it must be at least {MIN_KEY_BYTES} (for example: openssl rand -hex 32 > feed.key, \
         the same file on every replica)"
    )]
    Short(String, usize),
}

/// Why a payload was not accepted as a record of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("the record is not sealed (no genrec-hmac1 tag): written without the feed key")]
    Missing,
    #[error("the record's seal does not check: written with another key, or altered")]
    Wrong,
}

impl FeedKey {
    /// A key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(bytes: Vec<u8>, what: &str) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short(what.into(), bytes.len()));
        }
        Ok(FeedKey(bytes))
    }

    /// The key in `path`: its first line, surrounding whitespace removed.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        let key = text.lines().next().unwrap_or("").trim().as_bytes().to_vec();
        Self::new(key, &format!("in {}", path.display()))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length
        match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// `record` with its seal in front.
    pub fn seal(&self, record: &[u8]) -> Vec<u8> {
        let mut m = self.mac();
        m.update(record);
        let tag = m.finalize().into_bytes();
        let mut out = Vec::with_capacity(TAG.len() + SEAL_HEX + 1 + record.len());
        out.extend_from_slice(TAG);
        for b in tag {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.push(b' ');
        out.extend_from_slice(record);
        out
    }

    /// The record inside a sealed payload, when its seal checks (compared
    /// in constant time).
    pub fn open<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], Unsealed> {
        let rest = payload.strip_prefix(TAG).ok_or(Unsealed::Missing)?;
        if rest.len() < SEAL_HEX + 1 || rest[SEAL_HEX] != b' ' {
            return Err(Unsealed::Wrong);
        }
        let (hex, record) = (&rest[..SEAL_HEX], &rest[SEAL_HEX + 1..]);
        let mut tag = [0u8; SEAL_HEX / 2];
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).map_err(|_| Unsealed::Wrong)?;
            tag[i] = u8::from_str_radix(s, 16).map_err(|_| Unsealed::Wrong)?;
        }
        let mut m = self.mac();
        m.update(record);
        m.verify_slice(&tag).map_err(|_| Unsealed::Wrong)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> FeedKey {
        FeedKey::new(vec![b; MIN_KEY_BYTES], "test").unwrap()
    }

    #[test]
    fn sealed_records_open_with_the_key_only() {
        let rec = br#"{"kind":"model_load","path":"hf:evil/model"}"#;
        let sealed = key(1).seal(rec);
        assert_eq!(key(1).open(&sealed).unwrap(), &rec[..]);
        assert_eq!(key(2).open(&sealed), Err(Unsealed::Wrong), "another deployment's key");
        assert_eq!(key(1).open(rec), Err(Unsealed::Missing), "a record written without the key");
        // one changed byte of the record, or of the seal
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(key(1).open(&altered), Err(Unsealed::Wrong));
        let mut altered = sealed.clone();
        altered[TAG.len() + 3] = if altered[TAG.len() + 3] == b'0' { b'1' } else { b'0' };
        assert_eq!(key(1).open(&altered), Err(Unsealed::Wrong));
        assert_eq!(key(1).open(&sealed[..TAG.len() + 10]), Err(Unsealed::Wrong), "cut short");
    }

    #[test]
    fn short_keys_are_refused_with_advice() {
        let e = FeedKey::new(b"change-me".to_vec(), "given").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("at least 32") && e.contains("openssl rand"), "{e}");
    }
}
