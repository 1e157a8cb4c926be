//! `processor-bench`: prints the processor's numbers.
//!
//! - `catchup`: pre-fills a fresh topic with `--events` events (conversations
//!   sending bursts, synthetic arrival timestamps an hour in the past), then
//!   runs the processor (in process, the same `Processor` the binary runs)
//!   from offset 0 into a fresh database and prints events/s until every
//!   record is committed, and until every reply is written.
//! - `live`: runs the processor on a fresh topic while a producer sends
//!   bursts at a steady rate with real arrival timestamps, then prints
//!   δ = reply written − (last arrival + G) p50/p99/max from the database
//!   and the number of early replies (δ < 0).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chatpipe_core::config::KafkaArgs;
use chatpipe_core::kafka::{ensure_topic, producer_config, KafkaConnection};
use chatpipe_core::Event;
use chatpipe_processor::engine::domain::EngineConfig;
use chatpipe_processor::metrics::Metrics;
use chatpipe_processor::pipeline::{Processor, Settings};
use chrono::{TimeZone, Utc};
use clap::Parser;
use futures::future::join_all;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use uuid::Uuid;

/// Benchmark settings.
#[derive(Debug, Parser)]
#[command(mut_arg("kafka_brokers", |a| a.visible_alias("brokers")))]
struct Args {
    /// `catchup` or `live`.
    #[arg(long, default_value = "catchup")]
    mode: String,
    /// The broker (`--kafka-brokers`, alias `--brokers`) and how to reach
    /// it (TLS, SASL); the topic flag is unused (each run makes a topic).
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Postgres server URL (a database `chatpipe_bench_<n>` is created).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// Catch-up: number of events to pre-fill.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Records per poll batch.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Concurrent write transactions per batch.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Catch-up: `steady` (a backlog of steady traffic at `--rate`: about
    /// 2,000 conversations active at once) or `dense` (every conversation
    /// active at once: each group stays open across ~300 k records).
    #[arg(long, default_value = "steady")]
    shape: String,
    /// Catch-up, steady shape: events per second of record time.
    #[arg(long, default_value_t = 2_000)]
    rate: usize,
    /// Longest a behind partition holds an INBOUND row for its reply (ms).
    #[arg(long, default_value_t = 1_000)]
    inbound_max_delay_ms: u64,
    /// Live: conversations.
    #[arg(long, default_value_t = 2000)]
    conversations: usize,
    /// Live: seconds of load.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

fn record_for<'a>(
    topic: &'a str,
    key: &'a str,
    payload: &'a [u8],
    ts: i64,
) -> FutureRecord<'a, str, [u8]> {
    FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(ts)
}

async fn send_all(
    p: &FutureProducer,
    topic: &str,
    events: Vec<(Event, i64)>,
) -> anyhow::Result<()> {
    let encoded: Vec<(String, Vec<u8>, i64)> = events
        .into_iter()
        .map(|(e, ts)| (e.conversation_id().to_string(), e.encode(), ts))
        .collect();
    let results = join_all(
        encoded
            .iter()
            .map(|(k, v, ts)| p.send(record_for(topic, k, v, *ts), Duration::from_secs(30))),
    )
    .await;
    for r in results {
        r.map_err(|(e, _)| e).context("producing")?;
    }
    Ok(())
}

fn settings(a: &Args, kafka: &KafkaConnection, topic: &str, engine: EngineConfig) -> Settings {
    Settings {
        batch_size: a.batch,
        owner: "bench".into(),
        write_parallelism: a.parallel,
        inbound_max_delay: Duration::from_millis(a.inbound_max_delay_ms),
        // The catch-up benchmark's memory broker reports a partition's end
        // as its last batch's base offset + 1 (see docs/architecture.md),
        // which reads as "beyond the end" once caught up.
        log_reset_check: false,
        ..Settings::new(kafka.clone(), topic, engine)
    }
}

async fn fresh_db(base: &str) -> anyhow::Result<(String, deadpool_postgres::Pool)> {
    let url = format!(
        "{}/chatpipe_bench_{}",
        base.trim_end_matches('/'),
        Uuid::new_v4().simple()
    );
    chatpipe_core::db::ensure_database(&url).await?;
    chatpipe_core::db::migrate(&url).await?;
    let pool = chatpipe_processor::store::pool(&url, 8)?;
    Ok((url, pool))
}

/// Histogram of the microsecond values `sql` returns (negative values
/// recorded as 0), the number of rows, and how many were negative.
async fn micros_histogram(
    pool: &deadpool_postgres::Pool,
    sql: &str,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, usize, usize)> {
    let rows = pool.get().await?.query(sql, &[]).await?;
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut negative = 0usize;
    for r in &rows {
        let us: i64 = r.get(0);
        if us < 0 {
            negative += 1;
        }
        h.record(us.max(0) as u64)?;
    }
    Ok((h, rows.len(), negative))
}

