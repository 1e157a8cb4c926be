//! The test kit's fake providers (`tests/src/fakes/`): each fake answers a
//! correct send with the provider's real shape, refuses wrong credentials
//! (counted), answers pushed faults in order and then succeeds, refuses a
//! blocked recipient for good; the webhook helpers post what the providers
//! post, signed as they sign it (Twilio's signature checked against the
//! test vectors of Twilio's documentation and helper library).
//!
//! No broker, no Postgres: plain `#[tokio::test]`s over HTTP.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use chatpipe_tests::fakes::{
    post_telegram, post_twilio, post_whatsapp, telegram_photo_update, telegram_update,
    twilio_inbound_params, twilio_signature, twilio_status_params, whatsapp_message,
    whatsapp_status, FakeTelegram, FakeTwilio, FakeWhatsApp, Fault,
};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;

const TG_TOKEN: &str = "123456:AAH-fake-bot-token";
const WA_TOKEN: &str = "EAAG-fake-access-token";
const WA_PHONE_ID: &str = "106540352242922";
const TW_SID: &str = "AC0123456789abcdef0123456789abcdef";
const TW_TOKEN: &str = "f00dcafef00dcafef00dcafef00dcafe";

type Answer = (StatusCode, HeaderMap, Value);

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("reading the answer");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer {text:?}: {e}"));
    (status, headers, body)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------
// Telegram
// ---------------------------------------------------------------------------

async fn tg_json(base: &str, token: &str, body: Value) -> Answer {
    let url = format!("{base}/bot{token}/sendMessage");
    answer(client().post(url).json(&body).send().await.expect("send")).await
}

async fn tg_form(base: &str, token: &str, pairs: &[(&str, &str)]) -> Answer {
    let url = format!("{base}/bot{token}/sendMessage");
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    let response = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .expect("send");
    answer(response).await
}

#[tokio::test]
async fn telegram_accepts_send_message_and_answers_the_message() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    let base = tg.base_url();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let before = chatpipe_tests_now();
    let (status, _, body) = tg_json(&base, TG_TOKEN, json!({"chat_id": 42, "text": "hello"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], json!(true));
    let result = &body["result"];
    assert_eq!(result["message_id"], json!(1));
    assert_eq!(result["chat"], json!({"id": 42, "type": "private"}));
    assert_eq!(result["text"], json!("hello"));
    assert_eq!(result["from"]["id"], json!(123_456));
    assert_eq!(result["from"]["is_bot"], json!(true));
    let date = result["date"].as_i64().expect("date");
    assert!(
        date >= before - 1 && date <= chatpipe_tests_now() + 1,
        "{date}"
    );

    // Message ids count per chat; a form body and a string chat id work.
    let (_, _, second) = tg_json(&base, TG_TOKEN, json!({"chat_id": "42", "text": "again"})).await;
    assert_eq!(second["result"]["message_id"], json!(2));
    let (status, _, other) =
        tg_form(&base, TG_TOKEN, &[("chat_id", "-1001"), ("text", "a & b")]).await;
    assert_eq!(status, StatusCode::OK, "{other}");
    assert_eq!(other["result"]["message_id"], json!(1));
    assert_eq!(other["result"]["text"], json!("a & b"));

    let sent = tg
        .wait_for_sent(3, Duration::from_secs(5))
        .await
        .expect("sent");
    let ids: Vec<_> = sent
        .iter()
        .map(|s| s.provider_message_id.as_str())
        .collect();
    assert_eq!(ids, ["42:1", "42:2", "-1001:1"]);
    let tos: Vec<_> = sent
        .iter()
        .map(|s| (s.to.as_str(), s.text.as_str()))
        .collect();
    assert_eq!(tos, [("42", "hello"), ("42", "again"), ("-1001", "a & b")]);
    assert_eq!((tg.calls(), tg.rejected_auth()), (3, 0));

    // getMe answers the bot and is not a send call.
    let me = answer(
        client()
            .get(format!("{base}/bot{TG_TOKEN}/getMe"))
            .send()
            .await
            .expect("getMe"),
    )
    .await;
    assert_eq!(me.2["result"]["id"], json!(123_456));
    assert_eq!(tg.calls(), 3);
}

