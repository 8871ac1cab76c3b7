//! Top-K metrics with one held-out target per user (the TIGER / SASRec
//! leave-one-out protocol): Recall@K is the hit rate, NDCG@K is `1 / log2(rank +
//! 2)` for a hit at 0-based `rank < K`, else 0.

use serde::Serialize;

/// Running sums of Recall/NDCG at 5 and 10.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TopKMetrics {
    #[serde(rename = "recall@5")]
    pub recall5: f64,
    #[serde(rename = "ndcg@5")]
    pub ndcg5: f64,
    #[serde(rename = "recall@10")]
    pub recall10: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    /// Users evaluated.
    pub users: usize,
}

/// Recall@k and NDCG@k of one ranked list against one target.
pub fn recall_ndcg_at(ranked: &[u32], target: u32, k: usize) -> (f64, f64) {
    match ranked.iter().take(k).position(|&i| i == target) {
        Some(rank) => (1.0, 1.0 / ((rank + 2) as f64).log2()),
        None => (0.0, 0.0),
    }
}

impl TopKMetrics {
    /// Adds one user's ranked list.
    pub fn add(&mut self, ranked: &[u32], target: u32) {
        let (r5, n5) = recall_ndcg_at(ranked, target, 5);
        let (r10, n10) = recall_ndcg_at(ranked, target, 10);
        self.recall5 += r5;
        self.ndcg5 += n5;
        self.recall10 += r10;
        self.ndcg10 += n10;
        self.users += 1;
    }

    /// Means over the users added so far.
    pub fn mean(&self) -> TopKMetrics {
        let n = self.users.max(1) as f64;
        TopKMetrics {
            recall5: self.recall5 / n,
            ndcg5: self.ndcg5 / n,
            recall10: self.recall10 / n,
            ndcg10: self.ndcg10 / n,
            users: self.users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        let ranked = [7, 3, 9, 1, 4, 8, 2, 6, 5, 0];
        assert_eq!(recall_ndcg_at(&ranked, 7, 5), (1.0, 1.0));
        let (r, n) = recall_ndcg_at(&ranked, 9, 5); // rank 2
        assert_eq!(r, 1.0);
        assert!((n - 0.5).abs() < 1e-12); // 1 / log2(4)
        assert_eq!(recall_ndcg_at(&ranked, 8, 5), (0.0, 0.0)); // rank 5
        let (r, n) = recall_ndcg_at(&ranked, 8, 10);
        assert_eq!(r, 1.0);
        assert!((n - 1.0 / 7f64.log2()).abs() < 1e-12);
        assert_eq!(recall_ndcg_at(&ranked, 42, 10), (0.0, 0.0));

        let mut m = TopKMetrics::default();
        m.add(&ranked, 7); // hit at 0
        m.add(&ranked, 8); // hit at 5: only @10
        m.add(&ranked, 42); // miss
        let avg = m.mean();
        assert_eq!(avg.users, 3);
        assert!((avg.recall5 - 1.0 / 3.0).abs() < 1e-12);
        assert!((avg.recall10 - 2.0 / 3.0).abs() < 1e-12);
        assert!((avg.ndcg5 - 1.0 / 3.0).abs() < 1e-12);
        assert!((avg.ndcg10 - (1.0 + 1.0 / 7f64.log2()) / 3.0).abs() < 1e-12);
    }
}
