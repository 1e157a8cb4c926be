//! Hostile input, end to end (real binaries, real broker, real Postgres,
//! shortened windows): bodies and records that a careless pipeline would
//! store wrongly, choke on, or let stall a partition. Every case asserts the
//! exact HTTP answer (or the visible rejection) and then that fresh
//! conversations on every partition are still answered
//! ([`assert_pipeline_alive`]).
//!
//! Waits are bounded ("eventually, within G + slack"), never latency
//! thresholds: the slack only bounds how long a broken pipeline may take to
//! fail the test.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chatpipe_core::event::Event;
use chatpipe_tests::{
    close_conversation, eventually, expected_reply, new_conversation, new_message, Service,
};
use chrono::{DateTime, Utc};
use common::{event_time, inbound_ids, messages, outbound, Options, Pipeline, Posted, EVENTUALLY};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Slack on top of G for a fresh conversation's reply (bounds a failure,
/// not a latency requirement: a loaded two-core machine must not flake).
const ALIVE_SLACK: Duration = Duration::from_secs(20);

/// Reasons the processor may give a NEW_MESSAGE whose id is taken.
const ID_TAKEN_REASONS: [&str; 2] = ["id_reused_with_different_content", "id_used_by_reply"];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The partition of the topic that a conversation's records go to (the
/// Java-compatible murmur2 placement ingest uses).
fn partition_of(conversation: Uuid, partitions: i32) -> i32 {
    chatpipe_core::murmur2::partition_for_key(conversation.to_string().as_bytes(), partitions)
}

/// A fresh conversation id whose records land on `partition`.
fn conversation_on_partition(partition: i32, partitions: i32) -> Uuid {
    loop {
        let c = Uuid::new_v4();
        if partition_of(c, partitions) == partition {
            return c;
        }
    }
}

/// Opens one fresh conversation per partition, posts one message to each,
/// and waits (G + slack from its post) for each one's exact reply.
async fn assert_pipeline_alive(p: &Pipeline) {
    let n = p.opts.partitions;
    let mut sent = Vec::new();
    for partition in 0..n {
        let c = conversation_on_partition(partition, n);
        let m = Uuid::new_v4();
        p.post_ok(&new_conversation(c, event_time(0)), 201).await;
        p.post_ok(&new_message(m, c, "ainda vivo?", event_time(1)), 202)
            .await;
        sent.push((partition, c, m, tokio::time::Instant::now()));
    }
    for (partition, c, m, at) in sent {
        let budget =
            (at + p.opts.gap + ALIVE_SLACK).saturating_duration_since(tokio::time::Instant::now());
        let want = expected_reply(&[m]);
        let view = eventually(
            budget,
            &format!("the reply to a fresh conversation {c} on partition {partition}"),
            || async { p.conversation(c).await.filter(|v| !outbound(v).is_empty()) },
        )
        .await
        .unwrap_or_else(|e| panic!("pipeline not alive on partition {partition}: {e:#}"));
        let replies = outbound(&view);
        assert_eq!(replies.len(), 1, "partition {partition}: {view}");
        assert_eq!(replies[0]["content"], want, "partition {partition}: {view}");
    }
}

/// Asserts a `400` naming `field`, with a non-empty error.
fn assert_400_field(r: &Posted, field: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: answered {}: {}", r.status, r.body);
    assert_eq!(r.body["field"], field, "{what}: {}", r.body);
    assert!(
        r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {}",
        r.body
    );
}

/// Produces `event` straight to the pipeline's topic (bypassing ingest),
/// keyed by its conversation, with record timestamp `timestamp_ms`.
async fn produce_at(p: &Pipeline, event: &Event, timestamp_ms: i64) -> (i32, i64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = chatpipe_core::kafka::producer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&p.bootstrap),
        Duration::from_secs(10),
        Duration::from_millis(1),
    )
    .create()
    .expect("producer");
    let key = event.conversation_id().to_string();
    let payload = event.encode();
    let delivered = producer
        .send(
            FutureRecord::to(&p.topic)
                .key(&key)
                .payload(&payload)
                .timestamp(timestamp_ms),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    (delivered.partition, delivered.offset)
}

