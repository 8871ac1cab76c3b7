//! Live catalog edits in the engine: upserts (one item, or a batch) and
//! deletes, made durable in the catalog folder's edit log before they are
//! answered, published to requests atomically, and folded into a new catalog
//! version by compaction.
//!
//! Each operation checks its input, turns it into item edits and hands them
//! to the write path ([`Engine::submit_items`]); [`apply_item_edits`] is the
//! one function that applies them to a catalog view, here or on the feed
//! thread of a replica.
//!
//! The path of a local edit: under the edit lock, compute the new catalog view
//! from the newest one (O(levels) per item, see [`crate::catalog::edit`]),
//! add the new vectors to the ANN index, append the records to the log and
//! queue the view; then, without the lock, wait for a sync of the log that
//! covers the records (one sync serves every edit waiting at that moment);
//! then publish the newest queued view whose records are on disk. An edit is
//! answered only after that, so the next request sees it, and a crash after
//! the answer loses nothing.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::edit_pool::lower_priority;
use super::state::ServedCatalog;
use super::{Engine, EngineError};
use crate::catalog::dir::{self, OpenReport, WritableDir};
use crate::catalog::edit::{check_item_text, EditOp, EditRecord, NewItem as CatalogItem};
use crate::catalog::editlog::EditLog;
use crate::catalog::segments::FoldReport;
use crate::catalog::{Catalog, CatalogError};
use crate::feed::record::ItemEdit;
use crate::feed::Position;
use crate::recall::{write_version_index, Ann};

/// A new item for the live catalog: an embedding, or a text to embed.
#[derive(Debug, Clone)]
pub struct ItemInput {
    pub id: String,
    pub title: String,
    pub text: Option<String>,
    pub embedding: Option<Vec<f32>>,
    /// A semantic ID computed elsewhere (checked); none: from the codebooks.
    pub semantic_id: Option<Vec<u32>>,
    /// When the item stops being served, ms since the epoch (the HTTP layer
    /// turns `ttl_s` into it with the server's clock); `None`: never.
    pub expires_at_ms: Option<u64>,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Upserted {
    pub item_id: String,
    pub semantic_id: Vec<u32>,
    /// A new item (not a new state of a served one).
    pub created: bool,
    /// For a semantic ID from the codebooks: how far from the item's
    /// nearest codes it landed (a crowded region pushes it aside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::catalog::edit::Placement>,
    /// With `--feed`: the feed position of the edit's record. This replica
    /// has applied it; another replica has once its `/readyz`
    /// `feed_position` is at or past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub feed_position: Option<crate::feed::Position>,
}

/// A line of a batch that was not applied.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LineError {
    /// 1-based line of the batch.
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub error: String,
}

/// What a batch did.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct BatchOutcome {
    pub applied: usize,
    pub errors: Vec<LineError>,
    /// With `--feed`: lines (1-based) whose record is in the feed but was not
    /// applied by this replica in time: every replica applies it, this one
    /// included, when it gets there (`feed_position`); do not send them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<usize>,
    /// With `--feed`: the feed position of the batch's last record.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub feed_position: Option<crate::feed::Position>,
    /// Where the batch's semantic IDs from the codebooks landed.
    pub placement: BatchPlacement,
}

/// How far from their nearest codes a batch's new semantic IDs landed (the
/// [`crate::catalog::edit::Placement`]s of its lines, summed up).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct BatchPlacement {
    /// IDs placed from the codebooks.
    pub placed: usize,
    /// Of them, those moved off their nearest codes, by the first k-means
    /// level moved (index = level).
    pub moved_at_level: Vec<usize>,
    /// `distance - nearest_distance`, summed over the moved ones, and the largest.
    pub extra_distance_sum: f64,
    pub extra_distance_max: f32,
}

impl BatchPlacement {
    fn of(applied: &[Upserted]) -> BatchPlacement {
        let mut b = BatchPlacement::default();
        for p in applied.iter().filter_map(|u| u.placement) {
            b.placed += 1;
            if let Some(level) = p.moved_at_level {
                if b.moved_at_level.len() <= level {
                    b.moved_at_level.resize(level + 1, 0);
                }
                b.moved_at_level[level] += 1;
                let extra = (p.distance - p.nearest_distance).max(0.0);
                b.extra_distance_sum += extra as f64;
                b.extra_distance_max = b.extra_distance_max.max(extra);
            }
        }
        b
    }

