//! The ops server: `/healthz`, `/readyz` (Postgres answers; the channels'
//! credentials were loaded at start, and a replica without channels says
//! so as a warning) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use chatpipe_core::ops::{router_with_warnings, ReadinessCheck, WarningsFn};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Binds `listen` and serves the ops endpoints until `cancel`. Returns the
/// bound address and the server's task.
pub async fn serve(
    listen: SocketAddr,
    store: Store,
    channels: Vec<String>,
    metrics: &Metrics,
    cancel: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let readiness: ReadinessCheck = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| format!("postgres: {e:#}")) })
    });
    let warnings: WarningsFn = Arc::new(move || {
        if channels.is_empty() {
            vec!["no channel is declared (CHATPIPE_CHANNELS): every delivery fails with unknown_channel".to_owned()]
        } else {
            Vec::new()
        }
    });
    let app = router_with_warnings(metrics.registry.clone(), readiness, warnings);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(listen = %addr, "ops server listening");
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops server failed");
        }
    });
    Ok((addr, handle))
}
