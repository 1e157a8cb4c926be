//! `chatpipe-processor`: owns its partitions of the event topic and writes
//! conversations, messages, replies and rejections to Postgres.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatpipe_core::ops::{router_with_warnings, ReadinessCheck, WarningsFn};
use chatpipe_processor::config::{self, Cli};
use chatpipe_processor::engine::retry::RetryPolicy;
use chatpipe_processor::metrics::Metrics;
use chatpipe_processor::pipeline::{Processor, Settings};
use chatpipe_processor::reply_policy::{PolicyConfig, ReplyPolicy};
use clap::Parser;
use rdkafka::consumer::Consumer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chatpipe_core::telemetry::init_tracing(&cli.log);
    let args = &cli.processor;
    let url = &cli.postgres.url();
    if args.migrate {
        chatpipe_core::db::migrate_at_start(url).await?;
    }
    let pool = chatpipe_processor::store::pool_with(
        url,
        cli.postgres.postgres_pool_size.max(2),
        chatpipe_processor::store::SessionTimeouts {
            lock: args.lock_timeout,
            statement: args.statement_timeout,
        },
    )?;
    let metrics = Metrics::new().context("registering metrics")?;
    // Checked before anything starts: a template, rules file or bot URL
    // that cannot be used refuses the start with the reason.
    let policy_config = PolicyConfig::from_args(args);
    let policy =
        ReplyPolicy::new(&policy_config, metrics.clone()).context("the reply policy settings")?;
    let ordinal = config::resolved_ordinal(args);
    let settings = Settings {
        kafka: chatpipe_core::kafka::KafkaConnection::from_args(&cli.kafka)
            .context("the Kafka connection settings")?,
        topic: cli.kafka.kafka_topic.clone(),
        engine: config::engine(args),
        allowance_ms: args.watermark_allowance.as_millis() as i64,
        replicas: args.replicas,
        ordinal,
        batch_size: args.poll_batch_size.max(1),
        fetch_wait: args.fetch_wait,
        idle_tick: args.idle_tick,
        conversation_cache: args.conversation_cache,
        write_parallelism: args.write_parallelism.max(1),
        inbound_max_delay: args.inbound_max_delay,
        max_clock_skew_ms: i64::try_from(args.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
        retry: RetryPolicy {
            poison_attempts: args.poison_attempts.max(1),
            stuck_after: args.stuck_after.max(1),
            ..RetryPolicy::default()
        },
        log_reset_check: args.log_reset_check,
        inflight_lease: args.inflight_lease,
        owner: format!(
            "{}/{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
            std::process::id()
        ),
    };
    tracing::info!(?settings, ?policy, "starting chatpipe-processor");

    let mut processor = Processor::new(settings.clone(), pool.clone(), metrics.clone())?;
    processor.set_reply_policy(policy.clone());
    let _rules_refresh = policy.spawn_rules_refresh(processor.health());
    let ready = Arc::new(AtomicBool::new(false));
    let health = processor.health();
    let warnings: WarningsFn = {
        let health = health.clone();
        Arc::new(move || health.warnings())
    };
    let readiness: ReadinessCheck = {
        let health = health.clone();
        let ready = ready.clone();
        let pool = pool.clone();
        let consumer = processor.consumer();
        let topic = settings.topic.clone();
        Arc::new(move || {
            let health = health.clone();
            let ready = ready.clone();
            let pool = pool.clone();
            let consumer = consumer.clone();
            let topic = topic.clone();
            Box::pin(async move {
                if !ready.load(Ordering::SeqCst) {
                    return Err("partitions not claimed yet".to_string());
                }
                // Fenced, or a partition whose writes keep failing.
                health.readiness()?;
                let client = pool.get().await.map_err(|e| format!("postgres: {e}"))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| format!("postgres: {e}"))?;
                tokio::task::spawn_blocking(move || {
                    consumer
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .map(|_| ())
                        .map_err(|e| format!("kafka: {e}"))
                })
                .await
                .map_err(|e| e.to_string())?
            })
        })
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, ordinal, replicas = args.replicas, "ops server listening");
    let app = router_with_warnings(metrics.registry.clone(), readiness, warnings);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops server failed");
        }
    });

    let shutdown = chatpipe_core::shutdown::signal();
    tokio::pin!(shutdown);
    tokio::select! {
        r = processor.start() => r?,
        _ = &mut shutdown => return Ok(()),
    }
    tracing::info!(partitions = ?processor.owned(), "processing");
    processor.run(ready, shutdown).await
}
