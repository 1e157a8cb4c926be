//! Flags and environment of `chatpipe-processor` (clap derive, every flag
//! with an env var and a documented default).

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_core::config::{parse_duration, KafkaArgs, LogArgs, PostgresArgs};

use crate::window::EngineConfig;

/// Command line of `chatpipe-processor`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-processor",
    version,
    about = "chatpipe processor: session windows over the event log, written to Postgres exactly once"
)]
pub struct Cli {
    /// Postgres settings.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Kafka settings.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Log settings.
    #[command(flatten)]
    pub log: LogArgs,
    /// Processor settings.
    #[command(flatten)]
    pub processor: ProcessorArgs,
}

/// Processor-specific settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessorArgs {
    /// Address of the ops server (/healthz, /readyz, /metrics).
    #[arg(long, env = "CHATPIPE_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Grouping gap G: messages whose arrival gaps are ≤ G form one group.
    #[arg(long, env = "CHATPIPE_GROUPING_GAP", default_value = "5s", value_parser = parse_duration)]
    pub grouping_gap: Duration,
    /// Late-arrival tolerance L: a message waits this long for its
    /// NEW_CONVERSATION.
    #[arg(long, env = "CHATPIPE_LATE_TOLERANCE", default_value = "6s", value_parser = parse_duration)]
    pub late_tolerance: Duration,
    /// Allowance subtracted from the wall clock when a caught-up partition's
    /// watermark advances (records in flight, ingest clock skew).
    #[arg(long, env = "CHATPIPE_WATERMARK_ALLOWANCE", default_value = "50ms", value_parser = parse_duration)]
    pub watermark_allowance: Duration,
    /// Number of processor replicas N; partition p belongs to ordinal p mod N.
    #[arg(long, env = "CHATPIPE_PROCESSOR_REPLICAS", default_value_t = 1)]
    pub replicas: u32,
    /// This replica's ordinal; when unset, parsed from the trailing `-<n>`
    /// of HOSTNAME (StatefulSet pod name), else 0.
    #[arg(long, env = "CHATPIPE_PROCESSOR_ORDINAL")]
    pub ordinal: Option<u32>,
    /// Most records read per poll batch (one Postgres transaction each).
    #[arg(long, env = "CHATPIPE_POLL_BATCH_SIZE", default_value_t = 5000)]
    pub poll_batch_size: usize,
    /// Kafka `fetch.wait.max.ms`: Tansu answers a waiting fetch only then.
    #[arg(long, env = "CHATPIPE_FETCH_WAIT", default_value = "10ms", value_parser = parse_duration)]
    pub fetch_wait: Duration,
    /// How long an idle poll waits before the wall-clock watermark is
    /// re-evaluated.
    #[arg(long, env = "CHATPIPE_IDLE_TICK", default_value = "5ms", value_parser = parse_duration)]
    pub idle_tick: Duration,
    /// Run the schema migrations at start (default: the admin tool or the
    /// operator migrates).
    #[arg(long, env = "CHATPIPE_MIGRATE", default_value_t = false)]
    pub migrate: bool,
    /// Concurrent write transactions per poll batch: 1 writes the whole
    /// batch in one transaction; N > 1 splits it by partition over N
    /// connections (each transaction with its own fencing check).
    #[arg(long, env = "CHATPIPE_WRITE_PARALLELISM", default_value_t = 1)]
    pub write_parallelism: usize,
    /// While a partition works through a backlog (its end not reached and
    /// its newest record older than this), an accepted message's INBOUND
    /// row is written with its reply (one write instead of two), but no
    /// later than this after it was read; a live partition writes it at once.
    #[arg(long, env = "CHATPIPE_INBOUND_MAX_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub inbound_max_delay: Duration,
    /// Largest number of idle conversation states cached per partition.
    #[arg(long, env = "CHATPIPE_CONVERSATION_CACHE", default_value_t = 200_000)]
    pub conversation_cache: usize,
}

impl ProcessorArgs {
    /// The engine windows.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            gap_ms: self.grouping_gap.as_millis() as i64,
            tolerance_ms: self.late_tolerance.as_millis() as i64,
        }
    }

    /// This replica's ordinal: the flag, else HOSTNAME's trailing `-<n>`,
    /// else 0.
    pub fn resolved_ordinal(&self) -> u32 {
        self.ordinal
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .and_then(|h| crate::ownership::ordinal_from_hostname(&h))
            })
            .unwrap_or(0)
    }
}
