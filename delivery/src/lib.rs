//! chatpipe-delivery: sends the outbox of OUTBOUND messages (`deliveries`,
//! written by the processor and the api) through their channels
//! (Telegram, WhatsApp Cloud, Twilio) and records each outcome.
//!
//! # Semantics
//! - **Claim**: due queued deliveries, oldest first, only the first queued
//!   one of each conversation (per-conversation order), `FOR UPDATE SKIP
//!   LOCKED` so replicas never claim the same row, with a lease; a crashed
//!   worker's claims expire.
//! - **Call**: the start of each provider call is committed first; a claim
//!   that finds a started call without an outcome records a
//!   `possible_duplicate` and calls again.
//! - **Outcome**: `sent` (then receipts that arrived early are applied),
//!   a transient failure retried with exponential backoff and full jitter
//!   (never sooner than the provider's retry-after) up to
//!   `--max-attempts`, or `failed` with the provider's code and reason.
//! - **Double sends**: providers take no idempotency key, so a crash
//!   between the provider's answer and the commit of its outcome sends the
//!   message again; that window is `chatpipe_delivery_settle_seconds`.
//!
//! # Layout
//! - [`decide`]: pure — the settlement of a call's outcome.
//! - [`limits`]: per-channel and per-chat rate limits (`governor`).
//! - [`store`]: the SQL (claim, start, settle, release).
//! - [`listener`]: LISTEN for new deliveries.
//! - [`worker`]: the claim loop and each delivery's task.
//! - [`events`], [`metrics`]: one type per observable fact; Prometheus.
//! - [`server`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! [`spawn`] runs the worker in-process (tests, benchmarks); [`run`] is the
//! binary.

#![warn(missing_docs)]

pub mod decide;
pub mod events;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatpipe_channels::outbound::Sender;
use chatpipe_channels::retry::RetryPolicy;
use chatpipe_channels::{Channel, CredentialReader};
use chatpipe_core::db::PgConnectOptions;
pub use chatpipe_settings::delivery::DeliveryArgs;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{InternalEvent, RequestTimeoutSet, Started};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

/// What a worker is configured with, besides its database and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This replica's name in leases.
    pub owner: String,
    /// Claiming and retrying.
    pub worker: worker::Settings,
    /// Timeout of one provider call.
    pub request_timeout: Duration,
    /// Graph API version of WhatsApp Cloud calls.
    pub whatsapp_api_version: String,
    /// Calls per second per channel (0: no limit).
    pub channel_rate: u32,
    /// Calls per second per chat (0: no limit).
    pub chat_rate: u32,
    /// Burst per chat.
    pub chat_burst: u32,
}

impl Config {
    /// The configuration `args` give. The owner is `--replica-name`, else
    /// `HOSTNAME/<pid>` (or `delivery/<pid>`), with a random suffix so two
    /// processes never share a name.
    pub fn from_args(args: &DeliveryArgs) -> Config {
        let owner = args.replica_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "delivery".to_owned());
            let suffix = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}/{}/{}", std::process::id(), &suffix[..8])
        });
        Config {
            owner,
            worker: worker::Settings {
                concurrency: args.concurrency.max(1),
                claim_batch: args.claim_batch.max(1),
                poll_interval: args.poll_interval,
                lease: args.lease,
                policy: RetryPolicy {
                    base: args.backoff_base,
                    max: args.backoff_max,
                    max_attempts: args.max_attempts.max(1),
                },
            },
            request_timeout: args.request_timeout,
            whatsapp_api_version: args.whatsapp_api_version.clone(),
            channel_rate: args.channel_rate,
            chat_rate: args.chat_rate,
            chat_burst: args.chat_burst,
        }
    }

    /// The timeout of provider calls in force: `request_timeout`, capped
    /// to half the lease — a call must end well within its lease, or
    /// another replica would claim the delivery and send it again while
    /// the call is in progress.
    pub fn effective_request_timeout(&self) -> Duration {
        self.request_timeout.min(self.worker.lease / 2)
    }
}

/// A worker running in this process.
pub struct Running {
    cancel: CancellationToken,
    worker: JoinHandle<()>,
    listener: JoinHandle<()>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Its store (for its owner name).
    pub store: Store,
}

