//! One replica of a deployment whose replicas share one catalog and one model
//! through the feed (`genrec serve --feed`, [`crate::feed`]).
//!
//! - **Edits and model changes** received by this replica's admin API are
//!   appended to the feed, not applied directly; one thread per replica
//!   applies the feed in order, its own records included, and the admin call
//!   answers with the outcome of its own record once this replica applied it
//!   (read-your-writes on this replica). The applied position is the
//!   replica's version: equal positions mean equal catalogs.
//! - **Starting** from the newest catalog version in the shared folder, the
//!   replica replays the feed from the position that version records and is
//!   not ready (`/readyz`) until it reaches the feed's head as it was at
//!   start. Model records met while catching up are deferred to the end,
//!   where the newest one that loads is applied; the model records kept
//!   beside the feed cover model changes older than the version.
//! - **Compaction** writes the applied view as the shared folder's next
//!   version under the feed's compaction lease, then trims the feed below
//!   the version before it and below every active replica's position (a
//!   replica is active while its position mark is younger than `mark_ttl`).
//! - **Faults:** a record that does not parse is skipped by every replica alike
//!   (logged with its position, counted); an edit that fails (a taken semantic
//!   ID) fails the same way everywhere; a checkpoint this replica cannot load
//!   leaves its model in service and is shown in `GET /admin/models`; a lost
//!   connection is retried with backoff while serving goes on from the last
//!   applied state; a replica whose position fell below the trimmed part of
//!   the feed reloads from the newest version.
//!
//! Here: the replica's state and the publishing side; [`apply`] applies
//! records, [`versions`] compacts and moves between catalog versions,
//! [`follow`] is the thread that reads the feed.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use super::admin::ModelOrder;
use super::edits::ItemDone;
use super::state::ModelInfo;
use super::{Engine, EngineError};
use crate::catalog::dir;
use crate::feed::auth::FeedKey;
use crate::feed::record::{ItemEdit, Record, MODEL_STICKY};
use crate::feed::{now_ms, Feed, FeedError, Position};

mod apply;
mod follow;
#[cfg(test)]
mod tests;
mod versions;

pub use versions::covered_position;

/// Entries read per round.
const READ_BATCH: usize = 256;
/// How long one read waits for new entries.
const READ_WAIT: Duration = Duration::from_millis(500);
/// Backoff after a failed read, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the replica records its position in the feed (for trimming).
const MARK_EVERY: Duration = Duration::from_secs(2);
/// Default of [`ReplicaOptions::mark_ttl`].
pub const DEFAULT_MARK_TTL: Duration = Duration::from_secs(120);
/// Default of [`ReplicaOptions::apply_wait`].
pub const DEFAULT_APPLY_WAIT: Duration = Duration::from_secs(30);
/// Default of [`ReplicaOptions::stall_after`].
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);
/// Edits per feed record of a large batch.
pub const EDITS_PER_RECORD: usize = 1000;
/// How long the compaction lease lasts (a compaction that dies frees it then).
const COMPACT_LEASE: Duration = Duration::from_secs(900);

/// What the feed thread reports, for metrics (implemented by the server).
pub trait FeedObserver: Send + Sync {
    /// The position applied, and how far behind the feed's newest entry this
    /// replica was when it applied it (0 when nothing is pending).
    fn applied(&self, position: Position, lag: Duration, edits: usize, served_items: usize);
    fn connected(&self, up: bool);
    fn skipped(&self);
    /// A model change from the feed: swapped in, or refused here.
    fn model_change(&self, old: Option<&ModelInfo>, new: Result<&ModelInfo, &str>);
}

/// A feed observer that records nothing (tests).
pub struct NoFeedObserver;

impl FeedObserver for NoFeedObserver {
    fn applied(&self, _: Position, _: Duration, _: usize, _: usize) {}
    fn connected(&self, _: bool) {}
    fn skipped(&self) {}
    fn model_change(&self, _: Option<&ModelInfo>, _: Result<&ModelInfo, &str>) {}
}

