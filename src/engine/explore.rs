//! Twin searches that take slots of a list, queued in the same batch as the
//! request's own search and merged after its best items ([`merge`]):
//!
//! - **Exploration**: `"explore": s` gives `round(s * k)` of a request's `k`
//!   items to intents (first-level semantic-ID codes) that none of the
//!   history's items belong to. The twin is restricted to those intents'
//!   sub-tries, so the model's own first-level probabilities choose which new
//!   intents to show; its items are `"source": "explore"`. A new user's
//!   request (a profile, cold start) keeps the soft prior of the profile's
//!   intents in both searches, so the new intents shown are those the profile
//!   and the model favour.
//! - **Trending**: with a trending weight and `trending_share` below 1, the
//!   prior of [`crate::generate::trending`] steers a twin instead of the
//!   request's own search, and the twin's items take up to
//!   `round(trending_share * k)` slots (at least one), only those engaging
//!   at least `--trending-min-ratio` times the catalog's rate right now
//!   (their own [heat](crate::catalog::engagement::RatesAt::heat)); they are
//!   `"source": "trending"`, scored as the model scores them ([`hot_only`]).
//!   The personal list keeps the rest, so hot items no longer push out the
//!   model's own picks (`benches/results/live.md` measures both). A share
//!   of 1 puts the prior on the whole list, in one search; the exploration
//!   twin then carries the prior too (below 1 it does not). Personalized
//!   search and hard-steered cold start keep the prior on their own
//!   searches (no second search).
//!
//! A twin that the queue has no room for, that fails or that is late is
//! left out: the request's own search answers alone. Every search is
//! deterministic, so the answer is the same for the same request and the
//! same engagement.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::generation::{wait, Generation, Marks};
use super::request::ItemSource;
use super::serving::Serving;
use super::state::{LoadedModel, ServedCatalog};
use super::EngineError;
use crate::catalog::engagement::TrieCounts;
use crate::catalog::Catalog;
use crate::generate::{GenRequest, Hit};

/// The shares of a list that twin searches may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slots {
    /// Exploration's share of `k` (0: none).
    pub(super) explore: f32,
    /// The trending search's share of `k` (1: the prior is on the request's
    /// own search instead).
    pub(super) trending: f32,
    /// The heat (`ln` of the rate over the catalog's) a trending item needs.
    pub(super) min_heat: f32,
}

/// One twin's answer and the slots it may take.
pub struct Twin {
    pub hits: Vec<Hit>,
    pub slots: usize,
    pub source: ItemSource,
}

impl Serving {
    /// The shares of the request's list that twin searches may take.
    pub(super) fn slots(&self, req: &super::request::RecRequest) -> Slots {
        Slots {
            explore: req.explore,
            trending: req.trending_share.unwrap_or(self.opts.trending_share),
            min_heat: self.opts.trending_min_ratio.max(f32::MIN_POSITIVE).ln(),
        }
    }

    /// Runs `gen` through the batching queue with its twin searches (see the
    /// module comment), queued together and merged. Returns how the
    /// generation ended and which items the twins added.
    pub(super) async fn generate_with_slots(
        &self,
        mut gen: GenRequest,
        slots: Slots,
        model: Arc<LoadedModel>,
        cat: &Arc<ServedCatalog>,
        deadline: Instant,
    ) -> Result<(Generation, Marks), EngineError> {
        let k = gen.k;
        let mut twins: Vec<(GenRequest, usize, ItemSource)> = Vec::new();
        // the trending twin's weight and clock, to take its prior off again
        let mut prior = None;
        if gen.trending.is_some() && slots.trending < 1.0 {
            let trending = gen.trending.take();
            prior = trending.as_ref().map(|t| (t.weight, t.now_ms));
            // (a request that asks for trending gets a slot, however small its k)
            let n = explore_count(k, slots.trending).max(1);
            // (every lift 0: the twin would be the main search)
            if !self.engagement.is_flat() {
                twins.push((GenRequest { trending, ..gen.clone() }, n, ItemSource::Trending));
            }
        }
        let n = explore_count(k, slots.explore);
        let absent = if n > 0 { absent_intents(&cat.catalog, &gen.history) } else { Vec::new() };
        if !absent.is_empty() {
            twins.push((explore_request(&gen, absent), n, ItemSource::Explore));
        }
        let cap = gen.max_per_intent;
        let main_rx = self.submit(gen, model.clone(), cat, deadline)?;
        if twins.is_empty() {
            return Ok((wait(main_rx, deadline).await, Marks::new()));
        }
        // a twin the queue has no room for is left out: the request's own
        // search answers alone (as it does when a twin fails or is late)
        let pending: Vec<_> = twins
            .into_iter()
            .filter_map(|(q, n, source)| self.submit(q, model.clone(), cat, deadline).ok().map(|rx| (rx, n, source)))
            .collect();
        let (mut hits, mut tokens) = match wait(main_rx, deadline).await {
            Generation::Done(h, t) => (h, t),
            other => return Ok((other, Marks::new())),
        };
        let mut done = Vec::with_capacity(pending.len());
        for (rx, n, source) in pending {
            let Generation::Done(mut h, t) = wait(rx, deadline).await else {
                tracing::debug!(?source, "a twin search did not finish: the list is the request's own");
                continue;
            };
            tokens += t;
            if let (ItemSource::Trending, Some((weight, now))) = (source, prior) {
                h = self.hot_only(h, cat, weight, now, slots.min_heat);
            }
            done.push(Twin { hits: h, slots: n, source });
        }
        let marks;
        (hits, marks) = merge(&cat.catalog, hits, done, k, cap);
        Ok((Generation::Done(hits, tokens), marks))
    }

