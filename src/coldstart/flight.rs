//! At most `max` slow computations at once, and one per key: the first asker
//! of a key leads (it holds one of the permits, taken before any work
//! starts), later askers of the same key follow and get the leader's answer.
//! Used for LLM intent inference, where one profile takes seconds of CPU.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// A finished computation: its value, or its error as text.
pub type FlightResult<V> = Result<V, String>;

type Slot<V> = watch::Receiver<Option<FlightResult<V>>>;

/// The computations running now, by key, and the permits that bound them.
pub struct Flights<K, V> {
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<K, Slot<V>>>,
}

/// What an asker is to do.
pub enum Ticket<K: Hash + Eq + Clone, V: Clone> {
    /// Compute, then [`Lead::finish`].
    Lead(Lead<K, V>),
    /// Wait for the leader's answer ([`follow`]).
    Follow(Slot<V>),
    /// Every permit is taken by other keys.
    Busy,
}

/// The right and duty to compute one key. Dropped without
/// [`Lead::finish`] (an error, a panic), it answers its followers with an
/// error, so none waits forever.
pub struct Lead<K: Hash + Eq + Clone, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    tx: Option<watch::Sender<Option<FlightResult<V>>>>,
    _permit: OwnedSemaphorePermit,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Flights { permits: Arc::new(Semaphore::new(max.max(1))), running: Mutex::new(HashMap::new()) })
    }

    /// Computations running now.
    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    /// A ticket for `key` without waiting: follow a running computation of
    /// it, lead a new one when a permit is free, else busy.
    pub fn begin(self: &Arc<Self>, key: &K) -> Ticket<K, V> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => self.with_permit(key, permit),
            Err(_) => match self.follower(key) {
                Some(rx) => Ticket::Follow(rx),
                None => Ticket::Busy,
            },
        }
    }

    /// A ticket for `key`, waiting for a permit until `until` (`None` then).
    pub async fn begin_waiting(self: &Arc<Self>, key: &K, until: Instant) -> Option<Ticket<K, V>> {
        if let Some(rx) = self.follower(key) {
            return Some(Ticket::Follow(rx));
        }
        let permit = tokio::time::timeout_at(until.into(), self.permits.clone().acquire_owned()).await.ok()?.ok()?;
        Some(self.with_permit(key, permit))
    }

    fn follower(&self, key: &K) -> Option<Slot<V>> {
        self.running.lock().get(key).cloned()
    }

    fn with_permit(self: &Arc<Self>, key: &K, permit: OwnedSemaphorePermit) -> Ticket<K, V> {
        let mut running = self.running.lock();
        if let Some(rx) = running.get(key) {
            return Ticket::Follow(rx.clone()); // the permit goes back
        }
        let (tx, rx) = watch::channel(None);
        running.insert(key.clone(), rx);
        Ticket::Lead(Lead { flights: self.clone(), key: key.clone(), tx: Some(tx), _permit: permit })
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Lead<K, V> {
    /// Publishes the answer to every follower and ends the computation.
    pub fn finish(mut self, outcome: FlightResult<V>) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: FlightResult<V>) {
        if let Some(tx) = self.tx.take() {
            self.flights.running.lock().remove(&self.key);
            let _ = tx.send(Some(outcome));
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for Lead<K, V> {
    fn drop(&mut self) {
        self.end(Err("the computation stopped before answering".into()));
    }
}

/// The leader's answer, or `None` when `until` passes first.
pub async fn follow<V: Clone>(mut rx: Slot<V>, until: Instant) -> Option<FlightResult<V>> {
    let done = tokio::time::timeout_at(until.into(), rx.wait_for(Option::is_some)).await.ok()?;
    match done {
        Ok(v) => v.clone(),
        Err(_) => Some(Err("the computation stopped before answering".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Askers on blocking threads, each computation 50 ms; returns how many
    /// computations ran and the most at once.
    async fn ask(flights: &Arc<Flights<String, String>>, keys: Vec<String>) -> (usize, usize) {
        let (runs, now, peak) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for key in keys {
            let (f, runs, now, peak) = (flights.clone(), runs.clone(), now.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(20);
                let ticket = f.begin_waiting(&key, until).await.expect("a ticket before the deadline");
                let got = match ticket {
                    Ticket::Lead(lead) => {
                        let k = key.clone();
                        tokio::task::spawn_blocking(move || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            now.fetch_sub(1, Ordering::SeqCst);
                            let v = format!("value of {k}");
                            lead.finish(Ok(v.clone()));
                            v
                        })
                        .await
                        .unwrap()
                    }
                    Ticket::Follow(rx) => follow(rx, until).await.unwrap().unwrap(),
                    Ticket::Busy => unreachable!("begin_waiting never answers busy"),
                };
                assert_eq!(got, format!("value of {key}"));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (runs.load(Ordering::SeqCst), peak.load(Ordering::SeqCst))
    }

    /// Eight askers of one key: one computation, all answered with it.
    /// Eight distinct keys with two permits: eight computations, never more
    /// than two at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_computation_per_key_and_at_most_max_at_once() {
        let flights: Arc<Flights<String, String>> = Flights::new(2);
        assert_eq!(ask(&flights, vec!["same".to_string(); 8]).await, (1, 1));
        let (runs, peak) = ask(&flights, (0..8).map(|i| format!("key-{i}")).collect()).await;
        assert_eq!(runs, 8);
        assert!(peak <= 2, "{peak} at once");
        assert_eq!(flights.running(), 0);
    }

    #[tokio::test]
    async fn busy_when_every_permit_is_taken_and_a_dropped_leader_answers_an_error() {
        let flights: Arc<Flights<u32, u32>> = Flights::new(1);
        let Ticket::Lead(lead) = flights.begin(&1) else { panic!("the first asker leads") };
        assert!(matches!(flights.begin(&2), Ticket::Busy));
        let Ticket::Follow(rx) = flights.begin(&1) else { panic!("an asker of a running key follows") };
        drop(lead);
        let got = follow(rx, Instant::now() + Duration::from_secs(1)).await.unwrap();
        assert!(got.is_err());
        assert!(matches!(flights.begin(&2), Ticket::Lead(_)), "the permit came back");
    }
}
