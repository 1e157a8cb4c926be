//! Settings of `chatpipe-ingest`: its command line ([`IngestArgs`], clap
//! derive; every flag has an env var and a documented default) and what a
//! deployment sets of it ([`IngestSettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::channels::{ChannelArgs, Channels};
use crate::common::{
    parse_duration, KafkaArgs, KafkaSettings, LogArgs, PostgresArgs, Redacted, ServiceSettings,
    LISTEN_ENV, MIGRATE_ENV,
};
use crate::env::EnvWriter;

/// Default largest accepted `data.content`, in bytes of UTF-8.
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 16 * 1024;
/// Default largest accepted request body, in bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The variable that holds the webhook signing secrets
/// ([`IngestArgs::webhook_secrets`]): set from a Secret by the operator and
/// by local mode, never written to a ConfigMap.
pub fn webhook_secrets_env() -> String {
    crate::env::env_name(
        &<IngestArgs as clap::CommandFactory>::command(),
        "webhook_secrets",
    )
}

/// All settings of the ingest service.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-ingest",
    version,
    about = "chatpipe webhook ingest: validates events, checks conversation lifecycles in Postgres, writes events to Kafka"
)]
pub struct IngestArgs {
    /// Address the HTTP server listens on (webhook and /healthz, /readyz, /metrics).
    #[arg(long, env = LISTEN_ENV, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Postgres connection (URL and lifecycle pool size).
    #[command(flatten)]
    pub postgres: PostgresArgs,

    /// Kafka connection (brokers and topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Messenger channels whose webhooks ingest receives
    /// (`POST /channels/{name}/webhook`).
    #[command(flatten)]
    pub channels: ChannelArgs,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,

    /// Standard Webhooks secrets (`whsec_<base64>`; several, space
    /// separated, while a secret is rotated). When set, every webhook must
    /// carry a valid `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` or is answered `401`; unset, webhooks are not
    /// authenticated (the original challenge's contract) and ingest warns
    /// at start. Deployments hand it over from a Secret
    /// ([`webhook_secrets_env`]), never through a ConfigMap.
    #[arg(long, env = "CHATPIPE_WEBHOOK_SECRETS", hide_env_values = true)]
    pub webhook_secrets: Option<Redacted>,

    /// Largest difference between a webhook's `webhook-timestamp` and this
    /// clock, either way; older or newer requests are answered `401`.
    #[arg(long, env = "CHATPIPE_WEBHOOK_TOLERANCE", default_value = "5m", value_parser = parse_duration)]
    pub webhook_tolerance: Duration,

    /// Largest accepted request body in bytes; larger bodies get `400`
    /// with `"field":"body"`.
    #[arg(long, env = "CHATPIPE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Largest accepted `data.content` in bytes of UTF-8.
    #[arg(long, env = "CHATPIPE_MAX_CONTENT_BYTES", default_value_t = DEFAULT_MAX_CONTENT_BYTES)]
    pub max_content_bytes: usize,

    /// How long a request waits for the broker's acknowledgement before it
    /// is answered `503` (nothing committed); the producer that missed it is
    /// then replaced (librdkafka's own `message.timeout.ms` is disabled, see
    /// `producer`).
    #[arg(long, env = "CHATPIPE_PRODUCE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub produce_timeout: Duration,

    /// librdkafka `linger.ms`: how long the producer waits to fill a batch.
    #[arg(long, env = "CHATPIPE_KAFKA_LINGER", default_value = "5ms", value_parser = parse_duration)]
    pub kafka_linger: Duration,

    /// Extra librdkafka producer properties, `key=value` comma separated
    /// (e.g. `batch.num.messages=2000`). Empty by default.
    #[arg(long, env = "CHATPIPE_KAFKA_PRODUCER_EXTRA", default_value = "")]
    pub kafka_producer_extra: String,

    /// Upper bound of one Postgres step (getting a connection, one query,
    /// commit); exceeded → `503`.
    #[arg(long, env = "CHATPIPE_DB_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// Value of the `Retry-After` header of `503` answers, in seconds.
    #[arg(long, env = "CHATPIPE_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u32,

    /// Tasks (each with its own Postgres connection) that run batched
    /// conversation-status lookups for NEW_MESSAGE.
    #[arg(long, env = "CHATPIPE_STATUS_LOOKUP_WORKERS", default_value_t = 2)]
    pub status_lookup_workers: usize,