    /// [`hot_only`] with the engagement store at `now_ms`.
    fn hot_only(&self, hits: Vec<Hit>, cat: &ServedCatalog, weight: f32, now_ms: u64, min_heat: f32) -> Vec<Hit> {
        let rates = self.engagement.at(now_ms);
        let trie = cat.catalog.trie();
        let counts = TrieCounts(&trie);
        hot_only(hits, |i| rates.heat(i, cat.catalog.sid(i), &counts), weight, min_heat)
    }
}

/// The trending search's items that are hot enough (their own heat at
/// least `min_heat`), each scored as the model scores it: the prior the
/// search added along its path (`weight` times the item's heat, the sum of
/// the lifts) taken off again. Exact with `--scoring model` (the default),
/// up to events that arrived during the search; with `--scoring trie` the
/// prior also moved the normaliser, so it is close, not exact.
pub fn hot_only(hits: Vec<Hit>, heat: impl Fn(u32) -> Option<f32>, weight: f32, min_heat: f32) -> Vec<Hit> {
    hits.into_iter()
        .filter_map(|h| {
            let heat = heat(h.item).filter(|&x| x >= min_heat)?;
            Some(Hit { item: h.item, score: h.score - weight * heat })
        })
        .collect()
}

/// How many of `k` items exploration takes for share `share` (in [0, 1]).
pub fn explore_count(k: usize, share: f32) -> usize {
    ((k as f32 * share).round() as usize).min(k)
}

/// The first-level codes of the served trie that none of `history`'s items
/// start with, in code order.
pub fn absent_intents(catalog: &Catalog, history: &[u32]) -> Vec<u32> {
    let seen: HashSet<u32> = history.iter().filter_map(|&i| catalog.sid(i).first().copied()).collect();
    catalog.trie().children(0).map(|(code, _)| code).filter(|c| !seen.contains(c)).collect()
}

/// The exploring twin of `main`: the same request inside the `absent`
/// intents, asking for `main.k` items so that it has spares for the ones the
/// main search also found.
pub fn explore_request(main: &GenRequest, absent: Vec<u32>) -> GenRequest {
    let mut q = main.clone();
    q.within = absent;
    q
}

