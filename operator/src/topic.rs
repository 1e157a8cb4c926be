//! Ensuring the Kafka topic, behind a small trait: the controller uses
//! [`KafkaTopicAdmin`] (chatpipe-core's `ensure_topic` over rdkafka), the
//! mock-API tests substitute a fake because no broker runs there.

use std::time::Duration;

use chatpipe_core::kafka::{KafkaConnection, TopicState};
use futures::future::BoxFuture;

/// The topic the spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRequest {
    /// The brokers and how to reach them (TLS, SASL).
    pub kafka: KafkaConnection,
    /// Topic name.
    pub topic: String,
    /// Partitions wanted.
    pub partitions: i32,
    /// Replication factor used when creating it.
    pub replication_factor: i32,
}

/// Creates a topic when missing and reports what it found; never changes
/// an existing topic's partitions.
pub trait TopicAdmin: Send + Sync {
    /// Ensures `req.topic` exists; a different partition count is reported
    /// as [`TopicState::Mismatch`], not fixed.
    fn ensure<'a>(&'a self, req: &'a TopicRequest) -> BoxFuture<'a, anyhow::Result<TopicState>>;
}

/// [`TopicAdmin`] over a real broker.
#[derive(Debug, Clone)]
pub struct KafkaTopicAdmin {
    /// Timeout of each admin operation.
    pub timeout: Duration,
}

impl TopicAdmin for KafkaTopicAdmin {
    fn ensure<'a>(&'a self, req: &'a TopicRequest) -> BoxFuture<'a, anyhow::Result<TopicState>> {
        Box::pin(chatpipe_core::kafka::ensure_topic(
            &req.kafka,
            &req.topic,
            req.partitions,
            req.replication_factor,
            self.timeout,
        ))
    }
}
