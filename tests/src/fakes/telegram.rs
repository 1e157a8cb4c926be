//! A fake Telegram Bot API (`sendMessage`, `getMe`) and the Updates
//! Telegram posts to a bot's webhook.
//!
//! Wire format (<https://core.telegram.org/bots/api>): methods are called as
//! `GET`/`POST https://api.telegram.org/bot<token>/<method>` (method names
//! are case-insensitive) with parameters in the query string, a JSON body or
//! a `application/x-www-form-urlencoded` body (multipart is not supported by
//! this fake); every answer is `{"ok":true,"result":…}` or
//! `{"ok":false,"error_code":N,"description":"…"}` with `N` as the HTTP
//! status, and a flood-control answer adds `"parameters":{"retry_after":N}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::server::{detached, Server, Shared};
use super::{http_client, unix_now, Fault, Sent};

/// The longest text `sendMessage` takes, in characters.
const MAX_TEXT_CHARS: usize = 4096;

/// A fake Telegram Bot API server for one bot.
///
/// `sendMessage` to a numeric `chat_id` is accepted and answered with the
/// sent [Message](https://core.telegram.org/bots/api#message); message ids
/// count from 1 per chat. The recorded [`Sent::provider_message_id`] is
/// `"{chat_id}:{message_id}"`.
#[derive(Debug)]
pub struct FakeTelegram {
    bot_token: String,
    shared: Arc<Shared<Chats>>,
    server: Server,
}

/// Telegram's own state: the last message id of each chat.
#[derive(Debug, Default)]
struct Chats {
    last_message_id: BTreeMap<i64, i64>,
}

/// What the handler needs.
#[derive(Debug, Clone)]
struct Ctx {
    bot_token: String,
    bot_id: i64,
    shared: Arc<Shared<Chats>>,
}

impl FakeTelegram {
    /// Starts a fake for the bot with `bot_token` (`"<bot id>:<secret>"`;
    /// the bot id is what `getMe` and `result.from.id` show).
    pub async fn start(bot_token: &str) -> anyhow::Result<FakeTelegram> {
        Self::start_on("127.0.0.1:0", bot_token).await
    }

