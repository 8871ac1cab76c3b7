//! Popularity baselines of the cold-start evaluation (`genrec coldstart-eval
//! --methods ...`): what a new user's first items are best guessed as
//! without any model. `popularity` counts every interaction of the training
//! users; `first-popularity` counts only their first `first` items (new users
//! start with the catalog's "first items", not its overall best-sellers);
//! `first-popularity-age` ranks first items within the user's age bracket,
//! blended with the overall first-item list (a bracket is small).

use std::collections::HashMap;

use super::coldstart_eval::{score_list, ColdMetrics, ColdUser};
use super::eval::to_indices;
use crate::catalog::Catalog;
use crate::dataset::{cold_group, ColdGroup, Interactions};

/// Which interactions of a training user count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// All of them.
    All,
    /// The first this many.
    First(usize),
}

pub use crate::coldstart::age_bracket;

/// Each item's share of the counted interactions of the training users that
/// `keep` accepts (shares sum to one; empty when nothing is counted).
fn shares(
    catalog: &Catalog,
    inter: &Interactions,
    fraction: f64,
    counted: Counted,
    keep: impl Fn(&str) -> bool,
) -> HashMap<u32, f64> {
    let mut counts: HashMap<u32, f64> = HashMap::new();
    let mut total = 0f64;
    for (u, seq) in inter.users.iter().zip(&inter.sequences) {
        if cold_group(u, fraction) != ColdGroup::Train || !keep(u) {
            continue;
        }
        let items = to_indices(catalog, seq);
        let n = match counted {
            Counted::All => items.len(),
            Counted::First(f) => items.len().min(f),
        };
        for &i in &items[..n] {
            *counts.entry(i).or_default() += 1.0;
            total += 1.0;
        }
    }
    counts.values_mut().for_each(|c| *c /= total.max(1.0));
    counts
}

/// The `k` items of the highest score, ties by item index.
fn top(scores: &HashMap<u32, f64>, k: usize) -> Vec<u32> {
    let mut v: Vec<(u32, f64)> = scores.iter().map(|(&i, &s)| (i, s)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().take(k).map(|(i, _)| i).collect()
}

/// The most popular items among the training users' counted interactions.
pub fn popular(catalog: &Catalog, inter: &Interactions, fraction: f64, counted: Counted, k: usize) -> Vec<u32> {
    top(&shares(catalog, inter, fraction, counted, |_| true), k)
}

/// The first-item list of each age bracket: a bracket's own shares plus
/// `blend` times the shares over all training users; index 7 holds the
/// overall list, for users without an age.
pub fn popular_by_age(
    catalog: &Catalog,
    inter: &Interactions,
    users: &serde_json::Map<String, serde_json::Value>,
    fraction: f64,
    first: usize,
    blend: f64,
    k: usize,
) -> Vec<Vec<u32>> {
    let age = |u: &str| users.get(u).and_then(|r| r.get("age")).and_then(|a| a.as_u64()).map(|a| age_bracket(a as u32));
    let all = shares(catalog, inter, fraction, Counted::First(first), |_| true);
    let mut lists: Vec<Vec<u32>> = (0..7)
        .map(|b| {
            let mut s = shares(catalog, inter, fraction, Counted::First(first), |u| age(u) == Some(b));
            for (&i, &a) in &all {
                *s.entry(i).or_default() += blend * a;
            }
            top(&s, k)
        })
        .collect();
    lists.push(top(&all, k));
    lists
}

/// Scores one list per user (`list_of` picks it) as a method named `name`.
pub fn eval_lists<'a>(
    name: &str,
    users: &[ColdUser],
    k: usize,
    list_of: impl Fn(&ColdUser) -> &'a [u32],
) -> ColdMetrics {
    let (mut r, mut n) = (0.0, 0.0);
    for u in users {
        let (a, b) = score_list(list_of(u), &u.first, k);
        r += a;
        n += b;
    }
    let m = users.len().max(1) as f64;
    ColdMetrics {
        method: name.into(),
        users: users.len(),
        recall: r / m,
        ndcg: n / m,
        p50_ms: None,
        p90_ms: None,
        uncached_p50_ms: None,
        top_intents: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::tiny_catalog;

    /// Training users whose first items differ from their most frequent
    /// ones: `first-popularity` ranks the first items, `popularity` the rest,
    /// and the age brackets pull their own first items up.
    #[test]
    fn first_items_and_age_brackets_rank_their_own_items() {
        let cat = tiny_catalog();
        let id = |i: u32| cat.item_id(i).to_string();
        // every user is a training user at hold-out 0
        let mut users = Vec::new();
        let mut sequences = Vec::new();
        let mut profiles = serde_json::Map::new();
        for u in 0..6u32 {
            // first items: 0 for the young, 1 for the old; then 2 and 3, many times
            let first = if u < 3 { 0 } else { 1 };
            let mut seq = vec![id(first)];
            seq.extend([2, 3, 2, 3, 2].iter().map(|&i| id(i)));
            users.push(format!("u{u}"));
            sequences.push(seq);
            profiles.insert(format!("u{u}"), serde_json::json!({"age": if u < 3 { 20 } else { 60 }}));
        }
        let inter = Interactions { users, sequences };
        let all = popular(&cat, &inter, 0.0, Counted::All, 2);
        assert_eq!(all, vec![2, 3]);
        let first = popular(&cat, &inter, 0.0, Counted::First(1), 2);
        assert_eq!(first, vec![0, 1]);
        let by_age = popular_by_age(&cat, &inter, &profiles, 0.0, 1, 0.5, 1);
        assert_eq!((by_age[age_bracket(20)][0], by_age[age_bracket(60)][0]), (0, 1));
        // a bracket nobody is in falls back to the overall first items
        assert_eq!(by_age[age_bracket(40)], vec![0]);
        assert_eq!(by_age[7], vec![0]);
        assert_eq!(age_bracket(17), 0);
        assert_eq!(age_bracket(56), 6);
    }
}
