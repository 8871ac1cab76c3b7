//! The best `k` hits of a scan ([`super::ivf`]), kept bounded.

/// The best `k` hits of a scan, best first (ties to the smaller item),
/// kept in a buffer that is cut back to `k` whenever it fills, so that a
/// scan of 10^6 items holds a few hundred and skips most below the cut.
pub(super) struct TopK {
    k: usize,
    hits: Vec<(u32, f32)>,
    /// The `k`-th best score at the last cut: lower ones cannot enter.
    pub(super) floor: f32,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        TopK { k, hits: Vec::with_capacity(Self::room(k)), floor: f32::NEG_INFINITY }
    }

    fn room(k: usize) -> usize {
        (4 * k).max(256)
    }

    pub(super) fn by_score(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    }

    pub(super) fn push(&mut self, item: u32, score: f32) {
        if score < self.floor || self.k == 0 {
            return;
        }
        self.hits.push((item, score));
        if self.hits.len() >= Self::room(self.k) {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.hits.len() > self.k {
            self.hits.select_nth_unstable_by(self.k - 1, Self::by_score);
            self.hits.truncate(self.k);
            self.floor = self.hits.iter().map(|h| h.1).fold(f32::INFINITY, f32::min);
        }
    }

    pub(super) fn merge(mut self, other: TopK) -> TopK {
        for (item, score) in other.hits {
            self.push(item, score);
        }
        self
    }

    pub(super) fn into_sorted(mut self) -> Vec<(u32, f32)> {
        self.cut();
        self.hits.sort_by(Self::by_score);
        self.hits
    }
}
