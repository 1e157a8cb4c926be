//! The black-box conformance suite, shortened windows (G = 400 ms,
//! L = 600 ms unless a case says otherwise): the real ingest, processor and
//! api binaries against the real broker and Postgres, every rule of the spec
//! checked over HTTP. Timing-dependent cases check their own precondition
//! (e.g. that two arrivals really were closer than G) from the wall-clock
//! bounds of each POST, so a slow machine fails loudly instead of silently
//! testing something else.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chatpipe_tests::{close_conversation, expected_reply, new_conversation, new_message};
use chrono::Utc;
use common::{chrono, event_time, inbound_ids, messages, outbound, time, Options, Pipeline};
use serde_json::{json, Value};
use uuid::Uuid;

fn ids(v: &[Uuid]) -> Vec<String> {
    v.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn webhook_status_codes_follow_the_table() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    // NEW_CONVERSATION for an id that exists (open) → 400.
    p.post_ok(&new_conversation(c, event_time(1)), 400).await;
    p.post_ok(&new_message(Uuid::new_v4(), c, "oi", event_time(2)), 202)
        .await;
    // A message for a conversation not known yet is accepted (buffered).
    p.post_ok(
        &new_message(Uuid::new_v4(), Uuid::new_v4(), "cedo", event_time(2)),
        202,
    )
    .await;
    // CLOSE of an unknown conversation → 400.
    p.post_ok(&close_conversation(Uuid::new_v4(), event_time(3)), 400)
        .await;
    p.post_ok(&close_conversation(c, event_time(4)), 200).await;
    // Already CLOSED → 400; NEW_CONVERSATION of a closed id → 400; message → 400.
    p.post_ok(&close_conversation(c, event_time(5)), 400).await;
    p.post_ok(&new_conversation(c, event_time(6)), 400).await;
    let refused = p
        .post_ok(&new_message(Uuid::new_v4(), c, "tarde", event_time(7)), 400)
        .await;
    assert!(refused.body["error"].is_string(), "{}", refused.body);
    let view = p
        .wait_conversation(c, "status CLOSED", |v| v["status"] == "CLOSED")
        .await;
    assert_eq!(view["created_at"], "2025-06-04T14:20:00Z");
    assert_eq!(view["updated_at"], "2025-06-04T14:20:04Z");
}

#[tokio::test]
async fn invalid_payload_catalogue_is_400_naming_the_field_and_writes_nothing() {
    let mut opts = Options::short();
    // No processor: the rule is about ingest, and nothing may be written.
    opts.processors = 0;
    opts.ingest_env = vec![
        ("CHATPIPE_MAX_CONTENT_BYTES".into(), "64".into()),
        ("CHATPIPE_MAX_BODY_BYTES".into(), "1024".into()),
    ];
    let p = Pipeline::start(opts).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    let ts = "2025-06-04T14:20:00Z";
    // The contract's catalogue, plus the cases of this ingest's limits.
    let mut cases = chatpipe_core::examples::invalid_payloads(c, m);
    cases.extend([
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"{}","conversation_id":"{c}"}}}}"#,
                "x".repeat(65)
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"{ts}","data":{{"id":"{m}","content":"x","conversation_id":"{c}"}},"pad":"{}"}}"#,
                "y".repeat(1100)
            ),
            "body",
        ),
    ]);
    for (body, field) in &cases {
        let r = p.post_raw(body.clone().into_bytes()).await;
        assert_eq!(
            r.status, 400,
            "body {body:.120} answered {}: {}",
            r.status, r.body
        );
        assert_eq!(r.body["field"], *field, "body {body:.120}: {}", r.body);
        assert!(
            r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            r.body
        );
    }
    // Nothing was written anywhere: no rows, no records.
    let db = p.db.client().await.unwrap();
    for table in ["conversations", "messages", "rejected_events"] {
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{table} must stay empty");
    }
    let records = topic_record_count(&p).await;
    assert_eq!(records, 0, "no record may reach the topic");
    // The api knows nothing of the ids either.
    assert_eq!(p.get(&format!("/conversations/{c}/")).await.0, 404);
}

