//! `GET /contacts` and `GET /contacts/{id}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{channel_param, cursor, query, ChannelState};
use crate::auth::{ConversationsRead, RequireScope};
use crate::channel_store;
use crate::error::{ApiError, ErrorBody};
use crate::model::{ContactDetail, ContactPage};
use crate::pagination::{Cursor, CursorKind};

/// Query parameters of `GET /contacts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactParams {
    /// Only this channel's contacts.
    pub channel: Option<String>,
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Contacts, newest first (by `created_at`, then id), keyset-paginated.
#[utoipa::path(
    get,
    path = "/contacts",
    tag = "contacts",
    params(ContactParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = ContactPage),
        (status = 400, description = "Invalid channel, limit or cursor", body = ErrorBody),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list_contacts(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
    q: Result<Query<ContactParams>, QueryRejection>,
) -> Result<Json<ContactPage>, ApiError> {
    let q = query(q)?;
    let channel = channel_param(q.channel.as_deref())?;
    let limit = state.app.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Contact)? {
        Some(Cursor::Contact { created_at, id }) => Some((created_at, id)),
        _ => None,
    };
    let client = state.app.pool.get().await?;
    let (contacts, next) =
        channel_store::list_contacts(&client, channel.as_deref(), after, limit).await?;
    Ok(Json(ContactPage {
        contacts,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// A contact and its conversations, newest first (at most 50).
#[utoipa::path(
    get,
    path = "/contacts/{id}",
    tag = "contacts",
    params(("id" = String, Path, description = "Contact id (UUID)")),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "The contact", body = ContactDetail),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 404, description = "Unknown id, or not a UUID", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn get_contact(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
    Path(id): Path<String>,
) -> Result<Json<ContactDetail>, ApiError> {
    let not_found = || ApiError::NotFound(format!("contact {id:?} not found"));
    let contact_id = chatpipe_core::event::parse_uuid(&id).ok_or_else(not_found)?;
    let mut client = state.app.pool.get().await?;
    channel_store::contact(&mut client, contact_id)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}
