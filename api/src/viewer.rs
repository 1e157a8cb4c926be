//! The conversation viewer and the API docs: static files compiled into the
//! binary (no CDN, works offline).
//!
//! - The viewer (`/`, `/viewer/…`) is plain HTML, JavaScript and CSS. It
//!   polls the JSON endpoints, so new INBOUND and OUTBOUND messages appear
//!   live. When the api answers `401` it shows a sign-in form, keeps the
//!   tokens from `POST /auth/token` in memory only and sends them as
//!   `Authorization: Bearer …`; with authentication off no form appears.
//! - `/docs/` is Swagger UI (the `utoipa-swagger-ui` crate with its Swagger
//!   UI files vendored from crates.io at build time). It reads the document
//!   the api already serves at [`OPENAPI_PATH`]; its "Authorize" button
//!   takes a bearer token for the `bearerAuth` scheme the document declares.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use utoipa_swagger_ui::{Config, SwaggerUi};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// Where Swagger UI is served (`/docs` redirects to `/docs/`).
pub const DOCS_PATH: &str = "/docs";

/// The OpenAPI document Swagger UI loads (served by [`crate::app`]).
pub const OPENAPI_PATH: &str = "/openapi.json";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Swagger UI's settings: the api's own document, no call to the public
/// validator (the page must work without internet access), and no
/// persisted authorization (a token typed into "Authorize" stays in the
/// page's memory, like the viewer's).
fn swagger_config() -> Config<'static> {
    Config::from(OPENAPI_PATH)
        .validator_url("none")
        .persist_authorization(false)
        .try_it_out_enabled(true)
        .display_request_duration(true)
}

/// Swagger UI at [`DOCS_PATH`]: `/docs` (redirect), `/docs/` (the page) and
/// `/docs/{file}` (its JavaScript, CSS and the generated
/// `swagger-initializer.js`). It does not serve the document itself.
fn swagger_ui<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::from(SwaggerUi::new(DOCS_PATH).config(swagger_config()))
}

/// Routes: `/` and `/viewer/` (viewer), `/viewer/app.js`, `/viewer/app.css`,
/// and Swagger UI under `/docs`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/viewer/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/viewer", get(|| async { Redirect::permanent("/viewer/") }))
        .route(
            "/viewer/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/viewer/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .merge(swagger_ui())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swagger_loads_the_apis_own_document_and_nothing_remote() {
        let config = serde_json::to_value(swagger_config()).unwrap();
        assert_eq!(config["url"], OPENAPI_PATH, "{config}");
        assert_eq!(config["validatorUrl"], "none", "{config}");
        assert_eq!(config["persistAuthorization"], false, "{config}");
    }
}
