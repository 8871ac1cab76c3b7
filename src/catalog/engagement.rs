//! Real-time engagement: what happens to items after they are added
//! (impressions, clicks, purchases, watches), as exponentially decayed counts
//! per item and per semantic-ID prefix, so that every trie node knows its
//! subtree's activity right now.
//!
//! Counts are kept relative to a reference time `t_ref`: an event of weight
//! `w` at time `ts` adds `w * 2^((ts - t_ref) / half_life)`, and the decayed
//! count at `now` is the sum times `2^(-(now - t_ref) / half_life)`. Adding
//! is then order-free, so replicas that apply the same events in any order
//! hold the same counts up to float rounding (relative 1e-12; the reference
//! time is moved forward, and the sums rescaled, once an hour). An event
//! touches one entry per level plus the item's own: O(levels).
//!
//! Memory: one entry per item with events (a 64-bit key and four f64 sums:
//! 40 bytes, about 56 with the hash table's overhead), plus one per active
//! prefix (shared by the items under it). Entries that decayed below
//! [`FORGET_BELOW`] are dropped at each rescale, so the store holds what
//! happened in the last hours, not the catalog.
//!
//! The trending prior ([`RatesAt::lift`]) reads rates smoothed down the
//! trie: a node's `r = (engagement + a * r_parent) / (exposure + a)` with
//! `a` pseudo-units of exposure at its parent's rate (the root's parent rate
//! is the catalog-wide `p`), and its lift is `ln(r / r_parent)`: 0 for a node
//! with no engagement, positive for a node engaging more than its siblings
//! right now, negative for less. The lifts along a path add up to the item's
//! `ln(r_item / p)` (its [heat](RatesAt::heat)), so a hot item is lifted once,
//! not once per level of a popular cluster. The exposure is chosen once per
//! store ([`Exposure`]):
//! - **items** (the default): the served items under the node, `a` =
//!   [`ITEM_SMOOTHING`]. The rate is engagement per item per unit of time:
//!   how fast the node is being taken up right now, whatever showed it.
//! - **impressions**: the node's decayed impressions, `a` =
//!   [`SMOOTHING_IMPRESSIONS`]: engagement per impression (a click rate).
//!   Measured on the live world (`benches/results/live.md`) it punishes what
//!   the prior promotes: an item shown to every user gathers impressions from
//!   users who do not want it, its rate falls below the personal picks', and
//!   it drops out until hidden again.

use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;

/// What happened to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Impression,
    Click,
    Purchase,
    Watch,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [EventKind::Impression, EventKind::Click, EventKind::Purchase, EventKind::Watch];

    fn slot(self) -> usize {
        self as usize
    }
}

/// One event, resolved against the catalog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub item: u32,
    pub kind: EventKind,
    /// ms since the Unix epoch.
    pub ts_ms: u64,
    /// Weight (1 by default; e.g. a watch's fraction or seconds).
    pub value: f32,
}

/// What a node's engagement is divided by before nodes are compared (see
/// the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Exposure {
    /// The served items under the node: engagement per item.
    #[default]
    Items,
    /// The node's impressions: engagement per impression.
    Impressions,
}

/// How many served items lie under a prefix (what [`Exposure::Items`]
/// divides by): the trie's count, or any function of the codes.
pub trait ItemCounts {
    fn under(&self, codes: &[u32]) -> f64;
}

impl<F: Fn(&[u32]) -> f64> ItemCounts for F {
    fn under(&self, codes: &[u32]) -> f64 {
        self(codes)
    }
}

/// The served trie's counts.
pub struct TrieCounts<'t, 'a>(pub &'t crate::catalog::TrieView<'a>);

impl ItemCounts for TrieCounts<'_, '_> {
    fn under(&self, codes: &[u32]) -> f64 {
        self.0.walk(codes).map_or(0, |n| self.0.count(n)) as f64
    }
}

