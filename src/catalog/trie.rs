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

use super::CatalogError;

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
    level_start: Vec<u32>,
    /// CSR offsets for internal nodes (depth < levels); `internal + 1` entries.
    child_start: Vec<u32>,
    /// Code on each edge; edge `e` leads to node `e + 1`.
    child_code: Vec<u32>,
    /// Item index of each leaf.
    leaf_item: Vec<u32>,
    /// Dense child tables for depths `< dense_depth`.
    dense: Vec<u32>,
    /// Offset of each dense depth's table inside `dense`.
    dense_offset: Vec<usize>,
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

    /// As [`Trie::build_with_dense`], over the items whose `live` flag is set
    /// (all when `None`); leaves keep the items' indices. Only live items need
    /// unique IDs.
    pub fn build_filtered(
        sids: &[u32],
        levels: usize,
        codebook_sizes: &[u32],
        dense_depth: usize,
        live: Option<&[bool]>,
    ) -> Result<Self, CatalogError> {
        if levels == 0 || codebook_sizes.len() != levels || sids.len() % levels != 0 {
            return Err(CatalogError::Format(format!(
                "trie: {} codes for {} levels with {} codebook sizes",
                sids.len(),
                levels,
                codebook_sizes.len()
            )));
        }
        let n = sids.len() / levels;
        let sid = |i: usize| &sids[i * levels..(i + 1) * levels];
        for i in 0..n {
            for (l, &c) in sid(i).iter().enumerate() {
                if c >= codebook_sizes[l] {
                    return Err(CatalogError::Format(format!(
                        "item {i}: code {c} at level {l} exceeds codebook size {}",
                        codebook_sizes[l]
                    )));
                }
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| live.is_none_or(|l| l.get(i).copied().unwrap_or(false))).collect();
        order.sort_by(|&a, &b| sid(a).cmp(sid(b)));
        let n = order.len();
        for w in order.windows(2) {
            if sid(w[0]) == sid(w[1]) {
                return Err(CatalogError::Format(format!(
                    "items {} and {} share semantic ID {:?}",
                    w[0],
                    w[1],
                    sid(w[0])
                )));
            }
        }

        // node_at[d][k]: node (within depth d) of the k-th item in sorted order.
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
            for (k, &item) in order.iter().enumerate() {
                let new = k == 0 || sid(order[k - 1])[..=d] != sid(item)[..=d];
                if new {
                    count += 1;
                    child_code.push(sid(item)[d]);
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
            leaf_item[prev_nodes[k] as usize] = item as u32;
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut trie = Trie {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            levels,
            codebook_sizes: codebook_sizes.to_vec(),
            level_start,
            child_start,
            child_code,
            leaf_item,
            dense: Vec::new(),
            dense_offset: Vec::new(),
        };
        trie.build_dense(dense_depth.min(levels));
        Ok(trie)
    }

    fn build_dense(&mut self, depth: usize) {
        let mut dense = Vec::new();
        let mut offsets = Vec::new();
        for d in 0..depth {
            offsets.push(dense.len());
            let codes = self.codebook_sizes[d] as usize;
            let (a, b) = (self.level_start[d], self.level_start[d + 1]);
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
            level_start: &self.level_start,
            child_start: &self.child_start,
            child_code: &self.child_code,
            leaf_item: &self.leaf_item,
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
                    let mut want: Vec<u32> = (0..60)
                        .filter(|&i| &sids[i * 3..i * 3 + d] == p)
                        .map(|i| sids[i * 3 + d])
                        .collect();
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
