//! One segment of a catalog version: the state, at one moment, of every item
//! that live edits changed since the segment before it, as flat arrays in a
//! folder of its own. A version on disk is its base plus a list of segments
//! ([`super::segments`]) plus the edit log after them, the way an LSM tree
//! (O'Neil et al. 1996, "The Log-Structured Merge-Tree") keeps a large sorted
//! run and smaller newer ones: folding the log writes one small segment
//! instead of the whole catalog, and segments merge with each other in tiers.
//!
//! | file | contents |
//! |---|---|
//! | `segment.json` | [`SegmentManifest`], written last (a folder with it is complete) |
//! | `rows.u32` | the item indices, ascending |
//! | `flags.u8` | bit 0: served; bit 1: the entry carries the item's data (else the base row's) |
//! | `ids.*`, `titles.*` | the items' ids and titles (empty without data) |
//! | `sids.u32` | semantic IDs `[entries × levels]` (zeros without data) |
//! | `embeddings.f32` | unit-norm embeddings `[entries × dim]`, f32 as the edits gave them |
//! | `expiry.u64` | expiry in ms since the epoch (`u64::MAX`: none) |
//!
//! Reading a segment at open restores each entry's state into the catalog's
//! overlay ([`Catalog::restore_segment`]): the same view as replaying the
//! edits it folded, without their JSON, their checksums or a codebook search.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::array::{write_array, Array};
use super::format::sync_dir;
use super::overlay::OverlayItem;
use super::strings::{StringTable, StringsBuilder};
use super::{Catalog, CatalogError};

pub const SEGMENT_FORMAT: &str = "genrec-segment/1";
pub const SEGMENT_MANIFEST: &str = "segment.json";

const SERVED: u8 = 1;
const HAS_DATA: u8 = 2;
const NO_EXPIRY: u64 = u64::MAX;

/// A segment's JSON manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentManifest {
    pub format: String,
    /// The version whose base it lies on.
    pub base_version: u64,
    pub entries: usize,
    pub levels: usize,
    pub dim: usize,
    /// The edit logs it holds the outcome of, `first_log..=last_log`.
    pub first_log: u64,
    pub last_log: u64,
    /// Id of the last edit it contains.
    pub last_edit_id: u64,
    /// The latest time expired items had been taken out of the trie at.
    pub swept_to: u64,
    /// Item indices in use after it (the base's rows and the items added).
    pub rows: u32,
}

/// An item's data as a segment holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryData<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub sid: &'a [u32],
    pub embedding: &'a [f32],
    pub expires_at_ms: Option<u64>,
}

/// One item's state: served or not, and its data (none: the base row's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry<'a> {
    pub row: u32,
    pub served: bool,
    pub data: Option<EntryData<'a>>,
}

impl<'a> EntryData<'a> {
    fn of(it: &'a OverlayItem) -> Self {
        EntryData {
            id: &it.id,
            title: &it.title,
            sid: &it.sid,
            embedding: &it.embedding,
            expires_at_ms: it.expires_at_ms,
        }
    }
}

/// A segment folder, memory-mapped.
#[derive(Debug)]
pub struct Segment {
    pub manifest: SegmentManifest,
    rows: Array<u32>,
    flags: Array<u8>,
    ids: StringTable,
    titles: StringTable,
    sids: Array<u32>,
    embeddings: Array<f32>,
    expiry: Array<u64>,
}

