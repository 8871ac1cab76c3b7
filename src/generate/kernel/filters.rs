//! Which children each request may select at a level, as the beam-step kernel
//! reads it: per-request sorted lists of trie nodes in CSR form. `allow` holds
//! the nodes a request may enter at this level (an empty list allows all): the
//! prefixes of its allowed items (a personalized search), at the first level
//! also only those under its cold-start intents; `ban` the leaves of its
//! excluded items. The CPU search applies the
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
    /// Filters for `level`: allowed items' prefixes at every level, intents
    /// (`within`) at the first, excluded items at the last; `None` where no
    /// request has any.
    pub fn new(catalog: &Catalog, reqs: &[GenRequest], level: usize) -> Self {
        let trie = &catalog.trie();
        let restricted = |q: &GenRequest| q.allowed.is_some() || (level == 0 && !q.within.is_empty());
        let allow = reqs.iter().any(restricted).then(|| {
            NodeLists::from_lists(reqs.iter().map(|q| {
                if !restricted(q) {
                    return Vec::new();
                }
                let mut nodes: Vec<u32> = match &q.allowed {
                    Some(items) => items
                        .iter()
                        .filter(|&&item| (item as usize) < catalog.len())
                        .filter_map(|&item| trie.walk(&catalog.sid(item)[..=level]))
                        .collect(),
                    None => q.within.iter().filter_map(|&c| trie.child(0, c)).collect(),
                };
                if level == 0 && q.allowed.is_some() && !q.within.is_empty() {
                    let intents: Vec<u32> = q.within.iter().filter_map(|&c| trie.child(0, c)).collect();
                    nodes.retain(|n| intents.contains(n));
                }
                if nodes.is_empty() {
                    // nothing allowed: allow nothing (an empty list would allow all)
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
