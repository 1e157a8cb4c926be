//! Kafka client settings shared by every service, and topic management.
//!
//! The producer settings are the ones the spec requires: idempotence,
//! `acks=all`, and the Java-compatible `murmur2_random` partitioner so that
//! every event of one conversation lands in one partition.
//!
//! Every client starts from a [`KafkaConnection`] (brokers, TLS, SASL; see
//! [`security`]), so producer, consumer and admin reach the brokers the
//! same way.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

pub mod security;

pub use security::{
    ClientCert, KafkaConnection, KafkaSasl, KafkaSecurity, KafkaSecurityError, KafkaTls,
    SaslMechanism,
};

/// Event records carry no headers: the event type is in the payload, and
/// Tansu 0.6.0's SQLite storage looks up the headers of every fetched
/// record with a scan of its whole (unindexed) header table, so a fetch
/// costs O(records fetched × records stored) once records carry headers.
/// With headers, a processor replaying a few thousand records of a topic
/// of ~10 k records kept the broker's single storage task busy for seconds
/// per fetch, and repeated restarts wedged the broker.
pub const EVENT_RECORDS_HAVE_HEADERS: bool = false;

/// Producer configuration for webhook events: idempotent, `acks=all`,
/// murmur2 placement, `linger.ms` batching, and a delivery timeout after
/// which a produce is reported failed.
///
/// With Tansu 0.6.0 a record that expires through `message.timeout.ms`
/// makes the idempotent producer bump its epoch, which the broker cannot
/// handle (it panics and refuses every produce until restarted). Services
/// that must survive broker outages (ingest) therefore set
/// `message.timeout.ms=0` and enforce their own timeout by replacing the
/// producer; this setting suits tests and tools that never expect expiry.
pub fn producer_config(
    connection: &KafkaConnection,
    delivery_timeout: Duration,
    linger: Duration,
) -> ClientConfig {
    let mut c = connection.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().max(1).to_string(),
        )
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("reconnect.backoff.max.ms", "500");
    c
}

/// Consumer configuration for reading assigned partitions: no group
/// management (`assign()` only) and no auto commit — positions live in
/// Postgres. `fetch_wait` bounds Tansu's answer to a waiting fetch.
pub fn consumer_config(
    connection: &KafkaConnection,
    group_id: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut c = connection.client_config();
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set(
            "fetch.wait.max.ms",
            fetch_wait.as_millis().max(1).to_string(),
        )
        .set("socket.connection.setup.timeout.ms", "3000")
        .set("reconnect.backoff.max.ms", "500");
    c
}

/// How many distinct librdkafka errors [`BrokerErrors`] keeps.
const KEPT_BROKER_ERRORS: usize = 4;

/// A client context that keeps the first few distinct librdkafka errors, so a failed request can say why
/// the brokers could not be reached: a TLS handshake or SASL failure is
/// only reported there (the request itself just times out or finds all
/// brokers down). librdkafka's error texts name brokers and causes, never
/// credentials.
#[derive(Debug, Default)]
pub struct BrokerErrors {
    seen: Mutex<Vec<String>>,
}

impl BrokerErrors {
    /// The distinct errors librdkafka reported, oldest first (at most a
    /// few).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ClientContext for BrokerErrors {
    fn error(&self, error: KafkaError, reason: &str) {
        // Debug only: the failed request reports these to its caller.
        tracing::debug!("librdkafka: {error}: {reason}");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            return; // a consequence of the errors kept, not a cause
        }
        if let Ok(mut seen) = self.seen.lock() {
            let cause = broker_error_cause(reason);
            if seen.len() < KEPT_BROKER_ERRORS && !seen.iter().any(|s| s == cause) {
                seen.push(cause.to_owned());
            }
        }
    }
}

/// librdkafka's error text without its timing suffix (`" (after 3ms in
/// state CONNECT)"`), so repeats of one cause are recognised.
fn broker_error_cause(reason: &str) -> &str {
    reason.split(" (after ").next().unwrap_or(reason).trim_end()
}

impl ProducerContext for BrokerErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

fn admin(connection: &KafkaConnection) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    connection.security.check_files()?;
    let mut c = connection.client_config();
    c.set("socket.connection.setup.timeout.ms", "3000");
    c.create().context("creating a Kafka admin client")
}

/// A client for metadata requests whose librdkafka errors can be read
/// after a failure (rdkafka's admin client never serves its error events).
/// Its own log lines are left out: a failure returns the errors instead,
/// once, and callers that retry every second stay quiet.
fn metadata_client(connection: &KafkaConnection) -> anyhow::Result<BaseProducer<BrokerErrors>> {
    connection.security.check_files()?;
    let mut c = connection.client_config();
    c.set("socket.connection.setup.timeout.ms", "3000")
        .set_log_level(RDKafkaLogLevel::Critical);
    c.create_with_context(BrokerErrors::default())
        .context("creating a Kafka metadata client")
}

