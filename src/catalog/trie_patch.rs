//! The trie's part of a catalog overlay ([`super::overlay`]): per trie node it
//! touches, the number of served items under it relative to the base
//! (`counts`), the base children that have no served item left (`dead`, per
//! parent) and the children that exist only in the overlay (`added`, per
//! parent; their node ids follow the base's). A [`TrieView`] reads base and
//! patch together: its children are the base's living ones merged with the
//! added ones, in code order, which is what a full rebuild of the trie over
//! the same items would give (tested below). Persistent maps (`imbl`): a clone
//! is O(1), an edit changes O(levels) entries.

use std::sync::Arc;

use super::trie::{Trie, NONE};
use super::CatalogError;

/// What a parent node's children look like in the overlay.
#[derive(Debug, Clone, Default, PartialEq)]
struct NodePatch {
    /// Codes of base children with no served item left (sorted).
    dead: Vec<u32>,
    /// Children that exist only in the overlay: `(code, node)`, sorted by code.
    added: Vec<(u32, u32)>,
}

/// The trie's part of an overlay.
#[derive(Debug, Clone, Default)]
pub struct TriePatch {
    nodes: imbl::HashMap<u32, Arc<NodePatch>>,
    /// Served leaves under a node minus those under it in the base.
    counts: imbl::HashMap<u32, i64>,
    /// Item of each overlay leaf.
    leaves: imbl::HashMap<u32, u32>,
    /// Next overlay node id (0: not started; then the base's node count and up).
    next_node: u32,
    /// Every parent an edit touched, in edit order, each with a stamp unique
    /// in the process: the GPU's copy of the patch
    /// ([`crate::generate::kernel::patch`]) rewrites only the parents logged
    /// since it last looked, and a stamp it does not find where it left off
    /// tells it the patch is another lineage.
    log: imbl::Vector<(u64, u32)>,
}

fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl TriePatch {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes the patch has created (a measure of its size).
    pub fn added_nodes(&self, base: &Trie) -> usize {
        (self.next_node as usize).saturating_sub(base.num_nodes())
    }

    fn count(&self, base: &Trie, node: u32) -> i64 {
        base.leaves_under(node) as i64 + self.counts.get(&node).copied().unwrap_or(0)
    }

    fn patch_mut(&mut self, parent: u32) -> &mut NodePatch {
        Arc::make_mut(self.nodes.entry(parent).or_default())
    }

    /// Drops a parent's patch when it says nothing any more.
    fn tidy(&mut self, parent: u32) {
        if self.nodes.get(&parent).is_some_and(|p| p.dead.is_empty() && p.added.is_empty()) {
            self.nodes.remove(&parent);
        }
    }

    /// Adds a leaf for `item` at `sid`. Errors when a served item has that ID.
    pub fn insert(&mut self, base: &Trie, sid: &[u32], item: u32) -> Result<(), CatalogError> {
        let levels = base.levels();
        if sid.len() != levels || sid.iter().zip(base.codebook_sizes()).any(|(&c, &s)| c >= s) {
            return Err(CatalogError::Format(format!(
                "semantic ID {sid:?} does not fit codebook sizes {:?}",
                base.codebook_sizes()
            )));
        }
        if self.next_node == 0 {
            self.next_node = base.num_nodes() as u32;
        }
        let mut path = Vec::with_capacity(levels + 1);
        let mut node = 0u32;
        path.push(node);
        for (l, &code) in sid.iter().enumerate() {
            let leaf = l + 1 == levels;
            let view = TrieView::new(base, Some(self));
            let in_base = base.child(node, code).filter(|_| node < base.num_nodes() as u32);
            let added = self.nodes.get(&node).and_then(|p| p.added.iter().find(|a| a.0 == code).map(|a| a.1));
            let next = match (in_base, added) {
                (_, Some(_)) if leaf => return Err(taken(sid)),
                (_, Some(a)) => a,
                (Some(b), None) if leaf => {
                    if view.count(b) > 0 {
                        return Err(taken(sid));
                    }
                    if base.item(b) == Some(item) {
                        b // the item comes back to its own base leaf
                    } else {
                        self.new_child(node, code)
                    }
                }
                (Some(b), None) => b,
                (None, None) => self.new_child(node, code),
            };
            if leaf && next >= base.num_nodes() as u32 {
                self.leaves.insert(next, item);
            }
            node = next;
            path.push(node);
        }
        // one more served item under every node of the path; a base node that
        // had none left is alive again
        for (depth, &n) in path.iter().enumerate() {
            let before = self.count(base, n);
            *self.counts.entry(n).or_insert(0) += 1;
            if before == 0 && depth > 0 && n < base.num_nodes() as u32 {
                let parent = path[depth - 1];
                let code = sid[depth - 1];
                let p = self.patch_mut(parent);
                p.dead.retain(|&c| c != code);
                self.tidy(parent);
            }
        }
        self.log_path(&path);
        Ok(())
    }

    /// Logs the parents of an edited path (every node but the leaf).
    fn log_path(&mut self, path: &[u32]) {
        for &parent in &path[..path.len().saturating_sub(1)] {
            self.log.push_back((next_stamp(), parent));
        }
    }

    fn new_child(&mut self, parent: u32, code: u32) -> u32 {
        let id = self.next_node;
        self.next_node += 1;
        let p = self.patch_mut(parent);
        let at = p.added.partition_point(|a| a.0 < code);
        p.added.insert(at, (code, id));
        id
    }

    /// Removes the leaf of `item` at `sid`. Errors when it is not there.
    pub fn remove(&mut self, base: &Trie, sid: &[u32], item: u32) -> Result<(), CatalogError> {
        let mut path = vec![0u32];
        {
            let view = TrieView::new(base, Some(self));
            for &code in sid {
                let next = view.child(*path.last().unwrap_or(&0), code).ok_or_else(|| missing(sid, item))?;
                path.push(next);
            }
            if path.len() != base.levels() + 1 || view.item(*path.last().unwrap_or(&NONE)) != Some(item) {
                return Err(missing(sid, item));
            }
        }
        if self.next_node == 0 {
            self.next_node = base.num_nodes() as u32;
        }
        for depth in (0..path.len()).rev() {
            let n = path[depth];
            *self.counts.entry(n).or_insert(0) -= 1;
            if depth == 0 || self.count(base, n) > 0 {
                continue;
            }
            // no served item left under n: its parent no longer lists it
            let (parent, code) = (path[depth - 1], sid[depth - 1]);
            if n < base.num_nodes() as u32 {
                let p = self.patch_mut(parent);
                if let Err(at) = p.dead.binary_search(&code) {
                    p.dead.insert(at, code);
                }
            } else {
                let p = self.patch_mut(parent);
                p.added.retain(|a| a.1 != n);
                self.tidy(parent);
                self.leaves.remove(&n);
            }
        }
        self.log_path(&path);
        Ok(())
    }
}

fn taken(sid: &[u32]) -> CatalogError {
    CatalogError::Conflict(format!("semantic ID {sid:?} is taken by another item"))
}

fn missing(sid: &[u32], item: u32) -> CatalogError {
    CatalogError::NotFound(format!("item {item} is not in the trie at {sid:?}"))
}

/// A trie as requests see it: a base trie and, optionally, a patch above it.
#[derive(Clone, Copy)]
pub struct TrieView<'a> {
    base: &'a Trie,
    patch: Option<&'a TriePatch>,
}

/// The served children of a node, in code order: `(code, node)`.
#[derive(Clone)]
pub struct Children<'a> {
    codes: &'a [u32],
    first: u32,
    i: usize,
    dead: &'a [u32],
    d: usize,
    added: &'a [(u32, u32)],
    a: usize,
}