    /// Adds `other`'s counts to these (for summing batches up).
    pub fn merge(&mut self, other: &BatchPlacement) {
        self.placed += other.placed;
        if self.moved_at_level.len() < other.moved_at_level.len() {
            self.moved_at_level.resize(other.moved_at_level.len(), 0);
        }
        for (a, b) in self.moved_at_level.iter_mut().zip(&other.moved_at_level) {
            *a += b;
        }
        self.extra_distance_sum += other.extra_distance_sum;
        self.extra_distance_max = self.extra_distance_max.max(other.extra_distance_max);
    }

    /// Items moved off their nearest codes.
    pub fn moved(&self) -> usize {
        self.moved_at_level.iter().sum()
    }
}

/// The catalog folder an engine writes its edits to.
pub struct CatalogStore {
    /// The folder (taken by a compaction while it runs).
    pub dir: Option<WritableDir>,
    pub log: Arc<EditLog>,
}

/// Where an engine's edits go.
pub enum EditStore {
    /// Kept in memory only (the embedded default; a catalog without a folder).
    Memory,
    /// Logged to a catalog folder this process holds.
    Durable(CatalogStore),
    /// Refused, for the reason given (the folder is held by another process
    /// or cannot be written).
    ReadOnly(String),
}

/// Opens a catalog folder for serving: for writing when no other process
/// holds it, read-only (edits refused) when one does or when the folder
/// cannot be written (a read-only mount).
pub fn open_store(path: &Path) -> Result<(Catalog, EditStore, OpenReport), CatalogError> {
    let why = match dir::open_writable(path) {
        Ok((cat, log, dir, report)) => {
            return Ok((cat, EditStore::Durable(CatalogStore { dir: Some(dir), log: Arc::new(log) }), report))
        }
        Err(CatalogError::Busy(why)) => why,
        Err(CatalogError::Io { path: p, source })
            if matches!(source.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) =>
        {
            format!("{} cannot be written ({source})", p.display())
        }
        Err(e) => return Err(e),
    };
    tracing::warn!("{why}: serving it read-only, live edits are refused");
    let (cat, report) = dir::open_read_only(path)?;
    Ok((cat, EditStore::ReadOnly(why), report))
}

/// The edit side of the engine, behind the edit lock.
pub(super) struct Writer {
    /// The newest view, including edits whose records are not synced yet.
    pub(super) head: Arc<ServedCatalog>,
    pub(super) store: Option<CatalogStore>,
    /// Edits are refused (why).
    read_only: Option<String>,
    /// Views whose records wait for a sync, oldest first.
    queued: VecDeque<Queued>,
    /// A fold or compaction this writer started by itself is on its way.
    maintaining: bool,
}

/// A view waiting for its records to be on disk.
struct Queued {
    /// The log its records went to (a compaction's rotation starts a new
    /// one while older views still wait on the old one).
    log: Arc<EditLog>,
    /// That log's length after its records.
    end: u64,
    view: Arc<ServedCatalog>,
}

impl Writer {
    pub(super) fn new(head: Arc<ServedCatalog>, store: EditStore) -> Self {
        let (store, read_only) = match store {
            EditStore::Memory => (None, None),
            EditStore::Durable(s) => (Some(s), None),
            EditStore::ReadOnly(why) => (None, Some(why)),
        };
        Writer { head, store, read_only, queued: VecDeque::new(), maintaining: false }
    }

    /// What the folder needs now that its log is `log_bytes` long: a full
    /// compaction once the edits above its version (segments and log) pass
    /// `compact_bytes`, else a fold once the log passes `fold_bytes`; none
    /// while one runs or is on its way (claimed here).
    fn maintenance_due(&mut self, log_bytes: u64, compact_bytes: u64, fold_bytes: u64) -> Option<Maintenance> {
        if self.maintaining || self.compacting() {
            return None;
        }
        let segments = self.store.as_ref()?.dir.as_ref()?.segments().bytes();
        let due = if compact_bytes > 0 && segments + log_bytes >= compact_bytes {
            Maintenance::Compact
        } else if fold_bytes > 0 && log_bytes >= fold_bytes {
            Maintenance::Fold
        } else {
            return None;
        };
        self.maintaining = true;
        Some(due)
    }

