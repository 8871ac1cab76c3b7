//! Admin routes (behind the bearer token of [`super::auth`]; off when no
//! token is configured):
//! `GET/POST /admin/models`, `POST /admin/models/rollback`,
//! `POST /admin/items` (one JSON item, or a batch as NDJSON),
//! `GET/DELETE /admin/items/{id}`, `GET /admin/catalog`,
//! `POST /admin/catalog/compact`. Loads and edits run off the async
//! runtime's workers. Each handler's `utoipa::path` attribute is its entry
//! in `GET /openapi.json`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{body_bytes, parse_body, ApiError, ErrorBody, JsonBody};
use super::{metrics, AppState};
use crate::catalog::segments::FoldReport;
use crate::engine::catalog_info::{CatalogInfo, ItemInfo};
use crate::engine::edits::{BatchOutcome, CompactReport, ItemInput, Upserted};
use crate::engine::{Engine, EngineError, ModelInfo};

/// Largest body of `POST /admin/items` (a batch of NDJSON lines).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 100_000;

/// The non-blank lines of an NDJSON batch with their 1-based numbers; 413
/// past [`MAX_BATCH_LINES`] of them (`noun`: what a line holds).
pub(crate) fn ndjson_lines<'a>(bytes: &'a [u8], noun: &str) -> Result<Vec<(usize, &'a [u8])>, ApiError> {
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| (i + 1, line))
        .collect();
    if lines.len() > MAX_BATCH_LINES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body"),
            format!("a batch holds at most {MAX_BATCH_LINES} {noun}"),
        ));
    }
    Ok(lines)
}

/// Runs an admin change on a blocking thread.
async fn blocking<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Body of `POST /admin/models`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadBody {
    /// Checkpoint folder (`config.json`, `model.safetensors` or its shards,
    /// `genrec.json`) under the server's `--model-root`, or a checkpoint on
    /// the Hugging Face Hub, `hf:ORG/REPO[@REVISION]`, pulled into the
    /// server's Hugging Face cache (no `--model-root` needed; with
    /// `HF_HUB_OFFLINE=1` only what the cache holds).
    path: String,
}

/// The model in service and the one a rollback would put back.
#[derive(Serialize, ToSchema)]
pub(crate) struct Models {
    /// Null only while no model is loaded.
    #[schema(required = true)]
    current: Option<ModelInfo>,
    /// What a rollback would put back (null: nothing).
    #[schema(required = true)]
    previous: Option<ModelInfo>,
    /// With `--feed`: this replica, and the last model change it took from
    /// the feed (with the reason when it refused it).
    #[serde(skip_serializing_if = "Option::is_none")]
    feed: Option<crate::engine::replica::FeedInfo>,
}

/// `POST /admin/items`: what one item did, or what a batch did.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ItemsAnswer {
    One(Upserted),
    Batch(BatchOutcome),
}

/// `DELETE /admin/items/{id}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Removed {
    removed: String,
    /// With `--feed`: the feed position of the delete's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    feed_position: Option<crate::feed::Position>,
}

/// Records a model swap in the metrics and answers with the models now loaded.
fn swapped(st: &AppState, info: ModelInfo) -> Response {
    let (_, previous) = st.engine.models();
    metrics::model_swapped(previous.as_ref(), &info);
    Json(Models { current: Some(info), previous, feed: st.engine.feed_info() }).into_response()
}

/// Updates the catalog metrics after `n` edits.
fn catalog_edited(st: &AppState, n: usize) {
    if st.engine.feed_ready().is_some() {
        return; // the feed's observer counts what every replica applies
    }
    ::metrics::gauge!(metrics::CATALOG_ITEMS).set(st.engine.catalog().catalog.served_len() as f64);
    ::metrics::counter!(metrics::CATALOG_EDITS).increment(n as u64);
}

/// The model in service and the previous one.
#[utoipa::path(get, path = "/admin/models", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Models), (status = 401, body = ErrorBody), (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    let (current, previous) = st.engine.models();
    Json(Models { current, previous, feed: st.engine.feed_info() }).into_response()
}

/// Loads a checkpoint, validates it, and swaps it in (requests in flight
/// finish on the old model).
#[utoipa::path(post, path = "/admin/models", tag = "admin", security(("admin_token" = [])),
    request_body = LoadBody,
    responses(
        (status = 200, description = "Swapped in", body = Models),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Outside `--model-root`, or does not exist; or the Hub refused access", body = ErrorBody),
        (status = 404, description = "The admin API is off; or the Hub (or, offline, the cache) has no such repository, revision or file", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Not a valid checkpoint for this catalog, or a malformed `hf:` name", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
        (status = 409, description = "Another process's pull holds the Hub file's lock", body = ErrorBody),
        (status = 502, description = "The Hub could not be reached or answered with an error, or sent corrupted weights", body = ErrorBody),
    ))]
