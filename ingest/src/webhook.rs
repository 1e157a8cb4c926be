//! `POST /webhook/`: admission → body → validation → lifecycle decision →
//! produce → HTTP answer.
//!
//! | event | success | identical redelivery of a success | 400 when |
//! |---|---|---|---|
//! | NEW_CONVERSATION | 201 | 201 + `Idempotent-Replay: true` | id exists (open or closed) with another `created_at` |
//! | NEW_MESSAGE | 202 | 202 (the processor dedupes) | its conversation is known and CLOSED (`data.conversation_id`); its id is stored as an OUTBOUND message or as another conversation's message (`data.id`) |
//! | CLOSE_CONVERSATION | 200 | 200 + `Idempotent-Replay: true` | unknown, or CLOSED with another `closed_at` |
//!
//! Every request:
//! - `401` + `{"error":…,"field":<header>}` when webhook secrets are
//!   configured and the request's Standard Webhooks signature does not
//!   verify (see [`crate::signature`]): a missing or malformed `webhook-id`,
//!   `webhook-timestamp` or `webhook-signature` (`field` names it), a
//!   timestamp beyond the tolerance either way (`webhook-timestamp`), or no
//!   signature matching the body under a configured secret
//!   (`webhook-signature`). It is checked over the body's raw bytes right
//!   after they are read, before JSON parsing and before any lookup,
//!   decision, replay or produce; nothing is written. Without secrets this
//!   step does not exist (unsigned requests are accepted);
//! - `503` + `Retry-After` + JSON error at once when
//!   `--max-concurrent-requests` webhook requests are being served (load
//!   shedding; the body is not read);
//! - `408` + JSON error (`"field":"body"`) when the body does not arrive
//!   within `--body-read-timeout`; nothing is written;
//! - `400` + `{"error":…,"field":…}` for an invalid body (see
//!   [`chatpipe_core::event`]); nothing is written;
//! - a 2xx only after the broker acknowledged the record, or for a replay
//!   (whose record is in the log: its row was committed after the
//!   acknowledgement). A replay's body has the first answer's shape with
//!   `partition` and `offset` null (the first answer's position is not
//!   stored);
//! - `503` + `Retry-After` when the broker or Postgres fails; nothing
//!   committed.
//!
//! Once the body is read and valid, the decision and the produce run on a
//! task of their own: a client that disconnects does not cut a lifecycle
//! transaction or a produce short (its record stays in the in-flight floor
//! until the broker answers), and its admission permit is held until that
//! work ends. [`Reply`] and [`reply_parts`] are the pure mapping from an
//! outcome to status and body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatpipe_core::event::{parse_event, Event, EventType, Limits, ValidationError};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::events::{
    BodyReadTimedOut, DecisionTaskFailed, EventInvalid, EventRefused, InternalEvent,
    LifecycleFailed, MessageIdTaken, RateLimited, RefusalReason, ReplayAnswered, RequestShed,
    WebhookAnswered, WebhookAuthFailed, WebhookAuthenticated,
};
use crate::lifecycle::{Decision, Lifecycle, LifecycleError, Rejection};
use crate::metrics::Metrics;
use crate::producer::{EventProducer, Stored};
use crate::rate_limit::{retry_after_secs, RateLimit};
use crate::signature::{AuthFailure, Verifier};
use crate::status_cache::{message_verdict, MessageRefusal, StatusLookup};

/// The header that marks the answer to an identical redelivery.
pub const IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("idempotent-replay");

/// Everything a webhook request needs.
pub struct AppState {
    /// Body and content limits.
    pub limits: Limits,
    /// Kafka producer.
    pub producer: EventProducer,
    /// Postgres lifecycle decisions.
    pub lifecycle: Lifecycle,
    /// Batched conversation-status and message-id lookups for NEW_MESSAGE.
    pub lookup: StatusLookup,
    /// Metrics.
    pub metrics: Metrics,
    /// `Retry-After` of `503` answers, in seconds.
    pub retry_after_secs: u32,
    /// How long a body may take to arrive.
    pub body_read_timeout: Duration,
    /// Admission: one permit per webhook request being served.
    pub admission: Arc<Semaphore>,
    /// The number of permits of `admission`.
    pub max_concurrent_requests: usize,
    /// Standard Webhooks signature verification; `None`: webhooks are not
    /// authenticated.
    pub verifier: Option<Verifier>,
    /// The per-client rate limit; `None`: off.
    pub rate_limit: Option<RateLimit>,
    /// The messenger channels whose webhooks are received.
    pub channels: crate::channel_routes::ChannelRoutes,
    /// Their Postgres decisions.
    pub channel_store: crate::channel_store::ChannelStore,
}

