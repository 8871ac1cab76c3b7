//! Small shared helpers: atomic file writes, content fingerprints, percentiles.

use std::io::Write;
use std::path::Path;

/// A file name a model folder's own files may name (a shard, a tokenizer, an
/// item map): one path component, not hidden, no `..`, no separators, so it is
/// read from that folder and cannot lead out of it.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

/// Writes `bytes` to `path` atomically and durably: a uniquely named
/// temporary file in the same folder (removed if anything fails), synced,
/// renamed over the target, then the folder synced, so that readers never
/// see a half-written file and a crash after the return keeps the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".genrec-").suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    sync_file(tmp.as_file(), tmp.path())?;
    tmp.persist(path).map_err(|e| e.error)?;
    synced::record(path);
    sync_dir(dir)
}

/// Syncs a folder, so that the names created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs an open file's content (`path` is where it is, for the record of
/// syncs that tests read, [`synced`]).
pub fn sync_file(f: &std::fs::File, path: &Path) -> std::io::Result<()> {
    f.sync_all()?;
    synced::record(path);
    Ok(())
}

/// Tests' record of the files synced, in order, so that a test can check
/// that every file of a catalog version was on disk before `CURRENT` named
/// it (a power loss cannot be staged in a test; a missing sync can be seen).
pub mod synced {
    use std::path::Path;
    #[cfg(test)]
    use std::path::PathBuf;

    #[cfg(test)]
    static LOG: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());

    pub(crate) fn record(_path: &Path) {
        #[cfg(test)]
        LOG.lock().push(_path.to_path_buf());
    }

    /// The files synced under `dir` so far, in order.
    #[cfg(test)]
    pub(crate) fn under(dir: &Path) -> Vec<PathBuf> {
        LOG.lock().iter().filter(|p| p.starts_with(dir)).cloned().collect()
    }
}

/// 64-bit FNV-1a over a byte stream; used to fingerprint catalogs and weights.
#[derive(Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn value(&self) -> u64 {
        self.0
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Fingerprint of a byte slice as 16 hex digits.
pub fn fingerprint(bytes: &[u8]) -> String {
    let mut h = Fnv64::default();
    h.update(bytes);
    h.hex()
}

/// The `q`-quantile (0..=1) of sorted values, by the nearest rank; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((last as f64 * q.clamp(0.0, 1.0)).round() as usize).min(last)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content() {
        let dir = std::env::temp_dir().join(format!("genrec-util-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // nothing left beside it
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // a relative name in the working folder has a folder to sync too
        assert!(write_atomic(&dir.join("missing").join("x"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fingerprint_differs_on_change() {
        assert_ne!(fingerprint(b"abc"), fingerprint(b"abd"));
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
    }
}
