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
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::{json, Value};
use support::{conversation_count, post, post_raw, Env};
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

    // Existing OPEN id.
    let (code, body) = env.post(&new_conversation(conv, t0)).await;
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
    let conv = Uuid::new_v4();
    let body = new_conversation(conv, Utc::now());
    let bases = [env.ingest.base_url(), replica.base_url()];
    let posts = (0..50).map(|i| {
        let (http, base, body) = (env.http.clone(), bases[i % 2].clone(), body.clone());
        tokio::spawn(async move { post(&http, &base, &body).await })
    });
    let mut created = 0;
    let mut refused = 0;
    for r in futures::future::join_all(posts).await {
        match r.unwrap() {
            (201, _) => created += 1,
            (400, b) => {
                assert_eq!(b["field"], "data.id", "{b}");
                refused += 1
            }
            (code, b) => panic!("unexpected {code}: {b}"),
        }
    }
    assert_eq!((created, refused), (1, 49));
    assert_eq!(
        env.records().await,
        1,
        "exactly one NEW_CONVERSATION record"
    );
    assert_eq!(env.row(conv).await.unwrap().status, "OPEN");
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