/// The peer address of a request's connection (a request extension the
/// server adds per connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub std::net::SocketAddr);

/// The outcome of one webhook request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// NEW_CONVERSATION accepted → `201`.
    Created {
        /// The new conversation.
        conversation_id: Uuid,
        /// Where the record was stored.
        stored: Stored,
    },
    /// NEW_MESSAGE accepted → `202`.
    Accepted {
        /// The message.
        message_id: Uuid,
        /// Its conversation.
        conversation_id: Uuid,
        /// Where the record was stored.
        stored: Stored,
    },
    /// CLOSE_CONVERSATION accepted → `200`.
    Closed {
        /// The closed conversation.
        conversation_id: Uuid,
        /// Where the record was stored.
        stored: Stored,
    },
    /// An identical redelivery of a NEW_CONVERSATION (→ `201`) or
    /// CLOSE_CONVERSATION (→ `200`) that succeeded, with
    /// `Idempotent-Replay: true`.
    Replayed {
        /// NEW_CONVERSATION or CLOSE_CONVERSATION.
        event_type: EventType,
        /// The conversation.
        conversation_id: Uuid,
    },
    /// Invalid body or refused by the lifecycle rules → `400`.
    Invalid(ValidationError),
    /// The signature did not verify → `401`.
    Unauthorized {
        /// Why.
        failure: AuthFailure,
        /// The timestamp tolerance (named in the message).
        tolerance: Duration,
    },
    /// The body did not arrive in time → `408`.
    BodyTimeout(Duration),
    /// The client is over its rate limit → `429` + `Retry-After`.
    RateLimited {
        /// Seconds until its next request is allowed.
        retry_after_secs: u64,
        /// The limit, requests per second.
        per_second: u32,
    },
    /// The concurrency limit was reached → `503` + `Retry-After`.
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// Broker or Postgres unavailable → `503` + `Retry-After`.
    Unavailable(String),
}

impl Reply {
    /// Whether the body was not read (shed or timed out).
    pub fn body_unread(&self) -> bool {
        matches!(
            self,
            Reply::BodyTimeout(_) | Reply::Overloaded { .. } | Reply::RateLimited { .. }
        )
    }
}

/// The `400` body for a lifecycle refusal of `event`.
pub fn rejection_error(event: &Event, rejection: Rejection) -> ValidationError {
    let id = event.conversation_id();
    match rejection {
        Rejection::AlreadyExists(status) => ValidationError::new(
            "data.id",
            format!("conversation {id} already exists ({})", status.as_str()),
        ),
        Rejection::Unknown => {
            ValidationError::new("data.id", format!("conversation {id} does not exist"))
        }
        Rejection::AlreadyClosed => {
            ValidationError::new("data.id", format!("conversation {id} is already CLOSED"))
        }
    }
}

/// The `400` body for a NEW_MESSAGE to a CLOSED conversation.
pub fn closed_conversation_error(conversation_id: Uuid) -> ValidationError {
    ValidationError::new(
        "data.conversation_id",
        format!("conversation {conversation_id} is CLOSED"),
    )
}

fn position(stored: Option<&Stored>) -> (serde_json::Value, serde_json::Value) {
    match stored {
        Some(s) => (json!(s.partition), json!(s.offset)),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    }
}

