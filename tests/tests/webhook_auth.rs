//! Webhook authenticity end to end (real binaries, real broker, real
//! Postgres, shortened windows): `chatpipe-ingest` started with
//! `CHATPIPE_WEBHOOK_SECRETS` (two secrets, as during a rotation) answers
//! unsigned, forged, stale and future-dated webhooks `401` naming the header
//! and lets none of them reach the pipeline, while a conversation signed
//! with either secret gets its reply.
//!
//! The signatures are made here with the `hmac` and `sha2` crates (checked
//! against the Standard Webhooks test vector), independent of ingest's
//! code.

mod common;

use std::time::Duration;

use chatpipe_tests::{expected_reply, new_conversation, new_message};
use chrono::Utc;
use common::{event_time, outbound, Options, Pipeline};
use serde_json::Value;
use uuid::Uuid;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_c2Vjb25kIHNlY3JldCBvZiB0aGUgcm90YXRpb24hIQ==";
const FORGED: &str = "whsec_bm90IGEgc2VjcmV0IG9mIHRoaXMgaW5nZXN0ISE=";

// ---------------------------------------------------------------------------
// Signing (the hmac and sha2 crates, independent of ingest's code)
// ---------------------------------------------------------------------------

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under `secret`.
fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ secret"))
        .expect("base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

/// The three Standard Webhooks headers of `body` signed with `secret`.
fn signed(secret: &str, body: &[u8], timestamp: i64) -> Vec<(&'static str, String)> {
    let id = format!("msg_{}", Uuid::new_v4().simple());
    let sig = signature(secret, &id, timestamp, body);
    vec![
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sig),
    ]
}

#[test]
fn the_test_signer_reproduces_the_published_vector() {
    assert_eq!(
        signature(
            OLD,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

// ---------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------

/// POSTs `body` with `headers` to the pipeline's ingest.
async fn post(p: &Pipeline, body: &Value, headers: &[(&str, String)]) -> (u16, Value) {
    let mut r = p
        .http
        .post(format!("{}/webhook/", p.ingest.base_url()))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    let r = r
        .body(body.to_string())
        .send()
        .await
        .expect("POST /webhook/");
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

async fn post_signed(p: &Pipeline, secret: &str, body: &Value, status: u16) {
    let bytes = body.to_string().into_bytes();
    let (code, reply) = post(p, body, &signed(secret, &bytes, Utc::now().timestamp())).await;
    assert_eq!(code, status, "signed POST {body}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_webhooks_reach_the_pipeline_and_get_their_reply() {
    let mut opts = Options::short();
    opts.ingest_env = vec![("CHATPIPE_WEBHOOK_SECRETS".into(), format!("{OLD}  {NEW}"))];
    let p = Pipeline::start(opts).await;

    // Refused: unsigned, forged, stale, future-dated, tampered.
    let intruder = Uuid::new_v4();
    let open = new_conversation(intruder, event_time(0));
    let bytes = open.to_string().into_bytes();
    let now = Utc::now().timestamp();
    let other = new_conversation(Uuid::new_v4(), event_time(0))
        .to_string()
        .into_bytes();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "webhook-id"),
        (signed(FORGED, &bytes, now), "webhook-signature"),
        (signed(OLD, &bytes, now - 3600), "webhook-timestamp"),
        (signed(NEW, &bytes, now + 3600), "webhook-timestamp"),
        (signed(NEW, &other, now), "webhook-signature"),
    ];
    for (headers, field) in &cases {
        let (code, reply) = post(&p, &open, headers).await;
        assert_eq!(code, 401, "{headers:?}: {reply}");
        assert_eq!(reply["field"], *field, "{headers:?}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // A message to it, unsigned, is refused as well.
    let (code, _) = post(
        &p,
        &new_message(Uuid::new_v4(), intruder, "let me in", event_time(1)),
        &[],
    )
    .await;
    assert_eq!(code, 401);

    // A conversation signed with the new secret, its message with the old
    // one (a rotation in progress): the reply comes.
    let c = Uuid::new_v4();
    let m = Uuid::new_v4();
    post_signed(&p, NEW, &new_conversation(c, event_time(0)), 201).await;
    post_signed(
        &p,
        OLD,
        &new_message(m, c, "olá, assinado", event_time(1)),
        202,
    )
    .await;
    let view = p.wait_replies(c, 1).await;
    let replies = outbound(&view);
    assert_eq!(replies.len(), 1, "{view}");
    assert_eq!(replies[0]["content"], expected_reply(&[m]), "{view}");

    // Nothing of the refused requests reached the pipeline, and each was
    // counted by reason.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.conversation(intruder).await,
        None,
        "a refused conversation was stored"
    );
    let metrics = p
        .http
        .get(format!("{}/metrics", p.ingest.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("chatpipe_ingest_webhook_auth_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(failures, cases.len() as u64 + 1, "{metrics}");
}
