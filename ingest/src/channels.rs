//! `POST /channels/{name}/webhook` (and `GET`, WhatsApp's subscription
//! check): a messenger's webhook → authenticity → normalised messages and
//! status reports → the same event stream as the generic webhook.
//!
//! | answer | when |
//! |---|---|
//! | `200 {"status":"ok","messages":[…],"statuses":n,"ignored":n}` | every item was decided: each message is in the log (or was already: `duplicate`), each status report stored |
//! | `401 {"error","field":<header>}` | the provider's secret or signature did not verify; nothing was read further |
//! | `400 {"error","field"}` | not the provider's format |
//! | `404` | no channel of that name |
//! | `409` | a message would open a conversation whose id someone else took |
//! | `429` / `503` + `Retry-After` | admission (as `/webhook/`), or Postgres or the broker failed: the provider retries the whole webhook, and the items already decided are recognised by their deterministic ids |
//!
//! Providers retry slow endpoints, so the work is what the generic webhook
//! does per event; the decision runs on a task of its own (a provider that
//! hangs up does not cut it short).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chatpipe_channels::inbound::{
    verify_and_parse, whatsapp, Inbound, InboundError, InboundMessage, StatusReport, WebhookRequest,
};
use chatpipe_channels::{ids, Channel, ChannelType};
use chatpipe_core::event::{timestamp_in_range, Event};
use chrono::{DateTime, Utc};
use serde_json::json;

pub use crate::channel_routes::ChannelRoutes;
use crate::channel_store::{ChannelRecord, ChannelStore, ContactMessage};
use crate::events::{
    ChannelAuthFailed, ChannelItemIgnored, ChannelMessageDecided, ChannelStatusStored,
    ChannelWebhookAnswered, InternalEvent,
};
use crate::webhook::{admit, AppState, Reply};

/// Largest channel webhook body: providers batch (WhatsApp sends up to
/// 1,000 updates per request) and pad with metadata, so this is larger
/// than the generic webhook's limit.
pub const MAX_CHANNEL_BODY_BYTES: usize = 1024 * 1024;

/// What one message of a webhook became (the `200` body's `messages`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageOutcome {
    /// The NEW_MESSAGE id.
    pub id: uuid::Uuid,
    /// Its conversation.
    pub conversation_id: uuid::Uuid,
    /// It opened the conversation.
    pub opened: bool,
    /// A provider's retry of a message already stored.
    pub duplicate: bool,
}

/// The outcome of a channel webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelReply {
    /// Every item decided.
    Done {
        /// The messages.
        messages: Vec<MessageOutcome>,
        /// Status reports stored.
        statuses: usize,
        /// Items acknowledged without action.
        ignored: usize,
    },
    /// WhatsApp's subscription check passed: the challenge, as text.
    Challenge(String),
    /// No such channel → `404`.
    UnknownChannel(String),
    /// Not this method for this channel type → `405`.
    MethodNotAllowed(&'static str),
    /// The provider's authenticity check failed → `401`.
    Unauthenticated {
        /// The header checked.
        header: &'static str,
        /// Why.
        reason: String,
    },
    /// WhatsApp's subscription check failed → `403`.
    Forbidden(String),
    /// A conversation id is taken → `409`.
    Conflict(String),
    /// Admission, body, or the shared failures of the generic webhook
    /// (`400`, `408`, `429`, `503`).
    Shared(Reply),
}

/// Status and body of a channel reply (the generic webhook's mapping for
/// the shared cases).
pub fn channel_reply_parts(reply: &ChannelReply) -> (StatusCode, serde_json::Value) {
    match reply {
        ChannelReply::Done {
            messages,
            statuses,
            ignored,
        } => (
            StatusCode::OK,
            json!({"status": "ok", "messages": messages, "statuses": statuses, "ignored": ignored}),
        ),
        ChannelReply::Challenge(c) => (StatusCode::OK, json!(c)),
        ChannelReply::UnknownChannel(name) => (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no channel named {name:?}")}),
        ),
        ChannelReply::MethodNotAllowed(what) => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("{what} channels are not verified with GET")}),
        ),
        ChannelReply::Unauthenticated { header, reason } => (
            StatusCode::UNAUTHORIZED,
            json!({"error": reason, "field": header}),
        ),
        ChannelReply::Forbidden(reason) => (StatusCode::FORBIDDEN, json!({"error": reason})),
        ChannelReply::Conflict(reason) => (StatusCode::CONFLICT, json!({"error": reason})),
        ChannelReply::Shared(r) => crate::webhook::reply_parts(r),
    }
}

