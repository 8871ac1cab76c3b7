//! Admin routes (behind the bearer token of [`super::auth`]; off when no
//! token is configured):
//! `GET/POST /admin/models`, `POST /admin/models/rollback`,
//! `POST /admin/items` (one JSON item, or a batch as NDJSON),
//! `GET/DELETE /admin/items/{id}`, `GET /admin/catalog`,
//! `POST /admin/catalog/compact`. Loads and edits run off the async
//! runtime's workers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::api::{body_bytes, parse_body, ApiError};
use super::{metrics, AppState};
use crate::engine::edits::NewItem;
use crate::engine::{Engine, EngineError, ModelInfo};

/// Largest body of `POST /admin/items` (a batch of NDJSON lines).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 100_000;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    path: String,
}

/// Records a model swap in the metrics and answers with the models now loaded.
fn swapped(st: &AppState, info: ModelInfo) -> Response {
    let (_, previous) = st.engine.models();
    metrics::model_swapped(previous.as_ref(), &info);
    Json(json!({"current": info, "previous": previous})).into_response()
}

/// Updates the catalog metrics after `n` edits.
fn catalog_edited(st: &AppState, n: usize) {
    ::metrics::gauge!(metrics::CATALOG_ITEMS).set(st.engine.catalog().catalog.served_len() as f64);
    ::metrics::counter!(metrics::CATALOG_EDITS).increment(n as u64);
}

pub async fn list_models(State(st): State<Arc<AppState>>) -> Response {
    let (current, previous) = st.engine.models();
    Json(json!({"current": current, "previous": previous})).into_response()
}

pub async fn load_model(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    respond(
        async {
            let b: LoadBody = parse_body(&body_bytes(body)?)?;
            let info = blocking(&st, move |e| e.load_checkpoint(&b.path)).await?;
            Ok(swapped(&st, info))
        }
        .await,
    )
}

pub async fn rollback(State(st): State<Arc<AppState>>) -> Response {
    respond(
        async {
            let info = blocking(&st, |e| e.rollback()).await?;
            Ok(swapped(&st, info))
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    semantic_id: Option<Vec<u32>>,
}

impl ItemBody {
    fn into_item(self) -> NewItem {
        let title = self.title.clone().or_else(|| self.text.clone()).unwrap_or_else(|| self.id.clone());
        NewItem { id: self.id, title, text: self.text, embedding: self.embedding, semantic_id: self.semantic_id }
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
            let up = st.engine.edit(move |e| e.upsert_item(b.into_item())).await?;
            catalog_edited(&st, 1);
            let status = if up.created { StatusCode::CREATED } else { StatusCode::OK };
            Ok((status, Json(json!({"item_id": up.item_id, "semantic_id": up.semantic_id, "created": up.created}))).into_response())
        }
        .await,
    )
}

async fn add_batch(st: &Arc<AppState>, bytes: &[u8]) -> Result<Response, ApiError> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() + errors.len() >= MAX_BATCH_LINES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("body"),
                format!("a batch holds at most {MAX_BATCH_LINES} items"),
            ));
        }
        match parse_body::<ItemBody>(line) {
            Ok(b) => lines.push((n, b.into_item())),
            Err(e) => errors.push(e.line_error(n)),
        }
    }
    let mut outcome = st.engine.edit(move |e| e.upsert_batch(lines)).await?;
    catalog_edited(st, outcome.applied);
    outcome.errors.extend(errors);
    outcome.errors.sort_by_key(|e| e.line);
    Ok(Json(outcome).into_response())
}

pub async fn get_item(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    respond(st.engine.item(&id).map(|v| Json(v).into_response()).map_err(ApiError::from))
}

pub async fn remove_item(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    respond(
        async {
            let removed = id.clone();
            st.engine.edit(move |e| e.remove_item(&removed)).await?;
            catalog_edited(&st, 1);
            Ok(Json(json!({"removed": id})).into_response())
        }
        .await,
    )
}

/// `GET /admin/catalog`: version, sizes, live edits pending compaction.
pub async fn catalog_info(State(st): State<Arc<AppState>>) -> Response {
    Json(st.engine.catalog_info()).into_response()
}

/// `POST /admin/catalog/compact`: folds the live edits into a new catalog
/// version now (answers when done; edits and requests go on meanwhile).
pub async fn compact(State(st): State<Arc<AppState>>) -> Response {
    respond(
        async {
            let report = st.engine.edit(|e| e.compact()).await?;
            Ok(Json(report).into_response())
        }
        .await,
    )
}
