//! The webhook load generator behind `chatpipe-loadgen` and
//! `pipeline-bench`.
//!
//! It first creates `--conversations` conversations (NEW_CONVERSATION, each
//! must get `201`), then posts NEW_MESSAGE events to them from
//! `--concurrency` workers, each with its own keep-alive HTTP/1.1 connection
//! and one request in flight, for `--duration` (after `--warmup`) or until
//! `--total` messages. It prints accepted requests/s, latency percentiles
//! (hdrhistogram, microsecond resolution) and errors by status.
//!
//! Steady load: `--rate R` spreads R messages/s over the workers (latency is
//! then measured from each message's scheduled send time, so a stalled
//! server is not hidden). Conversation-shaped load: `--burst B --burst-gap D`
//! sends B messages in a row to one conversation and waits at least D before
//! that conversation's next burst (useful for the processor's grouping
//! window). `--close` closes every conversation at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chatpipe_core::config::parse_duration;
use chatpipe_core::event::format_timestamp;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use uuid::Uuid;

/// What load to send, and where.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the ingest service (http only).
    #[arg(
        long,
        env = "CHATPIPE_LOADGEN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Webhook path.
    #[arg(long, env = "CHATPIPE_LOADGEN_PATH", default_value = "/webhook/")]
    pub path: String,
    /// Conversations created before the run; messages go to them.
    #[arg(long, env = "CHATPIPE_LOADGEN_CONVERSATIONS", default_value_t = 1000)]
    pub conversations: usize,
    /// Concurrent connections (each with one request in flight).
    #[arg(long, env = "CHATPIPE_LOADGEN_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Measured run time (after the warm-up).
    #[arg(long, env = "CHATPIPE_LOADGEN_DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up time before measuring (requests sent but not counted).
    #[arg(long, env = "CHATPIPE_LOADGEN_WARMUP", default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Stop after this many messages (0: run for the duration).
    #[arg(long, env = "CHATPIPE_LOADGEN_TOTAL", default_value_t = 0)]
    pub total: u64,
    /// Target messages per second over all workers (0: as fast as possible).
    #[arg(long, env = "CHATPIPE_LOADGEN_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Messages sent in a row to one conversation.
    #[arg(long, env = "CHATPIPE_LOADGEN_BURST", default_value_t = 1)]
    pub burst: u32,
    /// Least time between two bursts of one conversation (0s: none).
    #[arg(long, env = "CHATPIPE_LOADGEN_BURST_GAP", default_value = "0s", value_parser = parse_duration)]
    pub burst_gap: Duration,
    /// Bytes of message content.
    #[arg(long, env = "CHATPIPE_LOADGEN_CONTENT_BYTES", default_value_t = 64)]
    pub content_bytes: usize,
    /// Close every conversation after the run.
    #[arg(long, env = "CHATPIPE_LOADGEN_CLOSE", default_value_t = false)]
    pub close: bool,
}

/// Host, port and `Host` header value of an `http://` base URL.
pub fn parse_base_url(url: &str) -> anyhow::Result<(String, u16)> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("invalid --url {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://host[:port]");
    }
    let host = uri.host().context("--url has no host")?.to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

/// The NEW_MESSAGE body for message `id` in `conversation` with `content`.
fn message_body(id: Uuid, conversation: Uuid, content: &str, ts: &str) -> String {
    format!(
        r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{id}","content":"{content}","conversation_id":"{conversation}"}}}}"#
    )
}

