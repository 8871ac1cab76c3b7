//! The edit log: an append-only file of checksummed records, synced to disk
//! before an edit is acknowledged, replayed at start.
//!
//! Each record is a frame: the magic `GREL`, the payload length (u32 LE), the
//! CRC-32 of the payload (u32 LE), then the payload: one
//! [`EditRecord`](super::edit::EditRecord) as JSON. Reading stops at the first
//! frame that does not check out: if nothing valid follows it, it is a torn
//! tail (a write cut short by a crash; never acknowledged, since the sync
//! after it did not return) and is dropped with a warning naming its offset;
//! if a valid frame follows, the log is corrupt in the middle and reading
//! fails with an error naming the offset.
//!
//! Writers append under a lock and then wait for a sync that covers their
//! bytes; one `fdatasync` covers every writer waiting at that moment (group
//! commit), so concurrent edits share a sync instead of queueing for one each.

use parking_lot::{Condvar, Mutex};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::edit::EditRecord;
use super::CatalogError;

const MAGIC: &[u8; 4] = b"GREL";
const HEADER: usize = 12;
/// Largest payload a frame may claim (an upsert is a few KB).
const MAX_PAYLOAD: usize = 16 << 20;

/// The file name of log number `n` in a catalog folder (`edits-000002.log`).
pub fn log_name(n: u64) -> String {
    format!("edits-{n:06}.log")
}

/// Encodes one record as a frame.
pub fn frame(rec: &EditRecord) -> Vec<u8> {
    let payload = serde_json::to_vec(rec).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The frame at `at`, if one checks out: its record and its length.
fn frame_at(bytes: &[u8], at: usize) -> Option<(EditRecord, usize)> {
    let head = bytes.get(at..at + HEADER)?;
    if &head[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let rec = serde_json::from_slice(payload).ok()?;
    Some((rec, HEADER + len))
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct LogContents {
    pub records: Vec<EditRecord>,
    /// Bytes of valid frames (where the next record goes).
    pub valid_bytes: u64,
    /// Offset of a torn tail that was dropped, if there was one.
    pub torn_at: Option<u64>,
}

/// Reads every record of the log at `path` (an absent file is an empty log).
pub fn read(path: &Path) -> Result<LogContents, CatalogError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LogContents::default()),
        Err(e) => return Err(CatalogError::io(path, e)),
    };
    parse(&bytes).map_err(|at| {
        CatalogError::Format(format!(
            "{}: corrupt record at byte offset {at} with valid records after it; the log cannot be replayed past it \
             (restore the file, or truncate it at {at} to drop every edit from there on)",
            path.display()
        ))
    })
}

/// Parses log bytes; `Err(offset)` for a bad frame with a valid one after it.
pub fn parse(bytes: &[u8]) -> Result<LogContents, u64> {
    let mut out = LogContents::default();
    let mut at = 0usize;
    while at < bytes.len() {
        match frame_at(bytes, at) {
            Some((rec, len)) => {
                out.records.push(rec);
                at += len;
            }
            None => {
                // a valid frame further on means damage in the middle
                let later = (at + 1..bytes.len().saturating_sub(HEADER - 1))
                    .filter(|&p| bytes[p..].starts_with(MAGIC))
                    .any(|p| frame_at(bytes, p).is_some());
                if later {
                    return Err(at as u64);
                }
                out.torn_at = Some(at as u64);
                break;
            }
        }
    }
    out.valid_bytes = at as u64;
    Ok(out)
}

struct Writer {
    file: File,
    /// Bytes written so far (valid frames).
    written: u64,
}

struct SyncState {
    synced: u64,
    syncing: bool,
    /// A sync failed: nothing after it can be acknowledged.
    /// (Its kind is kept: a full disk still reads as one.)
    failed: Option<(std::io::ErrorKind, String)>,
}

/// An open log, appended to by edits.
pub struct EditLog {
    path: PathBuf,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
}

