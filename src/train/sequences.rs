//! The training data of `genrec train`: each user's training part (all but
//! the last two items) as `[bos, codes of item 1, codes of item 2, ...]` in
//! windows of `max_history + 1` items, each token with its weight as a target
//! (recent targets weigh more; profile tokens are read, never targets), and
//! the `--first-items` sequences that teach the answer to an empty history.

use super::eval::to_indices;
use super::profile_prefix::PrefixDraw;
use crate::catalog::Catalog;
use crate::dataset::{train_part, Interactions};
use crate::model::Sidecar;

/// One training sequence: `[bos, codes of item 1, ...]` and, per token, its
/// weight as a target (`weights[0]`, the bos, is never a target).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSeq {
    pub tokens: Vec<u32>,
    pub weights: Vec<f32>,
}

/// Weight of a target `d` items before the end of its user's training part.
fn recency_weight(half_life: Option<f64>, d: usize) -> f32 {
    match half_life {
        Some(h) if h > 0.0 => 0.5f64.powf(d as f64 / h) as f32,
        _ => 1.0,
    }
}

/// Training sequences: windows of at most `max_history + 1` items over each
/// user's training part, each starting with `bos`, with each token's weight.
/// The window at the user's first item reads the user's profile prefix.
pub fn training_sequences(
    catalog: &Catalog,
    inter: &Interactions,
    sidecar: &Sidecar,
    max_history: usize,
    recency_half_life: Option<f64>,
    prefixes: &mut PrefixDraw,
) -> Vec<TrainSeq> {
    let win = max_history + 1;
    let levels = sidecar.levels();
    let mut out = Vec::new();
    for (u, seq) in inter.sequences.iter().enumerate() {
        let items = to_indices(catalog, seq);
        let part = train_part(&items);
        if part.len() < 2 {
            continue;
        }
        // windows end at the last item and step back by `max_history`, so each
        // item is a target once and every window has context
        let mut end = part.len();
        loop {
            let start = end.saturating_sub(win);
            let prefix = if start == 0 { prefixes.draw(u) } else { Vec::new() };
            let tokens = sidecar.request_tokens(&prefix, part[start..end].iter().map(|&i| catalog.sid(i)));
            let mut weights = vec![0.0; tokens.len()];
            let codes_from = 1 + prefix.len();
            for (t, w) in weights.iter_mut().enumerate().skip(codes_from) {
                let item = start + (t - codes_from) / levels;
                *w = recency_weight(recency_half_life, part.len() - 1 - item);
            }
            out.push(TrainSeq { tokens, weights });
            if start == 0 {
                break;
            }
            end = start + 1;
        }
    }
    out
}