async fn count(pool: &deadpool_postgres::Pool, sql: &str) -> anyhow::Result<i64> {
    Ok(pool.get().await?.query_one(sql, &[]).await?.get(0))
}

/// Runs `processor` until `stop` is set, on a thread with a runtime of its
/// own (the processor's loop is driven in place, as its binary does, not
/// spawned), and resolves with its result.
fn run_on_thread(
    processor: Processor,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(processor.run(ready, async move {
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }))
            });
        let _ = tx.send(result);
    });
    async move {
        rx.await
            .map_err(|_| anyhow::anyhow!("the processor thread ended abnormally"))?
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    match a.mode.as_str() {
        "catchup" => catchup(&a).await,
        "live" => live(&a).await,
        m => anyhow::bail!("unknown mode {m}"),
    }
}

async fn catchup(a: &Args) -> anyhow::Result<()> {
    let topic = format!("bench-catchup-{}", Uuid::new_v4().simple());
    let kafka = KafkaConnection::from_args(&a.kafka).context("the Kafka connection settings")?;
    ensure_topic(&kafka, &topic, a.partitions, 1, Duration::from_secs(30)).await?;
    let producer: FutureProducer =
        producer_config(&kafka, Duration::from_secs(60), Duration::from_millis(5))
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .create()?;
    // 20 events per conversation: NEW_CONVERSATION + 19 messages in 4 bursts
    // (rounds 100 ms apart, bursts 6 s apart), every 4th conversation closed
    // instead of its last message.
    let convs = a.events.div_ceil(20);
    let ids: Vec<Uuid> = (0..convs).map(|_| Uuid::new_v4()).collect();
    let t0 = Utc::now().timestamp_millis() - 3_600_000 - (a.events / a.rate.max(1)) as i64 * 1000;
    // Start of conversation i (ms after t0), by shape.
    let start_of = |i: usize| -> i64 {
        match a.shape.as_str() {
            "dense" => i as i64 * 100 / convs as i64,
            _ => (i as u128 * 20_000 / a.rate.max(1) as u128) as i64,
        }
    };
    if !matches!(a.shape.as_str(), "dense" | "steady") {
        anyhow::bail!("--shape must be dense or steady");
    }
    let started = Instant::now();
    let mut events: Vec<(Event, i64)> = Vec::with_capacity(convs * 20);
    for (i, c) in ids.iter().enumerate() {
        for round in 0..20usize {
            let ts = t0 + start_of(i) + round as i64 * 100 + (round as i64 / 5) * 6_000;
            let at = Utc.timestamp_millis_opt(ts).single().unwrap_or_default();
            let ev = match round {
                0 => Event::NewConversation {
                    id: *c,
                    timestamp: at,
                },
                19 if i % 4 == 0 => Event::CloseConversation {
                    id: *c,
                    timestamp: at,
                },
                _ => Event::NewMessage {
                    id: Uuid::new_v4(),
                    conversation_id: *c,
                    content: format!(
                        "message {round} of a benchmark conversation, about sixty bytes"
                    ),
                    timestamp: at,
                },
            };
            events.push((ev, ts));
        }
    }
    // Log order = arrival order (stable: a conversation's rounds keep theirs).
    events.sort_by_key(|(_, ts)| *ts);
    let total = events.len();
    let events_messages = events
        .iter()
        .filter(|(e, _)| matches!(e, Event::NewMessage { .. }))
        .count();
    for chunk in events.chunks(50_000) {
        send_all(&producer, &topic, chunk.to_vec()).await?;
    }
    producer.flush(Duration::from_secs(60))?;
    let produce_s = started.elapsed().as_secs_f64();
    println!("pre-filled {total} events ({} shape) into {topic} ({} partitions) in {produce_s:.1} s ({:.0} events/s)", a.shape, a.partitions, total as f64 / produce_s);

    let (url, pool) = fresh_db(&a.postgres).await?;
    let metrics = Metrics::new()?;
    let engine = EngineConfig::default();
    let mut processor = Processor::new(
        settings(a, &kafka, &topic, engine),
        pool.clone(),
        metrics.clone(),
    )?;
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    processor.start().await?;
    let ready = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let handle = run_on_thread(processor, ready, stop);
    while (metrics.records.get() as usize) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records_s = started.elapsed().as_secs_f64();
    // Every message stored with its reply (the last groups close by wall
    // clock at the end; rows of a behind partition may be written only then).
    let expected = events_messages as i64;
    let inbound = loop {
        let written = count(
            &pool,
            "SELECT count(*) FILTER (WHERE reply_id IS NOT NULL) FROM messages WHERE direction = 'INBOUND'",
        )
        .await?;
        if written >= expected {
            break written;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let all_s = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    handle.await?;
    let replies = count(
        &pool,
        "SELECT count(*) FROM messages WHERE direction = 'OUTBOUND'",
    )
    .await?;
    println!(
        "catch-up: {total} events committed in {records_s:.2} s = {:.0} events/s (batches {}, mean tx {:.1} ms)",
        total as f64 / records_s,
        metrics.batches.get(),
        metrics.batch_seconds.get_sample_sum() * 1000.0 / metrics.batch_seconds.get_sample_count().max(1) as f64
    );
    println!(
        "catch-up: all {replies} replies for {inbound} inbound written after {all_s:.2} s = {:.0} events/s end to end",
        total as f64 / all_s
    );
    println!("database: {}", chatpipe_core::db::redact(&url));
    Ok(())
}

async fn live(a: &Args) -> anyhow::Result<()> {
    let topic = format!("bench-live-{}", Uuid::new_v4().simple());
    let kafka = KafkaConnection::from_args(&a.kafka).context("the Kafka connection settings")?;
    ensure_topic(&kafka, &topic, a.partitions, 1, Duration::from_secs(30)).await?;
    let (url, pool) = fresh_db(&a.postgres).await?;
    let metrics = Metrics::new()?;
    let engine = EngineConfig::default();
    let mut processor = Processor::new(
        settings(a, &kafka, &topic, engine),
        pool.clone(),
        metrics.clone(),
    )?;
    processor.start().await?;
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let handle = run_on_thread(processor, Arc::new(AtomicBool::new(false)), stop);
    let producer: FutureProducer =
        producer_config(&kafka, Duration::from_secs(30), Duration::from_millis(5)).create()?;
    let convs: Vec<Uuid> = (0..a.conversations).map(|_| Uuid::new_v4()).collect();
    let now = || Utc::now().timestamp_millis();
    send_all(
        &producer,
        &topic,
        convs
            .iter()
            .map(|c| {
                (
                    Event::NewConversation {
                        id: *c,
                        timestamp: Utc::now(),
                    },
                    now(),
                )
            })
            .collect(),
    )
    .await?;
    // Each conversation sends a burst of 3 messages (100 ms apart) every
    // ~7 s; conversations are spread evenly over time: a steady load.
    let period = Duration::from_millis(7_000);
    let slots = 70usize;
    let per_slot = convs.len().div_ceil(slots);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(period / slots as u32);
    while started.elapsed() < Duration::from_secs(a.seconds) {
        tick.tick().await;
        let slot = (started.elapsed().as_millis() as usize / (period.as_millis() as usize / slots))
            % slots;
        let chunk: Vec<Uuid> = convs
            .iter()
            .skip(slot * per_slot)
            .take(per_slot)
            .copied()
            .collect();
        let p = producer.clone();
        let t = topic.clone();
        sent += chunk.len() * 3;
        tokio::spawn(async move {
            for _ in 0..3 {
                let evs = chunk
                    .iter()
                    .map(|c| {
                        (
                            Event::NewMessage {
                                id: Uuid::new_v4(),
                                conversation_id: *c,
                                content: "live benchmark message".into(),
                                timestamp: Utc::now(),
                            },
                            now(),
                        )
                    })
                    .collect();
                let _ = send_all(&p, &t, evs).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(7)).await;
    done.store(true, Ordering::SeqCst);
    handle.await?;
    let (h, replies, early) = micros_histogram(
        &pool,
        "SELECT (extract(epoch from (written_at - \"timestamp\")) * 1000000)::int8 FROM messages WHERE direction = 'OUTBOUND'",
    )
    .await?;
    println!(
        "live: {} conversations, {sent} messages in {} s ({rate:.0} events/s), G = 5 s, allowance 50 ms, fetch.wait.max.ms 10",
        a.conversations, a.seconds
    );
    println!(
        "live: {replies} replies; δ = written − (last arrival + G): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; early replies (δ < 0): {early}; late records: {}",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        metrics.late_records.get()
    );
    // Visibility: an accepted message's INBOUND row, written − arrival.
    let (v, inbound, _) = micros_histogram(
        &pool,
        "SELECT (extract(epoch from (written_at - arrival)) * 1000000)::int8 FROM messages WHERE direction = 'INBOUND'",
    )
    .await?;
    println!(
        "live: {inbound} INBOUND rows; visible (written − arrival): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v.value_at_quantile(0.5) as f64 / 1000.0,
        v.value_at_quantile(0.99) as f64 / 1000.0,
        v.max() as f64 / 1000.0,
    );
    println!("database: {}", chatpipe_core::db::redact(&url));
    Ok(())
}
