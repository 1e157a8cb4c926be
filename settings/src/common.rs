//! Argument groups every binary flattens (Postgres, Kafka, logs), the
//! duration syntax of every flag, and the settings a deployment gives every
//! service: where it listens, which database, how it logs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::env::EnvWriter;

/// The variable of every service's HTTP listener (`--listen`): declared by
/// each service's own flag (their defaults differ), meaning the same.
/// The variable naming a replica (its pod name on Kubernetes), declared
/// by ingest and delivery alike.
pub const REPLICA_NAME_ENV: &str = "CHATPIPE_REPLICA_NAME";
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
#[derive(Clone, clap::Args)]
pub struct PostgresArgs {
    /// Postgres connection URL (`postgres://…` or `key=value` form; TLS per
    /// libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`). Use
    /// [`PostgresArgs::url`], which adds `--postgres-ca-file`.
    #[arg(
        long = "postgres-url",
        env = "CHATPIPE_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chatpipe"
    )]
    pub postgres_url: String,
    /// PEM bundle of the CAs that verify the server, used as the URL's
    /// `sslrootcert` when the URL names none (how a deployment hands over a
    /// CA kept in a Secret: `spec.postgres.caSecretRef`).
    #[arg(long, env = "CHATPIPE_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<String>,
    /// Largest number of pooled Postgres connections.
    #[arg(long, env = "CHATPIPE_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub postgres_pool_size: usize,
}

impl PostgresArgs {
    /// The connection URL with `--postgres-ca-file` as its `sslrootcert`
    /// (see [`with_root_cert`]).
    pub fn url(&self) -> String {
        match &self.postgres_ca_file {
            Some(ca) if !ca.trim().is_empty() => with_root_cert(&self.postgres_url, ca.trim()),
            _ => self.postgres_url.clone(),
        }
    }
}

/// The URL may hold a password: `Debug` never prints it.
impl std::fmt::Debug for PostgresArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresArgs")
            .field("postgres_url", &"<redacted>")
            .field("postgres_ca_file", &self.postgres_ca_file)
            .field("postgres_pool_size", &self.postgres_pool_size)
            .finish()
    }
}

/// `url` (URL or `key=value` form) with `sslrootcert` set to `ca_file`,
/// unless it names one itself (the URL's own setting wins).
pub fn with_root_cert(url: &str, ca_file: &str) -> String {
    if url.contains("sslrootcert") {
        return url.to_owned();
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let encoded: String = ca_file
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sslrootcert={encoded}")
    } else {
        let quoted = ca_file.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{url} sslrootcert='{quoted}'")
    }
}

/// Kafka connection settings: where the brokers are, the topic, and how
/// to reach the brokers (TLS, SASL). chatpipe-core's
/// `KafkaConnection::from_args` checks the combination and turns it into
/// librdkafka properties.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "CHATPIPE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic that carries webhook events.
    #[arg(long, env = "CHATPIPE_KAFKA_TOPIC", default_value = "chatpipe.events")]
    pub kafka_topic: String,
    /// Connect to the brokers over TLS (the system's CA store verifies
    /// them unless `--kafka-tls-ca-file` is given).
    #[arg(long, env = "CHATPIPE_KAFKA_TLS", default_value_t = false)]
    pub kafka_tls: bool,
    /// PEM file of the CA certificates that verify the brokers (implies
    /// `--kafka-tls`).
    #[arg(long, env = "CHATPIPE_KAFKA_TLS_CA_FILE")]
    pub kafka_tls_ca_file: Option<String>,
    /// PEM file of this client's certificate, for brokers that require
    /// client certificates (mutual TLS; needs `--kafka-tls-key-file`,
    /// implies `--kafka-tls`).
    #[arg(long, env = "CHATPIPE_KAFKA_TLS_CERT_FILE")]
    pub kafka_tls_cert_file: Option<String>,
    /// PEM file of the private key of `--kafka-tls-cert-file`.
    #[arg(long, env = "CHATPIPE_KAFKA_TLS_KEY_FILE")]
    pub kafka_tls_key_file: Option<String>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`
    /// (needs `--kafka-sasl-username` and `--kafka-sasl-password`).
    #[arg(long, env = "CHATPIPE_KAFKA_SASL_MECHANISM", ignore_case = true)]
    pub kafka_sasl_mechanism: Option<KafkaSaslMechanism>,
    /// SASL user name.
    #[arg(long, env = "CHATPIPE_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// SASL password (prefer the environment variable: a flag shows in the
    /// process list).
    #[arg(long, env = "CHATPIPE_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Redacted>,
}

/// A SASL mechanism chatpipe's Kafka clients can authenticate with. The
/// names are librdkafka's (and Kafka's) `sasl.mechanisms` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum KafkaSaslMechanism {
    /// `PLAIN`: user name and password as sent (use it over TLS only).
    #[value(name = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256` (RFC 7677).
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl KafkaSaslMechanism {
    /// Every mechanism.
    pub const ALL: [KafkaSaslMechanism; 3] = [Self::Plain, Self::ScramSha256, Self::ScramSha512];

    /// The mechanism's name (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::fmt::Display for KafkaSaslMechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KafkaSaslMechanism {
    type Err = String;

    /// A mechanism's name, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown SASL mechanism {s:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                )
            })
    }
}

