//! `GET /deliveries` (`status=failed`: the dead letters),
//! `GET /deliveries/{id}` with its timeline, and
//! `POST /deliveries/{id}/retry`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{channel_param, cursor, query, uuid_param, ChannelState, MessagesSend};
use crate::auth::{Caller, ConversationsRead, RequireScope};
use crate::channel_store::{self, DeliveryFilter, RetryOutcome};
use crate::error::{ApiError, ErrorBody};
use crate::events::{DeliveryRetried, InternalEvent};
use crate::model::{DeliveryDetail, DeliveryPage, DeliveryStatus};
use crate::pagination::{Cursor, CursorKind};

/// Query parameters of `GET /deliveries`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// `queued`, `sent`, `delivered`, `read` or `failed` (the dead letters).
    pub status: Option<String>,
    /// Only this channel's deliveries.
    pub channel: Option<String>,
    /// Only this conversation's deliveries.
    pub conversation_id: Option<String>,
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A delivery id of a path: a positive integer, else `404`.
fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("delivery {raw:?} not found")))
}

/// Deliveries, newest first (by id), keyset-paginated.
#[utoipa::path(
    get,
    path = "/deliveries",
    tag = "deliveries",
    params(DeliveryParams),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "One page", body = DeliveryPage),
        (status = 400, description = "Invalid status, channel, conversation_id, limit or cursor", body = ErrorBody),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list_deliveries(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
    q: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::bad(
                "status",
                format!("status must be queued, sent, delivered, read or failed, not {s:?}"),
            )
        })?),
    };
    let filter = DeliveryFilter {
        status,
        channel: channel_param(q.channel.as_deref())?,
        conversation_id: uuid_param(q.conversation_id.as_deref(), "conversation_id")?,
    };
    let limit = state.app.limit(q.limit.as_deref())?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Delivery)? {
        Some(Cursor::Delivery { id }) => Some(id),
        _ => None,
    };
    let client = state.app.pool.get().await?;
    let (deliveries, next) = channel_store::list_deliveries(&client, &filter, after, limit).await?;
    Ok(Json(DeliveryPage {
        deliveries,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// A delivery and its timeline (oldest event first).
#[utoipa::path(
    get,
    path = "/deliveries/{id}",
    tag = "deliveries",
    params(("id" = i64, Path, description = "Delivery id")),
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn get_delivery(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = delivery_id(&id)?;
    let mut client = state.app.pool.get().await?;
    channel_store::delivery(&mut client, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("delivery {id} not found")))
}

/// Queues a failed delivery again: status `queued`, attempts 0, due now;
/// the failure stays in its timeline (event `retried`).
#[utoipa::path(
    post,
    path = "/deliveries/{id}/retry",
    tag = "deliveries",
    params(("id" = i64, Path, description = "Delivery id")),
    security(("bearerAuth" = ["messages:send"])),
    responses(
        (status = 202, description = "Queued again; the delivery as it is now", body = DeliveryDetail),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope messages:send", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "The delivery is not failed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn retry_delivery(
    RequireScope(caller, ..): RequireScope<MessagesSend>,
    State(state): State<ChannelState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryDetail>), ApiError> {
    let id = delivery_id(&id)?;
    let mut client = state.app.pool.get().await?;
    match channel_store::retry_delivery(&mut client, id).await? {
        RetryOutcome::Retried(detail) => {
            let by = match &caller {
                Caller::Open => "-",
                Caller::Token(p) => p.subject.as_str(),
            };
            DeliveryRetried {
                delivery_id: id,
                by,
            }
            .emit(&state.metrics);
            Ok((StatusCode::ACCEPTED, Json(*detail)))
        }
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("delivery {id} not found"))),
        RetryOutcome::NotFailed(status) => Err(ApiError::Conflict {
            message: format!(
                "delivery {id} is {}: only a failed delivery can be retried",
                status.as_str()
            ),
            field: "status",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_positive_integers() {
        assert_eq!(delivery_id("7").unwrap(), 7);
        for bad in ["0", "-1", "x", "", "1.5", "99999999999999999999"] {
            assert_eq!(
                delivery_id(bad).unwrap_err().status(),
                StatusCode::NOT_FOUND,
                "{bad}"
            );
        }
    }
}
