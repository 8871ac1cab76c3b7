//! Live edits above an immutable base: the items added or changed since the
//! base was written, the items removed, and a patch of the trie
//! ([`super::trie_patch`]). Every part is a persistent map (`imbl`): cloning
//! the overlay is O(1) and an edit changes O(levels) entries, so a live edit
//! builds a new catalog view in microseconds without copying the catalog, and
//! a request keeps the view it started with.

use std::sync::Arc;

use super::base::Base;
use super::expiry::ExpiryIndex;
use super::trie_patch::TriePatch;
use super::CatalogError;

/// The current data of an item added or changed since the base.
#[derive(Debug)]
pub struct OverlayItem {
    pub id: Arc<str>,
    pub title: String,
    pub sid: Vec<u32>,
    /// Unit norm, the catalog's dimension.
    pub embedding: Vec<f32>,
    /// Key of this vector in the ANN index's overlay part.
    pub ann_key: u64,
    /// When the item stops being served, ms since the epoch ([`super::expiry`]).
    pub expires_at_ms: Option<u64>,
}

/// An item's state in the overlay: its data (none: the base row's) and
/// whether it is served.
#[derive(Debug, Clone)]
pub struct ItemState {
    pub item: Option<Arc<OverlayItem>>,
    pub served: bool,
    /// The overlay's change counter when this state was set ([`Overlay::seq`]):
    /// a fold writes the states changed since the one before
    /// ([`super::segment`]).
    pub changed: u64,
}

/// The live edits above a base (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    entries: imbl::HashMap<u32, ItemState>,
    /// Ids of items beyond the base.
    ids: imbl::HashMap<Arc<str>, u32>,
    /// Item indices in use: the base's rows, then the items added.
    rows: u32,
    /// Items served.
    served: usize,
    trie: TriePatch,
    /// Served items with a lifetime, by expiry (base rows included).
    expiring: ExpiryIndex,
    /// Generation of the last ANN key handed out (keys of base rows are the
    /// row itself: generation 0).
    ann_gen: u32,
    last_edit: u64,
    /// The latest time expired items were taken out of the trie at.
    swept_to: u64,
    /// Changes made so far (each put, drop or restore counts one).
    seq: u64,
}

impl Overlay {
    /// No edits over `base`.
    pub fn new(base: &Base) -> Self {
        let mut expiring = ExpiryIndex::default();
        for (row, ms) in base.expiry.iter() {
            expiring.insert(ms, row);
        }
        Overlay { rows: base.rows() as u32, served: base.rows() - base.removed.len(), expiring, ..Default::default() }
    }

    /// The served items with a lifetime, by expiry.
    pub fn expiring(&self) -> &ExpiryIndex {
        &self.expiring
    }

    pub fn rows(&self) -> u32 {
        self.rows
    }

    pub fn served(&self) -> usize {
        self.served
    }

