//! What the beam-step kernel adds to a level's logits before it restricts,
//! normalises and selects, as flat arrays: the first level's soft-steering
//! prior, the new-item rule of [`crate::generate::new_items`] and the
//! trending prior of [`crate::generate::trending`]. The CPU search applies the
//! same three to its logits in `beam.rs`, in the same order (prior, then
//! siblings, then trending) and with the same float operations, so the kernel
//! and its CPU port ([`super::mirror`]) give the CPU search's answer.
//!
//! The trending prior is a function of the child node (a prefix's lift, or
//! at the last level the item's), so the kernel reads it as a sorted list of
//! `(node, lift)` pairs per request, built once per search from the
//! engagement store's nodes with events
//! ([`crate::catalog::engagement::RatesAt::nodes`]): nodes without events
//! have lift 0. Requests that read the same store at the same
//! moment share one list. Building a list costs O(prefixes and items with
//! events).

use std::sync::Arc;

use crate::catalog::engagement::{Node, RatesAt, TrieCounts};
use crate::catalog::{Catalog, TrieView};
use crate::generate::{GenRequest, GenerateError};

/// The priors of one level.
#[derive(Debug, Clone, Default)]
pub struct LevelPriors {
    /// `[requests, codes]` added to the first level's logits (`-0.0`, which
    /// adds nothing, for requests without one); empty: none.
    pub first: Vec<f32>,
    /// Per request, 1 to score a new leaf as its best trained sibling (last
    /// level, catalogs with items added since indexing); empty: none.
    pub siblings: Vec<u32>,
    /// Rows the catalog had when indexed: leaves of items at or past it are new.
    pub trained_rows: u32,
}

/// The trending lifts of a search's requests (see the module comment).
#[derive(Debug, Clone, Default)]
pub struct TrendTables {
    /// Per request, the weight of its lift (0: off); empty: no request has one.
    pub weight: Vec<f32>,
    /// Request `r` reads `node[lo[r]..hi[r]]` (sorted) and their `lift`s.
    pub lo: Vec<u32>,
    pub hi: Vec<u32>,
    pub node: Vec<u32>,
    pub lift: Vec<f32>,
}

/// No priors: what a step of a pristine, unsteered search reads.
pub static NO_PRIORS: LevelPriors = LevelPriors { first: Vec::new(), siblings: Vec::new(), trained_rows: 0 };
pub static NO_TREND: TrendTables =
    TrendTables { weight: Vec::new(), lo: Vec::new(), hi: Vec::new(), node: Vec::new(), lift: Vec::new() };

impl LevelPriors {
    /// The priors of `level` for a batch (errors as the CPU search's: a
    /// first-level prior must have one value per code).
    pub fn new(catalog: &Catalog, reqs: &[GenRequest], level: usize) -> Result<Self, GenerateError> {
        let codes = catalog.trie().codebook_sizes().get(level).copied().unwrap_or(0) as usize;
        let mut out =
            LevelPriors { trained_rows: catalog.trained_rows().min(u32::MAX as usize) as u32, ..Default::default() };
        if level == 0 && reqs.iter().any(|q| !q.first_level_prior.is_empty()) {
            out.first = vec![-0.0; reqs.len() * codes];
            for (row, q) in out.first.chunks_exact_mut(codes.max(1)).zip(reqs) {
                let p = first_level_prior(q, codes)?;
                if !p.is_empty() {
                    row.copy_from_slice(p);
                }
            }
        }
        if level + 1 == catalog.levels() && crate::generate::new_items::applies(catalog, reqs) {
            out.siblings = reqs.iter().map(|q| q.new_items_as_siblings as u32).collect();
        }
        Ok(out)
    }
}

/// A request's first-level prior (empty for none), checked to have one
/// value per first-level code (the CPU search reads it through here too).
pub fn first_level_prior(q: &GenRequest, codes: usize) -> Result<&[f32], GenerateError> {
    let p = &q.first_level_prior;
    if !p.is_empty() && p.len() != codes {
        return Err(GenerateError::Invalid(format!("a first-level prior has {} values for {codes} codes", p.len())));
    }
    Ok(p)
}

impl TrendTables {
    /// The lifts of every request with a trending weight, by node of the
    /// catalog's trie as `view` shows it.
    pub fn new(catalog: &Catalog, view: &TrieView, reqs: &[GenRequest]) -> Self {
        fn on(q: &GenRequest) -> Option<&crate::generate::trending::Trending> {
            q.trending.as_ref().filter(|t| t.weight != 0.0)
        }
        if !reqs.iter().any(|q| on(q).is_some()) {
            return TrendTables::default();
        }
        let mut out = TrendTables::default();
        // one list per (store, moment)
        let mut built: Vec<(*const crate::catalog::engagement::Engagement, u64, u32, u32)> = Vec::new();
        for q in reqs {
            let Some(t) = on(q) else {
                out.weight.push(0.0);
                out.lo.push(0);
                out.hi.push(0);
                continue;
            };
            let key = (Arc::as_ptr(&t.rates), t.now_ms);
            let (lo, hi) = match built.iter().find(|b| (b.0, b.1) == key) {
                Some(b) => (b.2, b.3),
                None => {
                    let lo = out.node.len() as u32;
                    for (node, lift) in node_lifts(catalog, view, &t.rates.at(t.now_ms)) {
                        out.node.push(node);
                        out.lift.push(lift);
                    }
                    let hi = out.node.len() as u32;
                    built.push((key.0, key.1, lo, hi));
                    (lo, hi)
                }
            };
            out.weight.push(t.weight);
            out.lo.push(lo);
            out.hi.push(hi);
        }
        out
    }

    /// Request `r`'s weight and the lift of `node` (0 when it has no events).
    pub fn lift(&self, r: usize, node: u32) -> Option<(f32, f32)> {
        let w = *self.weight.get(r)?;
        if w == 0.0 {
            return None;
        }
        let (lo, hi) = (self.lo[r] as usize, self.hi[r] as usize);
        let l = self.node[lo..hi].binary_search(&node).map_or(0.0, |i| self.lift[lo + i]);
        Some((w, l))
    }
}

/// The lifts by node of `view`, sorted: a prefix's at the node it leads to,
/// an item's at its leaf (when the item is still there).
fn node_lifts(catalog: &Catalog, view: &TrieView, rates: &RatesAt) -> Vec<(u32, f32)> {
    let mut out: Vec<(u32, f32)> = rates
        .nodes()
        .iter()
        .filter_map(|n| {
            let (node, lift) = match n {
                Node::Prefix(codes) if codes.len() < view.levels() => {
                    (view.walk(codes)?, rates.lift(codes, None, &TrieCounts(view)))
                }
                Node::Prefix(_) => return None,
                Node::Item(i) if (*i as usize) < catalog.len() => {
                    let sid = catalog.sid(*i);
                    let leaf = view.walk(sid)?;
                    (view.item(leaf) == Some(*i)).then_some((leaf, rates.lift(sid, Some(*i), &TrieCounts(view))))?
                }
                Node::Item(_) => return None,
            };
            (lift != 0.0).then_some((node, lift))
        })
        .collect();
    out.sort_unstable_by_key(|p| p.0);
    out
}
