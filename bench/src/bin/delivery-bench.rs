//! Delivery benchmark: the real `chatpipe-delivery` binary against the test
//! kit's fake Telegram server, on a fresh Postgres database.
//!
//! Two measurements, printed as numbers (never asserted):
//! - **backlog**: `--backlog` deliveries queued before the component
//!   starts; deliveries per second from its first provider call to its
//!   last (its capacity, rate limits lifted);
//! - **steady**: deliveries queued at `--rate` per second for
//!   `--seconds`, each written the way the processor writes a reply's
//!   delivery (one transaction: the OUTBOUND message, its delivery row and
//!   its timeline event); the time from that commit (the group's close) to
//!   the provider receiving the call, p50 / p99 / max.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/delivery-bench --backlog 5000 --rate 200 --seconds 20
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use chatpipe_tests::fakes::FakeTelegram;
use chatpipe_tests::{free_port, TestDb};
use clap::Parser;
use hdrhistogram::Histogram;
use uuid::Uuid;

const TOKEN: &str = "4242:bench-bot-token";

#[derive(Debug, Parser)]
#[command(about = "Delivery throughput and close-to-provider latency")]
struct Args {
    /// Deliveries queued before the component starts.
    #[arg(long, default_value_t = 5000)]
    backlog: usize,
    /// Deliveries queued per second in the steady phase.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Length of the steady phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Provider calls in flight (`CHATPIPE_DELIVERY_CONCURRENCY`).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The `chatpipe-delivery` binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
}

/// Queues `n` deliveries for distinct chats starting at `first`, as the
/// processor does (message, delivery and event in one transaction);
/// returns each message text with its commit time.
async fn queue(
    db: &tokio_postgres::Client,
    first: usize,
    n: usize,
) -> anyhow::Result<Vec<(String, SystemTime)>> {
    let mut contacts = Vec::with_capacity(n);
    let mut chats = Vec::with_capacity(n);
    let mut convs = Vec::with_capacity(n);
    let mut msgs = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    for i in first..first + n {
        contacts.push(Uuid::new_v4());
        chats.push(format!("{}", 100_000 + i));
        convs.push(Uuid::new_v4());
        msgs.push(Uuid::new_v4());
        texts.push(format!("bench reply {i}"));
    }
    db.execute(
        "INSERT INTO contacts (id, channel, provider_user_id) SELECT * FROM unnest($1::uuid[], array_fill('tg'::text, ARRAY[$3::int]), $2::text[])",
        &[&contacts, &chats, &(n as i32)],
    )
    .await
    .context("contacts")?;
    db.execute(
        "INSERT INTO conversations (id, status, created_at, updated_at) SELECT c, 'OPEN', now(), now() FROM unnest($1::uuid[]) c",
        &[&convs],
    )
    .await
    .context("conversations")?;
    db.execute(
        "INSERT INTO channel_conversations (conversation_id, channel, contact_id) SELECT c, 'tg', k FROM unnest($1::uuid[], $2::uuid[]) AS u(c, k)",
        &[&convs, &contacts],
    )
    .await
    .context("channel conversations")?;
    db.batch_execute("BEGIN").await?;
    db.execute(
        "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) SELECT m, c, 'OUTBOUND', t, now(), now() FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u(m, c, t)",
        &[&msgs, &convs, &texts],
    )
    .await
    .context("messages")?;
    db.execute(
        "WITH q AS (INSERT INTO deliveries (message_id, conversation_id, channel, contact_id) SELECT m, c, 'tg', k FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(m, c, k) RETURNING id) INSERT INTO delivery_events (delivery_id, event, source) SELECT id, 'queued', 'processor' FROM q",
        &[&msgs, &convs, &contacts],
    )
    .await
    .context("deliveries")?;
    db.batch_execute("COMMIT").await?;
    let at = SystemTime::now();
    Ok(texts.into_iter().map(|t| (t, at)).collect())
}

