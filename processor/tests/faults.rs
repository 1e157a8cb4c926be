//! Faults the processor must survive without stalling or losing anything,
//! with the real binary, a real broker and Postgres: a record Postgres
//! refuses (set aside as `storage_refused`), records that are not events
//! (recorded as `undecodable`, the records around them untouched), a lock
//! held on a conversation's row (that partition waits and says so in
//! `/readyz`; the others go on), and a stored position beyond the end of a
//! new log (reset loudly, stranded messages answered, new ones too).

mod common;

use std::time::Duration;

use chatpipe_core::murmur2::partition_for_key;
use chatpipe_tests::{create_topic, eventually, PrivateBroker, Service, TestDb};
use chrono::Utc;
use common::*;
use serde_json::Value;
use uuid::Uuid;

const SHORT: &[(&str, &str)] = &[
    ("CHATPIPE_GROUPING_GAP", "300ms"),
    ("CHATPIPE_LATE_TOLERANCE", "400ms"),
];
const WAIT: Duration = Duration::from_secs(60);

fn envs(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    SHORT.iter().chain(extra).copied().collect()
}

/// A conversation id whose records go to `partition` of `partitions`.
fn conversation_on(partition: i32, partitions: i32) -> Uuid {
    loop {
        let id = Uuid::new_v4();
        if partition_for_key(id.hyphenated().to_string().as_bytes(), partitions) == partition {
            return id;
        }
    }
}

async fn reply_of(db: &TestDb, message: Uuid) -> Option<Uuid> {
    let c = db.client().await.unwrap();
    c.query_opt(
        "SELECT reply_id FROM messages WHERE id = $1 AND direction = 'INBOUND'",
        &[&message],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

async fn wait_replied(db: &TestDb, message: Uuid) {
    eventually(WAIT, &format!("a reply to {message}"), || async {
        reply_of(db, message).await
    })
    .await
    .unwrap();
}

/// `GET path` on a service: (status, JSON body).
async fn get(s: &Service, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}{path}", s.base_url()))
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn metric(s: &Service, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", s.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Postgres refuses one message's row (a trigger raising a data
/// exception): after `CHATPIPE_POISON_ATTEMPTS` refusals the record is set
/// aside as `storage_refused` with the database's error; the messages
/// before and after it in its conversation are answered, and so is the
/// other partition's conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_record_is_set_aside_and_its_partition_goes_on() {
    let broker = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&broker.bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    db.client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.content = 'poison' THEN
                 RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = '22023';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON messages
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .unwrap();
    let p = processor(
        &db,
        &broker.bootstrap,
        &topic,
        &envs(&[("CHATPIPE_POISON_ATTEMPTS", "2")]),
    )
    .await;
    let prod = Producer::new(&broker.bootstrap, &topic);
    let (a, b) = (conversation_on(0, 2), conversation_on(1, 2));
    let (a1, a2, a3, b1) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    prod.send(&conv(a)).await;
    prod.send(&conv(b)).await;
    prod.send(&msg_with(a1, a, "fine")).await;
    prod.send(&msg_with(a2, a, "poison")).await;
    prod.send(&msg_with(a3, a, "fine too")).await;
    prod.send(&msg(b1, b)).await;

    for m in [a1, a3, b1] {
        wait_replied(&db, m).await;
    }
    let c = db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT reason, detail FROM rejected_events WHERE event_id = $1",
            &[&a2],
        )
        .await
        .unwrap();
    let (reason, detail): (String, String) = (row.get(0), row.get(1));
    assert_eq!(reason, "storage_refused");
    assert!(detail.contains("refused by the test trigger"), "{detail}");
    assert!(reply_of(&db, a2).await.is_none());
    assert!(metric(&p, "chatpipe_processor_poison_records_total").await >= 1.0);
    // Healthy again once it is past the record.
    eventually(WAIT, "ready again", || async {
        (get(&p, "/readyz").await.0 == 200).then_some(())
    })
    .await
    .unwrap();
    // A later message of the same conversation is answered as usual.
    let a4 = Uuid::new_v4();
    prod.send(&msg(a4, a)).await;
    wait_replied(&db, a4).await;
}

fn msg_with(id: Uuid, c: Uuid, content: &str) -> chatpipe_core::Event {
    chatpipe_core::Event::NewMessage {
        id,
        conversation_id: c,
        content: content.into(),
        timestamp: Utc::now(),
    }
}

/// Records that are not events (not JSON; a NUL in the content, which the
/// validator refuses) between valid ones of the same conversation, in one
/// poll batch: each is recorded as `undecodable` under its offset, and the
/// valid records before and after it are all applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_events_are_recorded_and_skipped_alone() {
    let broker = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&broker.bootstrap, 1).await;
    let db = TestDb::create().await.unwrap();
    let prod = Producer::new(&broker.bootstrap, &topic);
    let c = Uuid::new_v4();
    let key = c.hyphenated().to_string();
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    let bad_id = Uuid::new_v4();
    let now = Utc::now().timestamp_millis();
    // Written before the processor starts: one batch on its first poll.
    prod.send_at(&conv(c), now).await;
    prod.send_at(&msg(m1, c), now + 1).await;
    prod.send_raw(&key, b"this is not json", now + 2).await;
    let nul = format!(
        r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z","data":{{"id":"{bad_id}","content":"a\u0000b","conversation_id":"{c}"}}}}"#
    );
    prod.send_raw(&key, nul.as_bytes(), now + 3).await;
    prod.send_at(&msg(m2, c), now + 4).await;
    let _p = processor(&db, &broker.bootstrap, &topic, SHORT).await;
    wait_replied(&db, m1).await;
    wait_replied(&db, m2).await;
    let cl = db.client().await.unwrap();
    let rows = cl
        .query(
            "SELECT source_offset, reason, event_type, event_id, detail FROM rejected_events
              ORDER BY source_offset",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, String, Option<Uuid>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "undecodable".into(), "UNDECODABLE".into(), None),
            (3, "undecodable".into(), "NEW_MESSAGE".into(), Some(bad_id)),
        ]
    );
    let detail: String = rows[1].get(4);
    assert!(detail.contains("U+0000"), "{detail}");
    // m1 and m2 form one group: the bad records between them change nothing.
    assert_eq!(reply_of(&db, m1).await, reply_of(&db, m2).await);
}