pub(crate) async fn load_model(
    State(st): State<Arc<AppState>>,
    body: Result<JsonBody<LoadBody>, ApiError>,
) -> Response {
    respond(
        async {
            let JsonBody(b) = body?;
            let info = blocking(&st, move |e| e.load_checkpoint(&b.path)).await?;
            Ok(swapped(&st, info))
        }
        .await,
    )
}

/// Puts the previous model back in service (with `--watch`, it stays until
/// the next new checkpoint).
#[utoipa::path(post, path = "/admin/models/rollback", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = Models), (status = 401, body = ErrorBody), (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 409, description = "No previous model", body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn rollback(State(st): State<Arc<AppState>>) -> Response {
    respond(
        async {
            let info = blocking(&st, |e| e.rollback()).await?;
            Ok(swapped(&st, info))
        }
        .await,
    )
}

/// Body of `POST /admin/items` (or one line of an NDJSON batch). The
/// semantic ID comes from `semantic_id`, else from `embedding` through the
/// catalog's codebooks, else from `text` through the server's `--encoder`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ItemBody {
    id: String,
    /// Shown in answers (default: `text`, else the id).
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// The catalog's embedding size, finite and non-zero.
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    /// A semantic ID computed elsewhere: one code per level, within the
    /// codebook sizes.
    #[serde(default)]
    semantic_id: Option<Vec<u32>>,
    /// When the item stops being served: RFC 3339 (`2026-12-07T10:30:00Z`)
    /// or ms since the Unix epoch; in the future. Past it no path returns
    /// the item, with no delete sent.
    #[serde(default)]
    expires_at: Option<TimeValue>,
    /// Or a lifetime in seconds from now (the server's clock), > 0.
    #[serde(default)]
    ttl_s: Option<f64>,
}

/// A moment as RFC 3339 text or as ms since the Unix epoch.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum TimeValue {
    Ms(u64),
    Rfc3339(String),
}

/// Longest lifetime a `ttl_s` may give: ten years.
const MAX_TTL_S: f64 = 10.0 * 365.25 * 86_400.0;

impl ItemBody {
    /// The engine's input, with the lifetime made an absolute time by the
    /// server's clock at `now_ms` (so every replica expires it alike).
    fn into_item(self, now_ms: u64) -> Result<ItemInput, ApiError> {
        let bad = |field: &str, m: String| ApiError::new(StatusCode::BAD_REQUEST, Some(field), m);
        let expires_at_ms = match (self.expires_at, self.ttl_s) {
            (Some(_), Some(_)) => return Err(bad("ttl_s", "give expires_at or ttl_s, not both".into())),
            (None, None) => None,
            (None, Some(t)) if !(t.is_finite() && t > 0.0 && t <= MAX_TTL_S) => {
                return Err(bad("ttl_s", format!("ttl_s must be a number of seconds above 0 and at most {MAX_TTL_S}")))
            }
            (None, Some(t)) => Some(now_ms + ((t * 1000.0).round() as u64).max(1)),
            (Some(v), None) => {
                let ms = match v {
                    TimeValue::Ms(ms) => ms,
                    TimeValue::Rfc3339(s) => {
                        crate::catalog::expiry::parse_rfc3339_ms(&s).map_err(|m| bad("expires_at", m))?
                    }
                };
                if ms <= now_ms {
                    return Err(bad(
                        "expires_at",
                        format!(
                            "expires_at {} is not in the future (the server's time is {})",
                            crate::catalog::expiry::format_rfc3339(ms),
                            crate::catalog::expiry::format_rfc3339(now_ms)
                        ),
                    ));
                }
                Some(ms)
            }
        };
        let title = self.title.clone().or_else(|| self.text.clone()).unwrap_or_else(|| self.id.clone());
        Ok(ItemInput {
            id: self.id,
            title,
            text: self.text,
            embedding: self.embedding,
            semantic_id: self.semantic_id,
            expires_at_ms,
        })
    }
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson") || v.starts_with("application/jsonl"))
}

/// `POST /admin/items`: one item as JSON (answers 201 when new, 200 when it
/// replaced a served item), or a batch as NDJSON (`content-type:
/// application/x-ndjson`, one item per line): the good lines are applied,
/// the answer counts them and lists the bad ones by line number.
#[utoipa::path(post, path = "/admin/items", tag = "admin", security(("admin_token" = [])),
    request_body(description = "One item as a JSON ItemBody, or a batch as NDJSON: one ItemBody object per line \
            (at most 100,000 lines, 64 MiB)",
        content((ItemBody = "application/json"), (String = "application/x-ndjson"), (String = "application/jsonl"))),
    responses(
        (status = 200, description = "A served item replaced (one item), or what a batch did (NDJSON)", body = ItemsAnswer),
        (status = 201, description = "A new item", body = Upserted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 409, description = "The catalog folder is read-only (another server holds it), the semantic ID \
            is taken, or no ID is free under its prefix", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, description = "The edit could not be written", body = ErrorBody),
        (status = 503, description = "The edit thread has stopped", body = ErrorBody),
    ))]