    /// A compaction or a fold holds the folder.
    pub(super) fn compacting(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.dir.is_none())
    }

    /// Takes the queued views whose records are synced, in order, and
    /// returns the newest of them: a view waits for its own log, so a view
    /// logged after a rotation is not published by an older log's sync.
    fn take_synced(&mut self) -> Option<Arc<ServedCatalog>> {
        let mut newest = None;
        while self.queued.front().is_some_and(|q| q.end <= q.log.synced()) {
            newest = self.queued.pop_front().map(|q| q.view);
        }
        newest
    }
}

pub(super) fn catalog_error(e: CatalogError, field: &'static str) -> EngineError {
    match e {
        CatalogError::Conflict(m) => EngineError::Conflict(m),
        CatalogError::NotFound(m) => EngineError::NotFound(m),
        CatalogError::Format(m) => EngineError::InvalidField { field, message: m },
        other => EngineError::Catalog(other),
    }
}

impl Engine {
    /// Whether edits are made durable (a catalog folder is open for writing).
    pub fn edits_durable(&self) -> bool {
        self.lock_writer().store.is_some()
    }

    /// The catalog-space embedding of a new item: its own (checked), or its
    /// text's, zero-padded when the catalog mixes in collaborative dimensions
    /// that a new item has no signal for.
    fn item_embeddings(&self, items: &[&ItemInput], dim: usize) -> Vec<Result<Vec<f32>, EngineError>> {
        let texts: Vec<String> =
            items.iter().filter(|i| i.embedding.is_none()).filter_map(|i| i.text.clone()).collect();
        let mut embedded = if texts.is_empty() {
            Ok(Vec::new().into_iter())
        } else {
            self.serving.encoder().and_then(|enc| {
                let e = enc.embed(&texts, 64, |_, _| {})?;
                let d = enc.dim();
                Ok(e.chunks(d).map(<[f32]>::to_vec).collect::<Vec<_>>().into_iter())
            })
        };
        items
            .iter()
            .map(|item| {
                let e = match (&item.embedding, &item.text) {
                    (Some(e), _) => {
                        if e.len() != dim {
                            return Err(EngineError::InvalidField {
                                field: "embedding",
                                message: format!("embedding has {} values, the catalog uses {dim}", e.len()),
                            });
                        }
                        e.clone()
                    }
                    (None, Some(_)) => {
                        let mut e = match &mut embedded {
                            Ok(it) => it.next().unwrap_or_default(),
                            Err(e) => return Err(EngineError::InvalidField { field: "text", message: e.to_string() }),
                        };
                        if e.len() > dim {
                            return Err(EngineError::InvalidField {
                                field: "text",
                                message: format!("the encoder gives {} dimensions, the catalog uses {dim}", e.len()),
                            });
                        }
                        e.resize(dim, 0.0);
                        e
                    }
                    (None, None) => {
                        return Err(EngineError::InvalidField {
                            field: "text",
                            message: "give a text or an embedding".into(),
                        })
                    }
                };
                if e.iter().any(|x| !x.is_finite()) || e.iter().all(|&x| x == 0.0) {
                    return Err(EngineError::InvalidField {
                        field: "embedding",
                        message: "embedding must be finite and non-zero".into(),
                    });
                }
                Ok(e)
            })
            .collect()
    }

    /// Adds or replaces one item; answers once it is durable and served.
    pub fn upsert_item(&self, item: ItemInput) -> Result<Upserted, EngineError> {
        let mut out = self.upsert_lines(vec![(1, item)])?;
        match out.1.pop() {
            Some(e) if out.0.is_empty() => Err(e.1),
            _ => out.0.pop().ok_or_else(|| EngineError::Conflict("the item was not applied".into())),
        }
    }