impl Running {
    /// Shuts down gracefully: stops claiming, lets calls in progress
    /// finish and be recorded, releases the claims not started.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.worker
            .await
            .context("the delivery worker ended abnormally")?;
        self.listener.abort();
        Ok(())
    }

    /// A token that shuts the worker down when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// Starts a worker (and its listener) for the database of `options`,
/// through `channels`.
pub fn spawn(
    options: PgConnectOptions,
    pool_size: usize,
    channels: Vec<Channel>,
    config: Config,
    metrics: Metrics,
) -> anyhow::Result<Running> {
    let mut options = options;
    options.config.application_name("chatpipe-delivery");
    let pool = chatpipe_core::db::pool_from_config(options.clone(), pool_size.max(2))?;
    let store = Store::new(pool, config.owner.clone(), config.worker.lease);
    let request_timeout = config.effective_request_timeout();
    RequestTimeoutSet {
        configured: config.request_timeout,
        effective: request_timeout,
    }
    .emit(&metrics);
    let sender = Sender::new(request_timeout, config.whatsapp_api_version.clone())
        .context("building the HTTP client of provider calls")?;
    let names: Vec<String> = channels.iter().map(|c| c.name().to_owned()).collect();
    Started {
        owner: &config.owner,
        channels: &names,
    }
    .emit(&metrics);
    let wake = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let listener = tokio::spawn(listener::run(
        options,
        wake.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    let worker = Arc::new(worker::Worker::new(
        store.clone(),
        channels,
        sender,
        Limits::new(config.channel_rate, config.chat_rate, config.chat_burst),
        config.worker,
        metrics.clone(),
        wake,
    ));
    let worker = tokio::spawn(worker.run(cancel.clone()));
    Ok(Running {
        cancel,
        worker,
        listener,
        metrics,
        store,
    })
}

/// The binary: reads the channels' credentials (refusing to start when
/// one is missing), starts the worker and the ops server, and shuts down
/// gracefully on SIGTERM or Ctrl-C.
pub async fn run(args: DeliveryArgs) -> anyhow::Result<()> {
    let channels = Channel::from_env(&args.channels.channels, CredentialReader::Delivery)
        .map_err(anyhow::Error::msg)
        .context(
            "refusing to start: chatpipe-delivery needs every declared channel's credentials",
        )?;
    let config = Config::from_args(&args);
    let options = PgConnectOptions::parse(&args.postgres.url())?;
    let metrics = Metrics::new().context("registering metrics")?;
    let names: Vec<String> = channels.iter().map(|c| c.name().to_owned()).collect();
    let running = spawn(
        options,
        args.postgres.postgres_pool_size,
        channels,
        config,
        metrics,
    )?;
    let server_cancel = CancellationToken::new();
    let (_, server) = server::serve(
        args.listen,
        running.store.clone(),
        names,
        &running.metrics,
        server_cancel.clone(),
    )
    .await?;
    chatpipe_core::shutdown::signal().await;
    running.shutdown().await?;
    server_cancel.cancel();
    server.await.context("the ops server ended abnormally")?;
    tracing::info!("chatpipe-delivery stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn arguments_make_the_config() {
        let args = DeliveryArgs::try_parse_from([
            "chatpipe-delivery",
            "--lease",
            "4s",
            "--request-timeout",
            "10s",
            "--max-attempts",
            "0",
            "--replica-name",
            "r1",
            "--backoff-base",
            "2s",
        ])
        .unwrap();
        let c = Config::from_args(&args);
        assert_eq!(c.owner, "r1");
        assert_eq!(c.worker.lease, Duration::from_secs(4));
        assert_eq!(c.worker.policy.base, Duration::from_secs(2));
        assert_eq!(c.worker.policy.max_attempts, 1, "at least one call");
        assert_eq!(c.effective_request_timeout(), Duration::from_secs(2));
        let args = DeliveryArgs::try_parse_from(["chatpipe-delivery"]).unwrap();
        let c = Config::from_args(&args);
        assert_eq!(c.effective_request_timeout(), Duration::from_secs(10));
        assert_ne!(c.owner, Config::from_args(&args).owner, "owners are unique");
    }
}