fn into_response(reply: &ChannelReply, retry_after_secs: u32) -> Response {
    match reply {
        ChannelReply::Shared(r) => crate::webhook::into_response(r, retry_after_secs),
        ChannelReply::Challenge(c) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            c.clone(),
        )
            .into_response(),
        other => {
            let (status, body) = channel_reply_parts(other);
            (status, axum::Json(body)).into_response()
        }
    }
}

/// The URL the provider called: the channel's `webhookUrl` when set, else
/// rebuilt from `X-Forwarded-Proto`, `X-Forwarded-Host` (or `Host`) and
/// the request's path and query.
pub fn called_url(channel: &Channel, headers: &HeaderMap, path_and_query: &str) -> String {
    if let Some(u) = &channel.decl.webhook_url {
        return u.clone();
    }
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let scheme = first("x-forwarded-proto").unwrap_or_else(|| "http".to_owned());
    let host = first("x-forwarded-host")
        .or_else(|| first("host"))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{scheme}://{host}{path_and_query}")
}

/// The text a message is stored with: its text or caption, else its kind
/// in brackets (`[image]`), made storable (NUL → U+FFFD) and cut at a
/// character boundary to `max_bytes`.
pub fn stored_content(m: &InboundMessage, max_bytes: usize) -> String {
    let text = match &m.text {
        Some(t) if !t.is_empty() => t.replace('\0', "\u{FFFD}"),
        _ => format!("[{}]", m.kind.as_str()),
    };
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The event time of a provider's message: its own time when it has one
/// the contract can carry, else the arrival.
pub fn event_time(provided: Option<DateTime<Utc>>, arrival: DateTime<Utc>) -> DateTime<Utc> {
    provided.filter(timestamp_in_range).unwrap_or(arrival)
}

/// The `GET /channels/{name}/webhook` handler: WhatsApp's subscription
/// check (`hub.mode=subscribe`, `hub.verify_token`, `hub.challenge`).
pub async fn verify_subscription(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let reply = match state.channels.get(&name) {
        None => ChannelReply::UnknownChannel(name.clone()),
        Some(c) if c.kind() != ChannelType::WhatsappCloud => {
            ChannelReply::MethodNotAllowed(c.kind().as_str())
        }
        Some(c) => match whatsapp::verification_challenge(c, request.uri().query().unwrap_or("")) {
            Ok(challenge) => ChannelReply::Challenge(challenge),
            Err(e) => {
                if let InboundError::Unauthenticated { header, .. } = &e {
                    ChannelAuthFailed {
                        channel: &name,
                        header,
                    }
                    .emit(&state.metrics);
                }
                ChannelReply::Forbidden(e.to_string())
            }
        },
    };
    answer(&state, &name, "GET", &reply, started)
}

fn answer(
    state: &AppState,
    name: &str,
    method: &'static str,
    reply: &ChannelReply,
    started: Instant,
) -> Response {
    let response = into_response(reply, state.retry_after_secs);
    let channel = if state.channels.get(name).is_some() {
        name
    } else {
        "unknown"
    };
    ChannelWebhookAnswered {
        channel,
        method,
        status: response.status(),
        seconds: started.elapsed().as_secs_f64(),
        unavailable: match reply {
            ChannelReply::Shared(Reply::Unavailable(reason)) => Some(reason.as_str()),
            _ => None,
        },
    }
    .emit(&state.metrics);
    response
}

/// The `POST /channels/{name}/webhook` handler.
pub async fn channel_webhook(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let Some(channel) = state.channels.get(&name).cloned() else {
        return answer(
            &state,
            &name,
            "POST",
            &ChannelReply::UnknownChannel(name.clone()),
            started,
        );
    };
    let (parts, body) = request.into_parts();
    let reply = match admit(&state, &parts) {
        Err(reply) => ChannelReply::Shared(reply),
        Ok(permit) => {
            let path_and_query = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| parts.uri.path().to_owned());
            let url = called_url(&channel, &parts.headers, &path_and_query);
            match read(&state, body).await {
                Err(reply) => ChannelReply::Shared(reply),
                Ok(bytes) => {
                    let request = WebhookRequest {
                        url: &url,
                        headers: &parts.headers,
                        body: &bytes,
                    };
                    match verify_and_parse(&channel, &request) {
                        Err(InboundError::Unauthenticated { header, reason }) => {
                            ChannelAuthFailed {
                                channel: &name,
                                header,
                            }
                            .emit(&state.metrics);
                            ChannelReply::Unauthenticated { header, reason }
                        }
                        Err(InboundError::Malformed { field, reason }) => {
                            ChannelReply::Shared(Reply::Invalid(
                                chatpipe_core::event::ValidationError::new(&field, reason),
                            ))
                        }
                        Ok(items) => {
                            let task_state = Arc::clone(&state);
                            let work = tokio::spawn(async move {
                                let _permit = permit;
                                decide_all(&task_state, &channel, items).await
                            });
                            match work.await {
                                Ok(reply) => reply,
                                Err(e) => ChannelReply::Shared(Reply::Unavailable(format!(
                                    "the request's task failed: {e}"
                                ))),
                            }
                        }
                    }
                }
            }
        }
    };
    answer(&state, &name, "POST", &reply, started)
}

