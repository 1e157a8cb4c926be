//! Waking the worker at once when a delivery is queued: a dedicated
//! connection that `LISTEN`s on [`NOTIFY_CHANNEL`] (migration V600's
//! trigger notifies after each insert or status change of `deliveries`),
//! reconnecting after a loss, with the same TLS as every other connection
//! (`PgConnectOptions::connect_listening`). The worker also polls every
//! `--poll-interval`, so a lost notification only delays a delivery.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatpipe_core::db::PgConnectOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::events::{InternalEvent, ListenerLost};
use crate::metrics::Metrics;
use crate::store::NOTIFY_CHANNEL;

/// Listens until `cancel`, calling `wake.notify_one()` on every
/// notification (and once after each (re)connection, since notifications
/// sent while disconnected are lost). Returns at once, after an event,
/// when the connection settings need TLS.
pub async fn run(
    options: PgConnectOptions,
    wake: Arc<Notify>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listen_once(&options, &wake) => r,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                ListenerLost { error: &e }.emit(&metrics);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// One connection's life: connect, LISTEN, forward notifications until it
/// ends. `Ok` when the server closed it cleanly.
async fn listen_once(options: &PgConnectOptions, wake: &Notify) -> anyhow::Result<()> {
    let (client, mut notifications) = options.connect_listening().await?;
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await
        .context("LISTEN")?;
    // What was queued while we were not listening.
    wake.notify_one();
    while notifications.recv().await.is_some() {
        wake.notify_one();
    }
    drop(client);
    Ok(())
}
