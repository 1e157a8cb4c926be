//! Fuzz of the real pipeline: a random (seeded; the seed is printed,
//! `CHATPIPE_FUZZ_SEED=<n>` replays it, `=random` draws one) stream of valid-shaped events is
//! produced straight into a topic of a real broker, in real time, with
//! arrival stamps that jitter a little, while the real `chatpipe-processor`
//! binary reads it. The stream has conversations, message bursts
//! (some before their conversation within and beyond L, some after its
//! close), closes, duplicates, identical and different lifecycle
//! redeliveries, closes of unknown conversations, message ids reused by
//! another conversation or with other content, and ids taken from a
//! reply's id ([`reply_id`]).
//!
//! The processor starts a few seconds after the stream, so it first works
//! through a backlog (its INBOUND rows held until their replies) and then
//! reads live.
//!
//! Once the processor has settled (every partition's resume and processed
//! offsets at the log's end: no open group, no buffered message), the test
//! reads the log back and checks that nothing was silently dropped:
//! - every NEW_MESSAGE record is rejected (a `rejected_events` row at its
//!   offset), or its id is an INBOUND row of its conversation with its
//!   content whose `reply_id` names an OUTBOUND row listing it, or the
//!   same message (id, conversation and content) was read earlier in its
//!   partition and rejected (a message id seen again changes nothing);
//! - every NEW_CONVERSATION / CLOSE_CONVERSATION record is applied (its
//!   offset is the persisted log position), rejected, or an identical
//!   redelivery (same id, type and event time) of the applied one;
//! - every INBOUND row is listed by exactly one reply, the one it names.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chatpipe_core::Event;
use chatpipe_processor::engine::reply::reply_id;
use chatpipe_tests::{create_topic, eventually, kafka_bootstrap, TestDb};
use chrono::{TimeZone, Utc};
use common::{processor, Producer};
use futures::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const CONVERSATIONS: usize = 400;
/// Conversations start within this many ms of the stream's start.
const SPREAD_MS: i64 = 10_000;
const G_MS: i64 = 300;
const L_MS: i64 = 400;
/// The processor starts this long after the stream (a backlog first).
const BACKLOG_MS: u64 = 4_000;
/// Arrival stamps are the planned time ± this.
const JITTER_MS: i64 = 15;

const ENV: &[(&str, &str)] = &[
    ("CHATPIPE_GROUPING_GAP", "300ms"),
    ("CHATPIPE_LATE_TOLERANCE", "400ms"),
    ("CHATPIPE_MAX_GROUP_MESSAGES", "5"),
    ("CHATPIPE_POLL_BATCH_SIZE", "200"),
];

/// One planned record: when (ms after the start) and what.
#[derive(Debug, Clone)]
struct Planned {
    at: i64,
    event: Event,
}

