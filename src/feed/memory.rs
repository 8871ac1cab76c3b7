//! A [`Feed`] inside one process: the same contract as the Redis one, for
//! tests of replicas (several engines on one feed) without a Redis server,
//! and for faults on demand ([`MemoryFeed::set_down`]).

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{now_ms, Entry, Feed, FeedError, Position, ReplicaMark};

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    last: Position,
    sticky: HashMap<String, Vec<Entry>>,
    trimmed: Position,
    leases: HashMap<String, (String, Instant)>,
    marks: HashMap<String, (Position, u64, u64)>,
}

#[derive(Default)]
pub struct MemoryFeed {
    state: Mutex<State>,
    grew: Condvar,
    down: AtomicBool,
    stalled: AtomicBool,
    leases_lapse: AtomicBool,
}

impl MemoryFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// While down, every call fails as a lost connection would.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.grew.notify_all();
    }

    /// While stalled, reads hang (as over a connection that stopped
    /// answering) until the stall ends; appends go on.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// While set, a lease cannot be renewed: it lapsed, as it does for a
    /// holder that stalled longer than its time.
    pub fn set_leases_lapse(&self, lapse: bool) {
        self.leases_lapse.store(lapse, Ordering::SeqCst);
    }

    /// Appends raw bytes (a record, or anything else) as a writer would.
    pub fn append_raw(&self, payload: &[u8]) -> Position {
        let mut s = self.lock();
        let ms = now_ms();
        let p = if ms > s.last.ms { Position { ms, seq: 0 } } else { Position { ms: s.last.ms, seq: s.last.seq + 1 } };
        s.last = p;
        s.entries.push(Entry { position: p, payload: payload.to_vec() });
        self.grew.notify_all();
        p
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn up(&self) -> Result<(), FeedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(FeedError::Down("the in-memory feed is set down".into()));
        }
        Ok(())
    }
}

impl Feed for MemoryFeed {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn append(&self, payload: &[u8], sticky: Option<&str>) -> Result<Position, FeedError> {
        self.up()?;
        let p = self.append_raw(payload);
        if let Some(name) = sticky {
            let mut s = self.lock();
            let kept = s.sticky.entry(name.into()).or_default();
            kept.insert(0, Entry { position: p, payload: payload.to_vec() });
            kept.truncate(super::STICKY_KEEP);
        }
        Ok(p)
    }

    fn read_after(&self, after: Position, max: usize, wait: Duration) -> Result<Vec<Entry>, FeedError> {
        let until = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            if self.stalled.load(Ordering::SeqCst) {
                parking_lot::MutexGuard::unlocked(&mut s, || std::thread::sleep(Duration::from_millis(5)));
                continue;
            }
            self.up()?;
            let from = s.entries.partition_point(|e| e.position <= after);
            if from < s.entries.len() {
                return Ok(s.entries[from..].iter().take(max.max(1)).cloned().collect());
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            self.grew.wait_for(&mut s, left);
        }
    }

    fn head(&self) -> Result<Option<Position>, FeedError> {
        self.up()?;
        Ok(self.lock().entries.last().map(|e| e.position))
    }

    fn sticky(&self, name: &str) -> Result<Vec<Entry>, FeedError> {
        self.up()?;
        Ok(self.lock().sticky.get(name).cloned().unwrap_or_default())
    }

    fn trim_below(&self, below: Position) -> Result<u64, FeedError> {
        self.up()?;
        let mut s = self.lock();
        s.trimmed = s.trimmed.max(below);
        let n = s.entries.partition_point(|e| e.position < below);
        s.entries.drain(..n);
        Ok(n as u64)
    }

    fn trimmed_below(&self) -> Result<Position, FeedError> {
        self.up()?;
        Ok(self.lock().trimmed)
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError> {
        self.up()?;
        let mut s = self.lock();
        let now = Instant::now();
        if s.leases.get(name).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        s.leases.insert(name.into(), (holder.into(), now + ttl));
        Ok(true)
    }

    fn renew_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, FeedError> {
        self.up()?;
        let mut s = self.lock();
        let now = Instant::now();
        if self.leases_lapse.load(Ordering::SeqCst) {
            s.leases.remove(name);
            return Ok(false);
        }
        match s.leases.get_mut(name) {
            Some((h, until)) if h == holder && *until > now => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), FeedError> {
        self.up()?;
        let mut s = self.lock();
        if s.leases.get(name).is_some_and(|(h, _)| h == holder) {
            s.leases.remove(name);
        }
        Ok(())
    }

    fn mark(&self, name: &str, position: Position, version: u64) -> Result<(), FeedError> {
        self.up()?;
        self.lock().marks.insert(name.into(), (position, version, now_ms()));
        Ok(())
    }

    fn marks(&self) -> Result<Vec<ReplicaMark>, FeedError> {
        self.up()?;
        let now = now_ms();
        Ok(self
            .lock()
            .marks
            .iter()
            .map(|(n, (p, v, at))| ReplicaMark {
                name: n.clone(),
                position: *p,
                version: *v,
                age_ms: now.saturating_sub(*at),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_after_a_position_and_trims() {
        let f = MemoryFeed::new();
        let a = f.append(b"a", None).unwrap();
        let b = f.append(b"b", Some("m")).unwrap();
        let c = f.append(b"c", None).unwrap();
        assert!(a < b && b < c);
        let all = f.read_after(Position::START, 10, Duration::ZERO).unwrap();
        assert_eq!(
            all.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(f.read_after(a, 1, Duration::ZERO).unwrap()[0].position, b);
        assert!(f.read_after(c, 10, Duration::from_millis(5)).unwrap().is_empty());
        assert_eq!(f.trim_below(c).unwrap(), 2);
        assert_eq!(f.trimmed_below().unwrap(), c);
        assert_eq!(f.sticky("m").unwrap()[0].position, b, "sticky outlives trimming");
        for i in 0..10 {
            f.append(format!("m{i}").as_bytes(), Some("m")).unwrap();
        }
        let kept = f.sticky("m").unwrap();
        assert_eq!(kept.len(), crate::feed::STICKY_KEEP);
        assert_eq!(kept[0].payload, b"m9", "newest first");
        assert!(f.try_lease("x", "r1", Duration::from_secs(9)).unwrap());
        assert!(!f.try_lease("x", "r2", Duration::from_secs(9)).unwrap());
        f.release_lease("x", "r2").unwrap();
        assert!(!f.try_lease("x", "r2", Duration::from_secs(9)).unwrap(), "only the holder gives it back");
        f.release_lease("x", "r1").unwrap();
        assert!(f.try_lease("x", "r2", Duration::from_secs(9)).unwrap());
        f.set_down(true);
        assert!(matches!(f.head(), Err(FeedError::Down(_))));
    }
}