/// Number of partitions `topic` has, or `None` when it does not exist. A
/// failure names the errors librdkafka reported on the way (a refused TLS
/// certificate, a failed SASL handshake).
pub async fn topic_partitions(
    connection: &KafkaConnection,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<i32>> {
    let client = metadata_client(connection)?;
    let topic_name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = match client.client().fetch_metadata(Some(&topic_name), timeout) {
            Ok(md) => md,
            Err(e) => {
                // Serve the error events librdkafka queued (this calls
                // `BrokerErrors::error`).
                client.poll(Duration::from_millis(100));
                let seen = client.context().seen();
                let e = anyhow::Error::new(e);
                return Err(if seen.is_empty() {
                    e.context("fetching topic metadata")
                } else {
                    e.context(format!(
                        "fetching topic metadata (broker errors: {})",
                        seen.join("; ")
                    ))
                });
            }
        };
        let Some(t) = md.topics().iter().find(|t| t.name() == topic_name) else {
            return Ok(None);
        };
        match t.error() {
            None => Ok(Some(t.partitions().len() as i32)),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => bail!("topic {topic_name}: {:?}", RDKafkaErrorCode::from(e)),
        }
    })
    .await
    .context("metadata task failed")?
}

/// What [`ensure_topic`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// The topic was created with the requested partitions.
    Created,
    /// The topic existed with the requested partitions.
    Exists,
    /// The topic exists with a different partition count (never changed:
    /// Tansu cannot add partitions, and removing them is impossible).
    Mismatch {
        /// Partitions the topic actually has.
        actual: i32,
    },
}

/// Ensures `topic` exists with `partitions` partitions (replication 1 on a
/// single-broker setup, otherwise `replication`).
pub async fn ensure_topic(
    connection: &KafkaConnection,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> anyhow::Result<TopicState> {
    if let Some(actual) = topic_partitions(connection, topic, timeout).await? {
        return Ok(if actual == partitions {
            TopicState::Exists
        } else {
            TopicState::Mismatch { actual }
        });
    }
    let admin = admin(connection)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code:?}"),
        }
    }
    // Wait until the metadata shows the topic, so callers can produce at once.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(actual) = topic_partitions(connection, topic, timeout).await? {
            return Ok(if actual == partitions {
                TopicState::Created
            } else {
                TopicState::Mismatch { actual }
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("topic {topic} was created but does not show in metadata after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;

    use super::*;
    use chatpipe_settings::common::Redacted;

    const PASSWORD: &str = "librdkafka-must-not-show-this";

    fn sasl(mechanism: SaslMechanism, tls: bool) -> KafkaConnection {
        KafkaConnection {
            brokers: "127.0.0.1:1".to_owned(),
            security: KafkaSecurity {
                tls: tls.then(KafkaTls::default),
                sasl: Some(KafkaSasl {
                    mechanism,
                    username: "chatpipe".to_owned(),
                    password: Redacted(PASSWORD.to_owned()),
                }),
            },
        }
    }

    #[test]
    fn broker_errors_keep_distinct_causes() {
        assert_eq!(
            broker_error_cause(
                "ssl://b:9093/bootstrap: SSL handshake failed: certificate verify failed \
                 (after 1ms in state SSL_HANDSHAKE, 1 identical error(s) suppressed)"
            ),
            "ssl://b:9093/bootstrap: SSL handshake failed: certificate verify failed"
        );
        let errors = BrokerErrors::default();
        let transport = || KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        errors.error(
            transport(),
            "b:1/bootstrap: Connect failed (after 0ms in state CONNECT)",
        );
        errors.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        errors.error(
            transport(),
            "b:1/bootstrap: Connect failed (after 9ms in state CONNECT)",
        );
        for i in 0..10 {
            errors.error(transport(), &format!("cause {i}"));
        }
        assert_eq!(
            errors.seen(),
            [
                "b:1/bootstrap: Connect failed",
                "cause 0",
                "cause 1",
                "cause 2"
            ]
        );
    }

    #[test]
    fn librdkafka_is_built_with_tls_and_scram() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for f in ["ssl", "sasl_plain", "sasl_scram"] {
            assert!(features.split(',').any(|x| x == f), "{f} in {features}");
        }
    }

    #[test]
    fn librdkafka_accepts_every_mechanism_with_and_without_tls() {
        for m in SaslMechanism::ALL {
            for tls in [false, true] {
                let conn = sasl(m, tls);
                let producer: Result<BaseProducer, _> =
                    producer_config(&conn, Duration::from_secs(5), Duration::ZERO).create();
                assert!(producer.is_ok(), "{m} tls={tls}: {:?}", producer.err());
                let consumer: Result<rdkafka::consumer::BaseConsumer, _> =
                    consumer_config(&conn, "g", Duration::from_millis(10)).create();
                assert!(consumer.is_ok(), "{m} tls={tls}: {:?}", consumer.err());
                assert!(admin(&conn).is_ok(), "{m} tls={tls}");
            }
        }
    }

    #[test]
    fn a_bad_tls_file_fails_at_creation_without_showing_the_password() {
        let mut conn = sasl(SaslMechanism::ScramSha256, true);
        conn.security.tls = Some(KafkaTls {
            ca_file: Some("/nonexistent/chatpipe-ca.pem".into()),
            client_cert: None,
        });
        let err = match admin(&conn) {
            Ok(_) => panic!("a missing CA file must fail"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("chatpipe-ca.pem"), "{err}");
        assert!(!err.contains(PASSWORD), "{err}");
    }
}
