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
//!   start. Model records met while catching up are deferred to the end (only
//!   the last one matters); the feed's sticky model record covers model
//!   changes older than the version.
//! - **Compaction** writes the applied view as the shared folder's next
//!   version under the feed's compaction lease, then trims the feed below
//!   the version before it and below every live replica's position.
//! - **Faults:** a record that does not parse is skipped by every replica alike
//!   (logged with its position, counted); an edit that fails (a taken semantic
//!   ID) fails the same way everywhere; a checkpoint this replica cannot load
//!   leaves its model in service and is shown in `GET /admin/models`; a lost
//!   connection is retried with backoff while serving goes on from the last
//!   applied state; a replica whose position fell below the trimmed part of
//!   the feed reloads from the newest version.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::edits::Upserted;
use super::state::{ModelInfo, ServedCatalog};
use super::{Engine, EngineError};
use crate::catalog::dir;
use crate::catalog::edit::NewItem as CatalogItem;
use crate::feed::record::{ItemEdit, Record, MODEL_STICKY};
use crate::feed::{now_ms, Entry, Feed, FeedError, Position};
use crate::recall::{write_version_graph, Ann, ANN_FILE};

/// Entries read per round.
const READ_BATCH: usize = 256;
/// How long one read waits for new entries.
const READ_WAIT: Duration = Duration::from_millis(500);
/// Backoff after a failed read, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the replica records its position in the feed (for trimming).
const MARK_EVERY: Duration = Duration::from_secs(2);
/// Marks older than this are of replicas that are gone: they hold no trim back.
const MARK_FRESH_MS: u64 = 120_000;
/// How long an admin call waits for its record to be applied here.
const APPLY_WAIT: Duration = Duration::from_secs(30);
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
pub(super) enum Outcome {
    Items(Vec<Result<ItemDone, EngineError>>),
    Model(Result<ModelInfo, EngineError>),
}

pub(super) enum ItemDone {
    Upserted(Upserted),
    Removed,
}

impl ItemDone {
    /// The same outcome, stamped with the feed position of its record.
    fn at(self, position: Position) -> ItemDone {
        match self {
            ItemDone::Upserted(u) => ItemDone::Upserted(Upserted { feed_position: Some(position), ..u }),
            other => other,
        }
    }
}

pub(super) struct Replica {
    feed: Arc<dyn Feed>,
    name: String,
    dir: PathBuf,
    observer: Arc<dyn FeedObserver>,
    /// Admin calls waiting for their record, by origin.
    waiters: Mutex<HashMap<String, SyncSender<Outcome>>>,
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
}

fn feed_error(e: FeedError) -> EngineError {
    EngineError::Feed(e.to_string())
}

