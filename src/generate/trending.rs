//! The trending prior: a request's weight times the log-lift of each trie
//! node's engagement right now over its parent's
//! ([`crate::catalog::engagement`]), added to the log-probability of every
//! child a beam may take, at every level. A
//! first-level cluster that is hot is explored by the beams, not only
//! re-ranked at the leaves; with no events every lift is 0 and the search is
//! the model's own.

use std::sync::Arc;

use crate::catalog::engagement::{Engagement, RatesAt, TrieCounts};
use crate::catalog::trie::NONE;
use crate::catalog::TrieView;

use super::GenRequest;

/// What a request's trending prior reads.
#[derive(Debug, Clone)]
pub struct Trending {
    /// Multiplies the log-lift (0: off).
    pub weight: f32,
    pub rates: Arc<Engagement>,
    /// The request's clock (the counts are decayed to it).
    pub now_ms: u64,
}

/// The prior of every request of a batch, read once per search, and each
/// beam's codes so far.
pub(super) struct TrendingPriors<'a> {
    per_request: Vec<Option<(f32, RatesAt<'a>)>>,
    /// Codes chosen so far, per beam slot (`requests x beams_in`).
    prefixes: Vec<Vec<u32>>,
}

impl<'a> TrendingPriors<'a> {
    /// `None` when no request of the batch has a trending weight.
    pub(super) fn new(reqs: &'a [GenRequest]) -> Option<Self> {
        let per_request: Vec<_> = reqs
            .iter()
            .map(|q| q.trending.as_ref().filter(|t| t.weight != 0.0).map(|t| (t.weight, t.rates.at(t.now_ms))))
            .collect();
        per_request
            .iter()
            .any(Option::is_some)
            .then(|| TrendingPriors { per_request, prefixes: vec![Vec::new(); reqs.len()] })
    }

    /// Adds the prior to this level's logits (`[requests x beams_in, codes]`)
    /// for every valid child of every live beam.
    pub(super) fn add(&self, trie: &TrieView, logits: &mut [f32], codes: usize, nodes: &[u32], beams_in: usize) {
        let last = self.prefixes.first().map_or(0, Vec::len) + 1 == trie.levels();
        for (beam, &node) in nodes.iter().enumerate() {
            let Some((w, rates)) = &self.per_request[beam / beams_in] else { continue };
            if node == NONE {
                continue;
            }
            let mut path = self.prefixes[beam].clone();
            let parent = rates.rate(&path, &TrieCounts(trie));
            let row = &mut logits[beam * codes..(beam + 1) * codes];
            for (c, child) in trie.children(node) {
                path.push(c);
                let lift = if last {
                    trie.item(child).map_or(0.0, |item| rates.lift_under(parent, &path, Some(item), 1.0))
                } else {
                    rates.lift_under(parent, &path, None, trie.count(child) as f64)
                };
                path.pop();
                row[c as usize] += w * lift;
            }
        }
    }

    /// The prior for beams whose codes so far are `prefixes` (one per beam
    /// slot), as if the search had chosen them.
    #[cfg(test)]
    pub(super) fn with_prefixes(mut self, prefixes: Vec<Vec<u32>>) -> Self {
        self.prefixes = prefixes;
        self
    }

    /// Follows the step's choices: slot `s` of the next level extends the
    /// beam `parent_row[s]` of this one by `code[s]`.
    pub(super) fn advance(&mut self, parent_row: &[u32], code: &[u32]) {
        self.prefixes = parent_row
            .iter()
            .zip(code)
            .map(|(&p, &c)| {
                let mut v = self.prefixes[p as usize].clone();
                v.push(c);
                v
            })
            .collect();
    }
}
