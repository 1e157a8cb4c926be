//! Helpers shared by the real-component tests: producing records the way
//! ingest does (key = conversation id, CreateTime = arrival, no headers),
//! starting the processor binary, and reading the resulting rows.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatpipe_core::kafka::{producer_config, KafkaConnection};
use chatpipe_core::Event;
use chatpipe_tests::{Service, TestDb};
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

/// A producer writing records exactly like ingest.
pub struct Producer {
    inner: FutureProducer,
    topic: String,
}

impl Producer {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        Self::with_linger(bootstrap, topic, Duration::from_millis(5))
    }

    /// A producer batching records for `linger` (fewer, larger produce
    /// requests: lighter on a SQLite-backed broker).
    pub fn with_linger(bootstrap: &str, topic: &str, linger: Duration) -> Self {
        let inner = producer_config(
            &KafkaConnection::plaintext(bootstrap),
            Duration::from_secs(120),
            linger,
        )
        .create()
        .unwrap();
        Producer {
            inner,
            topic: topic.to_owned(),
        }
    }

    /// Sends `event` with arrival = now; returns the arrival (ms).
    pub async fn send(&self, event: &Event) -> i64 {
        let now = Utc::now().timestamp_millis();
        self.send_at(event, now).await;
        now
    }

    /// [`Producer::send`] taking the event by value.
    pub async fn send_ev(&self, event: Event) -> i64 {
        self.send(&event).await
    }

    /// Sends an arbitrary payload under `key` with record timestamp
    /// `arrival_ms` (a writer other than ingest: nothing validated).
    pub async fn send_raw(&self, key: &str, payload: &[u8], arrival_ms: i64) {
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .timestamp(arrival_ms);
        self.inner
            .send(record, Duration::from_secs(120))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// Sends `event` with record timestamp `arrival_ms`.
    pub async fn send_at(&self, event: &Event, arrival_ms: i64) {
        let key = event.conversation_id().hyphenated().to_string();
        let payload = event.encode();
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .timestamp(arrival_ms);
        self.inner
            .send(record, Duration::from_secs(120))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

pub fn conv(id: Uuid) -> Event {
    Event::NewConversation {
        id,
        timestamp: Utc::now(),
    }
}
pub fn close(id: Uuid) -> Event {
    Event::CloseConversation {
        id,
        timestamp: Utc::now(),
    }
}
pub fn msg(id: Uuid, c: Uuid) -> Event {
    Event::NewMessage {
        id,
        conversation_id: c,
        content: format!("content of {id}"),
        timestamp: Utc::now(),
    }
}

/// Starts `chatpipe-processor` on `topic` with extra env settings.
pub async fn processor(
    db: &TestDb,
    bootstrap: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> Service {
    let mut envs: Vec<(&str, &str)> = vec![
        ("CHATPIPE_POSTGRES_URL", &db.url),
        ("CHATPIPE_KAFKA_BROKERS", bootstrap),
        ("CHATPIPE_KAFKA_TOPIC", topic),
    ];
    envs.extend_from_slice(extra);
    Service::spawn("chatpipe-processor", &envs).await.unwrap()
}

/// A comparable picture of what the processor wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// INBOUND ids.
    pub inbound: BTreeSet<Uuid>,
    /// (conversation, reply text) of every OUTBOUND.
    pub replies: BTreeSet<(Uuid, String)>,
    /// Number of OUTBOUND rows.
    pub reply_rows: i64,
    /// INBOUND rows without reply.
    pub unreplied: i64,
    /// (event id, reason) of rejections.
    pub rejected: BTreeSet<(Uuid, String)>,
    /// Conversation statuses.
    pub conversations: BTreeMap<Uuid, String>,
}

pub async fn snapshot(db: &TestDb) -> Snapshot {
    let c = db.client().await.unwrap();
    let inbound = c
        .query("SELECT id FROM messages WHERE direction = 'INBOUND'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows = c
        .query(
            "SELECT conversation_id, content FROM messages WHERE direction = 'OUTBOUND'",
            &[],
        )
        .await
        .unwrap();
    let reply_rows = rows.len() as i64;
    let replies = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let unreplied: i64 = c
        .query_one(
            "SELECT count(*) FROM messages WHERE direction = 'INBOUND' AND reply_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rejected = c
        .query("SELECT event_id, reason FROM rejected_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let conversations = c
        .query("SELECT id, status FROM conversations", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Snapshot {
        inbound,
        replies,
        reply_rows,
        unreplied,
        rejected,
        conversations,
    }
}

/// Replies of one conversation: (content, timestamp ms, written_at ms).
pub async fn replies_of(db: &TestDb, conversation: Uuid) -> Vec<(String, i64, i64)> {
    let c = db.client().await.unwrap();
    c.query(
        "SELECT content, (extract(epoch from \"timestamp\") * 1000)::int8,
                (extract(epoch from written_at) * 1000)::int8
           FROM messages WHERE conversation_id = $1 AND direction = 'OUTBOUND' ORDER BY \"timestamp\"",
        &[&conversation],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// INBOUND rows of one conversation: (id, reply_id), in arrival order.
pub async fn inbound_of(db: &TestDb, conversation: Uuid) -> Vec<(Uuid, Option<Uuid>)> {
    let c = db.client().await.unwrap();
    c.query(
        "SELECT id, reply_id FROM messages
          WHERE conversation_id = $1 AND direction = 'INBOUND' ORDER BY arrival, id",
        &[&conversation],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Rejection reasons recorded for an event id.
pub async fn rejections_of(db: &TestDb, event_id: Uuid) -> Vec<String> {
    let c = db.client().await.unwrap();
    c.query(
        "SELECT reason FROM rejected_events WHERE event_id = $1 ORDER BY id",
        &[&event_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}