impl Segment {
    /// Maps the segment in `dir`, checking its arrays against its manifest.
    pub fn open(dir: &Path) -> Result<Self, CatalogError> {
        let p = dir.join(SEGMENT_MANIFEST);
        let bytes = std::fs::read(&p).map_err(|e| CatalogError::io(&p, e))?;
        let m: SegmentManifest =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
        if m.format != SEGMENT_FORMAT {
            return Err(CatalogError::Format(format!(
                "{}: format {:?}, expected {SEGMENT_FORMAT:?}",
                p.display(),
                m.format
            )));
        }
        let n = m.entries;
        let seg = Segment {
            rows: Array::map(&dir.join("rows.u32"), n)?,
            flags: Array::map(&dir.join("flags.u8"), n)?,
            ids: StringTable::map(dir, "ids", n)?,
            titles: StringTable::map(dir, "titles", n)?,
            sids: Array::map(&dir.join("sids.u32"), n * m.levels)?,
            embeddings: Array::map(&dir.join("embeddings.f32"), n * m.dim)?,
            expiry: Array::map(&dir.join("expiry.u64"), n)?,
            manifest: m,
        };
        if seg.rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err(CatalogError::Format(format!("{}: rows must be ascending", dir.display())));
        }
        Ok(seg)
    }

    pub fn len(&self) -> usize {
        self.manifest.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i` (in row order).
    pub fn entry(&self, i: usize) -> Entry<'_> {
        let (l, d) = (self.manifest.levels, self.manifest.dim);
        let f = self.flags[i];
        let data = (f & HAS_DATA != 0).then(|| EntryData {
            id: self.ids.get(i),
            title: self.titles.get(i),
            sid: &self.sids[i * l..(i + 1) * l],
            embedding: &self.embeddings[i * d..(i + 1) * d],
            expires_at_ms: Some(self.expiry[i]).filter(|&e| e != NO_EXPIRY),
        });
        Entry { row: self.rows[i], served: f & SERVED != 0, data }
    }

    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        (0..self.len()).map(|i| self.entry(i))
    }
}

/// Writes a segment of `entries` (ascending rows) into the empty folder
/// `dir`: every array synced, the manifest last, the folder synced.
/// `manifest.entries` is set from what was written.
pub fn write<'a>(
    dir: &Path,
    mut manifest: SegmentManifest,
    entries: impl Iterator<Item = Entry<'a>>,
) -> Result<SegmentManifest, CatalogError> {
    let (l, d) = (manifest.levels, manifest.dim);
    let (mut rows, mut flags, mut sids, mut emb, mut expiry) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ids, mut titles) = (StringsBuilder::default(), StringsBuilder::default());
    for e in entries {
        if rows.last().is_some_and(|&r| r >= e.row) {
            return Err(CatalogError::Format(format!("segment rows must be ascending (row {})", e.row)));
        }
        rows.push(e.row);
        flags.push(if e.served { SERVED } else { 0 } | if e.data.is_some() { HAS_DATA } else { 0 });
        match e.data {
            Some(x) => {
                if x.sid.len() != l || x.embedding.len() != d {
                    return Err(CatalogError::Format(format!(
                        "segment: item {:?} has {} codes and {} values, expected {l} and {d}",
                        x.id,
                        x.sid.len(),
                        x.embedding.len()
                    )));
                }
                ids.push(x.id);
                titles.push(x.title);
                sids.extend_from_slice(x.sid);
                emb.extend_from_slice(x.embedding);
                expiry.push(x.expires_at_ms.unwrap_or(NO_EXPIRY));
            }
            None => {
                ids.push("");
                titles.push("");
                sids.extend(std::iter::repeat_n(0, l));
                emb.extend(std::iter::repeat_n(0.0, d));
                expiry.push(NO_EXPIRY);
            }
        }
    }
    manifest.entries = rows.len();
    manifest.format = SEGMENT_FORMAT.into();
    write_array(&dir.join("rows.u32"), &rows)?;
    write_array(&dir.join("flags.u8"), &flags)?;
    ids.finish().write(dir, "ids")?;
    titles.finish().write(dir, "titles")?;
    write_array(&dir.join("sids.u32"), &sids)?;
    write_array(&dir.join("embeddings.f32"), &emb)?;
    write_array(&dir.join("expiry.u64"), &expiry)?;
    let p = dir.join(SEGMENT_MANIFEST);
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| CatalogError::Json { path: p.clone(), source: e })?;
    super::format::write_file(&p, &bytes)?;
    sync_dir(dir)?;
    Ok(manifest)
}

/// The entries of a view's overlay changed after `mark` (an earlier
/// [`super::Overlay::seq`]), in row order: what a fold writes.
pub fn changed_entries(view: &Catalog, mark: u64) -> Vec<Entry<'_>> {
    view.overlay()
        .changed_since(mark)
        .into_iter()
        .map(|(row, st)| Entry { row, served: st.served, data: st.item.as_deref().map(EntryData::of) })
        .collect()
}

/// The entries of `segments` (oldest first) merged: for each row, its entry
/// in the newest segment that has one.
pub fn merged_entries(segments: &[Segment]) -> Vec<Entry<'_>> {
    let mut newest: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    for (s, seg) in segments.iter().enumerate() {
        for i in 0..seg.len() {
            newest.insert(seg.rows[i], (s, i));
        }
    }
    newest.into_values().map(|(s, i)| segments[s].entry(i)).collect()
}

impl Catalog {
    /// Restores every state a segment holds into this view's overlay, as
    /// replaying the edits it folded would: first the leaves of the items it
    /// touches that are served now leave the trie, then each entry's state
    /// is set (so an ID one item gave up and another took is never taken
    /// twice in between).
    pub fn restore_segment(&mut self, seg: &Segment) -> Result<(), CatalogError> {
        let m = &seg.manifest;
        if m.levels != self.levels() || m.dim != self.manifest().embedding_dim {
            return Err(CatalogError::Format(format!(
                "segment of {} levels and dimension {} on a catalog of {} and {}",
                m.levels,
                m.dim,
                self.levels(),
                self.manifest().embedding_dim
            )));
        }
        for e in seg.entries() {
            if (e.row as usize) < self.len() && self.is_served(e.row) {
                let (sid, expiry) = (self.sid(e.row).to_vec(), self.expires_at(e.row));
                self.delta.unserve(&self.base, e.row, &sid, expiry)?;
            }
        }
        for e in seg.entries() {
            let (sid, expiry): (Vec<u32>, Option<u64>) = match e.data {
                Some(x) => (x.sid.to_vec(), x.expires_at_ms),
                None if (e.row as usize) < self.base.rows() => {
                    (self.base.sid(e.row).to_vec(), self.base.expiry.get(e.row))
                }
                None => {
                    return Err(CatalogError::Format(format!("segment: item {} has no data and no base row", e.row)))
                }
            };
            let data = e.data.map(|x| OverlayItem {
                id: Arc::from(x.id),
                title: x.title.to_string(),
                sid: x.sid.to_vec(),
                embedding: x.embedding.to_vec(),
                ann_key: 0,
                expires_at_ms: x.expires_at_ms,
            });
            self.delta.restore(&self.base, e.row, e.served, data, &sid, expiry)?;
        }
        self.delta.set_last_edit(m.last_edit_id);
        self.delta.set_swept_to(m.swept_to);
        if self.len() != m.rows as usize {
            return Err(CatalogError::Format(format!(
                "segment ends at {} items but the catalog has {} after it",
                m.rows,
                self.len()
            )));
        }
        Ok(())
    }
}
