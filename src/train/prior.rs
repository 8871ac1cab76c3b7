//! Prior-shift correction of a generated ranking: the held-out items come after
//! every training item, and the items bought last are a better guess of them
//! than all purchases (see `benches/split_novelty.py`). With
//! `p_now(i | h) ∝ p_train(i | h) · q_now(i) / q_train(i)` (label-shift
//! correction, as in logit adjustment), an item's log-score gets
//! `weight · (log q_recent(i) − log q_all(i))`, where `q_all` counts every
//! training purchase and `q_recent` counts a purchase `d` items before the end
//! of its user's training part `0.5^(d / half-life)` times. Both come from the
//! training parts only (all but the last two items of each user).

use crate::catalog::Catalog;
use crate::dataset::{train_part, Interactions};

use super::eval::to_indices;

/// How strongly, and with which recency, a ranking is shifted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorShift {
    /// Multiplier of the log-ratio (0: no shift, 1: the full correction).
    pub weight: f32,
    /// Half-life of a purchase in `q_recent`, in items.
    pub half_life: f64,
}

/// `log q_recent(i) − log q_all(i)` for every catalog item, each count
/// smoothed by one purchase's worth of its own mass.
pub fn recency_log_ratio(catalog: &Catalog, inter: &Interactions, half_life: f64) -> Vec<f32> {
    let n = catalog.len();
    let (mut all, mut recent) = (vec![0f64; n], vec![0f64; n]);
    for seq in &inter.sequences {
        let items = to_indices(catalog, seq);
        let part = train_part(&items);
        for (j, &i) in part.iter().enumerate() {
            all[i as usize] += 1.0;
            recent[i as usize] += 0.5f64.powf((part.len() - 1 - j) as f64 / half_life);
        }
    }
    let (all_mass, recent_mass): (f64, f64) = (all.iter().sum(), recent.iter().sum());
    if all_mass == 0.0 {
        return vec![0.0; n];
    }
    let unit = recent_mass / all_mass;
    let (za, zr) = (all_mass + n as f64, recent_mass + unit * n as f64);
    all.iter()
        .zip(&recent)
        .map(|(&a, &r)| (((r + unit) / zr).ln() - ((a + 1.0) / za).ln()) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::testutil::random_catalog;

    #[test]
    fn items_bought_late_gain_and_items_bought_early_lose() {
        let cat = random_catalog(10, &[4, 4], 1);
        let seq = |v: &[u32]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        // training parts: [1, 2, 3] for every user (the last two items are held out)
        let inter = Interactions { users: vec!["a".into(), "b".into()], sequences: vec![seq(&[1, 2, 3, 8, 9]), seq(&[1, 2, 3, 9, 8])] };
        let r = recency_log_ratio(&cat, &inter, 1.0);
        assert!(r[3] > 0.0 && r[1] < 0.0, "{r:?}");
        assert!(r[3] > r[2] && r[2] > r[1]);
        // items never bought in training keep the same share in both counts
        assert!(r[0].abs() < 1e-6 && (r[0] - r[8]).abs() < 1e-6);
        // a very long half-life weighs every purchase the same
        assert!(recency_log_ratio(&cat, &inter, 1e12).iter().all(|x| x.abs() < 1e-6));
    }
}