impl Iterator for Children<'_> {
    type Item = (u32, u32);

    #[inline]
    fn next(&mut self) -> Option<(u32, u32)> {
        // the next living base child
        let mut base = None;
        while let Some(&c) = self.codes.get(self.i) {
            while self.dead.get(self.d).is_some_and(|&x| x < c) {
                self.d += 1;
            }
            if self.dead.get(self.d) == Some(&c) {
                self.i += 1;
                continue;
            }
            base = Some((c, self.first + self.i as u32));
            break;
        }
        match (base, self.added.get(self.a)) {
            (Some(b), Some(&a)) if a.0 < b.0 => {
                self.a += 1;
                Some(a)
            }
            (Some(b), _) => {
                self.i += 1;
                Some(b)
            }
            (None, Some(&a)) => {
                self.a += 1;
                Some(a)
            }
            (None, None) => None,
        }
    }
}

impl<'a> TrieView<'a> {
    pub fn new(base: &'a Trie, patch: Option<&'a TriePatch>) -> Self {
        TrieView { base, patch: patch.filter(|p| !p.is_empty() || !p.leaves.is_empty()) }
    }

    /// The base trie (what the GPU kernel reads).
    pub fn base(&self) -> &'a Trie {
        self.base
    }

    /// Whether no live edit changed the base trie (the GPU kernel can search it).
    pub fn is_pristine(&self) -> bool {
        self.patch.is_none()
    }

    pub fn levels(&self) -> usize {
        self.base.levels()
    }

    pub fn codebook_sizes(&self) -> &'a [u32] {
        self.base.codebook_sizes()
    }

    /// Served items under `node`.
    pub fn count(&self, node: u32) -> i64 {
        match self.patch {
            Some(p) => p.count(self.base, node),
            None => self.base.leaves_under(node) as i64,
        }
    }

    fn base_children(&self, node: u32) -> (&'a [u32], u32) {
        if (node as usize) < self.base.num_nodes() {
            self.base.children(node)
        } else {
            (&[], NONE)
        }
    }

    /// The served children of `node` as `(code, node)`, in code order.
    #[inline]
    pub fn children(&self, node: u32) -> Children<'a> {
        let (codes, first) = self.base_children(node);
        let patch = self.patch.and_then(|p| p.nodes.get(&node));
        let (dead, added): (&[u32], &[(u32, u32)]) = match patch {
            Some(p) => (&p.dead, &p.added),
            None => (&[], &[]),
        };
        Children { codes, first, i: 0, dead, d: 0, added, a: 0 }
    }

    /// The served child of `node` along `code`.
    pub fn child(&self, node: u32, code: u32) -> Option<u32> {
        let Some(p) = self.patch.and_then(|p| p.nodes.get(&node)) else {
            return if (node as usize) < self.base.num_nodes() { self.base.child(node, code) } else { None };
        };
        if let Some(a) = p.added.iter().find(|a| a.0 == code) {
            return Some(a.1);
        }
        if p.dead.binary_search(&code).is_ok() || node as usize >= self.base.num_nodes() {
            return None;
        }
        self.base.child(node, code)
    }

    /// The item of a leaf node.
    pub fn item(&self, node: u32) -> Option<u32> {
        if (node as usize) < self.base.num_nodes() {
            return self.base.item(node);
        }
        self.patch.and_then(|p| p.leaves.get(&node).copied())
    }

    /// The node reached by a (possibly partial) semantic ID.
    pub fn walk(&self, prefix: &[u32]) -> Option<u32> {
        prefix.iter().try_fold(0u32, |node, &c| self.child(node, c))
    }

    /// The item of a full semantic ID.
    pub fn lookup(&self, sid: &[u32]) -> Option<u32> {
        if sid.len() != self.levels() {
            return None;
        }
        self.walk(sid).and_then(|leaf| self.item(leaf))
    }

    /// How many parents the patch's edits have logged, and the stamp of the
    /// last one (`(0, 0)` without a patch).
    pub fn log_mark(&self) -> (usize, u64) {
        match self.patch {
            Some(p) => (p.log.len(), p.log.back().map_or(0, |e| e.0)),
            None => (0, 0),
        }
    }

    /// The stamp of log entry `i`.
    pub fn log_stamp(&self, i: usize) -> Option<u64> {
        self.patch.and_then(|p| p.log.get(i)).map(|e| e.0)
    }

    /// The parents logged from entry `from` on.
    pub fn logged_parents(&self, from: usize) -> impl Iterator<Item = u32> + 'a {
        let log = self.patch.map(|p| &p.log);
        log.into_iter().flat_map(move |l| l.iter().skip(from).map(|e| e.1))
    }

    /// Whether the patch changes `node`'s children.
    pub fn is_patched(&self, node: u32) -> bool {
        self.patch.is_some_and(|p| p.nodes.contains_key(&node))
    }

    /// Every node whose children the patch changes.
    pub fn patched_nodes(&self) -> impl Iterator<Item = u32> + 'a {
        self.patch.into_iter().flat_map(|p| p.nodes.keys().copied())
    }

    /// One past the largest node id, base and overlay.
    pub fn node_bound(&self) -> usize {
        self.base.num_nodes().max(self.patch.map_or(0, |p| p.next_node as usize))
    }

    /// The lowest code below `size` that no served child of `node` uses (all
    /// codes are free under a node that does not exist yet).
    pub fn free_code(&self, node: Option<u32>, size: u32) -> Option<u32> {
        let Some(node) = node else { return (size > 0).then_some(0) };
        let mut want = 0u32;
        for (c, _) in self.children(node) {
            if c > want {
                break;
            }
            want = c + 1;
        }
        (want < size).then_some(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Children of every node of `full` (a rebuild) equal those of the view,
    /// node ids aside: compared by prefix.
    fn same_tree(view: &TrieView, full: &Trie, sids: &std::collections::BTreeMap<u32, Vec<u32>>) {
        let full_view = TrieView::new(full, None);
        let levels = full.levels();
        // every served item is found at its ID in both
        for (&item, sid) in sids {
            assert_eq!(view.lookup(sid), Some(item), "view finds {item} at {sid:?}");
            assert_eq!(full_view.lookup(sid), Some(item));
        }
        // and every prefix has the same children codes and counts
        let mut prefixes: Vec<Vec<u32>> = vec![vec![]];
        for d in 0..levels {
            let mut next = Vec::new();
            for p in &prefixes {
                let (a, b) = (view.walk(p), full_view.walk(p));
                let a_codes: Vec<u32> = a.map(|n| view.children(n).map(|c| c.0).collect()).unwrap_or_default();
                let b_codes: Vec<u32> = b.map(|n| full_view.children(n).map(|c| c.0).collect()).unwrap_or_default();
                assert_eq!(a_codes, b_codes, "children of {p:?} at depth {d}");
                if let (Some(a), Some(b)) = (a, b) {
                    assert_eq!(view.count(a), full_view.count(b), "count under {p:?}");
                }
                for c in a_codes {
                    let mut q = p.clone();
                    q.push(c);
                    next.push(q);
                }
            }
            prefixes = next;
        }
        assert_eq!(prefixes.len(), sids.len(), "one leaf per served item");
    }

    /// Random inserts and removals on a patch over a random base give the same
    /// trie as building it from scratch over the items served at the end.
    #[test]
    fn patch_equals_full_rebuild_on_random_edits() {
        let sizes = [4u32, 3, 5];
        for seed in 0..20u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut served: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            let mut used: std::collections::BTreeSet<Vec<u32>> = Default::default();
            let random_sid =
                |rng: &mut rand_chacha::ChaCha8Rng| sizes.iter().map(|&s| rng.random_range(0..s)).collect::<Vec<u32>>();
            let mut base_sids = Vec::new();
            while served.len() < 25 {
                let s = random_sid(&mut rng);
                if used.insert(s.clone()) {
                    served.insert(served.len() as u32, s.clone());
                    base_sids.extend(s);
                }
            }
            let base = Trie::build(&base_sids, 3, &sizes).unwrap();
            let mut patch = TriePatch::default();
            let mut next_item = 25u32;
            for _ in 0..60 {
                let remove = rng.random_bool(0.45) && !served.is_empty();
                if remove {
                    let k = *served.keys().nth(rng.random_range(0..served.len())).unwrap();
                    let sid = served.remove(&k).unwrap();
                    used.remove(&sid);
                    patch.remove(&base, &sid, k).unwrap();
                    assert!(patch.remove(&base, &sid, k).is_err(), "removed twice");
                } else {
                    let s = random_sid(&mut rng);
                    if used.contains(&s) {
                        assert!(patch.insert(&base, &s, 999).is_err(), "taken IDs are refused");
                        continue;
                    }
                    // sometimes an old item comes back (to its own ID or another)
                    let item = if rng.random_bool(0.3) { rng.random_range(0..25) } else { next_item };
                    if served.contains_key(&item) {
                        continue;
                    }
                    if item == next_item {
                        next_item += 1;
                    }
                    patch.insert(&base, &s, item).unwrap();
                    used.insert(s.clone());
                    served.insert(item, s);
                }
                let mut flat = Vec::new();
                let mut items = Vec::new();
                for (&i, s) in &served {
                    flat.extend_from_slice(s);
                    items.push(i);
                }
                // rebuild with the same item numbers: rows = max item + 1, unserved rows filtered out
                let rows = served.keys().max().map_or(0, |&m| m + 1) as usize;
                let mut all = vec![0u32; rows * 3];
                let mut keep = vec![false; rows];
                for (&i, s) in &served {
                    all[i as usize * 3..i as usize * 3 + 3].copy_from_slice(s);
                    keep[i as usize] = true;
                }
                let k = |i: u32| keep[i as usize];
                if served.is_empty() {
                    continue;
                }
                let full = Trie::build_filtered(&all, 3, &sizes, 2, Some(&k)).unwrap();
                same_tree(&TrieView::new(&base, Some(&patch)), &full, &served);
            }
        }
    }

    #[test]
    fn free_codes_come_from_the_node_children() {
        let base = Trie::build(&[0, 0, 0, 2, 1, 0], 2, &[2, 4]).unwrap();
        let mut patch = TriePatch::default();
        let view = TrieView::new(&base, Some(&patch));
        let n0 = view.walk(&[0]);
        assert_eq!(view.free_code(n0, 4), Some(1));
        assert_eq!(view.free_code(None, 4), Some(0));
        patch.insert(&base, &[0, 1], 7).unwrap();
        let view = TrieView::new(&base, Some(&patch));
        assert_eq!(view.free_code(view.walk(&[0]), 4), Some(3));
        assert_eq!(view.lookup(&[0, 1]), Some(7));
        patch.remove(&base, &[0, 0], 0).unwrap();
        let view = TrieView::new(&base, Some(&patch));
        assert_eq!(view.free_code(view.walk(&[0]), 4), Some(0), "a removed item's code is free again");
        patch.insert(&base, &[0, 0], 9).unwrap();
        let view = TrieView::new(&base, Some(&patch));
        assert_eq!(view.lookup(&[0, 0]), Some(9));
        assert_eq!(view.free_code(view.walk(&[0]), 2), None, "codes 0 and 1 taken: full at width 2");
        assert_eq!(view.free_code(view.walk(&[0]), 4), Some(3));
        assert!(patch.insert(&base, &[0, 9], 8).is_err(), "codes beyond the codebook");
    }
}
