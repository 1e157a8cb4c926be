//! A fake Twilio Messages API
//! (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`) and the
//! webhooks Twilio posts (incoming messages, status callbacks), signed with
//! `X-Twilio-Signature`.
//!
//! Wire format (<https://www.twilio.com/docs/messaging/api/message-resource>):
//! HTTP Basic auth `AccountSid:AuthToken`, a form body with `To`, `From`
//! (or `MessagingServiceSid`) and `Body`; `201` with the Message resource
//! (`sid` `SM` + 32 hex, `status` `queued`); errors are
//! `{"code","message","more_info","status"}`.
//!
//! Webhook signatures
//! (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>): the
//! base64 HMAC-SHA1, keyed with the auth token, of the full URL followed by
//! every POST parameter's name and value, sorted by name.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use uuid::Uuid;

use super::server::{detached, Server, Shared};
use super::{http_client, Fault, Sent};

/// The longest `Body` Twilio takes, in characters.
const MAX_BODY_CHARS: usize = 1600;

/// A fake Twilio account.
///
/// A message with `To`, `From` (or `MessagingServiceSid`) and `Body` is
/// accepted and answered `201` with a fresh `SM…` sid, which is the
/// recorded [`Sent::provider_message_id`].
#[derive(Debug)]
pub struct FakeTwilio {
    account_sid: String,
    shared: Arc<Shared<()>>,
    server: Server,
}

/// What the handler needs.
#[derive(Debug, Clone)]
struct Ctx {
    account_sid: String,
    auth_token: String,
    shared: Arc<Shared<()>>,
}

