//! Kafka client settings shared by every service, and topic management.
//!
//! The producer settings are the ones the spec requires: idempotence,
//! `acks=all`, and the Java-compatible `murmur2_random` partitioner so that
//! every event of one conversation lands in one partition.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

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
    brokers: &str,
    delivery_timeout: Duration,
    linger: Duration,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
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
pub fn consumer_config(brokers: &str, group_id: &str, fetch_wait: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group_id)
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

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.connection.setup.timeout.ms", "3000");
    c.create().context("creating a Kafka admin client")
}

/// Number of partitions `topic` has, or `None` when it does not exist.
pub async fn topic_partitions(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<i32>> {
    let admin = admin(brokers)?;
    let topic_name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let md = admin
            .inner()
            .fetch_metadata(Some(&topic_name), timeout)
            .context("fetching topic metadata")?;
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
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> anyhow::Result<TopicState> {
    if let Some(actual) = topic_partitions(brokers, topic, timeout).await? {
        return Ok(if actual == partitions {
            TopicState::Exists
        } else {
            TopicState::Mismatch { actual }
        });
    }
    let admin = admin(brokers)?;
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
        if let Some(actual) = topic_partitions(brokers, topic, timeout).await? {
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