    /// Adds or replaces a batch of items (`(line, item)`): the good lines are
    /// applied, the bad ones reported by line. Answers once the applied ones
    /// are durable and served.
    pub fn upsert_batch(&self, lines: Vec<(usize, ItemInput)>) -> Result<BatchOutcome, EngineError> {
        let (applied, errors) = self.upsert_lines(lines)?;
        let mut pending = Vec::new();
        let mut pending_position = None;
        let errors = errors
            .into_iter()
            .filter(|(line, e)| match e {
                EngineError::NotAppliedYet(p) => {
                    pending.push(*line);
                    pending_position = Some(*p);
                    false
                }
                _ => true,
            })
            .map(|(line, e)| {
                let field = match e.kind() {
                    crate::error::ErrorKind::Invalid { field } => field,
                    _ => None,
                };
                LineError { line, field, error: e.to_string() }
            })
            .collect();
        let feed_position = applied.iter().filter_map(|u| u.feed_position).chain(pending_position).max();
        let placement = BatchPlacement::of(&applied);
        Ok(BatchOutcome { applied: applied.len(), errors, pending, feed_position, placement })
    }

    #[allow(clippy::type_complexity)]
    fn upsert_lines(
        &self,
        lines: Vec<(usize, ItemInput)>,
    ) -> Result<(Vec<Upserted>, Vec<(usize, EngineError)>), EngineError> {
        let served = self.catalog();
        let manifest = served.catalog.manifest();
        let dim = manifest.embedding_dim;
        let refs: Vec<&ItemInput> = lines.iter().map(|l| &l.1).collect();
        let embeddings = if manifest.embedder == crate::model::llm::ITEM_MAP_EMBEDDER {
            // an item map's catalog has no embeddings: the item names its
            // semantic ID and gets the catalog's one vector
            refs.iter().map(|i| item_map_embedding(i, dim)).collect()
        } else {
            self.item_embeddings(&refs, dim)
        };
        let mut errors = Vec::new();
        let mut ready = Vec::new();
        let mut edits = Vec::new();
        for ((line, item), emb) in lines.into_iter().zip(embeddings) {
            if let Err((field, message)) = check_item_text(&item.id, &item.title) {
                errors.push((line, EngineError::InvalidField { field, message }));
                continue;
            }
            match emb {
                Ok(embedding) => {
                    ready.push(line);
                    edits.push(ItemEdit::Upsert {
                        id: item.id,
                        title: item.title,
                        embedding,
                        semantic_id: item.semantic_id,
                        expires_at_ms: item.expires_at_ms,
                    });
                }
                Err(e) => errors.push((line, e)),
            }
        }
        if edits.is_empty() {
            return Ok((Vec::new(), errors));
        }
        let mut applied = Vec::new();
        for (line, r) in ready.into_iter().zip(self.submit_items(edits)?.0) {
            match r {
                Ok(ItemDone::Upserted(u)) => applied.push(u),
                Ok(ItemDone::Removed) => {}
                Err(e) => errors.push((line, e)),
            }
        }
        Ok((applied, errors))
    }

    /// Stops serving item `id`; answers once that is durable and no new
    /// request can see the item (with `--feed`: with the record's position).
    pub fn remove_item(&self, id: &str) -> Result<Option<Position>, EngineError> {
        let cat = self.catalog();
        if !cat.catalog.index_of(id).is_some_and(|i| cat.serves(i)) {
            return Err(EngineError::NotFound(format!("item {id:?} is not served")));
        }
        let (mut out, position) = self.submit_items(vec![ItemEdit::Delete { id: id.to_string() }])?;
        match out.pop() {
            Some(r) => r.map(|_| position),
            None => Err(EngineError::Conflict("the delete was not applied".into())),
        }
    }

    /// Applies item edits here, under the edit lock, and answers once they
    /// are durable and served (see the module's comment).
    pub(super) fn apply_items_here(
        &self,
        edits: Vec<ItemEdit>,
    ) -> Result<Vec<Result<ItemDone, EngineError>>, EngineError> {
        let w = self.lock_writer();
        if let Some(why) = &w.read_only {
            return Err(EngineError::Conflict(why.clone()));
        }
        let mut view = w.head.catalog.clone();
        // record times never go back (a replay expires what the live view did)
        let ts = self.opts.clock.now_ms().max(view.overlay().swept_to());
        let applied = apply_item_edits(&mut view, &edits, ts);
        if !applied.records.is_empty() {
            self.commit(w, view, &applied.records, &applied.vectors)?;
        }
        Ok(applied.outcomes)
    }

