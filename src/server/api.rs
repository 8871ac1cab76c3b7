//! HTTP handlers: `POST /v1/recommend`, `GET /v1/intents`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`. Errors are mapped here, once, to a status code, a JSON body
//! `{"error": ..., "field": ...}` and a metric outcome (the admin routes are in
//! [`super::admin`]). Each handler's `utoipa::path` attribute is its entry in
//! `GET /openapi.json` ([`super::openapi`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics;
use super::AppState;
use crate::catalog::intents::Intent;
use crate::coldstart::{IntentMethod, IntentWeight, Profile};
use crate::engine::{EngineError, FallbackReason, RecItem, RecRequest, Steering, Strategy, WorkerHealth};
use crate::error::ErrorKind;

/// A history entry: an item id, as a string or a number.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ItemId {
    Str(String),
    #[schema(value_type = f64)]
    Num(serde_json::Number),
}

fn default_k() -> usize {
    10
}
fn default_true() -> bool {
    true
}

/// Body of `POST /v1/recommend`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecommendBody {
    /// The user's items, oldest first (the last ones count). May be empty or
    /// absent when a profile is given.
    #[serde(default)]
    history: Vec<ItemId>,
    /// Items wanted.
    #[serde(default = "default_k")]
    #[schema(default = 10, minimum = 1, maximum = 100)]
    k: usize,
    /// Leave the history's items out of the answer.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    exclude_history: bool,
    /// Echoed in the answer.
    #[serde(default)]
    user_id: Option<String>,
    /// Deadline from arrival, in milliseconds (default: the server's
    /// `--timeout-ms`); past it, ANN answers (`auto`) or the request fails (504).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    strategy: Strategy,
    /// Sign-up data of a new user: with no or a short history, generation
    /// is steered to the intents inferred from it (cold start).
    #[serde(default)]
    profile: Option<Profile>,
    /// How the profile's intents steer generation (cold start only).
    #[serde(default)]
    steering: Steering,
    /// Personalized search: only items matching this text (its embedding's
    /// nearest items and exact title words) are returned, ranked by the model
    /// for the history; without a history, by text similarity.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 1000, example = "red matte lipstick")]
    query: Option<String>,
    /// Caps on what one kind of item may take of the answer.
    #[serde(default)]
    diversity: Option<Diversity>,
    /// Share of `k` given to intents (first-level semantic-ID clusters) the
    /// history does not show; those items are `"source": "explore"`.
    #[serde(default)]
    #[schema(default = 0.0, minimum = 0.0, maximum = 1.0)]
    explore: f32,
    /// Weight of the trending prior: the log of each trie node's recent
    /// engagement rate (`POST /v1/events`) over its parent's, added at every
    /// level of a second search whose hot items fill `trending_share` of the
    /// list. Absent: the server's `--trending-weight`; 0: off.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 10.0)]
    trending: Option<f32>,
    /// Share of `k` that the trending search fills after the model's own
    /// best items; those items are `"source": "trending"`. 1: the prior
    /// steers the whole list instead. Absent: the server's `--trending-share`.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    trending_share: Option<f32>,
}

/// `diversity` of `POST /v1/recommend`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Diversity {
    /// At most this many items per first-level semantic-ID cluster, enforced
    /// inside the beam search (1 to `k`).
    #[schema(minimum = 1)]
    max_per_intent: usize,
}

/// The answer of `POST /v1/recommend`.
#[derive(Serialize, ToSchema)]
pub(crate) struct RecommendAnswer {
    /// Best first.
    items: Vec<RecItem>,
    /// `name/version` of the model that answered (absent for ANN answers
    /// without a model).
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    /// Why ANN recall answered or filled the list (absent when it did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<FallbackReason>,
    /// Time from arrival to the answer, in milliseconds.
    took_ms: f64,
    /// History ids that are not in the catalog and were ignored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ignored_history: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// Intents inferred from the profile (cold start only).
    #[serde(skip_serializing_if = "Option::is_none")]
    inferred_intents: Option<Vec<IntentWeight>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intent_method: Option<IntentMethod>,
    /// Why the intents were not inferred by the LLM when one was expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    intent_note: Option<String>,
    /// Why the model read none or only part of the profile (e.g. a model
    /// trained without profiles, or values it never saw).
    #[serde(skip_serializing_if = "Option::is_none")]
    profile_note: Option<String>,
    /// Why the answer has fewer than `k` items (e.g. a query that matches
    /// few or no items), or how a search matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Every error answer (4xx and 5xx).
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, for a person.
    error: String,
    /// The request field at fault (`body` for the body as a whole), or null.
    #[schema(required = true)]
    field: Option<String>,
}

