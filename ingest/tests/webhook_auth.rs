//! Webhook authenticity over HTTP with ingest running in-process and
//! secrets configured: every class of unauthenticated request is `401`
//! naming the header, counted by reason, and writes nothing (no row, no
//! record), even when it would otherwise be a replay or an invalid body;
//! correctly signed requests (with either secret of a rotation) get their
//! usual `201`/`202`/replay answers.

mod support;

use chatpipe_ingest::signature::sign;
use chatpipe_tests::{new_conversation, new_message};
use chrono::{SubsecRound, Utc};
use serde_json::Value;
use support::{conversation_count, metrics, Env};
use uuid::Uuid;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgcm90YXRpb24hIQ==";
const FORGED: &str = "whsec_bm90IGEgc2VjcmV0IG9mIHRoaXMgaW5nZXN0ISE=";

type Headers = Vec<(&'static str, String)>;

/// A request that must be refused: body, headers, the `field` and the
/// `reason` of its `401`.
type Refused = (Vec<u8>, Headers, &'static str, &'static str);

struct Answer {
    status: u16,
    replay: bool,
    body: Value,
}

/// POSTs `body` to `/webhook/` with `headers`.
async fn post(env: &Env, body: &[u8], headers: &[(&str, String)]) -> Answer {
    let mut r = env
        .http
        .post(format!("{}/webhook/", env.ingest.base_url()))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r.body(body.to_vec()).send().await.unwrap();
    let status = r.status().as_u16();
    let replay = r.headers().get("idempotent-replay").is_some();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        status,
        replay,
        body,
    }
}

/// The three Standard Webhooks headers of `body` signed with `secret` at
/// `timestamp`.
fn signed(secret: &str, body: &[u8], timestamp: i64) -> Vec<(&'static str, String)> {
    let id = format!("msg_{}", Uuid::new_v4().simple());
    let signature = sign(secret, &id, timestamp, body).unwrap();
    vec![
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ]
}

