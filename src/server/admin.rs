//! Admin routes (bearer token; off when no token is configured):
//! `GET/POST /admin/models`, `POST /admin/models/rollback`,
//! `POST /admin/items`, `DELETE /admin/items/{id}`. Loads and edits run off
//! the async runtime's workers.

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
use crate::engine::admin::NewItem;
use crate::engine::{Engine, EngineError, ModelInfo};

/// Checks the bearer token; every admin handler starts here.
fn authorise(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &st.admin_token else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, None, "the admin API is off: start genrec serve with --admin-token"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, Some("authorization"), "missing bearer token"))?;
    // compare without an early exit, so timing does not reveal a prefix
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let diff = a.iter().zip(b).fold(a.len() ^ b.len(), |acc, (x, y)| acc | (x ^ y) as usize);
    if diff != 0 {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, Some("authorization"), "wrong bearer token"));
    }
    Ok(())
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

/// Updates the served-items gauge after a catalog edit.
fn catalog_edited(st: &AppState) {
    ::metrics::gauge!(metrics::CATALOG_ITEMS).set(st.engine.catalog().catalog.live_len() as f64);
}

pub async fn list_models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    respond(authorise(&st, &headers).map(|()| {
        let (current, previous) = st.engine.models();
        Json(json!({"current": current, "previous": previous})).into_response()
    }))
}

pub async fn load_model(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            authorise(&st, &headers)?;
            let b: LoadBody = parse_body(&body_bytes(body)?)?;
            let info = blocking(&st, move |e| e.load_checkpoint(&b.path)).await?;
            Ok(swapped(&st, info))
        }
        .await,
    )
}

pub async fn rollback(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    respond(
        async {
            authorise(&st, &headers)?;
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
}

pub async fn add_item(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(
        async {
            authorise(&st, &headers)?;
            let b: ItemBody = parse_body(&body_bytes(body)?)?;
            let title = b.title.clone().or_else(|| b.text.clone()).unwrap_or_else(|| b.id.clone());
            let item = NewItem { id: b.id.clone(), title, text: b.text, embedding: b.embedding };
            let sid = blocking(&st, move |e| e.add_item(item)).await?;
            catalog_edited(&st);
            Ok((StatusCode::CREATED, Json(json!({"item_id": b.id, "semantic_id": sid}))).into_response())
        }
        .await,
    )
}

pub async fn remove_item(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(
        async {
            authorise(&st, &headers)?;
            let removed = id.clone();
            blocking(&st, move |e| e.remove_item(&removed)).await?;
            catalog_edited(&st);
            Ok(Json(json!({"removed": id})).into_response())
        }
        .await,
    )
}
