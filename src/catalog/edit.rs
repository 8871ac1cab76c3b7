//! Live catalog edits (`POST /admin/items`, `DELETE /admin/items/{id}`): each
//! edit returns a new [`Catalog`] that the engine swaps in atomically. A new
//! item's semantic ID comes from the catalog's own codebooks (residual
//! nearest-centroid codes) plus the lowest free collision code, so the served
//! model can generate it at once. Removed items keep their index and drop out
//! of the trie. The manifest (codebooks, fingerprint) does not change: models
//! trained on the indexed catalog stay valid for the edited one.

use std::collections::HashSet;

use super::rqkmeans::assign;
use super::trie::Trie;
use super::{Catalog, CatalogError};

impl Catalog {
    /// Semantic ID for an embedding (catalog dimension): k-means codes from the
    /// codebooks, then the lowest collision code no live item uses under them.
    pub fn semantic_id_for(&self, embedding: &[f32]) -> Result<Vec<u32>, CatalogError> {
        let dim = self.manifest.embedding_dim;
        if embedding.len() != dim {
            return Err(CatalogError::Format(format!("embedding has {} values, the catalog {dim}", embedding.len())));
        }
        if self.codebooks.len() + 1 != self.levels() {
            return Err(CatalogError::Format("the catalog has no codebook for every k-means level".into()));
        }
        let mut residual = embedding.to_vec();
        let mut sid = Vec::with_capacity(self.levels());
        for book in &self.codebooks {
            let code = assign(&residual, book, dim)?[0];
            let c = &book[code as usize * dim..(code as usize + 1) * dim];
            residual.iter_mut().zip(c).for_each(|(r, x)| *r -= x);
            sid.push(code);
        }
        let levels = self.levels();
        let prefix = sid.len();
        let used: HashSet<u32> = (0..self.len() as u32)
            .filter(|&i| self.is_live(i) && self.sid(i)[..prefix] == sid[..])
            .map(|i| self.sid(i)[prefix])
            .collect();
        let size = self.manifest.codebook_sizes[levels - 1];
        let free = (0..size).find(|c| !used.contains(c)).ok_or_else(|| {
            CatalogError::Conflict(format!(
                "all {size} collision codes under semantic-ID prefix {:?} are taken: re-index the catalog",
                &sid[..prefix]
            ))
        })?;
        sid.push(free);
        Ok(sid)
    }

    fn rebuild_trie(&mut self) -> Result<(), CatalogError> {
        self.trie = Trie::build_filtered(&self.sids, self.levels(), &self.manifest.codebook_sizes, 2, Some(&self.live))?;
        Ok(())
    }

    /// A copy with one more item (or a removed item served again under new
    /// data). Returns the catalog and the item's index.
    pub fn with_item(&self, id: &str, title: &str, mut embedding: Vec<f32>) -> Result<(Catalog, u32), CatalogError> {
        if let Some(i) = self.index_of(id) {
            if self.is_live(i) {
                return Err(CatalogError::Conflict(format!("item {id:?} is already in the catalog")));
            }
        }
        let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm < 1e-12 {
            return Err(CatalogError::Format("embedding must be finite and non-zero".into()));
        }
        embedding.iter_mut().for_each(|x| *x /= norm);
        let sid = self.semantic_id_for(&embedding)?;
        let mut next = self.clone();
        let (levels, dim) = (self.levels(), self.manifest.embedding_dim);
        let item = match self.index_of(id) {
            Some(i) => {
                let i_us = i as usize;
                next.sids[i_us * levels..(i_us + 1) * levels].copy_from_slice(&sid);
                next.embeddings[i_us * dim..(i_us + 1) * dim].copy_from_slice(&embedding);
                next.titles[i_us] = title.to_string();
                next.live[i_us] = true;
                i
            }
            None => {
                let i = next.item_ids.len() as u32;
                next.item_ids.push(id.to_string());
                next.titles.push(title.to_string());
                next.sids.extend_from_slice(&sid);
                next.embeddings.extend_from_slice(&embedding);
                next.live.push(true);
                next.index.insert(id.to_string(), i);
                i
            }
        };
        next.manifest.num_items = next.item_ids.len();
        next.rebuild_trie()?;
        Ok((next, item))
    }

    /// A copy without item `id` (it is never generated or recalled again).
    pub fn without_item(&self, id: &str) -> Result<(Catalog, u32), CatalogError> {
        let item = self
            .index_of(id)
            .filter(|&i| self.is_live(i))
            .ok_or_else(|| CatalogError::NotFound(format!("item {id:?} is not in the catalog")))?;
        let mut next = self.clone();
        next.live[item as usize] = false;
        next.rebuild_trie()?;
        Ok((next, item))
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::store::tests::tiny_catalog;

    #[test]
    fn added_item_gets_a_fresh_id_under_its_nearest_prefix_and_removal_hides_it() {
        let cat = tiny_catalog();
        let l = cat.levels();
        // an item whose prefix still has a free collision code
        let size = cat.manifest.codebook_sizes[l - 1] as usize;
        let group = |i: u32| (0..cat.len() as u32).filter(|&j| cat.sid(j)[..l - 1] == cat.sid(i)[..l - 1]).count();
        let twin = (0..cat.len() as u32).find(|&i| group(i) < size).expect("a prefix with room");
        let (next, item) = cat.with_item("new", "a twin", cat.embedding(twin).to_vec()).unwrap();
        let sid = next.sid(item).to_vec();
        assert_eq!(sid[..l - 1], cat.sid(twin)[..l - 1], "same k-means codes as its twin");
        assert_ne!(sid, cat.sid(twin), "a different collision code");
        assert_eq!(next.trie.lookup(&sid), Some(item));
        assert!(cat.with_item("item-1", "dup", cat.embedding(1).to_vec()).is_err(), "ids are unique");
        // a full prefix is refused with a reason
        if let Some(full) = (0..cat.len() as u32).find(|&i| group(i) == size) {
            assert!(cat.with_item("x", "x", cat.embedding(full).to_vec()).is_err());
        }

        let (gone, removed) = next.without_item("item-0").unwrap();
        assert_eq!(removed, 0);
        assert!(!gone.is_live(0) && gone.is_live(item));
        assert_eq!(gone.trie.lookup(cat.sid(0)), None);
        assert_eq!(gone.live_len(), next.live_len() - 1);
        assert!(gone.without_item("item-0").is_err());
        // served again, with new data
        let (back, again) = gone.with_item("item-0", "back", cat.embedding(0).to_vec()).unwrap();
        assert_eq!(again, 0);
        assert!(back.is_live(0));
        assert_eq!(back.trie.lookup(back.sid(0)), Some(0));
    }
}