impl FakeTwilio {
    /// Starts a fake of the account `account_sid` with `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> anyhow::Result<FakeTwilio> {
        Self::start_on("127.0.0.1:0", account_sid, auth_token).await
    }

    /// As [`FakeTwilio::start`], listening on `addr` (e.g. `127.0.0.1:9401`).
    pub async fn start_on(
        addr: &str,
        account_sid: &str,
        auth_token: &str,
    ) -> anyhow::Result<FakeTwilio> {
        let shared = Shared::new("twilio");
        let ctx = Ctx {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            shared: Arc::clone(&shared),
        };
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages.json",
                post(handle),
            )
            .fallback(not_found)
            .with_state(ctx);
        let server =
            Server::start_on("twilio", router, addr).context("starting the fake Twilio")?;
        Ok(FakeTwilio {
            account_sid: account_sid.to_owned(),
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`: the channel's `apiBaseUrl` (messages are
    /// created at `{base_url}/2010-04-01/Accounts/{sid}/Messages.json`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The account sid it serves.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// Every accepted message, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.sent()
    }

    /// The next authenticated calls answer these, in order, then calls
    /// succeed again.
    pub fn push_faults(&self, faults: Vec<Fault>) {
        self.shared.push_faults(faults);
    }

    /// Faults pushed and not yet answered.
    pub fn pending_faults(&self) -> usize {
        self.shared.pending_faults()
    }

    /// The recipient `to` (exactly as `To` names it) unsubscribed (replied
    /// STOP): sends to it answer `400` code `21610` from now on.
    pub fn block(&self, to: &str) {
        self.shared.block(to);
    }

    /// The recipient `to` subscribed again (replied START).
    pub fn unblock(&self, to: &str) {
        self.shared.unblock(to);
    }

    /// Calls refused for missing or wrong credentials.
    pub fn rejected_auth(&self) -> u64 {
        self.shared.rejected_auth()
    }

    /// Send calls received, accepted or not.
    pub fn calls(&self) -> u64 {
        self.shared.calls()
    }

    /// Waits until at least `n` messages were accepted; returns all of them.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Sent>> {
        self.shared.wait_for_sent(n, timeout).await
    }
}

// ---------------------------------------------------------------------------
// Answers (pure)
// ---------------------------------------------------------------------------

/// A Twilio REST error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn authenticate() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, 20003, "Authenticate")
    }

    fn not_found(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    }

    fn too_many_requests() -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests")
    }

    fn server_error() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "An internal server error has occurred",
        )
    }

    fn unsubscribed() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            21610,
            "Attempt to send to unsubscribed recipient",
        )
    }

    fn bad_request(code: u32, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The JSON body Twilio answers.
    fn body(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
        }
        response
    }
}

/// The `(user, password)` of an `Authorization: Basic …` header.
fn basic_credentials(authorization: Option<&str>) -> Option<(String, String)> {
    let (scheme, encoded) = authorization?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A valid Create Message request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CreateMessage {
    to: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    body: String,
}

/// Checks the form of a Create Message request as Twilio does.
fn create_message(form: &[(String, String)]) -> Result<CreateMessage, ApiError> {
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.trim().is_empty())
    };
    let to = get("To")
        .ok_or_else(|| ApiError::bad_request(21604, "A 'To' phone number is required."))?;
    let from = get("From");
    let messaging_service_sid = get("MessagingServiceSid");
    if from.is_none() && messaging_service_sid.is_none() {
        return Err(ApiError::bad_request(
            21603,
            "A 'From' phone number is required.",
        ));
    }
    let body =
        get("Body").ok_or_else(|| ApiError::bad_request(21602, "Message body is required."))?;
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(ApiError::bad_request(
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    Ok(CreateMessage {
        to,
        from,
        messaging_service_sid,
        body,
    })
}

/// A fresh message sid: `SM` and 32 hex digits.
fn new_message_sid() -> String {
    format!("SM{}", Uuid::new_v4().simple())
}

/// The Message resource answered on creation.
fn message_resource(account_sid: &str, sid: &str, message: &CreateMessage, now: &str) -> Value {
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}");
    json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": message.body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": message.from,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": { "media": format!("{uri}/Media.json") },
        "to": message.to,
        "uri": format!("{uri}.json"),
    })
}

// ---------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------

async fn not_found(uri: axum::http::Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

async fn handle(
    State(ctx): State<Ctx>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    detached(async move {
        match send(&ctx, &account_sid, authorization.as_deref(), &body).await {
            Ok(resource) => (StatusCode::CREATED, Json(resource)).into_response(),
            Err(e) => {
                tracing::debug!(fake = "twilio", code = e.code, message = %e.message, "send refused");
                e.into_response()
            }
        }
    })
    .await
}

/// One Create Message call: count, auth, account, fault, validation, block,
/// acceptance.
async fn send(
    ctx: &Ctx,
    account_sid: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Value, ApiError> {
    ctx.shared.count_call();
    let authenticated = basic_credentials(authorization)
        .is_some_and(|(user, password)| user == ctx.account_sid && password == ctx.auth_token);
    if !authenticated {
        ctx.shared.count_rejected_auth();
        return Err(ApiError::authenticate());
    }
    if account_sid != ctx.account_sid {
        return Err(ApiError::not_found(&format!(
            "/2010-04-01/Accounts/{account_sid}/Messages.json"
        )));
    }
    match ctx.shared.next_fault() {
        Some(Fault::TooManyRequests { .. }) => return Err(ApiError::too_many_requests()),
        Some(Fault::ServerError) => return Err(ApiError::server_error()),
        Some(Fault::Timeout(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let message = create_message(&form)?;
    if ctx.shared.is_blocked(&[&message.to]) {
        return Err(ApiError::unsubscribed());
    }
    let (sent, ()) = ctx.shared.record(|()| {
        let sent = Sent {
            to: message.to.clone(),
            text: message.body.clone(),
            provider_message_id: new_message_sid(),
            at: SystemTime::now(),
        };
        (sent, ())
    });
    tracing::debug!(fake = "twilio", sid = %sent.provider_message_id, "message accepted");
    let now = chrono::Utc::now().to_rfc2822();
    Ok(message_resource(
        &ctx.account_sid,
        &sent.provider_message_id,
        &message,
        &now,
    ))
}

// ---------------------------------------------------------------------------
// Webhooks Twilio posts
// ---------------------------------------------------------------------------

/// `X-Twilio-Signature` of a POST to `url` with `params`: base64 of the
/// HMAC-SHA1, keyed with `auth_token`, of `url` followed by each
/// parameter's name and value, sorted by name (then value, for repeated
/// names) in byte order.
pub fn twilio_signature<K: AsRef<str>, V: AsRef<str>>(
    auth_token: &str,
    url: &str,
    params: &[(K, V)],
) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable();
    let mut data = String::from(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = match Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Posts `params` to `url` as Twilio does: a form body, signed in
/// `X-Twilio-Signature` for `url` exactly as given.
pub async fn post_twilio<K: AsRef<str>, V: AsRef<str>>(
    url: &str,
    auth_token: &str,
    params: &[(K, V)],
) -> anyhow::Result<reqwest::Response> {
    let signature = twilio_signature(auth_token, url, params);
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        form.append_pair(k.as_ref(), v.as_ref());
    }
    http_client()?
        .post(url)
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header("X-Twilio-Signature", signature)
        .header(header::USER_AGENT, "TwilioProxy/1.1")
        .body(form.finish())
        .send()
        .await
        .with_context(|| format!("posting a Twilio webhook to {url}"))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The parameters of Twilio's incoming-message webhook for a text
/// message `body` from `from` to `to` (an SMS, or WhatsApp when the numbers
/// are `whatsapp:+…`).
pub fn twilio_inbound_params(
    account_sid: &str,
    from: &str,
    to: &str,
    body: &str,
    message_sid: &str,
) -> Vec<(String, String)> {
    pairs(&[
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", message_sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", to),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", account_sid),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ])
}

/// The parameters of Twilio's status callback for the message
/// `message_sid` reaching `status` (`sent`, `delivered`, `undelivered`,
/// `failed`, `read`, …), with `ErrorCode` when given.
pub fn twilio_status_params(
    account_sid: &str,
    message_sid: &str,
    status: &str,
    error_code: Option<&str>,
) -> Vec<(String, String)> {
    let mut params = pairs(&[
        ("SmsSid", message_sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("MessageSid", message_sid),
        ("AccountSid", account_sid),
        ("ApiVersion", "2010-04-01"),
    ]);
    if let Some(code) = error_code {
        params.push(("ErrorCode".to_owned(), code.to_owned()));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(list: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs(list)
    }

    #[test]
    fn basic_credentials_decode() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ACx:tok:en")
        );
        assert_eq!(
            basic_credentials(Some(&header)),
            Some(("ACx".into(), "tok:en".into()))
        );
        assert_eq!(basic_credentials(Some("Bearer abc")), None);
        assert_eq!(basic_credentials(Some("Basic !!!")), None);
        assert_eq!(basic_credentials(None), None);
    }

    #[test]
    fn create_message_refuses_as_twilio() {
        let code = |f: &[(&str, &str)]| create_message(&form(f)).map_err(|e| e.code);
        assert_eq!(code(&[("From", "+1"), ("Body", "x")]), Err(21604));
        assert_eq!(code(&[("To", "+1"), ("Body", "x")]), Err(21603));
        assert_eq!(code(&[("To", "+1"), ("From", "+2")]), Err(21602));
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        assert_eq!(
            code(&[("To", "+1"), ("From", "+2"), ("Body", &long)]),
            Err(21617)
        );
        assert!(code(&[("To", "+1"), ("MessagingServiceSid", "MG1"), ("Body", "x")]).is_ok());
    }

    #[test]
    fn message_sids_are_sm_and_32_hex() {
        let sid = new_message_sid();
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("SM"));
        assert!(sid[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