async fn topic_record_count(p: &Pipeline) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = chatpipe_core::kafka::consumer_config(
        &chatpipe_core::kafka::KafkaConnection::plaintext(&p.bootstrap),
        "conformance-probe",
        Duration::from_millis(10),
    )
    .create()
    .unwrap();
    let mut total = 0;
    for partition in 0..p.opts.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&p.topic, partition, Duration::from_secs(10))
            .unwrap();
        total += high - low;
    }
    total
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_with_a_json_body() {
    let p = Pipeline::start(Options {
        processors: 0,
        ..Options::short()
    })
    .await;
    for path in [
        format!("/conversations/{}/", Uuid::new_v4()),
        format!("/conversations/{}", Uuid::new_v4()),
        "/conversations/not-a-uuid/".to_owned(),
        "/conversations/12345/".to_owned(),
        format!("/conversations/{}/messages", Uuid::new_v4()),
    ] {
        let (status, body) = p.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    for path in [
        "/conversations/?status=MAYBE",
        "/conversations/?limit=0",
        "/conversations/?limit=100000",
        "/conversations/?cursor=garbage",
        "/rejected-events?conversation_id=nope",
    ] {
        let (status, body) = p.get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["field"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn single_message_gets_one_reply_with_the_exact_text_and_shape() {
    let p = Pipeline::start(Options::short()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    // Millisecond precision, like real providers (Postgres keeps microseconds).
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    p.post_ok(&new_conversation(c, now), 201).await;
    let sent = p
        .post_ok(&new_message(m, c, "Olá, tudo bem?", now), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    // Exactly the spec's shape.
    let mut keys: Vec<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    // The spec's shape, plus the channel fields (extra fields only).
    assert_eq!(
        keys,
        [
            "channel",
            "contact",
            "created_at",
            "id",
            "messages",
            "status",
            "updated_at"
        ]
    );
    assert_eq!(view["channel"], Value::Null);
    assert_eq!(view["contact"], Value::Null);
    assert_eq!(view["id"], c.to_string());
    assert_eq!(view["status"], "OPEN");
    assert_eq!(
        view["created_at"],
        chatpipe_core::event::format_timestamp(now)
    );
    for ts in [&view["created_at"], &view["updated_at"]] {
        assert!(ts.as_str().unwrap().ends_with('Z'), "{ts}");
    }
    let msgs = messages(&view);
    assert_eq!(msgs.len(), 2, "{view}");
    for msg in &msgs {
        let mut keys: Vec<&str> = msg
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "author",
                "channel",
                "content",
                "delivery",
                "id",
                "kind",
                "media_id",
                "timestamp",
                "type"
            ]
        );
        assert!(msg["timestamp"].as_str().unwrap().ends_with('Z'), "{msg}");
    }
    assert_eq!(
        msgs[0],
        json!({"id": m, "type": "INBOUND", "content": "Olá, tudo bem?",
               "timestamp": chatpipe_core::event::format_timestamp(now),
               "channel": null, "author": {"kind": "contact", "id": null, "name": null},
               "kind": "text", "media_id": null, "delivery": null})
    );
    assert_eq!(msgs[1]["author"]["kind"], "bot");
    let reply = &msgs[1];
    assert_eq!(reply["type"], "OUTBOUND");
    assert_eq!(reply["content"], expected_reply(&[m]));
    assert_eq!(reply["content"], format!("Mensagens recebidas:\n{m}\n"));
    assert!(Uuid::parse_str(reply["id"].as_str().unwrap()).is_ok());
    // OUTBOUND timestamp = arrival + G, arrival within the POST's bounds.
    let reply_ts = time(&reply["timestamp"]) - chrono(p.opts.gap);
    let slack = chrono::Duration::milliseconds(2);
    assert!(
        reply_ts >= sent.before - slack && reply_ts <= sent.after + slack,
        "reply timestamp - G = {reply_ts} is outside the arrival bounds [{}, {}]",
        sent.before,
        sent.after
    );
    // Messages in timestamp order.
    let times: Vec<_> = msgs.iter().map(|m| time(&m["timestamp"])).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Still exactly one reply a while later (nothing duplicated).
    tokio::time::sleep(p.opts.gap * 2).await;
    let later = p.conversation(c).await.unwrap();
    assert_eq!(messages(&later), msgs);
}

#[tokio::test]
async fn messages_are_listed_in_event_timestamp_order() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let (a, b, d) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Arrival order a, b, d; event times b < d < a.
    p.post_ok(&new_message(a, c, "a", event_time(30)), 202)
        .await;
    p.post_ok(&new_message(b, c, "b", event_time(10)), 202)
        .await;
    p.post_ok(&new_message(d, c, "d", event_time(20)), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), ids(&[b, d, a]));
    // The reply lists ids in arrival order.
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[a, b, d]));
}

