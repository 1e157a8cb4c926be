//! The Kafka side of ingest: a wrapper around rdkafka's `FutureProducer`
//! that writes one [`Event`] as the record the contract describes (key =
//! conversation id, value = [`Event::encode`], timestamp = arrival time,
//! no headers: see [`chatpipe_core::kafka::EVENT_RECORDS_HAVE_HEADERS`]) and resolves only on the broker's
//! acknowledgement, bounded by the produce timeout.
//!
//! # Arrival time and the in-flight floor
//! [`EventProducer::produce`] stamps the record's arrival time itself,
//! immediately before handing it to librdkafka, i.e. after the body was
//! read and every decision was made (a slow upload or a slow Postgres does
//! not leave a stale stamp). From that moment until the broker answers (or
//! the produce timeout gives up) the record is registered in the
//! [`InflightRegistry`] by an RAII guard, so the published in-flight floor
//! (see [`crate::inflight`]) covers it and no entry outlives its produce.
//!
//! # Timeouts without epoch bumps
//! When librdkafka's own `message.timeout.ms` expires a record, an
//! idempotent producer bumps its epoch *locally* and goes on producing with
//! the new epoch. Tansu 0.6.0 has no row for that epoch and panics in its
//! storage task, after which it refuses every produce from every client
//! until it is restarted. So the librdkafka timeout is disabled here
//! (`message.timeout.ms=0`, infinite) and the produce timeout is enforced by
//! this wrapper instead: when a record is not acknowledged in time, the
//! producer it was given to is *replaced* by a fresh one (which gets a new
//! producer id from the broker) and the old one is purged and destroyed, so
//! it never reconnects with a bumped epoch. The same replacement happens on
//! a librdkafka *fatal* error. Either way ingest recovers without a restart.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chatpipe_core::event::Event;
use chatpipe_core::kafka::{producer_config, KafkaConnection};
use chrono::Utc;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

use crate::events::{
    InternalEvent, ProduceFailed, ProducerCreateFailed, ProducerReplaced, RecordAcknowledged,
};
use crate::inflight::InflightRegistry;
use crate::metrics::Metrics;

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// No acknowledgement within the produce timeout.
    #[error("the broker did not acknowledge the record within {0:?}")]
    Timeout(Duration),
    /// The producer's local queue is full (the broker is slow or away).
    #[error("the producer queue is full")]
    QueueFull,
    /// The producer reported an error for the record.
    #[error("the broker refused or lost the record: {0}")]
    Kafka(#[from] KafkaError),
    /// The producer went away before reporting.
    #[error("the producer was shut down")]
    Canceled,
}

impl ProduceError {
    /// Short label for the `reason` of the failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ProduceError::Timeout(_) => "timeout",
            ProduceError::QueueFull => "queue_full",
            ProduceError::Kafka(_) => "kafka",
            ProduceError::Canceled => "canceled",
        }
    }
}

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// The record timestamp (arrival time, ms since the Unix epoch).
    pub arrival_ms: i64,
}

/// Writes events to the configured topic and waits for acknowledgements.
pub struct EventProducer {
    config: ClientConfig,
    producer: RwLock<Arc<FutureProducer>>,
    topic: String,
    timeout: Duration,
    metrics: Metrics,
    inflight: Arc<InflightRegistry>,
}

/// The record key of a conversation: its hyphenated lowercase id.
pub fn record_key(conversation_id: uuid::Uuid) -> [u8; 36] {
    let mut buf = [0u8; 36];
    conversation_id.hyphenated().encode_lower(&mut buf);
    buf
}

impl EventProducer {
    /// Creates the producer (idempotent, `acks=all`, murmur2) for
    /// `connection` (brokers, TLS, SASL); `extra` properties are applied on
    /// top of the shared settings.
    pub fn new(
        connection: &KafkaConnection,
        topic: &str,
        timeout: Duration,
        linger: Duration,
        extra: &[(String, String)],
        metrics: Metrics,
    ) -> Result<EventProducer, KafkaError> {
        // A missing TLS file named by path (librdkafka's error does not).
        connection
            .security
            .check_files()
            .map_err(|e| KafkaError::ClientCreation(format!("{e:#}")))?;
        let mut config = producer_config(connection, timeout, linger);
        // Infinite: timeouts are enforced by `produce` (see the module docs).
        config.set("message.timeout.ms", "0");
        // Never let a produce or metadata request create the topic with the
        // broker's default partition count: topics are made by
        // `chatpipe-admin ensure-topic` with their final count.
        config.set("allow.auto.create.topics", "false");
        for (k, v) in extra {
            config.set(k, v);
        }
        let producer: FutureProducer = config.create()?;
        Ok(EventProducer {
            config,
            producer: RwLock::new(Arc::new(producer)),
            topic: topic.to_owned(),
            timeout,
            metrics,
            inflight: InflightRegistry::new(),
        })
    }

