//! A catalog's live overlay as the beam-step kernel reads it: the base trie
//! stays on the device as uploaded (once per base version), and this table
//! says, for each node whose children an edit changed, what its children are
//! now. A node's slot is 0 (read the base's children) or one past the offset
//! of its record: `code[off]` holds the number of children `n`, then
//! `code/node/item[off + 1 ..= off + n]` are their codes (ascending), node ids
//! and items (a leaf's item, `NONE` for an inner node), exactly what
//! [`TrieView::children`] lists for that node. Added items, removed ones and
//! items swept out at their expiry all arrive as such records (an expired item
//! still in the trie is a request exclusion, like any other).
//!
//! Kept in step with the overlay incrementally ([`PatchTable::sync`]): the
//! trie patch logs every parent an edit touches, and a sync rewrites only the
//! parents logged since the last one; their new records are appended, the
//! old ones become garbage. The table says what changed ([`PatchSync`]) so the
//! device copy takes the same few slot writes and the appended records, not a
//! re-upload of the trie or of the whole patch. It is rebuilt from the
//! overlay when the overlay is another lineage (its log does not continue
//! where the table left off) or when garbage outweighs the live records.

use crate::catalog::trie::NONE;
use crate::catalog::TrieView;

/// Pool entries below which garbage is never collected.
const MIN_COLLECT: usize = 1 << 16;

/// The overlay's changed nodes and their children (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct PatchTable {
    /// Per node id (base and overlay): 0, or 1 + its record's offset.
    pub slot: Vec<u32>,
    pub code: Vec<u32>,
    pub node: Vec<u32>,
    pub item: Vec<u32>,
    /// Id of the base trie the overlay patches.
    base: u64,
    /// The log position and last stamp this table reflects.
    synced: (usize, u64),
    /// Pool entries no slot points at any more.
    garbage: usize,
}

/// What one [`PatchTable::sync`] changed, for the device copy to follow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchSync {
    /// The table was rebuilt: clear every slot and the pool first.
    pub rebuilt: bool,
    /// Slots written, as `(node, value)`.
    pub slots: Vec<(u32, u32)>,
    /// Pool entries from this offset on are new.
    pub pool_from: usize,
}

impl PatchTable {
    /// Whether no node is patched (the kernel reads the base alone).
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// The children of a patched node as `(codes, nodes, items)`; `None` for
    /// a node whose children are the base's.
    pub fn children(&self, node: u32) -> Option<(&[u32], &[u32], &[u32])> {
        let s = *self.slot.get(node as usize)?;
        if s == 0 {
            return None;
        }
        let off = (s - 1) as usize;
        let n = self.code[off] as usize;
        let r = off + 1..off + 1 + n;
        Some((&self.code[r.clone()], &self.node[r.clone()], &self.item[r]))
    }

    /// Brings the table to `view`'s overlay, rewriting only the parents
    /// logged since the last sync (or everything, for another base or
    /// lineage, or to collect garbage).
    pub fn sync(&mut self, view: &TrieView) -> PatchSync {
        let (len, _) = view.log_mark();
        let (done, stamp) = self.synced;
        let continues = self.base == view.base().id()
            && done <= len
            && (done == 0 && self.is_empty() || done > 0 && view.log_stamp(done - 1) == Some(stamp));
        let live = self.code.len() - self.garbage;
        if !continues || self.garbage > 2 * live + MIN_COLLECT {
            return self.rebuild(view);
        }
        let from = self.code.len();
        self.slot.resize(self.slot.len().max(view.node_bound()), 0);
        let mut parents: Vec<u32> = view.logged_parents(done).collect();
        parents.sort_unstable();
        parents.dedup();
        let slots = parents.into_iter().map(|p| (p, self.write(view, p))).collect();
        self.synced = view.log_mark();
        PatchSync { rebuilt: false, slots, pool_from: from }
    }

    /// The sync that makes a device copy of this table from scratch.
    pub fn full_sync(&self) -> PatchSync {
        let slots = self.slot.iter().enumerate().filter(|(_, &v)| v != 0).map(|(n, &v)| (n as u32, v)).collect();
        PatchSync { rebuilt: true, slots, pool_from: 0 }
    }

    fn rebuild(&mut self, view: &TrieView) -> PatchSync {
        *self = PatchTable { base: view.base().id(), slot: vec![0; view.node_bound()], ..Default::default() };
        let mut nodes: Vec<u32> = view.patched_nodes().collect();
        nodes.sort_unstable();
        let slots = nodes.into_iter().map(|p| (p, self.write(view, p))).collect();
        self.synced = view.log_mark();
        PatchSync { rebuilt: true, slots, pool_from: 0 }
    }

