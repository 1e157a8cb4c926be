//! Wiring: builds the pools, producer and lookup workers from
//! [`IngestArgs`], the axum router (webhook + `/healthz`, `/readyz`,
//! `/metrics`), and serves it with graceful shutdown: stop accepting, finish
//! in-flight requests, flush the producer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::post;
use axum::Router;
use chatpipe_core::ops::{self, ReadinessCheck};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::IngestArgs;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::producer::EventProducer;
use crate::status_cache::StatusLookup;
use crate::webhook::{webhook, AppState};

/// A built ingest service, ready to serve.
pub struct Ingest {
    state: Arc<AppState>,
    ready_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Ingest {
    /// Connects nothing yet (pools and the producer connect lazily) but
    /// builds every component; with `--migrate` it first creates the
    /// database and applies migrations.
    pub async fn build(args: &IngestArgs) -> anyhow::Result<Ingest> {
        let url = &args.postgres.postgres_url;
        if args.migrate {
            chatpipe_core::db::ensure_database(url).await?;
            chatpipe_core::db::migrate(url).await?;
        }
        let metrics = Metrics::new().context("registering metrics")?;
        let lifecycle_pool = chatpipe_core::db::pool(url, args.postgres.postgres_pool_size)?;
        let lookup_pool = chatpipe_core::db::pool(url, args.status_lookup_workers.max(1))?;
        let extra = args
            .producer_extra()
            .map_err(anyhow::Error::msg)
            .context("--kafka-producer-extra")?;
        let producer = EventProducer::new(
            &args.kafka.kafka_brokers,
            &args.kafka.kafka_topic,
            args.produce_timeout,
            args.kafka_linger,
            &extra,
            metrics.clone(),
        )
        .context("creating the Kafka producer")?;
        let lookup = StatusLookup::start(
            lookup_pool,
            args.status_lookup_workers,
            args.status_lookup_batch,
            args.status_lookup_linger,
            args.db_timeout,
            args.closed_cache_size,
            metrics.clone(),
        );
        let state = AppState {
            limits: args.limits(),
            producer,
            lifecycle: Lifecycle::new(lifecycle_pool, args.db_timeout),
            lookup,
            metrics,
            retry_after_secs: args.retry_after_secs,
        };
        Ok(Ingest {
            state: Arc::new(state),
            ready_timeout: args.ready_timeout,
            shutdown_timeout: args.shutdown_timeout,
        })
    }

    /// The `/readyz` check: broker metadata for the topic and Postgres
    /// `SELECT 1`, both bounded by the readiness timeout.
    pub fn readiness(&self) -> ReadinessCheck {
        let state = Arc::clone(&self.state);
        let timeout = self.ready_timeout;
        Arc::new(move || {
            let state = Arc::clone(&state);
            Box::pin(async move {
                let (broker, db) = tokio::join!(
                    state.producer.check_broker(timeout),
                    state.lifecycle.check(timeout)
                );
                match (broker, db) {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(b), Ok(())) => Err(b),
                    (Ok(()), Err(d)) => Err(d),
                    (Err(b), Err(d)) => Err(format!("{b}; {d}")),
                }
            })
        })
    }

    /// The full router: `POST /webhook/` (and `/webhook`) plus the ops routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhook/", post(webhook))
            .route("/webhook", post(webhook))
            .with_state(Arc::clone(&self.state))
            .merge(ops::router(
                self.state.metrics.registry.clone(),
                self.readiness(),
            ))
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting,
    /// lets in-flight requests finish (bounded by the shutdown timeout) and
    /// flushes the producer.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        });
        let grace = self.shutdown_timeout;
        let deadline = async move {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = server => r.context("HTTP server failed")?,
            () = deadline => tracing::warn!(?grace, "in-flight requests did not finish in time"),
        }
        tracing::info!("HTTP server stopped; flushing the producer");
        if let Err(e) = self.state.producer.flush(self.shutdown_timeout).await {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
        Ok(())
    }
}

/// Runs ingest until SIGTERM/Ctrl-C (the binary's main loop).
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let ingest = Ingest::build(&args).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        topic = %args.kafka.kafka_topic,
        brokers = %args.kafka.kafka_brokers,
        "chatpipe-ingest accepting webhooks on POST /webhook/"
    );
    ingest
        .serve(listener, chatpipe_core::shutdown::signal())
        .await
}

/// An ingest running in this process (for tests and embedding).
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits for the end.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("ingest task panicked")?
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Builds ingest from `args`, binds `args.listen` (use `127.0.0.1:0` for a
/// free port) and serves it on a background task.
pub async fn spawn(args: IngestArgs) -> anyhow::Result<Running> {
    let ingest = Ingest::build(&args).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(ingest.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    Ok(Running {
        addr,
        stop: Some(stop_tx),
        task,
    })
}
