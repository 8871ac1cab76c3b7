//! A catalog folder: versions, their segments, the edit log after them, and
//! compaction.
//!
//! ```text
//! CATALOG_DIR/
//!   CURRENT              name of the current version folder ("v-000002")
//!   v-000002/            one version's base (see super::format), never changed once written
//!   SEGMENTS, s-*/       the segments on it: folded logs (see super::segments)
//!   edits-000005.log     the edits after the last segment (see super::editlog)
//!   LOCK                 held by the one process that may write (a server, or `genrec catalog compact`)
//! ```
//!
//! Opening loads the current version, restores its segments, then replays,
//! in order, every log numbered from the first one the segments do not hold
//! up. Folding the log into a segment ([`WritableDir::fold`]) writes only
//! what the edits changed; a full compaction, below, rewrites the catalog. A compaction moves new edits to the
//! next log (`edits-000003.log`), writes `v-000003` from the view it started
//! with (under a temporary name, renamed when complete), then points `CURRENT`
//! at it by an atomic rename and deletes the older version and logs. A crash
//! at any point leaves either the old version with both logs, or the new one
//! with its own: nothing acknowledged is lost, nothing is applied twice (edit
//! ids are checked on replay).
//!
//! A folder of the first format (`catalog.json`, `items.json`,
//! `catalog.safetensors`) opens as version 0, read into memory; its first
//! compaction writes `v-000001` beside it.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::array::Array;
use super::array::ArrayWriter;
use super::base::{Base, Embeddings};
use super::edit::EditRecord;
use super::editlog::{self, log_name, EditLog};
use super::format::{self, sync_dir, Manifest};
use super::idmap::IdMap;
use super::segments::{self, FoldReport, SegmentInfo, Segments};
use super::strings::StringsBuilder;
use super::trie::Trie;
use super::{Catalog, CatalogError};

pub const CURRENT_FILE: &str = "CURRENT";
pub const LOCK_FILE: &str = "LOCK";

fn version_name(v: u64) -> String {
    format!("v-{v:06}")
}

