//! Live catalog edits (`POST /admin/items`, `DELETE /admin/items/{id}`, the
//! edit log's replay): upsert and delete on a [`Catalog`] view, each in
//! O(levels) through its overlay.
//!
//! A new item's semantic ID comes from the catalog's own codebooks (residual
//! nearest-centroid codes) plus the lowest collision code that no served item
//! uses under that prefix, read from the trie node's children. Where the
//! nearest codes' subtrees are full, each level takes its nearest code whose
//! subtree still has room (its item count below what the levels under it can
//! hold), the rule `genrec index` assigns codes by (`assign::assign_all`).
//! A subtree with room always has a free slot below it, so an upsert finds
//! an ID whenever the catalog has one, and the same view and embedding give
//! the same ID on every replica. Removed items keep their index. The
//! manifest (codebooks, fingerprint) never changes: models trained on the
//! indexed catalog stay valid for the edited one.
//!
//! [`EditRecord`] is what the edit log stores: self-describing JSON, the full
//! resulting state of an item (its semantic ID included), with an edit id, so
//! that applying a record twice changes nothing the second time.

use serde::{Deserialize, Serialize};

use super::overlay::OverlayItem;
use super::{Catalog, CatalogError};

/// Longest item id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest item title, in bytes.
pub const MAX_TITLE_BYTES: usize = 4096;

/// One edit as the log (and later a replica feed) carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRecord {
    /// Strictly increasing within a catalog folder.
    pub edit_id: u64,
    /// When the edit was accepted, ms since the Unix epoch.
    #[serde(default)]
    pub ts_ms: u64,
    #[serde(flatten)]
    pub op: EditOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum EditOp {
    /// Serve the item with exactly this data (insert, or replace), until
    /// `expires_at_ms` if given ([`super::expiry`]).
    Upsert {
        id: String,
        title: String,
        semantic_id: Vec<u32>,
        embedding: Vec<f32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// Stop serving the item (nothing to do when it is not served).
    Delete { id: String },
}

/// An item to serve.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub id: String,
    pub title: String,
    /// The catalog's dimension; normalised here.
    pub embedding: Vec<f32>,
    /// A semantic ID computed elsewhere; `None`: from the codebooks.
    pub semantic_id: Option<Vec<u32>>,
    /// When it stops being served, ms since the epoch; `None`: never.
    pub expires_at_ms: Option<u64>,
}

/// How far from its nearest codes a new item's semantic ID landed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Placement {
    /// The first k-means level (0-based) whose code is not the item's
    /// nearest, because the subtree under the nearest was full; absent: the
    /// item is on its nearest codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_at_level: Option<usize>,
    /// Squared distance from the (unit) embedding to the sum of its codes'
    /// centroids.
    pub distance: f32,
    /// The same for its nearest codes (level by level): `distance` minus
    /// this is what a full region cost the item.
    pub nearest_distance: f32,
}

/// Where an upsert placed its item: row, semantic ID, ANN key, the stored
/// (normalised) embedding, and whether it replaced a served item.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub item: u32,
    pub semantic_id: Vec<u32>,
    /// For an ID from the codebooks (not a given one): how near it is.
    pub placement: Option<Placement>,
    /// The item's vector key for the ANN index.
    pub ann_key: u64,
    /// The normalised embedding.
    pub embedding: Vec<f32>,
    /// The item was served before (and was replaced).
    pub replaced: bool,
}

/// Squared distance, in eight lanes (so that the compiler vectorises it).
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (x - y) * (x - y)).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            acc[k] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Squared distance from `x` to every row of `book` (`[k × dim]`).
fn distances(x: &[f32], book: &[f32], dim: usize) -> Vec<f32> {
    book.chunks_exact(dim).map(|row| sq_dist(row, x)).collect()
}

/// The nearest row (ties: the lower code).
fn argmin(d: &[f32]) -> u32 {
    let mut best = 0;
    for (c, v) in d.iter().enumerate() {
        if v.total_cmp(&d[best]).is_lt() {
            best = c;
        }
    }
    best as u32
}

/// Every code by distance, nearest first (ties: the lower code).
fn ranked(d: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..d.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| d[a as usize].total_cmp(&d[b as usize]).then(a.cmp(&b)));
    order
}

