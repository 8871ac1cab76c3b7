//! Which children each request may select at a level, as the beam-step kernel
//! reads it: per-request sorted lists of trie nodes in CSR form. `allow` holds
//! the depth-1 nodes of a request's cold-start intents (an empty list allows
//! all), `ban` the leaves of its excluded items. The CPU search applies the
//! same rules through its `keep` closure; `keep` below is that rule, read from
//! the lists.

use super::super::GenRequest;
use crate::catalog::trie::NONE;
use crate::catalog::Catalog;

/// Per-request sorted node lists: request `r` owns `nodes[start[r]..start[r + 1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLists {
    pub start: Vec<u32>,
    pub nodes: Vec<u32>,
}

impl NodeLists {
    /// One list per request (sorted and deduplicated here).
    pub fn from_lists(lists: impl Iterator<Item = Vec<u32>>) -> Self {
        let mut out = NodeLists { start: vec![0], nodes: Vec::new() };
        for mut l in lists {
            l.sort_unstable();
            l.dedup();
            out.nodes.extend(l);
            out.start.push(out.nodes.len() as u32);
        }
        out
    }

    /// The sorted list of request `r`.
    pub fn of(&self, r: usize) -> &[u32] {
        &self.nodes[self.start[r] as usize..self.start[r + 1] as usize]
    }
}

/// The child filters of one level.
#[derive(Debug, Clone, Default)]
pub struct LevelFilters {
    pub allow: Option<NodeLists>,
    pub ban: Option<NodeLists>,
}

impl LevelFilters {
    /// Filters for `level`: intents (`within`) at the first level, excluded
    /// items at the last; `None` where no request has any.
    pub fn new(catalog: &Catalog, reqs: &[GenRequest], level: usize) -> Self {
        let trie = &catalog.trie();
        let allow = (level == 0 && reqs.iter().any(|q| !q.within.is_empty())).then(|| {
            NodeLists::from_lists(reqs.iter().map(|q| {
                let mut nodes: Vec<u32> = q.within.iter().filter_map(|&c| trie.child(0, c)).collect();
                if nodes.is_empty() && !q.within.is_empty() {
                    // intents with no items: allow nothing (an empty list would allow all)
                    nodes.push(NONE);
                }
                nodes
            }))
        });
        let last = level + 1 == trie.levels();
        let ban = (last && reqs.iter().any(|q| !q.exclude.is_empty())).then(|| {
            NodeLists::from_lists(reqs.iter().map(|q| {
                q.exclude
                    .iter()
                    .filter(|&&item| (item as usize) < catalog.len())
                    .filter_map(|&item| trie.walk(catalog.sid(item)).filter(|&leaf| trie.item(leaf) == Some(item)))
                    .collect()
            }))
        });
        LevelFilters { allow, ban }
    }

    /// Whether request `r` may select child `node`.
    pub fn keep(&self, r: usize, node: u32) -> bool {
        let allowed = self.allow.as_ref().is_none_or(|a| a.of(r).is_empty() || a.of(r).binary_search(&node).is_ok());
        allowed && self.ban.as_ref().is_none_or(|b| b.of(r).binary_search(&node).is_err())
    }
}
