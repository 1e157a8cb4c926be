//! chatpipe-delivery against the fake providers of the test kit (real HTTP
//! servers speaking Telegram's, WhatsApp Cloud's and Twilio's wire
//! formats) and real Postgres: the binary for what a deployment sees
//! (delivery, order, retry-after, blocked recipients, SIGTERM, a crash
//! mid-call), the in-process worker where the test tunes timeouts.

mod common;

use std::time::Duration;

use chatpipe_channels::{Channel, ChannelDecl, ChannelType};
use chatpipe_delivery::metrics::Metrics;
use chatpipe_delivery::Config;
use chatpipe_tests::fakes::{FakeTelegram, FakeTwilio, FakeWhatsApp, Fault};
use chatpipe_tests::{eventually, Service};
use common::{database, event_names, events, queue, row};
use uuid::Uuid;

const TG_TOKEN: &str = "4242:tg-secret";
const WA_TOKEN: &str = "EAAG-wa-token";
const WA_PHONE: &str = "106540352242922";
const TW_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TW_TOKEN: &str = "tw-auth-token";
const TW_FROM: &str = "+15550001111";

struct Fakes {
    tg: FakeTelegram,
    wa: FakeWhatsApp,
    tw: FakeTwilio,
}

async fn fakes() -> Fakes {
    Fakes {
        tg: FakeTelegram::start(TG_TOKEN).await.unwrap(),
        wa: FakeWhatsApp::start(WA_TOKEN, WA_PHONE).await.unwrap(),
        tw: FakeTwilio::start(TW_SID, TW_TOKEN).await.unwrap(),
    }
}