/// `[bos, profile prefix, codes of item j]` for each of the first `n` items of
/// every user's training part, every code a target of weight 1 (see
/// [`super::TrainOptions::first_items`]).
pub fn first_item_sequences(
    catalog: &Catalog,
    inter: &Interactions,
    sidecar: &Sidecar,
    n: usize,
    prefixes: &mut PrefixDraw,
) -> Vec<TrainSeq> {
    let mut out = Vec::new();
    for (u, seq) in inter.sequences.iter().enumerate() {
        let items = to_indices(catalog, seq);
        for &item in train_part(&items).iter().take(n) {
            let prefix = prefixes.draw(u);
            let tokens = sidecar.request_tokens(&prefix, [catalog.sid(item)]);
            let mut weights = vec![1.0; tokens.len()];
            weights[..1 + prefix.len()].iter_mut().for_each(|w| *w = 0.0);
            out.push(TrainSeq { tokens, weights });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::generate::testutil::random_catalog;

    fn one_user(items: usize) -> Interactions {
        Interactions { users: vec!["u".into()], sequences: vec![(0..items).map(|i| i.to_string()).collect()] }
    }

    #[test]
    fn recency_weights_follow_the_distance_to_the_end_of_the_training_part() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        let sidecar = Sidecar::for_catalog("t", ".", cat.manifest(), 3);
        let levels = sidecar.levels();
        // 12 items: the training part is items 0..10; windows of 4 items
        let inter = one_user(12);
        let plain = training_sequences(&cat, &inter, &sidecar, 3, None, &mut PrefixDraw::none());
        assert!(plain.iter().all(|s| s.weights[0] == 0.0 && s.weights[1..].iter().all(|&w| w == 1.0)));
        let seqs = training_sequences(&cat, &inter, &sidecar, 3, Some(1.0), &mut PrefixDraw::none());
        assert_eq!(
            seqs.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(),
            plain.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>()
        );
        // the first window ends at the training part's last item (d = 0)
        let last = &seqs[0];
        assert_eq!(last.tokens.len(), 1 + 4 * levels);
        let per_item: Vec<f32> = (0..4).map(|k| last.weights[1 + k * levels]).collect();
        assert_eq!(per_item, vec![0.125, 0.25, 0.5, 1.0]);
        // every code of an item has the item's weight
        assert!(last.weights[1 + 3 * levels..].iter().all(|&w| w == 1.0));
        // the next window ends three items earlier (its last item overlaps as context)
        assert_eq!(seqs[1].weights[1 + 3 * levels], 0.125);
    }

    #[test]
    fn first_items_become_targets_of_the_start_token() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        let sidecar = Sidecar::for_catalog("t", ".", cat.manifest(), 3);
        // 12 items: the training part is items 0..10
        let inter = one_user(12);
        let items = to_indices(&cat, &inter.sequences[0]);
        let seqs = first_item_sequences(&cat, &inter, &sidecar, 4, &mut PrefixDraw::none());
        assert_eq!(seqs.len(), 4);
        for (s, &item) in seqs.iter().zip(&items) {
            assert_eq!(s.tokens, sidecar.history_tokens([cat.sid(item)]));
            assert_eq!(s.weights[0], 0.0);
            assert!(s.weights[1..].iter().all(|&w| w == 1.0));
        }
        // never past the training part, and none when off
        assert_eq!(first_item_sequences(&cat, &inter, &sidecar, 50, &mut PrefixDraw::none()).len(), 10);
        assert!(first_item_sequences(&cat, &inter, &sidecar, 0, &mut PrefixDraw::none()).is_empty());
    }

    #[test]
    fn sequences_at_the_first_item_read_the_profile_and_never_target_it() {
        let cat = random_catalog(40, &[4, 4, 3], 1);
        let features: HashMap<String, Vec<String>> =
            [("u".to_string(), vec!["age:18-24".to_string(), "interest:drama".to_string()])].into_iter().collect();
        let sidecar = Sidecar::for_catalog("t", ".", cat.manifest(), 3).with_profile(features["u"].clone());
        let vocab = sidecar.profile.clone().unwrap();
        assert_eq!(vocab.offset as usize, 3 + 11);
        let inter = one_user(12);
        let levels = sidecar.levels();
        let mut seen_prefix = 0;
        for seed in 0..20 {
            let mut draw = PrefixDraw::new(Some(&vocab), &inter, &features, seed);
            let seqs = training_sequences(&cat, &inter, &sidecar, 3, Some(1.0), &mut draw);
            // only the window at the first item has a prefix
            let (last, first) = (&seqs[0], seqs.last().unwrap());
            assert!(last.tokens[1..].iter().all(|&t| t < vocab.offset));
            let p = first.tokens.len() - 1 - 4 * levels;
            seen_prefix += p;
            assert!(first.tokens[1..1 + p].iter().all(|&t| t >= vocab.offset && t < vocab.end()));
            assert!(first.weights[..1 + p].iter().all(|&w| w == 0.0));
            // the codes keep their items' weights: item 0 is 9 items before the end
            assert!(first.weights[1 + p..1 + p + levels].iter().all(|&w| w == 0.5f32.powi(9)));
            for s in first_item_sequences(&cat, &inter, &sidecar, 4, &mut draw) {
                let p = s.tokens.len() - 1 - levels;
                assert!(s.weights[..1 + p].iter().all(|&w| w == 0.0) && s.weights[1 + p..].iter().all(|&w| w == 1.0));
            }
        }
        assert!(seen_prefix > 0);
    }
}