/// HTTP status and JSON body of a reply.
pub fn reply_parts(reply: &Reply) -> (StatusCode, serde_json::Value) {
    let lifecycle = |status: StatusCode, word: &str, id: &Uuid, stored: Option<&Stored>| {
        let (partition, offset) = position(stored);
        (
            status,
            json!({"status": word, "conversation_id": id,
                   "partition": partition, "offset": offset}),
        )
    };
    match reply {
        Reply::Created {
            conversation_id,
            stored,
        } => lifecycle(
            StatusCode::CREATED,
            "created",
            conversation_id,
            Some(stored),
        ),
        Reply::Closed {
            conversation_id,
            stored,
        } => lifecycle(StatusCode::OK, "closed", conversation_id, Some(stored)),
        Reply::Replayed {
            event_type: EventType::CloseConversation,
            conversation_id,
        } => lifecycle(StatusCode::OK, "closed", conversation_id, None),
        Reply::Replayed {
            conversation_id, ..
        } => lifecycle(StatusCode::CREATED, "created", conversation_id, None),
        Reply::Accepted {
            message_id,
            conversation_id,
            stored,
        } => (
            StatusCode::ACCEPTED,
            json!({"status": "accepted", "id": message_id, "conversation_id": conversation_id,
                   "partition": stored.partition, "offset": stored.offset}),
        ),
        Reply::Invalid(e) => (
            StatusCode::BAD_REQUEST,
            json!({"error": e.error, "field": e.field}),
        ),
        Reply::Unauthorized { failure, tolerance } => (
            StatusCode::UNAUTHORIZED,
            json!({"error": failure.message(*tolerance), "field": failure.field()}),
        ),
        Reply::BodyTimeout(after) => (
            StatusCode::REQUEST_TIMEOUT,
            json!({"error": format!("the request body did not arrive within {after:?}"),
                   "field": "body"}),
        ),
        Reply::RateLimited {
            retry_after_secs,
            per_second,
        } => (
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": format!(
                "too many requests: this client's limit is {per_second} per second; retry after {retry_after_secs} s"
            ), "retry_after": retry_after_secs}),
        ),
        Reply::Overloaded { limit } => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!(
                "temporarily unavailable: ingest is serving its limit of {limit} concurrent requests"
            )}),
        ),
        Reply::Unavailable(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("temporarily unavailable: {reason}")}),
        ),
    }
}