    pub fn entry(&self, item: u32) -> Option<&ItemState> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries.get(&item)
    }

    /// The overlay's data of an item, if it has any.
    pub fn item(&self, item: u32) -> Option<&Arc<OverlayItem>> {
        self.entry(item).and_then(|e| e.item.as_ref())
    }

    /// Index of an item added since the base.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        if self.ids.is_empty() {
            return None;
        }
        self.ids.get(id).copied()
    }

    pub fn trie(&self) -> &TriePatch {
        &self.trie
    }

    pub fn last_edit(&self) -> u64 {
        self.last_edit
    }

    /// Items added or changed since the base (what a compaction folds in).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every item the overlay holds data for, with its data.
    pub fn items(&self) -> impl Iterator<Item = (u32, &ItemState)> {
        self.entries.iter().map(|(&k, v)| (k, v))
    }

    /// Serves `data` as item `item` (a new index is `rows()`), whose semantic
    /// ID was checked free. `was_served`: the item was served before (and its
    /// old leaf is gone from the trie already), with expiry `old_expiry`.
    pub(super) fn put(
        &mut self,
        base: &Base,
        item: u32,
        mut data: OverlayItem,
        was_served: bool,
        old_expiry: Option<u64>,
    ) -> Result<u64, CatalogError> {
        let gen = self.ann_gen.checked_add(1).ok_or_else(|| {
            CatalogError::Conflict("4 billion edits since the last compaction: compact the catalog".into())
        })?;
        self.trie.insert(&base.trie, &data.sid, item)?;
        self.ann_gen = gen;
        data.ann_key = ((self.ann_gen as u64) << 32) | item as u64;
        let key = data.ann_key;
        if item == self.rows {
            self.ids.insert(data.id.clone(), item);
            self.rows += 1;
        }
        if let Some(ms) = old_expiry.filter(|_| was_served) {
            self.expiring.remove(ms, item);
        }
        if let Some(ms) = data.expires_at_ms {
            self.expiring.insert(ms, item);
        }
        self.seq += 1;
        self.entries.insert(item, ItemState { item: Some(Arc::new(data)), served: true, changed: self.seq });
        if !was_served {
            self.served += 1;
        }
        Ok(key)
    }

    /// Stops serving `item`, which expires at `expiry` (its leaf is removed here).
    pub(super) fn drop_item(
        &mut self,
        base: &Base,
        item: u32,
        sid: &[u32],
        expiry: Option<u64>,
    ) -> Result<(), CatalogError> {
        self.unserve(base, item, sid, expiry)?;
        let data = self.entries.get(&item).and_then(|e| e.item.clone());
        self.seq += 1;
        self.entries.insert(item, ItemState { item: data, served: false, changed: self.seq });
        Ok(())
    }

    /// Changes made so far: states with `changed` above a mark taken earlier
    /// were set after it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The items whose state changed after `mark` (an earlier [`Overlay::seq`]),
    /// by index.
    pub fn changed_since(&self, mark: u64) -> Vec<(u32, &ItemState)> {
        let mut v: Vec<(u32, &ItemState)> =
            self.entries.iter().filter(|(_, e)| e.changed > mark).map(|(&k, e)| (k, e)).collect();
        v.sort_unstable_by_key(|e| e.0);
        v
    }

    /// Takes a served item's leaf (at `sid`) and expiry out, and counts it
    /// as not served; its state is set by the caller ([`Overlay::drop_item`],
    /// or [`Overlay::restore`] of a segment's state at open).
    pub(super) fn unserve(
        &mut self,
        base: &Base,
        item: u32,
        sid: &[u32],
        expiry: Option<u64>,
    ) -> Result<(), CatalogError> {
        self.trie.remove(&base.trie, sid, item)?;
        if let Some(ms) = expiry {
            self.expiring.remove(ms, item);
        }
        self.served -= 1;
        Ok(())
    }

    /// Sets an item's state as a segment recorded it (after
    /// [`Overlay::unserve`] if it was served): `sid` and `expiry` are the
    /// state's (its data's, or the base row's). A new index must be `rows()`.
    pub(super) fn restore(
        &mut self,
        base: &Base,
        item: u32,
        served: bool,
        data: Option<OverlayItem>,
        sid: &[u32],
        expiry: Option<u64>,
    ) -> Result<(), CatalogError> {
        if item > self.rows || (item == self.rows && data.is_none()) {
            return Err(CatalogError::Format(format!(
                "segment: item {item} is past the {} items in use, or new without data",
                self.rows
            )));
        }
        if served {
            self.trie.insert(&base.trie, sid, item)?;
            if let Some(ms) = expiry {
                self.expiring.insert(ms, item);
            }
            self.served += 1;
        }
        let data = match data {
            Some(mut d) => {
                self.ann_gen = self.ann_gen.checked_add(1).ok_or_else(|| {
                    CatalogError::Conflict("4 billion edits since the last compaction: compact the catalog".into())
                })?;
                d.ann_key = ((self.ann_gen as u64) << 32) | item as u64;
                if item == self.rows {
                    self.ids.insert(d.id.clone(), item);
                    self.rows += 1;
                }
                Some(Arc::new(d))
            }
            None => None,
        };
        self.seq += 1;
        self.entries.insert(item, ItemState { item: data, served, changed: self.seq });
        Ok(())
    }

    /// Takes an item's leaf out of the trie ahead of a [`Overlay::put`] that
    /// replaces it.
    pub(super) fn unlink(&mut self, base: &Base, item: u32, sid: &[u32]) -> Result<(), CatalogError> {
        self.trie.remove(&base.trie, sid, item)
    }

    /// The latest time expired items were taken out of the trie at.
    pub fn swept_to(&self) -> u64 {
        self.swept_to
    }

    pub(super) fn set_swept_to(&mut self, ms: u64) {
        self.swept_to = self.swept_to.max(ms);
    }

    pub(super) fn set_last_edit(&mut self, id: u64) {
        self.last_edit = self.last_edit.max(id);
    }
}