    /// Logs `records` (which made `view` from the head) and queues the view;
    /// then, without the lock, adds the new `vectors` to the ANN index, waits
    /// for the log's sync, and publishes. (Another edit's publication may
    /// show these items a few ms before their vectors are in the ANN index;
    /// they are there before this edit is answered.)
    fn commit(
        &self,
        mut w: parking_lot::MutexGuard<'_, Writer>,
        view: Catalog,
        records: &[EditRecord],
        vectors: &[(u64, Vec<f32>)],
    ) -> Result<(), EngineError> {
        let ann = w.head.ann.clone();
        let served = Arc::new(ServedCatalog { catalog: view, ann: ann.clone() });
        let Some(log) = w.store.as_ref().map(|s| s.log.clone()) else {
            // no catalog folder (the embedded model): edits live in memory
            ann.add(vectors)?;
            w.head = served.clone();
            self.serving.catalog.store(served);
            return Ok(());
        };
        let end = log.append(records).map_err(EngineError::Catalog)?;
        w.head = served.clone();
        w.queued.push_back(Queued { log: log.clone(), end, view: served });
        let due = w.maintenance_due(end, self.opts.compact_edit_bytes, self.opts.fold_log_bytes);
        drop(w);
        let added = ann.add(vectors);
        let synced = log.sync_to(end);
        self.publish_synced();
        let done = added.map_err(EngineError::from).and(synced.map_err(EngineError::Catalog));
        match due {
            Some(m) if done.is_ok() => self.maintain_in_background(m),
            // (a failed edit starts nothing, and leaves the claim to a later one)
            Some(_) => self.lock_writer().maintaining = false,
            None => {}
        }
        done
    }

    /// Takes the items expired by now out of the served view's trie, when
    /// this engine writes its own edits (not a replica: there the feed's
    /// records do it, at the same records on every replica) and no edit
    /// waits for its sync. Nothing is logged: the next record's time is at
    /// or after this one, and expires the same items on a replay (see
    /// [`crate::catalog::expiry`]). Until then requests exclude them.
    /// Returns how many left.
    pub fn sweep_expired(&self) -> usize {
        if self.changes.replica().is_some() {
            return 0;
        }
        let now = self.opts.clock.now_ms();
        let mut w = self.lock_writer();
        if w.read_only.is_some() || w.compacting() || !w.queued.is_empty() {
            return 0;
        }
        if w.head.catalog.expired_in_trie(now).next().is_none() {
            return 0;
        }
        let mut view = w.head.catalog.clone();
        let n = view.expire_until(now);
        let next = Arc::new(ServedCatalog { catalog: view, ann: w.head.ann.clone() });
        w.head = next.clone();
        self.serving.catalog.store(next);
        n
    }

    /// Publishes the newest queued view whose records are on disk, each
    /// judged by the log its records went to.
    fn publish_synced(&self) {
        let mut w = self.lock_writer();
        if let Some(v) = w.take_synced() {
            self.serving.catalog.store(v);
        }
    }

    /// Runs a fold or a compaction that [`Writer::maintenance_due`] claimed
    /// on its own thread, at a lower CPU priority, and releases the claim
    /// however it ends.
    fn maintain_in_background(&self, m: Maintenance) {
        /// Releases the claim when dropped (a panic included).
        struct Claim(Arc<Engine>);
        impl Drop for Claim {
            fn drop(&mut self) {
                self.0.lock_writer().maintaining = false;
            }
        }
        let Some(me) = self.me() else {
            self.lock_writer().maintaining = false;
            return;
        };
        let claim = Claim(me);
        let name = match m {
            Maintenance::Fold => "genrec-fold",
            Maintenance::Compact => "genrec-compact",
        };
        // (a thread that cannot start drops the claim with its closure)
        let _ = std::thread::Builder::new().name(name.into()).spawn(move || {
            lower_priority();
            let me = &claim.0;
            match m {
                Maintenance::Compact => match me.compact() {
                    Ok(r) => tracing::info!(
                        version = r.version,
                        items = r.items,
                        seconds = r.seconds,
                        replayed = r.replayed,
                        replayed_locked = r.replayed_locked,
                        locked_seconds = r.locked_seconds,
                        "catalog compacted"
                    ),
                    Err(EngineError::Conflict(why)) => tracing::debug!(%why, "no compaction"),
                    Err(e) => tracing::warn!(error = %e, "catalog compaction failed; edits keep going to the log"),
                },
                Maintenance::Fold => match me.fold_here() {
                    Ok(r) => tracing::info!(
                        entries = r.entries,
                        merges = r.merges,
                        segments = r.segments,
                        segment_bytes = r.segment_bytes,
                        seconds = r.seconds,
                        "edit log folded into a segment"
                    ),
                    Err(EngineError::Conflict(why)) => tracing::debug!(%why, "no fold"),
                    Err(e) => tracing::warn!(error = %e, "folding the edit log failed; edits keep going to the log"),
                },
            }
        });
    }