/// A row lock held on a conversation (as by an ingest replica frozen
/// between the broker's acknowledgement and its commit) stops only that
/// partition: its writes time out (`lock_timeout`), it reports itself not
/// ready with the reason, the other partition keeps answering; once the
/// lock is released everything catches up and the replica is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_lock_stalls_only_its_partition() {
    let broker = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&broker.bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    let p = processor(
        &db,
        &broker.bootstrap,
        &topic,
        &envs(&[
            ("CHATPIPE_LOCK_TIMEOUT", "200ms"),
            ("CHATPIPE_STUCK_AFTER", "2"),
        ]),
    )
    .await;
    let prod = Producer::new(&broker.bootstrap, &topic);
    let (a, b) = (conversation_on(0, 2), conversation_on(1, 2));
    let (a1, b1) = (Uuid::new_v4(), Uuid::new_v4());
    prod.send(&conv(a)).await;
    prod.send(&msg(a1, a)).await;
    wait_replied(&db, a1).await;

    // Hold the conversation's row lock in an open transaction.
    let mut locker = db.client().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
        &[&a],
    )
    .await
    .unwrap();
    prod.send(&close(a)).await;
    let reason = eventually(WAIT, "not ready, naming the partition", || async {
        match get(&p, "/readyz").await {
            (503, body) => body["reason"]
                .as_str()
                .filter(|r| r.contains("partition 0") && r.contains("lock"))
                .map(str::to_owned),
            _ => None,
        }
    })
    .await
    .unwrap();
    eprintln!("readyz while stuck: {reason}");
    // The other partition is not held up.
    prod.send(&conv(b)).await;
    prod.send(&msg(b1, b)).await;
    wait_replied(&db, b1).await;
    assert!(
        metric(
            &p,
            "chatpipe_processor_write_failures_total{kind=\"transient\"}"
        )
        .await
            >= 2.0
    );

    tx.rollback().await.unwrap();
    eventually(WAIT, "the close applied", || async {
        let c = db.client().await.unwrap();
        let s: String = c
            .query_one("SELECT status FROM conversations WHERE id = $1", &[&a])
            .await
            .unwrap()
            .get(0);
        (s == "CLOSED").then_some(())
    })
    .await
    .unwrap();
    eventually(WAIT, "ready again", || async {
        (get(&p, "/readyz").await.0 == 200).then_some(())
    })
    .await
    .unwrap();
}

