//! Settings of `chatpipe-delivery`: its command line ([`DeliveryArgs`],
//! clap derive; every flag also reads an environment variable) and what a
//! deployment sets of it ([`DeliverySettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::channels::{ChannelArgs, Channels};
use crate::common::{parse_duration, LogArgs, PostgresArgs, ServiceSettings, LISTEN_ENV};
use crate::env::EnvWriter;

/// Default address of the delivery component's HTTP server (ops endpoints).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8083";

/// Command line of `chatpipe-delivery`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-delivery",
    version,
    about = "chatpipe delivery: sends the outbox of OUTBOUND messages through their channels"
)]
pub struct DeliveryArgs {
    /// Address of the ops server (/healthz, /readyz, /metrics).
    #[arg(long, env = LISTEN_ENV, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Postgres connection.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The channels to deliver through.
    #[command(flatten)]
    pub channels: ChannelArgs,
    /// Most provider calls in progress at once (per replica).
    #[arg(long, env = "CHATPIPE_DELIVERY_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Most deliveries claimed by one claim statement.
    #[arg(long, env = "CHATPIPE_DELIVERY_CLAIM_BATCH", default_value_t = 100)]
    pub claim_batch: usize,
    /// How long a claim holds a delivery; a worker that crashed loses it
    /// after this and another one retries the delivery.
    #[arg(long, env = "CHATPIPE_DELIVERY_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Longest wait between two looks for due deliveries (new ones are
    /// announced by a Postgres notification at once).
    #[arg(long, env = "CHATPIPE_DELIVERY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Provider calls (attempts) after which a transient failure becomes
    /// a permanent one (`failed`, reason `max_attempts`).
    #[arg(long, env = "CHATPIPE_DELIVERY_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,
    /// First retry delay; it doubles per attempt (full jitter).
    #[arg(long, env = "CHATPIPE_DELIVERY_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "CHATPIPE_DELIVERY_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Timeout of one provider call.
    #[arg(long, env = "CHATPIPE_DELIVERY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Messages per second through one channel (Telegram allows about 30).
    #[arg(long, env = "CHATPIPE_DELIVERY_CHANNEL_RATE", default_value_t = 30)]
    pub channel_rate: u32,
    /// Messages per second to one chat (Telegram allows about 1).
    #[arg(long, env = "CHATPIPE_DELIVERY_CHAT_RATE", default_value_t = 1)]
    pub chat_rate: u32,
    /// Messages one chat may receive at once before its rate applies.
    #[arg(long, env = "CHATPIPE_DELIVERY_CHAT_BURST", default_value_t = 3)]
    pub chat_burst: u32,
    /// Graph API version of WhatsApp Cloud calls.
    #[arg(
        long,
        env = "CHATPIPE_DELIVERY_WHATSAPP_API_VERSION",
        default_value = "v21.0"
    )]
    pub whatsapp_api_version: String,
    /// This replica's name in leases (default: HOSTNAME, else a random id).
    #[arg(long, env = crate::common::REPLICA_NAME_ENV)]
    pub replica_name: Option<String>,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a deployment sets for `chatpipe-delivery`; `None` leaves the
/// binary's default. Written with [`DeliverySettings::to_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Listener, database and logs.
    pub service: ServiceSettings,
    /// `--channels`.
    pub channels: Option<Channels>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--lease`.
    pub lease: Option<Duration>,
    /// `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// `--backoff-base`.
    pub backoff_base: Option<Duration>,
    /// `--backoff-max`.
    pub backoff_max: Option<Duration>,
    /// `--channel-rate`.
    pub channel_rate: Option<u32>,
    /// `--chat-rate`.
    pub chat_rate: Option<u32>,
}

impl DeliverySettings {
    /// The environment that gives `chatpipe-delivery` these settings (the
    /// channels' credentials come from Secrets, not from here).
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<DeliveryArgs>();
        self.service.write(&mut w);
        w.set("channels", self.channels.as_ref())
            .set("concurrency", self.concurrency.as_ref())
            .set("lease", self.lease.as_ref())
            .set("max_attempts", self.max_attempts.as_ref())
            .set("backoff_base", self.backoff_base.as_ref())
            .set("backoff_max", self.backoff_max.as_ref())
            .set("channel_rate", self.channel_rate.as_ref())
            .set("chat_rate", self.chat_rate.as_ref());
        w.finish()
    }

    /// The settings a parsed command line holds.
    pub fn from_args(a: &DeliveryArgs) -> Self {
        Self {
            service: ServiceSettings::from_args(a.listen, &a.postgres, &a.log),
            channels: Some(a.channels.channels.clone()),
            concurrency: Some(a.concurrency),
            lease: Some(a.lease),
            max_attempts: Some(a.max_attempts),
            backoff_base: Some(a.backoff_base),
            backoff_max: Some(a.backoff_max),
            channel_rate: Some(a.channel_rate),
            chat_rate: Some(a.chat_rate),
        }
    }
}
