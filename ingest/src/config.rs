//! Command-line and environment settings of `chatpipe-ingest` (clap derive;
//! every flag has an env var and a documented default).

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_core::config::{parse_duration, KafkaArgs, LogArgs, PostgresArgs};
use chatpipe_core::event::{Limits, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONTENT_BYTES};

/// All settings of the ingest service.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-ingest",
    version,
    about = "chatpipe webhook ingest: validates events, checks conversation lifecycles in Postgres, writes events to Kafka"
)]
pub struct IngestArgs {
    /// Address the HTTP server listens on (webhook and /healthz, /readyz, /metrics).
    #[arg(long, env = "CHATPIPE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Postgres connection (URL and lifecycle pool size).
    #[command(flatten)]
    pub postgres: PostgresArgs,

    /// Kafka connection (brokers and topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,

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
    #[arg(long, env = "CHATPIPE_MIGRATE", default_value_t = false)]
    pub migrate: bool,
}

impl IngestArgs {
    /// The validation limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_content_bytes: self.max_content_bytes,
        }
    }

    /// Parses `kafka_producer_extra` into `(key, value)` pairs.
    pub fn producer_extra(&self) -> Result<Vec<(String, String)>, String> {
        parse_properties(&self.kafka_producer_extra)
    }
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
        assert_eq!(a.limits().max_content_bytes, DEFAULT_MAX_CONTENT_BYTES);
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
        ])
        .unwrap();
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