    /// How long a status lookup worker keeps collecting queued requests
    /// after the first one before it queries (bigger batches, fewer
    /// queries; adds at most this much latency).
    #[arg(long, env = "CHATPIPE_STATUS_LOOKUP_LINGER", default_value = "1ms", value_parser = parse_duration)]
    pub status_lookup_linger: Duration,

    /// Largest number of requests answered by one status lookup query.
    #[arg(long, env = "CHATPIPE_STATUS_LOOKUP_BATCH", default_value_t = 1024)]
    pub status_lookup_batch: usize,

    /// How many CLOSED conversation ids are remembered (CLOSED is final, so
    /// a remembered id is answered `400` without asking Postgres).
    #[arg(long, env = "CHATPIPE_CLOSED_CACHE_SIZE", default_value_t = 200_000)]
    pub closed_cache_size: usize,

    /// Timeout of each `/readyz` probe (broker metadata and Postgres `SELECT 1`).
    #[arg(long, env = "CHATPIPE_READY_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// On shutdown: how long to wait for in-flight requests and the
    /// producer flush.
    #[arg(long, env = "CHATPIPE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Tokio worker threads (0: one per CPU).
    #[arg(long, env = "CHATPIPE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Create the database when missing and apply migrations at start
    /// (handy for local runs; deployments run `chatpipe-admin migrate`).
    #[arg(long, env = MIGRATE_ENV, default_value_t = false)]
    pub migrate: bool,

    /// How long a client may take to send a request's headers (hyper's
    /// HTTP/1 header read timeout, also the limit for an idle keep-alive
    /// connection); exceeded → the connection is closed.
    #[arg(long, env = "CHATPIPE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// How long a webhook request's body may take to arrive, counted from
    /// the end of its headers; exceeded → `408` with a JSON error and
    /// nothing written.
    #[arg(long, env = "CHATPIPE_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,

    /// Largest number of webhook requests served at once (from the end of
    /// their headers to the end of their produce/commit). Beyond it a
    /// request is answered `503` with `Retry-After` at once (load shedding,
    /// not queueing). `/healthz`, `/readyz` and `/metrics` are not counted.
    #[arg(long, env = "CHATPIPE_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Per-client rate limit of webhook requests: the sustained requests per
    /// second one client may make (`0`, the default, turns it off). A
    /// client over it is answered `429` with `Retry-After` before its body
    /// is read; nothing is written.
    #[arg(long, env = "CHATPIPE_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Requests one client may make at once above the sustained rate
    /// (default: `--rate-limit`, one second's worth).
    #[arg(long, env = "CHATPIPE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Who a client is for the rate limit: `peer` (the TCP peer's address)
    /// or `forwarded-for` (the last address of `X-Forwarded-For`, the one
    /// the trusted proxy in front of ingest added; the peer when absent).
    /// Use `forwarded-for` only behind a proxy that sets the header.
    #[arg(long, env = "CHATPIPE_RATE_LIMIT_CLIENT", default_value = "peer")]
    pub rate_limit_client: RateLimitClient,

    /// Postgres `idle_in_transaction_session_timeout` of ingest's sessions:
    /// a lifecycle transaction holds its row lock while it waits for the
    /// broker, so a replica frozen between the acknowledgement and the
    /// commit must not hold it forever. Must exceed the produce timeout
    /// (`0s` disables it).
    #[arg(long, env = "CHATPIPE_IDLE_IN_TRANSACTION_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_in_transaction_timeout: Duration,

    /// How often the in-flight floor (the timestamp of this replica's oldest
    /// record still waiting for the broker) is computed and, when changed,
    /// written to `ingest_inflight`.
    #[arg(long, env = "CHATPIPE_INFLIGHT_PUBLISH_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub inflight_publish_interval: Duration,

    /// This replica's name in `ingest_inflight` (unique per replica).
    /// Default: `$HOSTNAME` (the pod name), else `ingest-<pid>`.
    #[arg(long, env = crate::common::REPLICA_NAME_ENV)]
    pub replica_name: Option<String>,
}

