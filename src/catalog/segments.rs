//! The segments of a catalog version ([`super::segment`]) and how they come
//! and go: folding the edit log into a new segment, and merging segments in
//! tiers so that their number stays small and each edit is rewritten a
//! bounded number of times.
//!
//! ```text
//! CATALOG_DIR/
//!   SEGMENTS               which segments lie on which version (JSON), replaced atomically
//!   s-000007-000004/       a segment holding the outcome of logs 4..=7
//!   edits-000008.log       the edits after the last segment
//! ```
//!
//! A **fold** writes the states the overlay changed since the last fold as a
//! segment (under a temporary name, synced, renamed), then switches
//! `SEGMENTS` to the list with it, then deletes the logs it holds. A **tier
//! merge** writes the union of the newest run of segments of one tier (their
//! entry counts within one power of [`FANOUT`], smaller ones among them)
//! once that run holds [`FANOUT`] of them ([`merge_due`]), switches
//! `SEGMENTS`, then deletes the inputs: tiers stay non-increasing from the
//! oldest segment to the newest, an entry is rewritten about once per tier,
//! there are `log_FANOUT(entries)` tiers, and fewer than `FANOUT` segments
//! in each. A full compaction
//! ([`super::dir`]) writes a new version holding everything, and `SEGMENTS`,
//! naming the old version, no longer counts.
//!
//! A crash at any point leaves either the old list with its logs or inputs,
//! or the new list: folders and logs the current list does not name are
//! deleted at the next writable open ([`cleanup`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment::{self, Segment, SegmentManifest};
use super::{Catalog, CatalogError};

pub const SEGMENTS_FILE: &str = "SEGMENTS";
/// Segments of one tier merged at once; tier `t` holds up to `FANOUT^(t+1)` entries.
pub const FANOUT: usize = 4;

/// One segment in the list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SegmentInfo {
    pub name: String,
    pub first_log: u64,
    pub last_log: u64,
    pub entries: usize,
    /// Bytes on disk.
    pub bytes: u64,
}

impl SegmentInfo {
    /// Its tier: `floor(log_FANOUT(entries))`.
    pub fn tier(&self) -> u32 {
        let mut t = 0;
        let mut n = self.entries.max(1);
        while n >= FANOUT {
            n /= FANOUT;
            t += 1;
        }
        t
    }
}

/// The `SEGMENTS` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SegmentList {
    /// The version the segments lie on.
    version: u64,
    segments: Vec<SegmentInfo>,
}

fn segment_name(first_log: u64, last_log: u64) -> String {
    format!("s-{last_log:06}-{first_log:06}")
}

/// The segments listed for `version` (none: no list, or a list of another
/// version, which a full compaction left behind).
pub fn read_list(dir: &Path, version: u64) -> Result<Vec<SegmentInfo>, CatalogError> {
    let p = dir.join(SEGMENTS_FILE);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CatalogError::io(&p, e)),
    };
    let list: SegmentList =
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    Ok(if list.version == version { list.segments } else { Vec::new() })
}

fn write_list(dir: &Path, version: u64, segments: &[SegmentInfo]) -> Result<(), CatalogError> {
    let p = dir.join(SEGMENTS_FILE);
    let list = SegmentList { version, segments: segments.to_vec() };
    let bytes = serde_json::to_vec_pretty(&list).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    crate::util::write_atomic(&p, &bytes).map_err(|e| CatalogError::io(&p, e))
}

/// The first log the segments do not hold (`version`'s own without any).
pub fn replay_from(version: u64, segments: &[SegmentInfo]) -> u64 {
    segments.last().map_or(version, |s| s.last_log + 1).max(version)
}