/// `GET /healthz`: the process answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Whether `/readyz` says ready.
#[derive(Serialize, ToSchema)]
pub(crate) enum ReadyStatus {
    #[serde(rename = "ready")]
    Ready,
    #[serde(rename = "not ready")]
    NotReady,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Ready {
    status: ReadyStatus,
    /// Why not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// `name/version` of the model in service, or null.
    #[schema(required = true)]
    model: Option<String>,
    /// Items served.
    items: usize,
    worker: WorkerHealth,
    /// With `--feed`: the feed position this replica has applied (compare
    /// with an edit's `feed_position` to know it serves that edit).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    feed_position: Option<crate::feed::Position>,
}

/// `GET /v1/intents`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Intents<'a> {
    intents: &'a [Intent],
    /// How a profile is matched to them (null when cold start is off).
    #[schema(required = true)]
    method: Option<IntentMethod>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError { status, field: field.map(str::to_string), message: message.into() }
    }

    /// This error as the report of one line of a batch.
    pub(crate) fn line_error(self, line: usize) -> crate::engine::edits::LineError {
        let field = match self.field.as_deref().map(|f| f.split(['.', '[']).next().unwrap_or(f)) {
            Some("id") => Some("id"),
            Some("title") => Some("title"),
            Some("text") => Some("text"),
            Some("embedding") => Some("embedding"),
            Some("semantic_id") => Some("semantic_id"),
            Some("expires_at") => Some("expires_at"),
            Some("ttl_s") => Some("ttl_s"),
            Some(_) | None => Some("body"),
        };
        crate::engine::edits::LineError { line, field, error: self.message }
    }

    /// This error as the report of one line of `POST /v1/events`.
    pub(crate) fn event_line_error(self, line: usize) -> crate::engine::edits::LineError {
        let field = match self.field.as_deref().map(|f| f.split(['.', '[']).next().unwrap_or(f)) {
            Some("item_id") => Some("item_id"),
            Some("kind") => Some("kind"),
            Some("ts") => Some("ts"),
            Some("value") => Some("value"),
            Some(_) | None => Some("body"),
        };
        crate::engine::edits::LineError { line, field, error: self.message }
    }

    fn outcome(&self) -> &'static str {
        match self.status.as_u16() {
            429 => "rejected",
            400..=499 => "invalid",
            503 => "unavailable",
            _ => "error",
        }
    }
}

/// Seconds a client is asked to wait after a 429.
const RETRY_AFTER_S: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.message, field: self.field });
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            return (self.status, [(header::RETRY_AFTER, RETRY_AFTER_S)], body).into_response();
        }
        (self.status, body).into_response()
    }
}

/// The status of each kind of failure: the one place an engine error
/// becomes an HTTP answer.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let kind = e.kind();
        if kind == ErrorKind::Internal {
            tracing::error!(error = %crate::error::chain(&e), "request failed");
        }
        let field = match kind {
            ErrorKind::Invalid { field } => field,
            _ => None,
        };
        ApiError::new(status_of(kind), field, e.to_string())
    }
}

/// A JSON request body, read and parsed the same way for every handler that
/// takes one: too large is a 413 and not JSON a 400, both naming `body`; a
/// field missing, unknown or of the wrong type is a 422 naming it
/// ([`parse_body`]). A handler takes `Result<JsonBody<T>, ApiError>` to count
/// a refused body in its metrics.
pub(crate) struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> JsonBody<T> {
    /// Parses a body as read (or the error reading it gave).
    pub(crate) fn from_bytes(body: Result<Bytes, BytesRejection>) -> Result<Self, ApiError> {
        parse_body(&body_bytes(body)?).map(JsonBody)
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Self::from_bytes(Bytes::from_request(req, state).await)
    }
}