fn chatpipe_tests_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn telegram_refuses_a_wrong_token_and_bad_requests() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    let base = tg.base_url();
    let (status, _, body) =
        tg_json(&base, "123456:wrong", json!({"chat_id": 1, "text": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );
    assert_eq!((tg.calls(), tg.rejected_auth()), (1, 1));

    let (status, _, body) = tg_json(&base, TG_TOKEN, json!({"chat_id": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"})
    );
    let (_, _, body) = tg_json(&base, TG_TOKEN, json!({"text": "x"})).await;
    assert_eq!(body["description"], json!("Bad Request: chat_id is empty"));
    let (status, _, body) = answer(
        client()
            .post(format!("{base}/bot{TG_TOKEN}/sendMessage"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["ok"], json!(false));

    // Unknown methods and paths answer Telegram's 404.
    let unknown = answer(
        client()
            .post(format!("{base}/bot{TG_TOKEN}/sendTelepathy"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    assert_eq!(unknown.2["description"], json!("Not Found"));

    assert!(tg.sent().is_empty());
    assert_eq!((tg.calls(), tg.rejected_auth()), (4, 1));
}

#[tokio::test]
async fn telegram_answers_faults_in_order_then_succeeds() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    let base = tg.base_url();
    tg.push_faults(vec![
        Fault::TooManyRequests {
            retry_after_secs: 3,
        },
        Fault::ServerError,
        Fault::Timeout(Duration::from_millis(300)),
    ]);
    // A refusal for credentials takes no fault.
    let (status, _, _) = tg_json(&base, "1:bad", json!({"chat_id": 7, "text": "x"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(tg.pending_faults(), 3);

    let send = || tg_json(&base, TG_TOKEN, json!({"chat_id": 7, "text": "x"}));
    let (status, headers, body) = send().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 429,
               "description": "Too Many Requests: retry after 3",
               "parameters": {"retry_after": 3}})
    );
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("3")
    );

    let (status, _, body) = send().await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 502, "description": "Bad Gateway"})
    );

    let started = Instant::now();
    let (status, _, body) = send().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["message_id"], json!(1));

    let started = Instant::now();
    let (status, _, body) = send().await;
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["message_id"], json!(2));
    assert_eq!(tg.sent().len(), 2);
    assert_eq!(
        (tg.calls(), tg.rejected_auth(), tg.pending_faults()),
        (5, 1, 0)
    );
}

#[tokio::test]
async fn telegram_timeout_longer_than_the_client_still_sends() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    tg.push_faults(vec![Fault::Timeout(Duration::from_millis(400))]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let err = impatient
        .post(format!("{}/bot{TG_TOKEN}/sendMessage", tg.base_url()))
        .json(&json!({"chat_id": 9, "text": "maybe"}))
        .send()
        .await
        .expect_err("the client gives up first");
    assert!(err.is_timeout(), "{err}");
    assert!(tg.sent().is_empty());
    let sent = tg
        .wait_for_sent(1, Duration::from_secs(5))
        .await
        .expect("sent anyway");
    assert_eq!(sent[0].provider_message_id, "9:1");
    assert_eq!(sent[0].text, "maybe");
}

#[tokio::test]
async fn telegram_refuses_a_blocked_chat_for_good() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    let base = tg.base_url();
    tg.block("42");
    for _ in 0..2 {
        let (status, _, body) = tg_json(&base, TG_TOKEN, json!({"chat_id": 42, "text": "x"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            body,
            json!({"ok": false, "error_code": 403,
                   "description": "Forbidden: bot was blocked by the user"})
        );
    }
    let (status, _, _) = tg_json(&base, TG_TOKEN, json!({"chat_id": 43, "text": "x"})).await;
    assert_eq!(status, StatusCode::OK);
    tg.unblock("42");
    let (status, _, body) = tg_json(&base, TG_TOKEN, json!({"chat_id": 42, "text": "x"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["message_id"], json!(1));
    assert_eq!(tg.calls(), 4);
    assert_eq!(tg.sent().len(), 2);
}

#[tokio::test]
async fn wait_for_sent_names_what_it_saw_on_timeout() {
    let tg = FakeTelegram::start(TG_TOKEN).await.expect("start");
    tg_json(&tg.base_url(), TG_TOKEN, json!({"chat_id": 1, "text": "x"})).await;
    let err = tg
        .wait_for_sent(2, Duration::from_millis(200))
        .await
        .expect_err("only one");
    let msg = format!("{err:#}");
    assert!(msg.contains("1 of 2 sends"), "{msg}");
    assert!(msg.contains("1 send calls"), "{msg}");
}

#[test]
fn a_fake_outlives_the_runtime_that_started_it() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tg = first
        .block_on(FakeTelegram::start(TG_TOKEN))
        .expect("start");
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, _, _) = second.block_on(tg_json(
        &tg.base_url(),
        TG_TOKEN,
        json!({"chat_id": 5, "text": "x"}),
    ));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tg.sent().len(), 1);

    // Dropping the fake stops its server.
    let addr = tg.base_url().trim_start_matches("http://").to_owned();
    drop(tg);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < deadline, "still listening on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// WhatsApp Cloud
// ---------------------------------------------------------------------------

async fn wa_send(base: &str, path: &str, token: Option<&str>, body: Value) -> Answer {
    let mut request = client().post(format!("{base}{path}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("send")).await
}

fn wa_text(to: &str, text: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": false, "body": text},
    })
}

fn wa_path(version: &str) -> String {
    format!("/{version}/{WA_PHONE_ID}/messages")
}

#[tokio::test]
async fn whatsapp_accepts_a_text_and_answers_the_message_id() {
    let wa = FakeWhatsApp::start(WA_TOKEN, WA_PHONE_ID)
        .await
        .expect("start");
    let base = wa.base_url();
    let (status, _, body) = wa_send(
        &base,
        &wa_path("v21.0"),
        Some(WA_TOKEN),
        wa_text("+16505551234", "hi"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["messaging_product"], json!("whatsapp"));
    assert_eq!(
        body["contacts"],
        json!([{"input": "+16505551234", "wa_id": "16505551234"}])
    );
    let id = body["messages"][0]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("wamid."), "{id}");

    // Any vN.M version.
    let (status, _, second) = wa_send(
        &base,
        &wa_path("v18.0"),
        Some(WA_TOKEN),
        wa_text("16505551234", "again"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_id = second["messages"][0]["id"].as_str().expect("id").to_owned();
    assert_ne!(id, second_id);

    let sent = wa
        .wait_for_sent(2, Duration::from_secs(5))
        .await
        .expect("sent");
    assert_eq!(sent[0].to, "+16505551234");
    assert_eq!(sent[0].text, "hi");
    assert_eq!(sent[0].provider_message_id, id);
    assert_eq!(sent[1].provider_message_id, second_id);
    assert_eq!((wa.calls(), wa.rejected_auth()), (2, 0));
}

#[tokio::test]
async fn whatsapp_refuses_wrong_auth_path_and_body() {
    let wa = FakeWhatsApp::start(WA_TOKEN, WA_PHONE_ID)
        .await
        .expect("start");
    let base = wa.base_url();
    for token in [Some("EAAG-other"), None] {
        let (status, headers, body) =
            wa_send(&base, &wa_path("v21.0"), token, wa_text("1555", "x")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key("www-authenticate"));
        let error = &body["error"];
        assert_eq!(
            error["message"],
            json!("Invalid OAuth access token - Cannot parse access token")
        );
        assert_eq!(error["type"], json!("OAuthException"));
        assert_eq!(error["code"], json!(190));
        assert!(error["fbtrace_id"].is_string());
    }
    assert_eq!((wa.calls(), wa.rejected_auth()), (2, 2));

    let wrong_phone = "/v21.0/999/messages";
    let (status, _, body) = wa_send(&base, wrong_phone, Some(WA_TOKEN), wa_text("1555", "x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], json!(100));
    assert_eq!(body["error"]["error_subcode"], json!(33));

    let (status, _, body) = wa_send(
        &base,
        &wa_path("latest"),
        Some(WA_TOKEN),
        wa_text("1555", "x"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], json!(2500));

    let mut no_product = wa_text("1555", "x");
    no_product
        .as_object_mut()
        .map(|o| o.remove("messaging_product"));
    let (status, _, body) = wa_send(&base, &wa_path("v21.0"), Some(WA_TOKEN), no_product).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], json!(100));
    assert_eq!(
        body["error"]["message"],
        json!("(#100) The parameter messaging_product is required.")
    );
    let (status, _, body) = wa_send(
        &base,
        &wa_path("v21.0"),
        Some(WA_TOKEN),
        wa_text("1555", ""),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], json!(100));
    let mut image = wa_text("1555", "x");
    image["type"] = json!("image");
    let (_, _, body) = wa_send(&base, &wa_path("v21.0"), Some(WA_TOKEN), image).await;
    assert_eq!(body["error"]["message"], json!("(#100) Invalid parameter"));
    assert_eq!(
        body["error"]["error_data"]["messaging_product"],
        json!("whatsapp")
    );

    assert!(wa.sent().is_empty());
    assert_eq!((wa.calls(), wa.rejected_auth()), (7, 2));
}

#[tokio::test]
async fn whatsapp_answers_faults_in_order_then_succeeds() {
    let wa = FakeWhatsApp::start(WA_TOKEN, WA_PHONE_ID)
        .await
        .expect("start");
    let base = wa.base_url();
    wa.push_faults(vec![
        Fault::TooManyRequests {
            retry_after_secs: 2,
        },
        Fault::ServerError,
        Fault::Timeout(Duration::from_millis(200)),
    ]);
    let path = wa_path("v21.0");
    let send = || wa_send(&base, &path, Some(WA_TOKEN), wa_text("15551", "x"));
    let (status, _, body) = send().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], json!(130_429));
    assert_eq!(body["error"]["message"], json!("(#130429) Rate limit hit"));
    let (status, _, body) = send().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], json!(131_000));
    let started = Instant::now();
    let (status, _, _) = send().await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send().await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(wa.sent().len(), 2);
    assert_eq!(wa.calls(), 4);
}