/// Default half-life of the decayed counts: 10 minutes.
pub const DEFAULT_HALF_LIFE_MS: u64 = 10 * 60 * 1000;
/// Pseudo-impressions at the parent's rate that smooth a node's rate
/// (impressions exposure).
pub const SMOOTHING_IMPRESSIONS: f64 = 20.0;
/// Pseudo-items at the parent's rate that smooth a node's rate (items exposure).
pub const ITEM_SMOOTHING: f64 = 1.0;
/// Decayed sums below this are forgotten at a rescale.
pub const FORGET_BELOW: f64 = 1e-3;
/// How often the reference time moves forward.
const RESCALE_EVERY_MS: u64 = 60 * 60 * 1000;
const SHARDS: usize = 64;

/// Decayed counts per kind.
pub type Counts = [f64; 4];

/// The store (see the module comment). Shared by request threads (reads)
/// and the threads applying events (writes); no reader sees a half-added
/// event's entry (each entry changes under its shard's lock).
#[derive(Debug)]
pub struct Engagement {
    half_life_ms: u64,
    exposure: Exposure,
    /// Codes per level (the catalog's codebook sizes): prefix keys.
    sizes: Vec<u32>,
    /// The reference time; written (with every shard rescaled) at a rescale.
    t_ref: RwLock<u64>,
    shards: Vec<Mutex<HashMap<u64, Counts>>>,
}

/// The key of a prefix of `len` codes (1..=levels-1), or of an item.
fn prefix_key(sizes: &[u32], codes: &[u32]) -> u64 {
    let mut k = 0u64;
    for (c, s) in codes.iter().zip(sizes) {
        k = k.wrapping_mul(*s as u64).wrapping_add(*c as u64);
    }
    ((codes.len() as u64) << 56) | (k & ((1 << 56) - 1))
}

fn item_key(item: u32) -> u64 {
    (0xFFu64 << 56) | item as u64
}

/// The catalog-wide sums.
const ROOT_KEY: u64 = 0;

fn shard_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS
}

impl Engagement {
    pub fn new(codebook_sizes: &[u32], half_life_ms: u64, now_ms: u64) -> Self {
        Engagement {
            half_life_ms: half_life_ms.max(1),
            exposure: Exposure::default(),
            sizes: codebook_sizes.to_vec(),
            t_ref: RwLock::new(now_ms),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// The same store dividing by `exposure` (before it is shared).
    pub fn with_exposure(self, exposure: Exposure) -> Self {
        Engagement { exposure, ..self }
    }

    pub fn exposure(&self) -> Exposure {
        self.exposure
    }

    pub fn half_life_ms(&self) -> u64 {
        self.half_life_ms
    }

    fn scale(&self, ts: u64, t_ref: u64) -> f64 {
        ((ts as f64 - t_ref as f64) / self.half_life_ms as f64).exp2()
    }

    fn add_key(&self, key: u64, slot: usize, w: f64) {
        let mut s = self.shards[shard_of(key)].lock();
        s.entry(key).or_insert([0.0; 4])[slot] += w;
    }

    /// Adds events (`sid_of(item)` is the item's semantic ID): to the item,
    /// every prefix of its ID, and the catalog-wide sums.
    pub fn add<'s>(&self, events: &[Event], sid_of: impl Fn(u32) -> &'s [u32], now_ms: u64) {
        self.maybe_rescale(now_ms);
        let t_ref = self.t_ref.read();
        for e in events {
            let w = e.value as f64 * self.scale(e.ts_ms, *t_ref);
            if !w.is_finite() || w <= 0.0 {
                continue;
            }
            let slot = e.kind.slot();
            let sid = sid_of(e.item);
            self.add_key(ROOT_KEY, slot, w);
            for l in 1..sid.len() {
                self.add_key(prefix_key(&self.sizes, &sid[..l]), slot, w);
            }
            self.add_key(item_key(e.item), slot, w);
        }
    }

    fn get(&self, key: u64) -> Counts {
        self.shards[shard_of(key)].lock().get(&key).copied().unwrap_or_default()
    }

    /// Moves the reference time to `now` when it is over an hour behind,
    /// rescaling every sum and forgetting those that decayed away.
    fn maybe_rescale(&self, now_ms: u64) {
        if now_ms < *self.t_ref.read() + RESCALE_EVERY_MS {
            return;
        }
        let mut t_ref = self.t_ref.write();
        if now_ms < *t_ref + RESCALE_EVERY_MS {
            return;
        }
        let f = self.scale(*t_ref, now_ms);
        for shard in &self.shards {
            shard.lock().retain(|_, c| {
                c.iter_mut().for_each(|x| *x *= f);
                c.iter().any(|&x| x >= FORGET_BELOW)
            });
        }
        *t_ref = now_ms;
    }

    /// Whether every lift is 0 now: no events, or (items exposure) only
    /// impressions, which that exposure does not read.
    pub fn is_flat(&self) -> bool {
        let root = self.get(ROOT_KEY);
        match self.exposure {
            Exposure::Items => engaged(&root) == 0.0,
            Exposure::Impressions => root.iter().all(|&x| x == 0.0),
        }
    }

    /// Entries held (items and prefixes with events), for memory figures.
    pub fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// A reader at `now_ms`: the decay factor and the catalog-wide sums, read once.
    pub fn at(&self, now_ms: u64) -> RatesAt<'_> {
        let t_ref = *self.t_ref.read();
        let decay = self.scale(t_ref, now_ms);
        let root = self.get(ROOT_KEY).map(|x| x * decay);
        RatesAt { store: self, decay, t_ref, root }
    }
}