/// How a replica joins its feed.
pub struct ReplicaOptions {
    /// Unique among the replicas (in logs, marks, the compaction lease).
    pub name: String,
    /// The catalog folder every replica reads (versions are written here).
    pub catalog_dir: PathBuf,
    /// A replica that has not recorded its position for this long is taken
    /// for gone: it no longer holds trimming and version deletion back.
    pub mark_ttl: Duration,
    /// How long an admin call waits for its record to be applied here.
    pub apply_wait: Duration,
    /// A feed thread that has made no progress for this long (a connection
    /// that hangs, a download that stalls) makes the replica not ready: it
    /// would otherwise go on serving an old catalog and model as if current.
    pub stall_after: Duration,
    /// The key every replica seals its records with and checks others' by
    /// ([`crate::feed::auth`]).
    pub key: FeedKey,
}

impl ReplicaOptions {
    /// Options with the default waits.
    pub fn new(name: String, catalog_dir: PathBuf, mark_ttl: Duration, key: FeedKey) -> Self {
        ReplicaOptions {
            name,
            catalog_dir,
            mark_ttl,
            apply_wait: DEFAULT_APPLY_WAIT,
            stall_after: DEFAULT_STALL_AFTER,
            key,
        }
    }
}

/// The last model change this replica took from the feed.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelChange {
    #[schema(value_type = String)]
    pub position: Position,
    /// `model_load` or `model_rollback`.
    pub kind: &'static str,
    /// The checkpoint it named.
    pub path: String,
    /// Why this replica did not swap it in (absent: it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A replica's view of its feed (`GET /admin/catalog`, `GET /admin/models`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FeedInfo {
    /// `redis://HOST:PORT/STREAM`.
    pub feed: String,
    pub replica: String,
    /// Everything up to here is applied (`<ms>-<seq>`).
    #[schema(value_type = String)]
    pub position: Position,
    pub connected: bool,
    /// Reached the feed's head as it was at start (`/readyz` waits for it).
    pub caught_up: bool,
    /// Records applied since start.
    pub applied: u64,
    /// Records skipped because they do not parse.
    pub skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_change: Option<ModelChange>,
}

/// What applying one record did, for the admin call that published it.
pub(super) enum RecordOutcome {
    Items(Vec<Result<ItemDone, EngineError>>),
    Model(Result<ModelInfo, EngineError>),
}

/// One replica's side of the feed: where it is, what it applied, and the
/// admin calls waiting for their records.
pub struct Replica {
    feed: Arc<dyn Feed>,
    name: String,
    dir: PathBuf,
    mark_ttl: Duration,
    apply_wait: Duration,
    stall_after: Duration,
    key: FeedKey,
    observer: Arc<dyn FeedObserver>,
    /// Admin calls waiting for their record, by origin.
    waiters: Mutex<HashMap<String, SyncSender<RecordOutcome>>>,
    next_origin: AtomicU64,
    caught_up: AtomicBool,
    connected: AtomicBool,
    applied: AtomicU64,
    skipped: AtomicU64,
    last_error: Mutex<Option<String>>,
    model_change: Mutex<Option<ModelChange>>,
    /// Payload bytes applied since the shared folder's version last changed.
    bytes_since_version: AtomicU64,
    known_version: AtomicU64,
    /// A compaction of this replica's runs (one at a time).
    compacting: AtomicBool,
    /// When the feed thread last made progress (ms since the Unix epoch).
    heartbeat_ms: AtomicU64,
    /// Everything in the feed up to here is applied (the replica's version:
    /// equal positions mean equal catalogs). Changed only by the feed
    /// thread, under the engine's edit lock together with the view it
    /// covers; read under that lock when both are needed together.
    position: Mutex<Position>,
}

impl Replica {
    /// A replica of `feed` whose catalog covers the feed up to `start` (the
    /// position its catalog version records).
    pub fn new(
        feed: Arc<dyn Feed>,
        opts: ReplicaOptions,
        start: Position,
        observer: Arc<dyn FeedObserver>,
    ) -> Arc<Self> {
        let version = dir::version_of(&opts.catalog_dir).unwrap_or(0);
        Arc::new(Replica {
            feed,
            name: opts.name,
            dir: opts.catalog_dir,
            mark_ttl: opts.mark_ttl,
            apply_wait: opts.apply_wait,
            stall_after: opts.stall_after,
            key: opts.key,
            observer,
            waiters: Mutex::new(HashMap::new()),
            next_origin: AtomicU64::new(1),
            caught_up: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            model_change: Mutex::new(None),
            bytes_since_version: AtomicU64::new(0),
            known_version: AtomicU64::new(version),
            compacting: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(now_ms()),
            position: Mutex::new(start),
        })
    }