#[tokio::test]
async fn whatsapp_refuses_a_blocked_recipient_with_re_engagement() {
    let wa = FakeWhatsApp::start(WA_TOKEN, WA_PHONE_ID)
        .await
        .expect("start");
    let base = wa.base_url();
    wa.block("15551234567");
    // Blocked by wa_id: the `+` form is the same recipient.
    for to in ["15551234567", "+15551234567"] {
        let (status, _, body) =
            wa_send(&base, &wa_path("v21.0"), Some(WA_TOKEN), wa_text(to, "x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], json!(131_047));
        assert_eq!(
            body["error"]["message"],
            json!("(#131047) Re-engagement message")
        );
        assert_eq!(
            body["error"]["error_data"]["details"],
            json!("Message failed to send because more than 24 hours have passed since the customer last replied to this number.")
        );
    }
    let (status, _, _) = wa_send(
        &base,
        &wa_path("v21.0"),
        Some(WA_TOKEN),
        wa_text("15550000000", "x"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(wa.sent().len(), 1);
}

// ---------------------------------------------------------------------------
// Twilio
// ---------------------------------------------------------------------------

async fn tw_send(
    base: &str,
    account: &str,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Answer {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    let mut request = client()
        .post(format!(
            "{base}/2010-04-01/Accounts/{account}/Messages.json"
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.finish());
    if let Some((user, password)) = auth {
        request = request.basic_auth(user, Some(password));
    }
    answer(request.send().await.expect("send")).await
}

const TW_FORM: &[(&str, &str)] = &[
    ("To", "+15558675310"),
    ("From", "+15017122661"),
    ("Body", "Hi there"),
];

#[tokio::test]
async fn twilio_accepts_a_message_and_answers_the_resource() {
    let tw = FakeTwilio::start(TW_SID, TW_TOKEN).await.expect("start");
    let base = tw.base_url();
    let (status, _, body) = tw_send(&base, TW_SID, Some((TW_SID, TW_TOKEN)), TW_FORM).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let sid = body["sid"].as_str().expect("sid").to_owned();
    assert_eq!(sid.len(), 34);
    assert!(
        sid.starts_with("SM") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{sid}"
    );
    assert_eq!(body["status"], json!("queued"));
    assert_eq!(body["to"], json!("+15558675310"));
    assert_eq!(body["from"], json!("+15017122661"));
    assert_eq!(body["body"], json!("Hi there"));
    assert_eq!(body["account_sid"], json!(TW_SID));
    assert_eq!(body["direction"], json!("outbound-api"));
    assert_eq!(body["error_code"], Value::Null);
    let created = body["date_created"].as_str().expect("date_created");
    chrono::DateTime::parse_from_rfc2822(created).expect("RFC 2822 date");
    assert_eq!(
        body["uri"],
        json!(format!("/2010-04-01/Accounts/{TW_SID}/Messages/{sid}.json"))
    );

    // A WhatsApp sender works the same.
    let (status, _, second) = tw_send(
        &base,
        TW_SID,
        Some((TW_SID, TW_TOKEN)),
        &[
            ("To", "whatsapp:+15558675310"),
            ("From", "whatsapp:+14155238886"),
            ("Body", "wa"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");

    let sent = tw
        .wait_for_sent(2, Duration::from_secs(5))
        .await
        .expect("sent");
    assert_eq!(sent[0].provider_message_id, sid);
    assert_eq!(
        (sent[0].to.as_str(), sent[0].text.as_str()),
        ("+15558675310", "Hi there")
    );
    assert_eq!(sent[1].to, "whatsapp:+15558675310");
    assert_eq!((tw.calls(), tw.rejected_auth()), (2, 0));
}

#[tokio::test]
async fn twilio_refuses_wrong_auth_and_bad_forms() {
    let tw = FakeTwilio::start(TW_SID, TW_TOKEN).await.expect("start");
    let base = tw.base_url();
    let authenticate = json!({
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    });
    for auth in [Some((TW_SID, "wrong")), Some(("ACother", TW_TOKEN)), None] {
        let (status, _, body) = tw_send(&base, TW_SID, auth, TW_FORM).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body, authenticate);
    }
    assert_eq!((tw.calls(), tw.rejected_auth()), (3, 3));

    let (status, _, body) = tw_send(&base, "ACother", Some((TW_SID, TW_TOKEN)), TW_FORM).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], json!(20404));

    let auth = Some((TW_SID, TW_TOKEN));
    let (status, _, body) = tw_send(&base, TW_SID, auth, &[("From", "+1"), ("Body", "x")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], json!(21604));
    assert_eq!(body["status"], json!(400));
    let (_, _, body) = tw_send(&base, TW_SID, auth, &[("To", "+1"), ("Body", "x")]).await;
    assert_eq!(body["code"], json!(21603));
    let (_, _, body) = tw_send(&base, TW_SID, auth, &[("To", "+1"), ("From", "+2")]).await;
    assert_eq!(body["code"], json!(21602));
    assert!(tw.sent().is_empty());
    assert_eq!((tw.calls(), tw.rejected_auth()), (7, 3));
}

#[tokio::test]
async fn twilio_answers_faults_in_order_then_succeeds() {
    let tw = FakeTwilio::start(TW_SID, TW_TOKEN).await.expect("start");
    let base = tw.base_url();
    tw.push_faults(vec![
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        Fault::ServerError,
        Fault::Timeout(Duration::from_millis(200)),
    ]);
    let auth = Some((TW_SID, TW_TOKEN));
    let (status, _, body) = tw_send(&base, TW_SID, auth, TW_FORM).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], json!(20429));
    let (status, _, body) = tw_send(&base, TW_SID, auth, TW_FORM).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], json!(20500));
    let started = Instant::now();
    let (status, _, _) = tw_send(&base, TW_SID, auth, TW_FORM).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = tw_send(&base, TW_SID, auth, TW_FORM).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(tw.sent().len(), 2);
}

#[tokio::test]
async fn twilio_refuses_an_unsubscribed_recipient() {
    let tw = FakeTwilio::start(TW_SID, TW_TOKEN).await.expect("start");
    tw.block("+15558675310");
    let (status, _, body) =
        tw_send(&tw.base_url(), TW_SID, Some((TW_SID, TW_TOKEN)), TW_FORM).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({
            "code": 21610,
            "message": "Attempt to send to unsubscribed recipient",
            "more_info": "https://www.twilio.com/docs/errors/21610",
            "status": 400,
        })
    );
    assert!(tw.sent().is_empty());
    assert_eq!(tw.calls(), 1);
}

// ---------------------------------------------------------------------------
// Twilio request signatures: published test vectors
// ---------------------------------------------------------------------------

#[test]
fn twilio_signature_matches_the_documented_example() {
    // https://www.twilio.com/docs/usage/security (TwilioDevEd/api-snippets,
    // security/signature_validation).
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675310"),
        ("Digits", "1234"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
    ];
    assert_eq!(
        twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params
        ),
        "GvWf1cFY/Q7PnoempGyD5oXAezc="
    );
}