/// Engagement of a node: every kind but impressions.
fn engaged(c: &Counts) -> f64 {
    c[EventKind::Click.slot()] + c[EventKind::Purchase.slot()] + c[EventKind::Watch.slot()]
}

/// The store as read at one moment (one decay factor for a whole request).
pub struct RatesAt<'a> {
    store: &'a Engagement,
    decay: f64,
    t_ref: u64,
    /// The catalog-wide decayed counts.
    root: Counts,
}

impl RatesAt<'_> {
    /// Decayed counts of an item, per kind (index: [`EventKind`]).
    pub fn item(&self, item: u32) -> Counts {
        self.decayed(item_key(item))
    }

    fn decayed(&self, key: u64) -> Counts {
        // a rescale between `at` and here would mix two reference times
        if *self.store.t_ref.read() != self.t_ref {
            return [0.0; 4];
        }
        self.store.get(key).map(|x| x * self.decay)
    }

    /// The catalog-wide rate `p` (`items`: the served items, for the items
    /// exposure).
    pub fn catalog_rate(&self, items: f64) -> f64 {
        let exposure = match self.store.exposure {
            Exposure::Items => items,
            Exposure::Impressions => self.root[EventKind::Impression.slot()],
        };
        (engaged(&self.root) + 1.0) / (exposure + 1.0)
    }

    /// The rate of a node with counts `c` and `items` served items under it,
    /// smoothed toward `parent_rate`; `None` for a node whose counts the
    /// exposure does not read (no events; with items, no engagement), whose
    /// rate is its parent's.
    fn smoothed(&self, c: &Counts, items: f64, parent_rate: f64) -> Option<f64> {
        let (exposure, a) = match self.store.exposure {
            Exposure::Items if engaged(c) == 0.0 => return None,
            Exposure::Items => (items.max(1.0), ITEM_SMOOTHING),
            Exposure::Impressions if engaged(c) == 0.0 && c[EventKind::Impression.slot()] == 0.0 => return None,
            Exposure::Impressions => (c[EventKind::Impression.slot()], SMOOTHING_IMPRESSIONS),
        };
        Some((engaged(c) + a * parent_rate) / (exposure + a))
    }

    /// The smoothed rate of the prefix with these codes (the catalog's for
    /// none): each level's counts smoothed toward its parent's rate, from
    /// the catalog-wide rate down (a level without events has its parent's).
    pub fn rate(&self, codes: &[u32], counts: &impl ItemCounts) -> f64 {
        let mut r = self.catalog_rate(counts.under(&[]));
        for l in 1..=codes.len() {
            let c = self.decayed(prefix_key(&self.store.sizes, &codes[..l]));
            if let Some(x) = self.smoothed(&c, counts.under(&codes[..l]), r) {
                r = x;
            }
        }
        r
    }

    /// `ln(r / r_parent)` of a node: a prefix (its codes) or an item (its
    /// whole semantic ID as `codes`, and `item`), its rate smoothed toward
    /// its parent's ([`rate`](Self::rate)); 0 without events (with the items
    /// exposure, without engagement). Along a path
    /// the lifts add up to the leaf's [`heat`](Self::heat): a hot item counts
    /// once, however its ancestors are doing.
    pub fn lift(&self, codes: &[u32], item: Option<u32>, counts: &impl ItemCounts) -> f32 {
        let parent = self.rate(&codes[..codes.len().saturating_sub(1)], counts);
        let items = if item.is_some() { 1.0 } else { counts.under(codes) };
        self.lift_under(parent, codes, item, items)
    }

    /// [`lift`](Self::lift) given the parent's rate (one [`rate`](Self::rate)
    /// per beam, not per child) and the node's served items (1 for an item).
    pub fn lift_under(&self, parent_rate: f64, codes: &[u32], item: Option<u32>, items: f64) -> f32 {
        let key = match item {
            Some(i) => item_key(i),
            None => prefix_key(&self.store.sizes, codes),
        };
        self.smoothed(&self.decayed(key), items, parent_rate).map_or(0.0, |r| (r / parent_rate).ln() as f32)
    }

    /// How hot an item is right now: `ln(r_item / p)`, the sum of the lifts
    /// along its path (0: engaging at the catalog's rate); `None` for an
    /// item without engagement of its own (its rate would be only its
    /// cluster's).
    pub fn heat(&self, item: u32, sid: &[u32], counts: &impl ItemCounts) -> Option<f32> {
        let p = self.catalog_rate(counts.under(&[]));
        let parent = self.rate(&sid[..sid.len().saturating_sub(1)], counts);
        let own = self.decayed(item_key(item));
        if engaged(&own) == 0.0 {
            return None;
        }
        self.smoothed(&own, 1.0, parent).map(|r| (r / p).ln() as f32)
    }

    /// Every prefix and item with events, in no particular order: the nodes
    /// whose [`lift`](Self::lift) can differ from 0 (what the GPU's trending
    /// prior lists). O(entries).
    pub fn nodes(&self) -> Vec<Node> {
        if *self.store.t_ref.read() != self.t_ref {
            return Vec::new(); // a rescale since `at`: every count reads as 0, as in `decayed`
        }
        let mut out = Vec::new();
        for shard in &self.store.shards {
            let keys: Vec<u64> = shard.lock().keys().copied().collect();
            out.extend(keys.into_iter().filter_map(|k| node_of(&self.store.sizes, k)));
        }
        out
    }
}

