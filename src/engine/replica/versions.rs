//! Catalog versions in the shared folder, seen from a replica: compaction
//! under the feed's lease (with the feed position each version covers, and
//! trimming), moving onto a newer version written by any replica, and
//! reloading the newest one after falling behind the trimmed feed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Replica, COMPACT_LEASE, READ_BATCH};
use crate::catalog::dir;
use crate::engine::edit_pool::lower_priority;
use crate::engine::edits::{apply_item_edits, CompactReport};
use crate::engine::state::ServedCatalog;
use crate::engine::{Engine, EngineError};
use crate::feed::record::Record;
use crate::feed::{FeedError, Position};
use crate::recall::{write_version_index, Ann};

impl Engine {
    /// Moves this replica onto a newer version of the shared folder (written
    /// by any replica's compaction), so that its in-memory overlay does not
    /// grow forever: opens the version, replays the feed from the version's
    /// position up to this replica's, and swaps. Requests go on meanwhile on
    /// the current view. Returns whether it moved (false: no newer version,
    /// or the version is ahead of this replica, which catches up first).
    pub(super) fn rebase(&self, rep: &Replica) -> Result<bool, EngineError> {
        let newest = dir::version_of(&rep.dir)?;
        if newest <= self.catalog().catalog.manifest().version {
            return Ok(false);
        }
        let t0 = Instant::now();
        let (mut cat, report) = dir::open_read_only(&rep.dir)?;
        let from = covered_position(&cat)?;
        let here = rep.position();
        if from > here {
            return Ok(false);
        }
        let mut after = from;
        while after < here {
            let entries = rep.feed.read_after(after, READ_BATCH, Duration::ZERO)?;
            let before = after;
            for e in entries.into_iter().take_while(|e| e.position <= here) {
                if let Ok(Record::Items { edits, .. }) = rep.open_record(&e.payload) {
                    apply_item_edits(&mut cat, &edits, e.position.ms);
                }
                after = e.position;
            }
            if after == before {
                // nothing between the version and this replica's position
                // can be read (lost from the feed): stay on this version
                return Err(EngineError::Feed(FeedError::Protocol(format!(
                    "the feed holds nothing after {after} up to this replica's {here}"
                ))));
            }
        }
        let ann = Arc::new(Ann::open(&cat)?);
        let served = Arc::new(ServedCatalog { catalog: cat, ann });
        let mut w = self.lock_writer();
        if rep.position() != here {
            return Ok(false); // (only this thread applies the feed: not reached)
        }
        w.head = served.clone();
        self.serving.catalog.store(served);
        drop(w);
        rep.known_version.store(report.version, Ordering::Relaxed);
        tracing::info!(version = report.version, replayed_from = %from, seconds = t0.elapsed().as_secs_f64(), "feed: moved onto the newest catalog version");
        Ok(true)
    }

    /// Serves the newest version of the shared folder from scratch (when this
    /// replica fell below the trimmed part of the feed).
    pub(super) fn reload_newest(&self, rep: &Replica) -> Result<Position, EngineError> {
        let (cat, report) = dir::open_read_only(&rep.dir)?;
        let position = covered_position(&cat)?;
        let ann = Arc::new(Ann::open(&cat)?);
        let served = Arc::new(ServedCatalog { catalog: cat, ann });
        let w = self.publish_head(served);
        rep.set_position(position);
        drop(w);
        rep.known_version.store(report.version, Ordering::Relaxed);
        rep.bytes_since_version.store(0, Ordering::Relaxed);
        tracing::warn!(version = report.version, position = %position, "feed: reloaded the newest catalog version");
        Ok(position)
    }

    /// Compaction of a shared folder: under the feed's lease, the applied view
    /// becomes the folder's next version (recording its position), then the
    /// feed is trimmed below the version before it and below every active
    /// replica's position, and versions no active replica serves are deleted.
    /// Refused while this replica catches up or is behind the newest version.
    pub(in crate::engine) fn compact_shared(&self, rep: &Replica) -> Result<CompactReport, EngineError> {
        let t0 = Instant::now();
        if !rep.ready() {
            return Err(EngineError::CatchingUp);
        }
        if rep.compacting.swap(true, Ordering::SeqCst) {
            return Err(EngineError::Conflict("this replica is compacting the shared catalog already".into()));
        }
        let r = self.compact_leased(rep, t0);
        rep.compacting.store(false, Ordering::SeqCst);
        r
    }