    /// As [`FakeTelegram::start`], listening on `addr` (e.g. `127.0.0.1:9401`).
    pub async fn start_on(addr: &str, bot_token: &str) -> anyhow::Result<FakeTelegram> {
        let shared = Shared::new("telegram");
        let ctx = Ctx {
            bot_token: bot_token.to_owned(),
            bot_id: bot_id(bot_token),
            shared: Arc::clone(&shared),
        };
        let router = Router::new()
            .route("/{bot}/{method}", any(handle))
            .fallback(not_found)
            .with_state(ctx);
        let server =
            Server::start_on("telegram", router, addr).context("starting the fake Telegram")?;
        Ok(FakeTelegram {
            bot_token: bot_token.to_owned(),
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`: the channel's `apiBaseUrl` (methods are
    /// under `{base_url}/bot<token>/`).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The bot token it accepts.
    pub fn bot_token(&self) -> &str {
        &self.bot_token
    }

    /// Every accepted `sendMessage`, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.sent()
    }

    /// The next authenticated `sendMessage` calls answer these, in order,
    /// then calls succeed again.
    pub fn push_faults(&self, faults: Vec<Fault>) {
        self.shared.push_faults(faults);
    }

    /// Faults pushed and not yet answered.
    pub fn pending_faults(&self) -> usize {
        self.shared.pending_faults()
    }

    /// The chat `to` (its id in decimal) blocked the bot: `sendMessage` to it
    /// answers `403 Forbidden: bot was blocked by the user` from now on.
    pub fn block(&self, to: &str) {
        self.shared.block(to);
    }

    /// The chat `to` unblocked the bot.
    pub fn unblock(&self, to: &str) {
        self.shared.unblock(to);
    }

    /// Requests refused for a wrong bot token (any method).
    pub fn rejected_auth(&self) -> u64 {
        self.shared.rejected_auth()
    }

    /// `sendMessage` calls received, accepted or not.
    pub fn calls(&self) -> u64 {
        self.shared.calls()
    }

    /// Waits until at least `n` messages were accepted; returns all of them.
    pub async fn wait_for_sent(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Sent>> {
        self.shared.wait_for_sent(n, timeout).await
    }
}

/// The bot id of a token `"<id>:<secret>"` (1 when it has none).
fn bot_id(token: &str) -> i64 {
    token
        .split_once(':')
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Answers (pure)
// ---------------------------------------------------------------------------

/// An error answer of the Bot API.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    code: u16,
    description: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, description: impl Into<String>) -> ApiError {
        ApiError {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    fn bad_request(what: &str) -> ApiError {
        ApiError::new(400, format!("Bad Request: {what}"))
    }

    fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized")
    }

    fn not_found() -> ApiError {
        ApiError::new(404, "Not Found")
    }

    fn too_many_requests(retry_after: u64) -> ApiError {
        ApiError {
            code: 429,
            description: format!("Too Many Requests: retry after {retry_after}"),
            retry_after: Some(retry_after),
        }
    }

    fn bad_gateway() -> ApiError {
        ApiError::new(502, "Bad Gateway")
    }

    fn blocked() -> ApiError {
        ApiError::new(403, "Forbidden: bot was blocked by the user")
    }

    /// The JSON body Telegram answers.
    fn body(&self) -> Value {
        let mut body = json!({
            "ok": false,
            "error_code": self.code,
            "description": self.description,
        });
        if let (Some(secs), Some(obj)) = (self.retry_after, body.as_object_mut()) {
            obj.insert("parameters".into(), json!({ "retry_after": secs }));
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The method's parameters, from the query string and the body (the body
/// wins), each as JSON (form and query values are strings).
fn parse_params(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    if let Some(query) = query {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let media_type = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match media_type.as_str() {
        "application/json" if !body.iter().all(u8::is_ascii_whitespace) => {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(obj)) => params.extend(obj),
                _ => return Err(ApiError::bad_request("can't parse JSON object")),
            }
        }
        "application/x-www-form-urlencoded" => {
            for (k, v) in form_urlencoded::parse(body) {
                params.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
        "multipart/form-data" => {
            return Err(ApiError::bad_request(
                "multipart/form-data is not supported by the fake Telegram",
            ))
        }
        _ => {}
    }
    Ok(params)
}

/// A valid `sendMessage` request: the chat id and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SendMessage {
    chat_id: i64,
    text: String,
}

/// Checks `sendMessage`'s parameters as Telegram does.
fn send_message(params: &Map<String, Value>) -> Result<SendMessage, ApiError> {
    let chat_id = match params.get("chat_id") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("chat_id is empty")),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("chat not found"))?,
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::bad_request("chat_id is empty"))
        }
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request("chat not found"))?,
        Some(_) => return Err(ApiError::bad_request("chat not found")),
    };
    if chat_id == 0 {
        return Err(ApiError::bad_request("chat not found"));
    }
    let text = match params.get("text") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_request("message is too long"));
    }
    Ok(SendMessage { chat_id, text })
}

/// The bot as a `User`.
fn bot_user(bot_id: i64) -> Value {
    json!({
        "id": bot_id,
        "is_bot": true,
        "first_name": "Chatpipe Fake Bot",
        "username": "chatpipe_fake_bot",
    })
}

/// The `sendMessage` success answer.
fn sent_message(bot_id: i64, chat_id: i64, message_id: i64, date: i64, text: &str) -> Value {
    json!({
        "ok": true,
        "result": {
            "message_id": message_id,
            "from": bot_user(bot_id),
            "chat": { "id": chat_id, "type": "private" },
            "date": date,
            "text": text,
        }
    })
}

// ---------------------------------------------------------------------------
// Handler
// ---------------------------------------------------------------------------

async fn not_found() -> Response {
    ApiError::not_found().into_response()
}

async fn handle(
    State(ctx): State<Ctx>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    detached(answer(ctx, bot, method, query, content_type, body)).await
}

async fn answer(
    ctx: Ctx,
    bot: String,
    method: String,
    query: Option<String>,
    content_type: Option<String>,
    body: Bytes,
) -> Response {
    let Some(token) = bot.strip_prefix("bot") else {
        return ApiError::not_found().into_response();
    };
    let method = method.to_ascii_lowercase();
    let is_send = method == "sendmessage";
    if is_send {
        ctx.shared.count_call();
    }
    if token != ctx.bot_token {
        ctx.shared.count_rejected_auth();
        tracing::debug!(fake = "telegram", %method, "refused: wrong bot token");
        return ApiError::unauthorized().into_response();
    }
    match method.as_str() {
        "getme" => Json(json!({ "ok": true, "result": bot_user(ctx.bot_id) })).into_response(),
        "sendmessage" => match send(&ctx, query.as_deref(), content_type.as_deref(), &body).await {
            Ok(ok) => Json(ok).into_response(),
            Err(e) => {
                tracing::debug!(fake = "telegram", code = e.code, description = %e.description, "sendMessage refused");
                e.into_response()
            }
        },
        _ => ApiError::not_found().into_response(),
    }
}

/// An authenticated `sendMessage`: fault, validation, block, acceptance.
async fn send(
    ctx: &Ctx,
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, ApiError> {
    match ctx.shared.next_fault() {
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            return Err(ApiError::too_many_requests(retry_after_secs))
        }
        Some(Fault::ServerError) => return Err(ApiError::bad_gateway()),
        Some(Fault::Timeout(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let params = parse_params(content_type, query, body)?;
    let request = send_message(&params)?;
    let to = request.chat_id.to_string();
    if ctx.shared.is_blocked(&[&to]) {
        return Err(ApiError::blocked());
    }
    let date = unix_now();
    let (sent, message_id) = ctx.shared.record(|chats| {
        let id = chats.last_message_id.entry(request.chat_id).or_insert(0);
        *id += 1;
        let sent = Sent {
            to: to.clone(),
            text: request.text.clone(),
            provider_message_id: format!("{}:{}", request.chat_id, id),
            at: SystemTime::now(),
        };
        (sent, *id)
    });
    tracing::debug!(fake = "telegram", id = %sent.provider_message_id, "sendMessage accepted");
    Ok(sent_message(
        ctx.bot_id,
        request.chat_id,
        message_id,
        date,
        &request.text,
    ))
}

// ---------------------------------------------------------------------------
// Webhooks Telegram posts
// ---------------------------------------------------------------------------

/// The user of a private chat (Telegram gives a private chat the user's id).
fn private_user(chat_id: i64, from_name: &str) -> (Value, Value) {
    let from = json!({
        "id": chat_id,
        "is_bot": false,
        "first_name": from_name,
        "language_code": "en",
    });
    let chat = json!({
        "id": chat_id,
        "first_name": from_name,
        "type": "private",
    });
    (from, chat)
}

/// An [Update](https://core.telegram.org/bots/api#update) with a text
/// message in the private chat `chat_id` from the user `from_name`.
pub fn telegram_update(
    update_id: i64,
    chat_id: i64,
    message_id: i64,
    from_name: &str,
    text: &str,
    date: i64,
) -> Value {
    let (from, chat) = private_user(chat_id, from_name);
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": from,
            "chat": chat,
            "date": date,
            "text": text,
        }
    })
}

/// An Update with a photo message (three sizes, the largest last, as
/// Telegram sends them) and an optional caption; `file_id` is the largest
/// size's id.
pub fn telegram_photo_update(
    update_id: i64,
    chat_id: i64,
    message_id: i64,
    from_name: &str,
    file_id: &str,
    caption: Option<&str>,
    date: i64,
) -> Value {
    let (from, chat) = private_user(chat_id, from_name);
    let size = |suffix: &str, w: u32, h: u32, bytes: u32| {
        json!({
            "file_id": format!("{file_id}{suffix}"),
            "file_unique_id": format!("AQAD{message_id}{suffix}"),
            "file_size": bytes,
            "width": w,
            "height": h,
        })
    };
    let mut message = json!({
        "message_id": message_id,
        "from": from,
        "chat": chat,
        "date": date,
        "photo": [
            size("-s", 90, 67, 1_502),
            size("-m", 320, 240, 20_311),
            size("", 1280, 960, 184_337),
        ],
    });
    if let (Some(caption), Some(obj)) = (caption, message.as_object_mut()) {
        obj.insert("caption".into(), Value::String(caption.to_owned()));
    }
    json!({ "update_id": update_id, "message": message })
}

/// Posts `update` to `url` as Telegram does: JSON, with the webhook's
/// secret token in `X-Telegram-Bot-Api-Secret-Token` (omitted when
/// `secret_token` is empty, as Telegram does for a webhook set without one).
pub async fn post_telegram(
    url: &str,
    secret_token: &str,
    update: &Value,
) -> anyhow::Result<reqwest::Response> {
    let body = serde_json::to_vec(update).context("serialising the Telegram update")?;
    let mut request = http_client()?
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if !secret_token.is_empty() {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret_token);
    }
    request
        .send()
        .await
        .with_context(|| format!("posting a Telegram update to {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn send_message_takes_numeric_chat_ids_as_number_or_string() {
        let ok = SendMessage {
            chat_id: -10_042,
            text: "hi".into(),
        };
        assert_eq!(
            send_message(&params(json!({"chat_id": -10_042, "text": "hi"}))),
            Ok(ok.clone())
        );
        assert_eq!(
            send_message(&params(json!({"chat_id": " -10042 ", "text": "hi"}))),
            Ok(ok)
        );
    }

    #[test]
    fn send_message_refuses_as_telegram() {
        let err = |v: Value| send_message(&params(v)).map_err(|e| e.description);
        assert_eq!(
            err(json!({"text": "hi"})),
            Err("Bad Request: chat_id is empty".into())
        );
        assert_eq!(
            err(json!({"chat_id": "", "text": "hi"})),
            Err("Bad Request: chat_id is empty".into())
        );
        assert_eq!(
            err(json!({"chat_id": "@somebody", "text": "hi"})),
            Err("Bad Request: chat not found".into())
        );
        assert_eq!(
            err(json!({"chat_id": 5})),
            Err("Bad Request: message text is empty".into())
        );
        assert_eq!(
            err(json!({"chat_id": 5, "text": "  "})),
            Err("Bad Request: message text is empty".into())
        );
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            err(json!({"chat_id": 5, "text": long})),
            Err("Bad Request: message is too long".into())
        );
        let longest = "é".repeat(MAX_TEXT_CHARS);
        assert!(send_message(&params(json!({"chat_id": 5, "text": longest}))).is_ok());
    }

    #[test]
    fn params_come_from_query_json_and_form() {
        let p = parse_params(
            Some("application/x-www-form-urlencoded"),
            None,
            b"chat_id=7&text=a+b%21",
        )
        .unwrap_or_default();
        assert_eq!(p.get("text"), Some(&json!("a b!")));
        let p = parse_params(
            Some("application/json; charset=utf-8"),
            Some("chat_id=8"),
            br#"{"text":"x"}"#,
        )
        .unwrap_or_default();
        assert_eq!(p.get("chat_id"), Some(&json!("8")));
        assert_eq!(p.get("text"), Some(&json!("x")));
        assert_eq!(
            parse_params(Some("application/json"), None, b"[1]").map_err(|e| e.code),
            Err(400)
        );
        assert_eq!(
            parse_params(Some("application/json"), None, b"").map(|p| p.len()),
            Ok(0)
        );
    }

    #[test]
    fn error_bodies_have_telegrams_shape() {
        assert_eq!(
            ApiError::too_many_requests(7).body(),
            json!({"ok": false, "error_code": 429,
                   "description": "Too Many Requests: retry after 7",
                   "parameters": {"retry_after": 7}})
        );
        assert_eq!(
            ApiError::blocked().body(),
            json!({"ok": false, "error_code": 403,
                   "description": "Forbidden: bot was blocked by the user"})
        );
    }

    #[test]
    fn bot_id_is_the_tokens_prefix() {
        assert_eq!(bot_id("123456:ABC-DEF"), 123_456);
        assert_eq!(bot_id("nonsense"), 1);
    }
}