pub async fn add_item(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            let bytes = body_bytes(body)?;
            if is_ndjson(&headers) {
                return add_batch(&st, &bytes).await;
            }
            if bytes.len() > super::MAX_BODY_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some("body"),
                    format!("a single item is at most {} bytes; send batches as NDJSON", super::MAX_BODY_BYTES),
                ));
            }
            let b: ItemBody = parse_body(&bytes)?;
            let item = b.into_item(st.engine.now_ms())?;
            let up = st.engine.edit(move |e| e.upsert_item(item)).await?;
            catalog_edited(&st, 1);
            let status = if up.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(ItemsAnswer::One(up))).into_response())
        }
        .await,
    )
}

async fn add_batch(st: &Arc<AppState>, bytes: &[u8]) -> Result<Response, ApiError> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let now_ms = st.engine.now_ms();
    for (n, line) in ndjson_lines(bytes, "items")? {
        match parse_body::<ItemBody>(line).and_then(|b| b.into_item(now_ms)) {
            Ok(item) => lines.push((n, item)),
            Err(e) => errors.push(e.line_error(n)),
        }
    }
    let mut outcome = st.engine.edit(move |e| e.upsert_batch(lines)).await?;
    catalog_edited(st, outcome.applied);
    outcome.errors.extend(errors);
    outcome.errors.sort_by_key(|e| e.line);
    Ok(Json(ItemsAnswer::Batch(outcome)).into_response())
}

/// An item, served or removed.
#[utoipa::path(get, path = "/admin/items/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Item id")),
    responses((status = 200, body = ItemInfo), (status = 401, body = ErrorBody),
        (status = 404, description = "Never in the catalog, or the admin API is off", body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn get_item(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    respond(st.engine.item(&id).map(|v| Json::<ItemInfo>(v).into_response()).map_err(ApiError::from))
}

/// Stops serving an item (its row stays until compaction).
#[utoipa::path(delete, path = "/admin/items/{id}", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, description = "Item id")),
    responses((status = 200, body = Removed), (status = 401, body = ErrorBody),
        (status = 404, description = "Not served, or the admin API is off", body = ErrorBody),
        (status = 409, description = "The catalog folder is read-only", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn remove_item(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let removed = id.clone();
            let feed_position = st.engine.edit(move |e| e.remove_item(&removed)).await?;
            catalog_edited(&st, 1);
            Ok(Json(Removed { removed: id, feed_position }).into_response())
        }
        .await,
    )
}

/// `GET /admin/catalog`: version, sizes, edits pending compaction.
#[utoipa::path(get, path = "/admin/catalog", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = CatalogInfo), (status = 401, body = ErrorBody), (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn catalog_info(State(st): State<Arc<AppState>>) -> Response {
    Json::<CatalogInfo>(st.engine.catalog_info()).into_response()
}

/// `POST /admin/catalog/compact`: writes the live edits into a new catalog
/// version now (answers when done; edits and requests go on meanwhile).
#[utoipa::path(post, path = "/admin/catalog/compact", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = CompactReport), (status = 401, body = ErrorBody), (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 409, description = "Read-only, or a compaction is running", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn compact(State(st): State<Arc<AppState>>) -> Response {
    respond(
        async {
            let report = st.engine.edit(|e| e.compact()).await?;
            Ok(Json::<CompactReport>(report).into_response())
        }
        .await,
    )
}

/// `POST /admin/catalog/fold`: folds the edit log into a new segment of the
/// catalog folder now (tier merges following; answers when done).
#[utoipa::path(post, path = "/admin/catalog/fold", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = FoldReport), (status = 401, body = ErrorBody), (status = 404, description = "The admin API is off", body = ErrorBody),
        (status = 409, description = "Read-only, a replica, or a fold or compaction is running", body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn fold(State(st): State<Arc<AppState>>) -> Response {
    respond(
        async {
            let report = st.engine.edit(|e| e.fold_here()).await?;
            Ok(Json::<FoldReport>(report).into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_are_numbered_blanks_skipped_and_counted_to_the_limit() {
        let lines = ndjson_lines(b"{\"a\": 1}\n\n  \n{\"b\": 2}\n", "items").unwrap();
        assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(lines[1].1, b"{\"b\": 2}");
        let full = "{}\n".repeat(MAX_BATCH_LINES);
        assert_eq!(ndjson_lines(full.as_bytes(), "items").unwrap().len(), MAX_BATCH_LINES);
        let over = format!("{full}\n\n{{}}");
        let e = ndjson_lines(over.as_bytes(), "events").unwrap_err();
        assert!(e.line_error(0).error.contains("at most 100000 events"));
    }
}