/// The request body, or the error that reading it gave.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than {} bytes", super::MAX_BODY_BYTES)
        } else {
            e.body_text()
        };
        ApiError::new(status, Some("body"), msg)
    })
}

/// Parses the body, naming the offending field on error: a syntax error is a
/// 400, a well-formed body with wrong or missing fields a 422. A body is a
/// JSON object (serde would also read a struct from an array of its fields).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some("body"), "the body must be a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if let Some(rest) = msg.strip_prefix("missing field `") {
                    rest.split('`').next().unwrap_or("body").to_string()
                } else if let Some(rest) = msg.strip_prefix("unknown field `") {
                    // the path names nested fields (`profile.agee`)
                    let name = rest.split('`').next().unwrap_or("body");
                    if path == "." {
                        name.to_string()
                    } else {
                        path
                    }
                } else if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(&field), msg)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, Some("body"), format!("malformed JSON: {msg}")),
        }
    })?;
    // one document: `{...} trailing` is not a request
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Some("body"), format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Recommends `k` items for a history (and/or a sign-up profile).
#[utoipa::path(post, path = "/v1/recommend", tag = "recommend",
    request_body = RecommendBody,
    responses(
        (status = 200, description = "The recommended items", body = RecommendAnswer),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 422, description = "A field is missing, unknown or out of range (`field` names it)", body = ErrorBody),
        (status = 429, description = "The queue is full: retry after the `Retry-After` seconds", body = ErrorBody),
        (status = 500, description = "Generation or recall failed (logged with the request id)", body = ErrorBody),
        (status = 503, description = "`strategy: generative` and no model is loaded, the server is stopping, \
            or a profile request while cold start is off", body = ErrorBody),
        (status = 504, description = "`strategy: generative` and the deadline passed", body = ErrorBody),
    ))]
pub(crate) async fn recommend(
    State(st): State<Arc<AppState>>,
    body: Result<JsonBody<RecommendBody>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = serve_recommend(&st, body, started).await;
    let outcome = match &result {
        Ok(a) if a.fallback.is_some() => "fallback",
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
    body: Result<JsonBody<RecommendBody>, ApiError>,
    started: Instant,
) -> Result<RecommendAnswer, ApiError> {
    let JsonBody(b) = body?;
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
        timeout_ms: b.timeout_ms,
        strategy: b.strategy,
        profile: b.profile,
        steering: b.steering,
        query: b.query,
        max_per_intent: b.diversity.map(|d| d.max_per_intent),
        explore: b.explore,
        trending: b.trending,
        trending_share: b.trending_share,
    };
    let answer = st.engine.recommend(&req).await?;
    ::metrics::counter!(metrics::TOKENS).increment(answer.tokens as u64);
    ::metrics::counter!(metrics::ITEMS).increment(answer.items.len() as u64);
    if let Some(method) = answer.intent_method {
        ::metrics::counter!(metrics::COLDSTART, "method" => method.as_str()).increment(1);
    }
    Ok(RecommendAnswer {
        items: answer.items,
        model: answer.model,
        fallback: answer.fallback,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
        ignored_history: answer.ignored_history,
        user_id: req.user_id,
        inferred_intents: answer.inferred_intents,
        intent_method: answer.intent_method,
        intent_note: answer.intent_note,
        profile_note: answer.profile_note,
        note: answer.note,
    })
}

/// The intents cold start chooses among: the catalog's first-level clusters
/// with their labels, and how a profile is matched to them.
#[utoipa::path(get, path = "/v1/intents", tag = "recommend",
    responses((status = 200, description = "The catalog's intents", body = Intents)))]