crate::env::value_enum_env_value!(KafkaSaslMechanism, LogFormat);

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

/// The environment variable of the Postgres CA file (`--postgres-ca-file`).
pub fn postgres_ca_file_env() -> String {
    env_of::<PostgresArgs>("postgres_ca_file")
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

/// The Kafka connection of a service ([`KafkaArgs`]). The SASL password
/// is not here: a deployment hands it over from a secret store under
/// [`kafka_sasl_password_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `CHATPIPE_KAFKA_BROKERS`: bootstrap servers, comma separated.
    pub brokers: Option<String>,
    /// `CHATPIPE_KAFKA_TOPIC`.
    pub topic: Option<String>,
    /// `CHATPIPE_KAFKA_TLS`: connect over TLS.
    pub tls: Option<bool>,
    /// `CHATPIPE_KAFKA_TLS_CA_FILE`: the CA bundle that verifies the
    /// brokers (a path inside the service's file system).
    pub tls_ca_file: Option<String>,
    /// `CHATPIPE_KAFKA_TLS_CERT_FILE`: the client certificate (mutual TLS).
    pub tls_cert_file: Option<String>,
    /// `CHATPIPE_KAFKA_TLS_KEY_FILE`: the client certificate's key.
    pub tls_key_file: Option<String>,
    /// `CHATPIPE_KAFKA_SASL_MECHANISM`.
    pub sasl_mechanism: Option<KafkaSaslMechanism>,
    /// `CHATPIPE_KAFKA_SASL_USERNAME` (a deployment that keeps the user
    /// name in a secret leaves this unset and uses
    /// [`kafka_sasl_username_env`]).
    pub sasl_username: Option<String>,
}

impl KafkaSettings {
    /// Brokers and topic set, plaintext (no TLS, no SASL).
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: Some(brokers.to_owned()),
            topic: Some(topic.to_owned()),
            ..Self::default()
        }
    }

    /// Writes the brokers, the topic, then the TLS and SASL settings (never
    /// a password).
    pub fn write(&self, w: &mut EnvWriter) {
        w.set("kafka_brokers", self.brokers.as_ref())
            .set("kafka_topic", self.topic.as_ref())
            .set("kafka_tls", self.tls.as_ref())
            .set("kafka_tls_ca_file", self.tls_ca_file.as_ref())
            .set("kafka_tls_cert_file", self.tls_cert_file.as_ref())
            .set("kafka_tls_key_file", self.tls_key_file.as_ref())
            .set("kafka_sasl_mechanism", self.sasl_mechanism.as_ref())
            .set("kafka_sasl_username", self.sasl_username.as_ref());
    }

    /// The settings `args` holds (the password is left out, as in
    /// [`KafkaSettings::write`]).
    pub fn from_args(args: &KafkaArgs) -> Self {
        Self {
            brokers: Some(args.kafka_brokers.clone()),
            topic: Some(args.kafka_topic.clone()),
            tls: Some(args.kafka_tls),
            tls_ca_file: args.kafka_tls_ca_file.clone(),
            tls_cert_file: args.kafka_tls_cert_file.clone(),
            tls_key_file: args.kafka_tls_key_file.clone(),
            sasl_mechanism: args.kafka_sasl_mechanism,
            sasl_username: args.kafka_sasl_username.clone(),
        }
    }
}

/// The environment variable of the Kafka SASL password, for a deployment
/// that hands it over from a secret store (a Kubernetes Secret reference).
pub fn kafka_sasl_password_env() -> String {
    env_of::<KafkaArgs>("kafka_sasl_password")
}

/// The environment variable of the Kafka SASL user name, for a deployment
/// that keeps the user name in a secret store too.
pub fn kafka_sasl_username_env() -> String {
    env_of::<KafkaArgs>("kafka_sasl_username")
}

#[cfg(test)]
mod kafka_args_tests {
    use super::*;
    use crate::env::EnvValue;

    #[derive(Debug, clap::Parser)]
    struct Bin {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    fn parse(args: &[&str]) -> Result<KafkaArgs, clap::Error> {
        <Bin as clap::Parser>::try_parse_from(std::iter::once("bin").chain(args.iter().copied()))
            .map(|b| b.kafka)
    }

    #[test]
    fn the_defaults_are_plaintext_without_sasl() {
        let a = parse(&[]).unwrap();
        assert!(!a.kafka_tls);
        assert_eq!(a.kafka_tls_ca_file, None);
        assert_eq!(a.kafka_tls_cert_file, None);
        assert_eq!(a.kafka_tls_key_file, None);
        assert_eq!(a.kafka_sasl_mechanism, None);
        assert_eq!(a.kafka_sasl_username, None);
        assert_eq!(a.kafka_sasl_password, None);
    }

