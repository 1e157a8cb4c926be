//! The operational endpoints every service exposes: `/healthz` (the process
//! is alive), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text format).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};

/// A readiness probe: resolves to `Ok(())` when the service can do its job,
/// or to the reason it cannot.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Warnings a ready service reports on `/readyz` (things an operator must
/// know that do not stop it working).
pub type WarningsFn = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: ReadinessCheck,
    warnings: Option<WarningsFn>,
}

/// A router serving `/healthz`, `/readyz` and `/metrics`; merge it into a
/// service's router or serve it on its own.
pub fn router(registry: Registry, readiness: ReadinessCheck) -> Router {
    ops_router(registry, readiness, None)
}

/// [`router`] whose `/readyz` answer also lists `warnings` (as
/// `"warnings": [...]`, ready or not).
pub fn router_with_warnings(
    registry: Registry,
    readiness: ReadinessCheck,
    warnings: WarningsFn,
) -> Router {
    ops_router(registry, readiness, Some(warnings))
}

fn ops_router(
    registry: Registry,
    readiness: ReadinessCheck,
    warnings: Option<WarningsFn>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            registry,
            readiness,
            warnings,
        })
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (status, mut body) = match (state.readiness)().await {
        Ok(()) => (StatusCode::OK, serde_json::json!({ "ready": true })),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reason": reason }),
        ),
    };
    if let Some(w) = &state.warnings {
        let w = w();
        if !w.is_empty() {
            body["warnings"] = serde_json::json!(w);
        }
    }
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<OpsState>) -> Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A check that always passes, for tests and trivial services.
pub fn always_ready() -> ReadinessCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}