    /// The position applied.
    pub(super) fn position(&self) -> Position {
        *self.position.lock()
    }

    /// Moves the applied position (the feed thread, holding the edit lock).
    pub(super) fn set_position(&self, p: Position) {
        *self.position.lock() = p;
    }

    pub(super) fn info(&self) -> FeedInfo {
        FeedInfo {
            feed: self.feed.describe(),
            replica: self.name.clone(),
            position: self.position(),
            connected: self.connected.load(Ordering::Relaxed),
            caught_up: self.caught_up.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            model_change: self.model_change.lock().clone(),
        }
    }

    /// Caught up with the feed and its thread not stalled: takes changes,
    /// and `/readyz` says ready.
    pub(super) fn ready(&self) -> bool {
        self.caught_up() && !self.stalled()
    }

    /// Reached the feed's head as it was at start.
    pub(super) fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// The feed thread has made no progress for [`ReplicaOptions::stall_after`].
    pub(super) fn stalled(&self) -> bool {
        now_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)) > self.stall_after.as_millis() as u64
    }

    /// The record in a feed entry, when it is sealed with this deployment's
    /// key and parses; else why it is skipped.
    pub(super) fn open_record(&self, payload: &[u8]) -> Result<Record, String> {
        let record = self.key.open(payload).map_err(|e| e.to_string())?;
        Record::parse(record).map_err(|e| format!("the record does not parse: {e}"))
    }

    /// The feed thread is making progress (each round, each record applied).
    pub(super) fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        // (a feed that is down from the start is said once too)
        let first_error = self.last_error.lock().is_none();
        match (&error, was || first_error, up) {
            (Some(e), true, false) => {
                tracing::warn!(feed = %self.feed.describe(), error = %e, "feed down: serving the last applied state, retrying")
            }
            (None, false, true) => tracing::info!(feed = %self.feed.describe(), "feed connected"),
            _ => {}
        }
        if was != up {
            self.observer.connected(up);
        }
        if let Some(e) = error {
            *self.last_error.lock() = Some(e);
        }
    }

    /// Appends `make(origin)` and waits until this replica applied it.
    fn publish(
        &self,
        sticky: Option<&str>,
        make: impl FnOnce(String) -> Record,
    ) -> Result<(Position, RecordOutcome), EngineError> {
        if !self.ready() {
            return Err(EngineError::CatchingUp);
        }
        let origin = format!("{}#{}", self.name, self.next_origin.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = sync_channel(1);
        self.waiters.lock().insert(origin.clone(), tx);
        let forget = || self.waiters.lock().remove(&origin);
        let rec = make(origin.clone());
        let appended = rec
            .to_bytes()
            .map_err(|e| FeedError::Protocol(format!("encoding the record: {e}")))
            .and_then(|bytes| self.feed.append(&self.key.seal(&bytes), sticky));
        let position = match appended {
            Ok(p) => p,
            Err(e) => {
                forget();
                return Err(EngineError::Feed(e));
            }
        };
        match rx.recv_timeout(self.apply_wait) {
            Ok(o) => Ok((position, o)),
            Err(_) => {
                forget();
                Err(EngineError::NotAppliedYet(position))
            }
        }
    }

    /// Appends `record` without waiting for it to be applied (events).
    pub(super) fn append(&self, record: &Record) -> Result<Position, EngineError> {
        if !self.ready() {
            return Err(EngineError::CatchingUp);
        }
        let bytes = record.to_bytes().map_err(|e| FeedError::Protocol(format!("encoding the record: {e}")))?;
        Ok(self.feed.append(&self.key.seal(&bytes), None)?)
    }

    fn deliver(&self, origin: Option<&str>, outcome: RecordOutcome) {
        let Some(o) = origin else { return };
        if let Some(tx) = self.waiters.lock().remove(o) {
            let _ = tx.try_send(outcome);
        }
    }
}