    #[test]
    fn every_security_flag_parses() {
        let a = parse(&[
            "--kafka-tls",
            "--kafka-tls-ca-file",
            "/etc/kafka/ca.pem",
            "--kafka-tls-cert-file",
            "/etc/kafka/client.pem",
            "--kafka-tls-key-file",
            "/etc/kafka/client.key",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "chatpipe",
            "--kafka-sasl-password",
            "s3cret-value",
        ])
        .unwrap();
        assert!(a.kafka_tls);
        assert_eq!(a.kafka_tls_ca_file.as_deref(), Some("/etc/kafka/ca.pem"));
        assert_eq!(
            a.kafka_tls_cert_file.as_deref(),
            Some("/etc/kafka/client.pem")
        );
        assert_eq!(
            a.kafka_tls_key_file.as_deref(),
            Some("/etc/kafka/client.key")
        );
        assert_eq!(
            a.kafka_sasl_mechanism,
            Some(KafkaSaslMechanism::ScramSha512)
        );
        assert_eq!(a.kafka_sasl_username.as_deref(), Some("chatpipe"));
        assert_eq!(
            a.kafka_sasl_password.as_ref().map(Redacted::expose),
            Some("s3cret-value")
        );
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
    }

    #[test]
    fn mechanisms_parse_by_name_in_any_case() {
        for m in KafkaSaslMechanism::ALL {
            assert_eq!(
                parse(&["--kafka-sasl-mechanism", m.name()])
                    .unwrap()
                    .kafka_sasl_mechanism,
                Some(m)
            );
            let lower = m.name().to_ascii_lowercase();
            assert_eq!(
                parse(&["--kafka-sasl-mechanism", &lower])
                    .unwrap()
                    .kafka_sasl_mechanism,
                Some(m)
            );
            assert_eq!(lower.parse::<KafkaSaslMechanism>(), Ok(m));
            assert_eq!(m.env_value(), m.name());
        }
        assert!(parse(&["--kafka-sasl-mechanism", "GSSAPI"]).is_err());
        assert!("SCRAM-SHA-1".parse::<KafkaSaslMechanism>().is_err());
    }

    #[test]
    fn the_password_is_written_by_no_one_and_named_once() {
        assert_eq!(kafka_sasl_password_env(), "CHATPIPE_KAFKA_SASL_PASSWORD");
        assert_eq!(kafka_sasl_username_env(), "CHATPIPE_KAFKA_SASL_USERNAME");
        let mut w = crate::env::EnvWriter::new::<Bin>();
        KafkaSettings {
            tls: Some(true),
            sasl_mechanism: Some(KafkaSaslMechanism::Plain),
            sasl_username: Some("u".to_owned()),
            ..KafkaSettings::new("k:9093", "t")
        }
        .write(&mut w);
        let names: Vec<String> = w.finish().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "CHATPIPE_KAFKA_BROKERS",
                "CHATPIPE_KAFKA_TOPIC",
                "CHATPIPE_KAFKA_TLS",
                "CHATPIPE_KAFKA_SASL_MECHANISM",
                "CHATPIPE_KAFKA_SASL_USERNAME"
            ]
        );
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
    fn the_ca_file_becomes_the_root_cert_unless_the_url_names_one() {
        assert_eq!(
            with_root_cert("postgres://u@h/db", "/etc/chatpipe/secrets/postgres-ca.pem"),
            "postgres://u@h/db?sslrootcert=/etc/chatpipe/secrets/postgres-ca.pem"
        );
        assert_eq!(
            with_root_cert("postgresql://u@h/db?sslmode=verify-full", "/a b/c&d.pem"),
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/a%20b/c%26d.pem"
        );
        assert_eq!(
            with_root_cert("host=h sslmode=verify-ca", "/it's.pem"),
            "host=h sslmode=verify-ca sslrootcert='/it\\'s.pem'"
        );
        let own = "postgres://u@h/db?sslrootcert=/mine.pem";
        assert_eq!(with_root_cert(own, "/other.pem"), own);
        let args = <crate::api::ApiArgs as clap::Parser>::try_parse_from([
            "chatpipe-api",
            "--postgres-url",
            "postgres://u:pw-s3cret@h/db",
            "--postgres-ca-file",
            "/ca.pem",
        ])
        .unwrap();
        assert_eq!(
            args.postgres.url(),
            "postgres://u:pw-s3cret@h/db?sslrootcert=/ca.pem"
        );
        assert!(
            !format!("{args:?}").contains("pw-s3cret"),
            "Debug hides the URL"
        );
        assert_eq!(postgres_ca_file_env(), "CHATPIPE_POSTGRES_CA_FILE");
    }

    #[test]
    fn the_variables_are_the_ones_declared() {
        assert_eq!(postgres_url_env(), "CHATPIPE_POSTGRES_URL");
        assert_eq!(log_env(), "CHATPIPE_LOG");
    }
}