/// Builds the HTTP response of `reply`.
pub fn into_response(reply: &Reply, retry_after_secs: u32) -> Response {
    let (status, body) = reply_parts(reply);
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    match reply {
        Reply::Replayed { .. } => {
            headers.insert(IDEMPOTENT_REPLAY, HeaderValue::from_static("true"));
        }
        Reply::RateLimited {
            retry_after_secs, ..
        } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        // The rest of the body is still on the wire.
        Reply::BodyTimeout(_) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}

/// Keeps the in-flight gauge right even when the client goes away and the
/// request future is dropped.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(m: &'a Metrics) -> Self {
        m.in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Admission, before the body is read: the client's rate limit, then a
/// concurrency permit. A refusal is emitted (logged and counted) and is the
/// answer.
pub(crate) fn admit(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<OwnedSemaphorePermit, Reply> {
    if let Some(rl) = &state.rate_limit {
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        if let Err(limited) = rl.check(peer, &parts.headers) {
            RateLimited {
                client: limited.client,
                wait: limited.wait,
            }
            .emit(&state.metrics);
            return Err(Reply::RateLimited {
                retry_after_secs: retry_after_secs(limited.wait),
                per_second: rl.per_second(),
            });
        }
    }
    let limit = state.max_concurrent_requests;
    Arc::clone(&state.admission)
        .try_acquire_owned()
        .map_err(|_| {
            RequestShed { limit }.emit(&state.metrics);
            Reply::Overloaded { limit }
        })
}

/// The `POST /webhook/` handler.
pub async fn webhook(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state.metrics);
    let (parts, body) = request.into_parts();
    let (event_type, reply) = match admit(&state, &parts) {
        Ok(permit) => handle(&state, &parts.headers, body, permit).await,
        Err(reply) => (None, reply),
    };
    let response = into_response(&reply, state.retry_after_secs);
    let type_label = match event_type {
        Some(t) => t.as_str(),
        None if reply.body_unread() => "UNREAD",
        None if matches!(reply, Reply::Unauthorized { .. }) => "UNAUTHENTICATED",
        None => "INVALID",
    };
    WebhookAnswered {
        event_type: type_label,
        status: response.status(),
        seconds: started.elapsed().as_secs_f64(),
        unavailable: match &reply {
            Reply::Unavailable(reason) => Some(reason.as_str()),
            _ => None,
        },
    }
    .emit(&state.metrics);
    response
}

/// The `503` of a lifecycle step that failed; a Postgres failure is
/// reported here (a produce failure was reported by the producer).
fn unavailable<E: std::fmt::Display>(
    state: &AppState,
    event: &Event,
    e: LifecycleError<E>,
) -> Reply {
    if let Some(timed_out) = e.timed_out() {
        LifecycleFailed {
            event_type: event.event_type().as_str(),
            timed_out,
            error: &e,
        }
        .emit(&state.metrics);
    }
    Reply::Unavailable(e.to_string())
}

/// A `400` at validation.
fn invalid(state: &AppState, e: ValidationError) -> Reply {
    EventInvalid {
        field: &e.field,
        error: &e.error,
    }
    .emit(&state.metrics);
    Reply::Invalid(e)
}

/// A `400` by the lifecycle rules.
fn refused(state: &AppState, event: &Event, reason: RefusalReason, e: ValidationError) -> Reply {
    EventRefused {
        event_type: event.event_type().as_str(),
        conversation_id: event.conversation_id(),
        reason,
    }
    .emit(&state.metrics);
    Reply::Invalid(e)
}

/// The [`RefusalReason`] of a lifecycle [`Rejection`].
pub fn refusal_reason(rejection: Rejection) -> RefusalReason {
    match rejection {
        Rejection::AlreadyExists(_) => RefusalReason::ConversationExists,
        Rejection::Unknown => RefusalReason::ConversationUnknown,
        Rejection::AlreadyClosed => RefusalReason::ConversationClosed,
    }
}

/// Reads the whole body within the body timeout and the size limit.
async fn read_body(state: &AppState, body: Body) -> Result<bytes::Bytes, Reply> {
    read_body_limited(state, body, state.limits.max_body_bytes).await
}

/// Reads the whole body within the body timeout and `limit` bytes.
pub(crate) async fn read_body_limited(
    state: &AppState,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Reply> {
    let timeout = state.body_read_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let message = if too_large {
                format!("body is larger than {limit} bytes")
            } else {
                format!("body could not be read: {e}")
            };
            Err(invalid(state, ValidationError::new("body", message)))
        }
        Err(_) => {
            BodyReadTimedOut { timeout }.emit(&state.metrics);
            Err(Reply::BodyTimeout(timeout))
        }
    }
}

/// Verifies the request's signature over the raw body, when secrets are
/// configured.
fn authenticate(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), Reply> {
    let Some(verifier) = &state.verifier else {
        return Ok(());
    };
    match verifier.verify(headers, body) {
        Ok(verified) => {
            WebhookAuthenticated {
                secret: verified.secret,
            }
            .emit(&state.metrics);
            Ok(())
        }
        Err(failure) => {
            WebhookAuthFailed { failure }.emit(&state.metrics);
            Err(Reply::Unauthorized {
                failure,
                tolerance: verifier.tolerance(),
            })
        }
    }
}

async fn handle(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    permit: OwnedSemaphorePermit,
) -> (Option<EventType>, Reply) {
    let bytes = match read_body(state, body).await {
        Ok(b) => b,
        Err(reply) => return (None, reply),
    };
    // Authenticity first: nothing below (parsing, lookups, decisions,
    // replays, produce) runs for a request that is not signed.
    if let Err(reply) = authenticate(state, headers, &bytes) {
        return (None, reply);
    }
    let event = match parse_event(&bytes, &state.limits) {
        Ok(e) => e,
        Err(e) => return (None, invalid(state, e)),
    };
    let event_type = event.event_type();
    // Decide and produce on a task of their own (see the module docs); the
    // admission permit goes with the work.
    let task_state = Arc::clone(state);
    let work = tokio::spawn(async move {
        let _permit = permit;
        decide(&task_state, &event).await
    });
    let reply = match work.await {
        Ok(reply) => reply,
        Err(e) => {
            DecisionTaskFailed { error: &e }.emit(&state.metrics);
            Reply::Unavailable(format!("the request's task failed: {e}"))
        }
    };
    (Some(event_type), reply)
}

