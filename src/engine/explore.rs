//! Exploration: `"explore": s` gives `round(s * k)` of a request's `k` items
//! to intents (first-level semantic-ID codes) that none of the history's items
//! belong to. A second search runs in the same batch, restricted to those
//! intents' sub-tries, so the model's own first-level probabilities choose
//! which new intents to show; its items are marked `explore` and placed after
//! the model's own best `k - round(s * k)`. A new user's request (a profile,
//! cold start) keeps the soft prior of the profile's intents in both searches,
//! so the new intents shown are those the profile and the model favour. Both
//! searches are deterministic, so the answer is the same for the same request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::generation::{wait, Generation};
use super::serving::Serving;
use super::state::{LoadedModel, ServedCatalog};
use super::EngineError;
use crate::catalog::Catalog;
use crate::generate::{GenRequest, Hit};

impl Serving {
    /// Runs `gen` through the batching queue, with exploration when `share`
    /// is above zero and the history leaves some intent unseen: the two
    /// searches are queued together and merged ([`merge`]). Returns how the
    /// generation ended and which of its items exploration added.
    pub(super) async fn generate_exploring(
        &self,
        gen: GenRequest,
        share: f32,
        model: Arc<LoadedModel>,
        cat: &Arc<ServedCatalog>,
        deadline: Instant,
    ) -> Result<(Generation, HashSet<u32>), EngineError> {
        let n = explore_count(gen.k, share);
        let absent = if n > 0 { absent_intents(&cat.catalog, &gen.history) } else { Vec::new() };
        if absent.is_empty() {
            let rx = self.submit(gen, model, cat, deadline)?;
            return Ok((wait(rx, deadline).await, HashSet::new()));
        }
        let (k, cap) = (gen.k, gen.max_per_intent);
        let twin = explore_request(&gen, absent);
        let main_rx = self.submit(gen, model.clone(), cat, deadline)?;
        let twin_rx = self.submit(twin, model, cat, deadline)?;
        let (main, twin) = (wait(main_rx, deadline).await, wait(twin_rx, deadline).await);
        Ok(match (main, twin) {
            (Generation::Done(a, ta), Generation::Done(b, tb)) => {
                let (hits, explored) = merge(&cat.catalog, a, b, k, n, cap);
                (Generation::Done(hits, ta + tb), explored)
            }
            (Generation::Done(..), other) | (other, _) => (other, HashSet::new()),
        })
    }
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

/// The answer of a request with exploration: `main`'s best `k - n`, then up to
/// `n` of `explore`'s items not already in (the set of those is returned),
/// then `main`'s next ones if exploration found too few; with a diversity cap
/// (`max_per_intent`), no first-level code gets more than the cap.
pub fn merge(
    catalog: &Catalog,
    main: Vec<Hit>,
    explore: Vec<Hit>,
    k: usize,
    n: usize,
    max_per_intent: Option<usize>,
) -> (Vec<Hit>, HashSet<u32>) {
    let cap = max_per_intent.unwrap_or(usize::MAX);
    let mut per_intent: HashMap<u32, usize> = HashMap::new();
    let mut taken: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(k);
    let mut explored = HashSet::new();
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
    for h in main.by_ref() {
        if out.len() >= k - n {
            // put it back in front of the rest for the top-up below
            let mut rest = vec![h];
            rest.extend(main);
            main = rest.into_iter();
            break;
        }
        push(h, &mut out);
    }
    for h in explore {
        if out.len() >= k {
            break;
        }
        let item = h.item;
        if push(h, &mut out) {
            explored.insert(item);
        }
    }
    for h in main {
        if out.len() >= k {
            break;
        }
        push(h, &mut out);
    }
    (out, explored)
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

    #[test]
    fn merge_places_exploration_after_the_main_share_and_tops_up() {
        let cat = random_catalog(40, &[4, 4, 3], 5);
        // exploration found an item the main search also has: it is not repeated
        let (out, explored) = merge(&cat, hits(&[1, 2, 3, 4, 5, 6]), hits(&[3, 20, 21]), 5, 2, None);
        assert_eq!(out.iter().map(|h| h.item).collect::<Vec<_>>(), vec![1, 2, 3, 20, 21]);
        assert_eq!(explored, HashSet::from([20, 21]));
        // too little exploration: the main search tops up
        let (out, explored) = merge(&cat, hits(&[1, 2, 3, 4, 5, 6]), hits(&[30]), 5, 3, None);
        assert_eq!(out.iter().map(|h| h.item).collect::<Vec<_>>(), vec![1, 2, 30, 3, 4]);
        assert_eq!(explored, HashSet::from([30]));
    }
}