/// The random stream.
fn plan(rng: &mut StdRng, t0: i64) -> Vec<Planned> {
    let ts = |at: i64| Utc.timestamp_millis_opt(t0 + at).unwrap();
    let mut out: Vec<Planned> = Vec::new();
    // Messages planned so far: (id, conversation, content).
    let mut messages: Vec<(Uuid, Uuid, String)> = Vec::new();
    for _ in 0..CONVERSATIONS {
        let c = Uuid::new_v4();
        let start = rng.random_range(0..SPREAD_MS);
        let created = rng.random_bool(0.92);
        if created {
            let event = Event::NewConversation {
                id: c,
                timestamp: ts(start),
            };
            out.push(Planned {
                at: start,
                event: event.clone(),
            });
            if rng.random_bool(0.06) {
                // Identical redelivery (a provider's retry).
                out.push(Planned {
                    at: start + rng.random_range(1..2_000),
                    event,
                });
            }
            if rng.random_bool(0.03) {
                // A different NEW_CONVERSATION for the taken id.
                out.push(Planned {
                    at: start + rng.random_range(1..2_000),
                    event: Event::NewConversation {
                        id: c,
                        timestamp: ts(start + 1),
                    },
                });
            }
        }
        // Message bursts: gaps ≤ G inside, > G between.
        let mut t = match rng.random_range(0..100) {
            // Before its conversation, within L.
            0..10 => start - rng.random_range(20..L_MS - 50),
            // Before its conversation, beyond L.
            10..15 => start - rng.random_range(L_MS + 100..3 * L_MS),
            _ => start + rng.random_range(10..G_MS),
        };
        let mut last = t;
        for burst in 0..rng.random_range(1..=3) {
            if burst > 0 {
                t += rng.random_range(G_MS + 100..4 * G_MS);
            }
            for k in 0..rng.random_range(1..=4) {
                if k > 0 {
                    t += rng.random_range(10..G_MS - 50);
                }
                let (id, conversation_id, content) = match rng.random_range(0..100) {
                    // An id used by an earlier message: with other content,
                    // or the same content in another conversation.
                    0..3 if !messages.is_empty() => {
                        let (id, _, content) =
                            messages[rng.random_range(0..messages.len())].clone();
                        if rng.random_bool(0.5) {
                            (id, c, content)
                        } else {
                            (id, c, format!("reused {id}"))
                        }
                    }
                    // The id of the reply an earlier message's group of
                    // one gets.
                    3..5 if !messages.is_empty() => {
                        let (m, _, _) = messages[rng.random_range(0..messages.len())].clone();
                        (reply_id(&[m]), c, format!("the reply id of {m}"))
                    }
                    _ => {
                        let id = Uuid::new_v4();
                        (id, c, format!("Olá {id}"))
                    }
                };
                messages.push((id, conversation_id, content.clone()));
                let event = Event::NewMessage {
                    id,
                    conversation_id,
                    content,
                    timestamp: ts(t),
                };
                out.push(Planned {
                    at: t,
                    event: event.clone(),
                });
                if rng.random_bool(0.06) {
                    out.push(Planned {
                        at: t + rng.random_range(0..1_000),
                        event,
                    });
                }
                last = last.max(t);
            }
        }
        if rng.random_bool(0.4) {
            // Sometimes before the last messages: those are then rejected.
            let at = last + rng.random_range(-250..600);
            let event = Event::CloseConversation {
                id: c,
                timestamp: ts(at),
            };
            out.push(Planned {
                at,
                event: event.clone(),
            });
            if rng.random_bool(0.06) {
                out.push(Planned {
                    at: at + rng.random_range(1..1_000),
                    event,
                });
            }
            if rng.random_bool(0.03) {
                out.push(Planned {
                    at: at + rng.random_range(1..1_000),
                    event: Event::CloseConversation {
                        id: c,
                        timestamp: ts(at + 7),
                    },
                });
            }
            if rng.random_bool(0.15) {
                let id = Uuid::new_v4();
                let at = at + rng.random_range(20..400);
                out.push(Planned {
                    at,
                    event: Event::NewMessage {
                        id,
                        conversation_id: c,
                        content: format!("after the close {id}"),
                        timestamp: ts(at),
                    },
                });
            }
        }
    }
    for _ in 0..5 {
        let at = rng.random_range(0..SPREAD_MS);
        out.push(Planned {
            at,
            event: Event::CloseConversation {
                id: Uuid::new_v4(),
                timestamp: ts(at),
            },
        });
    }
    // Nothing before the start.
    let first = out.iter().map(|p| p.at).min().unwrap_or(0);
    for p in &mut out {
        p.at -= first;
    }
    out.sort_by_key(|p| p.at);
    out
}

/// One record of the log as read back.
#[derive(Debug, Clone)]
struct LogRecord {
    partition: i32,
    offset: i64,
    event: Event,
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    chatpipe_core::kafka::consumer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(bootstrap),
        &format!("fuzz-reader-{}", Uuid::new_v4().simple()),
        Duration::from_millis(10),
    )
    .create()
    .expect("consumer")
}

async fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&bootstrap);
        (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1
            })
            .collect()
    })
    .await
    .expect("watermark task")
}