/// The answer of a request with twin searches: `main`'s best `k` minus the
/// twins' slots, then each twin's items not already in (up to its slots, in
/// the twins' order), then `main`'s next ones where the twins found too
/// few; with a diversity cap (`max_per_intent`), no first-level code gets
/// more than the cap. Returns the items each twin placed.
pub fn merge(
    catalog: &Catalog,
    main: Vec<Hit>,
    twins: Vec<Twin>,
    k: usize,
    max_per_intent: Option<usize>,
) -> (Vec<Hit>, Marks) {
    let cap = max_per_intent.unwrap_or(usize::MAX);
    let reserved: usize = twins.iter().map(|t| t.slots).sum();
    let mut per_intent: HashMap<u32, usize> = HashMap::new();
    let mut taken: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(k);
    let mut marks = Marks::new();
    let mut push = |h: Hit, out: &mut Vec<Hit>| {
        let intent = catalog.sid(h.item).first().copied().unwrap_or(0);
        let count = per_intent.entry(intent).or_insert(0);
        if *count >= cap || !taken.insert(h.item) {
            return false;
        }
        *count += 1;
        out.push(h);
        true
    };
    let mut main = main.into_iter();
    while out.len() < k.saturating_sub(reserved) {
        let Some(h) = main.next() else { break };
        push(h, &mut out);
    }
    for twin in twins {
        let mut placed = 0;
        for h in twin.hits {
            if placed >= twin.slots || out.len() >= k {
                break;
            }
            let item = h.item;
            if push(h, &mut out) {
                marks.insert(item, twin.source);
                placed += 1;
            }
        }
    }
    for h in main {
        if out.len() >= k {
            break;
        }
        push(h, &mut out);
    }
    (out, marks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::testutil::random_catalog;

    fn hits(items: &[u32]) -> Vec<Hit> {
        items.iter().map(|&item| Hit { item, score: -(item as f32) }).collect()
    }

    #[test]
    fn counts_round_and_stay_within_k() {
        assert_eq!(explore_count(10, 0.2), 2);
        assert_eq!(explore_count(10, 0.0), 0);
        assert_eq!(explore_count(10, 1.0), 10);
        assert_eq!(explore_count(3, 0.5), 2);
    }

    #[test]
    fn absent_intents_are_the_codes_the_history_lacks() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let history: Vec<u32> = (0..40).filter(|&i| cat.sid(i)[0] == 1).take(3).collect();
        let absent = absent_intents(&cat, &history);
        assert!(!absent.contains(&1));
        assert_eq!(absent.len(), 3);
        assert_eq!(absent_intents(&cat, &[]).len(), 4);
    }

    fn twin(items: &[u32], slots: usize, source: ItemSource) -> Twin {
        Twin { hits: hits(items), slots, source }
    }

    fn ids(out: &[Hit]) -> Vec<u32> {
        out.iter().map(|h| h.item).collect()
    }

    #[test]
    fn merge_places_exploration_after_the_main_share_and_tops_up() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let explore = ItemSource::Explore;
        // exploration found an item the main search also has: it is not repeated
        let (out, marks) = merge(&cat, hits(&[1, 2, 3, 4, 5, 6]), vec![twin(&[3, 20, 21], 2, explore)], 5, None);
        assert_eq!(ids(&out), vec![1, 2, 3, 20, 21]);
        assert_eq!(marks, Marks::from([(20, explore), (21, explore)]));
        // too little exploration: the main search tops up
        let (out, marks) = merge(&cat, hits(&[1, 2, 3, 4, 5, 6]), vec![twin(&[30], 3, explore)], 5, None);
        assert_eq!(ids(&out), vec![1, 2, 30, 3, 4]);
        assert_eq!(marks, Marks::from([(30, explore)]));
    }

    /// Only items with heat of their own, at least the threshold, keep their
    /// place, each scored without the prior.
    #[test]
    fn hot_only_keeps_hot_items_and_takes_the_prior_off() {
        let heat = |i: u32| match i {
            1 => Some(3.0),
            2 => Some(1.0),
            3 => None,
            _ => Some(2.5),
        };
        let found = vec![
            Hit { item: 1, score: 25.0 },
            Hit { item: 2, score: 9.0 },
            Hit { item: 3, score: 1.0 },
            Hit { item: 4, score: 20.0 },
        ];
        let kept = hot_only(found, heat, 10.0, 2.0);
        assert_eq!(kept, vec![Hit { item: 1, score: -5.0 }, Hit { item: 4, score: -5.0 }]);
    }

    /// Trending and exploration together: each twin takes at most its
    /// slots, in order, after the main search's best; a twin with nothing
    /// (no hot item) leaves the main search's list as it was.
    #[test]
    fn merge_gives_each_twin_its_slots_in_order() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        let (t, e) = (ItemSource::Trending, ItemSource::Explore);
        let main = || hits(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let (out, marks) = merge(&cat, main(), vec![twin(&[30, 31, 32], 2, t), twin(&[33, 34], 1, e)], 6, None);
        assert_eq!(ids(&out), vec![1, 2, 3, 30, 31, 33]);
        assert_eq!(marks, Marks::from([(30, t), (31, t), (33, e)]));
        let (out, marks) = merge(&cat, main(), vec![twin(&[], 3, t)], 6, None);
        assert_eq!(ids(&out), vec![1, 2, 3, 4, 5, 6]);
        assert!(marks.is_empty());
        // twins asking for all of k: they fill it, in order
        let (out, _) = merge(&cat, main(), vec![twin(&[30, 31, 32], 3, t), twin(&[33, 34], 3, e)], 4, None);
        assert_eq!(ids(&out), vec![30, 31, 32, 33]);
    }
}
