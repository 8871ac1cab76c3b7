//! Item lifetimes: an item may carry the moment it stops being served
//! (`expires_at`, ms since the Unix epoch), and past it no path returns it.
//!
//! Two rules keep every replica alike:
//! - *Serving* asks [`super::Catalog::is_live`] with the request's own clock:
//!   an item is live while `now < expires_at`, so it is served one
//!   millisecond before its expiry and never at or after it, whatever the
//!   catalog's state.
//! - *The catalog's state* (the trie, which semantic IDs are free) changes
//!   only with the record stream: before each edit record, every item whose
//!   expiry is at or before the record's time leaves the trie
//!   ([`super::Catalog::expire_until`]), as if deleted. Records carry their
//!   times (the edit log's `ts_ms`, the feed's entry times), so a replay and
//!   every replica make the same changes at the same records, and a new item
//!   gets the same semantic ID everywhere. An item expired since the last
//!   record stays in the trie until the next one, banned from every answer by
//!   the first rule (see [`ExpiryIndex::expired_at`]).
//!
//! A compaction writes the expiry of every item still served
//! (`expiry.rows.u32`, `expiry.ms.u64`); expired items are written as
//! removed rows, readable in histories like deleted ones.

use super::array::{write_array, Array};
use super::CatalogError;
use std::path::Path;

/// Expiry times of a base version's served rows that have one, sorted by row.
#[derive(Debug, Default, Clone)]
pub struct BaseExpiry {
    pub rows: Array<u32>,
    pub ms: Array<u64>,
}

impl BaseExpiry {
    pub const ROWS_FILE: &'static str = "expiry.rows.u32";
    pub const MS_FILE: &'static str = "expiry.ms.u64";

    /// From `(row, ms)` pairs sorted by row.
    pub fn from_pairs(pairs: &[(u32, u64)]) -> Self {
        BaseExpiry {
            rows: Array::owned(pairs.iter().map(|p| p.0).collect()),
            ms: Array::owned(pairs.iter().map(|p| p.1).collect()),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The expiry of row `row`, if it has one.
    pub fn get(&self, row: u32) -> Option<u64> {
        if self.rows.is_empty() {
            return None;
        }
        self.rows.binary_search(&row).ok().map(|i| self.ms[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.rows.iter().copied().zip(self.ms.iter().copied())
    }

    pub fn check(&self, rows: usize) -> Result<(), String> {
        if self.rows.len() != self.ms.len() {
            return Err(format!("{} expiring rows but {} expiry times", self.rows.len(), self.ms.len()));
        }
        if self.rows.windows(2).any(|w| w[0] >= w[1]) || self.rows.last().is_some_and(|&r| r as usize >= rows) {
            return Err("expiring rows must be sorted, unique and in range".into());
        }
        Ok(())
    }

    pub fn write(&self, dir: &Path) -> Result<(), CatalogError> {
        write_array(&dir.join(Self::ROWS_FILE), &self.rows)?;
        write_array(&dir.join(Self::MS_FILE), &self.ms)
    }

    /// Maps the files of a version with `len` expiring rows (none: no files
    /// needed, as versions written before lifetimes have none).
    pub fn map(dir: &Path, len: usize) -> Result<Self, CatalogError> {
        if len == 0 {
            return Ok(BaseExpiry::default());
        }
        Ok(BaseExpiry {
            rows: Array::map(&dir.join(Self::ROWS_FILE), len)?,
            ms: Array::map(&dir.join(Self::MS_FILE), len)?,
        })
    }

    pub fn bytes(&self) -> usize {
        self.rows.bytes() + self.ms.bytes()
    }
}

/// The served items that have an expiry, ordered by it (a persistent set:
/// O(1) clone, O(log n) per change). Part of a catalog's overlay.
#[derive(Debug, Clone, Default)]
pub struct ExpiryIndex {
    by_time: imbl::OrdSet<(u64, u32)>,
}

impl ExpiryIndex {
    pub fn insert(&mut self, ms: u64, item: u32) {
        self.by_time.insert((ms, item));
    }

    pub fn remove(&mut self, ms: u64, item: u32) {
        self.by_time.remove(&(ms, item));
    }

    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// Served items whose expiry is at or before `ms`, earliest first: those
    /// still in the trie although expired (see the module comment).
    pub fn expired_at(&self, ms: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_time.range(..(ms.saturating_add(1), 0)).copied()
    }

    /// The earliest expiry, if any.
    pub fn next(&self) -> Option<u64> {
        self.by_time.get_min().map(|e| e.0)
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn system_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Parses an RFC 3339 time (`2026-12-07T10:30:00Z`, `...T10:30:00.250+01:00`)
/// to ms since the Unix epoch.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time such as 2026-12-07T10:30:00Z");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[mo as usize - 1] || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let f = &frac[..digits];
        ms = f.chars().chain("000".chars()).take(3).collect::<String>().parse::<i64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let (oh, om) = (num(s.len() - 5..s.len() - 3)?, num(s.len() - 2..s.len())?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let m = oh * 60 + om;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + se.min(59) - offset_min * 60;
    let total = secs * 1000 + ms;
    u64::try_from(total).map_err(|_| format!("{s:?} is before 1970"))
}

/// `ms` since the epoch as RFC 3339 in UTC with milliseconds.
pub fn format_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", t / 3600, t / 60 % 60, t % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_bad_times_are_named() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339_ms("2026-12-07T10:30:00Z").unwrap(), 1_796_639_400_000);
        assert_eq!(parse_rfc3339_ms("2026-12-07T11:30:00.25+01:00").unwrap(), 1_796_639_400_250);
        assert_eq!(parse_rfc3339_ms("2026-12-07T05:30:00.250-05:00").unwrap(), 1_796_639_400_250);
        assert_eq!(parse_rfc3339_ms("2024-02-29T00:00:00Z").unwrap(), 1_709_164_800_000);
        for ms in [0, 1_796_639_400_250, 1_709_164_800_000, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339(ms)).unwrap(), ms, "{}", format_rfc3339(ms));
        }
        assert_eq!(format_rfc3339(1_796_639_400_250), "2026-12-07T10:30:00.250Z");
        for bad in [
            "2026-12-07",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-12-07T10:30:00",
            "soon",
            "2026-12-07T10:30:00.Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expired_at_is_inclusive_and_ordered() {
        let mut x = ExpiryIndex::default();
        x.insert(100, 3);
        x.insert(50, 9);
        x.insert(100, 1);
        x.insert(101, 2);
        let at = |ms| x.expired_at(ms).map(|e| e.1).collect::<Vec<_>>();
        assert_eq!(at(49), Vec::<u32>::new());
        assert_eq!(at(99), vec![9]);
        assert_eq!(at(100), vec![9, 1, 3]);
        assert_eq!(at(u64::MAX), vec![9, 1, 3, 2]);
        assert_eq!(x.next(), Some(50));
        x.remove(50, 9);
        assert_eq!(x.next(), Some(100));
    }

    #[test]
    fn base_expiry_looks_up_rows() {
        let b = BaseExpiry::from_pairs(&[(2, 7), (5, 9)]);
        assert_eq!(b.get(2), Some(7));
        assert_eq!(b.get(3), None);
        assert_eq!(b.get(5), Some(9));
        b.check(6).unwrap();
        assert!(b.check(5).is_err());
    }
}