    /// Runs the compaction under the feed's lease, renewed every third of
    /// its time while the version is written, and checked (renewed once
    /// more) right before the switch: a compaction whose lease lapsed (a
    /// stall, a lost connection) switches nothing, so two compactions never
    /// overlap at the switch.
    fn compact_leased(&self, rep: &Replica, t0: Instant) -> Result<CompactReport, EngineError> {
        if !rep.feed.try_lease("compact", &rep.name, COMPACT_LEASE)? {
            return Err(EngineError::Conflict("another replica is compacting the shared catalog".into()));
        }
        let lost = AtomicBool::new(false);
        let lost_flag = &lost;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let r = std::thread::scope(|s| {
            s.spawn(move || loop {
                match stopped.recv_timeout(COMPACT_LEASE / 3) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        match rep.feed.renew_lease("compact", &rep.name, COMPACT_LEASE) {
                            Ok(true) => {}
                            Ok(false) => {
                                lost_flag.store(true, Ordering::SeqCst);
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "feed: renewing the compaction lease failed; retrying")
                            }
                        }
                    }
                    _ => return,
                }
            });
            let still_leased = || {
                let held = !lost.load(Ordering::SeqCst)
                    && rep.feed.renew_lease("compact", &rep.name, COMPACT_LEASE).unwrap_or(false);
                if held {
                    Ok(())
                } else {
                    Err(crate::catalog::CatalogError::Conflict(
                        "the compaction lease lapsed while the version was written: another replica may compact; \
                         nothing was switched"
                            .into(),
                    ))
                }
            };
            let r = self.write_shared_version(rep, t0, &still_leased);
            drop(stop);
            r
        });
        if let Err(e) = rep.feed.release_lease("compact", &rep.name) {
            tracing::warn!(error = %e, "feed: giving the compaction lease back failed (it lapses by itself)");
        }
        r
    }

    fn write_shared_version(
        &self,
        rep: &Replica,
        t0: Instant,
        still_leased: &dyn Fn() -> Result<(), crate::catalog::CatalogError>,
    ) -> Result<CompactReport, EngineError> {
        // the view and the position it covers, read together under the edit lock
        let (view, position) = {
            let w = self.lock_writer();
            (w.head.catalog.clone(), rep.position())
        };
        let current = dir::version_of(&rep.dir)?;
        if let Some(p) = dir::version_feed_position(&rep.dir, current)? {
            if p.parse::<Position>()? > position {
                return Err(EngineError::Conflict(format!(
                    "version {current} covers the feed up to {p}, past this replica's {position}: compact on a replica that caught up"
                )));
            }
        }
        // versions that an active replica still serves stay (their files may be mapped)
        let marks = rep.feed.marks()?;
        let ttl = rep.mark_ttl.as_millis() as u64;
        let active: Vec<_> = marks.iter().filter(|m| m.age_ms < ttl && m.name != rep.name).collect();
        let keep_from = active.iter().map(|m| m.version).min().unwrap_or(current).min(current);
        let prev = view.base().source.clone();
        let extra = |v: &crate::catalog::Catalog, d: &std::path::Path| {
            write_version_index(v, prev.as_deref(), d).map_err(|e| crate::catalog::CatalogError::Format(e.to_string()))
        };
        let (number, _) =
            dir::commit_shared_version(&rep.dir, &view, &position.to_string(), keep_from, &extra, still_leased)?;
        rep.feed.mark(&rep.name, position, self.catalog().catalog.manifest().version)?;
        rep.known_version.store(number, Ordering::Relaxed);
        rep.bytes_since_version.store(0, Ordering::Relaxed);
        // the version before stays for replicas that are opening it: keep
        // the feed after its position, and after every active replica's
        if let Some(older) = dir::version_feed_position(&rep.dir, number - 1)? {
            let below = active.iter().map(|m| m.position).fold(older.parse::<Position>()?, Position::min).min(position);
            let dropped = rep.feed.trim_below(below)?;
            tracing::info!(below = %below, dropped, "feed trimmed");
        }
        Ok(CompactReport {
            version: number,
            items: view.served_len(),
            replayed: 0,
            seconds: t0.elapsed().as_secs_f64(),
            replayed_locked: 0,
            locked_seconds: 0.0,
        })
    }

    /// Starts a compaction on its own thread when the records applied since
    /// the shared folder's version pass the engine's threshold and no other
    /// replica wrote a version since (the feed thread goes on applying).
    pub(super) fn maybe_compact(&self, rep: &Replica) {
        let limit = self.opts.compact_edit_bytes;
        if limit == 0
            || rep.bytes_since_version.load(Ordering::Relaxed) < limit
            || rep.compacting.load(Ordering::SeqCst)
        {
            return;
        }
        if let Ok(v) = dir::version_of(&rep.dir) {
            if v != rep.known_version.swap(v, Ordering::Relaxed) {
                rep.bytes_since_version.store(0, Ordering::Relaxed);
                return;
            }
        }
        let Some(me) = self.me() else { return };
        let spawned = std::thread::Builder::new().name("genrec-compact".into()).spawn(move || {
            lower_priority();
            let Some(rep) = me.changes.replica().cloned() else { return };
            match me.compact_shared(&rep) {
                Ok(r) => tracing::info!(
                    version = r.version,
                    items = r.items,
                    seconds = r.seconds,
                    "shared catalog compacted"
                ),
                Err(EngineError::Conflict(_) | EngineError::CatchingUp) => {}
                Err(e) => tracing::warn!(error = %e, "shared catalog compaction failed; the feed keeps everything"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a compaction thread");
        }
    }
}

/// The feed position a catalog version covers (the start without one).
pub fn covered_position(cat: &crate::catalog::Catalog) -> Result<Position, EngineError> {
    match cat.manifest().feed_position.as_deref() {
        Some(p) => Ok(p.parse()?),
        None => Ok(Position::START),
    }
}