/// Decides a valid event: lookups or the lifecycle transaction, and the
/// produce (which stamps the arrival time right before handing the record
/// to the producer).
async fn decide(state: &AppState, event: &Event) -> Reply {
    let produce = || state.producer.produce(event);
    match event {
        Event::NewMessage {
            id,
            conversation_id,
            ..
        } => {
            if state.lookup.known_closed(conversation_id) {
                return refused(
                    state,
                    event,
                    RefusalReason::ConversationClosed,
                    closed_conversation_error(*conversation_id),
                );
            }
            let check = match state.lookup.check(*conversation_id, *id).await {
                Ok(check) => check,
                Err(e) => return Reply::Unavailable(e.to_string()),
            };
            if let Err(refusal) = message_verdict(*conversation_id, &check) {
                let error = refusal_error(refusal, *id, *conversation_id);
                return match refusal.conflict_reason() {
                    Some(reason) => {
                        MessageIdTaken {
                            message_id: *id,
                            conversation_id: *conversation_id,
                            reason,
                        }
                        .emit(&state.metrics);
                        Reply::Invalid(error)
                    }
                    None => refused(state, event, RefusalReason::ConversationClosed, error),
                };
            }
            match produce().await {
                Ok(stored) => Reply::Accepted {
                    message_id: *id,
                    conversation_id: *conversation_id,
                    stored,
                },
                Err(e) => Reply::Unavailable(e.to_string()),
            }
        }
        Event::NewConversation { id, timestamp } => {
            match state.lifecycle.create(*id, *timestamp, produce).await {
                Ok(Decision::Done(stored)) => Reply::Created {
                    conversation_id: *id,
                    stored,
                },
                Ok(Decision::Replay) => replayed(state, event),
                Ok(Decision::Rejected(r)) => {
                    refused(state, event, refusal_reason(r), rejection_error(event, r))
                }
                Err(e) => unavailable(state, event, e),
            }
        }
        Event::CloseConversation { id, timestamp } => {
            match state.lifecycle.close(*id, *timestamp, produce).await {
                Ok(Decision::Done(stored)) => {
                    state.lookup.remember_closed(*id);
                    Reply::Closed {
                        conversation_id: *id,
                        stored,
                    }
                }
                Ok(Decision::Replay) => {
                    state.lookup.remember_closed(*id);
                    replayed(state, event)
                }
                Ok(Decision::Rejected(r)) => {
                    if r == Rejection::AlreadyClosed {
                        state.lookup.remember_closed(*id);
                    }
                    refused(state, event, refusal_reason(r), rejection_error(event, r))
                }
                Err(e) => unavailable(state, event, e),
            }
        }
    }
}

fn refusal_error(
    refusal: MessageRefusal,
    message_id: Uuid,
    conversation_id: Uuid,
) -> ValidationError {
    match refusal {
        MessageRefusal::ConversationClosed => closed_conversation_error(conversation_id),
        other => other.error(message_id, conversation_id),
    }
}