impl IngestArgs {
    /// Parses `kafka_producer_extra` into `(key, value)` pairs.
    pub fn producer_extra(&self) -> Result<Vec<(String, String)>, String> {
        parse_properties(&self.kafka_producer_extra)
    }

    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-read-timeout", self.body_read_timeout),
            (
                "--inflight-publish-interval",
                self.inflight_publish_interval,
            ),
            ("--produce-timeout", self.produce_timeout),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{flag} must be larger than 0"));
        }
        if self.rate_limit_burst == Some(0) {
            return Err("--rate-limit-burst must be at least 1".into());
        }
        if self.max_concurrent_requests == 0 || u32::try_from(self.max_concurrent_requests).is_err()
        {
            return Err(format!(
                "--max-concurrent-requests must be between 1 and {}",
                u32::MAX
            ));
        }
        let idle = self.idle_in_transaction_timeout;
        if !idle.is_zero() && idle <= self.produce_timeout {
            return Err(format!(
                "--idle-in-transaction-timeout ({idle:?}) must exceed --produce-timeout ({:?}): \
                 a lifecycle transaction is idle while it waits for the broker",
                self.produce_timeout
            ));
        }
        if self
            .replica_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("--replica-name must not be blank".into());
        }
        Ok(())
    }

    /// The `options` of ingest's Postgres sessions (`-c name=value` pairs).
    pub fn session_options(&self) -> String {
        session_options(self.idle_in_transaction_timeout)
    }

    /// This replica's name: `--replica-name`, else `$HOSTNAME`, else
    /// `ingest-<pid>`.
    pub fn replica(&self) -> String {
        replica_name(
            self.replica_name.as_deref(),
            std::env::var("HOSTNAME").ok().as_deref(),
            std::process::id(),
        )
    }
}

/// What a deployment sets for `chatpipe-ingest`; `None` leaves the binary's
/// default. Written with [`IngestSettings::to_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSettings {
    /// Listener, database and logs.
    pub service: ServiceSettings,
    /// Brokers and topic.
    pub kafka: KafkaSettings,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--max-content-bytes`.
    pub max_content_bytes: Option<usize>,
    /// `--produce-timeout`.
    pub produce_timeout: Option<Duration>,
    /// `--rate-limit`.
    pub rate_limit: Option<u32>,
    /// `--rate-limit-burst`.
    pub rate_limit_burst: Option<u32>,
    /// `--rate-limit-client`.
    pub rate_limit_client: Option<RateLimitClient>,
    /// `--channels`.
    pub channels: Option<Channels>,
}

/// Who a client is for ingest's rate limit (`--rate-limit-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateLimitClient {
    /// The TCP peer's address.
    Peer,
    /// The last address of `X-Forwarded-For` (set by the proxy in front).
    ForwardedFor,
}

crate::env::value_enum_env_value!(RateLimitClient);

impl IngestSettings {
    /// The environment that gives `chatpipe-ingest` these settings.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<IngestArgs>();
        self.service.write(&mut w);
        self.kafka.write(&mut w);
        w.set("max_body_bytes", self.max_body_bytes.as_ref())
            .set("max_content_bytes", self.max_content_bytes.as_ref())
            .set("produce_timeout", self.produce_timeout.as_ref())
            .set("rate_limit", self.rate_limit.as_ref())
            .set("rate_limit_burst", self.rate_limit_burst.as_ref())
            .set("rate_limit_client", self.rate_limit_client.as_ref())
            .set("channels", self.channels.as_ref());
        w.finish()
    }

    /// The settings a parsed command line holds (every one set).
    pub fn from_args(a: &IngestArgs) -> Self {
        Self {
            service: ServiceSettings::from_args(a.listen, &a.postgres, &a.log),
            kafka: KafkaSettings::from_args(&a.kafka),
            max_body_bytes: Some(a.max_body_bytes),
            max_content_bytes: Some(a.max_content_bytes),
            produce_timeout: Some(a.produce_timeout),
            rate_limit: Some(a.rate_limit),
            rate_limit_burst: a.rate_limit_burst,
            rate_limit_client: Some(a.rate_limit_client),
            channels: Some(a.channels.channels.clone()),
        }
    }
}

/// Session options setting `idle_in_transaction_session_timeout` (in ms;
/// `0` disables it, as in Postgres).
pub fn session_options(idle_in_transaction: Duration) -> String {
    format!(
        "-c idle_in_transaction_session_timeout={}",
        idle_in_transaction.as_millis()
    )
}

