//! Engagement events in the engine (`POST /v1/events`): checked against the
//! catalog, added to the decayed counts here ([`crate::catalog::engagement`]),
//! or appended to the replica feed, whose thread adds them on every replica.
//! Nothing waits for a replica to apply them, and they are not logged: the
//! counts are about the last minutes, and a restarted server starts them
//! from the events that follow.

use super::edits::LineError;
use super::{Engine, EngineError};
use crate::catalog::engagement::{Event, EventKind};
use crate::catalog::Catalog;
use crate::feed::record::{FeedEvent, Record};
use crate::feed::Position;

/// Events per feed record.
const EVENTS_PER_RECORD: usize = 5000;

/// What a batch of events did.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct EventsOutcome {
    pub applied: usize,
    pub errors: Vec<LineError>,
    /// With `--feed`: the position of the batch's last record (replicas
    /// apply it when they reach it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub feed_position: Option<Position>,
}

/// An item's decayed counts and rates, as `GET /admin/items/{id}` shows them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ItemRates {
    /// Events per minute right now, by kind (the decayed count times
    /// ln 2 / half-life).
    pub per_minute: std::collections::BTreeMap<String, f64>,
    /// The half-life of the counts, seconds.
    pub half_life_s: f64,
}

impl Engine {
    /// Checks `(line, event)`s against the catalog (an unknown item is named
    /// by line) and applies the rest through the write path.
    pub fn record_events(&self, lines: Vec<(usize, FeedEvent)>) -> Result<EventsOutcome, EngineError> {
        let cat = self.catalog();
        let mut out = EventsOutcome::default();
        let mut good = Vec::with_capacity(lines.len());
        let mut resolved = Vec::with_capacity(lines.len());
        for (line, e) in lines {
            match resolve(&cat.catalog, &e) {
                Some(ev) => {
                    resolved.push(ev);
                    good.push(e);
                }
                None => out.errors.push(LineError {
                    line,
                    field: Some("item_id"),
                    error: format!("item {:?} is not in the catalog", e.item_id),
                }),
            }
        }
        out.applied = good.len();
        match self.changes.replica() {
            // (resolved once, against the view that checked them)
            None => self.serving.engagement.add(&resolved, |i| cat.catalog.sid(i), self.now_ms()),
            Some(rep) => {
                for chunk in good.chunks(EVENTS_PER_RECORD) {
                    out.feed_position = Some(rep.append(&Record::Events { events: chunk.to_vec() })?);
                }
            }
        }
        Ok(out)
    }

    /// Adds a feed record's events to this engine's counts (items this
    /// catalog lacks are skipped). Returns how many were added.
    pub(super) fn apply_events_here(&self, events: &[FeedEvent]) -> usize {
        let cat = self.catalog();
        let c = &cat.catalog;
        let resolved: Vec<Event> = events.iter().filter_map(|e| resolve(c, e)).collect();
        self.serving.engagement.add(&resolved, |i| c.sid(i), self.now_ms());
        resolved.len()
    }

    /// An item's current rates.
    pub(super) fn item_rates(&self, item: u32) -> ItemRates {
        let e = &self.serving.engagement;
        let counts = e.at(self.now_ms()).item(item);
        let per_count = std::f64::consts::LN_2 / (e.half_life_ms() as f64 / 60_000.0);
        ItemRates {
            per_minute: EventKind::ALL
                .iter()
                .map(|k| {
                    let name = serde_json::to_value(k).ok().and_then(|v| v.as_str().map(str::to_string));
                    (name.unwrap_or_default(), counts[*k as usize] * per_count)
                })
                .collect(),
            half_life_s: e.half_life_ms() as f64 / 1000.0,
        }
    }
}

/// An event against a catalog view (`None`: the view lacks its item).
fn resolve(c: &Catalog, e: &FeedEvent) -> Option<Event> {
    c.index_of(&e.item_id).map(|item| Event { item, kind: e.kind, ts_ms: e.ts_ms, value: e.value })
}
