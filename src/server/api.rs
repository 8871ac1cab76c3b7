//! HTTP handlers: `POST /v1/recommend`, `GET /healthz`, `GET /readyz`,
//! `GET /metrics`. Errors are mapped here, once, to a status code, a JSON body
//! `{"error": ..., "field": ...}` and a metric outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::metrics;
use super::AppState;
use crate::engine::{EngineError, RecItem, RecRequest};

/// A history entry: item ids may be given as strings or numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum ItemId {
    Str(String),
    Num(serde_json::Number),
}

fn default_k() -> usize {
    10
}
fn default_true() -> bool {
    true
}

/// Body of `POST /v1/recommend`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendBody {
    history: Vec<ItemId>,
    #[serde(default = "default_k")]
    k: usize,
    #[serde(default = "default_true")]
    exclude_history: bool,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Serialize)]
struct RecommendAnswer {
    items: Vec<RecItem>,
    model: String,
    took_ms: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored_history: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

/// An error answer.
pub struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError { status, field: field.map(str::to_string), message: message.into() }
    }

    fn outcome(&self) -> &'static str {
        match self.status.as_u16() {
            400..=499 => "invalid",
            503 => "unavailable",
            _ => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message, "field": self.field}))).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::InvalidField { field, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(field), message.clone())
            }
            EngineError::NotReady => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, e.to_string()),
            EngineError::Generate(_)
            | EngineError::Mismatch(_)
            | EngineError::LoadModel(_)
            | EngineError::LoadCatalog(_) => {
                tracing::error!(error = %e, "recommendation failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string())
            }
        }
    }
}

/// Parses the body, naming the offending field on error: a syntax error is a
/// 400, a well-formed body with wrong or missing fields a 422.
fn parse_body(bytes: &[u8]) -> Result<RecommendBody, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if let Some(rest) = msg.strip_prefix("missing field `") {
                    rest.split('`').next().unwrap_or("body").to_string()
                } else if let Some(rest) = msg.strip_prefix("unknown field `") {
                    rest.split('`').next().unwrap_or("body").to_string()
                } else if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(&field), msg)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, Some("body"), format!("malformed JSON: {msg}")),
        }
    })
}

pub async fn recommend(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = serve_recommend(&st, body, started).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::request(outcome, started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn serve_recommend(
    st: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> Result<RecommendAnswer, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than {} bytes", super::MAX_BODY_BYTES)
        } else {
            e.body_text()
        };
        ApiError::new(status, Some("body"), msg)
    })?;
    let b = parse_body(&bytes)?;
    let req = RecRequest {
        history: b
            .history
            .into_iter()
            .map(|h| match h {
                ItemId::Str(s) => s,
                ItemId::Num(n) => n.to_string(),
            })
            .collect(),
        k: b.k,
        exclude_history: b.exclude_history,
        user_id: b.user_id,
    };
    let engine = st.engine.clone();
    let user_id = req.user_id.clone();
    let answer = tokio::task::spawn_blocking(move || engine.recommend(&req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, format!("worker failed: {e}")))??;
    ::metrics::counter!(metrics::TOKENS).increment(answer.tokens as u64);
    ::metrics::counter!(metrics::ITEMS).increment(answer.items.len() as u64);
    Ok(RecommendAnswer {
        items: answer.items,
        model: answer.model,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
        ignored_history: answer.ignored_history,
        user_id,
    })
}

pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match st.engine.snapshot() {
        Some(s) => Json(json!({"status": "ready", "model": s.model.label(), "items": s.catalog.len()})).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "error": "no model is loaded"})))
            .into_response(),
    }
}

pub async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

pub async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, None, "no such route").into_response()
}
