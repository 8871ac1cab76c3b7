//! The feed thread of a replica: reads the feed in order and applies it,
//! catches up at start (deferring model records to the end), retries a lost
//! connection with backoff, marks its position, and now and then compacts or
//! moves onto a newer catalog version.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Outcome, Replica, BACKOFF_MAX, BACKOFF_MIN, MARK_EVERY, READ_BATCH, READ_WAIT};
use crate::engine::Engine;
use crate::feed::record::{Record, MODEL_STICKY};
use crate::feed::{FeedError, Position};

/// A replica until it has caught up: where the feed's head was at start,
/// and the model record to apply once there.
struct CatchUp {
    head: Option<Position>,
    /// The newest model record replayed so far (at first the sticky one, when
    /// it is older than the start position and so is not replayed).
    model: Option<(Position, Record)>,
}

fn start_point(rep: &Replica, start: Position) -> Result<CatchUp, FeedError> {
    let head = rep.feed.head()?;
    let model = match rep.feed.sticky(MODEL_STICKY)? {
        Some(e) if e.position <= start => Record::parse(&e.payload).ok().map(|r| (e.position, r)),
        _ => None,
    };
    Ok(CatchUp { head, model })
}

/// The feed thread: applies the feed in order until the engine is dropped.
pub(super) fn follow(weak: Weak<Engine>, rep: Arc<Replica>) {
    let mut backoff = BACKOFF_MIN;
    let mut catching_up: Option<CatchUp> = None;
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
            engine.apply_entries(&rep, &entries, catching_up.as_mut().map(|c| &mut c.model));
            if entries.is_empty() {
                rep.observer.applied(engine.feed_position(), Duration::ZERO, 0, engine.catalog().catalog.served_len());
            }
            if catching_up.as_ref().is_some_and(|c| c.head.is_none_or(|h| engine.feed_position() >= h)) {
                if let Some(CatchUp { model: Some((p, rec)), .. }) = catching_up.take() {
                    let r = engine.apply_model(&rep, p, &rec);
                    rep.deliver(rec.origin(), Outcome::Model(r));
                }
                rep.caught_up.store(true, Ordering::Relaxed);
                tracing::info!(position = %engine.feed_position(), "feed: caught up, ready");
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