    /// The records waiting for the broker (read by the floor publisher).
    pub fn inflight(&self) -> &Arc<InflightRegistry> {
        &self.inflight
    }

    /// The topic records are written to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The current producer.
    pub fn current(&self) -> Arc<FutureProducer> {
        match self.producer.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Writes `event`, stamped with the current time as its arrival time,
    /// and resolves on the broker's acknowledgement, or fails after the
    /// produce timeout. The record is in the in-flight registry from the
    /// stamp until this future ends or is dropped.
    pub async fn produce(&self, event: &Event) -> Result<Stored, ProduceError> {
        let producer = self.current();
        let key = record_key(event.conversation_id());
        let value = event.encode();
        let started = Instant::now();
        let arrival_ms = Utc::now().timestamp_millis();
        let _inflight = self.inflight.register(arrival_ms, started);
        let record = FutureRecord::to(&self.topic)
            .key(&key[..])
            .payload(&value)
            .timestamp(arrival_ms);
        let result = match producer.send_result(record) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(ProduceError::QueueFull)
            }
            Err((e, _)) => Err(ProduceError::Kafka(e)),
            Ok(delivery) => match tokio::time::timeout(self.timeout, delivery).await {
                Err(_) => Err(ProduceError::Timeout(self.timeout)),
                Ok(Err(_canceled)) => Err(ProduceError::Canceled),
                Ok(Ok(Err((e, _msg)))) => Err(ProduceError::Kafka(e)),
                Ok(Ok(Ok(d))) => Ok(Stored {
                    partition: d.partition,
                    offset: d.offset,
                    arrival_ms,
                }),
            },
        };
        match &result {
            Ok(stored) => RecordAcknowledged {
                partition: stored.partition,
                offset: stored.offset,
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit(&self.metrics),
            Err(e) => {
                ProduceFailed {
                    reason: e.reason(),
                    error: e,
                }
                .emit(&self.metrics);
                if matches!(e, ProduceError::Timeout(_)) {
                    self.replace(&producer, "a record was not acknowledged in time");
                } else if let Some((code, reason)) = producer.client().fatal_error() {
                    self.replace(&producer, &format!("fatal error {code:?}: {reason}"));
                }
            }
        }
        result
    }

    /// Replaces `failed` by a fresh producer (unless another request already
    /// did) and purges and destroys it off the async threads.
    fn replace(&self, failed: &Arc<FutureProducer>, why: &str) {
        let old = {
            let mut slot = match self.producer.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !Arc::ptr_eq(&slot, failed) {
                return; // already replaced
            }
            match self.config.create::<FutureProducer>() {
                Ok(fresh) => std::mem::replace(&mut *slot, Arc::new(fresh)),
                Err(e) => {
                    ProducerCreateFailed { error: &e }.emit(&self.metrics);
                    return;
                }
            }
        };
        ProducerReplaced { reason: why }.emit(&self.metrics);
        retire(old);
    }

    /// Checks that the broker answers a metadata request for the topic
    /// within `timeout`.
    pub async fn check_broker(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.current();
        let topic = self.topic.clone();
        let task = tokio::task::spawn_blocking(move || {
            let md = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| format!("broker metadata: {e}"))?;
            match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                Some(t) => Err(format!(
                    "topic {topic} unavailable: {:?}",
                    t.error().map(RDKafkaErrorCode::from)
                )),
                None => Err(format!("topic {topic} not found")),
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(format!("metadata task failed: {e}")),
        }
    }

    /// Waits up to `timeout` for every queued record to be delivered.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.current();
        match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
            Ok(r) => r,
            Err(_) => Err(KafkaError::Canceled),
        }
    }
}

/// Purges `old` (its waiting records fail at once, so their requests answer
/// `503` and let go of it) and destroys it on a blocking thread once nothing
/// else holds it; destruction joins librdkafka's threads.
fn retire(old: Arc<FutureProducer>) {
    let purge = PurgeConfig::default().queue().inflight();
    old.purge(purge);
    let task = move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(old);
    };
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        drop(handle.spawn_blocking(task));
    } else {
        std::thread::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_the_hyphenated_lowercase_id() {
        let id = uuid::Uuid::parse_str("6A41B347-8D80-4CE9-84BA-7AF66F369F6A").unwrap();
        assert_eq!(&record_key(id)[..], b"6a41b347-8d80-4ce9-84ba-7af66f369f6a");
    }
}