    /// Folds the edit log into a new segment of the catalog folder (see
    /// [`crate::catalog::segments`]): new edits go to a new log, and the
    /// item states the old logs changed are written as a segment, merged
    /// with older ones in tiers. The served view does not change. Edits go
    /// on meanwhile; a compaction asked for meanwhile is refused (409), and
    /// an automatic one is claimed again by a later edit.
    pub fn fold_here(&self) -> Result<FoldReport, EngineError> {
        let (mut store_dir, view, _, _) = self.rotate_log("fold")?;
        let done = store_dir.fold(&view);
        if let Some(store) = self.lock_writer().store.as_mut() {
            store.dir = Some(store_dir);
        }
        done.map_err(EngineError::Catalog)
    }

    /// The first step of a fold or a compaction (`what`), under the edit
    /// lock: new edits go to a new log from now on, and the view holding
    /// every edit of the old logs (synced, and published) is what gets
    /// written. Takes the folder handle (one fold or compaction at a time);
    /// returns it, the view, the new log's number and the new log.
    fn rotate_log(&self, what: &str) -> Result<(WritableDir, Catalog, u64, Arc<EditLog>), EngineError> {
        let busy = || EngineError::Conflict(format!("no {what}: a compaction or fold is running already"));
        let mut w = self.lock_writer();
        if w.compacting() {
            return Err(busy());
        }
        let Some(store) = w.store.as_mut() else {
            return Err(EngineError::Conflict(format!("the catalog is not open for writing: no {what}")));
        };
        let old = store.log.clone();
        old.sync_to(old.len()).map_err(EngineError::Catalog)?;
        let mut dir = store.dir.take().ok_or_else(busy)?;
        let (log, number) = match dir.rotate() {
            Ok(x) => x,
            Err(e) => {
                store.dir = Some(dir);
                return Err(EngineError::Catalog(e));
            }
        };
        let log = Arc::new(log);
        store.log = log.clone();
        // everything queued is synced now
        if let Some(q) = w.queued.drain(..).next_back() {
            self.serving.catalog.store(q.view);
        }
        Ok((dir, w.head.catalog.clone(), number, log))
    }

    /// Writes the live edits into a new version of this engine's catalog
    /// folder (written beside the current one, switched to by an atomic
    /// rename) with its ANN index, then serves it with the edits made
    /// meanwhile replayed on top. Edits go on during the compaction.
    pub(super) fn compact_here(&self) -> Result<CompactReport, EngineError> {
        let t0 = Instant::now();
        // 1. new edits go to a new log; the view so far is what gets written
        let (mut store_dir, view, number, new_log) = self.rotate_log("compaction")?;
        let done = self.write_and_switch(&mut store_dir, &view, number, &new_log);
        let mut w = self.lock_writer();
        let locked = Instant::now();
        if let Some(store) = w.store.as_mut() {
            store.dir = Some(store_dir);
        }
        let (served, replayed, read_to) = done?;
        // 4. the edits made since that replay, on the new base, under the lock
        // (only those are read: the backlog of a long compaction was replayed without it)
        let (records, _) = new_log.read_from(read_to).map_err(EngineError::Catalog)?;
        let mut cat = served.catalog.clone();
        let mut vectors = Vec::new();
        for r in &records {
            if let Some(crate::catalog::edit::Applied::Upserted(up)) = cat.apply(r).map_err(EngineError::Catalog)? {
                vectors.push((up.ann_key, up.embedding));
            }
        }
        served.ann.add(&vectors)?;
        new_log.sync_to(new_log.len()).map_err(EngineError::Catalog)?;
        let next = Arc::new(ServedCatalog { catalog: cat, ann: served.ann.clone() });
        w.queued.clear();
        w.head = next.clone();
        self.serving.catalog.store(next);
        Ok(CompactReport {
            version: number,
            items: view.served_len(),
            replayed: replayed + records.len(),
            seconds: t0.elapsed().as_secs_f64(),
            replayed_locked: records.len(),
            locked_seconds: locked.elapsed().as_secs_f64(),
        })
    }