#[test]
fn twilio_signature_matches_the_helper_librarys_sms_vector() {
    // twilio-ruby, spec/util/request_validator_spec.rb.
    let params = [
        ("ToState", "CA"),
        ("FromState", "CA"),
        ("AccountSid", "ACba8bc05eacf94afdae398e642c9cc32d"),
        ("SmsMessageSid", "SM2003cbd5e6a3701999aa3e5f20ff2787"),
        ("Body", "Orly"),
        ("From", "+14159354345"),
        ("FromCity", "SAN FRANCISCO"),
        ("SmsStatus", "received"),
        ("FromZip", "94107"),
        ("FromCountry", "US"),
        ("To", "+14158141819"),
        ("ToCity", "SAN FRANCISCO"),
        ("ToZip", "94105"),
        ("ToCountry", "US"),
        ("ApiVersion", "2010-04-01"),
        ("SmsSid", "SM2003cbd5e6a3701999aa3e5f20ff2787"),
    ];
    assert_eq!(
        twilio_signature(
            "2bd9e9638872de601313dc77410d3b23",
            "http://twiliotests.heroku.com/validate/sms",
            &params
        ),
        "mxeiv65lEe0b8L6LdVw2jgJi8yw="
    );
}

proptest! {
    #[test]
    fn twilio_signature_ignores_parameter_order_but_not_values(
        params in proptest::collection::btree_map("[A-Za-z]{1,8}", "[ -~]{0,12}", 1..8),
        rotate in 0usize..8,
    ) {
        let url = "https://example.com/webhook/twilio?x=1";
        let ordered: Vec<(String, String)> = params.into_iter().collect();
        let mut shuffled = ordered.clone();
        let n = shuffled.len();
        shuffled.rotate_left(rotate % n);
        shuffled.reverse();
        let signature = twilio_signature(TW_TOKEN, url, &ordered);
        prop_assert_eq!(&signature, &twilio_signature(TW_TOKEN, url, &shuffled));
        let mut changed = ordered.clone();
        changed[0].1.push('!');
        prop_assert_ne!(&signature, &twilio_signature(TW_TOKEN, url, &changed));
        prop_assert_ne!(&signature, &twilio_signature("another token", url, &ordered));
    }
}