/// The first non-blank of `explicit` and `hostname`, else `ingest-<pid>`.
pub fn replica_name(explicit: Option<&str>, hostname: Option<&str>, pid: u32) -> String {
    [explicit, hostname]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|n| !n.is_empty())
        .map_or_else(|| format!("ingest-{pid}"), str::to_owned)
}

/// Parses `key=value` pairs separated by commas; blanks are skipped.
pub fn parse_properties(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!(
                "invalid producer property {p:?}; expected key=value"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_documentation() {
        let a = IngestArgs::try_parse_from(["chatpipe-ingest"]).unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(a.max_body_bytes, 64 * 1024);
        assert_eq!(a.produce_timeout, Duration::from_secs(5));
        assert!(!a.migrate);
        assert_eq!(a.max_content_bytes, DEFAULT_MAX_CONTENT_BYTES);
        assert_eq!(a.header_read_timeout, Duration::from_secs(10));
        assert_eq!(a.body_read_timeout, Duration::from_secs(10));
        assert_eq!(a.max_concurrent_requests, 4096);
        assert_eq!(a.idle_in_transaction_timeout, Duration::from_secs(30));
        assert_eq!(a.inflight_publish_interval, Duration::from_millis(100));
        assert_eq!(a.replica_name, None);
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(
            a.session_options(),
            "-c idle_in_transaction_session_timeout=30000"
        );
    }

    #[test]
    fn dependent_settings_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["chatpipe-ingest"];
            argv.extend_from_slice(extra);
            IngestArgs::try_parse_from(argv).unwrap().validate()
        };
        assert!(parse(&["--idle-in-transaction-timeout", "5s"]).is_err());
        assert!(parse(&["--idle-in-transaction-timeout", "4s"]).is_err());
        assert!(parse(&["--idle-in-transaction-timeout", "6s"]).is_ok());
        assert!(parse(&["--idle-in-transaction-timeout", "0s"]).is_ok());
        assert!(parse(&["--max-concurrent-requests", "0"]).is_err());
        assert!(parse(&["--body-read-timeout", "0s"]).is_err());
        assert!(parse(&["--header-read-timeout", "0s"]).is_err());
        assert!(parse(&["--inflight-publish-interval", "0s"]).is_err());
        assert!(parse(&["--replica-name", " "]).is_err());
    }

    #[test]
    fn replica_name_falls_back_to_hostname_then_pid() {
        assert_eq!(replica_name(Some("a"), Some("h"), 7), "a");
        assert_eq!(replica_name(None, Some("h"), 7), "h");
        assert_eq!(replica_name(Some(" "), Some(""), 7), "ingest-7");
        assert_eq!(replica_name(None, None, 7), "ingest-7");
    }

    #[test]
    fn session_options_are_in_milliseconds() {
        assert_eq!(
            session_options(Duration::from_millis(1500)),
            "-c idle_in_transaction_session_timeout=1500"
        );
        assert_eq!(
            session_options(Duration::ZERO),
            "-c idle_in_transaction_session_timeout=0"
        );
    }

    #[test]
    fn flags_override_defaults() {
        let a = IngestArgs::try_parse_from([
            "chatpipe-ingest",
            "--listen",
            "0.0.0.0:9000",
            "--produce-timeout",
            "1500ms",
            "--max-body-bytes",
            "100",
            "--migrate",
            "--max-concurrent-requests",
            "8",
            "--body-read-timeout",
            "250ms",
            "--replica-name",
            "ingest-a",
        ])
        .unwrap();
        assert_eq!(a.max_concurrent_requests, 8);
        assert_eq!(a.body_read_timeout, Duration::from_millis(250));
        assert_eq!(a.replica(), "ingest-a");
        assert_eq!(a.listen.port(), 9000);
        assert_eq!(a.produce_timeout, Duration::from_millis(1500));
        assert_eq!(a.max_body_bytes, 100);
        assert!(a.migrate);
    }

    #[test]
    fn producer_properties_parse() {
        assert_eq!(parse_properties("").unwrap(), vec![]);
        assert_eq!(
            parse_properties(" a=1 , b.c = x ").unwrap(),
            vec![("a".into(), "1".into()), ("b.c".into(), "x".into())]
        );
        assert!(parse_properties("novalue").is_err());
        assert!(parse_properties("=1").is_err());
    }
}
