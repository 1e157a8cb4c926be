//! A fake WhatsApp Cloud API (`POST /{version}/{phone_number_id}/messages`)
//! and the webhooks Meta posts for a WhatsApp Business Account.
//!
//! Wire format (<https://developers.facebook.com/docs/whatsapp/cloud-api>):
//! the Graph API authenticates with `Authorization: Bearer <access token>`
//! (or an `access_token` query parameter), takes
//! `{"messaging_product":"whatsapp","to":…,"type":"text","text":{"body":…}}`
//! and answers
//! `{"messaging_product":"whatsapp","contacts":[{"input":…,"wa_id":…}],"messages":[{"id":"wamid.…"}]}`;
//! errors are `{"error":{"message","type","code","error_data":{"messaging_product","details"},"fbtrace_id"}}`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use super::server::{detached, Server, Shared};
use super::{http_client, Fault, Sent};

/// The longest `text.body` the Cloud API takes, in characters.
const MAX_BODY_CHARS: usize = 4096;

/// The WhatsApp Business Account id the webhook helpers put in `entry[].id`.
pub const WABA_ID: &str = "102290129340398";

/// The business phone number the webhook helpers put in
/// `metadata.display_phone_number`.
pub const DISPLAY_PHONE_NUMBER: &str = "15550783881";

/// A fake WhatsApp Cloud API for one business phone number.
///
/// A text message to any `to` is accepted and answered with a fresh
/// `wamid.…` id, which is the recorded [`Sent::provider_message_id`].
#[derive(Debug)]
pub struct FakeWhatsApp {
    phone_number_id: String,
    shared: Arc<Shared<()>>,
    server: Server,
}

/// What the handler needs.
#[derive(Debug, Clone)]
struct Ctx {
    access_token: String,
    phone_number_id: String,
    shared: Arc<Shared<()>>,
}

impl FakeWhatsApp {
    /// Starts a fake accepting `access_token` for the phone number
    /// `phone_number_id`.
    pub async fn start(access_token: &str, phone_number_id: &str) -> anyhow::Result<FakeWhatsApp> {
        Self::start_on("127.0.0.1:0", access_token, phone_number_id).await
    }