/// p50 and p99 bucket bounds (ms) and the mean (ms) of histogram `name`
/// in a Prometheus text exposition (all label sets summed).
fn quantiles(text: &str, name: &str) -> (String, String, f64) {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        if key.starts_with(&format!("{name}_bucket")) {
            let le = key
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("+Inf");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some(b) => b.1 += value,
                None => buckets.push((bound, value)),
            }
        } else if key.starts_with(&format!("{name}_sum")) {
            sum += value;
        } else if key.starts_with(&format!("{name}_count")) {
            count += value;
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, n)| *n >= q * count)
            .map(|(b, _)| {
                if b.is_finite() {
                    format!("{:.1}", b * 1000.0)
                } else {
                    "inf".to_owned()
                }
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let mean = if count > 0.0 {
        sum / count * 1000.0
    } else {
        0.0
    };
    (at(0.5), at(0.99), mean)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) / 1000
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = TestDb::create().await?;
    let client = db.client().await?;
    let telegram = FakeTelegram::start(TOKEN).await?;
    let channels =
        serde_json::json!([{"name": "tg", "type": "telegram", "apiBaseUrl": telegram.base_url()}])
            .to_string();

    let backlog = queue(&client, 0, args.backlog).await?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("chatpipe-delivery"))
            .context("no directory of this binary")?,
    };
    let port = free_port();
    let mut child = Command::new(&binary)
        .env("CHATPIPE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHATPIPE_POSTGRES_URL", &db.url)
        .env("CHATPIPE_CHANNELS", &channels)
        .env("CHATPIPE_CHANNEL_TG_BOT_TOKEN", TOKEN)
        .env(
            "CHATPIPE_DELIVERY_CONCURRENCY",
            args.concurrency.to_string(),
        )
        .env("CHATPIPE_DELIVERY_CHANNEL_RATE", "1000000")
        .env("CHATPIPE_DELIVERY_CHAT_RATE", "1000")
        .env("CHATPIPE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;

    let started = Instant::now();
    let sent = telegram
        .wait_for_sent(args.backlog, Duration::from_secs(600))
        .await
        .context("the backlog was not delivered")?;
    let first = sent.iter().map(|s| s.at).min();
    let last = sent.iter().map(|s| s.at).max();
    if let (Some(first), Some(last)) = (first, last) {
        let span = last.duration_since(first).unwrap_or_default();
        println!(
            "backlog: {} deliveries in {:.2} s from the first provider call to the last: {:.0} deliveries/s ({:.2} s after start)",
            backlog.len(),
            span.as_secs_f64(),
            backlog.len() as f64 / span.as_secs_f64().max(1e-3),
            started.elapsed().as_secs_f64()
        );
    }

    // Steady phase: queue at the rate, one batch every 100 ms.
    let per_tick = (args.rate as usize).div_ceil(10).max(1);
    let ticks = args.seconds * 10;
    let mut queued: HashMap<String, SystemTime> = HashMap::new();
    let mut next = args.backlog;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..ticks {
        interval.tick().await;
        for (text, at) in queue(&client, next, per_tick).await? {
            queued.insert(text, at);
        }
        next += per_tick;
    }
    let total = args.backlog + queued.len();
    let sent = telegram
        .wait_for_sent(total, Duration::from_secs(300))
        .await
        .context("the steady phase was not delivered")?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in &sent {
        *counts.entry(s.text.as_str()).or_default() += 1;
        if let Some(at) = queued.get(&s.text) {
            let d = s.at.duration_since(*at).unwrap_or_default();
            hist.record(millis(d).max(1))?;
        }
    }
    let doubles = counts.values().filter(|n| **n > 1).count();
    println!(
        "steady: {} deliveries at {} /s for {} s: queued (group closed) → provider call p50 {} ms, p99 {} ms, max {} ms",
        queued.len(),
        args.rate,
        args.seconds,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!("sent twice: {doubles}");
    // The double-send window: from the provider's answer to the commit of
    // the outcome (the component's own histogram).
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => {
            let text = r.text().await.unwrap_or_default();
            for name in [
                "chatpipe_delivery_settle_seconds",
                "chatpipe_delivery_send_seconds",
            ] {
                let (p50, p99, mean) = quantiles(&text, name);
                println!(
                    "{name}: mean {mean:.2} ms, p50 ≤ {p50} ms, p99 ≤ {p99} ms (bucket bounds)"
                );
            }
        }
        Err(e) => println!("metrics not read: {e}"),
    }
    let _ = child.kill();
    let _ = child.wait();
    if doubles > 0 {
        bail!("{doubles} messages were sent twice without a crash");
    }
    Ok(())
}