/// The log numbers present in `dir`, ascending.
fn log_numbers(dir: &Path) -> Result<Vec<u64>, CatalogError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))? {
        let e = e.map_err(|e| CatalogError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix("edits-").and_then(|s| s.strip_suffix(".log")).and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Which version a folder is at, and where it lies.
fn current_version(dir: &Path) -> Result<(u64, PathBuf), CatalogError> {
    let cur = dir.join(CURRENT_FILE);
    match std::fs::read_to_string(&cur) {
        Ok(s) => {
            let name = s.trim();
            let v = name
                .strip_prefix("v-")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| CatalogError::Format(format!("{}: {name:?} is not a version name", cur.display())))?;
            Ok((v, dir.join(name)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(super::legacy::MANIFEST_FILE).is_file() {
                Ok((0, dir.to_path_buf()))
            } else {
                Err(CatalogError::Format(format!(
                    "{} is not a catalog folder (no {CURRENT_FILE} and no {}): build one with `genrec index`",
                    dir.display(),
                    super::legacy::MANIFEST_FILE
                )))
            }
        }
        Err(e) => Err(CatalogError::io(&cur, e)),
    }
}

/// What opening a folder found, besides the catalog.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub version: u64,
    /// Records replayed from the logs.
    pub replayed: usize,
    /// Torn tails dropped: `(log file, offset)`.
    pub torn: Vec<(PathBuf, u64)>,
    /// The version's segments, restored before the logs.
    pub segments: Vec<SegmentInfo>,
    /// The overlay's change counter after the segments (what they hold).
    pub folded_seq: u64,
}

/// Loads the current version of `dir` and replays its logs (read-only: the
/// folder is not locked and nothing is written). A process writing the
/// folder meanwhile may fold, merge or compact, deleting logs and segments
/// this one is reading: what was read is kept only if `CURRENT` and
/// `SEGMENTS` are the same after as before, else it is read again.
pub fn open_read_only(dir: &Path) -> Result<(Catalog, OpenReport), CatalogError> {
    // the contents of CURRENT and SEGMENTS (none: absent)
    type Pointers = (Option<Vec<u8>>, Option<Vec<u8>>);
    let pointers = |dir: &Path| -> Result<Pointers, CatalogError> {
        let read = |name: &str| match std::fs::read(dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CatalogError::io(dir.join(name), e)),
        };
        Ok((read(CURRENT_FILE)?, read(segments::SEGMENTS_FILE)?))
    };
    for attempt in 0..20u32 {
        let before = pointers(dir)?;
        let read = read_once(dir);
        if pointers(dir)? == before {
            return read;
        }
        #[cfg(test)]
        READ_AGAIN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // a writer folding fast: let it go ahead (10 ms, growing to 1 s)
        std::thread::sleep(std::time::Duration::from_millis((10u64 << attempt.min(7)).min(1000)));
    }
    Err(CatalogError::Busy(format!("{}: the catalog kept changing while it was read", dir.display())))
}

/// Reads [`open_read_only`] threw away because the folder changed meanwhile
/// (tests check that their race happened).
#[cfg(test)]
pub(crate) static READ_AGAIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// [`open_read_only`]'s one reading of the folder.
fn read_once(dir: &Path) -> Result<(Catalog, OpenReport), CatalogError> {
    let (v, vdir) = current_version(dir)?;
    let base = if v == 0 { super::legacy::load(&vdir)? } else { Base::map(&vdir)? };
    let mut cat = Catalog::from_base(base);
    let segments = segments::read_list(dir, v)?;
    segments::restore_all(dir, &mut cat, &segments)?;
    let from = segments::replay_from(v, &segments);
    let mut report = OpenReport { version: v, folded_seq: cat.overlay().seq(), segments, ..Default::default() };
    for n in log_numbers(dir)?.into_iter().filter(|&n| n >= from) {
        let p = dir.join(log_name(n));
        let c = editlog::read(&p)?;
        if let Some(at) = c.torn_at {
            tracing::warn!(log = %p.display(), offset = at, "edit log: a torn record at the end was dropped (never acknowledged)");
            report.torn.push((p.clone(), at));
        }
        replay(&mut cat, &c.records, &p)?;
        report.replayed += c.records.len();
    }
    Ok((cat, report))
}

fn replay(cat: &mut Catalog, records: &[EditRecord], log: &Path) -> Result<(), CatalogError> {
    for r in records {
        cat.apply(r)
            .map_err(|e| CatalogError::Format(format!("{}: replaying edit {}: {e}", log.display(), r.edit_id)))?;
    }
    Ok(())
}

/// A catalog folder opened for writing: the lock, and the log edits go to.
pub struct WritableDir {
    path: PathBuf,
    _lock: File,
    /// Number of the active log.
    log_number: u64,
    version: u64,
    segments: Segments,
}

impl std::fmt::Debug for WritableDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WritableDir({}, v{}, log {})", self.path.display(), self.version, self.log_number)
    }
}

/// Takes the folder's lock, cleans up what a crash left, loads and replays.
/// Returns the catalog, the open log (for appends) and the folder handle.
pub fn open_writable(dir: &Path) -> Result<(Catalog, EditLog, WritableDir, OpenReport), CatalogError> {
    let lock = take_lock(dir)?;
    let (version, _) = current_version(dir)?;
    cleanup(dir, version)?;
    let (cat, report) = open_read_only(dir)?;
    let segments = Segments::new(dir, version, report.segments.clone(), report.folded_seq);
    let log_number = log_numbers(dir)?.last().copied().unwrap_or(version).max(segments.replay_from());
    let log_path = dir.join(log_name(log_number));
    let valid = editlog::read(&log_path)?.valid_bytes;
    let log = EditLog::open(&log_path, valid)?;
    Ok((cat, log, WritableDir { path: dir.into(), _lock: lock, log_number, version, segments }, report))
}

