//! Wiring: builds the pools, producer, lookup workers and the in-flight
//! floor publisher from [`IngestArgs`], the axum router (webhook +
//! `/healthz`, `/readyz`, `/metrics`), and serves it over HTTP/1.1 with
//! hyper directly (axum's `serve` has no header read timeout):
//! - each connection must send a request's headers within
//!   `--header-read-timeout` (hyper's `header_read_timeout`; also ends idle
//!   keep-alive connections), else it is closed and counted;
//! - the webhook handler bounds body reads (`408`) and concurrency (`503`),
//!   see [`crate::webhook`];
//! - graceful shutdown: stop accepting, let connections finish their
//!   requests, wait for webhook work still running for clients that went
//!   away, flush the producer, delete this replica's `ingest_inflight` row
//!   (all bounded by the shutdown timeout).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::post;
use axum::Router;
use chatpipe_core::ops::{self, ReadinessCheck};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use chatpipe_channels::{Channel, CredentialReader};

use crate::channel_routes::ChannelRoutes;
use crate::channel_store::ChannelStore;
use crate::channels::{channel_webhook, verify_subscription};
use crate::config::IngestArgs;
use crate::events::{self, InternalEvent};
use crate::inflight::Publisher;
use crate::lifecycle::{self, Lifecycle};
use crate::metrics::Metrics;
use crate::producer::EventProducer;
use crate::rate_limit::RateLimit;
use crate::signature::Verifier;
use crate::status_cache::StatusLookup;
use crate::webhook::{webhook, AppState, Peer};

/// How often the rate limiter forgets clients whose buckets are full.
const RATE_LIMIT_CLEANUP: Duration = Duration::from_secs(60);

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The per-client rate limit `args` asks for (`--rate-limit` 0: none).
fn rate_limit(args: &IngestArgs) -> Option<RateLimit> {
    let per_second = std::num::NonZeroU32::new(args.rate_limit)?;
    let burst = args
        .rate_limit_burst
        .and_then(std::num::NonZeroU32::new)
        .unwrap_or(per_second);
    Some(RateLimit::new(per_second, burst, args.rate_limit_client))
}

/// A built ingest service, ready to serve.
pub struct Ingest {
    state: Arc<AppState>,
    publisher: Publisher,
    replica: String,
    ready_timeout: Duration,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
}