impl EditLog {
    /// Opens (or creates) the log at `path` for appending after its first
    /// `valid_bytes` bytes; anything after them (a torn tail) is cut off.
    pub fn open(path: &Path, valid_bytes: u64) -> Result<Self, CatalogError> {
        let io = |e| CatalogError::io(path, e);
        let mut file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > valid_bytes {
            tracing::warn!(path = %path.display(), offset = valid_bytes, dropped = len - valid_bytes, "edit log: cutting off a torn tail");
            file.set_len(valid_bytes).map_err(io)?;
        }
        file.seek(SeekFrom::Start(valid_bytes)).map_err(io)?;
        file.sync_all().map_err(io)?;
        if let Some(dir) = path.parent() {
            super::format::sync_dir(dir)?;
        }
        Ok(EditLog {
            path: path.into(),
            writer: Mutex::new(Writer { file, written: valid_bytes }),
            sync: Mutex::new(SyncState { synced: valid_bytes, syncing: false, failed: None }),
            synced_cv: Condvar::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.writer.lock().written
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes known to be on disk.
    pub fn synced(&self) -> u64 {
        self.sync.lock().synced
    }

    /// Appends records (not yet synced); returns the log's length after them,
    /// to pass to [`EditLog::sync_to`]. A failed write cuts the partial frame
    /// off again.
    pub fn append(&self, records: &[EditRecord]) -> Result<u64, CatalogError> {
        let mut bytes = Vec::new();
        for r in records {
            bytes.extend(frame(r));
        }
        let mut w = self.writer.lock();
        let written = match disk_full::take(&self.path, &bytes) {
            Some(part) => w.file.write_all(part).and(Err(std::io::Error::from(std::io::ErrorKind::StorageFull))),
            None => w.file.write_all(&bytes),
        };
        if let Err(e) = written {
            let at = w.written;
            let _ = w.file.set_len(at).and_then(|_| w.file.seek(SeekFrom::Start(at)).map(|_| ()));
            return Err(CatalogError::io(&self.path, e));
        }
        w.written += bytes.len() as u64;
        Ok(w.written)
    }

    /// Returns once the log is on disk up to `upto` bytes. One sync covers
    /// every caller waiting when it starts.
    pub fn sync_to(&self, upto: u64) -> Result<(), CatalogError> {
        let mut st = self.sync.lock();
        loop {
            if let Some((kind, e)) = &st.failed {
                return Err(CatalogError::io(&self.path, std::io::Error::new(*kind, e.clone())));
            }
            if st.synced >= upto {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            self.synced_cv.wait(&mut st);
        }
        st.syncing = true;
        drop(st);
        // everything appended so far is covered by this sync
        let (target, result) = {
            let w = self.writer.lock();
            let target = w.written;
            let file = w.file.try_clone();
            drop(w);
            (target, file.and_then(|f| f.sync_data()))
        };
        let mut st = self.sync.lock();
        st.syncing = false;
        match result {
            Ok(()) => st.synced = st.synced.max(target),
            Err(e) => st.failed = Some((e.kind(), e.to_string())),
        }
        self.synced_cv.notify_all();
        match &st.failed {
            Some((kind, e)) => Err(CatalogError::io(&self.path, std::io::Error::new(*kind, e.clone()))),
            None if st.synced >= upto => Ok(()),
            None => {
                drop(st);
                self.sync_to(upto)
            }
        }
    }

    /// Reads the records of this log (for replay after a compaction).
    pub fn read_all(&self) -> Result<Vec<EditRecord>, CatalogError> {
        self.read_from(0).map(|(records, _)| records)
    }

    /// Reads the records from byte `offset` (a record boundary: the end an
    /// earlier read returned) up to what was appended so far; returns them
    /// and where they end. A compaction's catch-up reads only the records
    /// it has not replayed yet, under the edit lock.
    pub fn read_from(&self, offset: u64) -> Result<(Vec<EditRecord>, u64), CatalogError> {
        self.read_range(offset, self.len())
    }

    /// [`EditLog::read_from`] up to what is synced only: records no failed
    /// append can take back, for a reader that does not hold the edit lock.
    pub fn read_synced_from(&self, offset: u64) -> Result<(Vec<EditRecord>, u64), CatalogError> {
        self.read_range(offset, self.synced())
    }

    fn read_range(&self, offset: u64, end: u64) -> Result<(Vec<EditRecord>, u64), CatalogError> {
        let io = |e| CatalogError::io(&self.path, e);
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut bytes = Vec::with_capacity(end.saturating_sub(offset) as usize);
        f.take(end.saturating_sub(offset)).read_to_end(&mut bytes).map_err(io)?;
        let c = parse(&bytes).map_err(|at| {
            CatalogError::Format(format!("{}: corrupt record at {}", self.path.display(), offset + at))
        })?;
        Ok((c.records, offset + c.valid_bytes))
    }
}

/// Tests: a disk that is full for the next appends of this process (a
/// part of the frames is written, then the write fails with `StorageFull`,
/// as it would on a real full disk).
pub mod disk_full {
    use std::path::Path;
    #[cfg(test)]
    use std::path::PathBuf;

    #[cfg(test)]
    static FULL: parking_lot::Mutex<Vec<(PathBuf, usize)>> = parking_lot::Mutex::new(Vec::new());

    /// The next `n` appends to the log at `path` fail.
    #[cfg(test)]
    pub fn next(path: &Path, n: usize) {
        FULL.lock().push((path.to_path_buf(), n));
    }

    /// The part of `bytes` a full disk takes before failing, when the disk
    /// under `path` is full.
    pub(super) fn take<'a>(_path: &Path, _bytes: &'a [u8]) -> Option<&'a [u8]> {
        #[cfg(test)]
        {
            let mut full = FULL.lock();
            if let Some(slot) = full.iter_mut().find(|(p, n)| p == _path && *n > 0) {
                slot.1 -= 1;
                return Some(&_bytes[.._bytes.len() / 2]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::edit::EditOp;

    fn rec(i: u64) -> EditRecord {
        EditRecord { edit_id: i, ts_ms: 0, op: EditOp::Delete { id: format!("item-{i}") } }
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("genrec-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_roundtrip_and_torn_tails_are_dropped() {
        let d = temp("torn");
        let p = d.join("edits.log");
        let log = EditLog::open(&p, 0).unwrap();
        let end = log.append(&[rec(1), rec(2)]).unwrap();
        log.sync_to(end).unwrap();
        let end = log.append(&[rec(3)]).unwrap();
        log.sync_to(end).unwrap();
        drop(log);
        let c = read(&p).unwrap();
        assert_eq!(c.records, vec![rec(1), rec(2), rec(3)]);
        assert_eq!(c.torn_at, None);
        // a write cut short: half a frame at the end
        let full = std::fs::read(&p).unwrap();
        let third = frame(&rec(3)).len();
        for cut in [1, 5, HEADER, third - 1] {
            std::fs::write(&p, &full[..full.len() - cut]).unwrap();
            let c = read(&p).unwrap();
            assert_eq!(c.records, vec![rec(1), rec(2)], "cut {cut}");
            assert_eq!(c.torn_at, Some((full.len() - third) as u64));
            // reopening cuts the tail off; new records follow the good ones
            let log = EditLog::open(&p, c.valid_bytes).unwrap();
            let end = log.append(&[rec(4)]).unwrap();
            log.sync_to(end).unwrap();
            drop(log);
            assert_eq!(read(&p).unwrap().records, vec![rec(1), rec(2), rec(4)]);
            std::fs::write(&p, &full).unwrap();
        }
        // garbage appended (a frame whose checksum fails) is a tail too
        let mut bad = full.clone();
        let mut f = frame(&rec(9));
        let last = f.len() - 1;
        f[last] ^= 0xff;
        bad.extend(f);
        std::fs::write(&p, &bad).unwrap();
        assert_eq!(read(&p).unwrap().records.len(), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A compaction's catch-up reads on from where its first replay ended:
    /// exactly the records appended since, and where they end.
    #[test]
    fn reading_from_an_offset_gives_the_records_after_it() {
        let d = temp("from");
        let log = EditLog::open(&d.join("edits.log"), 0).unwrap();
        log.append(&[rec(1), rec(2)]).unwrap();
        let (first, at) = log.read_from(0).unwrap();
        assert_eq!((first, at), (vec![rec(1), rec(2)], log.len()));
        log.append(&[rec(3)]).unwrap();
        log.append(&[rec(4)]).unwrap();
        assert_eq!(log.read_from(at).unwrap(), (vec![rec(3), rec(4)], log.len()));
        assert_eq!(log.read_from(log.len()).unwrap(), (vec![], log.len()));
        assert!(log.read_from(at + 1).is_err(), "not a record boundary");
        // what is synced only: nothing past the last sync
        let end = log.append(&[rec(5)]).unwrap();
        assert_eq!(log.read_synced_from(at).unwrap(), (vec![], at), "records 3 and 4 were never synced");
        log.sync_to(end).unwrap();
        assert_eq!(log.read_synced_from(at).unwrap(), (vec![rec(3), rec(4), rec(5)], end));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_record_in_the_middle_stops_the_replay() {
        let d = temp("mid");
        let p = d.join("edits.log");
        let mut bytes = Vec::new();
        for i in 1..=3 {
            bytes.extend(frame(&rec(i)));
        }
        let second = frame(&rec(1)).len();
        bytes[second + HEADER + 3] ^= 0x20; // a flipped bit inside record 2
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains(&format!("offset {second}")), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_writers_share_syncs_and_lose_nothing() {
        let d = temp("group");
        let p = d.join("edits.log");
        let log = std::sync::Arc::new(EditLog::open(&p, 0).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let end = log.append(&[rec(t * 1000 + i)]).unwrap();
                        log.sync_to(end).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut ids: Vec<u64> = read(&p).unwrap().records.iter().map(|r| r.edit_id).collect();
        ids.sort();
        let want: Vec<u64> = (0..8).flat_map(|t| (0..50).map(move |i| t * 1000 + i)).collect();
        assert_eq!(ids, want);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