/// Removes unfinished version folders, older versions and older logs.
fn cleanup(dir: &Path, version: u64) -> Result<(), CatalogError> {
    for e in std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))? {
        let e = e.map_err(|e| CatalogError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let old_version = name.strip_prefix("v-").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n < version);
        let old_log = name
            .strip_prefix("edits-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < version);
        let unfinished = name.starts_with("v-") && name.contains(".tmp");
        if unfinished || old_version {
            let _ = std::fs::remove_dir_all(e.path());
        } else if old_log {
            let _ = std::fs::remove_file(e.path());
        }
    }
    segments::cleanup(dir, version)
}

impl WritableDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version's segments.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    /// Folds the logs before the active one into a segment (see
    /// [`Segments::fold`]): call after [`WritableDir::rotate`], with the view
    /// that holds exactly the edits logged before it.
    pub fn fold(&mut self, view: &Catalog) -> Result<FoldReport, CatalogError> {
        // a compaction whose switch reached the disk but reported an error
        // (its folder sync failed) leaves CURRENT on a version this handle
        // does not know: folding onto the old one would delete logs the new
        // one needs
        let (on_disk, _) = current_version(&self.path)?;
        if on_disk != self.version {
            return Err(CatalogError::Format(format!(
                "{} is at version {on_disk} on disk, but this process holds version {}: restart it",
                self.path.display(),
                self.version
            )));
        }
        self.segments.fold(view, self.log_number - 1)
    }

    /// Starts a compaction or a fold: edits from now on go to a new log,
    /// numbered as the version a compaction would write. Returns that log
    /// and number.
    pub fn rotate(&mut self) -> Result<(EditLog, u64), CatalogError> {
        let next = self.log_number + 1;
        let log = EditLog::open(&self.path.join(log_name(next)), 0)?;
        self.log_number = next;
        Ok((log, next))
    }

    /// Writes `view` as version `number` (see [`write_version`]), points
    /// `CURRENT` at it and deletes older versions and logs.
    pub fn commit_version(
        &mut self,
        view: &Catalog,
        number: u64,
        extra: &dyn Fn(&Catalog, &Path) -> Result<(), CatalogError>,
    ) -> Result<PathBuf, CatalogError> {
        let final_dir = write_and_point(&self.path, view, number, None, extra, &|| Ok(()))?;
        self.version = number;
        self.segments = Segments::new(&self.path, number, Vec::new(), 0);
        cleanup(&self.path, number)?;
        // a legacy folder's own files stay: they are version 0, ignored from now on
        Ok(final_dir)
    }
}

/// Writes `view` as version `number` of `dir` under a temporary name (its
/// own: two writers never share one), renames it into place and points
/// `CURRENT` at it. On failure (a full disk, say) the temporary folder is
/// removed: a retried compaction leaves no full-size copies behind.
fn write_and_point(
    dir: &Path,
    view: &Catalog,
    number: u64,
    feed_position: Option<&str>,
    extra: &dyn Fn(&Catalog, &Path) -> Result<(), CatalogError>,
    before_switch: &dyn Fn() -> Result<(), CatalogError>,
) -> Result<PathBuf, CatalogError> {
    let final_dir = dir.join(version_name(number));
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}.tmp-", version_name(number)))
        .tempdir_in(dir)
        .map_err(|e| CatalogError::io(dir, e))?;
    write_version(view, tmp.path(), number, feed_position)?;
    extra(view, tmp.path())?;
    sync_dir(tmp.path())?;
    before_switch()?;
    let _ = std::fs::remove_dir_all(&final_dir);
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &final_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(CatalogError::io(&final_dir, e));
    }
    sync_dir(dir)?;
    set_current(dir, number)?;
    Ok(final_dir)
}

