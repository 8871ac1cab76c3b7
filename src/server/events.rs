//! `POST /v1/events`: engagement events from the frontends, as NDJSON (one
//! event per line). Bad lines are named by line and field; the rest are
//! applied ([`crate::engine::events`]). The same body limits as a batch of
//! item upserts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::admin::{ndjson_lines, TimeValue};
use super::api::{body_bytes, parse_body, ApiError, ErrorBody};
use super::AppState;
use crate::catalog::engagement::EventKind;
use crate::engine::edits::LineError;
use crate::engine::events::EventsOutcome;
use crate::feed::record::FeedEvent;

/// How far ahead of the server's clock an event's `ts` may be (clock skew).
const MAX_FUTURE_MS: u64 = 60_000;
/// Largest `value` of one event.
const MAX_VALUE: f32 = 1e6;

/// One line of `POST /v1/events`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventBody {
    item_id: String,
    kind: EventKind,
    /// When it happened: RFC 3339 or ms since the Unix epoch (default: when
    /// the server received it). At most a minute ahead of the server's clock.
    #[serde(default)]
    ts: Option<TimeValue>,
    /// Weight of the event, finite and >= 0 (default 1; e.g. the share of a
    /// video watched).
    #[serde(default)]
    value: Option<f32>,
}

impl EventBody {
    fn check(self, now_ms: u64) -> Result<FeedEvent, (&'static str, String)> {
        let ts_ms = match self.ts {
            None => now_ms,
            Some(TimeValue::Ms(ms)) => ms,
            Some(TimeValue::Rfc3339(s)) => crate::catalog::expiry::parse_rfc3339_ms(&s).map_err(|m| ("ts", m))?,
        };
        if ts_ms > now_ms + MAX_FUTURE_MS {
            return Err((
                "ts",
                format!("ts is {} ms ahead of the server's clock (at most {MAX_FUTURE_MS})", ts_ms - now_ms),
            ));
        }
        let value = self.value.unwrap_or(1.0);
        if !(value.is_finite() && (0.0..=MAX_VALUE).contains(&value)) {
            return Err(("value", format!("value must be a number from 0 to {MAX_VALUE}")));
        }
        if self.item_id.is_empty() {
            return Err(("item_id", "item_id must not be empty".into()));
        }
        Ok(FeedEvent { item_id: self.item_id, kind: self.kind, ts_ms, value })
    }
}

/// Records engagement events: per item and per semantic-ID prefix,
/// exponentially decayed counts (half-life `--events-half-life-s`) that the
/// trending prior reads, and that `GET /admin/items/{id}` shows.
#[utoipa::path(post, path = "/v1/events", tag = "recommend",
    request_body(description = "NDJSON: one EventBody object per line (at most 100,000 lines, 64 MiB)",
        content((String = "application/x-ndjson"), (String = "application/jsonl"))),
    responses(
        (status = 200, description = "What the batch did: lines applied, bad lines named", body = EventsOutcome),
        (status = 413, body = ErrorBody),
        (status = 503, description = "A replica still catching up with its feed, or the feed is down", body = ErrorBody),
    ))]
pub(crate) async fn record_events(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        let bytes = body_bytes(body)?;
        let engine = st.engine.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let now_ms = engine.now_ms();
            let (lines, mut errors) = parse_lines(&bytes, now_ms)?;
            let mut out = engine.record_events(lines).map_err(ApiError::from)?;
            errors.append(&mut out.errors);
            errors.sort_by_key(|e| e.line);
            out.errors = errors;
            Ok::<_, ApiError>(out)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, format!("worker failed: {e}")))??;
        ::metrics::counter!(super::metrics::EVENTS).increment(outcome.applied as u64);
        Ok::<_, ApiError>(Json(outcome).into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The good lines as events, the bad ones as line errors.
#[allow(clippy::type_complexity)]
fn parse_lines(bytes: &[u8], now_ms: u64) -> Result<(Vec<(usize, FeedEvent)>, Vec<LineError>), ApiError> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in ndjson_lines(bytes, "events")? {
        // the fast parser first; the one that names fields for a bad line
        let parsed = serde_json::from_slice::<EventBody>(line)
            .or_else(|_| parse_body::<EventBody>(line).map_err(|e| e.event_line_error(n)));
        match parsed.map(|b| b.check(now_ms).map_err(|(field, error)| LineError { line: n, field: Some(field), error }))
        {
            Ok(Ok(e)) => lines.push((n, e)),
            Ok(Err(e)) | Err(e) => errors.push(e),
        }
    }
    Ok((lines, errors))
}