    /// Writes `parent`'s record as the view has it (or clears its slot when
    /// its children are the base's again); returns the slot's new value.
    fn write(&mut self, view: &TrieView, parent: u32) -> u32 {
        let old = self.slot[parent as usize];
        if old != 0 {
            self.garbage += 1 + self.code[(old - 1) as usize] as usize;
        }
        let value = if view.is_patched(parent) {
            let off = self.code.len();
            self.code.push(0);
            self.node.push(NONE);
            self.item.push(NONE);
            for (c, child) in view.children(parent) {
                self.code.push(c);
                self.node.push(child);
                self.item.push(view.item(child).unwrap_or(NONE));
            }
            self.code[off] = (self.code.len() - off - 1) as u32;
            off as u32 + 1
        } else {
            0
        };
        self.slot[parent as usize] = value;
        value
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::catalog::trie::Trie;
    use crate::catalog::trie_patch::TriePatch;

    /// Every node of the view has, in the table, the children the view lists
    /// (patched nodes a record, the others the base's).
    fn agrees(table: &PatchTable, view: &TrieView) {
        for node in 0..view.node_bound() as u32 {
            let want: Vec<(u32, u32)> = view.children(node).collect();
            match table.children(node) {
                Some((codes, nodes, items)) => {
                    let got: Vec<(u32, u32)> = codes.iter().copied().zip(nodes.iter().copied()).collect();
                    assert_eq!(got, want, "node {node}");
                    for (&n, &i) in nodes.iter().zip(items) {
                        assert_eq!(view.item(n).unwrap_or(NONE), i);
                    }
                }
                None if (node as usize) < view.base().num_nodes() => {
                    let (codes, first) = view.base().children(node);
                    let base: Vec<(u32, u32)> = codes.iter().enumerate().map(|(i, &c)| (c, first + i as u32)).collect();
                    assert_eq!(base, want, "node {node} reads the base");
                }
                None => assert!(want.is_empty(), "overlay node {node} has children but no record"),
            }
        }
    }

    /// Random edits, synced now and then, keep the table equal to the view;
    /// a sync after a step back (another lineage) or onto another base
    /// rebuilds, and a follow-up sync writes only the slots logged since.
    #[test]
    fn incremental_syncs_follow_random_edits() {
        let sizes = [3u32, 4, 5];
        for seed in 0..30u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let base_sids: Vec<u32> = (0..20).flat_map(|i| [i % 3, (i / 3) % 4, i / 12]).collect();
            let base = Trie::build(&base_sids, 3, &sizes).unwrap();
            let mut patch = TriePatch::default();
            let mut served: std::collections::BTreeMap<Vec<u32>, u32> =
                (0..20u32).map(|i| (base_sids[i as usize * 3..i as usize * 3 + 3].to_vec(), i)).collect();
            let mut table = PatchTable::default();
            let mut next = 20u32;
            let mut saved: Option<TriePatch> = None;
            for step in 0..80 {
                if rng.random_bool(0.5) && !served.is_empty() {
                    let k = served.keys().nth(rng.random_range(0..served.len())).unwrap().clone();
                    let item = served.remove(&k).unwrap();
                    patch.remove(&base, &k, item).unwrap();
                } else {
                    let sid: Vec<u32> = sizes.iter().map(|&s| rng.random_range(0..s)).collect();
                    if served.contains_key(&sid) {
                        continue;
                    }
                    patch.insert(&base, &sid, next).unwrap();
                    served.insert(sid, next);
                    next += 1;
                }
                if step == 40 {
                    saved = Some(patch.clone());
                }
                if rng.random_bool(0.3) {
                    let view = TrieView::new(&base, Some(&patch));
                    let before = table.synced.0;
                    let sync = table.sync(&view);
                    if before > 0 && !sync.rebuilt {
                        let logged: std::collections::BTreeSet<u32> = view.logged_parents(before).collect();
                        assert_eq!(sync.slots.len(), logged.len(), "only the logged parents are rewritten");
                    }
                    agrees(&table, &view);
                }
            }
            // back to an earlier version: another lineage from the table's view
            if let Some(mut old) = saved {
                let view = TrieView::new(&base, Some(&old));
                assert!(table.sync(&view).rebuilt, "seed {seed}: a step back rebuilds");
                agrees(&table, &view);
                // ... and that version edited on past the newer one's log
                let newer = TrieView::new(&base, Some(&patch));
                table.sync(&newer);
                let free = (0..60u32)
                    .map(|k| vec![k % 3, (k / 3) % 4, k / 12])
                    .find(|s| TrieView::new(&base, Some(&old)).lookup(s).is_none())
                    .unwrap();
                while TrieView::new(&base, Some(&old)).log_mark().0 <= newer.log_mark().0 {
                    old.insert(&base, &free, 999).unwrap();
                    old.remove(&base, &free, 999).unwrap();
                }
                old.insert(&base, &free, 999).unwrap();
                let view = TrieView::new(&base, Some(&old));
                assert!(table.sync(&view).rebuilt, "seed {seed}: another lineage with a longer log rebuilds");
                agrees(&table, &view);
            }
            let other = Trie::build(&base_sids, 3, &sizes).unwrap();
            let view = TrieView::new(&other, None);
            assert!(table.sync(&view).rebuilt);
            assert!(table.is_empty());
            agrees(&table, &view);
        }
    }
}
