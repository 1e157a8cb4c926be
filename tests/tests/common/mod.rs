//! Shared harness of the conformance suite: a whole pipeline (fresh
//! database, unique topic, the real `chatpipe-ingest`, `chatpipe-processor`
//! and `chatpipe-api` binaries) and HTTP helpers that poll the api with a
//! deadline instead of sleeping.
#![allow(dead_code)]

use std::time::Duration;

use chatpipe_tests::{create_topic, kafka_bootstrap, PrivateBroker, Service, TestDb};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

/// Longest wait for any eventual outcome (replies, rejections).
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// How a pipeline is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Grouping gap G (processor `CHATPIPE_GROUPING_GAP`).
    pub gap: Duration,
    /// Late-arrival tolerance L (processor `CHATPIPE_LATE_TOLERANCE`).
    pub tolerance: Duration,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Processor replicas (each owns partitions p with p mod N == ordinal).
    pub processors: usize,
    /// Extra environment of the ingest.
    pub ingest_env: Vec<(String, String)>,
    /// Extra environment of every processor replica (e.g.
    /// `CHATPIPE_MAX_GROUP_MESSAGES`).
    pub processor_env: Vec<(String, String)>,
    /// Extra environment of the api (e.g. `CHATPIPE_API_JWT_SECRET`).
    pub api_env: Vec<(String, String)>,
    /// Run on a broker of the test's own (that it may stop and restart)
    /// instead of the shared one.
    pub private_broker: bool,
}

impl Options {
    /// Shortened windows: G = 400 ms, L = 600 ms, 2 partitions, 1 processor.
    pub fn short() -> Options {
        Options {
            gap: Duration::from_millis(400),
            tolerance: Duration::from_millis(600),
            partitions: 2,
            processors: 1,
            ingest_env: Vec::new(),
            processor_env: Vec::new(),
            api_env: Vec::new(),
            private_broker: false,
        }
    }

    /// The spec's windows: G = 5 s, L = 6 s.
    pub fn real() -> Options {
        Options {
            gap: Duration::from_secs(5),
            tolerance: Duration::from_secs(6),
            ..Options::short()
        }
    }
}

/// A running pipeline. Every process is killed and the database dropped on drop.
pub struct Pipeline {
    /// Options it was started with.
    pub opts: Options,
    /// Broker bootstrap.
    pub bootstrap: String,
    /// Its topic.
    pub topic: String,
    /// Ingest service.
    pub ingest: Service,
    /// Processor replicas.
    pub processors: Vec<Service>,
    /// Api service.
    pub api: Service,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The test's own broker, when [`Options::private_broker`].
    pub broker: Option<PrivateBroker>,
    /// Its database (last: fields drop in order, so the processes are
    /// killed before the database is dropped).
    pub db: TestDb,
}

/// The answer to one webhook POST, with the wall-clock bounds of its arrival.
#[derive(Debug, Clone)]
pub struct Posted {
    /// HTTP status.
    pub status: u16,
    /// JSON body (or the raw text as a JSON string).
    pub body: Value,
    /// Wall clock just before the request was sent.
    pub before: DateTime<Utc>,
    /// Wall clock just after the answer arrived.
    pub after: DateTime<Utc>,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
}

impl Posted {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Pipeline {
    /// Starts database, topic, ingest, processors and api.
    pub async fn start(opts: Options) -> Pipeline {
        let db = TestDb::create().await.expect("test database");
        let broker = if opts.private_broker {
            Some(PrivateBroker::start().await.expect("private broker"))
        } else {
            None
        };
        let bootstrap = match &broker {
            Some(b) => b.bootstrap.clone(),
            None => kafka_bootstrap().await,
        };
        let topic = create_topic(&bootstrap, opts.partitions).await;
        let common = [
            ("CHATPIPE_POSTGRES_URL", db.url.as_str()),
            ("CHATPIPE_KAFKA_BROKERS", bootstrap.as_str()),
            ("CHATPIPE_KAFKA_TOPIC", topic.as_str()),
        ];
        let mut ingest_env: Vec<(&str, &str)> = common.to_vec();
        for (k, v) in &opts.ingest_env {
            ingest_env.push((k.as_str(), v.as_str()));
        }
        let (gap, tol) = (ms(opts.gap), ms(opts.tolerance));
        let replicas = opts.processors.to_string();
        let ingest = Service::spawn("chatpipe-ingest", &ingest_env)
            .await
            .expect("chatpipe-ingest did not start");
        let mut processors = Vec::new();
        for ordinal in 0..opts.processors {
            let ordinal = ordinal.to_string();
            let mut env = common.to_vec();
            env.extend([
                ("CHATPIPE_GROUPING_GAP", gap.as_str()),
                ("CHATPIPE_LATE_TOLERANCE", tol.as_str()),
                ("CHATPIPE_PROCESSOR_REPLICAS", replicas.as_str()),
                ("CHATPIPE_PROCESSOR_ORDINAL", ordinal.as_str()),
            ]);
            for (k, v) in &opts.processor_env {
                env.push((k.as_str(), v.as_str()));
            }
            processors.push(
                Service::spawn("chatpipe-processor", &env)
                    .await
                    .expect("chatpipe-processor did not start"),
            );
        }
        let mut api_env = vec![
            ("CHATPIPE_POSTGRES_URL", db.url.as_str()),
            ("CHATPIPE_API_DB_ROLE", "chatpipe_api_readonly"),
        ];
        for (k, v) in &opts.api_env {
            api_env.push((k.as_str(), v.as_str()));
        }
        let api = Service::spawn("chatpipe-api", &api_env)
            .await
            .expect("chatpipe-api did not start");
        Pipeline {
            opts,
            db,
            bootstrap,
            broker,
            topic,
            ingest,
            processors,
            api,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
        }
    }

