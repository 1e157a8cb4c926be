//! The conversation viewer and the API docs page: static HTML, JavaScript
//! and CSS compiled into the binary (no CDN, works offline). The viewer
//! polls the JSON endpoints, so new INBOUND and OUTBOUND messages appear
//! live.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");
const DOCS_HTML: &str = include_str!("../assets/docs.html");
const DOCS_JS: &str = include_str!("../assets/docs.js");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// Routes: `/` and `/viewer/` (viewer), `/viewer/app.js`, `/viewer/app.css`,
/// `/docs` (API docs page) and `/docs/docs.js`.
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
        .route(
            "/docs",
            get(|| async { asset("text/html; charset=utf-8", DOCS_HTML) }),
        )
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
        .route(
            "/docs/docs.js",
            get(|| async { asset("text/javascript; charset=utf-8", DOCS_JS) }),
        )
}
