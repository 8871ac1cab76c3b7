//! Compact array trie over semantic IDs: the structure the beam search (and the
//! CUDA kernel, which reads the same flat arrays) walks.
//!
//! Nodes are numbered breadth-first: the root is node 0, then every depth-1
//! prefix in sorted order, then every depth-2 prefix, and so on down to the
//! leaves (full semantic IDs). Because of that numbering the children of a node
//! are a contiguous run of node ids, and edge `e` (in CSR order) always leads to
//! node `e + 1`, so no per-edge child array is stored:
//!
//! - `child_start[n]..child_start[n + 1]`: the edges of internal node `n`;
//! - `child_code[e]`: the code on edge `e`, sorted within each node;
//! - `leaf_item[n - level_start[levels]]`: the item of leaf node `n`;
//! - `dense`: for nodes of the first `dense_depth` depths, a `[node × codes]`
//!   table that maps a code straight to the child node (O(1) lookup), as in
//!   STATIC (dense tables for the first levels, CSR below).
//!
//! Deeper lookups binary-search the sorted codes: O(log children).
//!
//! The arrays are [`Array`]s: built in memory, or memory-mapped from a catalog
//! version's `trie.*.u32` files (the dense tables are rebuilt at load; they
//! are small). Live edits never change a trie: they go to a
//! [`super::trie_patch::TriePatch`] that requests read together with it.

use std::path::Path;

use rayon::prelude::*;

use super::array::Array;
use super::CatalogError;

/// Largest dense table (entries) built for a depth; deeper or wider depths
/// binary-search their CSR children.
const DENSE_LIMIT: usize = 1 << 22;

/// Marks "no node" in the dense tables and dead beams.
pub const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct Trie {
    /// Unique per build (clones share it: a trie never changes once built), so
    /// that device copies of the arrays can be cached by it.
    id: u64,
    levels: usize,
    codebook_sizes: Vec<u32>,
    /// First node id of each depth; `levels + 2` entries (the last is the node count).
    level_start: Array<u32>,
    /// CSR offsets for internal nodes (depth < levels); `internal + 1` entries.
    child_start: Array<u32>,
    /// Code on each edge; edge `e` leads to node `e + 1`.
    child_code: Array<u32>,
    /// Item index of each leaf.
    leaf_item: Array<u32>,
    /// Dense child tables for depths `< dense_depth`.
    dense: Vec<u32>,
    /// Offset of each dense depth's table inside `dense`.
    dense_offset: Vec<usize>,
}

fn next_id() -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Borrowed view of the flat arrays, as the CUDA beam step reads them.
pub struct TrieArrays<'a> {
    pub level_start: &'a [u32],
    pub child_start: &'a [u32],
    pub child_code: &'a [u32],
    pub leaf_item: &'a [u32],
    pub codebook_sizes: &'a [u32],
    dense: &'a [u32],
    dense_offset: &'a [usize],
}

impl TrieArrays<'_> {
    /// The dense `[node - level_start[depth], codebook_sizes[depth]] -> child`
    /// table of a depth (`NONE` where the code is no child), if it has one.
    pub fn dense_table(&self, depth: usize) -> Option<&[u32]> {
        let start = *self.dense_offset.get(depth)?;
        let rows = (self.level_start[depth + 1] - self.level_start[depth]) as usize;
        Some(&self.dense[start..start + rows * self.codebook_sizes[depth] as usize])
    }
}

