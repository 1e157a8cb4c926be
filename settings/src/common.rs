//! Argument groups every binary flattens (Postgres, Kafka, logs), the
//! duration syntax of every flag, and the settings a deployment gives every
//! service: where it listens, which database, how it logs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::env::{EnvValue, EnvWriter};

/// The variable of every service's HTTP listener (`--listen`): declared by
/// each service's own flag (their defaults differ), meaning the same.
pub const LISTEN_ENV: &str = "CHATPIPE_LISTEN";
/// The variable of the migrate-at-start switch (`--migrate`) of ingest and
/// the processor.
pub const MIGRATE_ENV: &str = "CHATPIPE_MIGRATE";
/// The variable of the Kafka admin timeout (`--kafka-admin-timeout` of the
/// operator's controller, `--timeout` of `chatpipe-admin ensure-topic`).
pub const KAFKA_ADMIN_TIMEOUT_ENV: &str = "CHATPIPE_KAFKA_ADMIN_TIMEOUT";

/// A secret setting's value: usable as a string, printed as `<redacted>`
/// by `Debug` (settings structs derive `Debug`; a secret must not reach a
/// log line through them).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl Redacted {
    /// The value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Postgres connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// Postgres connection URL.
    #[arg(
        long = "postgres-url",
        env = "CHATPIPE_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chatpipe"
    )]
    pub postgres_url: String,
    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "CHATPIPE_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub postgres_pool_size: usize,
}

/// Kafka connection settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "CHATPIPE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic that carries webhook events.
    #[arg(long, env = "CHATPIPE_KAFKA_TOPIC", default_value = "chatpipe.events")]
    pub kafka_topic: String,
}

/// Logging settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `tracing` EnvFilter syntax.
    #[arg(long, env = "CHATPIPE_LOG", default_value = "info")]
    pub log: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "CHATPIPE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a human duration such as `5s`, `250ms` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

pub use crate::env::format_duration;

impl EnvValue for LogFormat {
    /// The value name clap accepts (`text`, `json`).
    fn env_value(&self) -> String {
        clap::ValueEnum::to_possible_value(self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// The environment variable argument `id` of the group `A` reads (see
/// [`crate::env::env_name`]; panics on an unknown id).
pub fn env_of<A: clap::Args>(id: &str) -> String {
    crate::env::env_name(&A::augment_args(clap::Command::new("group")), id)
}

/// The environment variable of the Postgres URL, for a deployment that
/// hands it over from elsewhere (a Kubernetes Secret reference).
pub fn postgres_url_env() -> String {
    env_of::<PostgresArgs>("postgres_url")
}

/// The environment variable of the log filter.
pub fn log_env() -> String {
    env_of::<LogArgs>("log")
}

/// How a service logs ([`LogArgs`]); `None` keeps the binary's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// `CHATPIPE_LOG`: the filter.
    pub log: Option<String>,
    /// `CHATPIPE_LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
}

impl LogSettings {
    /// Structured logs at `info`, what a cluster's log collector wants.
    pub fn json_info() -> Self {
        Self {
            log: Some("info".to_owned()),
            log_format: Some(LogFormat::Json),
        }
    }

    /// Writes both settings (format first).
    pub fn write(&self, w: &mut EnvWriter) {
        w.set("log_format", self.log_format.as_ref())
            .set("log", self.log.as_ref());
    }

    /// The settings `args` holds.
    pub fn from_args(args: &LogArgs) -> Self {
        Self {
            log: Some(args.log.clone()),
            log_format: Some(args.log_format),
        }
    }
}

/// Where a service runs: what a deployment decides rather than the
/// pipeline's spec. `None` keeps the binary's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSettings {
    /// `CHATPIPE_LISTEN`: the HTTP listener (the processor's ops endpoints).
    pub listen: Option<SocketAddr>,
    /// `CHATPIPE_POSTGRES_URL`.
    pub postgres_url: Option<String>,
    /// Logging.
    pub log: LogSettings,
}

impl ServiceSettings {
    /// Writes the listen address, the database URL, then the log settings.
    pub fn write(&self, w: &mut EnvWriter) {
        w.set("listen", self.listen.as_ref())
            .set("postgres_url", self.postgres_url.as_ref());
        self.log.write(w);
    }

    /// The settings a parsed command line holds.
    pub fn from_args(listen: SocketAddr, postgres: &PostgresArgs, log: &LogArgs) -> Self {
        Self {
            listen: Some(listen),
            postgres_url: Some(postgres.postgres_url.clone()),
            log: LogSettings::from_args(log),
        }
    }
}

/// The Kafka connection of a service ([`KafkaArgs`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `CHATPIPE_KAFKA_BROKERS`: bootstrap servers, comma separated.
    pub brokers: Option<String>,
    /// `CHATPIPE_KAFKA_TOPIC`.
    pub topic: Option<String>,
}

impl KafkaSettings {
    /// Both set.
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: Some(brokers.to_owned()),
            topic: Some(topic.to_owned()),
        }
    }

    /// Writes the brokers, then the topic.
    pub fn write(&self, w: &mut EnvWriter) {
        w.set("kafka_brokers", self.brokers.as_ref())
            .set("kafka_topic", self.topic.as_ref());
    }

    /// The settings `args` holds.
    pub fn from_args(args: &KafkaArgs) -> Self {
        Self::new(&args.kafka_brokers, &args.kafka_topic)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_not_printed() {
        let args = <crate::ingest::IngestArgs as clap::Parser>::try_parse_from([
            "chatpipe-ingest",
            "--webhook-secrets",
            "whsec_c2VjcmV0LXZhbHVl",
        ])
        .expect("parses");
        let shown = format!("{args:?}");
        assert!(!shown.contains("whsec_c2VjcmV0LXZhbHVl"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert_eq!(
            args.webhook_secrets.as_ref().map(|s| s.expose()),
            Some("whsec_c2VjcmV0LXZhbHVl")
        );
    }

    use super::*;

    #[test]
    fn durations_round_trip() {
        for s in ["5s", "6s", "250ms", "50ms", "1m 30s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert!(parse_duration("five").is_err());
        assert_eq!(parse_duration("4999ms").unwrap().as_millis(), 4999);
    }

    #[test]
    fn the_variables_are_the_ones_declared() {
        assert_eq!(postgres_url_env(), "CHATPIPE_POSTGRES_URL");
        assert_eq!(log_env(), "CHATPIPE_LOG");
    }
}