/// A NEW_CONVERSATION or CLOSE_CONVERSATION body.
fn lifecycle_body(kind: &str, id: Uuid, ts: &str) -> String {
    format!(r#"{{"type":"{kind}","timestamp":"{ts}","data":{{"id":"{id}"}}}}"#)
}

/// Which conversations (indices into the created list) worker `w` of
/// `workers` sends to: every `workers`-th one starting at `w`, or a single
/// shared one when there are fewer conversations than workers.
fn assigned(w: usize, workers: usize, conversations: usize) -> Vec<usize> {
    if conversations == 0 {
        return Vec::new();
    }
    if conversations < workers {
        return vec![w % conversations];
    }
    (w..conversations).step_by(workers.max(1)).collect()
}

/// The order in which one worker visits its conversations: `burst`
/// messages to one, then the next, cycling; each new burst of a
/// conversation waits until `gap` after that conversation's previous burst
/// ended.
#[derive(Debug)]
struct BurstPlan {
    convs: Vec<usize>,
    burst: u32,
    gap: Duration,
    cursor: usize,
    sent_in_burst: u32,
    last_burst_end: Vec<Option<Instant>>,
}

impl BurstPlan {
    fn new(convs: Vec<usize>, burst: u32, gap: Duration) -> Self {
        let n = convs.len();
        BurstPlan {
            convs,
            burst: burst.max(1),
            gap,
            cursor: 0,
            sent_in_burst: 0,
            last_burst_end: vec![None; n],
        }
    }

    /// The next conversation and the earliest time to send to it.
    fn next(&mut self, now: Instant) -> (usize, Option<Instant>) {
        let slot = self.cursor;
        let not_before = if self.sent_in_burst == 0 {
            self.last_burst_end[slot].map(|t| t + self.gap)
        } else {
            None
        };
        self.sent_in_burst += 1;
        if self.sent_in_burst >= self.burst {
            self.sent_in_burst = 0;
            self.last_burst_end[slot] = Some(not_before.map_or(now, |t| t.max(now)));
            self.cursor = (self.cursor + 1) % self.convs.len();
        }
        (self.convs[slot], not_before.filter(|t| *t > now))
    }
}

/// What the workers measured.
pub struct WorkerStats {
    /// Latency of accepted requests (µs), from the scheduled send time
    /// under a rate limit.
    pub latency_us: Histogram<u64>,
    /// Requests answered `202`.
    pub accepted: u64,
    /// Other answers (status code) and transport errors, counted.
    pub outcomes: BTreeMap<String, u64>,
}

impl WorkerStats {
    fn new() -> anyhow::Result<Self> {
        Ok(WorkerStats {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            accepted: 0,
            outcomes: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: WorkerStats) -> anyhow::Result<()> {
        self.latency_us.add(other.latency_us)?;
        self.accepted += other.accepted;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection that reconnects when it breaks.
struct Conn {
    host: String,
    port: u16,
    authority: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(host: &str, port: u16) -> Self {
        Conn {
            host: host.to_owned(),
            port,
            authority: format!("{host}:{port}"),
            sender: None,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("no connection")
    }

    /// POSTs `body` to `path`; returns the status code.
    async fn post(&mut self, path: &str, body: String) -> anyhow::Result<u16> {
        let authority = self.authority.clone();
        let sender = self.connect().await?;
        sender.ready().await?;
        let req = http::Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))?;
        let result = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// Shared run limits.
struct Limits {
    start: Instant,
    measure_from: Instant,
    deadline: Instant,
    total: u64,
    rate: f64,
    slots: AtomicU64,
}

async fn worker(
    args: Arc<LoadArgs>,
    limits: Arc<Limits>,
    conversations: Arc<Vec<Uuid>>,
    mine: Vec<usize>,
    host: String,
    port: u16,
) -> anyhow::Result<WorkerStats> {
    let mut stats = WorkerStats::new()?;
    let mut conn = Conn::new(&host, port);
    let mut plan = BurstPlan::new(mine, args.burst, args.burst_gap);
    let content: String = "x".repeat(args.content_bytes);
    loop {
        let slot = limits.slots.fetch_add(1, Ordering::Relaxed);
        if limits.total > 0 && slot >= limits.total {
            break;
        }
        let mut now = Instant::now();
        if now >= limits.deadline {
            break;
        }
        // Scheduled send time under --rate (coordinated-omission safe).
        let mut scheduled = None;
        if limits.rate > 0.0 {
            let at = limits.start + Duration::from_secs_f64(slot as f64 / limits.rate);
            if at >= limits.deadline {
                break;
            }
            if at > now {
                tokio::time::sleep_until(at.into()).await;
            }
            scheduled = Some(at);
        }
        let (conv, not_before) = plan.next(Instant::now());
        if let Some(t) = not_before {
            if t >= limits.deadline {
                break;
            }
            tokio::time::sleep_until(t.into()).await;
            scheduled = None; // the gap is deliberate, not server latency
        }
        now = Instant::now();
        let sent_at = scheduled.unwrap_or(now);
        let ts = format_timestamp(chrono::Utc::now());
        let body = message_body(Uuid::new_v4(), conversations[conv], &content, &ts);
        let result = conn.post(&args.path, body).await;
        let done = Instant::now();
        if sent_at < limits.measure_from {
            continue;
        }
        let key = match result {
            Ok(202) => {
                stats.accepted += 1;
                let us = done.duration_since(sent_at).as_micros() as u64;
                stats.latency_us.saturating_record(us.max(1));
                continue;
            }
            Ok(code) => code.to_string(),
            Err(e) => {
                let key = format!("transport: {}", first_line(&e.to_string()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                key
            }
        };
        *stats.outcomes.entry(key).or_default() += 1;
    }
    Ok(stats)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Sends one lifecycle event per id with bounded concurrency; fails unless
/// every answer is `expect`.
pub async fn lifecycle_all(
    kind: &str,
    ids: &[Uuid],
    expect: u16,
    host: &str,
    port: u16,
    path: &str,
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(ids.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.clamp(1, 32) {
        let (next, ids) = (Arc::clone(&next), Arc::clone(&ids));
        let (kind, host, path) = (kind.to_owned(), host.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(&host, port);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(i) else {
                    return anyhow::Ok(());
                };
                let ts = format_timestamp(chrono::Utc::now());
                let code = conn.post(&path, lifecycle_body(&kind, *id, &ts)).await?;
                if code != expect {
                    bail!("{kind} {id}: expected {expect}, got {code}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("lifecycle task panicked")??;
    }
    Ok(())
}

/// Microseconds as milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// What a run measured.
pub struct LoadReport {
    /// Base URL loaded.
    pub url: String,
    /// Measured seconds (warm-up excluded).
    pub seconds: f64,
    /// The conversations created (and closed with `close`).
    pub conversations: Vec<Uuid>,
    /// Everything the workers counted.
    pub stats: WorkerStats,
}

impl LoadReport {
    /// Accepted requests per second.
    pub fn accepted_per_s(&self) -> f64 {
        self.stats.accepted as f64 / self.seconds
    }

    /// The human-readable summary (what `chatpipe-loadgen` prints).
    pub fn summary(&self, args: &LoadArgs) -> String {
        let h = &self.stats.latency_us;
        let errors: u64 = self.stats.outcomes.values().sum();
        let mut out = format!(
            "chatpipe-loadgen: {} for {:.1} s (warm-up {:.1} s excluded), concurrency {}, conversations {}, burst {}, rate limit {}\n",
            self.url,
            self.seconds,
            args.warmup.as_secs_f64(),
            args.concurrency,
            self.conversations.len(),
            args.burst,
            if args.rate > 0.0 { format!("{}/s", args.rate) } else { "none".into() },
        );
        out += &format!(
            "accepted (202): {} = {:.0} req/s\n",
            self.stats.accepted,
            self.accepted_per_s()
        );
        out += &format!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max())
        );
        if self.stats.outcomes.is_empty() {
            out += "errors: none";
        } else {
            let list: Vec<String> = self
                .stats
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            out += &format!("errors ({errors}): {}", list.join(", "));
        }
        out
    }

    /// The summary as one JSON value.
    pub fn json(&self, args: &LoadArgs) -> serde_json::Value {
        let h = &self.stats.latency_us;
        serde_json::json!({
            "url": self.url,
            "seconds": self.seconds,
            "concurrency": args.concurrency,
            "conversations": self.conversations.len(),
            "accepted": self.stats.accepted,
            "accepted_per_s": self.accepted_per_s(),
            "p50_ms": ms(h.value_at_quantile(0.5)),
            "p90_ms": ms(h.value_at_quantile(0.9)),
            "p99_ms": ms(h.value_at_quantile(0.99)),
            "p999_ms": ms(h.value_at_quantile(0.999)),
            "max_ms": ms(h.max()),
            "errors": self.stats.outcomes,
        })
    }
}

/// Creates the conversations, sends the load, closes the conversations
/// when `args.close`, and returns what was measured.
pub async fn run(args: LoadArgs) -> anyhow::Result<LoadReport> {
    let (host, port) = parse_base_url(&args.url)?;
    if args.conversations == 0 || args.concurrency == 0 {
        bail!("--conversations and --concurrency must be at least 1");
    }
    let conversations: Vec<Uuid> = (0..args.conversations).map(|_| Uuid::new_v4()).collect();
    let setup = Instant::now();
    lifecycle_all(
        "NEW_CONVERSATION",
        &conversations,
        201,
        &host,
        port,
        &args.path,
        args.concurrency,
    )
    .await
    .context("creating conversations")?;
    eprintln!(
        "created {} conversations in {:.1} s",
        conversations.len(),
        setup.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let limits = Arc::new(Limits {
        start,
        measure_from: start + args.warmup,
        deadline: start + args.warmup + args.duration,
        total: args.total,
        rate: args.rate,
        slots: AtomicU64::new(0),
    });
    let args = Arc::new(args);
    let shared = Arc::new(conversations);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let mine = assigned(w, args.concurrency, shared.len());
        tasks.push(tokio::spawn(worker(
            Arc::clone(&args),
            Arc::clone(&limits),
            Arc::clone(&shared),
            mine,
            host.clone(),
            port,
        )));
    }
    let mut total = WorkerStats::new()?;
    for t in tasks {
        total.merge(t.await.context("worker panicked")??)?;
    }
    let end = Instant::now();
    let seconds = end
        .min(limits.deadline)
        .saturating_duration_since(limits.measure_from)
        .max(Duration::from_millis(1))
        .as_secs_f64();
    let conversations = Arc::try_unwrap(shared).unwrap_or_else(|a| a.as_ref().clone());
    if args.close {
        lifecycle_all(
            "CLOSE_CONVERSATION",
            &conversations,
            200,
            &host,
            port,
            &args.path,
            args.concurrency,
        )
        .await
        .context("closing conversations")?;
        eprintln!("closed {} conversations", conversations.len());
    }
    Ok(LoadReport {
        url: args.url.clone(),
        seconds,
        conversations,
        stats: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_events() {
        let limits = chatpipe_core::event::Limits::default();
        let ts = "2025-06-04T14:20:05Z";
        let body = message_body(Uuid::new_v4(), Uuid::new_v4(), "hello", ts);
        assert!(chatpipe_core::parse_event(body.as_bytes(), &limits).is_ok());
        for kind in ["NEW_CONVERSATION", "CLOSE_CONVERSATION"] {
            let body = lifecycle_body(kind, Uuid::new_v4(), ts);
            assert!(chatpipe_core::parse_event(body.as_bytes(), &limits).is_ok());
        }
    }

    #[test]
    fn conversations_are_split_across_workers() {
        assert_eq!(assigned(1, 4, 10), vec![1, 5, 9]);
        assert_eq!(assigned(3, 4, 10), vec![3, 7]);
        assert_eq!(assigned(5, 8, 3), vec![2]);
        let mut all: Vec<usize> = (0..4).flat_map(|w| assigned(w, 4, 10)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn bursts_wait_for_the_gap() {
        let t0 = Instant::now();
        let gap = Duration::from_secs(6);
        let mut plan = BurstPlan::new(vec![10, 20], 2, gap);
        assert_eq!(plan.next(t0), (10, None));
        assert_eq!(plan.next(t0), (10, None));
        assert_eq!(plan.next(t0), (20, None));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(plan.next(t1), (20, None));
        // conversation 10's burst ended at t0: its next one waits until t0 + gap
        assert_eq!(plan.next(t1), (10, Some(t0 + gap)));
        assert_eq!(plan.next(t0 + gap), (10, None));
        assert_eq!(plan.next(t0 + gap), (20, Some(t1 + gap)));
    }

    #[test]
    fn base_urls_parse() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(parse_base_url("http://h").unwrap(), ("h".into(), 80));
        assert!(parse_base_url("https://h").is_err());
    }
}