/// Every record of the topic up to `ends`, by partition and offset.
async fn read_log(bootstrap: &str, topic: &str, ends: &[i64]) -> Vec<LogRecord> {
    let (bootstrap, topic, ends) = (bootstrap.to_owned(), topic.to_owned(), ends.to_vec());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&bootstrap);
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("assignment");
        }
        c.assign(&tpl).expect("assign");
        let mut out: BTreeMap<(i32, i64), LogRecord> = BTreeMap::new();
        let total: i64 = ends.iter().sum();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (out.len() as i64) < total {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of {total} records",
                out.len()
            );
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let event = Event::decode(m.payload().unwrap_or_default(), usize::MAX)
                        .expect("a record of the fuzz is an event");
                    out.insert(
                        (m.partition(), m.offset()),
                        LogRecord {
                            partition: m.partition(),
                            offset: m.offset(),
                            event,
                        },
                    );
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => panic!("consume error: {e}"),
            }
        }
        out.into_values().collect()
    })
    .await
    .expect("reader task")
}

/// A conversation's persisted log positions: (created offset, created
/// event µs, closed offset, closed event µs).
type LogRow = (i64, Option<i64>, Option<i64>, Option<i64>);

/// Stored rows of the topic.
struct Db {
    /// id → (conversation, outbound, content, reply_id)
    messages: HashMap<Uuid, (Uuid, bool, String, Option<Uuid>)>,
    /// (partition, offset) → (event id, reason)
    rejected: HashMap<(i32, i64), (Uuid, String)>,
    /// conversation → its persisted log positions
    log: HashMap<Uuid, LogRow>,
    /// conversation → status
    status: HashMap<Uuid, String>,
}

async fn load(db: &TestDb, topic: &str) -> Db {
    let c = db.client().await.expect("client");
    let messages = c
        .query(
            "SELECT id, conversation_id, direction = 'OUTBOUND', content, reply_id FROM messages",
            &[],
        )
        .await
        .expect("messages")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let rejected = c
        .query(
            "SELECT source_partition, source_offset, event_id, reason FROM rejected_events
              WHERE source_topic = $1",
            &[&topic],
        )
        .await
        .expect("rejected_events")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    let log = c
        .query(
            "SELECT conversation_id, created_offset, created_event_us, closed_offset, closed_event_us
               FROM processor_conversation_log WHERE topic = $1",
            &[&topic],
        )
        .await
        .expect("conversation log")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let status = c
        .query("SELECT id, status FROM conversations", &[])
        .await
        .expect("conversations")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Db {
        messages,
        rejected,
        log,
        status,
    }
}

/// Whether every partition's resume and processed offsets are at the
/// log's end (nothing open, nothing buffered) and every INBOUND row has
/// its reply.
async fn settled(db: &TestDb, topic: &str, ends: &[i64]) -> Option<()> {
    let c = db.client().await.ok()?;
    let rows = c
        .query(
            "SELECT partition, resume_offset, processed_offset FROM processor_partitions
              WHERE topic = $1",
            &[&topic],
        )
        .await
        .ok()?;
    let at_end = rows.len() == ends.len()
        && rows.iter().all(|r| {
            let p: i32 = r.get(0);
            let end = ends[p as usize];
            r.get::<_, i64>(1) == end && r.get::<_, i64>(2) == end
        });
    let unreplied: i64 = c
        .query_one(
            "SELECT count(*) FROM messages WHERE direction = 'INBOUND' AND reply_id IS NULL",
            &[],
        )
        .await
        .ok()?
        .get(0);
    (at_end && unreplied == 0).then_some(())
}

/// What the log and the database hold about a conversation and a message
/// id: the records (in log order) and rows, for a violation's report.
fn history(log: &[LogRecord], db: &Db, conversation: Uuid, id: Uuid) -> String {
    let mut out = format!(
        "conversation {conversation}: log position {:?}, status {:?}; records:",
        db.log.get(&conversation),
        db.status.get(&conversation)
    );
    for r in log {
        if r.event.conversation_id() != conversation && r.event.id() != id {
            continue;
        }
        let (kind, t) = match &r.event {
            Event::NewConversation { timestamp, .. } => ("NEW_CONVERSATION", timestamp),
            Event::NewMessage { timestamp, .. } => ("NEW_MESSAGE", timestamp),
            Event::CloseConversation { timestamp, .. } => ("CLOSE_CONVERSATION", timestamp),
        };
        out += &format!(
            "\n    {}@{} {kind} id {} conv {} at {} rejected {:?}",
            r.partition,
            r.offset,
            r.event.id(),
            r.event.conversation_id(),
            t.format("%H:%M:%S%.3f"),
            db.rejected.get(&(r.partition, r.offset)),
        );
    }
    out
}