/// Restores `segments` (oldest first) into `cat`, a view of their version's base.
pub fn restore_all(dir: &Path, cat: &mut Catalog, segments: &[SegmentInfo]) -> Result<(), CatalogError> {
    for s in segments {
        let p = dir.join(&s.name);
        let seg = Segment::open(&p)?;
        cat.restore_segment(&seg).map_err(|e| CatalogError::Format(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

/// A test hook: a process whose `GENREC_CRASH_AT` names this point exits
/// here at once with status 86, running no destructor and removing no
/// temporary folder, as `kill -9` would leave it (unit tests only).
fn crash_point(_name: &str) {
    #[cfg(test)]
    if std::env::var("GENREC_CRASH_AT").is_ok_and(|v| v == _name) {
        std::process::exit(86);
    }
}

/// Writes a segment into a temporary folder of `dir`, then renames it into
/// place. The folder is removed on failure.
fn write_segment<'a>(
    dir: &Path,
    kind: &str,
    name: &str,
    manifest: SegmentManifest,
    entries: impl Iterator<Item = segment::Entry<'a>>,
) -> Result<SegmentManifest, CatalogError> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{name}.tmp-"))
        .tempdir_in(dir)
        .map_err(|e| CatalogError::io(dir, e))?;
    let m = segment::write(tmp.path(), manifest, entries)?;
    crash_point(&format!("{kind}-written"));
    let final_dir = dir.join(name);
    let _ = std::fs::remove_dir_all(&final_dir);
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, &final_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(CatalogError::io(&final_dir, e));
    }
    super::format::sync_dir(dir)?;
    crash_point(&format!("{kind}-renamed"));
    Ok(m)
}

fn folder_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

/// The segments of one version of a catalog folder this process writes.
#[derive(Debug, Clone)]
pub struct Segments {
    dir: PathBuf,
    version: u64,
    list: Vec<SegmentInfo>,
    /// The overlay's change counter up to which the segments hold the states.
    folded_seq: u64,
}

/// What a fold did.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct FoldReport {
    /// Item states the new segment holds.
    pub entries: usize,
    /// Tier merges run after it, and the entries they wrote.
    pub merges: usize,
    pub merged_entries: usize,
    /// Segments and their bytes after it.
    pub segments: usize,
    pub segment_bytes: u64,
    pub seconds: f64,
}

impl Segments {
    /// The segments of `version` as listed, the overlay's counter
    /// `folded_seq` standing for what they hold.
    pub fn new(dir: &Path, version: u64, list: Vec<SegmentInfo>, folded_seq: u64) -> Self {
        Segments { dir: dir.into(), version, list, folded_seq }
    }

    pub fn list(&self) -> &[SegmentInfo] {
        &self.list
    }

    /// Bytes of the segments on disk.
    pub fn bytes(&self) -> u64 {
        self.list.iter().map(|s| s.bytes).sum()
    }

    /// The first log the segments do not hold.
    pub fn replay_from(&self) -> u64 {
        replay_from(self.version, &self.list)
    }