impl Replica {
    pub(super) fn info(&self, position: Position) -> FeedInfo {
        FeedInfo {
            feed: self.feed.describe(),
            replica: self.name.clone(),
            position,
            connected: self.connected.load(Ordering::Relaxed),
            caught_up: self.caught_up.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            model_change: self.model_change.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    pub(super) fn ready(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        match (&error, was, up) {
            (Some(e), true, false) => tracing::warn!(feed = %self.feed.describe(), error = %e, "feed down: serving the last applied state, retrying"),
            (None, false, true) => tracing::info!(feed = %self.feed.describe(), "feed connected"),
            _ => {}
        }
        if was != up {
            self.observer.connected(up);
        }
        if let Some(e) = error {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    }

    /// Appends `make(origin)` and waits until this replica applied it.
    fn publish(&self, sticky: Option<&str>, make: impl FnOnce(String) -> Record) -> Result<(Position, Outcome), EngineError> {
        if !self.ready() {
            return Err(EngineError::Feed("this replica is still catching up with the feed: retry shortly".into()));
        }
        let origin = format!("{}#{}", self.name, self.next_origin.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = sync_channel(1);
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(origin.clone(), tx);
        let forget = || self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&origin);
        let rec = make(origin.clone());
        let position = match self.feed.append(&rec.to_bytes(), sticky) {
            Ok(p) => p,
            Err(e) => {
                forget();
                return Err(feed_error(e));
            }
        };
        match rx.recv_timeout(APPLY_WAIT) {
            Ok(o) => Ok((position, o)),
            Err(_) => {
                forget();
                Err(EngineError::Feed(format!(
                    "the record is in the feed at {position} but this replica did not apply it within {} s \
                     (it will when it catches up)",
                    APPLY_WAIT.as_secs()
                )))
            }
        }
    }

    fn deliver(&self, origin: Option<&str>, outcome: Outcome) {
        let Some(o) = origin else { return };
        if let Some(tx) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(o) {
            let _ = tx.try_send(outcome);
        }
    }
}

impl Engine {
    /// Makes this engine a replica of `feed`: edits and model changes go
    /// through it from now on, and a thread applies it in order, starting
    /// after `start` (the position the catalog's version covers).
    pub fn join_feed(
        self: &Arc<Self>,
        feed: Arc<dyn Feed>,
        opts: ReplicaOptions,
        start: Position,
        observer: Arc<dyn FeedObserver>,
    ) -> Result<std::thread::JoinHandle<()>, EngineError> {
        let version = dir::version_of(&opts.catalog_dir).unwrap_or(0);
        let rep = Arc::new(Replica {
            feed,
            name: opts.name,
            dir: opts.catalog_dir,
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
        });
        self.lock_writer().feed_position = start;
        if self.replica.set(rep.clone()).is_err() {
            return Err(EngineError::Conflict("this engine follows a feed already".into()));
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("genrec-feed".into())
            .spawn(move || follow(weak, rep))
            .map_err(EngineError::Worker)
    }

    pub(super) fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.get()
    }

    /// The feed's state as this replica sees it (`None`: no feed).
    pub fn feed_info(&self) -> Option<FeedInfo> {
        let rep = self.replica()?;
        Some(rep.info(self.lock_writer().feed_position))
    }

    /// The feed position this replica has applied (`None`: no feed).
    pub fn feed_applied(&self) -> Option<Position> {
        self.replica().map(|_| self.feed_position())
    }

    /// `None` without a feed; else whether this replica caught up with it.
    pub fn feed_ready(&self) -> Option<bool> {
        self.replica().map(|r| r.ready())
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
            match rep.publish(None, |origin| Record::Items { origin: Some(origin), edits: chunk })? {
                (p, Outcome::Items(r)) if r.len() == n => {
                    out.extend(r.into_iter().map(|x| x.map(|d| d.at(p))));
                    last = p;
                }
                _ => return Err(EngineError::Feed("the feed answered another kind of record".into())),
            }
        }
        Ok((out, last))
    }

    /// Publishes a model change and returns what this replica made of it.
    pub(super) fn publish_model(&self, rep: &Replica, make: impl FnOnce(String) -> Record) -> Result<ModelInfo, EngineError> {
        match rep.publish(Some(MODEL_STICKY), make)?.1 {
            Outcome::Model(r) => r,
            Outcome::Items(_) => Err(EngineError::Feed("the feed answered an item edit for a model change".into())),
        }
    }

    /// Applies feed entries in order (an entry at or below the applied
    /// position is skipped, so applying twice changes nothing). A run of item
    /// records becomes one new catalog view.
    fn apply_entries(&self, rep: &Replica, entries: &[Entry], mut deferred: Option<&mut Option<(Position, Record)>>) {
        let done = self.feed_position();
        let mut run: Vec<(Position, Record)> = Vec::new();
        for e in entries.iter().filter(|e| e.position > done) {
            let rec = match Record::parse(&e.payload) {
                Ok(r) => r,
                Err(why) => {
                    self.apply_item_records(rep, std::mem::take(&mut run));
                    tracing::warn!(position = %e.position, error = %why, "feed: skipping a record that does not parse");
                    rep.skipped.fetch_add(1, Ordering::Relaxed);
                    rep.observer.skipped();
                    self.lock_writer().feed_position = e.position;
                    continue;
                }
            };
            rep.applied.fetch_add(1, Ordering::Relaxed);
            rep.bytes_since_version.fetch_add(e.payload.len() as u64, Ordering::Relaxed);
            if matches!(rec, Record::Items { .. }) {
                run.push((e.position, rec));
                continue;
            }
            self.apply_item_records(rep, std::mem::take(&mut run));
            match deferred.as_deref_mut() {
                Some(slot) => *slot = Some((e.position, rec)),
                None => {
                    let r = self.apply_model(rep, e.position, &rec);
                    self.lock_writer().feed_position = e.position;
                    rep.deliver(rec.origin(), Outcome::Model(r));
                }
            }
            self.lock_writer().feed_position = e.position;
        }
        self.apply_item_records(rep, run);
        if let Some(last) = entries.last() {
            let lag = Duration::from_millis(now_ms().saturating_sub(last.position.ms));
            rep.observer.applied(self.feed_position(), lag, 0, self.catalog().catalog.served_len());
        }
    }

    /// Applies consecutive item records as one new catalog view, then
    /// answers each record's publisher (if it is waiting here).
    fn apply_item_records(&self, rep: &Replica, run: Vec<(Position, Record)>) {
        let Some(last) = run.last().map(|r| r.0) else { return };
        let mut w = self.lock_writer();
        let mut view = w.head.catalog.clone();
        let mut vectors = Vec::new();
        let mut outcomes = Vec::with_capacity(run.len());
        let mut edits_applied = 0;
        for (_, rec) in run {
            if let Record::Items { origin, edits } = rec {
                let (out, v) = apply_edits(&mut view, &edits);
                vectors.extend(v);
                edits_applied += edits.len();
                outcomes.push((origin, out));
            }
        }
        let ann = w.head.ann.clone();
        if let Err(e) = ann.add(&vectors) {
            tracing::warn!(error = %e, position = %last, "feed: adding vectors to the ANN index failed (generation still serves the items)");
        }
        let served = Arc::new(ServedCatalog { catalog: view, ann });
        w.head = served.clone();
        w.feed_position = last;
        self.catalog.store(served);
        drop(w);
        for (origin, out) in outcomes {
            rep.deliver(origin.as_deref(), Outcome::Items(out));
        }
        let lag = Duration::from_millis(now_ms().saturating_sub(last.ms));
        rep.observer.applied(last, lag, edits_applied, self.catalog().catalog.served_len());
    }

    /// Moves this replica onto a newer version of the shared folder (written
    /// by any replica's compaction), so that its in-memory overlay does not
    /// grow forever: opens the version, replays the feed from the version's
    /// position up to this replica's, and swaps. Requests go on meanwhile on
    /// the current view. Returns whether it moved (false: no newer version,
    /// or the version is ahead of this replica, which catches up first).
    fn rebase(&self, rep: &Replica) -> Result<bool, EngineError> {
        let newest = dir::version_of(&rep.dir)?;
        if newest <= self.catalog().catalog.manifest().version {
            return Ok(false);
        }
        let t0 = Instant::now();
        let (mut cat, report) = dir::open_read_only(&rep.dir)?;
        let from = version_position(&cat)?;
        let here = self.feed_position();
        if from > here {
            return Ok(false);
        }
        let mut after = from;
        while after < here {
            let entries = rep.feed.read_after(after, READ_BATCH, Duration::ZERO).map_err(feed_error)?;
            if entries.is_empty() {
                return Err(EngineError::Feed(format!("the feed ends at {after}, before this replica's {here}")));
            }
            for e in entries.into_iter().take_while(|e| e.position <= here) {
                if let Ok(Record::Items { edits, .. }) = Record::parse(&e.payload) {
                    apply_edits(&mut cat, &edits);
                }
                after = e.position;
            }
        }
        let ann = Arc::new(Ann::open(&cat)?);
        let served = Arc::new(ServedCatalog { catalog: cat, ann });
        let mut w = self.lock_writer();
        if w.feed_position != here {
            return Ok(false); // (only this thread applies the feed: not reached)
        }
        w.head = served.clone();
        self.catalog.store(served);
        rep.known_version.store(report.version, Ordering::Relaxed);
        tracing::info!(version = report.version, replayed_from = %from, seconds = t0.elapsed().as_secs_f64(), "feed: moved onto the newest catalog version");
        Ok(true)
    }

    /// Applies a model record here: a refusal keeps the model in service.
    fn apply_model(&self, rep: &Replica, position: Position, rec: &Record) -> Result<ModelInfo, EngineError> {
        let old = self.model().map(|m| m.info());
        let (kind, path, r) = match rec {
            Record::ModelLoad { path, .. } => ("model_load", path.clone(), self.load_checkpoint_here(path)),
            Record::ModelRollback { to, .. } => ("model_rollback", to.clone(), self.roll_back_to(to)),
            Record::Items { .. } => return Err(EngineError::Feed("not a model record".into())),
        };
        match &r {
            Ok(info) => {
                tracing::info!(position = %position, kind, model = %info.version, "feed: model change applied");
                rep.observer.model_change(old.as_ref(), Ok(info));
            }
            Err(e) => {
                tracing::warn!(position = %position, kind, path = %path, error = %e, "feed: model change refused by this replica; keeping its model");
                rep.observer.model_change(old.as_ref(), Err(&e.to_string()));
            }
        }
        let refused = r.as_ref().err().map(|e| e.to_string());
        *rep.model_change.lock().unwrap_or_else(|p| p.into_inner()) = Some(ModelChange { position, kind, path, refused });
        r
    }

    /// Puts the model that was loaded from `to` in service: the previous one
    /// when it is that, nothing when the current one is, else a fresh load.
    fn roll_back_to(&self, to: &str) -> Result<ModelInfo, EngineError> {
        if let Some(m) = self.model().filter(|m| m.source == to) {
            return Ok(m.info());
        }
        let prev_matches = self.previous.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|m| m.source == to);
        if prev_matches {
            return self.rollback_here();
        }
        self.load_checkpoint_here(to)
    }

    /// The position this replica has applied.
    pub(super) fn feed_position(&self) -> Position {
        self.lock_writer().feed_position
    }

    /// Serves the newest version of the shared folder from scratch (when this
    /// replica fell below the trimmed part of the feed).
    fn reload_newest(&self, rep: &Replica) -> Result<Position, EngineError> {
        let (cat, report) = dir::open_read_only(&rep.dir)?;
        let position = version_position(&cat)?;
        let ann = Arc::new(Ann::open(&cat)?);
        let served = Arc::new(ServedCatalog { catalog: cat, ann });
        let mut w = self.lock_writer();
        w.head = served.clone();
        w.feed_position = position;
        self.catalog.store(served);
        rep.known_version.store(report.version, Ordering::Relaxed);
        rep.bytes_since_version.store(0, Ordering::Relaxed);
        tracing::warn!(version = report.version, position = %position, "feed: reloaded the newest catalog version");
        Ok(position)
    }

    /// Compaction of a shared folder: under the feed's compaction lease, the
    /// applied view becomes the folder's next version (recording its
    /// position), then the feed is trimmed below the version before it and
    /// below every live replica's mark.
    pub(super) fn compact_shared(&self, rep: &Replica) -> Result<super::edits::CompactReport, EngineError> {
        let t0 = Instant::now();
        if !rep.feed.try_lease("compact", &rep.name, COMPACT_LEASE).map_err(feed_error)? {
            return Err(EngineError::Conflict("another replica is compacting the shared catalog".into()));
        }
        let r = self.write_shared_version(rep, t0);
        if let Err(e) = rep.feed.release_lease("compact", &rep.name) {
            tracing::warn!(error = %e, "feed: giving the compaction lease back failed (it lapses by itself)");
        }
        r
    }

    fn write_shared_version(&self, rep: &Replica, t0: Instant) -> Result<super::edits::CompactReport, EngineError> {
        let (view, position) = {
            let w = self.lock_writer();
            (w.head.catalog.clone(), w.feed_position)
        };
        let prev_graph = view.base().source.as_ref().map(|d| d.join(ANN_FILE));
        let extra = |v: &crate::catalog::Catalog, d: &std::path::Path| {
            write_version_graph(v, prev_graph.as_deref(), d).map_err(|e| crate::catalog::CatalogError::Format(e.to_string()))
        };
        let (number, _) = dir::commit_shared_version(&rep.dir, &view, &position.to_string(), &extra)?;
        rep.feed.mark(&rep.name, position).map_err(feed_error)?;
        rep.known_version.store(number, Ordering::Relaxed);
        rep.bytes_since_version.store(0, Ordering::Relaxed);
        // the version before stays for replicas that are opening it: keep
        // the feed after its position, and after every live replica's
        let older = dir::version_feed_position(&rep.dir, number - 1).and_then(|p| p.parse::<Position>().ok());
        if let Some(mut below) = older {
            let now = now_ms();
            for m in rep.feed.marks().map_err(feed_error)? {
                if now.saturating_sub(m.at_ms) < MARK_FRESH_MS {
                    below = below.min(m.position);
                }
            }
            let dropped = rep.feed.trim_below(below).map_err(feed_error)?;
            tracing::info!(below = %below, dropped, "feed trimmed");
        }
        Ok(super::edits::CompactReport { version: number, items: view.served_len(), replayed: 0, seconds: t0.elapsed().as_secs_f64() })
    }

    /// Compacts when the edits applied since the shared folder's version
    /// pass the engine's threshold and no other replica wrote a version since.
    fn maybe_compact(&self, rep: &Replica) {
        let limit = self.opts.compact_log_bytes;
        if limit == 0 || rep.bytes_since_version.load(Ordering::Relaxed) < limit {
            return;
        }
        if let Ok(v) = dir::version_of(&rep.dir) {
            if v != rep.known_version.swap(v, Ordering::Relaxed) {
                rep.bytes_since_version.store(0, Ordering::Relaxed);
                return;
            }
        }
        match self.compact_shared(rep) {
            Ok(r) => tracing::info!(version = r.version, items = r.items, seconds = r.seconds, "shared catalog compacted"),
            Err(EngineError::Conflict(_)) => {}
            Err(e) => tracing::warn!(error = %e, "shared catalog compaction failed; the feed keeps everything"),
        }
    }
}

/// Applies item edits to `view`, one catalog edit id each: the outcome of
/// each, and the vectors the ANN index needs.
#[allow(clippy::type_complexity)]
fn apply_edits(view: &mut crate::catalog::Catalog, edits: &[ItemEdit]) -> (Vec<Result<ItemDone, EngineError>>, Vec<(u64, Vec<f32>)>) {
    let mut vectors = Vec::new();
    let mut out = Vec::with_capacity(edits.len());
    for edit in edits {
        let edit_id = view.last_edit_id() + 1;
        out.push(match edit {
            ItemEdit::Upsert { id, title, embedding, semantic_id } => {
                let field = if semantic_id.is_some() { "semantic_id" } else { "embedding" };
                let item = CatalogItem { id: id.clone(), title: title.clone(), embedding: embedding.clone(), semantic_id: semantic_id.clone() };
                match view.upsert(item, edit_id) {
                    Ok(up) => {
                        vectors.push((up.ann_key, up.embedding));
                        Ok(ItemDone::Upserted(Upserted { item_id: id.clone(), semantic_id: up.semantic_id, created: !up.replaced, feed_position: None }))
                    }
                    Err(e) => Err(super::edits::catalog_error(e, field)),
                }
            }
            ItemEdit::Delete { id } => view.remove(id, edit_id).map(|_| ItemDone::Removed).map_err(|e| super::edits::catalog_error(e, "id")),
        });
    }
    (out, vectors)
}

/// The feed position a catalog version covers (the start without one).
fn version_position(cat: &crate::catalog::Catalog) -> Result<Position, EngineError> {
    match cat.manifest().feed_position.as_deref() {
        Some(p) => p.parse().map_err(feed_error),
        None => Ok(Position::START),
    }
}

impl Engine {
    /// After a reload past trimmed records: the newest model record, when it
    /// is newer than the last model change this replica took and not after
    /// `upto` (later ones come from the stream).
    fn apply_missed_model(&self, rep: &Replica, upto: Position) -> Result<(), FeedError> {
        let Some(e) = rep.feed.sticky(MODEL_STICKY)? else { return Ok(()) };
        let seen = rep.model_change.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| c.position);
        if e.position <= upto && seen.is_none_or(|s| s < e.position) {
            if let Ok(rec) = Record::parse(&e.payload) {
                let _ = self.apply_model(rep, e.position, &rec);
            }
        }
        Ok(())
    }
}