/// Writes `view` as the next version of a folder that replicas share (`genrec
/// serve --feed`: nobody holds its `LOCK`; the caller holds the feed's
/// compaction lease instead), recording the feed position it covers.
/// Versions from `keep_from` on stay (the one before the new version at
/// least: a replica may be opening it); older versions and logs are deleted.
/// `still_leased` is asked once the version is written, right before the
/// switch: an error (the lease lapsed) switches nothing and leaves nothing.
/// Returns the new version's number and folder.
pub fn commit_shared_version(
    dir: &Path,
    view: &Catalog,
    feed_position: &str,
    keep_from: u64,
    extra: &dyn Fn(&Catalog, &Path) -> Result<(), CatalogError>,
    still_leased: &dyn Fn() -> Result<(), CatalogError>,
) -> Result<(u64, PathBuf), CatalogError> {
    let (current, _) = current_version(dir)?;
    let number = current + 1;
    let final_dir = write_and_point(dir, view, number, Some(feed_position), extra, still_leased)?;
    cleanup(dir, keep_from.min(current))?;
    Ok((number, final_dir))
}

/// The feed position recorded by version `number` of `dir` (`None`: the
/// version records none, or is gone).
pub fn version_feed_position(dir: &Path, number: u64) -> Result<Option<String>, CatalogError> {
    let p = dir.join(version_name(number)).join(format::MANIFEST_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CatalogError::io(&p, e)),
    };
    let m: Manifest = serde_json::from_str(&text).map_err(|e| CatalogError::Format(format!("{}: {e}", p.display())))?;
    Ok(m.feed_position)
}

/// The current version number of a catalog folder.
pub fn version_of(dir: &Path) -> Result<u64, CatalogError> {
    current_version(dir).map(|(v, _)| v)
}

fn set_current(dir: &Path, number: u64) -> Result<(), CatalogError> {
    let p = dir.join(CURRENT_FILE);
    crate::util::write_atomic(&p, format!("{}\n", version_name(number)).as_bytes())
        .map_err(|e| CatalogError::io(&p, e))?;
    sync_dir(dir)
}

/// Writes `view` (plus `extra` files, e.g. the ANN index) as a new catalog
/// at `dir` (see [`Staged`]): a new folder, or the next version of the
/// catalog folder there, which then serves nothing of the catalog before.
pub fn create(
    dir: &Path,
    view: &Catalog,
    extra: &dyn Fn(&Catalog, &Path) -> Result<(), CatalogError>,
) -> Result<(), CatalogError> {
    let staged = Staged::new(dir)?;
    let vdir = staged.version_dir().to_path_buf();
    write_version(view, &vdir, staged.number(), None)?;
    extra(view, &vdir)?;
    staged.commit()
}

/// A new catalog being written to a folder, switched to whole or not at all:
/// - no folder there: it is built under a temporary name beside it and
///   renamed into place when complete;
/// - a catalog folder (or an empty folder) there: its `LOCK` is taken (a
///   folder a running server holds is refused: that server would go on
///   acknowledging edits into a log nobody reads), the catalog is written as
///   the folder's next version and `CURRENT` switches to it, so that the
///   folder holds a whole catalog at every instant; older versions and logs
///   are deleted after the switch;
/// - anything else there is refused.
///
/// Dropped without [`Staged::commit`] (a failed build), nothing is left.
pub struct Staged {
    dir: PathBuf,
    number: u64,
    staging: tempfile::TempDir,
    /// Writing into an existing folder, whose lock this holds.
    lock: Option<File>,
}