/// Checks that the CSR arrays describe a trie the beam step may follow
/// blindly: offsets never decrease, the edges of each depth's nodes lead to
/// exactly the next depth's nodes, and each node's codes are strictly
/// increasing and below its depth's codebook size. (A repeated or oversized
/// code would let the kernel write past a request's candidate scratch or its
/// shared pick buffer.) O(edges); `level_start` and the array ends are
/// checked by the caller.
fn check_edges(
    level_start: &[u32],
    child_start: &[u32],
    child_code: &[u32],
    codebook_sizes: &[u32],
) -> Result<(), String> {
    if let Some(n) = child_start.windows(2).position(|w| w[0] > w[1]) {
        return Err(format!("child offsets decrease at node {n}"));
    }
    for (d, &size) in codebook_sizes.iter().enumerate() {
        let (first, end) = (level_start[d] as usize, level_start[d + 1] as usize);
        let (lo, hi) = (child_start[first] as usize, child_start[end] as usize);
        if lo + 1 != level_start[d + 1] as usize || hi + 1 != level_start[d + 2] as usize {
            return Err(format!("the edges of depth {d} do not lead to the nodes of depth {}", d + 1));
        }
        for node in first..end {
            let codes = &child_code[child_start[node] as usize..child_start[node + 1] as usize];
            if codes.last().is_some_and(|&c| c >= size) {
                return Err(format!(
                    "node {node} has code {} at depth {d}, whose codebook has {size}",
                    codes[codes.len() - 1]
                ));
            }
            if codes.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("node {node}'s child codes are not strictly increasing"));
            }
        }
    }
    Ok(())
}

impl Trie {
    /// Builds the trie from item semantic IDs (`sids[item * levels + l]`).
    /// Every ID must be unique and every code below its level's codebook size.
    pub fn build(sids: &[u32], levels: usize, codebook_sizes: &[u32]) -> Result<Self, CatalogError> {
        Self::build_with_dense(sids, levels, codebook_sizes, 2)
    }

    /// As [`Trie::build`], with dense tables for the first `dense_depth` depths.
    pub fn build_with_dense(
        sids: &[u32],
        levels: usize,
        codebook_sizes: &[u32],
        dense_depth: usize,
    ) -> Result<Self, CatalogError> {
        Self::build_filtered(sids, levels, codebook_sizes, dense_depth, None)
    }

    /// As [`Trie::build_with_dense`], over the items that `keep` accepts;
    /// leaves keep the items' indices. Only kept items need unique IDs.
    pub fn build_filtered(
        sids: &[u32],
        levels: usize,
        codebook_sizes: &[u32],
        dense_depth: usize,
        keep: Option<&(dyn Fn(u32) -> bool + Sync)>,
    ) -> Result<Self, CatalogError> {
        if levels == 0 || codebook_sizes.len() != levels || !sids.len().is_multiple_of(levels) {
            return Err(CatalogError::Format(format!(
                "trie: {} codes for {} levels with {} codebook sizes",
                sids.len(),
                levels,
                codebook_sizes.len()
            )));
        }
        let n = sids.len() / levels;
        if n >= u32::MAX as usize {
            return Err(CatalogError::Format(format!("trie: {n} items exceed the u32 item index")));
        }
        let sid = |i: usize| &sids[i * levels..(i + 1) * levels];
        let bad = (0..n).into_par_iter().find_first(|&i| sid(i).iter().zip(codebook_sizes).any(|(&c, &s)| c >= s));
        if let Some(i) = bad {
            let l = (0..levels).find(|&l| sid(i)[l] >= codebook_sizes[l]).unwrap_or(0);
            return Err(CatalogError::Format(format!(
                "item {i}: code {} at level {l} exceeds codebook size {}",
                sid(i)[l],
                codebook_sizes[l]
            )));
        }
        let mut order: Vec<u32> = match keep {
            Some(k) => (0..n as u32).into_par_iter().filter(|&i| k(i)).collect(),
            None => (0..n as u32).collect(),
        };
        order.par_sort_unstable_by(|&a, &b| sid(a as usize).cmp(sid(b as usize)).then(a.cmp(&b)));
        let n = order.len();
        let dup = order.par_windows(2).find_first(|w| sid(w[0] as usize) == sid(w[1] as usize));
        if let Some(w) = dup {
            return Err(CatalogError::Format(format!(
                "items {} and {} share semantic ID {:?}",
                w[0],
                w[1],
                sid(w[0] as usize)
            )));
        }
        let sorted = |k: usize| sid(order[k] as usize);

        // node_at[k]: node (within depth d) of the k-th item in sorted order.
        let mut level_start = vec![0u32, 1];
        let mut child_code: Vec<u32> = Vec::new();
        let mut child_start: Vec<u32> = vec![0];
        let mut prev_nodes: Vec<u32> = vec![0; n]; // depth-0: all items under the root
        let mut prev_count: u32 = 1;
        for d in 0..levels {
            let mut nodes = vec![0u32; n];
            let mut count: u32 = 0;
            // children per parent (parent index within depth d)
            let mut per_parent = vec![0u32; prev_count as usize];
            for k in 0..n {
                let new = k == 0 || sorted(k - 1)[..=d] != sorted(k)[..=d];
                if new {
                    count += 1;
                    child_code.push(sorted(k)[d]);
                    per_parent[prev_nodes[k] as usize] += 1;
                }
                nodes[k] = count - 1;
            }
            for c in per_parent {
                let last = *child_start.last().unwrap_or(&0);
                child_start.push(last + c);
            }
            let last = *level_start.last().unwrap_or(&0);
            level_start.push(last + count);
            prev_nodes = nodes;
            prev_count = count;
        }
        // Leaves: item of each leaf node in depth order.
        let mut leaf_item = vec![0u32; prev_count as usize];
        for (k, &item) in order.iter().enumerate() {
            leaf_item[prev_nodes[k] as usize] = item;
        }
        drop(prev_nodes);
        drop(order);
        let mut trie = Trie {
            id: next_id(),
            levels,
            codebook_sizes: codebook_sizes.to_vec(),
            level_start: Array::owned(level_start),
            child_start: Array::owned(child_start),
            child_code: Array::owned(child_code),
            leaf_item: Array::owned(leaf_item),
            dense: Vec::new(),
            dense_offset: Vec::new(),
        };
        trie.build_dense(dense_depth.min(levels));
        Ok(trie)
    }

