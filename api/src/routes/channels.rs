//! `GET /channels`: the declared channels and what each holds.

use axum::extract::State;
use axum::Json;

use super::ChannelState;
use crate::auth::{ConversationsRead, RequireScope};
use crate::channel_store;
use crate::error::{ApiError, ErrorBody};
use crate::model::{ChannelInfo, ChannelList};

/// Where ingest serves channel `name`'s webhook.
pub fn webhook_path(name: &str) -> String {
    format!("/channels/{name}/webhook")
}

/// Every channel the api's settings declare (`--channels`), in their
/// order, with its webhook path on ingest and its counts.
#[utoipa::path(
    get,
    path = "/channels",
    tag = "channels",
    security(("bearerAuth" = ["conversations:read"])),
    responses(
        (status = 200, description = "The declared channels", body = ChannelList),
        (status = 401, description = "Authentication is on and the bearer token is missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The token lacks scope conversations:read", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list_channels(
    _: RequireScope<ConversationsRead>,
    State(state): State<ChannelState>,
) -> Result<Json<ChannelList>, ApiError> {
    let declared = &state.channels.0;
    if declared.is_empty() {
        return Ok(Json(ChannelList { channels: vec![] }));
    }
    let names: Vec<String> = declared.iter().map(|c| c.name.clone()).collect();
    let client = state.app.pool.get().await?;
    let counts = channel_store::channel_counts(&client, &names).await?;
    if counts.len() != declared.len() {
        return Err(ApiError::Internal(format!(
            "{} channel counts for {} channels",
            counts.len(),
            declared.len()
        )));
    }
    let channels = declared
        .iter()
        .zip(counts)
        .map(|(c, n)| ChannelInfo {
            name: c.name.clone(),
            kind: c.kind.as_str().to_owned(),
            webhook_path: webhook_path(&c.name),
            contacts: n.contacts,
            open_conversations: n.open_conversations,
            deliveries_queued: n.deliveries_queued,
            deliveries_failed: n.deliveries_failed,
        })
        .collect();
    Ok(Json(ChannelList { channels }))
}
