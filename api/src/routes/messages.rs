//! `POST /conversations/{id}/messages` (an agent answers) and
//! `GET /messages` (every message, newest first, filtered).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::body::{json_object, no_other_fields, required_string};
use super::{cursor, query, uuid_param, ChannelState, MessagesSend};
use crate::auth::{ConversationsRead, RequireScope};
use crate::channel_store::{self, FeedFilter, NewAgentMessage, SendOutcome};
use crate::compose::{self, KEY_FIELD, REPLAY_HEADER};
use crate::error::{ApiError, ErrorBody};
use crate::events::{AgentMessageAccepted, IdempotencyKeyReused, InternalEvent};
use crate::model::{Direction, FeedPage, SendMessage, SentMessage};
use crate::pagination::{Cursor, CursorKind};

/// An agent answers a conversation.
///
/// In one transaction: the OUTBOUND message (timestamp now), who wrote it,
/// and for a conversation a contact opened through a channel its delivery
/// (queued; `chatpipe-delivery` sends it). With `Idempotency-Key`, the
/// same key with the same conversation and content answers the first
/// answer again (`Idempotent-Replay: true`); with another request, `422`.
#[utoipa::path(
    post,
    path = "/conversations/{id}/messages",
    tag = "messages",
    params(
        ("id" = String, Path, description = "Conversation id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; repeats of a request with the same key store one message"),
    ),
    request_body = SendMessage,
    security(("bearerAuth" = ["messages:send"])),
    responses(
        (status = 202, description = "Stored (`stored`), and queued for delivery (`queued`) when the conversation has a channel; on a replay, the first answer with `Idempotent-Replay: true`", body = SentMessage,
            headers(("Idempotent-Replay" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "Invalid body, content or Idempotency-Key (`field` names it)", body = ErrorBody),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope messages:send", body = ErrorBody),
        (status = 404, description = "Unknown conversation, or not a UUID", body = ErrorBody),
        (status = 409, description = "The conversation is CLOSED", body = ErrorBody),
        (status = 422, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn send_message(
    RequireScope(caller, ..): RequireScope<MessagesSend>,
    State(state): State<ChannelState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let conversation_id = chatpipe_core::event::parse_uuid(&id)
        .ok_or_else(|| ApiError::NotFound(format!("conversation {id:?} not found")))?;
    let key = compose::idempotency_key(&headers)?;
    let body = json_object(body)?;
    no_other_fields(&body, &["content"])?;
    let content = required_string(&body, "content")?;
    compose::check_content(&content)?;
    let (agent_id, owner) = compose::key_owner(&caller);
    let request = NewAgentMessage {
        conversation_id,
        content: &content,
        agent_id,
        key: key.as_deref().map(|k| (owner, k)),
        digest: compose::request_digest(conversation_id, &content),
    };
    let mut client = state.app.pool.get().await?;
    let (answer, replayed) = match channel_store::send_message(&mut client, &request).await? {
        SendOutcome::Created(m) => (m, false),
        SendOutcome::Replayed(m) => (m, true),
        SendOutcome::KeyReused => {
            IdempotencyKeyReused { conversation_id }.emit(&state.metrics);
            return Err(ApiError::Unprocessable {
                message: "this Idempotency-Key was used for another request (another \
                          conversation or content)"
                    .to_owned(),
                field: KEY_FIELD,
            });
        }
        SendOutcome::NotFound => {
            return Err(ApiError::NotFound(format!(
                "conversation {conversation_id} not found"
            )))
        }
        SendOutcome::Closed => {
            return Err(ApiError::Conflict {
                message: format!("conversation {conversation_id} is CLOSED"),
                field: "conversation_id",
            })
        }
    };
    AgentMessageAccepted {
        message_id: answer.id,
        conversation_id: answer.conversation_id,
        agent_id,
        status: answer.status,
        replayed,
    }
    .emit(&state.metrics);
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAY_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Query parameters of `GET /messages`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Only this conversation's messages.
    pub conversation_id: Option<String>,
    /// Only the messages of this contact's conversations.
    pub contact_id: Option<String>,
    /// Only this agent's messages.
    pub agent_id: Option<String>,
    /// `INBOUND` or `OUTBOUND`.
    pub direction: Option<String>,
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Messages of every conversation, newest first (by timestamp; ties:
/// OUTBOUND first, then id descending), keyset-paginated.
#[utoipa::path(
    get,
    path = "/messages",
    tag = "messages",
    params(FeedParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = FeedPage),
        (status = 400, description = "Invalid filter, limit or cursor (`field` names it)", body = ErrorBody),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list_feed(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
    q: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    let q = query(q)?;
    let direction = match q.direction.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Direction::parse(s).ok_or_else(|| {
            ApiError::bad(
                "direction",
                format!("direction must be INBOUND or OUTBOUND, not {s:?}"),
            )
        })?),
    };
    let filter = FeedFilter {
        conversation_id: uuid_param(q.conversation_id.as_deref(), "conversation_id")?,
        contact_id: uuid_param(q.contact_id.as_deref(), "contact_id")?,
        agent_id: uuid_param(q.agent_id.as_deref(), "agent_id")?,
        direction,
    };
    let limit = state.app.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Feed)? {
        Some(Cursor::Feed {
            timestamp,
            outbound,
            id,
        }) => Some((timestamp, outbound, id)),
        _ => None,
    };
    let client = state.app.pool.get().await?;
    let (messages, next) = channel_store::list_feed(&client, &filter, after, limit).await?;
    Ok(Json(FeedPage {
        messages,
        next_cursor: next.map(|c| c.encode()),
    }))
}