fn without(mut headers: Vec<(&'static str, String)>, name: &str) -> Vec<(&'static str, String)> {
    headers.retain(|(k, _)| *k != name);
    headers
}

fn with(
    mut headers: Vec<(&'static str, String)>,
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    headers.retain(|(k, _)| *k != name);
    headers.push((name, value.to_owned()));
    headers
}

fn metric(text: &str, reason: &str) -> u64 {
    let prefix = format!("chatpipe_ingest_webhook_auth_failures_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_forged_stale_and_future_requests_are_401_and_write_nothing() {
    let secrets = format!("{OLD} {NEW}");
    let env = Env::start(2, &["--webhook-secrets", &secrets]).await;
    let conv = Uuid::new_v4();
    let create = serde_json::to_vec(&new_conversation(conv, Utc::now().trunc_subsecs(3))).unwrap();
    let now = Utc::now().timestamp();
    let good = signed(NEW, &create, now);
    let tampered = serde_json::to_vec(&new_conversation(
        Uuid::new_v4(),
        Utc::now().trunc_subsecs(3),
    ))
    .unwrap();

    // (body, headers, field, reason)
    let cases: Vec<Refused> = vec![
        (create.clone(), vec![], "webhook-id", "missing_header"),
        (
            create.clone(),
            without(good.clone(), "webhook-signature"),
            "webhook-signature",
            "missing_header",
        ),
        (
            create.clone(),
            without(good.clone(), "webhook-timestamp"),
            "webhook-timestamp",
            "missing_header",
        ),
        (
            create.clone(),
            with(good.clone(), "webhook-timestamp", "yesterday"),
            "webhook-timestamp",
            "bad_timestamp",
        ),
        (
            create.clone(),
            signed(NEW, &create, now - 400),
            "webhook-timestamp",
            "stale",
        ),
        (
            create.clone(),
            signed(NEW, &create, now + 400),
            "webhook-timestamp",
            "future",
        ),
        (
            create.clone(),
            signed(FORGED, &create, now),
            "webhook-signature",
            "bad_signature",
        ),
        (
            create.clone(),
            with(good.clone(), "webhook-signature", "v1,Zm9yZ2Vk"),
            "webhook-signature",
            "bad_signature",
        ),
        // Signed for another body.
        (
            tampered.clone(),
            good.clone(),
            "webhook-signature",
            "bad_signature",
        ),
        // Verified before JSON parsing: an unsigned invalid body is 401, not 400.
        (b"not json".to_vec(), vec![], "webhook-id", "missing_header"),
    ];
    for (body, headers, field, _) in &cases {
        let a = post(&env, body, headers).await;
        assert_eq!(a.status, 401, "{headers:?} → {}", a.body);
        assert_eq!(a.body["field"], *field, "{headers:?} → {}", a.body);
        assert!(
            a.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            a.body
        );
        assert_eq!(a.body.as_object().unwrap().len(), 2, "{}", a.body);
    }
    assert_eq!(conversation_count(&env.db.url).await, 0, "no row on a 401");
    assert_eq!(env.records().await, 0, "no record on a 401");
    let text = metrics(&env.http, &env.ingest.base_url()).await;
    for reason in [
        "missing_header",
        "bad_timestamp",
        "stale",
        "future",
        "bad_signature",
    ] {
        let expected = cases.iter().filter(|c| c.3 == reason).count() as u64;
        assert_eq!(metric(&text, reason), expected, "{reason}\n{text}");
    }
    assert!(
        text.contains("chatpipe_ingest_webhook_auth_secrets 2"),
        "{text}"
    );

    // Signed with the new secret of the rotation: created.
    let a = post(&env, &create, &good).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(!a.replay);
    // An identical redelivery is a replay only when signed too.
    let a = post(&env, &create, &signed(OLD, &create, now)).await;
    assert_eq!((a.status, a.replay), (201, true), "{}", a.body);
    for headers in [
        vec![],
        signed(FORGED, &create, now),
        signed(OLD, &create, now - 400),
    ] {
        let a = post(&env, &create, &headers).await;
        assert_eq!(
            a.status, 401,
            "a replay is not answered unsigned: {}",
            a.body
        );
        assert!(!a.replay);
    }
    // Signed with the old secret: accepted.
    let msg = serde_json::to_vec(&new_message(Uuid::new_v4(), conv, "olá", Utc::now())).unwrap();
    let a = post(&env, &msg, &signed(OLD, &msg, Utc::now().timestamp())).await;
    assert_eq!(a.status, 202, "{}", a.body);
    // Signed but invalid: the usual 400.
    let bad = br#"{"type":"NEW_THING"}"#;
    let a = post(&env, bad, &signed(OLD, bad, Utc::now().timestamp())).await;
    assert_eq!((a.status, &a.body["field"]), (400, &Value::from("type")));

    assert_eq!(conversation_count(&env.db.url).await, 1);
    assert_eq!(env.records().await, 2, "only the signed create and message");
    let text = metrics(&env.http, &env.ingest.base_url()).await;
    assert!(
        text.contains("chatpipe_ingest_webhook_auth_successes_total{secret=\"1\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("chatpipe_ingest_webhook_auth_successes_total{secret=\"2\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "chatpipe_ingest_requests_total{event_type=\"UNAUTHENTICATED\",status=\"401\"}"
        ),
        "{text}"
    );
    env.ingest.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_tolerance_is_used() {
    let env = Env::start(1, &["--webhook-secrets", OLD, "--webhook-tolerance", "10s"]).await;
    let body = serde_json::to_vec(&new_message(
        Uuid::new_v4(),
        Uuid::new_v4(),
        "hi",
        Utc::now(),
    ))
    .unwrap();
    let now = Utc::now().timestamp();
    let a = post(&env, &body, &signed(OLD, &body, now - 60)).await;
    assert_eq!(
        (a.status, &a.body["field"]),
        (401, &Value::from("webhook-timestamp"))
    );
    let a = post(&env, &body, &signed(OLD, &body, now + 60)).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = post(&env, &body, &signed(OLD, &body, now - 2)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(env.records().await, 1);
    env.ingest.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_malformed_secret_stops_the_start_without_showing_it() {
    let hidden = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3Qtc2hvdw";
    let bad = format!("{OLD} whsec_!{hidden}");
    let args = support::args(
        "postgres://postgres@127.0.0.1:5432/chatpipe_unused",
        "127.0.0.1:1",
        "unused",
        &["--webhook-secrets", &bad],
    );
    let e = match chatpipe_ingest::spawn(args).await {
        Ok(_) => panic!("a malformed secret must stop the start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("webhook secret 2 of 2"), "{e}");
    assert!(!e.contains(hidden) && !e.contains(&OLD[6..]), "{e}");
}