    /// Steps 2-3 of a compaction, without the edit lock: write the version,
    /// switch to it, open it and replay what the new log holds so far.
    /// Returns the view, the records replayed and where in the log they end.
    fn write_and_switch(
        &self,
        store_dir: &mut WritableDir,
        view: &Catalog,
        number: u64,
        new_log: &EditLog,
    ) -> Result<(Arc<ServedCatalog>, usize, u64), EngineError> {
        let prev = view.base().source.clone();
        let extra = |v: &Catalog, d: &Path| {
            write_version_index(v, prev.as_deref(), d).map_err(|e| CatalogError::Format(e.to_string()))
        };
        let vdir = store_dir.commit_version(view, number, &extra).map_err(EngineError::Catalog)?;
        let base = crate::catalog::Base::map(&vdir).map_err(EngineError::Catalog)?;
        let mut cat = Catalog::from_base(base);
        let (records, mut read_to) = new_log.read_synced_from(0).map_err(EngineError::Catalog)?;
        for r in &records {
            cat.apply(r).map_err(EngineError::Catalog)?;
        }
        let ann = Arc::new(Ann::open(&cat)?);
        // the edits made meanwhile, still without the lock, until few are
        // left: at 10^7 the catch-up under the lock held edits for seconds
        let mut replayed = records.len();
        loop {
            let (more, end) = new_log.read_synced_from(read_to).map_err(EngineError::Catalog)?;
            let mut vectors = Vec::new();
            for r in &more {
                if let Some(crate::catalog::edit::Applied::Upserted(up)) = cat.apply(r).map_err(EngineError::Catalog)? {
                    vectors.push((up.ann_key, up.embedding));
                }
            }
            ann.add(&vectors)?;
            (replayed, read_to) = (replayed + more.len(), end);
            if more.len() < CATCH_UP_UNLOCKED_BELOW {
                break;
            }
        }
        Ok((Arc::new(ServedCatalog { catalog: cat, ann }), replayed, read_to))
    }
}

/// A compaction replays the edits made during it without the edit lock
/// until a pass finds fewer than this many; the rest under the lock.
const CATCH_UP_UNLOCKED_BELOW: usize = 1_000;

/// Work on the catalog folder that edits make due.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Maintenance {
    /// Fold the log into a segment.
    Fold,
    /// Write a whole new version.
    Compact,
}

/// What a compaction did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CompactReport {
    pub version: u64,
    /// Items served by the new version.
    pub items: usize,
    /// Edits made during the compaction, replayed on the new version.
    pub replayed: usize,
    pub seconds: f64,
    /// Of those, the ones replayed at the end under the edit lock, and how
    /// long edits waited for it then.
    pub replayed_locked: usize,
    pub locked_seconds: f64,
}

/// What applying one item edit did.
pub enum ItemDone {
    Upserted(Upserted),
    Removed,
}

impl ItemDone {
    /// The same outcome, stamped with the feed position of its record.
    pub(super) fn at(self, position: Position) -> ItemDone {
        match self {
            ItemDone::Upserted(u) => ItemDone::Upserted(Upserted { feed_position: Some(position), ..u }),
            other => other,
        }
    }
}

/// What [`apply_item_edits`] did to a view.
pub(super) struct AppliedEdits {
    /// Each edit's outcome, in order.
    pub outcomes: Vec<Result<ItemDone, EngineError>>,
    /// The vectors of the items upserted, for the ANN index.
    pub vectors: Vec<(u64, Vec<f32>)>,
    /// The edit-log records of the edits applied (the semantic IDs assigned,
    /// the normalised embeddings), stamped `ts_ms`.
    pub records: Vec<EditRecord>,
}