impl Staged {
    pub fn new(dir: &Path) -> Result<Self, CatalogError> {
        if !dir.exists() {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent).map_err(|e| CatalogError::io(&parent, e))?;
            let leaf = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "catalog".into());
            let staging = tempfile::Builder::new()
                .prefix(&format!(".{leaf}.tmp-"))
                .tempdir_in(&parent)
                .map_err(|e| CatalogError::io(&parent, e))?;
            let v = staging.path().join(version_name(1));
            std::fs::create_dir(&v).map_err(|e| CatalogError::io(&v, e))?;
            return Ok(Staged { dir: dir.into(), number: 1, staging, lock: None });
        }
        let is_catalog = dir.join(CURRENT_FILE).is_file() || dir.join(super::legacy::MANIFEST_FILE).is_file();
        let empty = std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))?.next().is_none();
        if !is_catalog && !empty {
            return Err(CatalogError::Format(format!(
                "{} exists and is not a catalog folder: refusing to replace it",
                dir.display()
            )));
        }
        let lock = take_lock(dir).map_err(|e| match e {
            CatalogError::Busy(_) => CatalogError::Busy(format!(
                "{} is served by a running genrec process (it holds {LOCK_FILE}): stop it first, or write the \
                 catalog to another folder and point the server there",
                dir.display()
            )),
            other => other,
        })?;
        // above every version and every log: a log left by a compaction
        // that never switched belongs to the old catalog, not to this one
        let current = if is_catalog { current_version(dir)?.0 } else { 0 };
        let number = log_numbers(dir)?.into_iter().fold(current, u64::max) + 1;
        let staging = tempfile::Builder::new()
            .prefix(&format!("{}.tmp-", version_name(number)))
            .tempdir_in(dir)
            .map_err(|e| CatalogError::io(dir, e))?;
        Ok(Staged { dir: dir.into(), number, staging, lock: Some(lock) })
    }

    /// The version number the new catalog gets (its manifest's `version`).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Where the version's files go.
    pub fn version_dir(&self) -> PathBuf {
        match self.lock {
            Some(_) => self.staging.path().to_path_buf(),
            None => self.staging.path().join(version_name(1)),
        }
    }

    /// Syncs the version and switches to it (see [`Staged`]).
    pub fn commit(self) -> Result<(), CatalogError> {
        let vdir = self.version_dir();
        sync_dir(&vdir)?;
        let Staged { dir, number, staging, lock } = self;
        if lock.is_none() {
            set_current(staging.path(), number)?;
            let tmp = staging.keep();
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(CatalogError::io(&dir, e));
            }
            if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(p)?;
            }
            return Ok(());
        }
        let final_dir = dir.join(version_name(number));
        let tmp = staging.keep();
        if let Err(e) = std::fs::rename(&tmp, &final_dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(CatalogError::io(&final_dir, e));
        }
        sync_dir(&dir)?;
        set_current(&dir, number)?;
        cleanup(&dir, number)?;
        drop(lock);
        Ok(())
    }
}

/// Takes `dir`'s `LOCK` (the file stays; the lock goes with the process).
fn take_lock(dir: &Path) -> Result<File, CatalogError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CatalogError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(CatalogError::Busy(format!(
            "{} is in use by another genrec process (it holds {LOCK_FILE})",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CatalogError::io(&lock_path, e)),
    }
}