pub async fn intents(State(st): State<Arc<AppState>>) -> Response {
    let cat = st.engine.catalog();
    let method = st.engine.coldstart().map(|c| c.method());
    Json(Intents { intents: cat.catalog.intents(), method }).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Ready once a model is loaded and has passed its smoke generation, and
/// while the batching worker runs; says how many panics the worker survived.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready: no model, or the worker stopped", body = Ready),
    ))]
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let items = st.engine.catalog().catalog.served_len();
    let worker = st.engine.worker_health();
    let model = st.engine.model().map(|m| m.label());
    let error = match (&model, worker.running, st.engine.feed_ready()) {
        (_, false, _) => Some("the batching worker has stopped"),
        (None, true, _) => Some("no model is loaded"),
        (Some(_), true, Some(false)) => Some("catching up with the replica feed"),
        (Some(_), true, _) => None,
    };
    let status = if error.is_none() { ReadyStatus::Ready } else { ReadyStatus::NotReady };
    let code = if error.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let feed_position = st.engine.feed_applied();
    (code, Json(Ready { status, error, model, items, worker, feed_position })).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    if let Some(cs) = st.engine.coldstart().filter(|c| c.has_llm()) {
        ::metrics::counter!(metrics::COLDSTART_LLM_RUNS).absolute(cs.llm_inferences());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

pub async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, None, "no such route").into_response()
}

/// Hostile input, generated: arbitrary bytes, arbitrary JSON, bodies of the
/// right shape with values of any type, and byte-level mutations of a valid
/// body, through the same parse-and-serve path as `POST /v1/recommend`
/// (about 10,000 cases). The answer is a 200 or a 4xx/503/504 naming what
/// was wrong; never a panic, never another 5xx.
#[cfg(test)]
mod status {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::model::hub::HubError;

    /// Each engine error's status and field, as clients have seen them
    /// since before errors carried kinds.
    #[test]
    fn each_engine_error_keeps_its_status_and_field() {
        use EngineError as E;
        let hub = |e: HubError| E::Hub(e);
        let cases: Vec<(EngineError, u16, Option<&str>)> = vec![
            (E::InvalidField { field: "k", message: "k must be between 1 and 100".into() }, 422, Some("k")),
            (E::refused("not a checkpoint"), 422, None),
            (E::NotReady, 503, None),
            (E::Stopped, 503, None),
            (E::ColdStart("off".into()), 503, None),
            (E::CatchingUp, 503, None),
            (E::Feed(crate::feed::FeedError::Down("gone".into())), 503, None),
            (E::NotAppliedYet(crate::feed::Position::START), 503, None),
            (E::Overloaded, 429, None),
            (E::Deadline(500), 504, None),
            (E::Forbidden("outside the root".into()), 403, None),
            (E::Conflict("taken".into()), 409, None),
            (E::NotFound("no such item".into()), 404, None),
            (E::Catalog(CatalogError::Format("bad".into())), 500, None),
            (E::Worker(std::io::Error::other("no threads")), 500, None),
            (hub(HubError::BadName("hf:".into())), 422, Some("path")),
            (hub(HubError::NotCheckpoint { name: "a/b".into(), message: "no config.json".into() }), 422, None),
            (
                hub(HubError::NotFound { name: "a/b".into(), what: "repo".into(), status: 404, endpoint: "e".into() }),
                404,
                None,
            ),
            (hub(HubError::Denied { name: "a/b".into(), status: 401, advice: "token".into() }), 403, None),
            (hub(HubError::Unreachable { name: "a/b".into(), what: "info".into(), message: "dns".into() }), 502, None),
            (hub(HubError::Busy { name: "a/b".into(), what: "weights".into() }), 409, None),
            (hub(HubError::Setup("no home".into())), 500, None),
            (
                E::Catalog(CatalogError::io("edits-000001.log", std::io::Error::from(std::io::ErrorKind::StorageFull))),
                507,
                None,
            ),
        ];
        for (e, status, field) in cases {
            let shown = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status.as_u16(), a.field.as_deref()), (status, field), "{shown}");
            assert_eq!(a.message, shown);
        }
    }
}

#[cfg(test)]
mod fuzz {
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;

    use axum::body::Bytes;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::{serve_recommend, AppState, JsonBody};

