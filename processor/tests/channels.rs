//! Channels end to end with the real `chatpipe-processor` binary, the test
//! broker and real Postgres: the replies of channel conversations are
//! queued for delivery exactly once (also across `kill -9` restarts),
//! other conversations' are not; FAQ rules answer and a changed rules file
//! is picked up without a restart (a broken one is kept out, with a
//! `/readyz` warning); a reply bot answers, and a slow or failing bot
//! falls back to the rules or the template.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chatpipe_core::Event;
use chatpipe_tests::{create_topic, eventually, expected_reply, kafka_bootstrap, Service, TestDb};
use chrono::Utc;
use common::*;
use rand::Rng;
use uuid::Uuid;

const SHORT: &[(&str, &str)] = &[
    ("CHATPIPE_GROUPING_GAP", "500ms"),
    ("CHATPIPE_LATE_TOLERANCE", "600ms"),
];

const WAIT: Duration = Duration::from_secs(30);

fn text(id: Uuid, c: Uuid, content: &str) -> Event {
    Event::NewMessage {
        id,
        conversation_id: c,
        content: content.to_owned(),
        timestamp: Utc::now(),
    }
}

/// Makes `conv` a channel conversation (channel `tg`) of a new contact.
async fn seed_channel(db: &TestDb, conv: Uuid) {
    let c = db.client().await.unwrap();
    let contact = Uuid::new_v4();
    c.execute(
        "INSERT INTO contacts (id, channel, provider_user_id) VALUES ($1, 'tg', $2)",
        &[&contact, &contact.simple().to_string()],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO channel_conversations (conversation_id, channel, contact_id) VALUES ($1, 'tg', $2)",
        &[&conv, &contact],
    )
    .await
    .unwrap();
}

async fn count(db: &TestDb, sql: &str, conv: Uuid) -> i64 {
    db.client()
        .await
        .unwrap()
        .query_one(sql, &[&conv])
        .await
        .unwrap()
        .get(0)
}

