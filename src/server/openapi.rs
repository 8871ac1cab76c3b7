//! `GET /openapi.json`: an OpenAPI 3.1 description of the HTTP API, generated
//! (utoipa) from the request and answer types and the handlers' `path`
//! attributes, so it changes when they do. `tests/openapi.rs` checks real
//! answers of a running server against it. A route added to
//! [`super::router`] needs its `utoipa::path` attribute listed here and in
//! that test's route list.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, api, events};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "genrec",
        description = "Generative recommendation: a transformer generates the recommended items' semantic IDs, \
                       by beam search constrained to the catalog's trie. Admin routes need \
                       `Authorization: Bearer <token>` (the server's `--admin-token-file`) and are off without one."
    ),
    paths(
        api::recommend,
        events::record_events,
        api::intents,
        api::healthz,
        api::readyz,
        api::metrics_text,
        spec,
        admin::list_models,
        admin::load_model,
        admin::rollback,
        admin::add_item,
        admin::get_item,
        admin::remove_item,
        admin::catalog_info,
        admin::compact,
        admin::fold,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "recommend", description = "What recommendation frontends call"),
        (name = "admin", description = "Models and catalog edits, for ML engineers and catalog feeds"),
        (name = "operations", description = "Health, readiness, metrics, this description"),
    )
)]
pub struct ApiDoc;

/// The admin routes' bearer token.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        doc.components.get_or_insert_with(Default::default).add_security_scheme("admin_token", scheme);
    }
}

/// The description, rendered once.
static SPEC: LazyLock<String> = LazyLock::new(|| {
    // serialising a derived document cannot fail; an empty object would only
    // hide a bug, so the error text is served instead
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
});

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn spec() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], SPEC.as_str()).into_response()
}