/// Writes every file of a version holding `view` into `dir`, streaming the
/// rows: ids, titles, semantic IDs, f16 embeddings, the rows not served, the
/// id map and the trie over the served items, intents, manifest last.
pub fn write_version(view: &Catalog, dir: &Path, number: u64, feed_position: Option<&str>) -> Result<(), CatalogError> {
    let n = view.len();
    let m = view.manifest();
    let (levels, dim) = (m.levels(), m.embedding_dim);
    let mut ids = StringsBuilder::with_capacity(n);
    let mut titles = StringsBuilder::with_capacity(n);
    let mut sids = Vec::with_capacity(n * levels);
    let mut removed = Vec::new();
    let mut expiring = Vec::new();
    let mut emb = ArrayWriter::<u16>::create(&dir.join("embeddings.f16"))?;
    let mut row = Vec::with_capacity(dim);
    let mut half_row: Vec<u16> = Vec::with_capacity(dim);
    let progress = crate::progress::Progress::new("writing version rows", n as u64);
    for i in 0..n as u32 {
        if i % 262_144 == 0 {
            progress.set(i as u64);
        }
        ids.push(view.item_id(i));
        titles.push(view.title(i));
        sids.extend_from_slice(view.sid(i));
        if !view.is_served(i) {
            removed.push(i);
        } else if let Some(ms) = view.expires_at(i) {
            expiring.push((i, ms));
        }
        match (view.overlay().item(i), &view.base().embeddings) {
            (None, Embeddings::F16(a)) => emb.push_all(&a[i as usize * dim..(i as usize + 1) * dim])?,
            _ => {
                row.clear();
                row.extend(view.embedding(i));
                half_row.clear();
                half_row.extend(row.iter().map(|&x| half::f16::from_f32(x).to_bits()));
                emb.push_all(&half_row)?;
            }
        }
    }
    emb.finish()?;
    progress.finish();
    let ids = ids.finish();
    let idmap = IdMap::build(&ids).map_err(|d| {
        CatalogError::Format(format!("duplicate item id {:?} (rows {} and {})", ids.get(d.first), d.first, d.second))
    })?;
    let keep = |i: u32| removed.binary_search(&i).is_err();
    let trie = Trie::build_filtered(&sids, levels, &m.codebook_sizes, 2, Some(&keep))?;
    let base = Base {
        manifest: Manifest {
            format: format::FORMAT.into(),
            num_items: n,
            version: number,
            last_edit_id: view.last_edit_id(),
            // (a folder from before the field: its base's rows, as every
            // replica reads them, whatever version it is on)
            indexed_rows: Some(view.trained_rows()),
            embedding_dtype: "f16".into(),
            // a compaction without a feed keeps the position the view started from
            feed_position: feed_position.map(str::to_string).or_else(|| m.feed_position.clone()),
            ..m.clone()
        },
        ids,
        titles: titles.finish(),
        sids: Array::owned(sids),
        // (dtype only: the rows are in embeddings.f16 already)
        embeddings: Embeddings::F16(Array::default()),
        codebooks: view.codebooks().to_vec(),
        trie,
        idmap,
        intents: view.intents().to_vec(),
        removed: Array::owned(removed),
        expiry: crate::catalog::expiry::BaseExpiry::from_pairs(&expiring),
        source: None,
    };
    // everything but the embeddings, which are written already
    base.write_all_but_embeddings(dir)
}

