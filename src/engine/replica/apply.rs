//! Applying the feed on one replica: runs of item records as one new catalog
//! view, model records (a load, or a rollback to a named folder), and the
//! outcome handed to the admin call that published a record.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{ModelChange, RecordOutcome, Replica};
use crate::engine::edits::apply_item_edits;
use crate::engine::state::{ModelInfo, ServedCatalog};
use crate::engine::{Engine, EngineError};
use crate::feed::record::{Record, MODEL_STICKY};
use crate::feed::{now_ms, Entry, FeedError, Position};

impl Engine {
    /// Applies feed entries in order (an entry at or below the applied
    /// position is skipped, so applying twice changes nothing). A run of item
    /// records becomes one new catalog view.
    pub(super) fn apply_entries(
        &self,
        rep: &Replica,
        entries: &[Entry],
        mut deferred: Option<&mut Vec<(Position, Record)>>,
    ) {
        let done = self.feed_position();
        let mut run: Vec<(Position, Record)> = Vec::new();
        let mut edits = 0;
        for e in entries.iter().filter(|e| e.position > done) {
            let rec = match rep.open_record(&e.payload) {
                Ok(r) => r,
                Err(why) => {
                    edits += self.apply_item_records(rep, std::mem::take(&mut run));
                    tracing::warn!(position = %e.position, error = %why, "feed: skipping a record that is not this deployment's or does not parse");
                    rep.skipped.fetch_add(1, Ordering::Relaxed);
                    rep.observer.skipped();
                    self.advance(rep, e.position);
                    continue;
                }
            };
            rep.applied.fetch_add(1, Ordering::Relaxed);
            if rep.caught_up() {
                // (a catching-up replica replays what a version may hold already)
                rep.bytes_since_version.fetch_add(e.payload.len() as u64, Ordering::Relaxed);
            }
            if matches!(rec, Record::Items { .. }) {
                run.push((e.position, rec));
                continue;
            }
            edits += self.apply_item_records(rep, std::mem::take(&mut run));
            if let Record::Events { events } = &rec {
                // (after the items before them: an event may name one)
                self.apply_events_here(events);
                self.advance(rep, e.position);
                continue;
            }
            let applied = match deferred.as_deref_mut() {
                Some(models) => {
                    models.push((e.position, rec));
                    None
                }
                None => Some((self.apply_model(rep, e.position, &rec), rec)),
            };
            self.advance(rep, e.position);
            if let Some((r, rec)) = applied {
                rep.deliver(rec.origin(), RecordOutcome::Model(r));
            }
        }
        edits += self.apply_item_records(rep, run);
        if let Some(last) = entries.last() {
            let lag = Duration::from_millis(now_ms().saturating_sub(last.position.ms));
            rep.observer.applied(self.feed_position(), lag, edits, self.catalog().catalog.served_len());
        }
    }

    /// Moves this replica's applied position past a record that left the
    /// catalog as it was (a model record, or one skipped).
    fn advance(&self, rep: &Replica, position: crate::feed::Position) {
        let _w = self.lock_writer();
        rep.set_position(position);
    }

    /// Applies consecutive item records as one new catalog view, then
    /// answers each record's publisher (if it is waiting here). Returns the
    /// edits applied.
    fn apply_item_records(&self, rep: &Replica, run: Vec<(Position, Record)>) -> usize {
        let Some(last) = run.last().map(|r| r.0) else { return 0 };
        // only this thread changes the head in feed mode: apply and index
        // without the lock (readers of the lock, /readyz among them, do not
        // wait), then publish the view and its position together under it
        let (mut view, ann) = {
            let w = self.lock_writer();
            (w.head.catalog.clone(), w.head.ann.clone())
        };
        let mut vectors = Vec::new();
        let mut outcomes = Vec::with_capacity(run.len());
        let mut edits_applied = 0;
        for (position, rec) in run {
            if let Record::Items { origin, edits } = rec {
                let applied = apply_item_edits(&mut view, &edits, position.ms);
                vectors.extend(applied.vectors);
                edits_applied += edits.len();
                outcomes.push((origin, applied.outcomes));
            }
        }
        if let Err(e) = ann.add(&vectors) {
            tracing::warn!(error = %e, position = %last, "feed: adding vectors to the ANN index failed (generation still serves the items)");
        }
        let served = Arc::new(ServedCatalog { catalog: view, ann });
        {
            let _w = self.publish_head(served);
            rep.set_position(last);
        }
        for (origin, out) in outcomes {
            rep.deliver(origin.as_deref(), RecordOutcome::Items(out));
        }
        edits_applied
    }

    /// Applies a model record here: a refusal keeps the model in service.
    pub(super) fn apply_model(
        &self,
        rep: &Replica,
        position: Position,
        rec: &Record,
    ) -> Result<ModelInfo, EngineError> {
        let old = self.model().map(|m| m.info());
        let (kind, path, r) = match rec {
            Record::ModelLoad { path, .. } => ("model_load", path.clone(), self.load_checkpoint_here(path)),
            Record::ModelRollback { to, .. } => ("model_rollback", to.clone(), self.roll_back_to(to)),
            Record::Items { .. } | Record::Events { .. } => {
                return Err(EngineError::Feed(FeedError::Protocol("not a model record".into())))
            }
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
        *rep.model_change.lock() = Some(ModelChange { position, kind, path, refused });
        r
    }

    /// Puts the model that was loaded from `to` in service: the previous one
    /// when it is that, nothing when the current one is, else a fresh load.
    fn roll_back_to(&self, to: &str) -> Result<ModelInfo, EngineError> {
        if let Some(m) = self.model().filter(|m| m.source == to) {
            return Ok(m.info());
        }
        let prev_matches = self.changes.previous.lock().as_ref().is_some_and(|m| m.source == to);
        if prev_matches {
            return self.rollback_here();
        }
        self.load_checkpoint_here(to)
    }

    /// Of model records in stream order, applies the newest one this replica
    /// can load (a refused one left the replicas that applied it in order on
    /// the one before): what applying them all in order would leave.
    pub(super) fn apply_newest_loadable(&self, rep: &Replica, models: &[(Position, Record)]) {
        for (p, rec) in models.iter().rev() {
            let r = self.apply_model(rep, *p, rec);
            let ok = r.is_ok();
            rep.deliver(rec.origin(), RecordOutcome::Model(r));
            if ok {
                return;
            }
        }
    }

    /// After a reload past trimmed records: the model records kept beside the
    /// feed that are newer than the last model change this replica took and
    /// not after `upto` (later ones come from the stream).
    pub(super) fn apply_missed_models(&self, rep: &Replica, upto: Position) -> Result<(), FeedError> {
        let seen = rep.model_change.lock().as_ref().map(|c| c.position);
        let mut missed: Vec<(Position, Record)> = rep
            .feed
            .sticky(MODEL_STICKY)?
            .into_iter()
            .filter(|e| e.position <= upto && seen.is_none_or(|s| s < e.position))
            .filter_map(|e| rep.open_record(&e.payload).ok().map(|r| (e.position, r)))
            .collect();
        missed.sort_by_key(|m| m.0);
        self.apply_newest_loadable(rep, &missed);
        Ok(())
    }
}