#[tokio::test]
async fn a_burst_is_one_group() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ms: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut posted = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        posted.push(
            p.post_ok(
                &new_message(*m, c, &format!("msg {i}"), event_time(1 + i as i64)),
                202,
            )
            .await,
        );
    }
    let gap = chrono(p.opts.gap);
    for w in posted.windows(2) {
        assert!(
            w[1].after - w[0].before < gap,
            "precondition: burst arrivals closer than G"
        );
    }
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), ids(&ms));
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "{view}");
    assert_eq!(replies[0]["content"], expected_reply(&ms));
    let reply_ts = time(&replies[0]["timestamp"]) - gap;
    let last = posted.last().unwrap();
    assert!(
        reply_ts >= last.before - chrono::Duration::milliseconds(2)
            && reply_ts <= last.after + chrono::Duration::milliseconds(2)
    );
    tokio::time::sleep(p.opts.gap * 2).await;
    assert_eq!(outbound(&p.conversation(c).await.unwrap()).len(), 1);
}

#[tokio::test]
async fn two_bursts_get_two_replies() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let first: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    let second: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (j, m) in first.iter().enumerate() {
        p.post_ok(
            &new_message(*m, c, "primeira", event_time(1 + j as i64)),
            202,
        )
        .await;
    }
    // The first reply is written only once G has passed, so waiting for it
    // guarantees the second burst starts more than G later.
    let view = p.wait_replies(c, 1).await;
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&first));
    for (j, m) in second.iter().enumerate() {
        p.post_ok(
            &new_message(*m, c, "segunda", event_time(10 + j as i64)),
            202,
        )
        .await;
    }
    let view = p.wait_replies(c, 2).await;
    let replies = outbound(&view);
    assert_eq!(replies.len(), 2, "{view}");
    let contents: HashSet<String> = replies
        .iter()
        .map(|r| r["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contents,
        HashSet::from([expected_reply(&first), expected_reply(&second)])
    );
    assert_ne!(replies[0]["id"], replies[1]["id"]);
}

#[tokio::test]
async fn a_steady_trickle_is_one_session_that_a_fixed_window_would_split() {
    let mut opts = Options::short();
    opts.gap = Duration::from_millis(1000);
    opts.tolerance = Duration::from_millis(1200);
    let p = Pipeline::start(opts).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ms: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let mut posted = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        posted.push(
            p.post_ok(&new_message(*m, c, "gota", event_time(i as i64)), 202)
                .await,
        );
    }
    let gap = chrono(p.opts.gap);
    for w in posted.windows(2) {
        assert!(
            w[1].after - w[0].before < gap,
            "precondition: trickle arrivals closer than G"
        );
    }
    let span = posted.last().unwrap().before - posted[0].after;
    assert!(
        span > gap * 2,
        "precondition: the trickle spans more than two fixed windows"
    );
    let view = p.wait_replies(c, 1).await;
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "one session, one reply: {view}");
    assert_eq!(replies[0]["content"], expected_reply(&ms));
    tokio::time::sleep(p.opts.gap * 2).await;
    assert_eq!(outbound(&p.conversation(c).await.unwrap()).len(), 1);
}

#[tokio::test]
async fn late_new_conversation_within_tolerance_attaches_the_message() {
    let p = Pipeline::start(Options::short()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    let msg = p
        .post_ok(&new_message(m, c, "cheguei antes", event_time(5)), 202)
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let conv = p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    assert!(
        conv.after - msg.before < chrono(p.opts.tolerance),
        "precondition: NEW_CONVERSATION arrived within L of the message"
    );
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), ids(&[m]));
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m]));
    assert!(p.rejected(c).await.is_empty());
}

