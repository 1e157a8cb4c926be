//! Settings of `chatpipe-processor`: its command line ([`Cli`], clap
//! derive; every flag has an env var and a documented default) and what a
//! deployment sets of it ([`ProcessorSettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{
    parse_duration, KafkaArgs, KafkaSettings, LogArgs, PostgresArgs, Redacted, ServiceSettings,
    LISTEN_ENV, MIGRATE_ENV,
};
use crate::env::EnvWriter;

/// Default grouping gap G (also the `ChatPipeline` CRD's default).
pub const DEFAULT_GROUPING_GAP: &str = "5s";
/// Default late-arrival tolerance L (also the `ChatPipeline` CRD's default).
pub const DEFAULT_LATE_TOLERANCE: &str = "6s";
/// Default largest number of messages in one group.
pub const DEFAULT_MAX_GROUP_MESSAGES: usize = 100;
/// Default reply template (minijinja): the original automatic reply,
/// `"Mensagens recebidas:\n"` followed by each inbound id and `"\n"`.
pub const DEFAULT_REPLY_TEMPLATE: &str =
    "Mensagens recebidas:\n{% for id in ids %}{{ id }}\n{% endfor %}";

/// The variable the reply bot's bearer token is read from
/// ([`ProcessorArgs::reply_bot_token`]): set from a Secret by the operator
/// and by local mode, never written to a ConfigMap (so
/// [`ProcessorSettings::to_env`] never writes it).
pub fn reply_bot_token_env() -> String {
    crate::env::env_name(&<Cli as clap::CommandFactory>::command(), "reply_bot_token")
}

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
    /// Template of the automatic reply when neither the bot nor a rule
    /// answers (minijinja syntax; variables `ids`: the group's message ids,
    /// `messages`: their contents, both in arrival order, `count`: how many,
    /// `conversation_id`). Default: the original reply,
    /// `Mensagens recebidas:\n{% for id in ids %}{{ id }}\n{% endfor %}`.
    /// Checked at start: a template that does not compile or render refuses
    /// the start.
    #[arg(long, env = "CHATPIPE_REPLY_TEMPLATE", default_value = DEFAULT_REPLY_TEMPLATE, hide_default_value = true)]
    pub reply_template: String,
    /// JSON file of FAQ rules, `{"rules":[{"keyword":"price","answer":"…"},
    /// {"regex":"(?i)open(ing)? hours","answer":"…"}]}`: going from the
    /// group's newest message to its oldest, the first rule (in file order)
    /// that matches a message answers (a keyword matches case-insensitively
    /// as a whole word, a regex anywhere). Checked at start; re-read when
    /// its content changes (a file that no longer parses keeps the rules in
    /// use, with an error and a `/readyz` warning).
    #[arg(long, env = "CHATPIPE_REPLY_RULES_FILE")]
    pub reply_rules_file: Option<String>,
    /// How often the FAQ rules file is checked for changes.
    #[arg(long, env = "CHATPIPE_REPLY_RULES_REFRESH", default_value = "1s", value_parser = parse_duration)]
    pub reply_rules_refresh: Duration,
    /// URL of a reply bot, asked first for every reply: `POST` with
    /// `{"conversation_id","reply_id","messages":[{"id","content","timestamp"}]}`,
    /// answering `200 {"content":"…"}`. A failure (timeout, non-2xx, bad
    /// JSON, empty or longer than 4,096 characters, NUL) falls back to the
    /// rules, then the template.
    #[arg(long, env = "CHATPIPE_REPLY_BOT_URL")]
    pub reply_bot_url: Option<String>,
    /// How long the reply bot may take to answer one reply.
    #[arg(long, env = "CHATPIPE_REPLY_BOT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub reply_bot_timeout: Duration,
    /// Bearer token sent to the reply bot (`Authorization: Bearer …`).
    /// Deployments hand it over from a Secret ([`reply_bot_token_env`]),
    /// never through a ConfigMap.
    #[arg(long, env = "CHATPIPE_REPLY_BOT_TOKEN", hide_env_values = true)]
    pub reply_bot_token: Option<Redacted>,
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
    /// `--reply-template`.
    pub reply_template: Option<String>,
    /// `--reply-rules-file`.
    pub reply_rules_file: Option<String>,
    /// `--reply-rules-refresh`.
    pub reply_rules_refresh: Option<Duration>,
    /// `--reply-bot-url`.
    pub reply_bot_url: Option<String>,
    /// `--reply-bot-timeout`.
    pub reply_bot_timeout: Option<Duration>,
}

impl ProcessorSettings {
    /// The environment that gives `chatpipe-processor` these settings. The
    /// reply bot's token is not among them: it comes from a Secret
    /// ([`reply_bot_token_env`]).
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
            .set("ordinal", self.ordinal.as_ref())
            .set("reply_template", self.reply_template.as_ref())
            .set("reply_rules_file", self.reply_rules_file.as_ref())
            .set("reply_rules_refresh", self.reply_rules_refresh.as_ref())
            .set("reply_bot_url", self.reply_bot_url.as_ref())
            .set("reply_bot_timeout", self.reply_bot_timeout.as_ref());
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
            reply_template: Some(a.reply_template.clone()),
            reply_rules_file: a.reply_rules_file.clone(),
            reply_rules_refresh: Some(a.reply_rules_refresh),
            reply_bot_url: a.reply_bot_url.clone(),
            reply_bot_timeout: Some(a.reply_bot_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_bot_token_is_read_from_its_variable_and_never_written() {
        assert_eq!(reply_bot_token_env(), "CHATPIPE_REPLY_BOT_TOKEN");
        let cli = Cli::try_parse_from([
            "chatpipe-processor",
            "--reply-bot-url",
            "http://bot.example/reply",
            "--reply-bot-token",
            "s3cret",
        ])
        .unwrap();
        assert_eq!(
            cli.processor.reply_bot_token.as_ref().map(Redacted::expose),
            Some("s3cret")
        );
        assert!(!format!("{cli:?}").contains("s3cret"));
        let env = ProcessorSettings::from_args(&cli).to_env();
        assert!(env
            .iter()
            .all(|(k, v)| k != &reply_bot_token_env() && v != "s3cret"));
        assert!(env
            .iter()
            .any(|(k, v)| k == "CHATPIPE_REPLY_BOT_URL" && v == "http://bot.example/reply"));
    }

    #[test]
    fn the_default_template_is_written_as_parsed() {
        let cli = Cli::try_parse_from(["chatpipe-processor"]).unwrap();
        assert_eq!(cli.processor.reply_template, DEFAULT_REPLY_TEMPLATE);
        assert_eq!(cli.processor.reply_rules_refresh, Duration::from_secs(1));
        assert_eq!(cli.processor.reply_bot_timeout, Duration::from_secs(2));
        assert!(cli.processor.reply_rules_file.is_none() && cli.processor.reply_bot_url.is_none());
    }
}
