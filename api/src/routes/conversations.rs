//! `GET /conversations/{id}/`, `GET /conversations/` and
//! `GET /conversations/{id}/messages`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{cursor, query, AppState};
use crate::auth::{ConversationsRead, RequireScope};
use crate::error::{ApiError, ErrorBody};
use crate::model::{ConversationDetail, ConversationPage, ConversationStatus, MessagePage};
use crate::pagination::{Cursor, CursorKind};
use crate::store;

fn conversation_id(raw: &str) -> Result<Uuid, ApiError> {
    chatpipe_core::event::parse_uuid(raw)
        .ok_or_else(|| ApiError::NotFound(format!("conversation {raw:?} not found")))
}

/// One conversation with all its messages.
#[utoipa::path(
    get,
    path = "/conversations/{id}/",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id (UUID); also served without the trailing slash")),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "The conversation; messages in timestamp order (ties: INBOUND first, then id)", body = ConversationDetail),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 404, description = "Unknown id, or not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn get_conversation(
    _: RequireScope<ConversationsRead>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ConversationDetail>, ApiError> {
    let id = conversation_id(&id)?;
    let client = state.pool.get().await?;
    store::conversation(&client, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("conversation {id} not found")))
}

/// Query parameters of `GET /conversations/`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only conversations in this state: `OPEN` or `CLOSED`.
    pub status: Option<String>,
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Conversations, newest first (by `created_at`, then id), keyset-paginated.
#[utoipa::path(
    get,
    path = "/conversations/",
    tag = "conversations",
    params(ListParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = ConversationPage),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 400, description = "Invalid status, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_conversations(
    _: RequireScope<ConversationsRead>,
    State(state): State<AppState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ConversationPage>, ApiError> {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(ConversationStatus::parse(s).ok_or_else(|| {
            ApiError::bad(
                "status",
                format!("status must be OPEN or CLOSED, not {s:?}"),
            )
        })?),
    };
    let limit = state.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Conversation)? {
        Some(Cursor::Conversation { created_at, id }) => Some((created_at, id)),
        _ => None,
    };
    let client = state.pool.get().await?;
    let (conversations, next) = store::list_conversations(&client, status, after, limit).await?;
    Ok(Json(ConversationPage {
        conversations,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Query parameters of `GET /conversations/{id}/messages`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageParams {
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One conversation's messages in timestamp order, keyset-paginated.
#[utoipa::path(
    get,
    path = "/conversations/{id}/messages",
    tag = "conversations",
    params(("id" = String, Path, description = "Conversation id (UUID)"), MessageParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = MessagePage),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
        (status = 404, description = "Unknown id, or not a UUID", body = ErrorBody),
    )
)]
pub async fn list_messages(
    _: RequireScope<ConversationsRead>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<MessageParams>, QueryRejection>,
) -> Result<Json<MessagePage>, ApiError> {
    let id = conversation_id(&id)?;
    let q = query(q)?;
    let limit = state.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Message)? {
        Some(Cursor::Message {
            timestamp,
            outbound,
            id,
        }) => Some((timestamp, outbound, id)),
        _ => None,
    };
    let client = state.pool.get().await?;
    if !store::conversation_exists(&client, id).await? {
        return Err(ApiError::NotFound(format!("conversation {id} not found")));
    }
    let (messages, next) = store::list_messages(&client, id, after, limit).await?;
    Ok(Json(MessagePage {
        conversation_id: id,
        messages,
        next_cursor: next.map(|c| c.encode()),
    }))
}
