//! Channels end to end (real binaries, real broker, real Postgres, the
//! test kit's fake Telegram, WhatsApp Cloud and Twilio servers, shortened
//! windows): a contact's message comes in through the provider's webhook,
//! opens a conversation, is grouped and answered, and the reply is
//! delivered through the same channel with the channel's credentials; an
//! agent's message goes out the same way; provider retries are
//! deduplicated; status reports move the delivery forward only; forged
//! webhooks are refused.

mod common;

use std::time::Duration;

use chatpipe_channels::ids;
use chatpipe_tests::fakes::{
    post_telegram, post_twilio, post_whatsapp, telegram_photo_update, telegram_update,
    twilio_inbound_params, twilio_status_params, whatsapp_message, whatsapp_status, FakeTelegram,
    FakeTwilio, FakeWhatsApp,
};
use chatpipe_tests::{eventually, expected_reply, Service};
use common::{Options, Pipeline};
use serde_json::{json, Value};
use uuid::Uuid;

const TG_TOKEN: &str = "123456:AAE-telegram-bot-token";
const TG_SECRET: &str = "tg-webhook-secret_1";
const WA_TOKEN: &str = "EAAG-whatsapp-access-token";
const WA_SECRET: &str = "whatsapp-app-secret";
const WA_VERIFY: &str = "verify-me";
const WA_PHONE: &str = "106540352242922";
const TW_SID: &str = "AC00000000000000000000000000000001";
const TW_TOKEN: &str = "twilio-auth-token";
const TW_FROM: &str = "+15550001111";

struct Channels {
    pipeline: Pipeline,
    delivery: Service,
    telegram: FakeTelegram,
    whatsapp: FakeWhatsApp,
    twilio: FakeTwilio,
}

