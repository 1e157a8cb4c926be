//! `POST /webhook/`: body → validation → lifecycle decision → produce →
//! HTTP answer.
//!
//! | event | success | 400 when |
//! |---|---|---|
//! | NEW_CONVERSATION | 201 | id exists (open or closed) |
//! | NEW_MESSAGE | 202 | its conversation is known and CLOSED |
//! | CLOSE_CONVERSATION | 200 | unknown, or already CLOSED |
//!
//! Invalid bodies get `400` with `{"error":…,"field":…}` and nothing is
//! written. A 2xx is sent only after the broker acknowledged the record;
//! a broker or Postgres failure is `503` with `Retry-After` and nothing
//! committed. [`Reply`] and [`reply_parts`] are the pure mapping from an
//! outcome to status and body.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatpipe_core::event::{parse_event, Event, EventType, Limits, ValidationError};
use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use crate::lifecycle::{Decision, Lifecycle, LifecycleError, Rejection};
use crate::metrics::Metrics;
use crate::producer::{EventProducer, Stored};
use crate::status_cache::{ConversationStatus, StatusLookup};

/// Everything a webhook request needs.
pub struct AppState {
    /// Body and content limits.
    pub limits: Limits,
    /// Kafka producer.
    pub producer: EventProducer,
    /// Postgres lifecycle decisions.
    pub lifecycle: Lifecycle,
    /// Batched conversation-status lookups for NEW_MESSAGE.
    pub lookup: StatusLookup,
    /// Metrics.
    pub metrics: Metrics,
    /// `Retry-After` of `503` answers, in seconds.
    pub retry_after_secs: u32,
}

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
    /// Invalid body or refused by the lifecycle rules → `400`.
    Invalid(ValidationError),
    /// Broker or Postgres unavailable → `503` + `Retry-After`.
    Unavailable(String),
}

/// The `400` body for a lifecycle refusal of `event`.
pub fn rejection_error(event: &Event, rejection: Rejection) -> ValidationError {
    let id = event.conversation_id();
    match rejection {
        Rejection::AlreadyExists(status) => ValidationError::new(
            "data.id",
            format!(
                "conversation {id} already exists ({})",
                match status {
                    ConversationStatus::Open => "OPEN",
                    ConversationStatus::Closed => "CLOSED",
                }
            ),
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

/// HTTP status and JSON body of a reply.
pub fn reply_parts(reply: &Reply) -> (StatusCode, serde_json::Value) {
    match reply {
        Reply::Created {
            conversation_id,
            stored,
        } => (
            StatusCode::CREATED,
            json!({"status": "created", "conversation_id": conversation_id,
                   "partition": stored.partition, "offset": stored.offset}),
        ),
        Reply::Accepted {
            message_id,
            conversation_id,
            stored,
        } => (
            StatusCode::ACCEPTED,
            json!({"status": "accepted", "id": message_id, "conversation_id": conversation_id,
                   "partition": stored.partition, "offset": stored.offset}),
        ),
        Reply::Closed {
            conversation_id,
            stored,
        } => (
            StatusCode::OK,
            json!({"status": "closed", "conversation_id": conversation_id,
                   "partition": stored.partition, "offset": stored.offset}),
        ),
        Reply::Invalid(e) => (
            StatusCode::BAD_REQUEST,
            json!({"error": e.error, "field": e.field}),
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
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
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

/// The `POST /webhook/` handler.
pub async fn webhook(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let arrival_ms = Utc::now().timestamp_millis();
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state.metrics);
    let (event_type, reply) = handle(&state, body, arrival_ms).await;
    let response = into_response(&reply, state.retry_after_secs);
    let type_label = event_type.map_or("INVALID", EventType::as_str);
    state
        .metrics
        .requests
        .with_label_values(&[type_label, response.status().as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[type_label])
        .observe(started.elapsed().as_secs_f64());
    if let Reply::Unavailable(reason) = &reply {
        tracing::warn!(event_type = type_label, %reason, "answered 503");
    }
    response
}

fn unavailable<E: std::fmt::Display>(e: LifecycleError<E>) -> Reply {
    Reply::Unavailable(e.to_string())
}

async fn handle(state: &AppState, body: Body, arrival_ms: i64) -> (Option<EventType>, Reply) {
    let limit = state.limits.max_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let message = if too_large {
                format!("body is larger than {limit} bytes")
            } else {
                format!("body could not be read: {e}")
            };
            return (None, Reply::Invalid(ValidationError::new("body", message)));
        }
    };
    let event = match parse_event(&bytes, &state.limits) {
        Ok(e) => e,
        Err(e) => return (None, Reply::Invalid(e)),
    };
    let event_type = Some(event.event_type());
    let produce = || state.producer.produce(&event, arrival_ms);
    let reply = match &event {
        Event::NewMessage {
            id,
            conversation_id,
            ..
        } => {
            if state.lookup.known_closed(conversation_id) {
                Reply::Invalid(closed_conversation_error(*conversation_id))
            } else {
                match state.lookup.status(*conversation_id).await {
                    Err(e) => Reply::Unavailable(e.to_string()),
                    Ok(Some(ConversationStatus::Closed)) => {
                        Reply::Invalid(closed_conversation_error(*conversation_id))
                    }
                    Ok(_) => match produce().await {
                        Ok(stored) => Reply::Accepted {
                            message_id: *id,
                            conversation_id: *conversation_id,
                            stored,
                        },
                        Err(e) => Reply::Unavailable(e.to_string()),
                    },
                }
            }
        }
        Event::NewConversation { id, timestamp } => {
            match state.lifecycle.create(*id, *timestamp, produce).await {
                Ok(Decision::Done(stored)) => Reply::Created {
                    conversation_id: *id,
                    stored,
                },
                Ok(Decision::Rejected(r)) => Reply::Invalid(rejection_error(&event, r)),
                Err(e) => unavailable(e),
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
                Ok(Decision::Rejected(r)) => {
                    if r == Rejection::AlreadyClosed {
                        state.lookup.remember_closed(*id);
                    }
                    Reply::Invalid(rejection_error(&event, r))
                }
                Err(e) => unavailable(e),
            }
        }
    };
    (event_type, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6a41b347-8d80-4ce9-84ba-7af66f369f6a";

    fn stored() -> Stored {
        Stored {
            partition: 3,
            offset: 42,
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
    fn unavailable_is_503_with_retry_after() {
        let r = into_response(&Reply::Unavailable("broker down".into()), 2);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