/// Applies item edits to `view`, one catalog edit id each: the one place
/// an item edit becomes part of a catalog, for local edits and for every
/// replica applying the feed alike (the same view and edits give the same
/// semantic IDs everywhere).
pub(super) fn apply_item_edits(view: &mut Catalog, edits: &[ItemEdit], ts_ms: u64) -> AppliedEdits {
    let mut out = AppliedEdits {
        outcomes: Vec::with_capacity(edits.len()),
        vectors: Vec::new(),
        records: Vec::with_capacity(edits.len()),
    };
    // items expired by the records' time leave the trie first, alike on
    // every replica (see crate::catalog::expiry)
    view.expire_until(ts_ms);
    for edit in edits {
        let edit_id = view.last_edit_id() + 1;
        let outcome = match edit {
            ItemEdit::Upsert { id, title, embedding, semantic_id, expires_at_ms } => {
                let field = if semantic_id.is_some() { "semantic_id" } else { "embedding" };
                let item = CatalogItem {
                    id: id.clone(),
                    title: title.clone(),
                    embedding: embedding.clone(),
                    semantic_id: semantic_id.clone(),
                    expires_at_ms: *expires_at_ms,
                };
                view.upsert(item, edit_id).map_err(|e| catalog_error(e, field)).map(|up| {
                    out.records.push(EditRecord {
                        edit_id,
                        ts_ms,
                        op: EditOp::Upsert {
                            id: id.clone(),
                            title: title.clone(),
                            semantic_id: up.semantic_id.clone(),
                            embedding: up.embedding.clone(),
                            expires_at_ms: *expires_at_ms,
                        },
                    });
                    out.vectors.push((up.ann_key, up.embedding));
                    ItemDone::Upserted(Upserted {
                        item_id: id.clone(),
                        semantic_id: up.semantic_id,
                        created: !up.replaced,
                        placement: up.placement,
                        feed_position: None,
                    })
                })
            }
            ItemEdit::Delete { id } => view.remove(id, edit_id).map_err(|e| catalog_error(e, "id")).map(|_| {
                out.records.push(EditRecord { edit_id, ts_ms, op: EditOp::Delete { id: id.clone() } });
                ItemDone::Removed
            }),
        };
        out.outcomes.push(outcome);
    }
    out
}

/// The embedding of an item upserted into an item map's catalog (see
/// [`crate::model::llm::TextLayout::catalog`]): its semantic ID is required.
fn item_map_embedding(item: &ItemInput, dim: usize) -> Result<Vec<f32>, EngineError> {
    if item.semantic_id.is_none() {
        return Err(EngineError::InvalidField {
            field: "semantic_id",
            message: "this catalog comes from an LLM's item map and has no embeddings: give the item's semantic_id (one code per level, the N of each level's token)".into(),
        });
    }
    Ok(vec![1.0; dim])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Across a compaction's log rotation, a view logged to the new log is
    /// not published because the old log's sync went further (it compared
    /// the old log's synced length with the new log's offsets, and served
    /// edits not yet on disk).
    #[test]
    fn a_view_waits_for_its_own_log_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("genrec-rotation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = Arc::new(EditLog::open(&dir.join("edits-1.log"), 0).unwrap());
        let new = Arc::new(EditLog::open(&dir.join("edits-2.log"), 0).unwrap());
        let rec = |edit_id| EditRecord { edit_id, ts_ms: 0, op: EditOp::Delete { id: "x".into() } };
        // the old log: ten records, all on disk
        for i in 1..=10 {
            old.append(&[rec(i)]).unwrap();
        }
        old.sync_to(old.len()).unwrap();
        // after the rotation: one record in the new log, not synced yet
        let end = new.append(&[rec(11)]).unwrap();
        assert!(end < old.synced(), "the new log's offset is below what the old log synced");
        let (_, catalog) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
        let ann = Arc::new(Ann::open(&catalog).unwrap());
        let view = Arc::new(ServedCatalog { catalog, ann });
        let mut w = Writer::new(view.clone(), EditStore::Memory);
        w.queued.push_back(Queued { log: old.clone(), end: old.len(), view: view.clone() });
        w.queued.push_back(Queued { log: new.clone(), end, view: view.clone() });
        assert!(w.take_synced().is_some(), "the old log's view is on disk");
        assert!(w.take_synced().is_none(), "the new log's view waits for the new log's sync");
        new.sync_to(end).unwrap();
        assert!(w.take_synced().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