impl Catalog {
    /// Opens a catalog folder without writing (train, eval, and servers that
    /// find the folder locked).
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
        open_read_only(dir).map(|(c, _)| c)
    }

    /// Writes this view as a new catalog folder (see [`create`]).
    pub fn save(&self, dir: &Path) -> Result<(), CatalogError> {
        create(dir, self, &|_, _| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::edit::{EditOp, NewItem};
    use crate::catalog::tests::tiny_catalog;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("genrec-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn served(c: &Catalog) -> Vec<(String, Vec<u32>, String)> {
        let mut v: Vec<_> = (0..c.len() as u32)
            .filter(|&i| c.is_served(i))
            .map(|i| (c.item_id(i).to_string(), c.sid(i).to_vec(), c.title(i).to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_load_roundtrip() {
        let c = tiny_catalog();
        let dir = temp("roundtrip");
        c.save(&dir).unwrap();
        let d = Catalog::load(&dir).unwrap();
        assert_eq!(d.manifest().fingerprint, c.manifest().fingerprint);
        assert_eq!(d.manifest().version, 1);
        assert_eq!(served(&d), served(&c));
        assert_eq!(d.codebooks(), c.codebooks());
        assert_eq!(d.index_of("item-3"), Some(3));
        assert_eq!(d.trie().lookup(d.sid(7)), Some(7));
        assert!(d.base().sids.is_mapped());
        for i in 0..10 {
            let (a, b) = (c.embedding(i), d.embedding(i));
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3), "f16 keeps the embeddings");
        }
        // saving over a catalog folder replaces it; over anything else is refused
        c.save(&dir).unwrap();
        let other = temp("not-a-catalog");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        assert!(c.save(&other).is_err());
        assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine");
        // a damaged array file is refused (saving over the folder made its next version)
        let current = std::fs::read_to_string(dir.join(CURRENT_FILE)).unwrap();
        assert_eq!(current.trim(), "v-000002");
        std::fs::write(dir.join(current.trim()).join("sids.u32"), [0u8; 3]).unwrap();
        assert!(Catalog::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }

    fn upsert_rec(c: &mut Catalog, id: &str, emb: Vec<f32>, edit_id: u64) -> EditRecord {
        let up = c
            .upsert(
                NewItem { id: id.into(), title: id.into(), embedding: emb, semantic_id: None, expires_at_ms: None },
                edit_id,
            )
            .unwrap();
        EditRecord {
            edit_id,
            ts_ms: 0,
            op: EditOp::Upsert {
                id: id.into(),
                title: id.into(),
                semantic_id: up.semantic_id,
                embedding: up.embedding,
                expires_at_ms: None,
            },
        }
    }

    #[test]
    fn logged_edits_survive_reopen_and_compaction() {
        let dir = temp("log");
        tiny_catalog().save(&dir).unwrap();
        let (mut cat, log, mut wd, report) = open_writable(&dir).unwrap();
        assert_eq!(report.version, 1);
        assert!(open_writable(&dir).is_err(), "one writer at a time");
        let e2 = cat.embedding(2);
        let r1 = upsert_rec(&mut cat, "new-1", e2, 1);
        cat.remove("item-4", 2).unwrap();
        let r2 = EditRecord { edit_id: 2, ts_ms: 0, op: EditOp::Delete { id: "item-4".into() } };
        let end = log.append(&[r1, r2]).unwrap();
        log.sync_to(end).unwrap();
        drop(log);
        drop(wd);
        let (again, _, wd2, report) = open_writable(&dir).unwrap();
        assert_eq!(report.replayed, 2);
        assert_eq!(served(&again), served(&cat));
        assert_eq!(again.last_edit_id(), 2);
        wd = wd2;

        // compaction: new edits go to the next log while the version is written
        let (log3, number) = wd.rotate().unwrap();
        assert_eq!(number, 2);
        let mut after = again.clone();
        let e5 = after.embedding(5);
        let r3 = upsert_rec(&mut after, "new-2", e5, 3);
        let end = log3.append(&[r3]).unwrap();
        log3.sync_to(end).unwrap();
        // a crash before the switch: the old version and both logs replay
        let (mid, _) = open_read_only(&dir).unwrap();
        assert_eq!(served(&mid), served(&after));
        wd.commit_version(&again, number, &|_, _| Ok(())).unwrap();
        assert!(!dir.join("v-000001").exists() && !dir.join("edits-000001.log").exists());
        let (done, rep) = open_read_only(&dir).unwrap();
        assert_eq!(rep.version, 2);
        assert_eq!(rep.replayed, 1, "only the edit after the compaction is replayed");
        assert_eq!(served(&done), served(&after));
        assert!(done.overlay().len() <= 1);
        assert_eq!(done.manifest().fingerprint, tiny_catalog().manifest().fingerprint, "models stay valid");
        drop(wd);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A compaction that fails after its version folder was started (a full
    /// disk, an index that cannot be written) leaves nothing behind, and the
    /// catalog stays on its version: retries used to leak a full-size copy
    /// each.
    #[test]
    fn a_failed_version_write_leaves_no_partial_folder() {
        let dir = temp("failed-write");
        tiny_catalog().save(&dir).unwrap();
        let (cat, _, mut wd, _) = open_writable(&dir).unwrap();
        let before: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        for _ in 0..3 {
            let (_, number) = wd.rotate().unwrap();
            let full = |_: &Catalog, _: &Path| {
                Err(CatalogError::io("ivf.items.u32", std::io::Error::other("no space left on device")))
            };
            assert!(wd.commit_version(&cat, number, &full).is_err());
        }
        let partial: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(partial.is_empty(), "left behind: {partial:?} (before: {before:?})");
        assert_eq!(version_of(&dir).unwrap(), wd.version());
        drop(wd);
        let (again, _) = open_read_only(&dir).unwrap();
        assert_eq!(served(&again), served(&cat));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
