//! Helpers shared by the ingest integration tests: an in-process ingest on
//! a fresh database and a unique topic, HTTP posting, topic end offsets and
//! reading records back.
//!
//! The tests count records by the topic's end offsets, so they use a broker
//! of their own with file storage ([`PrivateBroker`]): Tansu 0.6.0's
//! `memory://` engine reports the end offset of a partition as the last
//! batch's base offset + 1 (and cannot fetch from an offset inside a
//! multi-record batch), which miscounts whenever the producer batches.

#![allow(dead_code)]

use std::time::Duration;

use chatpipe_ingest::{IngestArgs, Running};
use chatpipe_tests::{create_topic, PrivateBroker, TestDb};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

/// An in-process ingest with its own database and topic.
pub struct Env {
    pub broker: PrivateBroker,
    pub db: TestDb,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub ingest: Running,
    pub http: reqwest::Client,
}

/// `IngestArgs` for `db`/`bootstrap`/`topic` on a free port, plus `extra` flags.
pub fn args(db_url: &str, bootstrap: &str, topic: &str, extra: &[&str]) -> IngestArgs {
    let mut argv = vec![
        "chatpipe-ingest",
        "--listen",
        "127.0.0.1:0",
        "--postgres-url",
        db_url,
        "--kafka-brokers",
        bootstrap,
        "--kafka-topic",
        topic,
        "--kafka-linger",
        "1ms",
    ];
    argv.extend_from_slice(extra);
    IngestArgs::try_parse_from(argv).unwrap()
}

impl Env {
    /// Fresh database, a topic with `partitions` partitions on a broker of
    /// its own, and an ingest serving them.
    pub async fn start(partitions: i32, extra: &[&str]) -> Env {
        let db = TestDb::create().await.unwrap();
        let broker = PrivateBroker::start().await.unwrap();
        let bootstrap = broker.bootstrap.clone();
        let topic = create_topic(&bootstrap, partitions).await;
        let ingest = chatpipe_ingest::spawn(args(&db.url, &bootstrap, &topic, extra))
            .await
            .unwrap();
        Env {
            broker,
            db,
            bootstrap,
            topic,
            partitions,
            ingest,
            http: client(),
        }
    }

    /// A second ingest replica on the same database and topic.
    pub async fn replica(&self) -> Running {
        chatpipe_ingest::spawn(args(&self.db.url, &self.bootstrap, &self.topic, &[]))
            .await
            .unwrap()
    }

    /// POSTs `body` to this ingest's `/webhook/`.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        post(&self.http, &self.ingest.base_url(), body).await
    }

    /// Sum of the topic's end offsets (= records written, single writer).
    pub async fn records(&self) -> i64 {
        end_offsets(&self.bootstrap, &self.topic, self.partitions)
            .await
            .iter()
            .sum()
    }

    /// The conversation row `(status, created_at, updated_at, closed_at)`.
    pub async fn row(&self, id: Uuid) -> Option<ConversationRow> {
        conversation_row(&self.db.url, id).await
    }
}

/// A `conversations` row.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationRow {
    pub status: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Reads conversation `id` from the database at `url`.
pub async fn conversation_row(url: &str, id: Uuid) -> Option<ConversationRow> {
    let c = chatpipe_core::db::connect(url).await.unwrap();
    c.query_opt(
        "SELECT status, created_at, updated_at, closed_at FROM conversations WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| ConversationRow {
        status: r.get(0),
        created_at: r.get(1),
        updated_at: r.get(2),
        closed_at: r.get(3),
    })
}

/// Number of rows in `conversations`.
pub async fn conversation_count(url: &str) -> i64 {
    let c = chatpipe_core::db::connect(url).await.unwrap();
    c.query_one("SELECT count(*) FROM conversations", &[])
        .await
        .unwrap()
        .get(0)
}

/// An HTTP client for the tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs `body` to `<base>/webhook/`; returns status and JSON body.
pub async fn post(http: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    post_raw(http, base, "/webhook/", body.to_string().into_bytes()).await
}

/// POSTs raw bytes to `<base><path>`.
pub async fn post_raw(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let r = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let json = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, json)
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    chatpipe_core::kafka::consumer_config(
        bootstrap,
        &format!("ingest-test-{}", Uuid::new_v4().simple()),
        Duration::from_millis(10),
    )
    .create()
    .unwrap()
}

/// High watermark of every partition of `topic`.
pub async fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&bootstrap);
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Reads the record at `offset` of `partition`.
pub async fn read_record(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedMessage {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&bootstrap);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
            .unwrap();
        c.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no record at {topic}/{partition}@{offset}"
            );
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.offset() == offset => return m.detach(),
                Some(Ok(_)) | None => {}
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => panic!("consume error: {e}"),
            }
        }
    })
    .await
    .unwrap()
}