    /// Folds logs `replay_from()..=last_log` into a new segment: `view`
    /// holds exactly their edits, and the states it changed since the last
    /// fold are written. Then switches the list, deletes those logs and
    /// runs the tier merges due.
    pub fn fold(&mut self, view: &Catalog, last_log: u64) -> Result<FoldReport, CatalogError> {
        let t0 = std::time::Instant::now();
        let first_log = self.replay_from();
        if last_log < first_log {
            return Err(CatalogError::Conflict(format!("logs up to {last_log} are folded already")));
        }
        let name = segment_name(first_log, last_log);
        let entries = segment::changed_entries(view, self.folded_seq);
        let manifest = SegmentManifest {
            format: String::new(),
            base_version: self.version,
            entries: entries.len(),
            levels: view.levels(),
            dim: view.manifest().embedding_dim,
            first_log,
            last_log,
            last_edit_id: view.last_edit_id(),
            swept_to: view.overlay().swept_to(),
            rows: view.len() as u32,
        };
        let m = write_segment(&self.dir, "fold", &name, manifest, entries.into_iter())?;
        let info =
            SegmentInfo { bytes: folder_bytes(&self.dir.join(&name)), name, first_log, last_log, entries: m.entries };
        let mut next = self.list.clone();
        next.push(info);
        self.switch_list(&next, &next[next.len() - 1].name)?;
        crash_point("fold-listed");
        self.list = next;
        self.folded_seq = view.overlay().seq();
        for n in first_log..=last_log {
            let _ = std::fs::remove_file(self.dir.join(super::editlog::log_name(n)));
        }
        let mut report = FoldReport { entries: m.entries, ..Default::default() };
        while let Some(run) = merge_due(&self.list) {
            // (the fold is done and durable: a failed merge is left for the next fold)
            match self.merge(run) {
                Ok(n) => report.merged_entries += n,
                Err(e) => {
                    tracing::warn!(error = %e, "merging segments failed; they stay as they are until the next fold");
                    break;
                }
            }
            report.merges += 1;
        }
        report.segments = self.list.len();
        report.segment_bytes = self.bytes();
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Writes `next` as the list. On failure the new segment `added` is
    /// removed, unless the list on disk names it (the rename reached the
    /// disk and only the folder's sync failed): then the switch is done.
    fn switch_list(&self, next: &[SegmentInfo], added: &str) -> Result<(), CatalogError> {
        let Err(e) = write_list(&self.dir, self.version, next) else { return Ok(()) };
        if read_list(&self.dir, self.version).is_ok_and(|l| l.iter().any(|s| s.name == added)) {
            tracing::warn!(error = %e, "the segment list was written but its folder's sync failed");
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(self.dir.join(added));
        Err(e)
    }

    /// Merges the segments `run` (a range of the list) into one; returns
    /// the entries written.
    pub fn merge(&mut self, run: std::ops::Range<usize>) -> Result<usize, CatalogError> {
        let inputs = &self.list[run.clone()];
        let (first_log, last_log) = (inputs[0].first_log, inputs[inputs.len() - 1].last_log);
        let segs: Vec<Segment> =
            inputs.iter().map(|s| Segment::open(&self.dir.join(&s.name))).collect::<Result<_, _>>()?;
        let newest = &segs[segs.len() - 1].manifest;
        let manifest = SegmentManifest {
            first_log,
            swept_to: segs.iter().map(|s| s.manifest.swept_to).max().unwrap_or(0),
            ..newest.clone()
        };
        let name = segment_name(first_log, last_log);
        let m = write_segment(&self.dir, "merge", &name, manifest, segment::merged_entries(&segs).into_iter())?;
        drop(segs);
        let info =
            SegmentInfo { bytes: folder_bytes(&self.dir.join(&name)), name, first_log, last_log, entries: m.entries };
        let mut next = self.list[..run.start].to_vec();
        next.push(info);
        next.extend_from_slice(&self.list[run.end..]);
        write_list(&self.dir, self.version, &next)?;
        crash_point("merge-listed");
        let old = std::mem::replace(&mut self.list, next);
        for s in &old[run] {
            let _ = std::fs::remove_dir_all(self.dir.join(&s.name));
        }
        Ok(m.entries)
    }
}

/// The merge due in `list`, if any, keeping tiers non-increasing from the
/// oldest segment to the newest with fewer than [`FANOUT`] per tier:
/// - older segments of a lower tier than the newest one (a fold larger than
///   the ones before it) are merged with it;
/// - else the newest run of one tier is merged once it holds [`FANOUT`].
///
/// Runs are contiguous and end at the newest segment, so the newest state of
/// an item always wins; a list that has no merge due holds at most
/// `(FANOUT - 1)` segments per tier.
pub fn merge_due(list: &[SegmentInfo]) -> Option<std::ops::Range<usize>> {
    let n = list.len();
    let last = list.last()?.tier();
    let start = list[..n - 1].iter().rposition(|s| s.tier() >= last).map_or(0, |i| i + 1);
    if start < n - 1 {
        return Some(start..n);
    }
    let start = list.iter().rposition(|s| s.tier() != last).map_or(0, |i| i + 1);
    (n - start >= FANOUT).then_some(start..n)
}

/// Deletes what the list of `version` does not name: segment folders (and
/// unfinished ones), logs the segments hold, and a list of another version.
pub fn cleanup(dir: &Path, version: u64) -> Result<(), CatalogError> {
    let list = read_list(dir, version)?;
    let from = replay_from(version, &list);
    for e in std::fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))? {
        let e = e.map_err(|e| CatalogError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("s-") && !list.iter().any(|s| s.name == name) {
            let _ = std::fs::remove_dir_all(e.path());
        }
        let folded_log = name
            .strip_prefix("edits-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n < from);
        if folded_log {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if list.is_empty() && dir.join(SEGMENTS_FILE).exists() {
        let _ = std::fs::remove_file(dir.join(SEGMENTS_FILE));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::dir::{open_read_only, open_writable};
    use crate::catalog::edit::{EditOp, EditRecord, NewItem};
    use crate::catalog::tests::tiny_catalog;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("genrec-segments-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Everything a view serves and holds, row by row, with its trie.
    fn state(c: &Catalog) -> Vec<String> {
        let mut out = vec![format!(
            "rows {} served {} last edit {} swept to {}",
            c.len(),
            c.served_len(),
            c.last_edit_id(),
            c.overlay().swept_to()
        )];
        for i in 0..c.len() as u32 {
            let bits: Vec<u32> = c.embedding(i).iter().map(|x| x.to_bits()).collect();
            out.push(format!(
                "{i} {:?} {:?} served {} {:?} expires {:?} {bits:?} index {:?}",
                c.item_id(i),
                c.title(i),
                c.is_served(i),
                c.sid(i),
                c.expires_at(i),
                c.index_of(c.item_id(i))
            ));
            if c.is_served(i) {
                assert_eq!(c.trie().lookup(c.sid(i)), Some(i), "row {i} is in the trie at its ID");
            }
        }
        out
    }

    /// Random upserts (new items, some with a lifetime; new states of old
    /// ones) and deletes, each made into its log record.
    struct Edits {
        rng: ChaCha8Rng,
        edit_id: u64,
        ts: u64,
        ids: Vec<String>,
    }

    impl Edits {
        fn new(seed: u64, cat: &Catalog) -> Self {
            let ids = (0..cat.len() as u32).map(|i| cat.item_id(i).to_string()).collect();
            Edits { rng: ChaCha8Rng::seed_from_u64(seed), edit_id: cat.last_edit_id(), ts: 1_000, ids }
        }

        /// The next edit made to `cat`, or none when it was refused (a full catalog).
        fn next(&mut self, cat: &mut Catalog) -> Option<EditRecord> {
            self.ts += self.rng.random_range(0..40);
            let edit_id = self.edit_id + 1;
            let mut trial = cat.clone();
            trial.expire_until(self.ts);
            let op = if self.rng.random_bool(0.3) {
                let id = self.ids[self.rng.random_range(0..self.ids.len())].clone();
                trial.remove(&id, edit_id).ok()?;
                EditOp::Delete { id }
            } else {
                let id = if self.rng.random_bool(0.6) {
                    format!("new-{edit_id}")
                } else {
                    self.ids[self.rng.random_range(0..self.ids.len())].clone()
                };
                let dim = cat.manifest().embedding_dim;
                let embedding: Vec<f32> = (0..dim).map(|_| self.rng.random_range(-1.0..1.0)).collect();
                let expires_at_ms = self.rng.random_bool(0.3).then(|| self.ts + self.rng.random_range(1..300));
                let item = NewItem {
                    id: id.clone(),
                    title: format!("t{edit_id}"),
                    embedding,
                    semantic_id: None,
                    expires_at_ms,
                };
                let up = trial.upsert(item, edit_id).ok()?;
                if !self.ids.contains(&id) {
                    self.ids.push(id.clone());
                }
                EditOp::Upsert {
                    id,
                    title: format!("t{edit_id}"),
                    semantic_id: up.semantic_id,
                    embedding: up.embedding,
                    expires_at_ms,
                }
            };
            *cat = trial;
            self.edit_id = edit_id;
            Some(EditRecord { edit_id, ts_ms: self.ts, op })
        }
    }

    /// Random edit sequences, folded into segments at random moments (tier
    /// merges following), the folder reopened and fully compacted now and
    /// then: every reopened catalog equals the base with every edit replayed
    /// on it, and no tier ever holds FANOUT segments after a fold.
    #[test]
    fn folds_and_merges_equal_a_replay_of_every_edit() {
        let (mut folds, mut merges, mut reopens) = (0, 0, 0);
        for seed in 0..6u64 {
            let dir = temp(&format!("random-{seed}"));
            tiny_catalog().save(&dir).unwrap();
            let (mut cat, mut log, mut wd, _) = open_writable(&dir).unwrap();
            let mut reference = cat.clone();
            let mut edits = Edits::new(seed, &cat);
            let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
            for _ in 0..400 {
                if let Some(rec) = edits.next(&mut cat) {
                    reference.apply(&rec).unwrap();
                    let end = log.append(std::slice::from_ref(&rec)).unwrap();
                    log.sync_to(end).unwrap();
                }
                let roll: f64 = rng.random();
                if roll < 0.15 {
                    let (next, _) = wd.rotate().unwrap();
                    log = next;
                    let r = wd.fold(&cat).unwrap();
                    folds += 1;
                    merges += r.merges;
                    let list = wd.segments().list();
                    assert!(merge_due(list).is_none(), "{list:?}");
                    assert!(list.windows(2).all(|w| w[0].tier() >= w[1].tier()), "{list:?}");
                    for t in list.iter().map(|s| s.tier()) {
                        assert!(list.iter().filter(|s| s.tier() == t).count() < FANOUT, "{list:?}");
                    }
                } else if roll < 0.18 {
                    drop((log, wd));
                    let (again, l, w, report) = open_writable(&dir).unwrap();
                    assert_eq!(state(&again), state(&reference), "seed {seed}: reopened with {report:?}");
                    (cat, log, wd) = (again, l, w);
                    reopens += 1;
                } else if roll < 0.19 {
                    let (next, number) = wd.rotate().unwrap();
                    log = next;
                    wd.commit_version(&cat, number, &|_, _| Ok(())).unwrap();
                    assert!(!dir.join(SEGMENTS_FILE).exists());
                    drop((log, wd));
                    let (again, l, w, _) = open_writable(&dir).unwrap();
                    // (the new base holds f16 embeddings: replays go on from it)
                    reference = again.clone();
                    (cat, log, wd) = (again, l, w);
                }
            }
            assert_eq!(state(&cat), state(&reference), "seed {seed}: the writer's view");
            drop((log, wd));
            let (again, _) = open_read_only(&dir).unwrap();
            assert_eq!(state(&again), state(&reference), "seed {seed}: reopened at the end");
            std::fs::remove_dir_all(&dir).unwrap();
        }
        assert!(folds > 100 && merges > 10 && reopens > 20, "folds {folds}, merges {merges}, reopens {reopens}");
    }

    /// The child side of [`a_crash_at_any_step_of_a_fold_or_merge_loses_nothing`]:
    /// folds the folder `GENREC_CRASH_DIR` names, and dies where
    /// `GENREC_CRASH_AT` says.
    #[test]
    #[ignore = "run in a child process by a_crash_at_any_step_of_a_fold_or_merge_loses_nothing"]
    fn crash_child() {
        let Ok(dir) = std::env::var("GENREC_CRASH_DIR") else { return };
        let (cat, _log, mut wd, _) = open_writable(Path::new(&dir)).unwrap();
        let _next = wd.rotate().unwrap();
        let r = wd.fold(&cat).unwrap();
        assert_eq!(r.merges, 1, "the fold was to merge its tier");
    }

    /// A process that dies at any step of a fold or of the tier merge after
    /// it (its segment half-written, renamed but not listed, listed with its
    /// inputs or logs still there) leaves a folder that opens with every
    /// logged edit, read-only as it is and after the writable open's
    /// cleanup, which leaves nothing the list does not name; the folder then
    /// folds on.
    #[test]
    fn a_crash_at_any_step_of_a_fold_or_merge_loses_nothing() {
        let points =
            ["fold-written", "fold-renamed", "fold-listed", "merge-written", "merge-renamed", "merge-listed", "none"];
        for point in points {
            let dir = temp(&format!("crash-{point}"));
            tiny_catalog().save(&dir).unwrap();
            let (mut cat, mut log, mut wd, _) = open_writable(&dir).unwrap();
            let mut reference = cat.clone();
            let mut edits = Edits::new(7, &cat);
            // three folds of tier 0 (under FANOUT entries each), then the
            // edits of a fourth in the log: folding it merges the four
            for f in 0..4 {
                for _ in 0..2 {
                    if let Some(rec) = edits.next(&mut cat) {
                        reference.apply(&rec).unwrap();
                        let end = log.append(std::slice::from_ref(&rec)).unwrap();
                        log.sync_to(end).unwrap();
                    }
                }
                if f < 3 {
                    log = wd.rotate().unwrap().0;
                    wd.fold(&cat).unwrap();
                }
            }
            assert_eq!(wd.segments().list().len(), 3);
            drop((log, wd));
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "catalog::segments::tests::crash_child", "--ignored", "--test-threads=1"])
                .env("GENREC_CRASH_DIR", &dir)
                .env("GENREC_CRASH_AT", point)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            let want = if point == "none" { 0 } else { 86 };
            assert_eq!(status.code(), Some(want), "{point}: the child did not stop where it was told");
            let (ro, _) = open_read_only(&dir).unwrap();
            assert_eq!(state(&ro), state(&reference), "{point}: read-only open");
            let (again, _log, mut wd, report) = open_writable(&dir).unwrap();
            assert_eq!(state(&again), state(&reference), "{point}: writable open");
            for e in std::fs::read_dir(&dir).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.contains(".tmp"), "{point}: {name} left");
                if name.starts_with("s-") {
                    assert!(report.segments.iter().any(|s| s.name == name), "{point}: {name} is not listed");
                }
            }
            let _next = wd.rotate().unwrap();
            wd.fold(&again).unwrap();
            drop(wd);
            let (last, _) = open_read_only(&dir).unwrap();
            assert_eq!(state(&last), state(&reference), "{point}: after one more fold");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// A reader opening the folder while its writer logs edits and folds
    /// them (deleting the logs it folded, merging segments) always gets the
    /// catalog as it was after some edit, never one with a log missed.
    #[test]
    fn a_reader_racing_folds_sees_whole_states() {
        let dir = temp("race");
        tiny_catalog().save(&dir).unwrap();
        let (mut cat, mut log, mut wd, _) = open_writable(&dir).unwrap();
        // every edit and the state after it, made beforehand
        let mut reference = cat.clone();
        let mut edits = Edits::new(11, &cat);
        let mut records = Vec::new();
        let mut states = std::collections::HashMap::new();
        states.insert(reference.last_edit_id(), state(&reference));
        let mut scratch = cat.clone();
        while records.len() < 300 {
            if let Some(rec) = edits.next(&mut scratch) {
                reference.apply(&rec).unwrap();
                states.insert(rec.edit_id, state(&reference));
                records.push(rec);
            }
        }
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (dir, done) = (dir.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let (c, _) = open_read_only(&dir).unwrap();
                    let want = &states[&c.last_edit_id()];
                    assert_eq!(&state(&c), want, "a read at edit {}", c.last_edit_id());
                    reads += 1;
                }
                reads
            })
        };
        for chunk in records.chunks(3) {
            for rec in chunk {
                cat.apply(rec).unwrap();
                let end = log.append(std::slice::from_ref(rec)).unwrap();
                log.sync_to(end).unwrap();
            }
            log = wd.rotate().unwrap().0;
            wd.fold(&cat).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let reads = reader.join().unwrap();
        assert!(reads >= 5, "the reader read {reads} times only");
        let again = crate::catalog::dir::READ_AGAIN.load(std::sync::atomic::Ordering::Relaxed);
        assert!(again > 0, "no read raced a fold: the test showed nothing");
        drop((log, wd));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
