//! Diversity inside the beam search: at most `max_per_intent` items per
//! first-level semantic-ID code (an "intent": a top-level cluster of the
//! residual quantiser) in a request's answer.
//!
//! The cap is not applied by dropping items from a finished list, which would
//! leave fewer than `k`; every beam step keeps its best continuations subject
//! to a per-group limit, so the slots a crowded cluster gives up go to other
//! clusters while there is still room to search them. A beam's group is the
//! first-level code it descends from. The last step keeps at most
//! `max_per_intent` per group; earlier steps keep `beam * max_per_intent / k`
//! prefixes per group (at least `max_per_intent`), the same share of the beam
//! as the cap is of the answer. With a beam that holds every prefix, the
//! search is exact: the answer is the best `k` items with at most
//! `max_per_intent` per group (the tests check this against enumeration).

use super::GenRequest;

/// A per-request cap on the continuations a beam step keeps per group.
#[derive(Debug, Clone, Copy)]
pub struct GroupCap<'a> {
    /// The group of each input beam; `None` at the first level, where a
    /// continuation's group is its own code.
    pub beam_group: Option<&'a [u32]>,
    /// Per request: the most continuations kept per group.
    pub limit: &'a [u32],
}

/// Per request, the most continuations per group that the step at `level` of
/// `levels` keeps with `beam` slots (`u32::MAX` for uncapped requests).
pub fn level_limits(reqs: &[GenRequest], beam: usize, level: usize, levels: usize) -> Vec<u32> {
    reqs.iter()
        .map(|q| match q.max_per_intent {
            None => u32::MAX,
            Some(cap) if level + 1 == levels => cap as u32,
            Some(cap) => (beam * cap).div_ceil(q.k.max(1)).max(cap) as u32,
        })
        .collect()
}

/// Whether any request of the batch is capped.
pub fn any_capped(reqs: &[GenRequest]) -> bool {
    reqs.iter().any(|q| q.max_per_intent.is_some())
}

/// The first `want` items of `sorted` (best first) with at most `limit` per
/// group: greedy, which is optimal for a per-group cap.
pub fn take_capped<T>(sorted: Vec<T>, want: usize, limit: u32, group: impl Fn(&T) -> u32) -> Vec<T> {
    let mut per_group: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(want.min(sorted.len()));
    for c in sorted {
        if out.len() == want {
            break;
        }
        let n = per_group.entry(group(&c)).or_insert(0);
        if *n < limit {
            *n += 1;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_take_honours_the_cap_and_fills_from_other_groups() {
        // (score order, group)
        let items = vec![(0, 7), (1, 7), (2, 7), (3, 1), (4, 7), (5, 2)];
        let got = take_capped(items, 4, 2, |&(_, g)| g);
        assert_eq!(got, vec![(0, 7), (1, 7), (3, 1), (5, 2)]);
    }

    #[test]
    fn limits_are_the_cap_at_the_last_level_and_the_beam_share_before() {
        let q = |cap| GenRequest { k: 10, max_per_intent: cap, ..Default::default() };
        let reqs = [q(Some(2)), q(None)];
        assert_eq!(level_limits(&reqs, 20, 2, 3), vec![2, u32::MAX]);
        assert_eq!(level_limits(&reqs, 20, 1, 3), vec![4, u32::MAX]);
        assert_eq!(level_limits(&reqs, 10, 0, 3), vec![2, u32::MAX]);
    }
}