    /// POSTs a webhook body to the ingest.
    pub async fn post(&self, body: &Value) -> Posted {
        self.post_raw(body.to_string().into_bytes()).await
    }

    /// Starts one more ingest replica on the same database and topic.
    pub async fn spawn_ingest(&self) -> Service {
        let mut env = vec![
            ("CHATPIPE_POSTGRES_URL", self.db.url.as_str()),
            ("CHATPIPE_KAFKA_BROKERS", self.bootstrap.as_str()),
            ("CHATPIPE_KAFKA_TOPIC", self.topic.as_str()),
        ];
        for (k, v) in &self.opts.ingest_env {
            env.push((k.as_str(), v.as_str()));
        }
        Service::spawn("chatpipe-ingest", &env)
            .await
            .expect("second chatpipe-ingest did not start")
    }

    /// POSTs a webhook body to the ingest at `base` (another replica).
    pub async fn post_to(&self, base: &str, body: &Value) -> Posted {
        let before = Utc::now();
        let res = self
            .http
            .post(format!("{base}/webhook/"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /webhook/");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.unwrap_or_default();
        let mut body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if let (Some(r), Some(obj)) = (retry_after, body.as_object_mut()) {
            obj.insert("__retry_after".into(), Value::String(r));
        }
        Posted {
            status,
            body,
            before,
            after: Utc::now(),
            headers,
        }
    }

    /// POSTs raw bytes (declared as JSON) to the ingest.
    pub async fn post_raw(&self, bytes: Vec<u8>) -> Posted {
        let before = Utc::now();
        let res = self
            .http
            .post(format!("{}/webhook/", self.ingest.base_url()))
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .expect("POST /webhook/");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let after = Utc::now();
        Posted {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
            before,
            after,
            headers,
        }
    }

    /// POSTs and asserts the status.
    pub async fn post_ok(&self, body: &Value, status: u16) -> Posted {
        let p = self.post(body).await;
        assert_eq!(
            p.status, status,
            "POST {body} answered {}: {}",
            p.status, p.body
        );
        p
    }

    /// GETs a path of the api: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{}", self.api.base_url(), path))
            .send()
            .await
            .expect("GET api");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /conversations/{id}/` when it answers 200.
    pub async fn conversation(&self, id: Uuid) -> Option<Value> {
        match self.get(&format!("/conversations/{id}/")).await {
            (200, v) => Some(v),
            _ => None,
        }
    }

    /// Polls the conversation until `pred` holds; panics with the last view
    /// after [`EVENTUALLY`].
    pub async fn wait_conversation(
        &self,
        id: Uuid,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        let mut last = None;
        loop {
            if let Some(v) = self.conversation(id).await {
                if pred(&v) {
                    return v;
                }
                last = Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {EVENTUALLY:?} waiting for {what}; conversation {id} was {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the conversation has `n` OUTBOUND messages and returns it.
    pub async fn wait_replies(&self, id: Uuid, n: usize) -> Value {
        self.wait_conversation(id, &format!("{n} OUTBOUND message(s)"), |v| {
            outbound(v).len() >= n
        })
        .await
    }

    /// Rejected events of a conversation (newest first).
    pub async fn rejected(&self, conversation: Uuid) -> Vec<Value> {
        let (status, body) = self
            .get(&format!(
                "/rejected-events?conversation_id={conversation}&limit=500"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        body["rejected_events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until event `event_id` of `conversation` is listed as rejected.
    pub async fn wait_rejected(&self, conversation: Uuid, event_id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        loop {
            if let Some(r) = self
                .rejected(conversation)
                .await
                .into_iter()
                .find(|r| r["event_id"] == event_id.to_string())
            {
                return r;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for the rejection of {event_id} (conversation {conversation})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Produces an event straight to the topic (as an ingest replica would),
    /// bypassing the ingest's lifecycle checks; record timestamp = now.
    pub async fn produce_direct(&self, event: &chatpipe_core::event::Event) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = chatpipe_core::kafka::producer_config(
            &chatpipe_core::kafka::KafkaConnection::plaintext(&self.bootstrap),
            Duration::from_secs(10),
            Duration::from_millis(1),
        )
        .create()
        .expect("producer");
        let key = event.conversation_id().to_string();
        let payload = event.encode();
        producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(Utc::now().timestamp_millis()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// Messages of a conversation view.
pub fn messages(v: &Value) -> Vec<Value> {
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// OUTBOUND messages of a conversation view.
pub fn outbound(v: &Value) -> Vec<Value> {
    messages(v)
        .into_iter()
        .filter(|m| m["type"] == "OUTBOUND")
        .collect()
}

/// Ids of the INBOUND messages of a conversation view.
pub fn inbound_ids(v: &Value) -> Vec<String> {
    messages(v)
        .into_iter()
        .filter(|m| m["type"] == "INBOUND")
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Parses an RFC 3339 timestamp of a response.
pub fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("timestamp string"))
        .expect("RFC 3339 timestamp")
        .with_timezone(&Utc)
}

/// A fixed event time for payloads (the api shows it back).
pub fn event_time(offset_secs: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-04T14:20:00Z")
        .expect("constant")
        .with_timezone(&Utc)
        + chrono::Duration::seconds(offset_secs)
}

/// `Duration` → `chrono::Duration`.
pub fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).expect("duration in range")
}