    fn state() -> &'static (tokio::runtime::Runtime, Arc<AppState>) {
        static S: OnceLock<(tokio::runtime::Runtime, Arc<AppState>)> = OnceLock::new();
        S.get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let (model, catalog) = crate::model::demo::load(&candle_core::Device::Cpu).unwrap();
            let engine =
                crate::engine::Engine::new(catalog, Default::default(), Arc::new(crate::engine::NoObserver)).unwrap();
            engine.install(model, "embedded".into()).unwrap();
            let st = Arc::new(AppState { engine, metrics: crate::server::metrics::handle(), admin: None });
            (rt, st)
        })
    }

    fn check(bytes: Vec<u8>) -> Result<(), TestCaseError> {
        let (rt, st) = state();
        let shown = String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>();
        let object = serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v.is_object());
        match rt.block_on(serve_recommend(st, JsonBody::from_bytes(Ok(Bytes::from(bytes))), Instant::now())) {
            Ok(a) => prop_assert!(object && a.items.len() <= crate::engine::MAX_K, "{shown}"),
            Err(e) => {
                let s = e.status.as_u16();
                prop_assert!(e.status.is_client_error() || s == 503 || s == 504, "{s} {} for {shown}", e.message);
                prop_assert!(!e.message.is_empty());
            }
        }
        Ok(())
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z0-9 ]{0,12}".prop_map(Value::from),
            (0u32..700).prop_map(|i| Value::from(i.to_string())),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A body with the request's own field names, each absent or of any type.
    fn shaped_body() -> impl Strategy<Value = Value> {
        let field = |name: &'static str, valid: BoxedStrategy<Value>| {
            prop_oneof![Just(None), valid.prop_map(Some), any_json().prop_map(Some)].prop_map(move |v| (name, v))
        };
        let history = proptest::collection::vec(0u32..650, 0..25)
            .prop_map(|h| json!(h.iter().map(|i| i.to_string()).collect::<Vec<_>>()));
        let profile = (0i64..130, "[a-z ]{0,20}").prop_map(|(age, i)| json!({"age": age, "interests": [i]}));
        (
            field("history", history.boxed()),
            field("k", (0i64..1100).prop_map(Value::from).boxed()),
            field(
                "strategy",
                prop_oneof![Just("auto"), Just("generative"), Just("ann"), Just("x")].prop_map(Value::from).boxed(),
            ),
            field("timeout_ms", (0i64..70_000).prop_map(Value::from).boxed()),
            field("exclude_history", any::<bool>().prop_map(Value::from).boxed()),
            field("profile", profile.boxed()),
            field("user_id", "[a-z0-9]{0,8}".prop_map(Value::from).boxed()),
        )
            .prop_map(|fs| {
                let fs = [fs.0, fs.1, fs.2, fs.3, fs.4, fs.5, fs.6];
                Value::Object(fs.into_iter().filter_map(|(n, v)| v.map(|v| (n.to_string(), v))).collect())
            })
    }

    proptest! {
        // a fixed seed: CI runs the same cases every time; GENREC_FUZZ_SEED and
        // GENREC_FUZZ_CASES draw others (benches/fuzz_http.sh draws new ones too)
        #![proptest_config(ProptestConfig {
            cases: std::env::var("GENREC_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2500),
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(
                std::env::var("GENREC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261130),
            ),
            ..ProptestConfig::default()
        })]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            check(bytes)?;
        }

        #[test]
        fn arbitrary_json(v in any_json()) {
            check(v.to_string().into_bytes())?;
        }

        #[test]
        fn bodies_of_the_right_shape(v in shaped_body()) {
            check(v.to_string().into_bytes())?;
        }

        #[test]
        fn mutated_valid_bodies(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
            let mut b = br#"{"history": ["3", "11", 19], "k": 10, "strategy": "auto", "timeout_ms": 500}"#.to_vec();
            for (at, byte) in edits {
                let i = at % b.len();
                b[i] = byte;
            }
            b.truncate(b.len() - cut % 8);
            check(b)?;
        }
    }
}