#[tokio::test]
async fn late_new_conversation_past_tolerance_rejects_the_message() {
    let p = Pipeline::start(Options::short()).await;
    let (c, m, m2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let msg = p
        .post_ok(&new_message(m, c, "cedo demais", event_time(5)), 202)
        .await;
    tokio::time::sleep(p.opts.tolerance + Duration::from_millis(400)).await;
    let conv = p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    assert!(
        conv.before - msg.after > chrono(p.opts.tolerance),
        "precondition: NEW_CONVERSATION arrived more than L after the message"
    );
    let rejected = p.wait_rejected(c, m).await;
    assert_eq!(rejected["event_type"], "NEW_MESSAGE");
    assert!(rejected["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(rejected["event"]["data"]["id"], m.to_string());
    // A later message of the now-created conversation is processed normally,
    // and the rejected one never appears.
    p.post_ok(&new_message(m2, c, "agora sim", event_time(6)), 202)
        .await;
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), ids(&[m2]));
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m2]));
    // Filter by reason finds it too.
    let reason = rejected["reason"].as_str().unwrap();
    let (status, body) = p.get(&format!("/rejected-events?reason={reason}")).await;
    assert_eq!(status, 200);
    assert!(body["rejected_events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["event_id"] == m.to_string()));
}

#[tokio::test]
async fn a_message_for_a_conversation_never_created_is_rejected_not_lost() {
    let p = Pipeline::start(Options::short()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    p.post_ok(&new_message(m, c, "ninguém", event_time(1)), 202)
        .await;
    let rejected = p.wait_rejected(c, m).await;
    assert_eq!(rejected["conversation_id"], c.to_string());
    assert_eq!(p.get(&format!("/conversations/{c}/")).await.0, 404);
}

#[tokio::test]
async fn close_flushes_the_open_group_and_later_messages_are_refused() {
    let p = Pipeline::start(Options {
        // A long gap: the only way a reply appears soon is the flush on close.
        gap: Duration::from_secs(20),
        tolerance: Duration::from_secs(21),
        ..Options::short()
    })
    .await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let ms = [Uuid::new_v4(), Uuid::new_v4()];
    for (j, m) in ms.iter().enumerate() {
        p.post_ok(
            &new_message(*m, c, "antes do fim", event_time(1 + j as i64)),
            202,
        )
        .await;
    }
    let close = p.post_ok(&close_conversation(c, event_time(4)), 200).await;
    let view = p
        .wait_conversation(c, "CLOSED with the flushed reply", |v| {
            v["status"] == "CLOSED" && !outbound(v).is_empty()
        })
        .await;
    assert!(
        Utc::now() - close.before < chrono(p.opts.gap),
        "the reply must come from the flush, not from the gap expiring"
    );
    assert_eq!(inbound_ids(&view), ids(&ms));
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "{view}");
    assert_eq!(replies[0]["content"], expected_reply(&ms));
    assert_eq!(view["updated_at"], "2025-06-04T14:20:04Z");
    // After the close, ingest refuses messages.
    let late = Uuid::new_v4();
    p.post_ok(&new_message(late, c, "depois do fim", event_time(3)), 400)
        .await;
    // A message that reaches the log after the CLOSE (an ingest replica that
    // answered 202 just before the close) is rejected by the processor.
    let raced = Uuid::new_v4();
    p.produce_direct(&chatpipe_core::event::Event::NewMessage {
        id: raced,
        conversation_id: c,
        content: "corrida".into(),
        timestamp: event_time(3),
    })
    .await;
    let rejected = p.wait_rejected(c, raced).await;
    assert_eq!(rejected["event_type"], "NEW_MESSAGE");
    let view = p.conversation(c).await.unwrap();
    assert_eq!(inbound_ids(&view), ids(&ms));
    assert_eq!(outbound(&view).len(), 1);
    // The listing filters by status.
    let (_, closed) = p.get("/conversations/?status=CLOSED").await;
    assert!(closed["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == c.to_string()));
    let (_, open) = p.get("/conversations/?status=OPEN").await;
    assert!(!open["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == c.to_string()));
}

#[tokio::test]
async fn close_without_an_open_group_writes_no_reply() {
    let p = Pipeline::start(Options::short()).await;
    let (c, m) = (Uuid::new_v4(), Uuid::new_v4());
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    p.post_ok(&new_message(m, c, "só uma", event_time(1)), 202)
        .await;
    p.wait_replies(c, 1).await;
    p.post_ok(&close_conversation(c, event_time(9)), 200).await;
    let view = p
        .wait_conversation(c, "status CLOSED", |v| v["status"] == "CLOSED")
        .await;
    tokio::time::sleep(p.opts.gap * 2).await;
    let later = p.conversation(c).await.unwrap();
    assert_eq!(messages(&later), messages(&view));
    assert_eq!(outbound(&later).len(), 1);
}

#[tokio::test]
async fn duplicates_change_nothing() {
    let p = Pipeline::start(Options::short()).await;
    let c = Uuid::new_v4();
    p.post_ok(&new_conversation(c, event_time(0)), 201).await;
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    let body = new_message(m1, c, "uma vez", event_time(1));
    // Delivered twice within the window.
    let a = p.post(&body).await;
    let b = p.post(&body).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert!(
        b.status == 202 || b.status == 200,
        "duplicate answered {}: {}",
        b.status,
        b.body
    );
    let view = p.wait_replies(c, 1).await;
    assert_eq!(inbound_ids(&view), ids(&[m1]));
    assert_eq!(outbound(&view)[0]["content"], expected_reply(&[m1]));
    // Delivered again after its reply was written, then a new message: the
    // new message's group holds only the new message.
    let again = p.post(&body).await;
    assert!(again.status == 202 || again.status == 200, "{}", again.body);
    p.post_ok(&new_message(m2, c, "outra", event_time(2)), 202)
        .await;
    let view = p.wait_replies(c, 2).await;
    assert_eq!(inbound_ids(&view), ids(&[m1, m2]));
    let contents: Vec<String> = outbound(&view)
        .iter()
        .map(|r| r["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(contents, [expected_reply(&[m1]), expected_reply(&[m2])]);
    tokio::time::sleep(p.opts.gap * 2).await;
    let later = p.conversation(c).await.unwrap();
    assert_eq!(messages(&later), messages(&view));
}

#[tokio::test]
async fn hundred_conversations_in_parallel() {
    let p = std::sync::Arc::new(
        Pipeline::start(Options {
            partitions: 4,
            processors: 2,
            // 300 posts at once on two cores can take longer than the
            // short 400 ms gap between one conversation's messages; this
            // case is about parallel conversations, so its gap is wide
            // enough that each conversation's messages are one group.
            gap: Duration::from_secs(3),
            ..Options::short()
        })
        .await,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let p = p.clone();
        tasks.spawn(async move {
            let c = Uuid::new_v4();
            p.post_ok(&new_conversation(c, event_time(0)), 201).await;
            let ms: Vec<Uuid> = (0..1 + i % 3).map(|_| Uuid::new_v4()).collect();
            for (j, m) in ms.iter().enumerate() {
                p.post_ok(
                    &new_message(*m, c, &format!("conversa {i}"), event_time(1 + j as i64)),
                    202,
                )
                .await;
            }
            if i % 10 == 0 {
                p.post_ok(&close_conversation(c, event_time(2)), 200).await;
            }
            (c, ms, i % 10 == 0)
        });
    }
    let mut sent: Vec<(Uuid, Vec<Uuid>, bool)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sent.push(r.unwrap());
    }
    for (c, ms, closed) in &sent {
        let view = p.wait_replies(*c, 1).await;
        let view = if *closed {
            p.wait_conversation(*c, "CLOSED", |v| v["status"] == "CLOSED")
                .await
        } else {
            view
        };
        assert_eq!(inbound_ids(&view), ids(ms), "{c}");
        let replies = outbound(&view);
        assert_eq!(replies.len(), 1, "{view}");
        assert_eq!(replies[0]["content"], expected_reply(ms));
    }
    // Every conversation is listed exactly once.
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = p
            .get(&format!("/conversations/?limit=30&cursor={cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        for x in page["conversations"].as_array().unwrap() {
            assert!(listed.insert(x["id"].as_str().unwrap().to_owned()));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed.len(), 100);
}

#[tokio::test]
async fn operational_endpoints_and_openapi_answer() {
    let p = Pipeline::start(Options::short()).await;
    for base in [
        p.ingest.base_url(),
        p.api.base_url(),
        p.processors[0].base_url(),
    ] {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let res = p.http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status().as_u16(), 200, "{base}{path}");
        }
    }
    let (status, doc) = p.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let res = p
        .http
        .get(format!("{}/docs", p.api.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let metrics = p
        .http
        .get(format!("{}/metrics", p.api.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chatpipe_api_requests_total"), "{metrics}");
    let _: Value = doc;
}