    /// Maps a trie written by [`Trie::write`] from `dir`, checking every
    /// offset and code ([`check_edges`]): the dense tables built here and the
    /// CUDA kernel index by them, so a corrupt file is refused, not followed.
    pub fn map(dir: &Path, codebook_sizes: &[u32]) -> Result<Self, CatalogError> {
        let levels = codebook_sizes.len();
        let level_start = Array::<u32>::map(&dir.join("trie.level_start.u32"), levels + 2)?;
        let bad = |m: &str| CatalogError::Format(format!("{}: trie {m}", dir.display()));
        if level_start.windows(2).any(|w| w[0] > w[1]) || level_start[0] != 0 || level_start[1] != 1 {
            return Err(bad("level starts must begin 0, 1 and never decrease"));
        }
        let internal = level_start[levels] as usize;
        let nodes = level_start[levels + 1] as usize;
        let child_start = Array::<u32>::map(&dir.join("trie.child_start.u32"), internal + 1)?;
        let child_code = Array::<u32>::map(&dir.join("trie.child_code.u32"), nodes - 1)?;
        let leaf_item = Array::<u32>::map(&dir.join("trie.leaf_item.u32"), nodes - internal)?;
        if child_start[0] != 0 || child_start[internal] as usize != nodes - 1 {
            return Err(bad("child offsets do not span the edges"));
        }
        check_edges(&level_start, &child_start, &child_code, codebook_sizes).map_err(|m| bad(&m))?;
        let mut trie = Trie {
            id: next_id(),
            levels,
            codebook_sizes: codebook_sizes.to_vec(),
            level_start,
            child_start,
            child_code,
            leaf_item,
            dense: Vec::new(),
            dense_offset: Vec::new(),
        };
        trie.build_dense(2.min(levels));
        Ok(trie)
    }