/// The one reply of `conv`, once written.
async fn only_reply(db: &TestDb, conv: Uuid) -> String {
    eventually(WAIT, "the reply", || async {
        let r = replies_of(db, conv).await;
        (r.len() == 1).then(|| r[0].0.clone())
    })
    .await
    .unwrap()
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The value of a metric line (`name{labels}` exactly as exported).
async fn metric(p: &Service, series: &str) -> f64 {
    let (_, body) = get_text(&format!("{}/metrics", p.base_url())).await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_replies_are_queued_exactly_once_across_kills() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    let channel: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let plain: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for c in &channel {
        seed_channel(&db, *c).await;
    }
    let mut p = processor(&db, &bootstrap, &topic, SHORT).await;
    let prod = Producer::new(&bootstrap, &topic);
    let all: Vec<Uuid> = channel.iter().chain(&plain).copied().collect();
    for c in &all {
        prod.send(&conv(*c)).await;
    }
    let rounds = 4;
    for round in 0..rounds {
        for c in &all {
            prod.send(&msg(Uuid::new_v4(), *c)).await;
        }
        // Crash at a random moment of the round (mid-batch or between
        // batches), then start again from the committed positions.
        let pause = rand::rng().random_range(50..900);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if round % 2 == 0 {
            p.kill9();
            p.start().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let inbound = all.len() * rounds;
    eventually(
        Duration::from_secs(60),
        "every message answered",
        || async {
            let s = snapshot(&db).await;
            (s.inbound.len() == inbound && s.unreplied == 0).then_some(())
        },
    )
    .await
    .unwrap();
    // Once more, a crash after everything was written: the replay from
    // the committed positions queues nothing again.
    p.kill9();
    p.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let c = db.client().await.unwrap();
    let mut queued_total = 0;
    for conv in &channel {
        let replies = count(
            &db,
            "SELECT count(*) FROM messages WHERE conversation_id = $1 AND direction = 'OUTBOUND'",
            *conv,
        )
        .await;
        assert!(replies >= 1);
        let rows = c
            .query(
                "SELECT m.id, d.status, d.channel,
                        (SELECT count(*) FROM delivery_events e WHERE e.delivery_id = d.id AND e.event = 'queued'
                            AND e.source = 'processor'),
                        (SELECT count(*) FROM delivery_events e WHERE e.delivery_id = d.id),
                        (SELECT author_kind FROM message_meta mm WHERE mm.message_id = m.id)
                   FROM messages m LEFT JOIN deliveries d ON d.message_id = m.id
                  WHERE m.conversation_id = $1 AND m.direction = 'OUTBOUND'",
                &[conv],
            )
            .await
            .unwrap();
        for r in &rows {
            let id: Uuid = r.get(0);
            let status: Option<String> = r.get(1);
            assert_eq!(
                status.as_deref(),
                Some("queued"),
                "reply {id} has its delivery"
            );
            assert_eq!(r.get::<_, Option<String>>(2).as_deref(), Some("tg"));
            assert_eq!(r.get::<_, i64>(3), 1, "one queued event for {id}");
            assert_eq!(r.get::<_, i64>(4), 1, "nothing else for {id}");
            assert_eq!(r.get::<_, Option<String>>(5).as_deref(), Some("bot"));
        }
        let deliveries = count(
            &db,
            "SELECT count(*) FROM deliveries WHERE conversation_id = $1",
            *conv,
        )
        .await;
        assert_eq!(deliveries, replies, "one delivery per reply of {conv}");
        queued_total += deliveries;
    }
    for conv in &plain {
        assert!(!replies_of(&db, *conv).await.is_empty());
        for sql in [
            "SELECT count(*) FROM deliveries WHERE conversation_id = $1",
            "SELECT count(*) FROM message_meta WHERE conversation_id = $1",
        ] {
            assert_eq!(count(&db, sql, *conv).await, 0, "{sql} for {conv}");
        }
    }
    let all_deliveries: i64 = c
        .query_one("SELECT count(*) FROM deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all_deliveries, queued_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_rules_answer_and_a_changed_file_is_picked_up_without_restart() {
    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"keyword":"price","answer":"It costs 10 EUR."},
                     {"regex":"(?i)open(ing)? hours","answer":"We open at 9."}]}"#,
    )
    .unwrap();
    let path = rules.display().to_string();
    let mut envs = SHORT.to_vec();
    envs.extend([
        ("CHATPIPE_REPLY_RULES_FILE", path.as_str()),
        ("CHATPIPE_REPLY_RULES_REFRESH", "100ms"),
        (
            "CHATPIPE_REPLY_TEMPLATE",
            "Got {{ count }}: {{ messages | join(\" / \") }}",
        ),
    ]);
    let p = processor(&db, &bootstrap, &topic, &envs).await;
    let prod = Producer::new(&bootstrap, &topic);
    let ask = |content: &'static str| {
        let prod = &prod;
        async move {
            let c = Uuid::new_v4();
            prod.send(&conv(c)).await;
            prod.send(&text(Uuid::new_v4(), c, content)).await;
            c
        }
    };
    let (a, b, h) = (
        ask("What's the PRICE?").await,
        ask("hello").await,
        ask("opening hours please").await,
    );
    assert_eq!(only_reply(&db, a).await, "It costs 10 EUR.");
    assert_eq!(only_reply(&db, b).await, "Got 1: hello");
    assert_eq!(only_reply(&db, h).await, "We open at 9.");
    // The newest message with a match decides.
    let c = Uuid::new_v4();
    prod.send(&conv(c)).await;
    prod.send(&text(Uuid::new_v4(), c, "opening hours?")).await;
    prod.send(&text(Uuid::new_v4(), c, "and the price?")).await;
    assert_eq!(only_reply(&db, c).await, "It costs 10 EUR.");

    // A new file: picked up while running.
    std::fs::write(
        &rules,
        r#"{"rules":[{"keyword":"price","answer":"Now 12 EUR."}]}"#,
    )
    .unwrap();
    eventually(WAIT, "the reload", || async {
        (metric(&p, "chatpipe_processor_reply_rules_reloads_total").await >= 2.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(only_reply(&db, ask("price?").await).await, "Now 12 EUR.");
    assert_eq!(
        only_reply(&db, ask("opening hours").await).await,
        "Got 1: opening hours"
    );

    // A broken file: the rules in use stay, ready with a warning.
    std::fs::write(&rules, r#"{"rules":[{"keyword":"price"}"#).unwrap();
    let body = eventually(WAIT, "the warning", || async {
        let (status, body) = get_text(&format!("{}/readyz", p.base_url())).await;
        (status == 200 && body.contains("FAQ rules file")).then_some(body)
    })
    .await
    .unwrap();
    assert!(body.contains("keeping the 1 rules"), "{body}");
    assert_eq!(
        metric(&p, "chatpipe_processor_reply_rules_reload_failures_total").await,
        1.0
    );
    assert_eq!(only_reply(&db, ask("price?").await).await, "Now 12 EUR.");
    // Fixed again: the warning goes.
    std::fs::write(&rules, r#"{"rules":[]}"#).unwrap();
    eventually(WAIT, "the warning to clear", || async {
        let (status, body) = get_text(&format!("{}/readyz", p.base_url())).await;
        (status == 200 && !body.contains("warnings")).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(only_reply(&db, ask("price?").await).await, "Got 1: price?");
    let faq = metric(
        &p,
        "chatpipe_processor_replies_by_policy_total{policy=\"faq\"}",
    )
    .await;
    let template = metric(
        &p,
        "chatpipe_processor_replies_by_policy_total{policy=\"template\"}",
    )
    .await;
    assert_eq!((faq, template), (5.0, 3.0));
}

/// What the test bot received: (Authorization header, body).
type Calls = Arc<Mutex<Vec<(Option<String>, serde_json::Value)>>>;

async fn bot(
    State(calls): State<Calls>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Ok(mut g) = calls.lock() {
        g.push((auth, body.clone()));
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    if last.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Json(serde_json::json!({ "content": "too late" })).into_response();
    }
    if last.contains("fail") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    if last.contains("junk") {
        return (StatusCode::OK, "not json").into_response();
    }
    if last.contains("empty") {
        return Json(serde_json::json!({ "content": "" })).into_response();
    }
    Json(serde_json::json!({ "content": format!("Bot: {last}") })).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_answers_and_a_slow_or_failing_bot_falls_back() {
    let calls: Calls = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_url = format!("http://{}/reply", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/reply", axum::routing::post(bot))
        .with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let bootstrap = kafka_bootstrap().await;
    let topic = create_topic(&bootstrap, 2).await;
    let db = TestDb::create().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"keyword":"price","answer":"FAQ price"}]}"#,
    )
    .unwrap();
    let path = rules.display().to_string();
    let mut envs = SHORT.to_vec();
    envs.extend([
        ("CHATPIPE_REPLY_RULES_FILE", path.as_str()),
        ("CHATPIPE_REPLY_BOT_URL", bot_url.as_str()),
        ("CHATPIPE_REPLY_BOT_TOKEN", "bot-token-1"),
        ("CHATPIPE_REPLY_BOT_TIMEOUT", "400ms"),
    ]);
    let p = processor(&db, &bootstrap, &topic, &envs).await;
    let prod = Producer::new(&bootstrap, &topic);
    let mut convs: BTreeMap<&str, (Uuid, Vec<Uuid>)> = BTreeMap::new();
    let cases: [(&str, &[&str]); 6] = [
        ("bot", &["hi", "there"]),
        ("slow+faq", &["slow, and the price?"]),
        ("slow", &["slow"]),
        ("fail", &["fail"]),
        ("junk+faq", &["price junk"]),
        ("empty", &["empty"]),
    ];
    let started = std::time::Instant::now();
    for (name, texts) in cases {
        let c = Uuid::new_v4();
        prod.send(&conv(c)).await;
        let mut ids = vec![];
        for t in texts {
            let id = Uuid::new_v4();
            prod.send(&text(id, c, t)).await;
            ids.push(id);
        }
        convs.insert(name, (c, ids));
    }
    let reply = |name: &str| {
        let (c, ids) = convs[name].clone();
        let db = &db;
        async move { (only_reply(db, c).await, ids) }
    };
    assert_eq!(reply("bot").await.0, "Bot: there");
    assert_eq!(reply("slow+faq").await.0, "FAQ price");
    let (slow, ids) = reply("slow").await;
    assert_eq!(slow, expected_reply(&ids));
    let (fail, ids) = reply("fail").await;
    assert_eq!(fail, expected_reply(&ids));
    assert_eq!(reply("junk+faq").await.0, "FAQ price");
    let (empty, ids) = reply("empty").await;
    assert_eq!(empty, expected_reply(&ids));
    // Two slow replies cost about one timeout, not two each in turn (the
    // bot sleeps 3 s; the whole run is far below).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // What the bot was sent.
    let (c, ids) = convs["bot"].clone();
    let stored_reply: Uuid = db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT id FROM messages WHERE conversation_id = $1 AND direction = 'OUTBOUND'",
            &[&c],
        )
        .await
        .unwrap()
        .get(0);
    let seen = calls.lock().unwrap().clone();
    let (auth, body) = seen
        .iter()
        .find(|(_, b)| b["conversation_id"] == c.to_string())
        .cloned()
        .expect("the bot was asked");
    assert_eq!(auth.as_deref(), Some("Bearer bot-token-1"));
    assert_eq!(body["reply_id"], stored_reply.to_string());
    let messages = body["messages"].as_array().unwrap();
    let sent: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            (ids[0].to_string(), "hi".to_owned()),
            (ids[1].to_string(), "there".to_owned())
        ]
    );
    assert!(messages[0]["timestamp"]
        .as_str()
        .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()));

    let failures =
        |r: &str| format!("chatpipe_processor_reply_bot_failures_total{{reason=\"{r}\"}}");
    assert_eq!(metric(&p, &failures("timeout")).await, 2.0);
    assert_eq!(metric(&p, &failures("status")).await, 1.0);
    assert_eq!(metric(&p, &failures("bad_json")).await, 1.0);
    assert_eq!(metric(&p, &failures("empty")).await, 1.0);
    let by =
        |policy: &str| format!("chatpipe_processor_replies_by_policy_total{{policy=\"{policy}\"}}");
    assert_eq!(
        (
            metric(&p, &by("bot")).await,
            metric(&p, &by("faq")).await,
            metric(&p, &by("template")).await
        ),
        (1.0, 2.0, 3.0)
    );
}

#[test]
fn an_unusable_policy_refuses_the_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"rules":[{"keyword":"a","regex":"b","answer":"x"}]}"#,
    )
    .unwrap();
    let cases: [(&str, String, &str); 3] = [
        (
            "CHATPIPE_REPLY_TEMPLATE",
            "Hi {{ nme }}".to_owned(),
            "reply template",
        ),
        (
            "CHATPIPE_REPLY_RULES_FILE",
            rules.display().to_string(),
            "reply rule 0: has both",
        ),
        (
            "CHATPIPE_REPLY_BOT_URL",
            "bot.example/reply".to_owned(),
            "--reply-bot-url",
        ),
    ];
    for (var, value, expected) in cases {
        let out = std::process::Command::new(chatpipe_tests::binary("chatpipe-processor"))
            .env(var, &value)
            .env("CHATPIPE_LISTEN", "127.0.0.1:0")
            .env(
                "CHATPIPE_POSTGRES_URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} started");
        assert!(stderr.contains(expected), "{var}={value}: {stderr}");
    }
}
