//! Settings of `chatpipe-processor`: its command line ([`Cli`], clap
//! derive; every flag has an env var and a documented default) and what a
//! deployment sets of it ([`ProcessorSettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{
    parse_duration, KafkaArgs, KafkaSettings, LogArgs, PostgresArgs, ServiceSettings, LISTEN_ENV,
    MIGRATE_ENV,
};
use crate::env::EnvWriter;

/// Default grouping gap G (also the `ChatPipeline` CRD's default).
pub const DEFAULT_GROUPING_GAP: &str = "5s";
/// Default late-arrival tolerance L (also the `ChatPipeline` CRD's default).
pub const DEFAULT_LATE_TOLERANCE: &str = "6s";
/// Default largest number of messages in one group.
pub const DEFAULT_MAX_GROUP_MESSAGES: usize = 100;

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
    #[arg(long, env = LISTEN_ENV, default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Grouping gap G: messages whose arrival gaps are ≤ G form one group.
    #[arg(long, env = "CHATPIPE_GROUPING_GAP", default_value = DEFAULT_GROUPING_GAP, value_parser = parse_duration)]
    pub grouping_gap: Duration,
    /// Late-arrival tolerance L: a message waits this long for its
    /// NEW_CONVERSATION.
    #[arg(long, env = "CHATPIPE_LATE_TOLERANCE", default_value = DEFAULT_LATE_TOLERANCE, value_parser = parse_duration)]
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
    #[arg(long, env = MIGRATE_ENV, default_value_t = false)]
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
    /// Longest span of one group (first to last arrival): a conversation
    /// that keeps talking within the gap is answered at least this often.
    #[arg(long, env = "CHATPIPE_MAX_GROUP_SPAN", default_value = "60s", value_parser = parse_duration)]
    pub max_group_span: Duration,
    /// Most messages in one group; the group is answered when it has them.
    #[arg(long, env = "CHATPIPE_MAX_GROUP_MESSAGES", default_value_t = DEFAULT_MAX_GROUP_MESSAGES)]
    pub max_group_messages: usize,
    /// Record timestamps further ahead of this processor's clock are
    /// clamped to clock + skew (and counted), so one bad clock cannot push
    /// a partition's watermark into the future.
    #[arg(long, env = "CHATPIPE_MAX_CLOCK_SKEW", default_value = "5s", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Postgres `lock_timeout` of the processor's sessions.
    #[arg(long, env = "CHATPIPE_LOCK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Postgres `statement_timeout` of the processor's sessions.
    #[arg(long, env = "CHATPIPE_STATEMENT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Times Postgres may refuse one record's effects before the record is
    /// set aside as a `storage_refused` rejection and its partition goes on.
    #[arg(long, env = "CHATPIPE_POISON_ATTEMPTS", default_value_t = 3)]
    pub poison_attempts: u32,
    /// Failed writes in a row after which a partition makes the replica
    /// not ready.
    #[arg(long, env = "CHATPIPE_STUCK_AFTER", default_value_t = 5)]
    pub stuck_after: u32,
    /// Check stored positions against the log's bounds (at claim and every
    /// lag refresh) and move on, loudly, when they are outside it.
    #[arg(long, env = "CHATPIPE_LOG_RESET_CHECK", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_reset_check: bool,
    /// How long an ingest replica's in-flight report (`ingest_inflight`)
    /// counts without a fresh heartbeat.
    #[arg(long, env = "CHATPIPE_INFLIGHT_LEASE", default_value = "3s", value_parser = parse_duration)]
    pub inflight_lease: Duration,
}

/// What a deployment sets for `chatpipe-processor`; `None` leaves the
/// binary's default. Written with [`ProcessorSettings::to_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorSettings {
    /// Ops listener, database and logs.
    pub service: ServiceSettings,
    /// Brokers and topic.
    pub kafka: KafkaSettings,
    /// `--grouping-gap`.
    pub grouping_gap: Option<Duration>,
    /// `--late-tolerance`.
    pub late_tolerance: Option<Duration>,
    /// `--watermark-allowance`.
    pub watermark_allowance: Option<Duration>,
    /// `--max-group-span`.
    pub max_group_span: Option<Duration>,
    /// `--max-group-messages`.
    pub max_group_messages: Option<usize>,
    /// `--max-clock-skew`.
    pub max_clock_skew: Option<Duration>,
    /// `--replicas`: the number of processors N.
    pub replicas: Option<u32>,
    /// `--ordinal`: this processor's index (else from `HOSTNAME`).
    pub ordinal: Option<u32>,
}

impl ProcessorSettings {
    /// The environment that gives `chatpipe-processor` these settings.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<Cli>();
        self.service.write(&mut w);
        self.kafka.write(&mut w);
        w.set("grouping_gap", self.grouping_gap.as_ref())
            .set("late_tolerance", self.late_tolerance.as_ref())
            .set("watermark_allowance", self.watermark_allowance.as_ref())
            .set("max_group_span", self.max_group_span.as_ref())
            .set("max_group_messages", self.max_group_messages.as_ref())
            .set("max_clock_skew", self.max_clock_skew.as_ref())
            .set("replicas", self.replicas.as_ref())
            .set("ordinal", self.ordinal.as_ref());
        w.finish()
    }

    /// The settings a parsed command line holds (every one set but an
    /// ordinal left to `HOSTNAME`).
    pub fn from_args(cli: &Cli) -> Self {
        let a = &cli.processor;
        Self {
            service: ServiceSettings::from_args(a.listen, &cli.postgres, &cli.log),
            kafka: KafkaSettings::from_args(&cli.kafka),
            grouping_gap: Some(a.grouping_gap),
            late_tolerance: Some(a.late_tolerance),
            watermark_allowance: Some(a.watermark_allowance),
            max_group_span: Some(a.max_group_span),
            max_group_messages: Some(a.max_group_messages),
            max_clock_skew: Some(a.max_clock_skew),
            replicas: Some(a.replicas),
            ordinal: a.ordinal,
        }
    }
}