/// Checks an item's id and title for a live edit.
pub fn check_item_text(id: &str, title: &str) -> Result<(), (&'static str, String)> {
    if id.trim().is_empty() {
        return Err(("id", "id must not be empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(("id", format!("id is {} bytes, at most {MAX_ID_BYTES}", id.len())));
    }
    if id.chars().any(char::is_control) {
        return Err(("id", "id must not contain control characters".into()));
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(("title", format!("title is {} bytes, at most {MAX_TITLE_BYTES}", title.len())));
    }
    Ok(())
}

/// The embedding normalised to unit length, after checking it. A vector of
/// unit length to rounding (its norm, summed in f64, within a few f32 ulps
/// of 1) is kept as it is, so that normalising again (a logged edit
/// replayed, a segment's state) gives the same bits.
pub fn normalised(embedding: &[f32], dim: usize) -> Result<Vec<f32>, CatalogError> {
    if embedding.len() != dim {
        return Err(CatalogError::Format(format!("embedding has {} values, the catalog {dim}", embedding.len())));
    }
    let norm = embedding.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return Err(CatalogError::Format("embedding must be finite and non-zero".into()));
    }
    if (norm - 1.0).abs() <= 4.0 * f32::EPSILON as f64 {
        return Ok(embedding.to_vec());
    }
    // (in f64: the norm of values near f32's limit is no f32)
    Ok(embedding.iter().map(|&x| (x as f64 / norm) as f32).collect())
}

impl Catalog {
    /// Semantic ID for a unit-norm embedding: at each k-means level the
    /// nearest code whose subtree has room, then the lowest collision code
    /// no served item uses under them (see the module comment); with how far
    /// that is from the nearest codes. Fails (409) only when the catalog has
    /// no free semantic ID at all.
    pub fn semantic_id_for(&self, embedding: &[f32]) -> Result<(Vec<u32>, Placement), CatalogError> {
        let dim = self.manifest().embedding_dim;
        let levels = self.levels();
        if embedding.len() != dim {
            return Err(CatalogError::Format(format!("embedding has {} values, the catalog {dim}", embedding.len())));
        }
        let books = self.codebooks();
        if books.is_empty() || books.len() + 1 != levels {
            return Err(CatalogError::Format(
                "the catalog has no codebooks (its semantic IDs were imported): give the item's semantic_id".into(),
            ));
        }
        let mut sid = Vec::with_capacity(levels);
        let mut ranks = Vec::with_capacity(levels);
        let Some(distance) = self.place_codes(embedding, &mut sid, &mut ranks) else {
            let sizes = &self.manifest().codebook_sizes;
            return Err(CatalogError::Conflict(format!(
                "the catalog is full: every semantic ID of its {} levels ({sizes:?}) is taken; re-index it with more levels or codes",
                sizes.len()
            )));
        };
        // moved: the first level whose code is not the nearest under the
        // codes above it (those above are the nearest ones, so this is where
        // the path leaves the nearest codes). Moved at the last level, the
        // nearest path's distance is that level's nearest; moved higher, the
        // nearest path is walked for it
        let moved_at_level = ranks.iter().position(|&(r, _)| r > 0);
        let nearest_distance = match moved_at_level {
            None => distance,
            Some(l) if l + 1 == books.len() => ranks[l].1,
            Some(_) => {
                let mut r = embedding.to_vec();
                let mut d = 0.0;
                for book in books {
                    let dist = distances(&r, book, dim);
                    let near = argmin(&dist) as usize;
                    d = dist[near];
                    r.iter_mut().zip(&book[near * dim..(near + 1) * dim]).for_each(|(x, c)| *x -= c);
                }
                d
            }
        };
        Ok((sid, Placement { moved_at_level, distance, nearest_distance }))
    }

    /// Completes `sid` level by level: the nearest code of the next level
    /// whose subtree has room (nearest first, full subtrees skipped), down to
    /// a free collision code; `ranks` gets each chosen code's rank by
    /// distance and the nearest code's distance at its level. Returns the squared distance left (embedding to the sum of
    /// the codes' centroids), or `None`, `sid` as it was, when nothing under
    /// `sid` has room.
    fn place_codes(&self, residual: &[f32], sid: &mut Vec<u32>, ranks: &mut Vec<(usize, f32)>) -> Option<f32> {
        let books = self.codebooks();
        let sizes = &self.manifest().codebook_sizes;
        let dim = self.manifest().embedding_dim;
        let level = sid.len();
        let last = level + 1 == books.len();
        let trie = self.trie();
        let d = distances(residual, &books[level], dim);
        let first = argmin(&d);
        // leaves a prefix after this level can hold
        let room: i64 = sizes[level + 1..].iter().fold(1i64, |a, &s| a.saturating_mul(s as i64));
        let mut rest: Option<Vec<u32>> = None;
        for k in 0..d.len() {
            let code = if k == 0 {
                first
            } else {
                let r = rest.get_or_insert_with(|| ranked(&d).into_iter().filter(|&c| c != first).collect());
                r[k - 1]
            };
            sid.push(code);
            ranks.push((k, d[first as usize]));
            let node = trie.walk(sid);
            if last {
                if let Some(free) = trie.free_code(node, sizes[level + 1]) {
                    sid.push(free);
                    return Some(d[code as usize]);
                }
            } else if node.is_none_or(|n| trie.count(n) < room) {
                // (a subtree with room has a free slot: this returns Some)
                let c = &books[level][code as usize * dim..(code as usize + 1) * dim];
                let next: Vec<f32> = residual.iter().zip(c).map(|(r, x)| r - x).collect();
                if let Some(left) = self.place_codes(&next, sid, ranks) {
                    return Some(left);
                }
            }
            sid.pop();
            ranks.pop();
        }
        None
    }

    /// The semantic ID an upsert gets: the given one (checked: in range and
    /// not taken), a given prefix (every code but the collision code) with
    /// the lowest free collision code under it, or one from the codebooks.
    fn choose_sid(
        &self,
        given: Option<Vec<u32>>,
        embedding: &[f32],
    ) -> Result<(Vec<u32>, Option<Placement>), CatalogError> {
        let sizes = &self.manifest().codebook_sizes;
        let Some(mut sid) = given else {
            return self.semantic_id_for(embedding).map(|(sid, at)| (sid, Some(at)));
        };
        let levels = sizes.len();
        if (sid.len() != levels && sid.len() + 1 != levels) || sid.iter().zip(sizes).any(|(&c, &s)| c >= s) {
            return Err(CatalogError::Format(format!(
                "semantic_id {sid:?} must have {levels} codes (or {} without the collision code) within codebook sizes {sizes:?}",
                levels - 1
            )));
        }
        let trie = self.trie();
        if sid.len() + 1 == levels {
            let free = trie.free_code(trie.walk(&sid), sizes[levels - 1]).ok_or_else(|| {
                CatalogError::Conflict(format!(
                    "all {} collision codes under semantic_id prefix {sid:?} are taken",
                    sizes[levels - 1]
                ))
            })?;
            sid.push(free);
        } else if let Some(other) = trie.lookup(&sid) {
            return Err(CatalogError::Conflict(format!(
                "semantic_id {sid:?} is taken by item {:?}",
                self.item_id(other)
            )));
        }
        Ok((sid, None))
    }

    /// Serves `item`: a new item, or a new state of an existing one. `self`
    /// is unchanged when it fails.
    pub fn upsert(&mut self, item: NewItem, edit_id: u64) -> Result<Placed, CatalogError> {
        check_item_text(&item.id, &item.title).map_err(|(_, m)| CatalogError::Format(m))?;
        let embedding = normalised(&item.embedding, self.manifest().embedding_dim)?;
        let existing = self.index_of(&item.id);
        let replaced = existing.is_some_and(|i| self.is_served(i));
        if !replaced {
            // every check comes before the one change, so nothing to undo
            let sid = self.choose_sid(item.semantic_id.clone(), &embedding)?;
            return self.place(item, sid, embedding, existing, None, edit_id);
        }
        // a served item frees its own ID first (it may keep it): undo on failure
        let saved = self.delta.clone();
        let r = (|| {
            let i = existing.unwrap_or(0);
            let old = self.sid(i).to_vec();
            let old_expiry = self.expires_at(i);
            self.delta.unlink(&self.base, i, &old)?;
            let sid = self.choose_sid(item.semantic_id.clone(), &embedding)?;
            self.place(item, sid, embedding, existing, Some(old_expiry), edit_id)
        })();
        if r.is_err() {
            self.delta = saved;
        }
        r
    }

    /// Puts `item` at its index (a new one for a new id) with its chosen ID;
    /// `replacing`: it was served, with this expiry.
    fn place(
        &mut self,
        item: NewItem,
        (sid, placement): (Vec<u32>, Option<Placement>),
        embedding: Vec<f32>,
        existing: Option<u32>,
        replacing: Option<Option<u64>>,
        edit_id: u64,
    ) -> Result<Placed, CatalogError> {
        let index = existing.unwrap_or(self.delta.rows());
        let data = OverlayItem {
            id: item.id.as_str().into(),
            title: item.title,
            sid: sid.clone(),
            embedding: embedding.clone(),
            ann_key: 0,
            expires_at_ms: item.expires_at_ms,
        };
        let replaced = replacing.is_some();
        let ann_key = self.delta.put(&self.base, index, data, replaced, replacing.flatten())?;
        self.delta.set_last_edit(edit_id);
        Ok(Placed { item: index, semantic_id: sid, placement, ann_key, embedding, replaced })
    }

    /// Stops serving item `id`; returns its index.
    pub fn remove(&mut self, id: &str, edit_id: u64) -> Result<u32, CatalogError> {
        let item = self
            .index_of(id)
            .filter(|&i| self.is_served(i))
            .ok_or_else(|| CatalogError::NotFound(format!("item {id:?} is not in the catalog")))?;
        let sid = self.sid(item).to_vec();
        if self.trie().lookup(&sid) != Some(item) {
            return Err(CatalogError::Format(format!("item {id:?} is not in the trie at {sid:?}")));
        }
        let expiry = self.expires_at(item);
        self.delta.drop_item(&self.base, item, &sid, expiry)?;
        self.delta.set_last_edit(edit_id);
        Ok(item)
    }

    /// Takes every served item whose expiry is at or before `ts_ms` out of
    /// the trie, as a delete would (see [`super::expiry`]: called before each
    /// edit record with the record's time). Returns how many.
    pub fn expire_until(&mut self, ts_ms: u64) -> usize {
        let due: Vec<(u64, u32)> = self.delta.expiring().expired_at(ts_ms).collect();
        for &(ms, item) in &due {
            let sid = self.sid(item).to_vec();
            if let Err(e) = self.delta.drop_item(&self.base, item, &sid, Some(ms)) {
                // (the index and the trie disagree: a bug; the item stays banned by its expiry)
                tracing::error!(item, error = %e, "an expired item could not be taken out of the trie");
            }
        }
        self.delta.set_swept_to(ts_ms);
        due.len()
    }

    /// Applies a logged edit. Edits this view already contains are skipped
    /// (`Ok(None)`), a delete of an item not served changes nothing: replaying
    /// a log twice gives the same catalog.
    pub fn apply(&mut self, rec: &EditRecord) -> Result<Option<Applied>, CatalogError> {
        if rec.edit_id <= self.last_edit_id() {
            return Ok(None);
        }
        self.expire_until(rec.ts_ms);
        let done = match &rec.op {
            EditOp::Upsert { id, title, semantic_id, embedding, expires_at_ms } => {
                let item = NewItem {
                    id: id.clone(),
                    title: title.clone(),
                    embedding: embedding.clone(),
                    semantic_id: Some(semantic_id.clone()),
                    expires_at_ms: *expires_at_ms,
                };
                Applied::Upserted(self.upsert(item, rec.edit_id)?)
            }
            EditOp::Delete { id } => match self.remove(id, rec.edit_id) {
                Ok(item) => Applied::Removed(item),
                Err(CatalogError::NotFound(_)) => {
                    self.delta.set_last_edit(rec.edit_id);
                    Applied::Nothing
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Some(done))
    }
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Upserted(Placed),
    Removed(u32),
    Nothing,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::tiny_catalog;

    fn new(id: &str, emb: Vec<f32>) -> NewItem {
        NewItem {
            id: id.into(),
            title: format!("title of {id}"),
            embedding: emb,
            semantic_id: None,
            expires_at_ms: None,
        }
    }

    /// Normalising a normalised vector keeps its bits, at the dimensions
    /// catalogs use: a replayed edit equals the live one exactly.
    #[test]
    fn normalising_twice_changes_no_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for dim in [3, 64, 384, 768, 1024] {
            for _ in 0..200 {
                let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-2.0..2.0)).collect();
                let once = normalised(&v, dim).unwrap();
                let twice = normalised(&once, dim).unwrap();
                assert!(once.iter().zip(&twice).all(|(a, b)| a.to_bits() == b.to_bits()), "dim {dim}");
            }
        }
        // values near f32's limit: a norm past it still normalises, to a unit vector
        let huge = normalised(&[3e38, -3e38, 1e38], 3).unwrap();
        let norm: f64 = huge.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{huge:?}");
        assert_eq!(normalised(&huge, 3).unwrap(), huge);
    }

    #[test]
    fn added_item_gets_a_fresh_id_under_its_nearest_prefix_and_removal_hides_it() {
        let mut cat = tiny_catalog();
        let l = cat.levels();
        let size = cat.manifest().codebook_sizes[l - 1] as usize;
        let group = |c: &Catalog, i: u32| {
            (0..c.len() as u32).filter(|&j| c.is_served(j) && c.sid(j)[..l - 1] == c.sid(i)[..l - 1]).count()
        };
        let twin = (0..cat.len() as u32).find(|&i| group(&cat, i) < size).expect("a prefix with room");
        let before = cat.clone();
        let up = cat.upsert(new("new", cat.embedding(twin)), 1).unwrap();
        let sid = cat.sid(up.item).to_vec();
        assert_eq!(up.item, 10);
        assert_eq!(sid, up.semantic_id);
        assert_eq!(sid[..l - 1], cat.sid(twin)[..l - 1], "same k-means codes as its twin");
        assert_ne!(sid, cat.sid(twin), "a different collision code");
        assert_eq!(cat.trie().lookup(&sid), Some(up.item));
        assert_eq!((cat.item_id(up.item), cat.title(up.item)), ("new", "title of new"));
        assert_eq!(cat.index_of("new"), Some(10));
        assert_eq!(cat.served_len(), 11);
        assert_eq!(cat.last_edit_id(), 1);
        // the view taken before is untouched
        assert_eq!(before.len(), 10);
        assert_eq!(before.index_of("new"), None);
        assert_eq!(before.trie().lookup(&sid), None);

        // an upsert of a served id replaces it (same index, new data)
        let again = cat.upsert(new("new", cat.embedding(0)), 2).unwrap();
        assert_eq!(again.item, 10);
        assert!(again.replaced);
        assert_eq!(cat.served_len(), 11);
        assert_eq!(cat.trie().lookup(&again.semantic_id), Some(10));
        if again.semantic_id != sid {
            assert_eq!(cat.trie().lookup(&sid), None, "the old ID is free again");
        }
        assert_ne!(again.ann_key, up.ann_key, "a new vector key");

        let removed = cat.remove("item-0", 3).unwrap();
        assert_eq!(removed, 0);
        assert!(!cat.is_served(0) && cat.is_served(10));
        assert_eq!(cat.trie().lookup(before.sid(0)), None);
        assert_eq!(cat.served_len(), 10);
        assert!(matches!(cat.remove("item-0", 4), Err(CatalogError::NotFound(_))));
        // served again, with new data, under its old index
        let back = cat.upsert(new("item-0", before.embedding(0)), 5).unwrap();
        assert_eq!(back.item, 0);
        assert!(cat.is_served(0));
        assert_eq!(cat.trie().lookup(cat.sid(0)), Some(0));
    }

    /// Twins of one item fill its prefix, then the other last-level codes
    /// under its first code, then other first codes: every free semantic ID
    /// is used before an upsert is refused.
    #[test]
    fn new_items_spill_to_the_next_nearest_codes_at_every_level() {
        let mut cat = tiny_catalog();
        let sizes = cat.manifest().codebook_sizes.clone();
        let capacity = sizes.iter().product::<u32>() as usize;
        let free = capacity - cat.served_len();
        let twin = cat.embedding(0);
        for k in 0..free {
            let up = cat.upsert(new(&format!("t{k}"), twin.clone()), k as u64 + 1).unwrap();
            assert_eq!(cat.trie().lookup(&up.semantic_id), Some(up.item));
        }
        let firsts: std::collections::BTreeSet<u32> = (0..cat.len() as u32).map(|i| cat.sid(i)[0]).collect();
        assert_eq!(firsts.len(), sizes[0] as usize, "every first code took twins");
        assert!(matches!(cat.upsert(new("one-too-many", twin), 999), Err(CatalogError::Conflict(_))));
    }

    /// A catalog of `n` random items quantised into `levels` k-means levels
    /// of `k` codes, groups of at most `group`: every prefix the index
    /// filled to capacity is a crowded region for new items.
    fn crowded_catalog(n: usize, levels: usize, k: usize, group: usize) -> Catalog {
        use crate::catalog::rqkmeans::{quantize, RqOptions};
        let dim = 8;
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f32 / 1000.0 - 1.0
        };
        // two tight clusters: the index fills their prefixes
        let emb: Vec<f32> = (0..n)
            .flat_map(|i| {
                let centre = if i % 3 == 0 { 1.0 } else { -1.0 };
                (0..dim).map(|_| centre + 0.05 * next()).collect::<Vec<_>>()
            })
            .collect();
        let opts = RqOptions { levels, codebook_size: k, iterations: 5, seed: 1, sample: n, max_group: group };
        let q = quantize(&emb, dim, &opts).unwrap();
        let ids: Vec<String> = (0..n).map(|i| format!("item-{i}")).collect();
        let manifest = crate::catalog::Manifest::new(
            "crowded",
            n,
            q.codebook_sizes.clone(),
            dim,
            "test",
            1,
            crate::catalog::catalog_fingerprint(&ids, &q.sids),
        );
        let titles = (0..n).map(|i| format!("title {i}")).collect();
        let mut emb = emb;
        for row in emb.chunks_mut(dim) {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        Catalog::new(manifest, ids, titles, q.sids, emb, q.codebooks).unwrap()
    }

    /// More codes per level than the old search's four: twins of one item
    /// fill the catalog to its last free semantic ID, moving aside at the
    /// deepest level first (never back down once a level is full), each
    /// one in the trie; then the catalog refuses with 409, saying it is full.
    #[test]
    fn new_items_find_every_free_id_nearest_prefixes_first() {
        for (levels, k, group) in [(2, 8, 2), (3, 6, 2)] {
            let mut cat = crowded_catalog(60, levels, k, group);
            let sizes = cat.manifest().codebook_sizes.clone();
            assert_eq!(sizes.last(), Some(&(group as u32)), "the index filled some prefixes to the group size");
            let free = sizes.iter().map(|&s| s as usize).product::<usize>() - cat.served_len();
            assert_eq!(cat.fullness().free_ids, free as u64);
            let twin = cat.embedding(0).to_vec();
            let mut last_moved = usize::MAX;
            let mut nearest = None;
            for t in 0..free {
                let up = cat.upsert(new(&format!("t{t}"), twin.clone()), t as u64 + 1).unwrap_or_else(|e| {
                    panic!("levels {levels}, k {k}: twin {t} of {free} refused: {e}");
                });
                assert_eq!(cat.trie().lookup(&up.semantic_id), Some(up.item), "the item is in the trie");
                let at = up.placement.expect("a placement for an ID from the codebooks");
                // one embedding: one nearest path, however the twin was placed
                let n = *nearest.get_or_insert(at.nearest_distance);
                assert!((at.nearest_distance - n).abs() < 1e-5, "twin {t}: {at:?}, nearest {n}");
                let moved = at.moved_at_level.unwrap_or(usize::MAX);
                assert!(moved <= last_moved, "twin {t} moved at level {moved} after {last_moved}");
                last_moved = moved;
            }
            assert_eq!(last_moved, 0, "the last twins went to other first-level codes");
            let f = cat.fullness();
            assert_eq!(f.free_ids, 0);
            assert!(f.levels.iter().all(|l| l.full == l.used && l.max_fill == 1.0), "{f:?}");
            match cat.upsert(new("one-too-many", twin), 9999) {
                Err(CatalogError::Conflict(m)) => assert!(m.contains("catalog is full"), "{m}"),
                other => panic!("a full catalog took an item: {other:?}"),
            }
        }
    }

    /// The same view and the same embeddings give the same semantic IDs (what
    /// makes replicas, which each assign IDs from the feed's requests, agree).
    #[test]
    fn placement_is_deterministic() {
        let (mut a, mut b) = (crowded_catalog(60, 3, 6, 2), crowded_catalog(60, 3, 6, 2));
        for t in 0..150u64 {
            let e = a.embedding((t % 60) as u32).to_vec();
            let (x, y) = (a.upsert(new(&format!("n{t}"), e.clone()), t + 1), b.upsert(new(&format!("n{t}"), e), t + 1));
            assert_eq!(x.unwrap().semantic_id, y.unwrap().semantic_id);
        }
    }

    /// The fill report: the densest prefix of each level, full prefixes counted.
    #[test]
    fn fullness_names_the_densest_prefixes() {
        let cat = crowded_catalog(60, 2, 8, 2);
        let f = cat.fullness();
        assert_eq!(f.levels.len(), 2);
        let last = &f.levels[1];
        assert_eq!(last.capacity, 2);
        let groups: std::collections::BTreeMap<Vec<u32>, usize> =
            (0..cat.len() as u32).fold(Default::default(), |mut m, i| {
                *m.entry(cat.sid(i)[..2].to_vec()).or_default() += 1;
                m
            });
        assert_eq!(last.used, groups.len());
        assert_eq!(last.full, groups.values().filter(|&&c| c == 2).count());
        assert_eq!(last.max_fill, 1.0);
        assert_eq!(groups[&last.densest], 2);
    }

    #[test]
    fn bad_edits_change_nothing() {
        let mut cat = tiny_catalog();
        let dim = cat.manifest().embedding_dim;
        let snapshot = cat.clone();
        assert!(cat.upsert(new("x", vec![0.0; dim]), 1).is_err(), "zero embedding");
        assert!(cat.upsert(new("x", vec![1.0; dim + 1]), 1).is_err(), "wrong dimension");
        assert!(cat.upsert(new("", vec![1.0; dim]), 1).is_err(), "empty id");
        assert!(cat.upsert(new(&"x".repeat(MAX_ID_BYTES + 1), vec![1.0; dim]), 1).is_err());
        // a semantic ID that is taken, or out of range
        let taken = NewItem { semantic_id: Some(cat.sid(3).to_vec()), ..new("y", vec![1.0; dim]) };
        assert!(matches!(cat.upsert(taken, 1), Err(CatalogError::Conflict(_))));
        let wide = NewItem { semantic_id: Some(vec![99; cat.levels()]), ..new("y", vec![1.0; dim]) };
        assert!(cat.upsert(wide, 1).is_err());
        // replacing a served item with a taken ID leaves it served where it was
        let clash = NewItem { semantic_id: Some(cat.sid(4).to_vec()), ..new("item-3", vec![1.0; dim]) };
        assert!(cat.upsert(clash, 1).is_err());
        assert_eq!(cat.trie().lookup(snapshot.sid(3)), Some(3));
        assert_eq!(cat.len(), snapshot.len());
        assert_eq!(cat.last_edit_id(), 0);
    }

    #[test]
    fn replaying_records_is_idempotent() {
        let mut cat = tiny_catalog();
        let dim = cat.manifest().embedding_dim;
        let up = cat.upsert(new("a", vec![0.5; dim]), 1).unwrap();
        let recs = vec![
            EditRecord {
                edit_id: 1,
                ts_ms: 0,
                op: EditOp::Upsert {
                    id: "a".into(),
                    title: "title of a".into(),
                    semantic_id: up.semantic_id.clone(),
                    embedding: up.embedding.clone(),
                    expires_at_ms: None,
                },
            },
            EditRecord { edit_id: 2, ts_ms: 0, op: EditOp::Delete { id: "item-2".into() } },
            EditRecord { edit_id: 3, ts_ms: 0, op: EditOp::Delete { id: "never-there".into() } },
        ];
        let mut replayed = tiny_catalog();
        for r in &recs {
            replayed.apply(r).unwrap();
        }
        let once: Vec<(u32, Vec<u32>)> = (0..replayed.len() as u32)
            .filter(|&i| replayed.is_served(i))
            .map(|i| (i, replayed.sid(i).to_vec()))
            .collect();
        for r in &recs {
            assert_eq!(replayed.apply(r).unwrap(), None, "already applied");
        }
        let twice: Vec<(u32, Vec<u32>)> = (0..replayed.len() as u32)
            .filter(|&i| replayed.is_served(i))
            .map(|i| (i, replayed.sid(i).to_vec()))
            .collect();
        assert_eq!(once, twice);
        assert_eq!(replayed.last_edit_id(), 3);
        assert_eq!(replayed.trie().lookup(&up.semantic_id), replayed.index_of("a"));
        assert!(!replayed.is_served(2));
        // records round-trip through JSON, with the op named
        let j = serde_json::to_string(&recs[1]).unwrap();
        assert_eq!(j, r#"{"edit_id":2,"ts_ms":0,"op":"delete","id":"item-2"}"#);
        assert_eq!(serde_json::from_str::<EditRecord>(&j).unwrap(), recs[1]);
    }
}
