//! Helpers shared by the ingest integration tests: an in-process ingest on
//! a fresh database and a unique topic, HTTP posting (also raw, byte by
//! byte, for slow and stalled clients), topic end offsets, reading records
//! back, seeding rows, and a black-hole "broker" that accepts connections
//! and never answers.
//!
//! The tests count records by the topic's end offsets, so they use a broker
//! of their own with file storage ([`PrivateBroker`]): Tansu 0.6.0's
//! `memory://` engine reports the end offset of a partition as the last
//! batch's base offset + 1 (and cannot fetch from an offset inside a
//! multi-record batch), which miscounts whenever the producer batches.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_ingest::{IngestArgs, Running};
use chatpipe_tests::{create_topic, PrivateBroker, TestDb};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// `IngestArgs` for `db`/`bootstrap`/`topic` on a free port, plus `extra`
/// flags. Each ingest gets a replica name of its own (in-process replicas
/// share a pid) unless `extra` names one.
pub fn args(db_url: &str, bootstrap: &str, topic: &str, extra: &[&str]) -> IngestArgs {
    let replica = format!("ingest-test-{}", Uuid::new_v4().simple());
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
    if !extra.contains(&"--replica-name") {
        argv.extend_from_slice(&["--replica-name", &replica]);
    }
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
        &chatpipe_core::kafka::KafkaConnection::plaintext(bootstrap),
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

/// A POST answer with its headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// POSTs `body` to `<base>/webhook/`; returns status, headers and JSON body.
pub async fn post_full(http: &reqwest::Client, base: &str, body: &Value) -> Answer {
    let r = http
        .post(format!("{base}/webhook/"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// Inserts a `messages` row directly (as the processor would).
pub async fn seed_message(url: &str, id: Uuid, conversation_id: Uuid, direction: &str) {
    let c = chatpipe_core::db::connect(url).await.unwrap();
    c.execute(
        "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) \
         VALUES ($1, $2, $3, 'seeded', now(), now())",
        &[&id, &conversation_id, &direction],
    )
    .await
    .unwrap();
}

/// Number of rows in `messages`.
pub async fn message_count(url: &str) -> i64 {
    let c = chatpipe_core::db::connect(url).await.unwrap();
    c.query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0)
}

/// The `ingest_inflight` row of `replica`: `None` when absent, else
/// `(oldest_inflight_ms, heartbeat_at)`.
pub async fn inflight_row(
    url: &str,
    replica: &str,
) -> Option<(Option<i64>, chrono::DateTime<chrono::Utc>)> {
    let c = chatpipe_core::db::connect(url).await.unwrap();
    c.query_opt(
        "SELECT oldest_inflight_ms, heartbeat_at FROM ingest_inflight WHERE replica = $1",
        &[&replica],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// The text of `<base>/metrics`.
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A raw HTTP/1.1 connection, for clients that send slowly or stall.
pub struct RawClient {
    stream: TcpStream,
    buffered: Vec<u8>,
}

/// A raw answer: status, lower-cased headers, body bytes.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buffered: Vec::new(),
        }
    }

    /// The head of `POST /webhook/` with a body of `content_length` bytes.
    pub fn head(content_length: usize) -> Vec<u8> {
        format!(
            "POST /webhook/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
        )
        .into_bytes()
    }

    /// Writes `bytes` and flushes them.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads until the server closes the connection; returns everything
    /// read that no answer consumed.
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buffered);
        self.stream.read_to_end(&mut rest).await.unwrap_or(0);
        rest
    }

    /// Reads one answer (with a `content-length` body).
    pub async fn answer(&mut self) -> RawAnswer {
        let mut buf = std::mem::take(&mut self.buffered);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before an answer: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        self.buffered = buf.split_off(head_end + length);
        RawAnswer {
            status,
            headers,
            body: buf[head_end..].to_vec(),
        }
    }
}

/// A "broker" that accepts connections and never answers: produces to it
/// wait until the produce timeout. Lives until dropped.
pub struct BlackHole {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    /// Listens on a free loopback port.
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        BlackHole { addr, task }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