async fn read(state: &AppState, body: Body) -> Result<bytes::Bytes, Reply> {
    let limit = state.limits.max_body_bytes.max(MAX_CHANNEL_BODY_BYTES);
    crate::webhook::read_body_limited(state, body, limit).await
}

/// Decides every item of a webhook in order; the first failure ends the
/// request (`503`/`409`): what was decided before it stays decided, and
/// the provider's retry recognises it.
async fn decide_all(state: &AppState, channel: &Channel, items: Vec<Inbound>) -> ChannelReply {
    let mut messages = Vec::new();
    let mut statuses = 0;
    let mut ignored = 0;
    for item in items {
        match item {
            Inbound::Message(m) => match decide_message(state, channel, &m).await {
                Ok(outcome) => messages.push(outcome),
                Err(reply) => return reply,
            },
            Inbound::Status(s) => match store_status(state, channel, &s).await {
                Ok(()) => statuses += 1,
                Err(reply) => return reply,
            },
            Inbound::Ignored(what) => {
                ChannelItemIgnored {
                    channel: channel.name(),
                    what: &what,
                }
                .emit(&state.metrics);
                ignored += 1;
            }
        }
    }
    ChannelReply::Done {
        messages,
        statuses,
        ignored,
    }
}

async fn decide_message(
    state: &AppState,
    channel: &Channel,
    m: &InboundMessage,
) -> Result<MessageOutcome, ChannelReply> {
    let name = channel.name();
    let contact_id = ids::contact_id(name, &m.provider_user_id);
    let message_id = ids::inbound_message_id(name, &m.provider_message_id);
    let timestamp = event_time(m.timestamp, Utc::now());
    let content = stored_content(m, state.limits.max_content_bytes);
    let cm = ContactMessage {
        channel: name.to_owned(),
        contact_id,
        provider_user_id: m.provider_user_id.clone(),
        display_name: m.display_name.clone(),
        message_id,
        provider_message_id: m.provider_message_id.clone(),
        timestamp,
        kind: m.kind.as_str(),
        media_id: m.media_id.clone(),
        media_type: m.media_type.clone(),
    };
    let store: &ChannelStore = &state.channel_store;
    let produce = |record: ChannelRecord| {
        let event = match record {
            ChannelRecord::NewConversation { id, timestamp } => {
                Event::NewConversation { id, timestamp }
            }
            ChannelRecord::NewMessage {
                id,
                conversation_id,
            } => Event::NewMessage {
                id,
                conversation_id,
                content: content.clone(),
                timestamp,
            },
        };
        async move { state.producer.produce(&event).await.map(|_| ()) }
    };
    match store.decide(&cm, produce).await {
        Ok(d) => {
            ChannelMessageDecided {
                channel: name,
                message_id,
                conversation_id: d.conversation_id,
                opened: d.opened,
                duplicate: d.duplicate,
                kind: cm.kind,
            }
            .emit(&state.metrics);
            Ok(MessageOutcome {
                id: message_id,
                conversation_id: d.conversation_id,
                opened: d.opened,
                duplicate: d.duplicate,
            })
        }
        Err(crate::channel_store::ChannelStoreError::ConversationIdTaken(id)) => {
            Err(ChannelReply::Conflict(format!(
                "conversation id {id} is taken by another conversation"
            )))
        }
        Err(e) => Err(ChannelReply::Shared(Reply::Unavailable(e.to_string()))),
    }
}