impl Fakes {
    /// The environment that declares the three channels with their
    /// credentials.
    fn env(&self) -> Vec<(String, String)> {
        let channels = serde_json::json!([
            {"name": "tg", "type": "telegram", "apiBaseUrl": self.tg.base_url()},
            {"name": "wa", "type": "whatsappCloud", "apiBaseUrl": self.wa.base_url()},
            {"name": "tw", "type": "twilio", "apiBaseUrl": self.tw.base_url()},
        ]);
        [
            ("CHATPIPE_CHANNELS", channels.to_string()),
            ("CHATPIPE_CHANNEL_TG_BOT_TOKEN", TG_TOKEN.to_owned()),
            ("CHATPIPE_CHANNEL_WA_ACCESS_TOKEN", WA_TOKEN.to_owned()),
            ("CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID", WA_PHONE.to_owned()),
            ("CHATPIPE_CHANNEL_TW_ACCOUNT_SID", TW_SID.to_owned()),
            ("CHATPIPE_CHANNEL_TW_AUTH_TOKEN", TW_TOKEN.to_owned()),
            ("CHATPIPE_CHANNEL_TW_FROM", TW_FROM.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The channels, as the worker reads them.
    fn channels(&self) -> Vec<Channel> {
        let env = self.env();
        let channels = chatpipe_settings::channels::parse_channels(&env[0].1).unwrap();
        Channel::from_lookup(
            &channels,
            chatpipe_channels::CredentialReader::Delivery,
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        )
        .unwrap()
    }
}

async fn spawn_binary(url: &str, fakes: &Fakes, extra: &[(&str, &str)]) -> Service {
    let mut env = fakes.env();
    env.push(("CHATPIPE_POSTGRES_URL".into(), url.to_owned()));
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Service::spawn("chatpipe-delivery", &env).await.unwrap()
}

async fn wait_status(pg: &tokio_postgres::Client, id: i64, status: &str, within: Duration) {
    let what = format!("delivery {id} {status}");
    let reached = eventually(within, &what, || async {
        (row(pg, id).await.status == status).then_some(())
    })
    .await;
    if let Err(e) = reached {
        let r = row(pg, id).await;
        let ev = events(pg, id).await;
        panic!("{e}: {r:?} {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_queued_messages_in_order_through_each_provider() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    let a = Uuid::new_v4();
    let a_ids = [
        queue(&pg, "tg", "1001", a, "a1").await,
        queue(&pg, "tg", "1001", a, "a2").await,
        queue(&pg, "tg", "1001", a, "a3").await,
    ];
    let b1 = queue(&pg, "tg", "-1002", Uuid::new_v4(), "b1").await;
    let wa = queue(&pg, "wa", "15551234567", Uuid::new_v4(), "hello wa").await;
    let tw = queue(
        &pg,
        "tw",
        "whatsapp:+15557654321",
        Uuid::new_v4(),
        "hello tw",
    )
    .await;
    // A long poll interval: what is queued while running is found through
    // the notification.
    let svc = spawn_binary(&url, &f, &[("CHATPIPE_DELIVERY_POLL_INTERVAL", "60s")]).await;

    let sent =
        f.tg.wait_for_sent(4, Duration::from_secs(20))
            .await
            .unwrap();
    let to_a: Vec<&str> = sent
        .iter()
        .filter(|s| s.to == "1001")
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(to_a, vec!["a1", "a2", "a3"], "per-conversation order");
    for id in a_ids.iter().chain([&b1, &wa, &tw]) {
        wait_status(&pg, *id, "sent", Duration::from_secs(20)).await;
    }
    // The ids the providers answered are recorded.
    for s in &sent {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM deliveries WHERE channel = 'tg' AND provider_message_id = $1",
                &[&s.provider_message_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{s:?}");
    }
    let wa_sent = f.wa.wait_for_sent(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (wa_sent[0].to.as_str(), wa_sent[0].text.as_str()),
        ("15551234567", "hello wa")
    );
    assert_eq!(
        row(&pg, wa).await.provider_message_id,
        Some(wa_sent[0].provider_message_id.clone())
    );
    let tw_sent = f.tw.wait_for_sent(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(tw_sent[0].to, "whatsapp:+15557654321");
    assert_eq!(
        row(&pg, tw).await.provider_message_id,
        Some(tw_sent[0].provider_message_id.clone())
    );

    // Queued while running: woken by the notification, not the 60 s poll.
    let late = queue(&pg, "tg", "1003", Uuid::new_v4(), "late").await;
    wait_status(&pg, late, "sent", Duration::from_secs(10)).await;

    assert_eq!(
        f.tg.rejected_auth() + f.wa.rejected_auth() + f.tw.rejected_auth(),
        0
    );
    assert_eq!(f.tg.sent().len(), 5, "each message exactly once");
    let metrics = reqwest::get(format!("{}/metrics", svc.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("chatpipe_delivery_sent_total{channel=\"tg\"} 5"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_refusals_fail_for_good() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    f.tg.block("666");
    f.tw.block("+15550009999");
    let blocked = queue(&pg, "tg", "666", Uuid::new_v4(), "nobody").await;
    let unsubscribed = queue(&pg, "tw", "+15550009999", Uuid::new_v4(), "stop").await;
    let unknown = queue(&pg, "nope", "1", Uuid::new_v4(), "where").await;
    let _svc = spawn_binary(
        &url,
        &f,
        &[
            ("CHATPIPE_DELIVERY_POLL_INTERVAL", "100ms"),
            ("CHATPIPE_DELIVERY_BACKOFF_BASE", "10ms"),
        ],
    )
    .await;

    wait_status(&pg, blocked, "failed", Duration::from_secs(10)).await;
    let r = row(&pg, blocked).await;
    assert_eq!(r.error_code.as_deref(), Some("403"));
    assert!(r.error_reason.unwrap_or_default().contains("blocked"));
    assert_eq!(r.attempts, 1, "a permanent refusal is not retried");

    // Telegram's 429 names the wait (retry_after 2 s); the backoff alone
    // would retry after at most 10 ms.
    f.tg.push_faults(vec![Fault::TooManyRequests {
        retry_after_secs: 2,
    }]);
    let limited = queue(&pg, "tg", "1", Uuid::new_v4(), "patience").await;
    wait_status(&pg, limited, "sent", Duration::from_secs(20)).await;
    let times: Vec<(String, chrono::DateTime<chrono::Utc>)> = pg
        .query(
            "SELECT event, at FROM delivery_events WHERE delivery_id = $1 ORDER BY id",
            &[&limited],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = times.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, vec!["queued", "attempt_failed", "sent"]);
    let waited = (times[2].1 - times[1].1).to_std().unwrap();
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}, asked 2 s"
    );
    let r = row(&pg, limited).await;
    assert_eq!((r.attempts, r.error_code.as_deref()), (2, Some("429")));

    wait_status(&pg, unsubscribed, "failed", Duration::from_secs(10)).await;
    assert_eq!(
        row(&pg, unsubscribed).await.error_code.as_deref(),
        Some("21610")
    );

    wait_status(&pg, unknown, "failed", Duration::from_secs(10)).await;
    let r = row(&pg, unknown).await;
    assert_eq!(
        (r.error_code.as_deref(), r.attempts),
        (Some("unknown_channel"), 0)
    );
    assert_eq!(f.tg.sent().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_calls_in_progress_and_releases_the_rest() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    // The first call is held 1.5 s (in progress at SIGTERM); the chat's
    // rate (1/s, no burst) keeps the others waiting.
    f.tg.push_faults(vec![Fault::Timeout(Duration::from_millis(1500))]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(queue(&pg, "tg", "77", Uuid::new_v4(), &format!("m{i}")).await);
    }
    let mut svc = spawn_binary(
        &url,
        &f,
        &[
            ("CHATPIPE_DELIVERY_CHAT_RATE", "1"),
            ("CHATPIPE_DELIVERY_CHAT_BURST", "1"),
            ("CHATPIPE_DELIVERY_LEASE", "60s"),
        ],
    )
    .await;
    eventually(Duration::from_secs(10), "a call in progress", || async {
        (f.tg.calls() >= 1).then_some(())
    })
    .await
    .unwrap();
    let svc_stopped = tokio::task::spawn_blocking(move || svc.kill())
        .await
        .unwrap();
    assert!(svc_stopped, "exited cleanly on SIGTERM");
    let mut sent = 0;
    for id in &ids {
        let r = row(&pg, *id).await;
        assert_eq!(r.lease_owner, None, "{id}: claim released");
        match r.status.as_str() {
            "sent" => sent += 1,
            "queued" => assert_eq!(r.attempts, 0, "{id}: released unattempted"),
            other => panic!("{id}: {other}"),
        }
    }
    assert!(sent >= 1, "the call in progress was recorded");
    assert_eq!(f.tg.sent().len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_call_is_retried_and_counted_as_a_possible_duplicate() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    f.tg.push_faults(vec![Fault::Timeout(Duration::from_millis(1500))]);
    let id = queue(&pg, "tg", "5", Uuid::new_v4(), "twice?").await;
    let extra = [
        ("CHATPIPE_DELIVERY_LEASE", "2s"),
        ("CHATPIPE_DELIVERY_REQUEST_TIMEOUT", "1s"),
        ("CHATPIPE_DELIVERY_POLL_INTERVAL", "100ms"),
    ];
    let mut svc = spawn_binary(&url, &f, &extra).await;
    eventually(Duration::from_secs(10), "the call started", || async {
        (f.tg.calls() >= 1).then_some(())
    })
    .await
    .unwrap();
    svc.kill9();
    // The provider sends it anyway; the outcome is lost.
    f.tg.wait_for_sent(1, Duration::from_secs(5)).await.unwrap();
    let svc = spawn_binary(&url, &f, &extra).await;
    wait_status(&pg, id, "sent", Duration::from_secs(15)).await;
    assert_eq!(f.tg.sent().len(), 2, "sent again: no idempotency key");
    assert_eq!(
        event_names(&pg, id).await,
        vec!["queued", "possible_duplicate", "sent"]
    );
    let metrics = reqwest::get(format!("{}/metrics", svc.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("chatpipe_delivery_possible_duplicates_total{channel=\"tg\"} 1"),
        "{metrics}"
    );
}

fn config(lease: Duration, request_timeout: Duration, max_attempts: u32) -> Config {
    Config {
        owner: format!("test-{}", Uuid::new_v4().simple()),
        worker: chatpipe_delivery::worker::Settings {
            concurrency: 8,
            claim_batch: 8,
            poll_interval: Duration::from_millis(50),
            lease,
            policy: chatpipe_channels::retry::RetryPolicy {
                base: Duration::from_millis(10),
                max: Duration::from_millis(50),
                max_attempts,
            },
        },
        request_timeout,
        whatsapp_api_version: "v21.0".into(),
        channel_rate: 0,
        chat_rate: 0,
        chat_burst: 1,
    }
}

fn options(url: &str) -> chatpipe_core::db::PgConnectOptions {
    chatpipe_core::db::PgConnectOptions::parse(url).unwrap()
}

#[tokio::test]
async fn transient_failures_give_up_after_max_attempts() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    f.wa.push_faults(vec![Fault::ServerError; 3]);
    let id = queue(&pg, "wa", "1555", Uuid::new_v4(), "hi").await;
    let running = chatpipe_delivery::spawn(
        options(&url),
        4,
        f.channels(),
        config(Duration::from_secs(30), Duration::from_secs(5), 3),
        Metrics::new().unwrap(),
    )
    .unwrap();
    wait_status(&pg, id, "failed", Duration::from_secs(15)).await;
    let r = row(&pg, id).await;
    assert_eq!(
        (r.error_code.as_deref(), r.attempts),
        (Some("max_attempts"), 3)
    );
    assert!(r.error_reason.unwrap_or_default().contains("131000"));
    assert_eq!(f.wa.calls(), 3);
    assert!(f.wa.sent().is_empty());
    assert_eq!(
        event_names(&pg, id).await,
        vec!["queued", "attempt_failed", "attempt_failed", "failed"]
    );
    let m = &running.metrics;
    assert_eq!(m.retries.with_label_values(&["wa", "131000"]).get(), 2);
    assert_eq!(m.failed.with_label_values(&["wa", "max_attempts"]).get(), 1);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_timeout_after_the_request_was_written_is_a_possible_duplicate() {
    let (_db, url, pg) = database().await;
    let f = fakes().await;
    // The provider takes 1 s; the worker gives up after 300 ms.
    f.tg.push_faults(vec![Fault::Timeout(Duration::from_secs(1))]);
    let id = queue(&pg, "tg", "9", Uuid::new_v4(), "slow").await;
    let running = chatpipe_delivery::spawn(
        options(&url),
        4,
        f.channels(),
        config(Duration::from_secs(30), Duration::from_millis(300), 5),
        Metrics::new().unwrap(),
    )
    .unwrap();
    wait_status(&pg, id, "sent", Duration::from_secs(15)).await;
    let ev = events(&pg, id).await;
    let names: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        vec!["queued", "attempt_failed", "possible_duplicate", "sent"]
    );
    assert_eq!(ev[1].1.as_deref(), Some("timeout"));
    assert_eq!(
        running
            .metrics
            .possible_duplicates
            .with_label_values(&["tg"])
            .get(),
        1
    );
    // The slow call was accepted too: the message went twice.
    f.tg.wait_for_sent(2, Duration::from_secs(5)).await.unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_channel_without_credentials_refuses_to_start() {
    let decl = ChannelDecl {
        name: "tg".into(),
        kind: ChannelType::Telegram,
        api_base_url: None,
        webhook_url: None,
    };
    let err = Channel::from_lookup(
        &chatpipe_channels::Channels(vec![decl]),
        chatpipe_channels::CredentialReader::Delivery,
        |_| None,
    )
    .unwrap_err();
    assert!(err.contains("CHATPIPE_CHANNEL_TG_BOT_TOKEN"), "{err}");
    // And the binary says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatpipe-delivery"))
        .env("CHATPIPE_CHANNELS", r#"[{"name":"tg","type":"telegram"}]"#)
        .env_remove("CHATPIPE_CHANNEL_TG_BOT_TOKEN")
        .env("CHATPIPE_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CHATPIPE_CHANNEL_TG_BOT_TOKEN"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}
