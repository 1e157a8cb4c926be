//! `GET /rejected-events`: what became of events the processor could not
//! apply, filterable by conversation and reason.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{cursor, query, AppState};
use crate::auth::{ConversationsRead, RequireScope};
use crate::error::{ApiError, ErrorBody};
use crate::model::RejectedPage;
use crate::pagination::{Cursor, CursorKind};
use crate::store;

/// Query parameters of `GET /rejected-events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectedParams {
    /// Only events of this conversation (UUID).
    pub conversation_id: Option<String>,
    /// Only events rejected for this reason, e.g. `conversation_closed`,
    /// `conversation_not_created_in_time`.
    pub reason: Option<String>,
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Rejected events, newest first, keyset-paginated.
#[utoipa::path(
    get,
    path = "/rejected-events",
    tag = "rejected events",
    params(RejectedParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = RejectedPage),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 400, description = "Invalid conversation_id, reason, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_rejected(
    _: RequireScope<ConversationsRead>,
    State(state): State<AppState>,
    q: Result<Query<RejectedParams>, QueryRejection>,
) -> Result<Json<RejectedPage>, ApiError> {
    let q = query(q)?;
    let conversation_id = match q.conversation_id.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            chatpipe_core::event::parse_uuid(s)
                .ok_or_else(|| ApiError::bad("conversation_id", format!("{s:?} is not a UUID")))?,
        ),
    };
    let reason = match q.reason.as_deref() {
        None | Some("") => None,
        Some(r) if r.len() > 100 => {
            return Err(ApiError::bad("reason", "reason is longer than 100 bytes"))
        }
        Some(r) => Some(r),
    };
    let limit = state.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Rejected)? {
        Some(Cursor::Rejected { id }) => Some(id),
        _ => None,
    };
    let client = state.pool.get().await?;
    let (rejected_events, next) =
        store::list_rejected(&client, conversation_id, reason, after, limit).await?;
    Ok(Json(RejectedPage {
        rejected_events,
        next_cursor: next.map(|c| c.encode()),
    }))
}