impl Ingest {
    /// Connects nothing yet (pools and the producer connect lazily) but
    /// builds every component; with `--migrate` it first creates the
    /// database and applies migrations.
    pub async fn build(args: &IngestArgs) -> anyhow::Result<Ingest> {
        args.validate()
            .map_err(anyhow::Error::msg)
            .context("invalid ingest settings")?;
        let url = &args.postgres.url();
        if args.migrate {
            chatpipe_core::db::migrate_at_start(url).await?;
        }
        let metrics = Metrics::new().context("registering metrics")?;
        // The error names a secret by position only, never by value.
        let verifier = Verifier::from_setting(
            args.webhook_secrets.as_ref().map(|s| s.expose()),
            args.webhook_tolerance,
        )
        .map_err(anyhow::Error::msg)
        .context("--webhook-secrets")?;
        events::WebhookAuthConfigured {
            verifier: verifier.as_ref(),
            env: &chatpipe_settings::ingest::webhook_secrets_env(),
        }
        .emit(&metrics);
        // Every session of ingest ends a transaction left idle too long
        // (see `lifecycle`, "Lock coupling").
        let options = args.session_options();
        let lifecycle_pool = lifecycle::pool(url, args.postgres.postgres_pool_size, &options)
            .context("the lifecycle pool")?;
        let lookup_pool = lifecycle::pool(url, args.status_lookup_workers.max(1), &options)
            .context("the lookup pool")?;
        let floor_pool = lifecycle::pool(url, 1, &options).context("the in-flight floor pool")?;
        let channel_pool = lifecycle::pool(url, args.postgres.postgres_pool_size, &options)
            .context("the channel pool")?;
        let channels = Channel::from_env(&args.channels.channels, CredentialReader::Ingest)
            .map_err(anyhow::Error::msg)
            .context("--channels")?;
        events::ChannelsConfigured {
            channels: &channels
                .iter()
                .map(|c| (c.name().to_owned(), c.kind().as_str()))
                .collect::<Vec<_>>(),
        }
        .emit(&metrics);
        let extra = args
            .producer_extra()
            .map_err(anyhow::Error::msg)
            .context("--kafka-producer-extra")?;
        let kafka = chatpipe_core::kafka::KafkaConnection::from_args(&args.kafka)
            .context("the Kafka connection settings")?;
        let producer = EventProducer::new(
            &kafka,
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
        let replica = args.replica();
        let publisher = Publisher::new(
            Arc::clone(producer.inflight()),
            floor_pool,
            replica.clone(),
            args.inflight_publish_interval,
            args.db_timeout,
            metrics.clone(),
        );
        let state = AppState {
            limits: crate::config::limits(args),
            producer,
            lifecycle: Lifecycle::new(lifecycle_pool, args.db_timeout),
            lookup,
            metrics,
            retry_after_secs: args.retry_after_secs,
            body_read_timeout: args.body_read_timeout,
            admission: Arc::new(Semaphore::new(args.max_concurrent_requests)),
            max_concurrent_requests: args.max_concurrent_requests,
            verifier,
            rate_limit: rate_limit(args),
            channels: ChannelRoutes::new(channels),
            channel_store: ChannelStore::new(channel_pool, args.db_timeout),
        };
        Ok(Ingest {
            state: Arc::new(state),
            publisher,
            replica,
            ready_timeout: args.ready_timeout,
            shutdown_timeout: args.shutdown_timeout,
            header_read_timeout: args.header_read_timeout,
        })
    }

    /// This replica's name in `ingest_inflight`.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The `/readyz` check: broker metadata for the topic and Postgres
    /// `SELECT 1`, both bounded by the readiness timeout.
    pub fn readiness(&self) -> ReadinessCheck {
        readiness(Arc::clone(&self.state), self.ready_timeout)
    }

    /// The full router: `POST /webhook/` (and `/webhook`) plus the ops routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/webhook/", post(webhook))
            .route("/webhook", post(webhook))
            .route(
                "/channels/{name}/webhook",
                post(channel_webhook).get(verify_subscription),
            )
            .with_state(Arc::clone(&self.state))
            .merge(ops::router(
                self.state.metrics.registry.clone(),
                self.readiness(),
            ))
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting,
    /// lets in-flight requests finish (bounded by the shutdown timeout),
    /// flushes the producer and removes this replica's in-flight floor row.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = self.router();
        let Ingest {
            state,
            publisher,
            shutdown_timeout: grace,
            header_read_timeout,
            ..
        } = self;
        // Dropping this (the serve future cancelled) stops the publisher too.
        let publisher = publisher.spawn();
        let _forget_idle = state.rate_limit.is_some().then(|| {
            let state = Arc::clone(&state);
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(RATE_LIMIT_CLEANUP);
                loop {
                    tick.tick().await;
                    if let Some(rl) = &state.rate_limit {
                        rl.forget_idle();
                        events::RateLimitClientsForgotten {
                            remaining: rl.clients(),
                        }
                        .emit(&state.metrics);
                    }
                }
            }))
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let tcp = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Per-connection failures and descriptor exhaustion:
                        // keep serving, but do not spin.
                        events::ConnectionAcceptFailed { error: &e }.emit(&state.metrics);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (tcp, peer) = tcp;
            let _ = tcp.set_nodelay(true);
            // Each request knows its connection's peer (the rate limit's
            // client).
            let service = tower::ServiceBuilder::new()
                .map_request(move |mut r: axum::http::Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(Peer(peer));
                    r
                })
                .service(router.clone());
            let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
            let conn = graceful.watch(conn);
            let metrics = state.metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    events::ConnectionFailed {
                        header_timeout: e.is_timeout(),
                        error: &e,
                    }
                    .emit(&metrics);
                }
            });
        }
        drop(listener);
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_err()
        {
            events::ShutdownWaitExpired {
                stage: events::ShutdownStage::Requests,
                grace,
            }
            .emit(&state.metrics);
        }
        // Webhook work of clients that went away runs on its own tasks and
        // holds admission permits until it is done.
        let permits = u32::try_from(state.max_concurrent_requests).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(deadline, state.admission.acquire_many(permits))
            .await
            .is_err()
        {
            events::ShutdownWaitExpired {
                stage: events::ShutdownStage::WebhookWork,
                grace,
            }
            .emit(&state.metrics);
        }
        tracing::info!("HTTP server stopped; flushing the producer");
        if let Err(e) = state.producer.flush(grace).await {
            events::ProducerFlushIncomplete { error: &e }.emit(&state.metrics);
        }
        publisher.stop().await;
        Ok(())
    }
}

fn readiness(state: Arc<AppState>, timeout: Duration) -> ReadinessCheck {
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

/// Runs ingest until SIGTERM/Ctrl-C (the binary's main loop).
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let ingest = Ingest::build(&args).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        replica = %ingest.replica(),
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