/// The checks of the module doc; returns every violation found.
fn violations(log: &[LogRecord], db: &Db) -> Vec<String> {
    let mut bad = Vec::new();
    let mut listed: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (id, (conv, outbound, content, _)) in &db.messages {
        if !outbound {
            continue;
        }
        let mut lines = content.lines();
        if lines.next() != Some("Mensagens recebidas:") || !content.ends_with('\n') {
            bad.push(format!("reply {id} has text {content:?}"));
        }
        for line in lines {
            let Ok(member) = line.parse::<Uuid>() else {
                bad.push(format!("reply {id} lists {line:?}"));
                continue;
            };
            listed.entry(member).or_default().push(*id);
            match db.messages.get(&member) {
                Some((c, false, _, Some(r))) if c == conv && r == id => {}
                row => bad.push(format!(
                    "reply {id} lists {member}, whose row is not an INBOUND row answered by it: {row:?}"
                )),
            }
        }
    }
    for (id, (_, outbound, _, reply)) in &db.messages {
        if *outbound {
            continue;
        }
        if reply.is_none() {
            bad.push(format!("INBOUND {id} has no reply"));
        }
        let n = listed.get(id).map_or(0, Vec::len);
        if n != 1 {
            bad.push(format!("INBOUND {id} is listed by {n} replies"));
        }
    }
    for (i, r) in log.iter().enumerate() {
        let rejected = db.rejected.get(&(r.partition, r.offset));
        if let Some((id, reason)) = rejected {
            if *id != r.event.id() || reason.is_empty() {
                bad.push(format!(
                    "rejection at {}@{} is ({id}, {reason:?}) for {:?}",
                    r.partition, r.offset, r.event
                ));
            }
        }
        let at = format!("{}@{}", r.partition, r.offset);
        match &r.event {
            Event::NewMessage {
                id,
                conversation_id,
                content,
                ..
            } => {
                if rejected.is_some() {
                    continue;
                }
                let stored = matches!(
                    db.messages.get(id),
                    Some((c, false, text, Some(_))) if c == conversation_id && text == content
                );
                // "A message id seen again changes nothing": the same
                // message (id, conversation, content; its event time may
                // differ) read earlier and rejected decided this one too.
                let duplicate_of_rejected = log[..i].iter().any(|e| {
                    e.partition == r.partition
                        && matches!(
                            &e.event,
                            Event::NewMessage { id: i2, conversation_id: c2, content: t2, .. }
                                if i2 == id && c2 == conversation_id && t2 == content
                        )
                        && db.rejected.contains_key(&(e.partition, e.offset))
                });
                if !stored && !duplicate_of_rejected {
                    bad.push(format!(
                        "NEW_MESSAGE {id} at {at} silently dropped (row: {:?}); {}",
                        db.messages.get(id),
                        history(log, db, *conversation_id, *id)
                    ));
                }
            }
            Event::NewConversation { id, timestamp } => {
                let l = db.log.get(id);
                let applied = l.is_some_and(|l| l.0 == r.offset);
                let identical =
                    l.is_some_and(|l| l.0 < r.offset && l.1 == Some(timestamp.timestamp_micros()));
                let fates = [applied, rejected.is_some(), identical];
                if fates.iter().filter(|b| **b).count() != 1 {
                    bad.push(format!(
                        "NEW_CONVERSATION {id} at {at}: applied {applied}, rejected {rejected:?}, identical redelivery {identical}"
                    ));
                }
            }
            Event::CloseConversation { id, timestamp } => {
                let l = db.log.get(id);
                let applied = l.is_some_and(|l| l.2 == Some(r.offset));
                let identical = l.is_some_and(|l| {
                    l.2.is_some_and(|o| o < r.offset) && l.3 == Some(timestamp.timestamp_micros())
                });
                let fates = [applied, rejected.is_some(), identical];
                if fates.iter().filter(|b| **b).count() != 1 {
                    bad.push(format!(
                        "CLOSE_CONVERSATION {id} at {at}: applied {applied}, rejected {rejected:?}, identical redelivery {identical}"
                    ));
                }
                if applied && db.status.get(id).map(String::as_str) != Some("CLOSED") {
                    bad.push(format!("conversation {id} closed at {at} is not CLOSED"));
                }
            }
        }
    }
    bad
}

