//! `chatpipe-api-bench`: measures `GET /conversations/{id}/` throughput and
//! latency on conversations of a given number of messages (default 10 and
//! 200) and prints requests/s and percentiles.
//!
//! It seeds conversations straight into Postgres (a dedicated database by
//! default, recreated each run), serves the api in-process on a free port
//! (or targets `--api-url`, e.g. a `chatpipe-api` process reading the same
//! database), and runs `--concurrency` closed-loop clients for
//! `--duration` per size. To measure under pipeline load, point
//! `--postgres-url` at the database the processor writes to (with
//! `--fresh false`) while `chatpipe-loadgen` drives the ingest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chatpipe_api::metrics::Metrics;
use chatpipe_api::routes::AppState;
use chatpipe_core::config::parse_duration;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::Rng;
use uuid::Uuid;

/// Benchmark settings.
#[derive(Debug, Parser)]
#[command(
    name = "chatpipe-api-bench",
    about = "Benchmark GET /conversations/{id}/"
)]
struct Args {
    /// Database to seed and read.
    #[arg(
        long,
        env = "CHATPIPE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chatpipe_api_bench"
    )]
    postgres_url: String,
    /// Drop and recreate the database first (only for a dedicated one).
    #[arg(long, env = "CHATPIPE_BENCH_FRESH", default_value_t = true, action = clap::ArgAction::Set)]
    fresh: bool,
    /// Api to query; empty serves one in-process on a free port.
    #[arg(long, env = "CHATPIPE_BENCH_API_URL", default_value = "")]
    api_url: String,
    /// Pool size of the in-process api.
    #[arg(long, env = "CHATPIPE_BENCH_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// Messages per conversation, one measurement per size.
    #[arg(
        long,
        env = "CHATPIPE_BENCH_SIZES",
        value_delimiter = ',',
        default_value = "10,200"
    )]
    sizes: Vec<i32>,
    /// Conversations seeded per size.
    #[arg(long, env = "CHATPIPE_BENCH_CONVERSATIONS", default_value_t = 1000)]
    conversations: usize,
    /// Concurrent clients.
    #[arg(long, env = "CHATPIPE_BENCH_CONCURRENCY", default_value_t = 32)]
    concurrency: usize,
    /// Measurement time per size.
    #[arg(long, env = "CHATPIPE_BENCH_DURATION", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up time per size (not measured).
    #[arg(long, env = "CHATPIPE_BENCH_WARMUP", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
}

async fn prepare_db(args: &Args) -> anyhow::Result<()> {
    if args.fresh {
        let name = args
            .postgres_url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .context("the Postgres URL names no database")?
            .to_owned();
        let base = &args.postgres_url
            [..args.postgres_url.len() - args.postgres_url.rsplit('/').next().unwrap_or("").len()];
        let admin = chatpipe_core::db::connect(&format!("{base}postgres")).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                name.replace('"', "\"\"")
            ))
            .await
            .context("dropping the bench database")?;
    }
    chatpipe_core::db::ensure_database(&args.postgres_url).await?;
    chatpipe_core::db::migrate(&args.postgres_url).await?;
    Ok(())
}

/// Seeds `n` conversations of `size` messages (every 5th OUTBOUND) and
/// returns their ids.
async fn seed(url: &str, n: usize, size: i32) -> anyhow::Result<Vec<Uuid>> {
    let client = chatpipe_core::db::connect(url).await?;
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    for chunk in ids.chunks(200) {
        client
            .execute(
                "INSERT INTO conversations (id, status, created_at, updated_at) \
                 SELECT id, 'OPEN', now(), now() FROM unnest($1::uuid[]) AS c(id)",
                &[&chunk],
            )
            .await
            .context("seeding conversations")?;
        client
            .execute(
                "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) \
                 SELECT gen_random_uuid(), c.id, \
                        CASE WHEN g % 5 = 0 THEN 'OUTBOUND' ELSE 'INBOUND' END, \
                        repeat('Olá, preciso de ajuda com o pedido ', 2), \
                        now() + g * interval '1 second', now() + g * interval '1 second' \
                 FROM unnest($1::uuid[]) AS c(id), generate_series(1, $2) AS g",
                &[&chunk, &size],
            )
            .await
            .context("seeding messages")?;
    }
    client
        .batch_execute("ANALYZE conversations; ANALYZE messages")
        .await?;
    Ok(ids)
}

struct Outcome {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

async fn measure(
    base: &str,
    ids: Arc<Vec<Uuid>>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()?;
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, ids, base) = (client.clone(), ids.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut requests, mut errors) = (0u64, 0u64);
            loop {
                let id = ids[rand::rng().random_range(0..ids.len())];
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let ok = match client
                    .get(format!("{base}/conversations/{id}/"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                if t0 >= measure_from {
                    requests += 1;
                    if ok {
                        hist.record(t0.elapsed().as_micros() as u64)?;
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((hist, requests, errors))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        let (h, r, e) = t.await??;
        total.add(h)?;
        requests += r;
        errors += e;
    }
    Ok(Outcome {
        hist: total,
        requests,
        errors,
        elapsed: duration,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prepare_db(&args).await?;
    let base = if args.api_url.is_empty() {
        let pool = chatpipe_api::store::readonly_pool(
            &args.postgres_url,
            args.pool_size,
            Duration::from_secs(5),
            "",
        )?;
        let app = chatpipe_api::app(
            AppState {
                pool,
                default_limit: 50,
                max_limit: 500,
            },
            Metrics::new()?,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    } else {
        args.api_url.trim_end_matches('/').to_owned()
    };
    println!(
        "chatpipe-api-bench: api {base}, {} clients, {:?} per size (after {:?} warm-up), {} conversations per size",
        args.concurrency, args.duration, args.warmup, args.conversations
    );
    println!(
        "{:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "messages", "requests", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    for &size in &args.sizes {
        let ids = Arc::new(seed(&args.postgres_url, args.conversations, size).await?);
        let o = measure(&base, ids, args.concurrency, args.warmup, args.duration).await?;
        let ms = |q: f64| o.hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:>9} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            size,
            o.requests,
            o.requests as f64 / o.elapsed.as_secs_f64(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            o.hist.max() as f64 / 1000.0,
            o.errors
        );
    }
    Ok(())
}