    /// Writes the CSR arrays as `trie.*.u32` files into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CatalogError> {
        use super::array::write_array;
        write_array(&dir.join("trie.level_start.u32"), &self.level_start)?;
        write_array(&dir.join("trie.child_start.u32"), &self.child_start)?;
        write_array(&dir.join("trie.child_code.u32"), &self.child_code)?;
        write_array(&dir.join("trie.leaf_item.u32"), &self.leaf_item)
    }

    /// Bytes the trie takes in memory (CSR arrays and dense tables).
    pub fn bytes(&self) -> usize {
        self.level_start.bytes()
            + self.child_start.bytes()
            + self.child_code.bytes()
            + self.leaf_item.bytes()
            + 4 * self.dense.len()
    }

    /// Number of leaves (items) under `node`: its subtree's leaves form one
    /// run of node ids, found by following first and last children down.
    pub fn leaves_under(&self, node: u32) -> u32 {
        let (lo, hi) = self.leaf_run(node);
        hi - lo
    }

    /// The leaves under `node` as one run of node ids `lo..hi` (empty for a
    /// node past the trie).
    pub fn leaf_run(&self, node: u32) -> (u32, u32) {
        if node as usize >= self.num_nodes() {
            return (0, 0);
        }
        let (mut lo, mut hi) = (node, node);
        for _ in self.depth(node)..self.levels {
            lo = self.child_start[lo as usize] + 1;
            hi = self.child_start[hi as usize + 1];
        }
        (lo, hi + 1)
    }

    fn build_dense(&mut self, depth: usize) {
        let mut dense = Vec::new();
        let mut offsets = Vec::new();
        for d in 0..depth {
            let codes = self.codebook_sizes[d] as usize;
            let (a, b) = (self.level_start[d], self.level_start[d + 1]);
            if (b - a) as usize * codes > DENSE_LIMIT {
                break;
            }
            offsets.push(dense.len());
            let base = dense.len();
            dense.resize(base + (b - a) as usize * codes, NONE);
            for node in a..b {
                let row = base + (node - a) as usize * codes;
                let (s, e) = self.edge_range(node);
                for edge in s..e {
                    dense[row + self.child_code[edge] as usize] = edge as u32 + 1;
                }
            }
        }
        self.dense = dense;
        self.dense_offset = offsets;
    }

    fn edge_range(&self, node: u32) -> (usize, usize) {
        let n = node as usize;
        (self.child_start[n] as usize, self.child_start[n + 1] as usize)
    }

    /// Identity of this build of the trie (equal ids, equal tries).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Number of code levels (depth of the leaves).
    pub fn levels(&self) -> usize {
        self.levels
    }

    pub fn codebook_sizes(&self) -> &[u32] {
        &self.codebook_sizes
    }

    pub fn num_nodes(&self) -> usize {
        *self.level_start.last().unwrap_or(&0) as usize
    }

    pub fn num_items(&self) -> usize {
        self.leaf_item.len()
    }

    /// Depth of a node (root = 0, leaves = `levels`).
    pub fn depth(&self, node: u32) -> usize {
        self.level_start.partition_point(|&s| s <= node) - 1
    }

    /// The valid children of `node`: their codes (sorted) and the node id of the
    /// first child; the child with `codes[i]` is node `first + i`. Empty for leaves.
    pub fn children(&self, node: u32) -> (&[u32], u32) {
        if node >= self.level_start[self.levels] {
            return (&[], NONE);
        }
        let (s, e) = self.edge_range(node);
        (&self.child_code[s..e], s as u32 + 1)
    }

    /// The child of `node` along `code`, if any.
    pub fn child(&self, node: u32, code: u32) -> Option<u32> {
        let d = self.depth(node);
        if d >= self.levels || code >= self.codebook_sizes[d] {
            return None;
        }
        if d < self.dense_offset.len() {
            let row = (node - self.level_start[d]) as usize * self.codebook_sizes[d] as usize;
            let c = self.dense[self.dense_offset[d] + row + code as usize];
            return (c != NONE).then_some(c);
        }
        let (codes, first) = self.children(node);
        codes.binary_search(&code).ok().map(|i| first + i as u32)
    }

    /// The item of a leaf node.
    pub fn item(&self, node: u32) -> Option<u32> {
        let leaves = self.level_start[self.levels];
        if node < leaves {
            return None;
        }
        self.leaf_item.get((node - leaves) as usize).copied()
    }

    /// The node reached by a (possibly partial) semantic ID.
    pub fn walk(&self, prefix: &[u32]) -> Option<u32> {
        prefix.iter().try_fold(0u32, |node, &c| self.child(node, c))
    }

    /// The item of a full semantic ID.
    pub fn lookup(&self, sid: &[u32]) -> Option<u32> {
        if sid.len() != self.levels {
            return None;
        }
        self.walk(sid).and_then(|leaf| self.item(leaf))
    }

    pub fn arrays(&self) -> TrieArrays<'_> {
        TrieArrays {
            level_start: &self.level_start[..],
            child_start: &self.child_start[..],
            child_code: &self.child_code[..],
            leaf_item: &self.leaf_item[..],
            codebook_sizes: &self.codebook_sizes,
            dense: &self.dense,
            dense_offset: &self.dense_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_sids(n: usize, sizes: &[u32], seed: u64) -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < n {
            let sid: Vec<u32> = sizes.iter().map(|&s| rng.random_range(0..s)).collect();
            seen.insert(sid);
        }
        // shuffle so item order differs from sorted order
        let mut all: Vec<Vec<u32>> = seen.into_iter().collect();
        for i in (1..all.len()).rev() {
            let j = rng.random_range(0..=i);
            all.swap(i, j);
        }
        all.concat()
    }

    #[test]
    fn every_item_found_and_children_match_brute_force() {
        let sizes = [5u32, 4, 6];
        let sids = random_sids(60, &sizes, 1);
        for dense in 0..=3 {
            let t = Trie::build_with_dense(&sids, 3, &sizes, dense).unwrap();
            assert_eq!(t.num_items(), 60);
            for i in 0..60 {
                assert_eq!(t.lookup(&sids[i * 3..i * 3 + 3]), Some(i as u32));
            }
            // children of every prefix == set of next codes among items with that prefix
            for d in 0..3 {
                let mut prefixes: Vec<&[u32]> = (0..60).map(|i| &sids[i * 3..i * 3 + d]).collect();
                prefixes.sort();
                prefixes.dedup();
                for p in prefixes {
                    let node = t.walk(p).unwrap();
                    assert_eq!(t.depth(node), d);
                    let mut want: Vec<u32> =
                        (0..60).filter(|&i| &sids[i * 3..i * 3 + d] == p).map(|i| sids[i * 3 + d]).collect();
                    want.sort();
                    want.dedup();
                    let (codes, first) = t.children(node);
                    assert_eq!(codes, &want[..]);
                    for (k, &c) in codes.iter().enumerate() {
                        assert_eq!(t.child(node, c), Some(first + k as u32));
                    }
                    for c in 0..sizes[d] {
                        assert_eq!(t.child(node, c).is_some(), want.contains(&c));
                    }
                }
            }
        }
    }

    #[test]
    fn leaves_under_counts_subtrees_and_files_roundtrip() {
        let sizes = [5u32, 4, 6];
        let sids = random_sids(80, &sizes, 4);
        let t = Trie::build(&sids, 3, &sizes).unwrap();
        assert_eq!(t.leaves_under(0), 80);
        for d in 0..=3 {
            let mut prefixes: Vec<&[u32]> = (0..80).map(|i| &sids[i * 3..i * 3 + d]).collect();
            prefixes.sort();
            prefixes.dedup();
            for p in prefixes {
                let want = (0..80).filter(|&i| &sids[i * 3..i * 3 + d] == p).count() as u32;
                assert_eq!(t.leaves_under(t.walk(p).unwrap()), want, "prefix {p:?}");
            }
        }
        let dir = std::env::temp_dir().join(format!("genrec-trie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.write(&dir).unwrap();
        let m = Trie::map(&dir, &sizes).unwrap();
        assert_ne!(m.id(), t.id());
        for i in 0..80 {
            assert_eq!(m.lookup(&sids[i * 3..i * 3 + 3]), Some(i as u32));
        }
        assert_eq!(m.arrays().child_code, t.arrays().child_code);
        assert_eq!(m.bytes(), t.bytes());
        // a damaged file is refused
        std::fs::write(dir.join("trie.child_start.u32"), [0u8; 4]).unwrap();
        assert!(Trie::map(&dir, &sizes).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        // the filter leaves items out, keeping indices
        let keep = |i: u32| i.is_multiple_of(2);
        let f = Trie::build_filtered(&sids, 3, &sizes, 2, Some(&keep)).unwrap();
        assert_eq!(f.num_items(), 40);
        assert_eq!(f.lookup(&sids[6..9]), Some(2));
        assert_eq!(f.lookup(&sids[3..6]), None);
    }

    /// Every entry of a mapped trie is checked: each kind of corruption that
    /// would send the beam step (or the kernel) out of bounds is refused and
    /// named, and what `build` writes passes.
    #[test]
    fn corrupt_trie_files_are_refused() {
        use crate::catalog::array::write_array;
        let sizes = [4u32, 3, 5];
        let sids = random_sids(40, &sizes, 7);
        let t = Trie::build(&sids, 3, &sizes).unwrap();
        let a = t.arrays();
        let dir = std::env::temp_dir().join(format!("genrec-trie-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.write(&dir).unwrap();
        Trie::map(&dir, &sizes).unwrap();
        let (first_leaf_parent, last) = (a.level_start[2] as usize, a.child_code.len() - 1);
        let cases: Vec<(&str, Vec<u32>, Vec<u32>, &str)> = vec![
            // a code at the codebook size (last depth has 5 codes)
            (
                "oversized code",
                a.child_start.to_vec(),
                {
                    let mut c = a.child_code.to_vec();
                    c[last] = 5;
                    c
                },
                "whose codebook has 5",
            ),
            // a node's first two codes made equal
            (
                "repeated code",
                a.child_start.to_vec(),
                {
                    let mut c = a.child_code.to_vec();
                    let n = (first_leaf_parent..a.level_start[3] as usize)
                        .find(|&n| a.child_start[n + 1] - a.child_start[n] >= 2)
                        .unwrap();
                    c[a.child_start[n] as usize + 1] = c[a.child_start[n] as usize];
                    c
                },
                "not strictly increasing",
            ),
            // an offset moved past its successor
            (
                "decreasing offsets",
                {
                    let mut o = a.child_start.to_vec();
                    o[1] = o[2] + 1;
                    o
                },
                a.child_code.to_vec(),
                "decrease",
            ),
            // the root's edges made to reach into depth 2
            (
                "edges across depths",
                {
                    let mut o = a.child_start.to_vec();
                    let d1 = a.level_start[1] as usize;
                    o[d1] += 1;
                    o[1] = o[1].max(o[d1]);
                    o
                },
                a.child_code.to_vec(),
                "do not lead to the nodes of depth",
            ),
        ];
        for (what, starts, codes, says) in cases {
            write_array(&dir.join("trie.child_start.u32"), &starts).unwrap();
            write_array(&dir.join("trie.child_code.u32"), &codes).unwrap();
            let e = Trie::map(&dir, &sizes).unwrap_err().to_string();
            assert!(e.contains(says), "{what}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absent_ids_and_bad_input() {
        let sids = vec![0, 0, 0, 1, 1, 0];
        let t = Trie::build(&sids, 2, &[2, 2]).unwrap();
        assert_eq!(t.lookup(&[0, 0]), Some(0));
        assert_eq!(t.lookup(&[1, 1]), None);
        assert_eq!(t.lookup(&[1]), None);
        assert_eq!(t.lookup(&[5, 0]), None);
        assert!(t.children(t.walk(&[0, 1]).unwrap()).0.is_empty());
        assert!(Trie::build(&[0, 0, 0, 0], 2, &[2, 2]).is_err(), "duplicate IDs");
        assert!(Trie::build(&[0, 3], 2, &[2, 2]).is_err(), "code out of range");
    }
}