impl Engine {
    /// Starts the feed thread of a replica engine ([`Engine::replica`]): it
    /// applies the feed in order from the position the catalog covers.
    pub fn follow_feed(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>, EngineError> {
        let rep =
            self.changes.replica().cloned().ok_or_else(|| EngineError::Conflict("this engine has no feed".into()))?;
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("genrec-feed".into())
            .spawn(move || follow::follow(weak, rep))
            .map_err(EngineError::Worker)
    }

    /// The feed's state as this replica sees it (`None`: no feed).
    pub fn feed_info(&self) -> Option<FeedInfo> {
        self.changes.replica().map(|r| r.info())
    }

    /// The feed position this replica has applied (`None`: no feed).
    pub fn feed_applied(&self) -> Option<Position> {
        self.changes.replica().map(|r| r.position())
    }

    /// `None` without a feed; else whether this replica caught up with it.
    pub fn feed_ready(&self) -> Option<bool> {
        self.changes.replica().map(|r| r.ready())
    }

    /// Publishes item edits (in records of at most [`EDITS_PER_RECORD`]) and
    /// returns each one's outcome, in order, and the position of the last
    /// record (applied here; a client may wait for other replicas to reach it).
    #[allow(clippy::type_complexity)]
    pub(super) fn publish_items(
        &self,
        rep: &Replica,
        edits: Vec<ItemEdit>,
    ) -> Result<(Vec<Result<ItemDone, EngineError>>, Position), EngineError> {
        let mut last = Position::START;
        let mut out = Vec::with_capacity(edits.len());
        let mut edits = edits.into_iter().peekable();
        while edits.peek().is_some() {
            let chunk: Vec<ItemEdit> = edits.by_ref().take(EDITS_PER_RECORD).collect();
            let n = chunk.len();
            let published = rep.publish(None, |origin| Record::Items { origin: Some(origin), edits: chunk });
            match published {
                Ok((p, RecordOutcome::Items(r))) if r.len() == n => {
                    out.extend(r.into_iter().map(|x| x.map(|d| d.at(p))));
                    last = p;
                }
                Ok(_) => {
                    return Err(EngineError::Feed(FeedError::Protocol(
                        "the feed answered another kind of record".into(),
                    )))
                }
                // this chunk is in the feed and will be applied everywhere:
                // pending, not failed; the chunks after it were not sent
                Err(EngineError::NotAppliedYet(p)) => {
                    out.extend((0..n).map(|_| Err(EngineError::NotAppliedYet(p))));
                    let why = format!("not sent: the record before it (at {p}) was not applied here in time");
                    out.extend((0..edits.len()).map(|_| Err(EngineError::Conflict(why.clone()))));
                    last = p;
                    break;
                }
                // the chunks before were applied: report them, and this one
                // and the rest as failed, each with the error
                Err(e) if !out.is_empty() => {
                    let why = e.to_string();
                    let rest = n + edits.len();
                    out.extend((0..rest).map(|_| Err(EngineError::Conflict(format!("not applied: {why}")))));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((out, last))
    }

    /// Publishes a model change (a load names its checkpoint as every
    /// replica can find it; a rollback names the model to go back to) and
    /// returns what this replica made of it.
    pub(super) fn publish_model_order(&self, rep: &Replica, order: ModelOrder) -> Result<ModelInfo, EngineError> {
        let record = match order {
            ModelOrder::Load(path) => {
                let path = self.shareable_checkpoint(&path)?;
                move |origin| Record::ModelLoad { origin: Some(origin), path }
            }
            ModelOrder::Rollback => {
                let to = self.changes.previous.lock().as_ref().map(|m| m.source.clone());
                let to =
                    to.ok_or_else(|| EngineError::Conflict("there is no previous model to roll back to".into()))?;
                return self.publish_model(rep, move |origin| Record::ModelRollback { origin: Some(origin), to });
            }
        };
        self.publish_model(rep, record)
    }

    fn publish_model(&self, rep: &Replica, make: impl FnOnce(String) -> Record) -> Result<ModelInfo, EngineError> {
        match rep.publish(Some(MODEL_STICKY), make)?.1 {
            RecordOutcome::Model(r) => r,
            RecordOutcome::Items(_) => {
                Err(EngineError::Feed(FeedError::Protocol("the feed answered an item edit for a model change".into())))
            }
        }
    }

    /// The position this replica has applied (the start without a feed).
    pub(super) fn feed_position(&self) -> Position {
        self.changes.replica().map_or(Position::START, |r| r.position())
    }
}