async fn store_status(
    state: &AppState,
    channel: &Channel,
    s: &StatusReport,
) -> Result<(), ChannelReply> {
    let at = s.at.unwrap_or_else(Utc::now);
    match state
        .channel_store
        .store_receipt(
            channel.name(),
            &s.provider_message_id,
            s.status.as_str(),
            at,
            s.code.as_deref(),
            s.reason.as_deref(),
        )
        .await
    {
        Ok(applied) => {
            ChannelStatusStored {
                channel: channel.name(),
                provider_message_id: &s.provider_message_id,
                status: s.status.as_str(),
                applied: applied.as_deref(),
            }
            .emit(&state.metrics);
            Ok(())
        }
        Err(e) => Err(ChannelReply::Shared(Reply::Unavailable(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use chatpipe_channels::inbound::MessageKind;
    use chatpipe_channels::ChannelDecl;
    use std::collections::BTreeMap;

    fn channel(webhook_url: Option<&str>) -> Channel {
        Channel {
            decl: ChannelDecl {
                name: "tw".into(),
                kind: ChannelType::Twilio,
                api_base_url: None,
                webhook_url: webhook_url.map(str::to_owned),
            },
            credentials: BTreeMap::new(),
        }
    }

    fn message(text: Option<&str>, kind: MessageKind) -> InboundMessage {
        InboundMessage {
            provider_user_id: "1".into(),
            display_name: None,
            provider_message_id: "1:1".into(),
            timestamp: None,
            kind,
            text: text.map(str::to_owned),
            media_id: None,
            media_type: None,
        }
    }

    #[test]
    fn the_called_url_is_the_declared_one_or_rebuilt_from_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("ingest:8080"));
        assert_eq!(
            called_url(&channel(None), &h, "/channels/tw/webhook?x=1"),
            "http://ingest:8080/channels/tw/webhook?x=1"
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("hooks.example.com"),
        );
        assert_eq!(
            called_url(&channel(None), &h, "/channels/tw/webhook"),
            "https://hooks.example.com/channels/tw/webhook"
        );
        assert_eq!(
            called_url(&channel(Some("https://x.example/y")), &h, "/z"),
            "https://x.example/y"
        );
    }

    #[test]
    fn stored_content_is_text_caption_or_kind_and_always_storable() {
        assert_eq!(
            stored_content(&message(Some("hi"), MessageKind::Text), 100),
            "hi"
        );
        assert_eq!(
            stored_content(&message(None, MessageKind::Image), 100),
            "[image]"
        );
        assert_eq!(
            stored_content(&message(Some(""), MessageKind::Voice), 100),
            "[voice]"
        );
        assert_eq!(
            stored_content(&message(Some("a\0b"), MessageKind::Text), 100),
            "a\u{FFFD}b"
        );
        // Cut at a character boundary.
        assert_eq!(
            stored_content(&message(Some("ééé"), MessageKind::Text), 5),
            "éé"
        );
    }

    #[test]
    fn event_time_falls_back_to_arrival_when_absent_or_out_of_range() {
        let now = Utc::now();
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(event_time(Some(t), now), t);
        assert_eq!(event_time(None, now), now);
    }
}