// ---------------------------------------------------------------------------
// Webhook helpers: what arrives at the receiving end
// ---------------------------------------------------------------------------

/// One request a capture server received.
#[derive(Debug, Clone)]
struct Captured {
    headers: HeaderMap,
    body: Bytes,
}

/// A server that records every POST and answers `200`; its URL.
async fn capture() -> (String, Arc<Mutex<Vec<Captured>>>) {
    let seen: Arc<Mutex<Vec<Captured>>> = Arc::default();
    let store = Arc::clone(&seen);
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                store.lock().expect("lock").push(Captured { headers, body });
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

fn last(seen: &Arc<Mutex<Vec<Captured>>>) -> Captured {
    seen.lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request")
}

fn header<'a>(c: &'a Captured, name: &str) -> Option<&'a str> {
    c.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn post_telegram_sends_the_update_with_the_secret_token() {
    let (url, seen) = capture().await;
    let update = telegram_update(1001, 42, 7, "Ada", "hello", 1_700_000_000);
    assert_eq!(
        update,
        json!({
            "update_id": 1001,
            "message": {
                "message_id": 7,
                "from": {"id": 42, "is_bot": false, "first_name": "Ada", "language_code": "en"},
                "chat": {"id": 42, "first_name": "Ada", "type": "private"},
                "date": 1_700_000_000,
                "text": "hello",
            }
        })
    );
    let response = post_telegram(&url, "s3cret-token", &update)
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::OK);
    let got = last(&seen);
    assert_eq!(
        header(&got, "x-telegram-bot-api-secret-token"),
        Some("s3cret-token")
    );
    assert_eq!(header(&got, "content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body, update);

    let photo = telegram_photo_update(
        1002,
        42,
        8,
        "Ada",
        "AgACAgIAAxkBAAIB",
        Some("look"),
        1_700_000_001,
    );
    let message = &photo["message"];
    assert!(message.get("text").is_none());
    assert_eq!(message["caption"], json!("look"));
    let sizes = message["photo"].as_array().expect("photo sizes");
    assert_eq!(sizes.len(), 3);
    assert_eq!(sizes[2]["file_id"], json!("AgACAgIAAxkBAAIB"));
    assert!(sizes[0]["width"].as_u64() < sizes[2]["width"].as_u64());
}

#[tokio::test]
async fn post_whatsapp_signs_the_exact_bytes_sent() {
    let (url, seen) = capture().await;
    let message = whatsapp_message(
        WA_PHONE_ID,
        "16505551234",
        "Ada",
        "wamid.ABC=",
        "hi",
        1_700_000_000,
    );
    assert_eq!(message["object"], json!("whatsapp_business_account"));
    let change = &message["entry"][0]["changes"][0];
    assert_eq!(change["field"], json!("messages"));
    let value = &change["value"];
    assert_eq!(value["messaging_product"], json!("whatsapp"));
    assert_eq!(value["metadata"]["phone_number_id"], json!(WA_PHONE_ID));
    assert_eq!(
        value["contacts"][0],
        json!({"profile": {"name": "Ada"}, "wa_id": "16505551234"})
    );
    assert_eq!(
        value["messages"][0],
        json!({"from": "16505551234", "id": "wamid.ABC=", "timestamp": "1700000000",
               "text": {"body": "hi"}, "type": "text"})
    );

    let response = post_whatsapp(&url, "app-secret", &message)
        .await
        .expect("post");
    assert_eq!(response.status(), StatusCode::OK);
    let got = last(&seen);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").expect("key");
    mac.update(&got.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header(&got, "x-hub-signature-256"), Some(expected.as_str()));
    let body: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(body, message);

    let failed = whatsapp_status(
        WA_PHONE_ID,
        "wamid.ABC=",
        "16505551234",
        "failed",
        1_700_000_005,
        Some((131_047, "Re-engagement message")),
    );
    let status = &failed["entry"][0]["changes"][0]["value"]["statuses"][0];
    assert_eq!(status["id"], json!("wamid.ABC="));
    assert_eq!(status["status"], json!("failed"));
    assert_eq!(status["timestamp"], json!("1700000005"));
    assert_eq!(status["recipient_id"], json!("16505551234"));
    assert_eq!(status["errors"][0]["code"], json!(131_047));
    assert_eq!(status["errors"][0]["title"], json!("Re-engagement message"));
    let delivered = whatsapp_status(
        WA_PHONE_ID,
        "wamid.ABC=",
        "16505551234",
        "delivered",
        1_700_000_006,
        None,
    );
    assert!(delivered["entry"][0]["changes"][0]["value"]["statuses"][0]
        .get("errors")
        .is_none());
}

#[tokio::test]
async fn post_twilio_sends_the_form_signed_for_the_url() {
    let (url, seen) = capture().await;
    let inbound =
        twilio_inbound_params(TW_SID, "+15558675310", "+15017122661", "hi & bye", "SM0123");
    let get = |params: &[(String, String)], k: &str| {
        params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(get(&inbound, "From").as_deref(), Some("+15558675310"));
    assert_eq!(get(&inbound, "To").as_deref(), Some("+15017122661"));
    assert_eq!(get(&inbound, "Body").as_deref(), Some("hi & bye"));
    assert_eq!(get(&inbound, "MessageSid").as_deref(), Some("SM0123"));
    assert_eq!(get(&inbound, "AccountSid").as_deref(), Some(TW_SID));

    let response = post_twilio(&url, TW_TOKEN, &inbound).await.expect("post");
    assert_eq!(response.status(), StatusCode::OK);
    let got = last(&seen);
    let received: Vec<(String, String)> = form_urlencoded::parse(&got.body).into_owned().collect();
    assert_eq!(received, inbound);
    assert!(header(&got, "content-type")
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded")));
    let expected = twilio_signature(TW_TOKEN, &url, &received);
    assert_eq!(header(&got, "x-twilio-signature"), Some(expected.as_str()));

    let status = twilio_status_params(TW_SID, "SM0123", "undelivered", Some("30003"));
    assert_eq!(
        get(&status, "MessageStatus").as_deref(),
        Some("undelivered")
    );
    assert_eq!(get(&status, "ErrorCode").as_deref(), Some("30003"));
    assert!(get(
        &twilio_status_params(TW_SID, "SM0123", "delivered", None),
        "ErrorCode"
    )
    .is_none());
}
