//! The real `chatpipe-ingest` binary against a broker of the test's own:
//! a stopped broker turns into `503` + `Retry-After` within the produce
//! timeout with nothing left in Postgres, ingest recovers without a
//! restart when the broker returns, and SIGTERM shuts down cleanly.

mod support;

use std::time::{Duration, Instant};

use chatpipe_tests::{
    close_conversation, create_topic, new_conversation, new_message, PrivateBroker, Service, TestDb,
};
use chrono::Utc;
use support::{client, conversation_row};
use uuid::Uuid;

async fn post_timed(
    http: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let r = http
        .post(format!("{base}/webhook/"))
        .json(body)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status().as_u16(), retry_after, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_503_within_the_timeout_and_recovers_without_restart() {
    let mut broker = PrivateBroker::start().await.unwrap();
    let topic = create_topic(&broker.bootstrap, 4).await;
    let db = TestDb::create().await.unwrap();
    let timeout = Duration::from_secs(2);
    let ingest = Service::spawn(
        "chatpipe-ingest",
        &[
            ("CHATPIPE_POSTGRES_URL", db.url.as_str()),
            ("CHATPIPE_KAFKA_BROKERS", broker.bootstrap.as_str()),
            ("CHATPIPE_KAFKA_TOPIC", topic.as_str()),
            ("CHATPIPE_PRODUCE_TIMEOUT", "2s"),
            ("CHATPIPE_RETRY_AFTER_SECS", "3"),
        ],
    )
    .await
    .unwrap();
    let base = ingest.base_url();
    let http = client();

    let open = Uuid::new_v4();
    assert_eq!(
        post_timed(&http, &base, &new_conversation(open, Utc::now()))
            .await
            .0,
        201
    );

    broker.stop();

    // Every event type: 503 + Retry-After within the timeout (plus a small
    // allowance for scheduling), nothing committed.
    let fresh = Uuid::new_v4();
    let bodies = [
        new_conversation(fresh, Utc::now()),
        new_message(Uuid::new_v4(), open, "while down", Utc::now()),
        close_conversation(open, Utc::now()),
    ];
    for body in &bodies {
        let (code, retry_after, elapsed) = post_timed(&http, &base, body).await;
        assert_eq!(code, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("3"));
        assert!(
            elapsed <= timeout + Duration::from_millis(1500),
            "503 took {elapsed:?} with a produce timeout of {timeout:?}"
        );
    }
    assert_eq!(conversation_row(&db.url, fresh).await, None, "rolled back");
    assert_eq!(
        conversation_row(&db.url, open).await.unwrap().status,
        "OPEN",
        "close rolled back"
    );
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without a broker");

    broker.restart().await.unwrap();

    // Same ingest process: 2xx again once the producer has reconnected.
    let started = Instant::now();
    let code = loop {
        let (code, _, _) = post_timed(&http, &base, &new_conversation(fresh, Utc::now())).await;
        if code != 503 || started.elapsed() > Duration::from_secs(60) {
            break code;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        code, 201,
        "the id refused with 503 was never committed, so it is created now"
    );
    eprintln!(
        "recovered {:?} after the broker restarted",
        started.elapsed()
    );
    assert_eq!(
        post_timed(
            &http,
            &base,
            &new_message(Uuid::new_v4(), open, "back", Utc::now())
        )
        .await
        .0,
        202
    );
    assert_eq!(
        post_timed(&http, &base, &close_conversation(open, Utc::now()))
            .await
            .0,
        200
    );
    assert_eq!(
        conversation_row(&db.url, open).await.unwrap().status,
        "CLOSED"
    );
    assert_eq!(
        conversation_row(&db.url, fresh).await.unwrap().status,
        "OPEN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_cleanly() {
    let db = TestDb::create().await.unwrap();
    let broker = PrivateBroker::start().await.unwrap(); // file storage: exact end offsets
    let bootstrap = broker.bootstrap.clone();
    let topic = create_topic(&bootstrap, 2).await;
    let mut ingest = Service::spawn(
        "chatpipe-ingest",
        &[
            ("CHATPIPE_POSTGRES_URL", db.url.as_str()),
            ("CHATPIPE_KAFKA_BROKERS", bootstrap.as_str()),
            ("CHATPIPE_KAFKA_TOPIC", topic.as_str()),
            // A long linger keeps requests in flight while SIGTERM arrives.
            ("CHATPIPE_KAFKA_LINGER", "1s"),
        ],
    )
    .await
    .unwrap();
    let base = ingest.base_url();
    let conv = Uuid::new_v4();
    let http = client();
    assert_eq!(
        post_timed(&http, &base, &new_conversation(conv, Utc::now()))
            .await
            .0,
        201
    );

    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            let body = new_message(Uuid::new_v4(), conv, "in flight", Utc::now());
            tokio::spawn(async move { post_timed(&http, &base, &body).await.0 })
        })
        .collect();
    // SIGTERM only once all 20 are being served (waiting for the 1 s linger).
    chatpipe_tests::eventually(Duration::from_secs(20), "20 requests in flight", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let metrics = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            metrics
                .contains("chatpipe_ingest_in_flight_requests 20")
                .then_some(())
        }
    })
    .await
    .unwrap();
    let exited_cleanly = tokio::task::spawn_blocking(move || ingest.kill())
        .await
        .unwrap();
    assert!(exited_cleanly, "exit status 0 after SIGTERM");
    for r in in_flight {
        assert_eq!(
            r.await.unwrap(),
            202,
            "requests in flight at SIGTERM complete"
        );
    }
    let offsets = support::end_offsets(&bootstrap, &topic, 2).await;
    assert_eq!(
        offsets.iter().sum::<i64>(),
        21,
        "every accepted record is in the log"
    );
}
