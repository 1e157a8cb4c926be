//! `pipeline-bench`: the end-to-end benchmark of the whole local pipeline.
//!
//! 1. Writes a ChatPipeline manifest (like `examples/local.yaml`, with its
//!    own broker port, database and state directory) and runs it through
//!    local mode (`chatpipe-local`): a fresh Tansu broker with its
//!    SQLite storage, a fresh database, N ingest, M processor and one api
//!    process — exactly what `scripts/run.sh` runs.
//! 2. Creates conversations and sends conversation-shaped load through
//!    ingest: bursts of `--burst` messages to one conversation, each
//!    conversation's next burst at least `--burst-gap` (more than the
//!    grouping gap) later, at `--rate` messages/s in all.
//! 3. Waits until every accepted message is stored and answered, then
//!    prints accepted/s, ingest latency p50/p99, reply δ = written − (last
//!    arrival + G) p50/p99 from the database, INBOUND visibility, and the
//!    CPU time per accepted event of every component (from `/proc`).
//! 4. Stops local mode (which stops everything it started) and drops the
//!    database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chatpipe_bench::cpu::Snapshot;
use chatpipe_bench::load::{self, ms, LoadArgs};
use chatpipe_core::config::parse_duration;
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pipeline-bench",
    version,
    about = "Runs the whole local pipeline and prints its end-to-end numbers"
)]
struct Args {
    /// Messages per second sent in all.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Measured run time of the load.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Messages in a row to one conversation (one group each).
    #[arg(long, default_value_t = 3)]
    burst: u32,
    /// Least time between two bursts of one conversation (more than G).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    burst_gap: Duration,
    /// Conversations [default: enough that no worker waits for a gap].
    #[arg(long)]
    conversations: Option<usize>,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Topic partitions.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Processor processes.
    #[arg(long, default_value_t = 2)]
    processors: u32,
    /// Ingest processes (the load goes to the first).
    #[arg(long, default_value_t = 1)]
    ingests: u32,
    /// Postgres server, optionally with query parameters such as
    /// `?sslmode=disable` (a database `chatpipe_bench_<pid>` is created and
    /// dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// Directory holding the chatpipe binaries [default: this executable's].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the database afterwards.
    #[arg(long, default_value_t = false)]
    keep_database: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `count` consecutive free ports starting somewhere (checked by binding).
fn free_port_run(count: u16) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = free_port()?;
        if base.checked_add(count).is_none() {
            continue;
        }
        let all_free =
            (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no run of {count} free ports found")
}

fn manifest(a: &Args, broker: u16, database_url: &str) -> String {
    format!(
        r#"apiVersion: chatpipe.dev/v1alpha1
kind: ChatPipeline
metadata:
  name: bench
spec:
  image: chatpipe:dev
  kafka:
    bootstrapServers: 127.0.0.1:{broker}
    topic: chatpipe.events
    partitions: {partitions}
  postgres:
    urlSecret:
      name: chatpipe-postgres
      key: url
  processing:
    groupingGap: 5s
    lateArrivalTolerance: 6s
  ingest:
    replicas: {ingests}
  processor:
    replicas: {processors}
  api:
    replicas: 1
---
apiVersion: v1
kind: Secret
metadata:
  name: chatpipe-postgres
type: Opaque
stringData:
  url: {database_url}
"#,
        partitions = a.partitions,
        ingests = a.ingests,
        processors = a.processors,
    )
}

/// Local mode, stopped (SIGTERM, then SIGKILL) when dropped.
struct LocalMode {
    child: Child,
}

impl LocalMode {
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = chatpipe_procs::signal(self.child.id(), chatpipe_procs::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalMode {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ready(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

async fn wait_ready(urls: &[String], timeout: Duration, log: &Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for u in urls {
            all &= ready(&client, u).await;
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the pipeline was not ready within {timeout:?} ({urls:?}); local mode's output is in {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn histogram(
    db: &tokio_postgres::Client,
    sql: &str,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut n, mut negative) = (0u64, 0u64);
    for row in db.query(sql, &[]).await.context("reading timings")? {
        let us: i64 = row.get(0);
        n += 1;
        if us < 0 {
            negative += 1;
        }
        h.saturating_record(us.max(1) as u64);
    }
    Ok((h, n, negative))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(run(args))
}

async fn run(a: Args) -> anyhow::Result<()> {
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .to_path_buf(),
    };
    let launcher = bin_dir.join("chatpipe-local");
    if !launcher.is_file() {
        bail!(
            "{} not found: build the release binaries first (cargo build --release --workspace --bins)",
            launcher.display()
        );
    }
    let work = tempfile::tempdir().context("creating a work directory")?;
    let broker = free_port()?;
    let ingest_port = free_port()?;
    let api_port = free_port()?;
    let processor_port = free_port_run(a.processors as u16)?;
    let database = format!("chatpipe_bench_{}", std::process::id());
    // Query parameters of the server URL (`?sslmode=disable`) go to every
    // database URL made from it.
    let (base, query) = match a.postgres.split_once('?') {
        Some((base, query)) => (base.trim_end_matches('/'), format!("?{query}")),
        None => (a.postgres.trim_end_matches('/'), String::new()),
    };
    let database_url = format!("{base}/{database}{query}");
    let manifest_path = work.path().join("pipeline.yaml");
    std::fs::write(&manifest_path, manifest(&a, broker, &database_url))?;
    let log_path = work.path().join("local-mode.log");
    let log = std::fs::File::create(&log_path)?;

    eprintln!(
        "pipeline-bench: starting local mode (broker 127.0.0.1:{broker}, database {database})"
    );
    let child = Command::new(&launcher)
        .arg("-f")
        .arg(&manifest_path)
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .args(["--ingest-port", &ingest_port.to_string()])
        .args(["--api-port", &api_port.to_string()])
        .args(["--processor-port", &processor_port.to_string()])
        .args(["--port-stride", "1"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", launcher.display()))?;
    let mut local = LocalMode { child };
    let mut urls = vec![
        format!("http://127.0.0.1:{ingest_port}/readyz"),
        format!("http://127.0.0.1:{api_port}/readyz"),
    ];
    urls.extend(
        (0..a.processors).map(|i| format!("http://127.0.0.1:{}/readyz", processor_port + i as u16)),
    );
    wait_ready(&urls, Duration::from_secs(180), &log_path).await?;

    let db = chatpipe_core::db::connect(&database_url)
        .await
        .context("connecting to the benchmark database")?;

    let per_conversation = a.burst_gap.as_secs_f64() + 1.0;
    let conversations = a.conversations.unwrap_or_else(|| {
        ((a.rate / f64::from(a.burst.max(1))) * per_conversation * 1.25).ceil() as usize
    });
    let load_args = LoadArgs {
        url: format!("http://127.0.0.1:{ingest_port}"),
        path: "/webhook/".into(),
        conversations: conversations.max(a.concurrency),
        concurrency: a.concurrency,
        duration: a.duration,
        warmup: Duration::ZERO,
        total: 0,
        rate: a.rate,
        burst: a.burst,
        burst_gap: a.burst_gap,
        content_bytes: 64,
        close: false,
    };
    let before = Snapshot::take();
    let cpu_started = Instant::now();
    let report = load::run(load_args.clone()).await?;
    eprintln!("{}", report.summary(&load_args));
    let accepted = report.stats.accepted;
    let created = report.conversations.len() as u64;

    // Settled: every accepted message stored and answered.
    let settle_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE direction = 'INBOUND'),
                        count(*) FILTER (WHERE direction = 'INBOUND' AND reply_id IS NULL)
                   FROM messages",
                &[],
            )
            .await?;
        let (inbound, unreplied): (i64, i64) = (row.get(0), row.get(1));
        if inbound as u64 >= accepted && unreplied == 0 {
            break;
        }
        if Instant::now() > settle_deadline {
            bail!("not settled after 120 s: {inbound} of {accepted} messages stored, {unreplied} unanswered");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = Snapshot::take().since(&before);
    let wall = cpu_started.elapsed();

    let (delta, replies, early) = histogram(
        &db,
        "SELECT (extract(epoch FROM (written_at - \"timestamp\")) * 1000000)::int8
           FROM messages WHERE direction = 'OUTBOUND'",
    )
    .await?;
    let (visible, inbound, _) = histogram(
        &db,
        "SELECT (extract(epoch FROM (written_at - arrival)) * 1000000)::int8
           FROM messages WHERE direction = 'INBOUND'",
    )
    .await?;
    let rejected: i64 = db
        .query_one("SELECT count(*) FROM rejected_events", &[])
        .await?
        .get(0);

    let h = &report.stats.latency_us;
    println!(
        "pipeline-bench: {} ingest, {} processors, {} partitions; {} conversations, bursts of {} every ≥ {:?}, target {} msg/s for {:.1} s",
        a.ingests,
        a.processors,
        a.partitions,
        created,
        a.burst,
        a.burst_gap,
        a.rate,
        report.seconds
    );
    println!(
        "accepted: {accepted} messages = {:.0}/s; errors: {}",
        report.accepted_per_s(),
        if report.stats.outcomes.is_empty() {
            "none".to_string()
        } else {
            format!("{:?}", report.stats.outcomes)
        }
    );
    println!(
        "ingest latency ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
    println!(
        "replies: {replies}; δ = written − (last arrival + G) ms: p50 {:.1}  p99 {:.1}  max {:.1}; early (δ < 0): {early}",
        ms(delta.value_at_quantile(0.5)),
        ms(delta.value_at_quantile(0.99)),
        ms(delta.max())
    );
    println!(
        "INBOUND rows: {inbound}; visible (written − arrival) ms: p50 {:.1}  p99 {:.1}; rejected events: {rejected}",
        ms(visible.value_at_quantile(0.5)),
        ms(visible.value_at_quantile(0.99)),
    );
    let events = accepted + created;
    println!(
        "CPU per accepted event ({events} events: messages and NEW_CONVERSATIONs; {:.1} s from the first request until every reply was written):",
        wall.as_secs_f64()
    );
    let mut total = Duration::ZERO;
    for (component, (time, procs)) in &cpu {
        total += *time;
        println!(
            "  {component:<16} {:>8.1} µs/event  ({:.2} s CPU, {procs} processes, {:.0}% of a core)",
            time.as_secs_f64() * 1e6 / events.max(1) as f64,
            time.as_secs_f64(),
            100.0 * time.as_secs_f64() / wall.as_secs_f64()
        );
    }
    println!(
        "  {:<16} {:>8.1} µs/event",
        "all",
        total.as_secs_f64() * 1e6 / events.max(1) as f64
    );

    drop(db);
    local.stop();
    if !a.keep_database {
        let admin_url = format!("{base}/postgres{query}");
        if let Ok(admin) = chatpipe_core::db::connect(&admin_url).await {
            let _ = admin
                .execute(
                    &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
                    &[],
                )
                .await;
        }
    }
    Ok(())
}
