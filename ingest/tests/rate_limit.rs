//! The per-client rate limit over HTTP, ingest running in-process with
//! `--rate-limit 1 --rate-limit-burst 3 --rate-limit-client
//! forwarded-for`: a client's burst is served (invalid bodies, answered
//! `400` at once, so no slow first produce refills the bucket), the next
//! request is `429`
//! with `Retry-After` and a JSON error, writes nothing and is counted;
//! another client (another `X-Forwarded-For` address) is served meanwhile;
//! after the wait the first client is served again.

mod support;

use std::time::Duration;

use chatpipe_tests::new_conversation;
use chrono::{SubsecRound, Utc};
use serde_json::Value;
use support::{conversation_count, metrics, Env};
use uuid::Uuid;

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn post_as(env: &Env, client: &str, body: &Value) -> Answer {
    let r = env
        .http
        .post(format!("{}/webhook/", env.ingest.base_url()))
        .header("x-forwarded-for", format!("203.0.113.250, {client}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

fn conversation() -> Value {
    new_conversation(Uuid::new_v4(), Utc::now().trunc_subsecs(3))
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_and_others_are_served() {
    let env = Env::start(
        2,
        &[
            "--rate-limit",
            "1",
            "--rate-limit-burst",
            "3",
            "--rate-limit-client",
            "forwarded-for",
        ],
    )
    .await;
    let a = "198.51.100.1";
    let b = "198.51.100.2";
    for i in 0..3 {
        let r = post_as(&env, a, &serde_json::json!({})).await;
        assert_eq!(r.status, 400, "burst request {i}: {}", r.body);
    }
    let limited = post_as(&env, a, &conversation()).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(
        limited.retry_after,
        Some(1),
        "under a second rounds up to 1 s"
    );
    assert_eq!(limited.body["retry_after"], 1);
    assert!(
        limited.body["error"]
            .as_str()
            .unwrap()
            .contains("1 per second"),
        "{}",
        limited.body
    );
    assert_eq!(
        conversation_count(&env.db.url).await,
        0,
        "the refused request wrote nothing"
    );
    // Another client is not affected.
    let other = post_as(&env, b, &conversation()).await;
    assert_eq!(other.status, 201, "{}", other.body);
    // After the wait, the first client is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = post_as(&env, a, &conversation()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(conversation_count(&env.db.url).await, 2);
    let m = metrics(&env.http, &env.ingest.base_url()).await;
    assert!(
        m.lines()
            .any(|l| l == "chatpipe_ingest_rate_limited_total 1"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("chatpipe_ingest_requests_total") && l.contains("429")),
        "answered 429s are counted with the others"
    );
}
