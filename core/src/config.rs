//! Command-line/environment settings shared by every binary (clap derive,
//! each flag with an env var and a documented default).

use std::time::Duration;

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

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
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
}