/// Where the feed's head was at start, and the model record to apply once
/// caught up (the sticky one, when it is older than the start position).
fn start_point(rep: &Replica, start: Position) -> Result<(Option<Position>, Option<(Position, Record)>), FeedError> {
    let head = rep.feed.head()?;
    let model = match rep.feed.sticky(MODEL_STICKY)? {
        Some(e) if e.position <= start => Record::parse(&e.payload).ok().map(|r| (e.position, r)),
        _ => None,
    };
    Ok((head, model))
}

/// The feed thread: applies the feed in order until the engine is dropped.
fn follow(weak: Weak<Engine>, rep: Arc<Replica>) {
    let mut backoff = BACKOFF_MIN;
    // until caught up: the head at start, and the model record deferred
    let mut catching_up: Option<(Option<Position>, Option<(Position, Record)>)> = None;
    let mut last_mark: Option<Instant> = None;
    let mut pending = true;
    loop {
        let Some(engine) = weak.upgrade() else { return };
        let position = engine.feed_position();
        let step = (|| -> Result<(), FeedError> {
            if !rep.ready() && catching_up.is_none() {
                catching_up = Some(start_point(&rep, position)?);
            }
            // after (re)connecting and now and then: did the feed trim past us?
            let check = !rep.connected.load(Ordering::Relaxed) || last_mark.is_none_or(|t| t.elapsed() >= MARK_EVERY);
            if check && rep.feed.trimmed_below()? > position {
                tracing::warn!(position = %position, "feed: this replica is behind the trimmed part of the feed");
                let now = engine.reload_newest(&rep).map_err(|e| FeedError::Down(format!("reloading the newest version: {e}")))?;
                if rep.ready() {
                    engine.apply_missed_model(&rep, now)?;
                } else {
                    catching_up = None; // start over from the new position
                }
                return Ok(());
            }
            let wait = if pending { Duration::from_millis(1) } else { READ_WAIT };
            let entries = rep.feed.read_after(position, READ_BATCH, wait)?;
            rep.set_connected(true, None);
            pending = entries.len() == READ_BATCH;
            engine.apply_entries(&rep, &entries, catching_up.as_mut().map(|(_, d)| d));
            if entries.is_empty() {
                rep.observer.applied(engine.feed_position(), Duration::ZERO, 0, engine.catalog().catalog.served_len());
            }
            if let Some((head, _)) = &catching_up {
                if head.is_none_or(|h| engine.feed_position() >= h) {
                    if let Some((_, Some((p, rec)))) = catching_up.take() {
                        let r = engine.apply_model(&rep, p, &rec);
                        rep.deliver(rec.origin(), Outcome::Model(r));
                    }
                    rep.caught_up.store(true, Ordering::Relaxed);
                    tracing::info!(position = %engine.feed_position(), "feed: caught up, ready");
                }
            }
            if last_mark.is_none_or(|t| t.elapsed() >= MARK_EVERY) {
                rep.feed.mark(&rep.name, engine.feed_position())?;
                last_mark = Some(Instant::now());
                engine.maybe_compact(&rep);
                if let Err(e) = engine.rebase(&rep) {
                    tracing::warn!(error = %e, "feed: moving onto the newest catalog version failed; staying on this one");
                }
            }
            Ok(())
        })();
        match step {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                rep.set_connected(false, Some(e.to_string()));
                drop(engine);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