fn channels_json(tg: &str, wa: &str, tw: &str) -> String {
    json!([
        {"name": "tg", "type": "telegram", "apiBaseUrl": tg},
        {"name": "wa", "type": "whatsappCloud", "apiBaseUrl": wa},
        {"name": "sms", "type": "twilio", "apiBaseUrl": tw},
    ])
    .to_string()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn start() -> Channels {
    let telegram = FakeTelegram::start(TG_TOKEN).await.expect("fake telegram");
    let whatsapp = FakeWhatsApp::start(WA_TOKEN, WA_PHONE)
        .await
        .expect("fake whatsapp");
    let twilio = FakeTwilio::start(TW_SID, TW_TOKEN)
        .await
        .expect("fake twilio");
    let declared = channels_json(
        &telegram.base_url(),
        &whatsapp.base_url(),
        &twilio.base_url(),
    );
    let mut opts = Options::short();
    opts.ingest_env = env(&[
        ("CHATPIPE_CHANNELS", &declared),
        ("CHATPIPE_CHANNEL_TG_SECRET_TOKEN", TG_SECRET),
        ("CHATPIPE_CHANNEL_WA_APP_SECRET", WA_SECRET),
        ("CHATPIPE_CHANNEL_WA_VERIFY_TOKEN", WA_VERIFY),
        ("CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID", WA_PHONE),
        ("CHATPIPE_CHANNEL_SMS_ACCOUNT_SID", TW_SID),
        ("CHATPIPE_CHANNEL_SMS_AUTH_TOKEN", TW_TOKEN),
    ]);
    opts.api_env = env(&[
        ("CHATPIPE_CHANNELS", &declared),
        ("CHATPIPE_API_DB_ROLE", ""),
    ]);
    let pipeline = Pipeline::start(opts).await;
    let delivery = Service::spawn(
        "chatpipe-delivery",
        &[
            ("CHATPIPE_POSTGRES_URL", pipeline.db.url.as_str()),
            ("CHATPIPE_CHANNELS", &declared),
            ("CHATPIPE_CHANNEL_TG_BOT_TOKEN", TG_TOKEN),
            ("CHATPIPE_CHANNEL_WA_ACCESS_TOKEN", WA_TOKEN),
            ("CHATPIPE_CHANNEL_WA_PHONE_NUMBER_ID", WA_PHONE),
            ("CHATPIPE_CHANNEL_SMS_ACCOUNT_SID", TW_SID),
            ("CHATPIPE_CHANNEL_SMS_AUTH_TOKEN", TW_TOKEN),
            ("CHATPIPE_CHANNEL_SMS_FROM", TW_FROM),
            ("CHATPIPE_DELIVERY_BACKOFF_BASE", "100ms"),
        ],
    )
    .await
    .expect("chatpipe-delivery did not start");
    Channels {
        pipeline,
        delivery,
        telegram,
        whatsapp,
        twilio,
    }
}

impl Channels {
    fn webhook(&self, channel: &str) -> String {
        format!(
            "{}/channels/{channel}/webhook",
            self.pipeline.ingest.base_url()
        )
    }

    async fn api(&self, path: &str) -> (u16, Value) {
        self.pipeline.get(path).await
    }

    /// The conversation of `message_id`, once its reply is stored.
    async fn answered(&self, conversation: Uuid) -> Value {
        self.pipeline.wait_replies(conversation, 1).await
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_in_and_out_end_to_end() {
    let c = start().await;
    let http = &c.pipeline.http;

    // --- Telegram: a message in, one reply out with the exact text. ---
    let update = telegram_update(
        9001,
        4242,
        17,
        "Ana Souza",
        "Olá, preciso de ajuda",
        now_secs(),
    );
    let r = post_telegram(&c.webhook("tg"), TG_SECRET, &update)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let message_id = ids::inbound_message_id("tg", "4242:17");
    assert_eq!(body["messages"][0]["id"], json!(message_id));
    assert_eq!(body["messages"][0]["opened"], json!(true));
    let conversation: Uuid = body["messages"][0]["conversation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("conversation id");

    // The provider retries the same update: the same message, nothing new.
    let r = post_telegram(&c.webhook("tg"), TG_SECRET, &update)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["messages"][0]["duplicate"], json!(true));
    assert_eq!(body["messages"][0]["conversation_id"], json!(conversation));

    let view = c.answered(conversation).await;
    let sent = c
        .telegram
        .wait_for_sent(1, Duration::from_secs(30))
        .await
        .expect("telegram reply delivered");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].to, "4242");
    assert_eq!(sent[0].text, expected_reply(&[message_id]));
    assert_eq!(c.telegram.rejected_auth(), 0);
    // The view names the channel, the contact, the authors and the
    // delivery status of the reply.
    assert_eq!(view["channel"], json!("tg"));
    assert_eq!(view["contact"]["display_name"], json!("Ana Souza"));
    let msgs = view["messages"].as_array().expect("messages").clone();
    assert_eq!(msgs.len(), 2, "{view}");
    assert_eq!(msgs[0]["author"]["kind"], json!("contact"));
    assert_eq!(msgs[1]["author"]["kind"], json!("bot"));
    eventually(
        Duration::from_secs(20),
        "the reply's delivery is sent",
        || async {
            let (_, v) = c.api(&format!("/conversations/{conversation}/")).await;
            let status = v["messages"][1]["delivery"]["status"].clone();
            (status == json!("sent")).then_some(())
        },
    )
    .await
    .expect("delivery status");

    // A photo without caption is stored with its kind and media id.
    let photo = telegram_photo_update(9002, 4242, 18, "Ana Souza", "AgACAgQ", None, now_secs());
    let r = post_telegram(&c.webhook("tg"), TG_SECRET, &photo)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let view = c.pipeline.wait_replies(conversation, 2).await;
    let photo_row = view["messages"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|x| x["id"] == json!(ids::inbound_message_id("tg", "4242:18")))
                .cloned()
        })
        .expect("the photo message");
    assert_eq!(photo_row["kind"], json!("image"));
    assert_eq!(photo_row["media_id"], json!("AgACAgQ"));
    assert_eq!(photo_row["content"], json!("[image]"));

    // Forged: a wrong secret token is 401 and changes nothing.
    let forged = telegram_update(9003, 4242, 19, "Ana Souza", "forged", now_secs());
    let r = post_telegram(&c.webhook("tg"), "not-the-secret", &forged)
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let (status, _) = c
        .api(&format!(
            "/messages?contact_id={}",
            ids::contact_id("tg", "4242")
        ))
        .await;
    assert_eq!(status, 200);

    // --- An agent answers through the api; delivered through Telegram. ---
    let r = http
        .post(format!(
            "{}/conversations/{conversation}/messages",
            c.pipeline.api.base_url()
        ))
        .header("Idempotency-Key", "agent-reply-1")
        .json(&json!({"content": "Oi Ana, já vou te ajudar."}))
        .send()
        .await
        .expect("post agent message");
    assert_eq!(r.status(), 202);
    let agent: Value = r.json().await.expect("json");
    assert_eq!(agent["status"], json!("queued"));
    let sent = c
        .telegram
        .wait_for_sent(3, Duration::from_secs(30))
        .await
        .expect("agent message delivered");
    assert!(
        sent.iter()
            .any(|s| s.text == "Oi Ana, já vou te ajudar." && s.to == "4242"),
        "{sent:?}"
    );

    // --- WhatsApp: a message in → the reply out with the bearer token. ---
    let wamid = "wamid.HBgLMTU1NTAwMDIyMjIVAgASGBQzQUQ5QjhCMEM1RjYyRDk5QTRBNgA=";
    let wa = whatsapp_message(
        WA_PHONE,
        "5511987654321",
        "Bruno",
        wamid,
        "Qual o preço?",
        now_secs(),
    );
    let r = post_whatsapp(&c.webhook("wa"), WA_SECRET, &wa)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let wa_conversation: Uuid = body["messages"][0]["conversation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("conversation id");
    c.answered(wa_conversation).await;
    let sent = c
        .whatsapp
        .wait_for_sent(1, Duration::from_secs(30))
        .await
        .expect("whatsapp reply delivered");
    assert_eq!(sent[0].to, "5511987654321");
    assert_eq!(
        sent[0].text,
        expected_reply(&[ids::inbound_message_id("wa", wamid)])
    );
    assert_eq!(c.whatsapp.rejected_auth(), 0, "the bearer token was right");
    // A signature made with another secret is refused.
    let r = post_whatsapp(&c.webhook("wa"), "another-secret", &wa)
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    // The subscription check answers the challenge only with the token.
    let ok = http
        .get(format!(
            "{}?hub.mode=subscribe&hub.verify_token={WA_VERIFY}&hub.challenge=1158201444",
            c.webhook("wa")
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("text"), "1158201444");
    let bad = http
        .get(format!(
            "{}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
            c.webhook("wa")
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 403);

    // Status callbacks: delivered, then read; a late `sent` moves nothing back.
    let sent_id = sent[0].provider_message_id.clone();
    for status in ["delivered", "read", "sent"] {
        let s = whatsapp_status(
            WA_PHONE,
            &sent_id,
            "5511987654321",
            status,
            now_secs(),
            None,
        );
        let r = post_whatsapp(&c.webhook("wa"), WA_SECRET, &s)
            .await
            .expect("post status");
        assert_eq!(r.status(), 200);
    }
    eventually(
        Duration::from_secs(20),
        "the WhatsApp reply is read",
        || async {
            let (_, v) = c.api(&format!("/conversations/{wa_conversation}/")).await;
            let out = v["messages"]
                .as_array()?
                .iter()
                .find(|m| m["type"] == json!("OUTBOUND"))?
                .clone();
            (out["delivery"]["status"] == json!("read")).then_some(())
        },
    )
    .await
    .expect("read status");

    // --- Twilio: SMS in, reply out, status callback. ---
    let params = twilio_inbound_params(
        TW_SID,
        "+15559998888",
        TW_FROM,
        "Hi there",
        "SM0123456789abcdef0123456789abcdef",
    );
    let r = post_twilio(&c.webhook("sms"), TW_TOKEN, &params)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let tw_conversation: Uuid = body["messages"][0]["conversation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("conversation id");
    c.answered(tw_conversation).await;
    let sent = c
        .twilio
        .wait_for_sent(1, Duration::from_secs(30))
        .await
        .expect("twilio reply delivered");
    assert_eq!(sent[0].to, "+15559998888");
    let status = twilio_status_params(TW_SID, &sent[0].provider_message_id, "delivered", None);
    let r = post_twilio(&c.webhook("sms"), TW_TOKEN, &status)
        .await
        .expect("post status");
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the SMS reply is delivered",
        || async {
            let (_, v) = c.api(&format!("/conversations/{tw_conversation}/")).await;
            let out = v["messages"]
                .as_array()?
                .iter()
                .find(|m| m["type"] == json!("OUTBOUND"))?
                .clone();
            (out["delivery"]["status"] == json!("delivered")).then_some(())
        },
    )
    .await
    .expect("delivered status");
    let forged = post_twilio(&c.webhook("sms"), "wrong-token", &params)
        .await
        .expect("post");
    assert_eq!(forged.status(), 401);

    // Channels and contacts are listed.
    let (status, channels) = c.api("/channels").await;
    assert_eq!(status, 200, "{channels}");
    let (status, contacts) = c.api("/contacts").await;
    assert_eq!(status, 200, "{contacts}");
    drop(c.delivery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contact_fails_with_the_providers_reason_and_can_be_retried() {
    let c = start().await;
    c.telegram.block("777");
    let update = telegram_update(1, 777, 1, "Blocked", "hello?", now_secs());
    let r = post_telegram(&c.webhook("tg"), TG_SECRET, &update)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let conversation = body["messages"][0]["conversation_id"].clone();
    let failed = eventually(Duration::from_secs(30), "a dead letter", || async {
        let (_, v) = c.api("/deliveries?status=failed").await;
        v["deliveries"]
            .as_array()?
            .iter()
            .find(|d| d["conversation_id"] == conversation)
            .cloned()
    })
    .await
    .expect("failed delivery listed");
    let reason = failed["error_reason"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(reason.contains("blocked"), "{failed}");
    // Unblocked and retried: delivered.
    c.telegram.unblock("777");
    let id = failed["id"].clone();
    let r = c
        .pipeline
        .http
        .post(format!(
            "{}/deliveries/{}/retry",
            c.pipeline.api.base_url(),
            id
        ))
        .send()
        .await
        .expect("retry");
    assert_eq!(r.status(), 202);
    let sent = c
        .telegram
        .wait_for_sent(1, Duration::from_secs(30))
        .await
        .expect("delivered after the retry");
    assert_eq!(sent[0].to, "777");
}

/// A new contact writing several messages at once (parallel provider
/// deliveries, as Telegram does under load) opens exactly one
/// conversation: the contact's row lock orders the decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_simultaneous_first_messages_open_one_conversation() {
    let c = start().await;
    let url = c.webhook("tg");
    let posts = (1..=8).map(|i| {
        let url = url.clone();
        async move {
            let update =
                telegram_update(100 + i, 5151, i, "Carla", &format!("msg {i}"), now_secs());
            let r = post_telegram(&url, TG_SECRET, &update).await.expect("post");
            assert_eq!(r.status(), 200);
            let body: Value = r.json().await.expect("json");
            body["messages"][0]["conversation_id"].clone()
        }
    });
    let conversations: std::collections::BTreeSet<String> = futures::future::join_all(posts)
        .await
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let conversation: Uuid = conversations
        .iter()
        .next()
        .and_then(|s| s.trim_matches('"').parse().ok())
        .expect("a conversation id");
    let view = c.answered(conversation).await;
    let inbound = view["messages"]
        .as_array()
        .map(|m| m.iter().filter(|x| x["type"] == json!("INBOUND")).count())
        .unwrap_or(0);
    assert_eq!(inbound, 8, "{view}");
}
