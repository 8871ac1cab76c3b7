//! The feed thread of a replica: reads the feed in order and applies it,
//! catches up at start (deferring model records to the end), retries a lost
//! connection with backoff, marks its position, and now and then compacts or
//! moves onto a newer catalog version.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Replica, BACKOFF_MAX, BACKOFF_MIN, MARK_EVERY, READ_BATCH, READ_WAIT};
use crate::engine::Engine;
use crate::feed::record::{Record, MODEL_STICKY};
use crate::feed::{FeedError, Position};

/// A replica until it has caught up: where the feed's head was at start,
/// and the model records to apply once there.
struct CatchUp {
    head: Option<Position>,
    /// Model records in stream order: the ones kept beside the feed that are
    /// not after the start position (so are not replayed), then the replayed
    /// ones. Once caught up, the newest that loads is applied.
    models: Vec<(Position, Record)>,
}

fn start_point(rep: &Replica, start: Position) -> Result<CatchUp, FeedError> {
    let head = rep.feed.head()?;
    let mut models: Vec<(Position, Record)> = rep
        .feed
        .sticky(MODEL_STICKY)?
        .into_iter()
        .filter(|e| e.position <= start)
        .filter_map(|e| rep.open_record(&e.payload).ok().map(|r| (e.position, r)))
        .collect();
    models.sort_by_key(|m| m.0);
    Ok(CatchUp { head, models })
}

/// The feed thread: applies the feed in order until the engine is dropped.
pub(super) fn follow(weak: Weak<Engine>, rep: Arc<Replica>) {
    let mut backoff = BACKOFF_MIN;
    let mut catching_up: Option<CatchUp> = None;
    let mut last_mark: Option<Instant> = None;
    let mut pending = true;
    // the last read found the feed trimmed past this replica
    let mut behind = false;
    loop {
        let Some(engine) = weak.upgrade() else { return };
        rep.beat();
        let position = rep.position();
        let step = (|| -> Result<(), FeedError> {
            if !rep.caught_up() && catching_up.is_none() {
                catching_up = Some(start_point(&rep, position)?);
            }
            // after (re)connecting and now and then: did the feed trim past us?
            let check =
                !rep.connected.load(Ordering::Relaxed) || last_mark.is_none_or(|t| t.elapsed() >= MARK_EVERY) || behind;
            behind = false;
            if check && rep.feed.trimmed_below()? > position {
                tracing::warn!(position = %position, "feed: this replica is behind the trimmed part of the feed");
                let now = match engine.reload_newest(&rep) {
                    Ok(p) => p,
                    Err(e) => {
                        // the feed is up; the shared folder is not readable
                        tracing::error!(error = %e, "feed: reloading the newest catalog version failed; retrying");
                        std::thread::sleep(BACKOFF_MAX);
                        return Ok(());
                    }
                };
                if rep.caught_up() {
                    engine.apply_missed_models(&rep, now)?;
                } else {
                    catching_up = None; // start over from the new position
                }
                return Ok(());
            }
            let wait = if pending { Duration::from_millis(1) } else { READ_WAIT };
            let entries = rep.feed.read_after(position, READ_BATCH, wait)?;
            rep.set_connected(true, None);
            // a trim between the check above and this read would hide a gap:
            // the trim mark is set before the entries go, so look again
            if !entries.is_empty() && rep.feed.trimmed_below()? > position {
                behind = true; // the next round reloads
                return Ok(());
            }
            pending = entries.len() == READ_BATCH;
            engine.apply_entries(&rep, &entries, catching_up.as_mut().map(|c| &mut c.models));
            rep.beat();
            if entries.is_empty() {
                rep.observer.applied(rep.position(), Duration::ZERO, 0, engine.catalog().catalog.served_len());
            }
            if catching_up.as_ref().is_some_and(|c| c.head.is_none_or(|h| rep.position() >= h)) {
                if let Some(c) = catching_up.take() {
                    engine.apply_newest_loadable(&rep, &c.models);
                }
                rep.caught_up.store(true, Ordering::Relaxed);
                tracing::info!(position = %rep.position(), "feed: caught up, ready");
            }
            if last_mark.is_none_or(|t| t.elapsed() >= MARK_EVERY) {
                rep.feed.mark(&rep.name, rep.position(), engine.catalog().catalog.manifest().version)?;
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