    /// As [`FakeWhatsApp::start`], listening on `addr` (e.g. `127.0.0.1:9401`).
    pub async fn start_on(
        addr: &str,
        access_token: &str,
        phone_number_id: &str,
    ) -> anyhow::Result<FakeWhatsApp> {
        let shared = Shared::new("whatsapp");
        let ctx = Ctx {
            access_token: access_token.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            shared: Arc::clone(&shared),
        };
        let router = Router::new()
            .route("/{version}/{phone_number_id}/messages", post(handle))
            .fallback(unknown_path)
            .with_state(ctx);
        let server =
            Server::start_on("whatsapp", router, addr).context("starting the fake WhatsApp")?;
        Ok(FakeWhatsApp {
            phone_number_id: phone_number_id.to_owned(),
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`: the channel's `apiBaseUrl` (sends go to
    /// `{base_url}/v21.0/{phone_number_id}/messages`, any `vN.M`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The phone number id it serves.
    pub fn phone_number_id(&self) -> &str {
        &self.phone_number_id
    }

    /// Every accepted message, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.sent()
    }

    /// The next authenticated send calls answer these, in order, then calls
    /// succeed again.
    pub fn push_faults(&self, faults: Vec<Fault>) {
        self.shared.push_faults(faults);
    }

    /// Faults pushed and not yet answered.
    pub fn pending_faults(&self) -> usize {
        self.shared.pending_faults()
    }

    /// The recipient `to` (as sent, or its wa_id — digits only) is out of
    /// the customer service window for good: sends to it answer `400` code
    /// `131047` "Re-engagement message".
    pub fn block(&self, to: &str) {
        self.shared.block(to);
    }

    /// The recipient `to` replied: sends to it are accepted again.
    pub fn unblock(&self, to: &str) {
        self.shared.unblock(to);
    }

    /// Send calls refused for a missing or wrong access token.
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

/// A Graph API error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: i64,
    subcode: Option<i64>,
    details: Option<String>,
}

impl GraphError {
    fn new(status: StatusCode, code: i64, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            message: message.into(),
            kind: "OAuthException",
            code,
            subcode: None,
            details: None,
        }
    }

    fn details(mut self, details: impl Into<String>) -> GraphError {
        self.details = Some(details.into());
        self
    }

    fn invalid_token() -> GraphError {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            190,
            "Invalid OAuth access token - Cannot parse access token",
        )
    }

    fn unknown_path(path: &str) -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            2500,
            format!("Unknown path components: {path}"),
        )
    }

    fn unknown_object(id: &str) -> GraphError {
        GraphError {
            kind: "GraphMethodException",
            subcode: Some(33),
            ..GraphError::new(
                StatusCode::BAD_REQUEST,
                100,
                format!(
                    "Unsupported post request. Object with ID '{id}' does not exist, cannot be \
                     loaded due to missing permissions, or does not support this operation. \
                     Please read the Graph API documentation at \
                     https://developers.facebook.com/docs/graph-api"
                ),
            )
        }
    }

    fn required(param: &str) -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            100,
            format!("(#100) The parameter {param} is required."),
        )
    }

    fn invalid_parameter(details: impl Into<String>) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, 100, "(#100) Invalid parameter").details(details)
    }

    fn rate_limited() -> GraphError {
        GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            130_429,
            "(#130429) Rate limit hit",
        )
        .details("Cloud API message throughput has been reached.")
    }

    fn server_error() -> GraphError {
        GraphError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            131_000,
            "(#131000) Something went wrong",
        )
        .details("Message failed to send due to an unknown error.")
    }

    fn re_engagement() -> GraphError {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            131_047,
            "(#131047) Re-engagement message",
        )
        .details(
            "Message failed to send because more than 24 hours have passed since the customer \
             last replied to this number.",
        )
    }

    /// The JSON body the Graph API answers.
    fn body(&self) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "fbtrace_id": fbtrace_id(),
        });
        if let Some(obj) = error.as_object_mut() {
            if let Some(subcode) = self.subcode {
                obj.insert("error_subcode".into(), json!(subcode));
            }
            if let Some(details) = &self.details {
                obj.insert(
                    "error_data".into(),
                    json!({ "messaging_product": "whatsapp", "details": details }),
                );
            }
        }
        json!({ "error": error })
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token\"",
                ),
            );
        }
        response
    }
}

/// A trace id like Meta's (23 URL-safe characters).
fn fbtrace_id() -> String {
    let mut random = [0u8; 32];
    random[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    random[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let mut id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    id.truncate(23);
    id
}

/// A fresh message id: `wamid.` and a base64 blob, as Meta's look.
fn new_wamid(wa_id: &str) -> String {
    let mut raw = Vec::with_capacity(48);
    raw.extend_from_slice(b"\x15\x02\x00\x11\x18\x12");
    raw.extend_from_slice(wa_id.as_bytes());
    raw.extend_from_slice(
        Uuid::new_v4()
            .simple()
            .to_string()
            .to_uppercase()
            .as_bytes(),
    );
    format!(
        "wamid.{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Whether a Graph API version path segment is `v<major>.<minor>`.
fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// The access token of a request: `Authorization: Bearer …` (the scheme is
/// case-insensitive) or the `access_token` query parameter.
fn access_token(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(value) = authorization {
        let (scheme, token) = value.trim().split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
            .then(|| token.trim().to_owned());
    }
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// A valid text message request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TextMessage {
    to: String,
    wa_id: String,
    body: String,
}

/// Checks a send's JSON body as the Cloud API does.
fn text_message(body: &[u8]) -> Result<TextMessage, GraphError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| GraphError::invalid_parameter(format!("The request body is not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(GraphError::invalid_parameter(
            "The request body must be a JSON object.",
        ));
    };
    match obj.get("messaging_product") {
        Some(Value::String(p)) if p == "whatsapp" => {}
        None => return Err(GraphError::required("messaging_product")),
        Some(_) => {
            return Err(GraphError::invalid_parameter(
                "Param messaging_product must be 'whatsapp'.",
            ))
        }
    }
    let to = match obj.get("to") {
        Some(Value::String(to)) if !to.trim().is_empty() => to.clone(),
        Some(Value::String(_)) | None => return Err(GraphError::required("to")),
        Some(_) => return Err(GraphError::invalid_parameter("Param to must be a string.")),
    };
    let wa_id: String = to.chars().filter(char::is_ascii_digit).collect();
    if wa_id.is_empty() {
        return Err(GraphError::invalid_parameter(
            "Param to must be a phone number.",
        ));
    }
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if t == "text" => {}
        Some(other) => {
            return Err(GraphError::invalid_parameter(format!(
                "Message type {other} is not supported by the fake WhatsApp (text only)."
            )))
        }
    }
    let body = match obj.get("text").and_then(|t| t.get("body")) {
        Some(Value::String(b)) if !b.is_empty() => b.clone(),
        Some(Value::String(_)) | None => return Err(GraphError::required("text['body']")),
        Some(_) => {
            return Err(GraphError::invalid_parameter(
                "Param text['body'] must be a string.",
            ))
        }
    };
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(GraphError::invalid_parameter(format!(
            "Param text['body'] must be at most {MAX_BODY_CHARS} characters long."
        )));
    }
    Ok(TextMessage { to, wa_id, body })
}

/// The send's success answer.
fn accepted(to: &str, wa_id: &str, wamid: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": wa_id }],
        "messages": [{ "id": wamid }],
    })
}

// ---------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------

async fn unknown_path(uri: axum::http::Uri) -> Response {
    GraphError::unknown_path(uri.path()).into_response()
}

async fn handle(
    State(ctx): State<Ctx>,
    Path((version, phone_number_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    detached(async move {
        match send(&ctx, &version, &phone_number_id, authorization, query, &body).await {
            Ok(ok) => Json(ok).into_response(),
            Err(e) => {
                tracing::debug!(fake = "whatsapp", code = e.code, message = %e.message, "send refused");
                e.into_response()
            }
        }
    })
    .await
}

/// One send call: count, auth, path, fault, validation, block, acceptance.
async fn send(
    ctx: &Ctx,
    version: &str,
    phone_number_id: &str,
    authorization: Option<String>,
    query: Option<String>,
    body: &[u8],
) -> Result<Value, GraphError> {
    ctx.shared.count_call();
    if access_token(authorization.as_deref(), query.as_deref()).as_deref()
        != Some(ctx.access_token.as_str())
    {
        ctx.shared.count_rejected_auth();
        return Err(GraphError::invalid_token());
    }
    if !is_version(version) {
        return Err(GraphError::unknown_path(&format!(
            "/{version}/{phone_number_id}/messages"
        )));
    }
    if phone_number_id != ctx.phone_number_id {
        return Err(GraphError::unknown_object(phone_number_id));
    }
    match ctx.shared.next_fault() {
        Some(Fault::TooManyRequests { .. }) => return Err(GraphError::rate_limited()),
        Some(Fault::ServerError) => return Err(GraphError::server_error()),
        Some(Fault::Timeout(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let message = text_message(body)?;
    if ctx.shared.is_blocked(&[&message.to, &message.wa_id]) {
        return Err(GraphError::re_engagement());
    }
    let (sent, ()) = ctx.shared.record(|()| {
        let sent = Sent {
            to: message.to.clone(),
            text: message.body.clone(),
            provider_message_id: new_wamid(&message.wa_id),
            at: SystemTime::now(),
        };
        (sent, ())
    });
    tracing::debug!(fake = "whatsapp", id = %sent.provider_message_id, "message accepted");
    Ok(accepted(
        &message.to,
        &message.wa_id,
        &sent.provider_message_id,
    ))
}

// ---------------------------------------------------------------------------
// Webhooks Meta posts
// ---------------------------------------------------------------------------

/// The `whatsapp_business_account` envelope around one change `value`.
fn envelope(phone_number_id: &str, mut value: Value) -> Value {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("messaging_product".into(), json!("whatsapp"));
        obj.insert(
            "metadata".into(),
            json!({
                "display_phone_number": DISPLAY_PHONE_NUMBER,
                "phone_number_id": phone_number_id,
            }),
        );
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": WABA_ID,
            "changes": [{ "value": value, "field": "messages" }],
        }],
    })
}

/// The webhook for an incoming text message from `from_wa_id` (whose
/// profile name is `profile_name`) to the business number
/// `phone_number_id`; `ts` is Unix seconds (sent as a string, as Meta
/// does).
pub fn whatsapp_message(
    phone_number_id: &str,
    from_wa_id: &str,
    profile_name: &str,
    wamid: &str,
    text: &str,
    ts: i64,
) -> Value {
    envelope(
        phone_number_id,
        json!({
            "contacts": [{ "profile": { "name": profile_name }, "wa_id": from_wa_id }],
            "messages": [{
                "from": from_wa_id,
                "id": wamid,
                "timestamp": ts.to_string(),
                "text": { "body": text },
                "type": "text",
            }],
        }),
    )
}

/// The webhook for a status of the message `wamid` sent to `recipient`:
/// `status` is `sent`, `delivered`, `read` or `failed`; `error` (a code and
/// its title) fills `errors[]` (as Meta does for `failed`).
pub fn whatsapp_status(
    phone_number_id: &str,
    wamid: &str,
    recipient: &str,
    status: &str,
    ts: i64,
    error: Option<(i64, &str)>,
) -> Value {
    let mut entry = json!({
        "id": wamid,
        "status": status,
        "timestamp": ts.to_string(),
        "recipient_id": recipient,
    });
    if let Some(obj) = entry.as_object_mut() {
        if let Some((code, title)) = error {
            obj.insert(
                "errors".into(),
                json!([{
                    "code": code,
                    "title": title,
                    "message": title,
                    "error_data": { "details": title },
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }]),
            );
        } else if status == "sent" || status == "delivered" {
            obj.insert(
                "conversation".into(),
                json!({
                    "id": format!("{:x}", Uuid::new_v5(&Uuid::NAMESPACE_OID, recipient.as_bytes()).simple()),
                    "origin": { "type": "service" },
                }),
            );
            obj.insert(
                "pricing".into(),
                json!({ "billable": false, "pricing_model": "PMP", "category": "service", "type": "free_customer_service" }),
            );
        }
    }
    envelope(phone_number_id, json!({ "statuses": [entry] }))
}

/// `sha256=<hex HMAC-SHA256 of body under app_secret>`: Meta's
/// `X-Hub-Signature-256`.
pub fn whatsapp_signature(app_secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts `body` to `url` as Meta does: JSON, signed with the app secret in
/// `X-Hub-Signature-256` over the exact bytes sent.
pub async fn post_whatsapp(
    url: &str,
    app_secret: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let bytes = serde_json::to_vec(body).context("serialising the WhatsApp webhook")?;
    let signature = whatsapp_signature(app_secret, &bytes);
    http_client()?
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Hub-Signature-256", signature)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("posting a WhatsApp webhook to {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_v_major_dot_minor() {
        assert!(is_version("v21.0"));
        assert!(is_version("v1.10"));
        for bad in ["21.0", "v21", "v.0", "v21.", "va.b", "v21.0.1", ""] {
            assert!(!is_version(bad), "{bad}");
        }
    }

    #[test]
    fn access_token_from_header_or_query() {
        assert_eq!(access_token(Some("Bearer abc"), None), Some("abc".into()));
        assert_eq!(access_token(Some("bearer  abc "), None), Some("abc".into()));
        assert_eq!(access_token(Some("Basic abc"), None), None);
        assert_eq!(access_token(Some("abc"), None), None);
        assert_eq!(
            access_token(None, Some("x=1&access_token=t%2B1")),
            Some("t+1".into())
        );
        assert_eq!(access_token(None, None), None);
    }

    #[test]
    fn text_message_checks_the_body() {
        let ok = text_message(
            br#"{"messaging_product":"whatsapp","to":"+1 650-555-1234","type":"text","text":{"body":"hi"}}"#,
        );
        assert_eq!(
            ok,
            Ok(TextMessage {
                to: "+1 650-555-1234".into(),
                wa_id: "16505551234".into(),
                body: "hi".into()
            })
        );
        let code = |b: &[u8]| text_message(b).map_err(|e| (e.code, e.message));
        assert_eq!(
            code(br#"{"to":"1","text":{"body":"hi"}}"#),
            Err((
                100,
                "(#100) The parameter messaging_product is required.".into()
            ))
        );
        assert_eq!(
            code(br#"{"messaging_product":"whatsapp","text":{"body":"hi"}}"#),
            Err((100, "(#100) The parameter to is required.".into()))
        );
        assert_eq!(
            code(br#"{"messaging_product":"whatsapp","to":"1","type":"text","text":{}}"#),
            Err((100, "(#100) The parameter text['body'] is required.".into()))
        );
        assert_eq!(
            code(br#"{"messaging_product":"whatsapp","to":"1","type":"image"}"#),
            Err((100, "(#100) Invalid parameter".into()))
        );
        assert_eq!(
            code(b"not json"),
            Err((100, "(#100) Invalid parameter".into()))
        );
    }

    #[test]
    fn wamids_are_unique_and_prefixed() {
        let a = new_wamid("15551234567");
        let b = new_wamid("15551234567");
        assert!(a.starts_with("wamid."));
        assert_ne!(a, b);
    }

    #[test]
    fn error_body_has_graphs_shape() {
        let body = GraphError::re_engagement().body();
        assert_eq!(body["error"]["code"], json!(131_047));
        assert_eq!(body["error"]["type"], json!("OAuthException"));
        assert_eq!(
            body["error"]["error_data"]["messaging_product"],
            json!("whatsapp")
        );
        assert!(body["error"]["fbtrace_id"]
            .as_str()
            .is_some_and(|s| s.len() == 23));
        let auth = GraphError::invalid_token().body();
        assert_eq!(auth["error"]["code"], json!(190));
        assert!(auth["error"].get("error_data").is_none());
    }
}