/// The topic is recreated (here: a new, empty broker with a topic of the
/// same name) while Postgres keeps the old positions: the processor sees
/// its position beyond the new log's end, resets the partition loudly
/// (`partition_resets`, metric, `/readyz` warning), answers the stored
/// message whose group's records are gone, and answers new messages —
/// of new conversations and of conversations the old log created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_beyond_a_new_logs_end_is_reset_loudly() {
    let mut old = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&old.bootstrap, 1).await;
    let db = TestDb::create().await.unwrap();
    let prod = Producer::new(&old.bootstrap, &topic);
    let c = Uuid::new_v4();
    let m1 = Uuid::new_v4();
    let mut p = processor(&db, &old.bootstrap, &topic, SHORT).await;
    prod.send(&conv(c)).await;
    for _ in 0..20 {
        prod.send(&msg(Uuid::new_v4(), c)).await;
    }
    prod.send(&msg(m1, c)).await;
    wait_replied(&db, m1).await;
    p.kill();
    drop(prod);
    old.stop();
    // A message whose group was open when the old log went away.
    let stranded = Uuid::new_v4();
    db.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival)
             VALUES ($1, $2, 'INBOUND', 'stranded', now(), now())",
            &[&stranded, &c],
        )
        .await
        .unwrap();

    let new = PrivateBroker::start().await.unwrap();
    chatpipe_core::kafka::ensure_topic(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&new.bootstrap),
        &topic,
        1,
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let p = processor(&db, &new.bootstrap, &topic, SHORT).await;
    wait_replied(&db, stranded).await;
    let cl = db.client().await.unwrap();
    let row = cl
        .query_one(
            "SELECT kind, stored_processed, log_end, new_offset, stranded_answered
               FROM partition_resets WHERE topic = $1",
            &[&topic],
        )
        .await
        .unwrap();
    let (kind, stored, end, new_offset, stranded_n): (String, i64, i64, i64, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(kind, "beyond_log_end");
    assert_eq!((stored, end, new_offset, stranded_n), (22, 0, 0, 1));
    let (status, body) = get(&p, "/readyz").await;
    assert_eq!(status, 200);
    let warnings = body["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("beyond_log_end"))),
        "{body}"
    );
    assert!(
        metric(
            &p,
            "chatpipe_processor_partition_resets_total{kind=\"beyond_log_end\"}"
        )
        .await
            >= 1.0
    );
    // New records at the new log's offsets 0, 1, …: a new conversation and
    // the old one (created by the old log) are both answered; nothing is
    // rejected as "not created" or "already exists".
    let prod = Producer::new(&new.bootstrap, &topic);
    let (d, d1, c2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    prod.send(&conv(d)).await;
    prod.send(&msg(d1, d)).await;
    prod.send(&msg(c2, c)).await;
    wait_replied(&db, d1).await;
    wait_replied(&db, c2).await;
    let rejected: i64 = cl
        .query_one("SELECT count(*) FROM rejected_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejected, 0);
}