/// The seeds CI runs; `CHATPIPE_FUZZ_SEED=<n>` runs that seed instead,
/// `=random` draws one.
const SEEDS: [u64; 2] = [
    7_410_157_743_966_588_047,
    // Redelivers a message (same id, conversation and content, another
    // event time) while the first, an orphan, still waits for its
    // conversation, which never comes: the first is rejected and the
    // second, a duplicate, changes nothing. (Reported once as a silent
    // drop by an oracle that wanted identical event times.)
    15_522_288_665_845_545_906,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_stream_leaves_nothing_silently_dropped() {
    let seeds: Vec<u64> = match std::env::var("CHATPIPE_FUZZ_SEED").ok().as_deref() {
        Some("random") => vec![rand::random()],
        Some(s) => vec![s.parse().expect("CHATPIPE_FUZZ_SEED: a number or `random`")],
        None => SEEDS.to_vec(),
    };
    for seed in seeds {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    eprintln!("pipeline_fuzz: seed {seed} (replay with CHATPIPE_FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, PARTITIONS).await;
    let db = TestDb::create().await.expect("test database");

    // Produce in real time: each record when its planned time comes, its
    // arrival stamp the planned time ± a little jitter.
    let start = Utc::now().timestamp_millis() + 100;
    let planned = plan(&mut rng, start);
    let stamps: Vec<i64> = planned
        .iter()
        .map(|p| start + p.at + rng.random_range(-JITTER_MS..=JITTER_MS))
        .collect();
    let events = planned.len();
    eprintln!("pipeline_fuzz: {events} events");
    let producer = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        tokio::spawn(async move {
            let prod = Producer::new(&bootstrap, &topic);
            let mut next = 0;
            while next < planned.len() {
                let now = Utc::now().timestamp_millis() - start;
                let due = planned[next..].iter().take_while(|p| p.at <= now).count();
                if due == 0 {
                    let wait = (planned[next].at - now).clamp(1, 50) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
                let sends = (next..next + due).map(|i| prod.send_at(&planned[i].event, stamps[i]));
                join_all(sends).await;
                next += due;
            }
        })
    };
    // The processor starts a few seconds in: it first works through a
    // backlog (INBOUND rows held until their reply), then reads live.
    tokio::time::sleep(Duration::from_millis(BACKLOG_MS)).await;
    let mut p = processor(&db, &bootstrap, &topic, ENV).await;
    producer.await.expect("producer task");

    let ends = end_offsets(&bootstrap, &topic).await;
    let total: i64 = ends.iter().sum();
    assert_eq!(total as usize, events, "every event is in the log");
    eventually(Duration::from_secs(120), "the processor to settle", || {
        settled(&db, &topic, &ends)
    })
    .await
    .expect("settled");
    assert!(p.is_running(), "the processor is still running");

    let log = read_log(&bootstrap, &topic, &ends).await;
    let stored = load(&db, &topic).await;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in stored.rejected.values() {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    eprintln!(
        "pipeline_fuzz: {} records, {} INBOUND, {} replies, rejections {reasons:?}",
        log.len(),
        stored.messages.values().filter(|m| !m.1).count(),
        stored.messages.values().filter(|m| m.1).count(),
    );
    let bad = violations(&log, &stored);
    assert!(
        bad.is_empty(),
        "seed {seed}: {} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert!(p.kill(), "graceful shutdown");
}