/// What an entry of the store counts: a prefix of a semantic ID (1 to
/// levels - 1 codes) or an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Prefix(Vec<u32>),
    Item(u32),
}

/// The node a key names (`None` for the catalog-wide sums).
fn node_of(sizes: &[u32], key: u64) -> Option<Node> {
    let len = (key >> 56) as usize;
    if len == 0xFF {
        return Some(Node::Item(key as u32));
    }
    if len == 0 || len > sizes.len() {
        return None;
    }
    let mut k = key & ((1 << 56) - 1);
    let mut codes = vec![0u32; len];
    for l in (0..len).rev() {
        let s = sizes[l].max(1) as u64;
        codes[l] = (k % s) as u32;
        k /= s;
    }
    Some(Node::Prefix(codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(item: u32, kind: EventKind, ts_ms: u64) -> Event {
        Event { item, kind, ts_ms, value: 1.0 }
    }

    /// Served items under a prefix of `sids`.
    fn counter(sids: &[Vec<u32>]) -> impl Fn(&[u32]) -> f64 + '_ {
        move |codes: &[u32]| sids.iter().filter(|s| s.starts_with(codes)).count() as f64
    }

    /// `nodes` lists every prefix and item with events; lifts along a path
    /// add up to the item's heat, with either exposure.
    #[test]
    fn nodes_with_events_and_lifts_that_telescope() {
        let sizes = [5, 7, 3];
        let sids: Vec<Vec<u32>> = (0..30).map(|i| vec![i % 5, (i * 3) % 7, i % 3]).collect();
        let sid = |i: u32| sids[i as usize].as_slice();
        let counts = counter(&sids);
        let t0 = 5_000_000;
        for exposure in [Exposure::Items, Exposure::Impressions] {
            let e = Engagement::new(&sizes, 60_000, t0).with_exposure(exposure);
            let events: Vec<Event> =
                (0..200).map(|n| ev(n % 23, EventKind::ALL[(n as usize * 7) % 4], t0 + n as u64 * 11)).collect();
            e.add(&events, sid, t0);
            let at = e.at(t0 + 9_000);
            let nodes = at.nodes();
            assert_eq!(
                nodes.iter().filter(|n| matches!(n, Node::Item(_))).count(),
                23,
                "one entry per item with events"
            );
            for i in 0..30u32 {
                let s = sid(i);
                for l in 1..3 {
                    let listed = nodes.contains(&Node::Prefix(s[..l].to_vec()));
                    assert_eq!(listed, i < 23 || (0..23).any(|j| sid(j)[..l] == s[..l]), "prefix {:?}", &s[..l]);
                }
                let path: f64 = (1..3).map(|l| at.lift(&s[..l], None, &counts) as f64).sum::<f64>()
                    + at.lift(s, Some(i), &counts) as f64;
                let own = e.at(t0 + 9_000).item(i);
                match at.heat(i, s, &counts) {
                    Some(heat) => {
                        let heat = heat as f64;
                        assert!((path - heat).abs() < 1e-5, "{exposure:?}, item {i}: {path} vs {heat}");
                    }
                    None => assert!(own[1..].iter().all(|&x| x == 0.0), "{exposure:?}, item {i}: engaged, no heat"),
                }
                if i >= 23 {
                    assert_eq!(at.lift(s, Some(i), &counts), 0.0, "no events, no lift");
                    assert_eq!(at.heat(i, s, &counts), None, "no events, no heat (whatever its cluster's)");
                }
            }
        }
    }

    #[test]
    fn counts_decay_by_the_half_life_and_add_in_any_order() {
        let sizes = [4, 4, 2];
        let sids: Vec<Vec<u32>> = (0..16).map(|i| vec![i % 4, (i / 4) % 4, 0]).collect();
        let sid = |i: u32| sids[i as usize].as_slice();
        let t0 = 1_000_000;
        let a = Engagement::new(&sizes, 1000, t0);
        let b = Engagement::new(&sizes, 1000, t0 + 500);
        let events: Vec<Event> =
            (0..100).map(|n| ev(n % 7, EventKind::ALL[n as usize % 4], t0 + n as u64 * 37)).collect();
        a.add(&events, sid, t0);
        let mut rev = events.clone();
        rev.reverse();
        b.add(&rev, sid, t0);
        let (x, y) = (a.at(t0 + 4000), b.at(t0 + 4000));
        for i in 0..7 {
            for (p, q) in x.item(i).iter().zip(y.item(i)) {
                assert!((p - q).abs() <= 1e-12 * p.abs().max(1.0), "{p} vs {q}");
            }
        }
        // one event now: 1; one half-life later: 1/2
        let c = Engagement::new(&sizes, 1000, t0);
        c.add(&[ev(3, EventKind::Click, t0)], sid, t0);
        assert!((c.at(t0).item(3)[1] - 1.0).abs() < 1e-12);
        assert!((c.at(t0 + 1000).item(3)[1] - 0.5).abs() < 1e-12);
        // a rescale an hour later keeps the decayed values
        let later = t0 + RESCALE_EVERY_MS + 5;
        let before = c.at(later).item(3)[1];
        c.add(&[ev(5, EventKind::Click, later)], sid, later);
        assert!(c.entries() > 0);
        assert_eq!(c.at(later).item(3)[1], 0.0, "decayed away and forgotten: {before}");
        assert!((c.at(later).item(5)[1] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_lift_is_zero_without_events_and_follows_the_hot_subtree() {
        let sizes = [4, 4, 2];
        let sids: Vec<Vec<u32>> = (0..41).map(|i| vec![i % 4, (i / 4) % 4, 0]).collect();
        let sid = |i: u32| sids[i as usize].as_slice();
        let counts = counter(&sids);
        let t0 = 5_000_000;
        for exposure in [Exposure::Items, Exposure::Impressions] {
            let e = Engagement::new(&sizes, 60_000, t0).with_exposure(exposure);
            let r = e.at(t0);
            assert_eq!(r.lift(&[1], None, &counts), 0.0);
            // impressions everywhere, clicks on item 1 (codes 1, 0)
            let mut events = Vec::new();
            for i in 0..16 {
                for _ in 0..20 {
                    events.push(ev(i, EventKind::Impression, t0));
                }
            }
            for _ in 0..15 {
                events.push(ev(1, EventKind::Click, t0));
            }
            events.push(ev(2, EventKind::Click, t0));
            e.add(&events, sid, t0);
            let r = e.at(t0);
            let lift = |codes: &[u32], item| r.lift(codes, item, &counts);
            assert!(lift(&[1], None) > 0.5, "{exposure:?}: the hot first-level code: {}", lift(&[1], None));
            assert!(lift(&[1, 0], None) > 0.5, "{exposure:?}: the hot item's own prefix, against its siblings");
            assert!(lift(sid(1), Some(1)) > lift(sid(2), Some(2)));
            assert!(r.heat(1, sid(1), &counts) > r.heat(2, sid(2), &counts));
            // an item of the hot cluster, shown but never clicked: no heat of its own
            assert_eq!(r.heat(5, sid(5), &counts), None);
            assert_eq!(lift(sid(40), Some(40)), 0.0);
            match exposure {
                // shown without a click: colder than the siblings
                Exposure::Impressions => {
                    assert!(lift(&[3], None) < 0.0, "a cold one");
                    assert!(lift(&[1, 1], None) < 0.0, "a cold sibling of it");
                }
                // what is shown does not count; no clicks, no lift
                Exposure::Items => {
                    assert_eq!(lift(&[3], None), 0.0);
                    assert_eq!(lift(&[1, 1], None), 0.0);
                }
            }
        }
    }

    /// What the items exposure is for: an item everyone is shown and a
    /// fraction take stays hot, where a click rate per impression ranks it
    /// below a personal pick that few are shown and some take.
    #[test]
    fn items_exposure_keeps_a_broadly_shown_hot_item_above_a_personal_pick() {
        let sizes = [4, 4, 2];
        let sids: Vec<Vec<u32>> = (0..32).map(|i| vec![i % 4, (i / 4) % 4, i / 16]).collect();
        let sid = |i: u32| sids[i as usize].as_slice();
        let counts = counter(&sids);
        let t0 = 5_000_000;
        let mut events = Vec::new();
        // item 5: shown 1,000 times, taken 60 times; item 9: shown 40, taken 8
        events.extend((0..1000).map(|_| ev(5, EventKind::Impression, t0)));
        events.extend((0..60).map(|_| ev(5, EventKind::Click, t0)));
        events.extend((0..40).map(|_| ev(9, EventKind::Impression, t0)));
        events.extend((0..8).map(|_| ev(9, EventKind::Click, t0)));
        let heat = |exposure| {
            let e = Engagement::new(&sizes, 60_000, t0).with_exposure(exposure);
            e.add(&events, sid, t0);
            let r = e.at(t0);
            (r.heat(5, sid(5), &counts).unwrap(), r.heat(9, sid(9), &counts).unwrap())
        };
        let (hot, pick) = heat(Exposure::Items);
        assert!(hot > pick + 1.0, "items: {hot} vs {pick}");
        let (hot, pick) = heat(Exposure::Impressions);
        assert!(hot < pick, "impressions: {hot} vs {pick}");
    }
}
