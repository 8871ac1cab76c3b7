//! How full a catalog's semantic-ID space is, prefix by prefix: for each
//! k-means level, how many prefixes hold items, how many are full (their
//! subtree holds all the items the levels below can), and the densest one.
//! New items in a region whose prefixes are full land farther from their
//! nearest codes (see `edit.rs`), and an upsert is refused only when the
//! whole catalog is full; an operator reads this (`genrec catalog info`,
//! `GET /admin/catalog`) to re-index before either matters.

use super::Catalog;

/// The fill of one k-means level's prefixes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LevelFill {
    /// 0-based k-means level: prefixes of `level + 1` codes.
    pub level: usize,
    /// Items a prefix of this level can hold (the product of the sizes below).
    pub capacity: u64,
    /// Prefixes that hold at least one item.
    pub used: usize,
    /// Prefixes that hold `capacity` items: a new item nearest to one goes elsewhere.
    pub full: usize,
    /// The densest prefix and its fill (items / capacity, 0..1).
    pub densest: Vec<u32>,
    pub max_fill: f64,
}

/// The fill of every k-means level, and the free semantic IDs left.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Fullness {
    /// Semantic IDs no served item holds (the catalog refuses new items at 0).
    pub free_ids: u64,
    pub levels: Vec<LevelFill>,
}

impl Catalog {
    /// The fill of the catalog's prefixes (one walk over the trie's upper
    /// levels: O(prefixes), not O(items)).
    pub fn fullness(&self) -> Fullness {
        let trie = self.trie();
        let sizes = &self.manifest().codebook_sizes;
        let kmeans = sizes.len().saturating_sub(1);
        let capacity = |depth: usize| sizes[depth..].iter().fold(1u64, |a, &s| a.saturating_mul(s as u64));
        let mut levels: Vec<LevelFill> = (0..kmeans)
            .map(|level| LevelFill {
                level,
                capacity: capacity(level + 1),
                used: 0,
                full: 0,
                densest: Vec::new(),
                max_fill: 0.0,
            })
            .collect();
        // depth-first over the prefixes of the k-means levels
        let mut stack: Vec<(u32, Vec<u32>)> = vec![(0, Vec::new())];
        while let Some((node, prefix)) = stack.pop() {
            let l = &mut levels[prefix.len()];
            for (code, child) in trie.children(node) {
                let count = trie.count(child) as u64;
                let fill = count as f64 / l.capacity as f64;
                l.used += 1;
                l.full += usize::from(count >= l.capacity);
                let with = |code| prefix.iter().copied().chain(std::iter::once(code)).collect::<Vec<u32>>();
                // (ties: the lowest prefix)
                if fill > l.max_fill || (fill == l.max_fill && (l.densest.is_empty() || with(code) < l.densest)) {
                    l.max_fill = fill;
                    l.densest = with(code);
                }
                if prefix.len() + 1 < kmeans {
                    stack.push((child, with(code)));
                }
            }
        }
        let free_ids = capacity(0).saturating_sub(self.served_len() as u64);
        Fullness { free_ids, levels }
    }
}