fn replayed(state: &AppState, event: &Event) -> Reply {
    let event_type = event.event_type();
    ReplayAnswered {
        event_type: event_type.as_str(),
        conversation_id: event.conversation_id(),
    }
    .emit(&state.metrics);
    Reply::Replayed {
        event_type,
        conversation_id: event.conversation_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_core::model::ConversationStatus;
    use chrono::Utc;

    const ID: &str = "6a41b347-8d80-4ce9-84ba-7af66f369f6a";

    fn stored() -> Stored {
        Stored {
            partition: 3,
            offset: 42,
            arrival_ms: 1,
        }
    }

    #[test]
    fn success_codes_follow_the_spec() {
        let id = Uuid::parse_str(ID).unwrap();
        let created = Reply::Created {
            conversation_id: id,
            stored: stored(),
        };
        let accepted = Reply::Accepted {
            message_id: id,
            conversation_id: id,
            stored: stored(),
        };
        let closed = Reply::Closed {
            conversation_id: id,
            stored: stored(),
        };
        assert_eq!(reply_parts(&created).0, StatusCode::CREATED);
        assert_eq!(reply_parts(&accepted).0, StatusCode::ACCEPTED);
        assert_eq!(reply_parts(&closed).0, StatusCode::OK);
        assert_eq!(reply_parts(&created).1["conversation_id"], ID);
        assert_eq!(reply_parts(&accepted).1["partition"], 3);
    }

    #[test]
    fn refusals_are_400_naming_the_field() {
        let id = Uuid::parse_str(ID).unwrap();
        let event = Event::CloseConversation {
            id,
            timestamp: Utc::now(),
        };
        for r in [
            Rejection::AlreadyExists(ConversationStatus::Closed),
            Rejection::Unknown,
            Rejection::AlreadyClosed,
        ] {
            let (code, body) = reply_parts(&Reply::Invalid(rejection_error(&event, r)));
            assert_eq!(code, StatusCode::BAD_REQUEST);
            assert_eq!(body["field"], "data.id");
            assert!(body["error"].as_str().unwrap().contains(ID));
        }
        let (code, body) = reply_parts(&Reply::Invalid(closed_conversation_error(id)));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(body["field"], "data.conversation_id");
    }

    #[test]
    fn unauthorized_is_401_naming_the_header() {
        use crate::signature::{AuthFailure, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
        let tolerance = Duration::from_secs(300);
        for (failure, field) in [
            (AuthFailure::MissingHeader(WEBHOOK_ID), WEBHOOK_ID),
            (
                AuthFailure::MalformedHeader(WEBHOOK_SIGNATURE),
                WEBHOOK_SIGNATURE,
            ),
            (AuthFailure::BadTimestamp, WEBHOOK_TIMESTAMP),
            (AuthFailure::Stale, WEBHOOK_TIMESTAMP),
            (AuthFailure::Future, WEBHOOK_TIMESTAMP),
            (AuthFailure::BadSignature, WEBHOOK_SIGNATURE),
        ] {
            let reply = Reply::Unauthorized { failure, tolerance };
            let (code, body) = reply_parts(&reply);
            assert_eq!(code, StatusCode::UNAUTHORIZED);
            assert_eq!(body["field"], field);
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
            assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
            let r = into_response(&reply, 1);
            assert!(r.headers().get(header::RETRY_AFTER).is_none());
            assert!(!reply.body_unread());
        }
    }

    #[test]
    fn unavailable_is_503_with_retry_after() {
        let r = into_response(&Reply::Unavailable("broker down".into()), 2);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert!(r.headers().get(IDEMPOTENT_REPLAY).is_none());
    }

    #[test]
    fn replays_answer_like_the_first_success_with_the_header() {
        let id = Uuid::parse_str(ID).unwrap();
        for (event_type, first) in [
            (
                EventType::NewConversation,
                Reply::Created {
                    conversation_id: id,
                    stored: stored(),
                },
            ),
            (
                EventType::CloseConversation,
                Reply::Closed {
                    conversation_id: id,
                    stored: stored(),
                },
            ),
        ] {
            let replay = Reply::Replayed {
                event_type,
                conversation_id: id,
            };
            let (first_code, first_body) = reply_parts(&first);
            let (code, body) = reply_parts(&replay);
            assert_eq!(code, first_code);
            let keys = |v: &serde_json::Value| {
                v.as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<String>>()
            };
            assert_eq!(keys(&body), keys(&first_body), "same shape");
            assert_eq!(body["status"], first_body["status"]);
            assert_eq!(body["conversation_id"], ID);
            assert!(body["offset"].is_null());
            let r = into_response(&replay, 1);
            assert_eq!(r.headers()[IDEMPOTENT_REPLAY], "true");
            assert!(into_response(&first, 1)
                .headers()
                .get(IDEMPOTENT_REPLAY)
                .is_none());
        }
    }

    #[test]
    fn body_timeout_is_408_and_overload_is_503() {
        let r = into_response(&Reply::BodyTimeout(Duration::from_secs(10)), 1);
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()[header::CONNECTION], "close");
        let (_, body) = reply_parts(&Reply::BodyTimeout(Duration::from_secs(10)));
        assert_eq!(body["field"], "body");
        let r = into_response(&Reply::Overloaded { limit: 4 }, 3);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let (_, body) = reply_parts(&Reply::Overloaded { limit: 4 });
        assert!(body["error"].as_str().unwrap().contains('4'));
        assert!(Reply::Overloaded { limit: 4 }.body_unread());
        assert!(!Reply::Unavailable(String::new()).body_unread());
    }
}
