//! The webhook contract over HTTP against the real broker and the real
//! Postgres, with ingest running in-process: every success code and every
//! `400` of the spec, nothing written on a `400`, one winner among
//! concurrent creates (also across two replicas), and the exact shape and
//! placement of the produced record.

mod support;

use std::time::Duration;

use chatpipe_core::event::{Event, EventType};
use chatpipe_core::murmur2::partition_for_key;
use chatpipe_tests::{close_conversation, new_conversation, new_message};
use chrono::SubsecRound;
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::{json, Value};
use support::{
    conversation_count, inflight_row, message_count, metrics, post, post_full, post_raw,
    seed_message, BlackHole, Env, RawClient,
};
use uuid::Uuid;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_codes_write_rows_and_records() {
    let env = Env::start(4, &[]).await;
    let conv = Uuid::new_v4();
    let t_open = at("2025-06-04T14:20:00Z");
    let t_close = at("2025-06-04T14:25:00.250Z");

    let (code, body) = env.post(&new_conversation(conv, t_open)).await;
    assert_eq!(code, 201, "{body}");
    let row = env.row(conv).await.expect("row after 201");
    assert_eq!(row.status, "OPEN");
    assert_eq!(row.created_at, t_open);
    assert_eq!(row.updated_at, t_open);
    assert_eq!(row.closed_at, None);

    let msg = new_message(
        Uuid::new_v4(),
        conv,
        "Olá, quero alugar",
        at("2025-06-04T14:20:05Z"),
    );
    let (code, body) = env.post(&msg).await;
    assert_eq!(code, 202, "{body}");

    // A message for a conversation nobody has created yet is buffered by
    // the processor: 202, and no row appears.
    let stranger = Uuid::new_v4();
    let (code, body) = env
        .post(&new_message(Uuid::new_v4(), stranger, "early", Utc::now()))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(env.row(stranger).await, None);

    // The path without the trailing slash works too.
    let (code, body) = post_raw(
        &env.http,
        &env.ingest.base_url(),
        "/webhook",
        serde_json::to_vec(&new_message(Uuid::new_v4(), conv, "again", Utc::now())).unwrap(),
    )
    .await;
    assert_eq!(code, 202, "{body}");

    let (code, body) = env.post(&close_conversation(conv, t_close)).await;
    assert_eq!(code, 200, "{body}");
    let row = env.row(conv).await.unwrap();
    assert_eq!(row.status, "CLOSED");
    assert_eq!(row.created_at, t_open);
    assert_eq!(row.updated_at, t_close);
    assert_eq!(row.closed_at, Some(t_close));

    assert_eq!(env.records().await, 5, "one record per accepted event");
    env.ingest.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_400_naming_the_field_and_write_nothing() {
    let env = Env::start(
        2,
        &["--max-body-bytes", "4096", "--max-content-bytes", "100"],
    )
    .await;
    let conv = Uuid::new_v4().to_string();
    let id = Uuid::new_v4().to_string();
    let ts = "2025-06-04T14:20:00Z";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "body"),
        (b"".to_vec(), "body"),
        (b"[1]".to_vec(), "body"),
        (json!({"timestamp": ts, "data": {"id": conv}}).to_string().into_bytes(), "type"),
        (json!({"type": "NEW_THING", "timestamp": ts, "data": {"id": conv}}).to_string().into_bytes(), "type"),
        (json!({"type": 3, "timestamp": ts, "data": {"id": conv}}).to_string().into_bytes(), "type"),
        (json!({"type": "NEW_CONVERSATION", "data": {"id": conv}}).to_string().into_bytes(), "timestamp"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": "yesterday", "data": {"id": conv}}).to_string().into_bytes(), "timestamp"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": "2025-06-04 14:20:00", "data": {"id": conv}}).to_string().into_bytes(), "timestamp"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": ts}).to_string().into_bytes(), "data"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": [conv]}).to_string().into_bytes(), "data"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": {}}).to_string().into_bytes(), "data.id"),
        (json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": {"id": "42"}}).to_string().into_bytes(), "data.id"),
        (json!({"type": "CLOSE_CONVERSATION", "timestamp": ts, "data": {"id": 42}}).to_string().into_bytes(), "data.id"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": "x", "content": "hi", "conversation_id": conv}}).to_string().into_bytes(), "data.id"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": id, "conversation_id": conv}}).to_string().into_bytes(), "data.content"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": id, "content": 7, "conversation_id": conv}}).to_string().into_bytes(), "data.content"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": id, "content": "x".repeat(101), "conversation_id": conv}}).to_string().into_bytes(), "data.content"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": id, "content": "hi"}}).to_string().into_bytes(), "data.conversation_id"),
        (json!({"type": "NEW_MESSAGE", "timestamp": ts, "data": {"id": id, "content": "hi", "conversation_id": "nope"}}).to_string().into_bytes(), "data.conversation_id"),
        // Over the body limit (4096): 400, not 413.
        (json!({"type": "NEW_CONVERSATION", "timestamp": ts, "data": {"id": conv, "pad": "p".repeat(5000)}}).to_string().into_bytes(), "body"),
    ];
    for (body, field) in &cases {
        let (code, reply) =
            post_raw(&env.http, &env.ingest.base_url(), "/webhook/", body.clone()).await;
        assert_eq!(code, 400, "{} → {reply}", String::from_utf8_lossy(body));
        assert_eq!(
            reply["field"],
            *field,
            "{} → {reply}",
            String::from_utf8_lossy(body)
        );
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
    }
    // Content exactly at the limit is fine (and proves the limit flag is used).
    let ok = new_message(Uuid::new_v4(), Uuid::new_v4(), &"y".repeat(100), Utc::now());
    assert_eq!(env.post(&ok).await.0, 202);

    assert_eq!(conversation_count(&env.db.url).await, 0, "no row on a 400");
    assert_eq!(
        env.records().await,
        1,
        "only the valid message was produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_refusals_are_400_and_write_nothing() {
    let env = Env::start(3, &[]).await;
    let conv = Uuid::new_v4();
    let t0 = Utc.with_ymd_and_hms(2025, 6, 4, 14, 20, 0).unwrap();
    assert_eq!(env.post(&new_conversation(conv, t0)).await.0, 201);
    let mut expected_records = 1;

    // Existing OPEN id (another event time: an identical one is a replay).
    let (code, body) = env
        .post(&new_conversation(conv, t0 + chrono::Duration::seconds(1)))
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("data.id")),
        "{body}"
    );

    // Close unknown.
    let unknown = Uuid::new_v4();
    let (code, body) = env.post(&close_conversation(unknown, t0)).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("data.id")),
        "{body}"
    );
    assert_eq!(env.row(unknown).await, None);

    // Close, then close again.
    assert_eq!(env.post(&close_conversation(conv, t0)).await.0, 200);
    expected_records += 1;
    let closed_row = env.row(conv).await.unwrap();
    let (code, body) = env.post(&close_conversation(conv, Utc::now())).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("data.id")),
        "{body}"
    );

    // Message to a closed conversation.
    let (code, body) = env
        .post(&new_message(Uuid::new_v4(), conv, "too late", Utc::now()))
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("data.conversation_id")),
        "{body}"
    );

    // Existing CLOSED id.
    let (code, body) = env.post(&new_conversation(conv, Utc::now())).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("data.id")),
        "{body}"
    );

    assert_eq!(
        env.row(conv).await.unwrap(),
        closed_row,
        "a 400 changes no row"
    );
    assert_eq!(conversation_count(&env.db.url).await, 1);
    assert_eq!(
        env.records().await,
        expected_records,
        "a 400 produces nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_by_another_replica_is_seen_by_the_batched_lookup() {
    let env = Env::start(2, &[]).await;
    let other = env.replica().await;
    let conv = Uuid::new_v4();
    assert_eq!(env.post(&new_conversation(conv, Utc::now())).await.0, 201);
    // Warm the lookup path on this replica: OPEN → 202.
    assert_eq!(
        env.post(&new_message(Uuid::new_v4(), conv, "hi", Utc::now()))
            .await
            .0,
        202
    );
    // The other replica closes it; this replica has no cached state for it.
    let (code, _) = post(
        &env.http,
        &other.base_url(),
        &close_conversation(conv, Utc::now()),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = env
        .post(&new_message(
            Uuid::new_v4(),
            conv,
            "after close",
            Utc::now(),
        ))
        .await;
    assert_eq!(code, 400, "{body}");
    // Many concurrent messages to OPEN and CLOSED conversations share
    // batched lookups and still get exact answers.
    let open = Uuid::new_v4();
    assert_eq!(env.post(&new_conversation(open, Utc::now())).await.0, 201);
    let posts = (0..200).map(|i| {
        let target = if i % 2 == 0 { open } else { conv };
        let body = new_message(Uuid::new_v4(), target, "x", Utc::now());
        let env = &env;
        async move { (target, env.post(&body).await.0) }
    });
    for (target, code) in futures::future::join_all(posts).await {
        assert_eq!(code, if target == open { 202 } else { 400 });
    }
    other.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_of_one_id_have_exactly_one_winner() {
    let env = Env::start(4, &[]).await;
    let replica = env.replica().await;
    let bases = [env.ingest.base_url(), replica.base_url()];
    let t0 = Utc::now();

    // Fifty different events for one id (different event times): one 201,
    // 49 refusals.
    let conv = Uuid::new_v4();
    let posts = (0..50).map(|i| {
        let body = new_conversation(conv, t0 + chrono::Duration::milliseconds(i));
        let (http, base) = (env.http.clone(), bases[i as usize % 2].clone());
        tokio::spawn(async move { post_full(&http, &base, &body).await })
    });
    let mut created = 0;
    let mut refused = 0;
    for r in futures::future::join_all(posts).await {
        let a = r.unwrap();
        match a.status {
            201 => {
                assert!(a.headers.get("idempotent-replay").is_none(), "{a:?}");
                created += 1
            }
            400 => {
                assert_eq!(a.body["field"], "data.id", "{a:?}");
                refused += 1
            }
            code => panic!("unexpected {code}: {a:?}"),
        }
    }
    assert_eq!((created, refused), (1, 49));

    // Fifty identical redeliveries: one 201 that produced, 49 replays.
    let twin = Uuid::new_v4();
    let body = new_conversation(twin, t0);
    let posts = (0..50).map(|i| {
        let (http, base, body) = (env.http.clone(), bases[i % 2].clone(), body.clone());
        tokio::spawn(async move { post_full(&http, &base, &body).await })
    });
    let (mut fresh, mut replays) = (0, 0);
    for r in futures::future::join_all(posts).await {
        let a = r.unwrap();
        assert_eq!(a.status, 201, "{a:?}");
        match a.headers.get("idempotent-replay") {
            None => fresh += 1,
            Some(v) => {
                assert_eq!(v, "true");
                replays += 1
            }
        }
    }
    assert_eq!((fresh, replays), (1, 49));
    assert_eq!(
        env.records().await,
        2,
        "exactly one NEW_CONVERSATION record per id"
    );
    assert_eq!(env.row(conv).await.unwrap().status, "OPEN");
    assert_eq!(env.row(twin).await.unwrap().created_at, t0.trunc_subsecs(6));
    replica.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_placed_by_murmur2_stamped_with_arrival_and_headerless() {
    let env = Env::start(8, &[]).await;
    for _ in 0..6 {
        let conv = Uuid::new_v4();
        let cases: [(Value, EventType); 3] = [
            (
                new_conversation(conv, at("2025-06-04T14:20:00Z")),
                EventType::NewConversation,
            ),
            (
                new_message(Uuid::new_v4(), conv, "Olá ✓", at("2025-06-04T14:20:05Z")),
                EventType::NewMessage,
            ),
            (
                close_conversation(conv, at("2025-06-04T14:25:00Z")),
                EventType::CloseConversation,
            ),
        ];
        for (body, event_type) in cases {
            let before = Utc::now().timestamp_millis();
            let (code, reply) = env.post(&body).await;
            let after = Utc::now().timestamp_millis();
            assert!((200..300).contains(&code), "{reply}");
            let key = conv.to_string();
            let partition = partition_for_key(key.as_bytes(), env.partitions);
            assert_eq!(reply["partition"], partition, "{reply}");
            let offset = reply["offset"].as_i64().unwrap();
            let record = support::read_record(&env.bootstrap, &env.topic, partition, offset).await;
            assert_eq!(record.key(), Some(key.as_bytes()));
            let ts = record.timestamp().to_millis().unwrap();
            assert!(
                before <= ts && ts <= after,
                "record timestamp {ts} is not the arrival time (between {before} and {after})"
            );
            // No headers: Tansu's SQLite storage fetches them with a full
            // table scan per record (see EVENT_RECORDS_HAVE_HEADERS).
            assert!(record.headers().is_none_or(|h| h.count() == 0));
            let event = Event::decode(record.payload().unwrap(), usize::MAX).unwrap();
            assert_eq!(
                event.event_type(),
                event_type,
                "the payload carries the type"
            );
            assert_eq!(event.to_json(), body, "value is the canonical event");
            assert_eq!(event.encode(), record.payload().unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_endpoints_answer_and_count_requests() {
    let env = Env::start(1, &[]).await;
    let base = env.ingest.base_url();
    assert_eq!(
        env.http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        env.http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let conv = Uuid::new_v4();
    assert_eq!(env.post(&new_conversation(conv, Utc::now())).await.0, 201);
    assert_eq!(env.post(&new_conversation(conv, Utc::now())).await.0, 400);
    let _ = post_raw(&env.http, &base, "/webhook/", b"{".to_vec()).await;
    let metrics = env
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"chatpipe_ingest_requests_total{event_type="NEW_CONVERSATION",status="201"} 1"#,
        r#"chatpipe_ingest_requests_total{event_type="NEW_CONVERSATION",status="400"} 1"#,
        r#"chatpipe_ingest_requests_total{event_type="INVALID",status="400"} 1"#,
        "chatpipe_ingest_produce_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_topic_is_missing() {
    let db = chatpipe_tests::TestDb::create().await.unwrap();
    let broker = chatpipe_tests::PrivateBroker::start().await.unwrap();
    let bootstrap = broker.bootstrap.clone();
    let missing = format!("missing-{}", Uuid::new_v4().simple());
    let ingest = chatpipe_ingest::spawn(support::args(&db.url, &bootstrap, &missing, &[]))
        .await
        .unwrap();
    let r = support::client()
        .get(format!("{}/readyz", ingest.base_url()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    ingest.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_content_and_out_of_range_timestamps_are_400_and_write_nothing() {
    let env = Env::start(2, &[]).await;
    let conv = Uuid::new_v4();
    let msg = Uuid::new_v4();
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z","data":{{"id":"{msg}","content":"before\u0000after","conversation_id":"{conv}"}}}}"#
            ),
            "data.content",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"0000-01-01T00:00:00+00:01","data":{{"id":"{conv}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"9999-12-31T23:59:59-00:01","data":{{"id":"{conv}"}}}}"#
            ),
            "timestamp",
        ),
        (
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"9999-12-31T23:59:59-00:01","data":{{"id":"{msg}","content":"x","conversation_id":"{conv}"}}}}"#
            ),
            "timestamp",
        ),
    ];
    for (body, field) in &cases {
        let (code, reply) = post_raw(
            &env.http,
            &env.ingest.base_url(),
            "/webhook/",
            body.clone().into_bytes(),
        )
        .await;
        assert_eq!(
            (code, reply["field"].as_str()),
            (400, Some(*field)),
            "{body} → {reply}"
        );
    }
    // The ends of the range are fine, with their extreme offsets.
    let edge = Uuid::new_v4();
    let body = format!(
        r#"{{"type":"NEW_CONVERSATION","timestamp":"0001-01-01T23:59:00+23:59","data":{{"id":"{edge}"}}}}"#
    );
    let (code, reply) = post_raw(
        &env.http,
        &env.ingest.base_url(),
        "/webhook/",
        body.into_bytes(),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    let body = format!(
        r#"{{"type":"CLOSE_CONVERSATION","timestamp":"9999-12-31T00:00:00-23:59","data":{{"id":"{edge}"}}}}"#
    );
    let (code, reply) = post_raw(
        &env.http,
        &env.ingest.base_url(),
        "/webhook/",
        body.into_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{reply}");

    assert_eq!(env.row(conv).await, None, "no row on a 400");
    assert_eq!(conversation_count(&env.db.url).await, 1);
    assert_eq!(message_count(&env.db.url).await, 0);
    assert_eq!(
        env.records().await,
        2,
        "only the two valid events were produced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_lifecycle_redeliveries_are_answered_as_replays() {
    let env = Env::start(3, &[]).await;
    let base = env.ingest.base_url();
    let conv = Uuid::new_v4();
    // Sub-second digits beyond Postgres' microseconds: compared as stored.
    let t_open = at("2025-06-04T11:20:00.123456789-03:00");
    let t_close = at("2025-06-04T14:25:00.5Z");

    let first = post_full(&env.http, &base, &new_conversation(conv, t_open)).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert!(first.headers.get("idempotent-replay").is_none());
    let again = post_full(&env.http, &base, &new_conversation(conv, t_open)).await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.headers["idempotent-replay"], "true");
    assert_eq!(again.body["status"], first.body["status"]);
    assert_eq!(again.body["conversation_id"], first.body["conversation_id"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&again.body), keys(&first.body), "same body shape");
    assert_eq!(env.records().await, 1, "a replay produces nothing");

    // Another event for the taken id stays a 400.
    let other = post_full(
        &env.http,
        &base,
        &new_conversation(conv, t_open + chrono::Duration::milliseconds(1)),
    )
    .await;
    assert_eq!(
        (other.status, other.body["field"].as_str()),
        (400, Some("data.id"))
    );

    let closed = post_full(&env.http, &base, &close_conversation(conv, t_close)).await;
    assert_eq!(closed.status, 200, "{closed:?}");
    let again = post_full(&env.http, &base, &close_conversation(conv, t_close)).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.headers["idempotent-replay"], "true");
    assert_eq!(again.body["status"], "closed");
    assert_eq!(keys(&again.body), keys(&closed.body), "same body shape");
    let other = post_full(
        &env.http,
        &base,
        &close_conversation(conv, t_close + chrono::Duration::seconds(1)),
    )
    .await;
    assert_eq!(
        (other.status, other.body["field"].as_str()),
        (400, Some("data.id"))
    );
    // The NEW_CONVERSATION that succeeded is still answered like its first
    // success after the close.
    let late = post_full(&env.http, &base, &new_conversation(conv, t_open)).await;
    assert_eq!(late.status, 201, "{late:?}");
    assert_eq!(late.headers["idempotent-replay"], "true");
    // A close of an unknown id is not a replay of anything.
    let unknown = post_full(
        &env.http,
        &base,
        &close_conversation(Uuid::new_v4(), t_close),
    )
    .await;
    assert_eq!(unknown.status, 400);

    assert_eq!(
        env.records().await,
        2,
        "one record per event that succeeded"
    );
    let row = env.row(conv).await.unwrap();
    assert_eq!(row.status, "CLOSED");
    assert_eq!(row.closed_at, Some(t_close));
    let text = metrics(&env.http, &base).await;
    for needle in [
        r#"chatpipe_ingest_idempotent_replays_total{event_type="NEW_CONVERSATION"} 2"#,
        r#"chatpipe_ingest_idempotent_replays_total{event_type="CLOSE_CONVERSATION"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_ids_of_outbound_or_other_conversations_messages_are_400() {
    let env = Env::start(2, &[]).await;
    let (conv, other) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(env.post(&new_conversation(conv, Utc::now())).await.0, 201);
    let (reply_id, foreign_id, own_id) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    seed_message(&env.db.url, reply_id, conv, "OUTBOUND").await;
    seed_message(&env.db.url, foreign_id, other, "INBOUND").await;
    seed_message(&env.db.url, own_id, conv, "INBOUND").await;

    for (id, target) in [
        (reply_id, conv),
        (foreign_id, conv),
        (reply_id, other),
        (own_id, other),
    ] {
        let (code, body) = env.post(&new_message(id, target, "hi", Utc::now())).await;
        assert_eq!(
            (code, body["field"].as_str()),
            (400, Some("data.id")),
            "{id} → {body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains(&id.to_string()),
            "{body}"
        );
    }
    // A redelivery of a stored INBOUND message to its own conversation is
    // fine (the processor dedupes), as is a fresh id; both of them at once
    // with refused ones share batched lookups and keep exact answers.
    let posts = (0..60).map(|i| {
        let (id, target, expect) = match i % 3 {
            0 => (own_id, conv, 202),
            1 => (foreign_id, conv, 400),
            _ => (Uuid::new_v4(), conv, 202),
        };
        let body = new_message(id, target, "again", Utc::now());
        let env = &env;
        async move { (expect, env.post(&body).await) }
    });
    let mut accepted = 0;
    for (expect, (code, body)) in futures::future::join_all(posts).await {
        assert_eq!(code, expect, "{body}");
        accepted += i64::from(code == 202);
    }
    assert_eq!(
        env.records().await,
        1 + accepted,
        "a refused message produces nothing"
    );
    let text = metrics(&env.http, &env.ingest.base_url()).await;
    for needle in [
        r#"chatpipe_ingest_message_id_conflicts_total{reason="outbound"} 2"#,
        r#"chatpipe_ingest_message_id_conflicts_total{reason="other_conversation"} 22"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_408_and_writes_nothing() {
    let env = Env::start(1, &["--body-read-timeout", "300ms"]).await;
    let conv = Uuid::new_v4();
    let body = new_conversation(conv, Utc::now()).to_string().into_bytes();
    let mut raw = RawClient::connect(env.ingest.addr).await;
    raw.send(&RawClient::head(body.len())).await;
    raw.send(&body[..body.len() / 2]).await;
    // Nothing more is sent.
    let answer = raw.answer().await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.json()["field"], "body", "{answer:?}");
    assert!(answer.json()["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        raw.read_to_close().await.is_empty(),
        "the connection is closed"
    );

    assert_eq!(env.row(conv).await, None, "nothing written");
    assert_eq!(env.records().await, 0, "nothing produced");
    let text = metrics(&env.http, &env.ingest.base_url()).await;
    for needle in [
        "chatpipe_ingest_body_read_timeouts_total 1",
        r#"chatpipe_ingest_requests_total{event_type="UNREAD",status="408"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // A client that sends its body in time is served normally.
    assert_eq!(env.post(&new_conversation(conv, Utc::now())).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_end_close_the_connection() {
    let env = Env::start(1, &["--header-read-timeout", "300ms"]).await;
    let mut raw = RawClient::connect(env.ingest.addr).await;
    raw.send(b"POST /webhook/ HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await;
    // Safety net only (the server closes after 300 ms): fail, don't hang.
    let rest = tokio::time::timeout(Duration::from_secs(60), raw.read_to_close())
        .await
        .expect("the server closed the connection");
    assert!(
        rest.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    chatpipe_tests::eventually(Duration::from_secs(10), "header timeout counted", || {
        let (http, base) = (env.http.clone(), env.ingest.base_url());
        async move {
            metrics(&http, &base)
                .await
                .contains(r#"chatpipe_ingest_connection_errors_total{kind="header_timeout"} 1"#)
                .then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(
        env.post(&new_conversation(Uuid::new_v4(), Utc::now()))
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_shed_with_503() {
    let env = Env::start(
        1,
        &["--max-concurrent-requests", "1", "--retry-after-secs", "4"],
    )
    .await;
    let base = env.ingest.base_url();
    // One request holds the only permit: its body is half sent.
    let held = Uuid::new_v4();
    let body = new_conversation(held, Utc::now()).to_string().into_bytes();
    let mut raw = RawClient::connect(env.ingest.addr).await;
    raw.send(&RawClient::head(body.len())).await;
    raw.send(&body[..10]).await;
    chatpipe_tests::eventually(Duration::from_secs(20), "one request being served", || {
        let (http, base) = (env.http.clone(), base.clone());
        async move {
            metrics(&http, &base)
                .await
                .contains("chatpipe_ingest_in_flight_requests 1")
                .then_some(())
        }
    })
    .await
    .unwrap();

    let shed = post_full(
        &env.http,
        &base,
        &new_conversation(Uuid::new_v4(), Utc::now()),
    )
    .await;
    assert_eq!(shed.status, 503, "{shed:?}");
    assert_eq!(shed.headers["retry-after"], "4");
    assert!(
        shed.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("concurrent")),
        "{shed:?}"
    );
    // The ops endpoints are not bounded.
    let ready = env.http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // The held request completes normally, and frees its permit.
    raw.send(&body[10..]).await;
    let answer = raw.answer().await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(
        env.post(&new_conversation(Uuid::new_v4(), Utc::now()))
            .await
            .0,
        201
    );
    assert_eq!(env.records().await, 2, "the shed request produced nothing");
    let text = metrics(&env.http, &base).await;
    for needle in [
        "chatpipe_ingest_shed_requests_total 1",
        r#"chatpipe_ingest_requests_total{event_type="UNREAD",status="503"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arrival_stamp_is_taken_after_the_body_is_read() {
    let env = Env::start(2, &[]).await;
    let conv = Uuid::new_v4();
    let bodies = [
        new_conversation(conv, Utc::now()),
        new_message(Uuid::new_v4(), conv, "slowly typed", Utc::now()),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let body = body.to_string().into_bytes();
        let mut raw = RawClient::connect(env.ingest.addr).await;
        raw.send(&RawClient::head(body.len())).await;
        raw.send(&body[..body.len() - 5]).await;
        // A slow upload: the rest arrives later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let last_byte_ms = Utc::now().timestamp_millis();
        raw.send(&body[body.len() - 5..]).await;
        let answer = raw.answer().await;
        assert_eq!(answer.status, [201, 202][i], "{answer:?}");
        let reply = answer.json();
        let partition = reply["partition"].as_i64().unwrap() as i32;
        let offset = reply["offset"].as_i64().unwrap();
        let record = support::read_record(&env.bootstrap, &env.topic, partition, offset).await;
        let stamp = record.timestamp().to_millis().unwrap();
        assert!(
            stamp >= last_byte_ms,
            "record stamped {stamp}, before its last body byte was sent at {last_byte_ms}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_floor_is_published_while_a_produce_is_stuck() {
    let db = chatpipe_tests::TestDb::create().await.unwrap();
    let hole = BlackHole::start().await;
    let replica = format!("ingest-floor-{}", Uuid::new_v4().simple());
    let ingest = chatpipe_ingest::spawn(support::args(
        &db.url,
        &hole.addr.to_string(),
        "chatpipe.events",
        &["--replica-name", &replica, "--produce-timeout", "10s"],
    ))
    .await
    .unwrap();
    let http = support::client();
    // Idle: the row exists with no floor.
    chatpipe_tests::eventually(Duration::from_secs(20), "the replica's row", || {
        let (url, replica) = (db.url.clone(), replica.clone());
        async move { inflight_row(&url, &replica).await.filter(|r| r.0.is_none()) }
    })
    .await
    .unwrap();

    let before_ms = Utc::now().timestamp_millis();
    let stuck = {
        let (http, base) = (http.clone(), ingest.base_url());
        let body = new_message(Uuid::new_v4(), Uuid::new_v4(), "into the void", Utc::now());
        tokio::spawn(async move { post(&http, &base, &body).await })
    };
    let (floor, first_heartbeat) = chatpipe_tests::eventually(
        Duration::from_secs(20),
        "a floor while the produce is stuck",
        || {
            let (url, replica) = (db.url.clone(), replica.clone());
            async move {
                match inflight_row(&url, &replica).await {
                    Some((Some(floor), heartbeat)) => Some((floor, heartbeat)),
                    _ => None,
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(
        floor >= before_ms,
        "floor {floor} is the stuck record's stamp (≥ {before_ms})"
    );
    assert!(
        !stuck.is_finished(),
        "the request is still waiting for the broker"
    );
    // While the floor stays, its heartbeat is refreshed.
    chatpipe_tests::eventually(Duration::from_secs(20), "a refreshed heartbeat", || {
        let (url, replica) = (db.url.clone(), replica.clone());
        async move {
            inflight_row(&url, &replica)
                .await
                .filter(|(f, hb)| *f == Some(floor) && *hb > first_heartbeat)
        }
    })
    .await
    .unwrap();

    let (code, body) = stuck.await.unwrap();
    assert_eq!(code, 503, "{body}");
    chatpipe_tests::eventually(Duration::from_secs(20), "the floor cleared", || {
        let (url, replica) = (db.url.clone(), replica.clone());
        async move { inflight_row(&url, &replica).await.filter(|r| r.0.is_none()) }
    })
    .await
    .unwrap();
    let text = metrics(&http, &ingest.base_url()).await;
    assert!(
        text.contains("chatpipe_ingest_inflight_floor_writes_total"),
        "{text}"
    );
    ingest.shutdown().await.unwrap();
    assert_eq!(
        inflight_row(&db.url, &replica).await,
        None,
        "a clean shutdown deletes the row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sessions_end_transactions_left_idle() {
    let db = chatpipe_tests::TestDb::create().await.unwrap();
    let options = chatpipe_ingest::config::session_options(Duration::from_millis(200));
    let pool = chatpipe_ingest::lifecycle::pool(&db.url, 1, &options).unwrap();
    let mut client = pool.get().await.unwrap();
    let shown: String = client
        .query_one("SHOW idle_in_transaction_session_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "200ms");
    // A transaction left idle (a replica frozen between the broker's ack
    // and its commit) is ended by the server, and its row lock with it.
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO conversations (id, status, created_at, updated_at) VALUES ($1, 'OPEN', now(), now())",
        &[&Uuid::new_v4()],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(tx.commit().await.is_err(), "the session was terminated");
    assert_eq!(conversation_count(&db.url).await, 0, "rolled back");
}