/// Records in the pipeline's topic (all partitions).
async fn topic_record_count(p: &Pipeline) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = chatpipe_core::kafka::consumer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&p.bootstrap),
        "hostile-probe",
        Duration::from_millis(10),
    )
    .create()
    .expect("consumer");
    let mut total = 0;
    for partition in 0..p.opts.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&p.topic, partition, Duration::from_secs(10))
            .expect("watermarks");
        total += high - low;
    }
    total
}

/// The body of `GET {base}{path}` as text, with its status.
async fn get_text(p: &Pipeline, base: &str, path: &str) -> (u16, String) {
    let res = p
        .http
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("GET");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_default())
}

/// Sum of the samples of metric `name` (Prometheus text format) whose line
/// contains every string of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|s| l.contains(s)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until processor replica `i`'s metric reaches `at_least`.
async fn wait_processor_metric(p: &Pipeline, i: usize, name: &str, labels: &[&str], at_least: f64) {
    let base = p.processors[i].base_url();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let (_, text) = get_text(p, &base, "/metrics").await;
        if metric_sum(&text, name, labels) >= at_least {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
            panic!(
                "timed out after {EVENTUALLY:?} waiting for {name}{labels:?} >= {at_least}; the processor's /metrics lines for it: {lines:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until processor replica `i` answers `/readyz` with 200; returns its body.
async fn wait_processor_ready(p: &Pipeline, i: usize) -> Value {
    let base = p.processors[i].base_url();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let (status, text) = get_text(p, &base, "/readyz").await;
        if status == 200 {
            return serde_json::from_str(&text).unwrap_or(Value::String(text));
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("processor /readyz not 200 after {EVENTUALLY:?}: {status} {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ids listed in the OUTBOUND replies of a view, reply by reply.
fn reply_groups(view: &Value) -> Vec<Vec<String>> {
    outbound(view)
        .iter()
        .map(|r| {
            r["content"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    head: String,
    body: String,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }
}

/// The head of a webhook POST with `extra` header lines.
fn request_head(extra: &str) -> String {
    format!(
        "POST /webhook/ HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n{extra}\r\n"
    )
}

/// Reads one HTTP/1.1 answer from `stream` (head, then a body of
/// `content-length` bytes or up to EOF), failing after `timeout`.
async fn read_answer(stream: &mut TcpStream, timeout: Duration) -> anyhow::Result<RawAnswer> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!(
                    "connection closed before an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line: {head:?}"))?;
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        });
        let mut body = buf[head_end..].to_vec();
        loop {
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(_) if length.is_none() => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok(RawAnswer {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

/// Sends `bytes` on a new connection to `base` (`http://host:port`) and
/// reads the answer. Write errors are ignored (a server may answer and
/// close before reading everything).
async fn raw_exchange(base: &str, bytes: Vec<u8>, timeout: Duration) -> RawAnswer {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let _ = stream.write_all(&bytes).await;
    let _ = stream.flush().await;
    read_answer(&mut stream, timeout)
        .await
        .unwrap_or_else(|e| panic!("raw request to {addr}: {e:#}"))
}

// ---------------------------------------------------------------------------
// 1. NUL in content
// ---------------------------------------------------------------------------

#[tokio::test]
async fn nul_in_content_is_400_data_content_and_stores_nothing() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let m = Uuid::new_v4();
    let ts = "2025-06-04T14:20:01Z";
    for content in [r"\u0000", r"antes\u0000depois", r"\u0000\u0000"] {
        let body = format!(
            r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"{content}","conversation_id":"{c}"}}}}"#
        );
        let r = p.post_raw(body.clone().into_bytes()).await;
        assert_400_field(&r, "data.content", &body);
    }
    // Nothing stored: no record beyond the NEW_CONVERSATION, no message
    // row, no rejection.
    assert_eq!(
        topic_record_count(&p).await,
        1,
        "only the NEW_CONVERSATION may be in the log"
    );
    let db = p.db.client().await.unwrap();
    let rows: i64 = db
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "no message row may be written");
    assert!(p.rejected(c).await.is_empty());
    // The refused id was not burnt: the same id with storable content is
    // accepted and answered.
    p.post_ok(&new_message(m, c, "sem NUL", event_time(2)), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), [m.to_string()]);
    assert_eq!(messages(&view)[0]["content"], "sem NUL");
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 2. Timestamps at and beyond the ends of the representable range
// ---------------------------------------------------------------------------

#[tokio::test]
async fn timestamps_outside_years_1_to_9999_are_400_and_the_extremes_round_trip() {
    let p = Pipeline::start(Options::short()).await;
    // RFC 3339 allows these, but in UTC they fall in year 0 and year 10000.
    for ts in ["0000-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"] {
        let c = Uuid::new_v4();
        let body = json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": {"id": c}});
        let r = p.post(&body).await;
        assert_400_field(&r, "timestamp", &body.to_string());
        assert_eq!(p.get(&format!("/conversations/{c}/")).await.0, 404);
        // The same for the other event types.
        let open = Uuid::new_v4();
        p.post_ok(&new_conversation(open, event_time(0)), 201).await;
        let msg = json!({"type": "NEW_MESSAGE", "timestamp": ts,
                         "data": {"id": Uuid::new_v4(), "content": "x", "conversation_id": open}});
        assert_400_field(&p.post(&msg).await, "timestamp", &msg.to_string());
        let close = json!({"type": "CLOSE_CONVERSATION", "timestamp": ts, "data": {"id": open}});
        assert_400_field(&p.post(&close).await, "timestamp", &close.to_string());
    }
    // The extremes themselves are valid and survive the whole round trip
    // (ingest → log → processor → Postgres → api).
    for ts in ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
        let c = Uuid::new_v4();
        let body = json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": {"id": c}});
        let r = p.post(&body).await;
        assert_eq!(r.status, 201, "{body}: {}", r.body);
        let m = Uuid::new_v4();
        let msg = json!({"type": "NEW_MESSAGE", "timestamp": ts,
                         "data": {"id": m, "content": "nos extremos", "conversation_id": c}});
        let r = p.post(&msg).await;
        assert_eq!(r.status, 202, "{msg}: {}", r.body);
        let view = p.wait_replies(c, 1).await;
        assert_eq!(view["created_at"], ts, "{view}");
        let inbound: Vec<Value> = messages(&view)
            .into_iter()
            .filter(|m| m["type"] == "INBOUND")
            .collect();
        assert_eq!(inbound.len(), 1, "{view}");
        assert_eq!(inbound[0]["id"], m.to_string());
        assert_eq!(inbound[0]["timestamp"], ts, "{view}");
        assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
        let close = json!({"type": "CLOSE_CONVERSATION", "timestamp": ts, "data": {"id": c}});
        let r = p.post(&close).await;
        assert_eq!(r.status, 200, "{close}: {}", r.body);
        let view = p
            .wait_conversation(c, "status CLOSED", |v| v["status"] == "CLOSED")
            .await;
        assert_eq!(view["updated_at"], ts, "{view}");
    }
    assert!(
        p.get("/rejected-events?limit=500").await.1["rejected_events"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "nothing may be rejected"
    );
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 3. Message ids that are already taken
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_message_id_taken_by_a_reply_or_another_conversation_is_refused() {
    let p = Pipeline::start(Options::short()).await;
    let n = p.opts.partitions;
    let a = Uuid::new_v4();
    let m = Uuid::new_v4();
    p.post_ok(&new_conversation(a, event_time(0)), 201).await;
    p.post_ok(&new_message(m, a, "original", event_time(1)), 202)
        .await;
    let before = p.wait_replies(a, 1).await;
    let reply = outbound(&before)[0].clone();
    let reply_id: Uuid = reply["id"].as_str().unwrap().parse().unwrap();

    // Other conversations: one on another partition, one on a's.
    let b = conversation_on_partition((partition_of(a, n) + 1) % n, n);
    let same = conversation_on_partition(partition_of(a, n), n);
    for conv in [b, same] {
        p.post_ok(&new_conversation(conv, event_time(0)), 201).await;
    }

    // Ingest knows the reply's id and the stored message: 400 data.id.
    for (conv, id, what) in [
        (a, reply_id, "the reply's id in its own conversation"),
        (b, reply_id, "the reply's id in another conversation"),
        (b, m, "another conversation's message id"),
        (same, m, "another conversation's message id, same partition"),
    ] {
        let r = p
            .post(&new_message(id, conv, "reutilizado", event_time(2)))
            .await;
        assert_400_field(&r, "data.id", what);
    }

    // Records that reach the log anyway (an ingest that could not know
    // yet): the processor rejects them visibly and touches nothing.
    produce_at(
        &p,
        &Event::NewMessage {
            id: reply_id,
            conversation_id: b,
            content: "id da resposta".into(),
            timestamp: event_time(3),
        },
        Utc::now().timestamp_millis(),
    )
    .await;
    produce_at(
        &p,
        &Event::NewMessage {
            id: m,
            conversation_id: same,
            content: "id de outra conversa".into(),
            timestamp: event_time(3),
        },
        Utc::now().timestamp_millis(),
    )
    .await;
    for (conv, id) in [(b, reply_id), (same, m)] {
        let r = p.wait_rejected(conv, id).await;
        assert!(
            ID_TAKEN_REASONS.contains(&r["reason"].as_str().unwrap_or_default()),
            "{r}"
        );
    }

    // The race: a new id used in two conversations of one partition (so
    // the log orders them), the second posted before the first is stored.
    // Ingest refuses it (400 data.id) or, not knowing yet, accepts it and
    // the processor rejects it visibly.
    let raced = Uuid::new_v4();
    p.post_ok(&new_message(raced, a, "primeiro", event_time(4)), 202)
        .await;
    let r = p
        .post(&new_message(raced, same, "segundo", event_time(4)))
        .await;
    match r.status {
        400 => assert_400_field(&r, "data.id", "the raced reuse"),
        202 => {
            let rej = p.wait_rejected(same, raced).await;
            assert!(
                ID_TAKEN_REASONS.contains(&rej["reason"].as_str().unwrap_or_default()),
                "{rej}"
            );
        }
        other => panic!("the raced reuse answered {other}: {}", r.body),
    }

    // The originals are untouched: a's reply row and messages as before
    // (plus the raced message and its reply), nothing in b or same.
    let after = p.wait_replies(a, 2).await;
    let replies = outbound(&after);
    assert_eq!(replies[0], reply, "the reply row changed: {after}");
    let original = messages(&after)
        .into_iter()
        .find(|x| x["id"] == m.to_string())
        .unwrap();
    assert_eq!(original, messages(&before)[0], "{after}");
    let raced_row = messages(&after)
        .into_iter()
        .find(|x| x["id"] == raced.to_string())
        .unwrap();
    assert_eq!(raced_row["content"], "primeiro");
    assert_eq!(inbound_ids(&after), [m.to_string(), raced.to_string()]);
    assert_eq!(replies[1]["content"], expected_reply(&[raced]));
    for conv in [b, same] {
        let v = p.conversation(conv).await.unwrap();
        assert!(messages(&v).is_empty(), "{v}");
    }
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 4. Identical lifecycle redeliveries
// ---------------------------------------------------------------------------

#[tokio::test]
async fn identical_lifecycle_redeliveries_are_idempotent_replays() {
    let p = Pipeline::start(Options::short()).await;
    let base = p.ingest.base_url();
    let c = Uuid::new_v4();
    let created = new_conversation(c, event_time(0));
    let first = p.post_to(&base, &created).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_ne!(first.header("idempotent-replay").as_deref(), Some("true"));
    let again = p.post_to(&base, &created).await;
    assert_eq!(again.status, 201, "identical redelivery: {}", again.body);
    assert_eq!(
        again.header("idempotent-replay").as_deref(),
        Some("true"),
        "identical redelivery must carry Idempotent-Replay: true"
    );
    // A different event for the taken id is still refused.
    p.post_ok(&new_conversation(c, event_time(1)), 400).await;

    // The same NEW_CONVERSATION record a second time in the log (a retried
    // produce whose first attempt did land): a duplicate, not a rejection.
    produce_at(
        &p,
        &Event::NewConversation {
            id: c,
            timestamp: event_time(0),
        },
        Utc::now().timestamp_millis(),
    )
    .await;
    let m = Uuid::new_v4();
    p.post_ok(
        &new_message(m, c, "depois do duplicado", event_time(2)),
        202,
    )
    .await;
    let view = p.wait_replies(c, 1).await;
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
    assert_eq!(view["created_at"], "2025-06-04T14:20:00Z");

    let closed = close_conversation(c, event_time(5));
    let first = p.post_to(&base, &closed).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_ne!(first.header("idempotent-replay").as_deref(), Some("true"));
    let again = p.post_to(&base, &closed).await;
    assert_eq!(
        again.status, 200,
        "identical close redelivery: {}",
        again.body
    );
    assert_eq!(
        again.header("idempotent-replay").as_deref(),
        Some("true"),
        "identical close redelivery must carry Idempotent-Replay: true"
    );
    p.post_ok(&close_conversation(c, event_time(6)), 400).await;
    // And the same CLOSE record a second time in the log.
    produce_at(
        &p,
        &Event::CloseConversation {
            id: c,
            timestamp: event_time(5),
        },
        Utc::now().timestamp_millis(),
    )
    .await;

    // A later conversation on c's partition is answered, so the processor
    // has read past every record above.
    let n = p.opts.partitions;
    let later = conversation_on_partition(partition_of(c, n), n);
    let lm = Uuid::new_v4();
    p.post_ok(&new_conversation(later, event_time(0)), 201)
        .await;
    p.post_ok(&new_message(lm, later, "marcador", event_time(1)), 202)
        .await;
    p.wait_replies(later, 1).await;
    let view = p
        .wait_conversation(c, "status CLOSED", |v| v["status"] == "CLOSED")
        .await;
    assert_eq!(view["created_at"], "2025-06-04T14:20:00Z");
    assert_eq!(view["updated_at"], "2025-06-04T14:20:05Z");
    assert_eq!(outbound(&view).len(), 1, "{view}");
    let rejected = p.rejected(c).await;
    assert!(
        rejected.is_empty(),
        "identical redeliveries must not be rejections: {rejected:?}"
    );
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 5. Bounded groups
// ---------------------------------------------------------------------------

/// Posts `count` messages to `c` every `every`, checking that each arrival
/// gap was below G (else the case would test something else).
async fn trickle(p: &Pipeline, c: Uuid, count: usize, every: Duration) -> Vec<(Uuid, Posted)> {
    let mut sent: Vec<(Uuid, Posted)> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..count {
        tick.tick().await;
        let m = Uuid::new_v4();
        let posted = p
            .post_ok(
                &new_message(m, c, &format!("m{i}"), event_time(1 + i as i64)),
                202,
            )
            .await;
        sent.push((m, posted));
    }
    let gap = common::chrono(p.opts.gap);
    for w in sent.windows(2) {
        let most = w[1].1.after - w[0].1.before;
        assert!(
            most < gap,
            "precondition: two arrivals were up to {most} apart (G = {gap}); the machine is too slow for this case"
        );
    }
    sent
}

#[tokio::test]
async fn a_group_is_answered_when_it_reaches_max_messages() {
    let mut opts = Options::short();
    opts.processor_env = vec![("CHATPIPE_MAX_GROUP_MESSAGES".into(), "5".into())];
    let p = Pipeline::start(opts).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let sent = trickle(&p, c, 12, Duration::from_millis(100)).await;
    let ids: Vec<Uuid> = sent.iter().map(|(m, _)| *m).collect();
    let view = p.wait_replies(c, 3).await;
    let want = [
        expected_reply(&ids[0..5]),
        expected_reply(&ids[5..10]),
        expected_reply(&ids[10..12]),
    ];
    let got: Vec<String> = outbound(&view)
        .iter()
        .map(|r| r["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(got, want, "replies of 5, 5 and 2 ids in order: {view}");
    tokio::time::sleep(p.opts.gap * 2).await;
    let later = p.conversation(c).await.unwrap();
    assert_eq!(outbound(&later).len(), 3, "{later}");
    assert_pipeline_alive(&p).await;
}

#[tokio::test]
async fn a_group_is_answered_when_it_reaches_max_span() {
    let span = Duration::from_secs(2);
    let mut opts = Options::short();
    opts.processor_env = vec![("CHATPIPE_MAX_GROUP_SPAN".into(), "2s".into())];
    let p = Pipeline::start(opts).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    // Every 300 ms (< G = 400 ms) for 5 s: one session without the cap.
    let sent = trickle(&p, c, 17, Duration::from_millis(300)).await;
    let ids: Vec<String> = sent.iter().map(|(m, _)| m.to_string()).collect();
    let view = p
        .wait_conversation(c, "every message answered", |v| {
            reply_groups(v).concat().len() >= ids.len()
        })
        .await;
    let groups = reply_groups(&view);
    assert_eq!(
        groups.concat(),
        ids,
        "every message answered exactly once, in arrival order: {view}"
    );
    assert!(
        groups.len() >= 3,
        "5 s of talk with a 2 s span cap needs at least 3 replies, got {}: {view}",
        groups.len()
    );
    let posted: HashMap<String, &Posted> = sent.iter().map(|(m, p)| (m.to_string(), p)).collect();
    let span = common::chrono(span);
    for g in &groups {
        let (first, last) = (posted[&g[0]], posted[&g[g.len() - 1]]);
        // The least the group can have spanned, from the POSTs' bounds.
        let least = last.before - first.after;
        assert!(
            least <= span,
            "a reply spans at least {least} > {span}: {g:?}"
        );
    }
    tokio::time::sleep(p.opts.gap * 2).await;
    let later = p.conversation(c).await.unwrap();
    assert_eq!(reply_groups(&later), groups, "{later}");
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 6. A record that is not an event (written past ingest)
// ---------------------------------------------------------------------------

/// A NEW_MESSAGE with a NUL in its content, written straight into the log
/// by something other than ingest: under the contract it is not an event
/// (the validator refuses NUL, which Postgres cannot store), so the
/// processor records it as `undecodable` with the validator's reason and
/// goes on. (The path where Postgres itself refuses a valid event's
/// effects, `storage_refused`, is driven with a refusing trigger in
/// `processor/tests/faults.rs`.)
#[tokio::test]
async fn a_record_that_is_not_an_event_is_recorded_and_the_partition_goes_on() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ok = Uuid::new_v4();
    p.post_ok(&new_message(ok, c, "antes", event_time(1)), 202)
        .await;
    p.wait_replies(c, 1).await;
    // Straight into the log, past ingest's validation.
    let poison = Uuid::new_v4();
    produce_at(
        &p,
        &Event::NewMessage {
            id: poison,
            conversation_id: c,
            content: "veneno\u{0}aqui".into(),
            timestamp: event_time(2),
        },
        Utc::now().timestamp_millis(),
    )
    .await;
    // Visible in the rejected events (checked in detail below, after the
    // liveness checks, so a failure there still reports whether the
    // partition went on).
    let r = p.wait_rejected(c, poison).await;
    wait_processor_ready(&p, 0).await;
    // The conversation itself goes on.
    let after = Uuid::new_v4();
    p.post_ok(&new_message(after, c, "depois", event_time(3)), 202)
        .await;
    let view = p.wait_replies(c, 2).await;
    assert_eq!(
        outbound(&view)[1]["content"],
        expected_reply(&[after]),
        "{view}"
    );
    assert!(!inbound_ids(&view).contains(&poison.to_string()), "{view}");
    assert_pipeline_alive(&p).await;
    assert_eq!(r["reason"], "undecodable", "{r}");
    let detail = r["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("data.content") && detail.contains("U+0000"),
        "the rejection must say why the record is not an event: {r}"
    );
    wait_processor_metric(
        &p,
        0,
        "chatpipe_processor_rejections_total",
        &["reason=\"undecodable\""],
        1.0,
    )
    .await;
    wait_processor_ready(&p, 0).await;
}

// ---------------------------------------------------------------------------
// 7. The log behind the stored positions is replaced
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_replaced_log_is_detected_reset_loudly_and_processed() {
    let mut opts = Options::short();
    opts.private_broker = true;
    let mut p = Pipeline::start(opts).await;
    // Traffic on every partition, so each stored position is past the end
    // of the new log even after the traffic below.
    assert_pipeline_alive(&p).await;
    assert_pipeline_alive(&p).await;

    p.processors[0].kill();
    p.ingest.kill();
    p.broker
        .as_mut()
        .unwrap()
        .replace_with_empty()
        .await
        .expect("a new empty broker");
    let state = chatpipe_core::kafka::ensure_topic(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&p.bootstrap),
        &p.topic,
        p.opts.partitions,
        1,
        Duration::from_secs(30),
    )
    .await
    .expect("recreating the topic");
    assert_eq!(state, chatpipe_core::kafka::TopicState::Created);
    p.ingest.start().await.expect("ingest restarts");
    p.processors[0].start().await.expect("processor restarts");

    // New messages are answered (not ignored below a stale position).
    assert_pipeline_alive(&p).await;

    let db = p.db.client().await.unwrap();
    let resets = eventually(EVENTUALLY, "a partition_resets row", || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM partition_resets WHERE kind = 'beyond_log_end' AND topic = $1",
                &[&p.topic],
            )
            .await
            .ok()?
            .get(0);
        (n >= 1).then_some(n)
    })
    .await
    .unwrap();
    assert!(resets >= 1);
    wait_processor_metric(
        &p,
        0,
        "chatpipe_processor_partition_resets_total",
        &["kind=\"beyond_log_end\""],
        1.0,
    )
    .await;
    let ready = wait_processor_ready(&p, 0).await;
    let warnings = ready["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("/readyz must list warnings: {ready}"));
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .is_some_and(|s| s.to_lowercase().contains("reset"))),
        "/readyz warnings must mention the reset: {ready}"
    );
}

// ---------------------------------------------------------------------------
// 8. Oversized and slow requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_slow_and_excess_requests_are_refused_without_harm() {
    let mut opts = Options::short();
    opts.ingest_env = vec![
        ("CHATPIPE_MAX_BODY_BYTES".into(), "8192".into()),
        ("CHATPIPE_BODY_READ_TIMEOUT".into(), "1s".into()),
    ];
    let p = Pipeline::start(opts).await;
    let base = p.ingest.base_url();
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;

    // Larger than the limit, declared by Content-Length.
    let big = json!({"type": "NEW_MESSAGE", "timestamp": "2025-06-04T14:20:01Z",
                     "data": {"id": Uuid::new_v4(), "content": "x", "conversation_id": c},
                     "pad": "y".repeat(9000)});
    assert_400_field(&p.post(&big).await, "body", "a body over the limit");
    // Larger than the limit, chunked (no length announced).
    let bytes = big.to_string();
    let mut req = request_head("transfer-encoding: chunked\r\n").into_bytes();
    for part in bytes.as_bytes().chunks(2048) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let a = raw_exchange(&base, req, EVENTUALLY).await;
    assert_eq!(a.status, 400, "chunked body over the limit: {a:?}");
    assert_eq!(a.json()["field"], "body", "{a:?}");

    // Headers and part of the body, then nothing: 408 once the body read
    // timeout (1 s) is over.
    let valid = new_message(Uuid::new_v4(), c, "devagar", event_time(2)).to_string();
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = request_head(&format!("content-length: {}\r\n", valid.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&valid.as_bytes()[..valid.len() / 2])
        .await
        .unwrap();
    let a = read_answer(&mut stream, Duration::from_secs(1) + ALIVE_SLACK)
        .await
        .expect("an answer to a stalled body");
    assert_eq!(a.status, 408, "{a:?}");
    assert!(
        a.header("content-type").is_some_and(|v| v.contains("json")),
        "{a:?}"
    );
    assert_eq!(a.json()["field"], "body", "{a:?}");
    assert!(a.json()["error"].is_string(), "{a:?}");
    drop(stream);

    // Concurrency limit: a replica serving at most 2 requests (with a long
    // body timeout, so the 2 slow ones stay open) sheds the third.
    let limited = Service::spawn(
        "chatpipe-ingest",
        &[
            ("CHATPIPE_POSTGRES_URL", p.db.url.as_str()),
            ("CHATPIPE_KAFKA_BROKERS", p.bootstrap.as_str()),
            ("CHATPIPE_KAFKA_TOPIC", p.topic.as_str()),
            ("CHATPIPE_MAX_CONCURRENT_REQUESTS", "2"),
            ("CHATPIPE_BODY_READ_TIMEOUT", "60s"),
        ],
    )
    .await
    .expect("limited ingest");
    let lbase = limited.base_url();
    let mut held = Vec::new();
    for _ in 0..2 {
        let conv = Uuid::new_v4();
        let body = new_conversation(conv, event_time(0)).to_string();
        let mut s = TcpStream::connect(lbase.trim_start_matches("http://"))
            .await
            .unwrap();
        let head = request_head(&format!("content-length: {}\r\n", body.len()));
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body.as_bytes()[..body.len() / 2])
            .await
            .unwrap();
        held.push((conv, body, s));
    }
    // Precondition: both are being served.
    eventually(EVENTUALLY, "2 webhook requests in flight", || async {
        let (_, text) = get_text(&p, &lbase, "/metrics").await;
        (metric_sum(&text, "chatpipe_ingest_in_flight_requests", &[]) >= 2.0).then_some(())
    })
    .await
    .unwrap();
    let shed_conv = Uuid::new_v4();
    let shed = p
        .post_to(&lbase, &new_conversation(shed_conv, event_time(0)))
        .await;
    assert_eq!(
        shed.status, 503,
        "third request beyond the limit: {}",
        shed.body
    );
    assert!(
        shed.header("retry-after").is_some_and(|v| !v.is_empty()),
        "503 must carry Retry-After"
    );
    assert!(shed.body["error"].is_string(), "{}", shed.body);
    // The held requests complete normally once their bodies arrive.
    for (conv, body, mut s) in held {
        s.write_all(&body.as_bytes()[body.len() / 2..])
            .await
            .unwrap();
        let a = read_answer(&mut s, EVENTUALLY)
            .await
            .expect("held request answered");
        assert_eq!(a.status, 201, "held request for {conv}: {a:?}");
    }
    // The shed one wrote nothing and can be retried.
    assert_eq!(p.get(&format!("/conversations/{shed_conv}/")).await.0, 404);
    let retried = p
        .post_to(&lbase, &new_conversation(shed_conv, event_time(0)))
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    // None of the refused requests left a trace.
    assert!(
        p.get("/rejected-events?limit=500").await.1["rejected_events"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    let view = p.conversation(c).await.unwrap();
    assert!(messages(&view).is_empty(), "{view}");
    assert_pipeline_alive(&p).await;
}

// ---------------------------------------------------------------------------
// 9. A clock far ahead
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_record_an_hour_in_the_future_does_not_stall_its_partition() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let skewed = Uuid::new_v4();
    let future: DateTime<Utc> = Utc::now() + chrono::Duration::hours(1);
    let (partition, _) = produce_at(
        &p,
        &Event::NewMessage {
            id: skewed,
            conversation_id: c,
            content: "do futuro".into(),
            timestamp: event_time(1),
        },
        future.timestamp_millis(),
    )
    .await;
    assert_eq!(partition, partition_of(c, p.opts.partitions));
    // Others on that partition (and every other) are answered within
    // G + slack.
    assert_pipeline_alive(&p).await;
    wait_processor_metric(&p, 0, "chatpipe_processor_clamped_records_total", &[], 1.0).await;
    // And the skewed message itself is answered once (nothing lost).
    let view = p.wait_replies(c, 1).await;
    assert_eq!(
        outbound(&view)[0]["content"],
        expected_reply(&[skewed]),
        "{view}"
    );
    assert_pipeline_alive(&p).await;
    let seen: HashSet<String> = inbound_ids(&view).into_iter().collect();
    assert_eq!(seen, HashSet::from([skewed.to_string()]));
}
