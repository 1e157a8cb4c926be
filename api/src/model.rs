//! The JSON shapes the api answers with (also the OpenAPI schemas).
//! Timestamps are RFC 3339 strings in UTC with a `Z` suffix, written by
//! [`chatpipe_core::event::format_timestamp`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use chatpipe_core::model::{ConversationStatus, Direction};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// Message id (the provider's for INBOUND, derived from its group for OUTBOUND).
    pub id: Uuid,
    /// INBOUND or OUTBOUND.
    #[serde(rename = "type")]
    pub direction: Direction,
    /// Text of the message.
    pub content: String,
    /// Event time: the provider's for INBOUND, last arrival + grouping gap for OUTBOUND.
    #[schema(format = DateTime, example = "2025-06-04T14:20:05Z")]
    pub timestamp: String,
}

/// `GET /conversations/{id}/`: a conversation with all its messages, in
/// timestamp order (ties: INBOUND before OUTBOUND, then by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    /// Conversation id.
    pub id: Uuid,
    /// OPEN or CLOSED.
    pub status: ConversationStatus,
    /// Event time of NEW_CONVERSATION.
    #[schema(format = DateTime, example = "2025-06-04T14:20:00Z")]
    pub created_at: String,
    /// Event time of the latest lifecycle change.
    #[schema(format = DateTime, example = "2025-06-04T14:25:00Z")]
    pub updated_at: String,
    /// Every message, in timestamp order.
    pub messages: Vec<Message>,
}

/// A conversation in a listing (no messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationSummary {
    /// Conversation id.
    pub id: Uuid,
    /// OPEN or CLOSED.
    pub status: ConversationStatus,
    /// Event time of NEW_CONVERSATION.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Event time of the latest lifecycle change.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Event time of CLOSE_CONVERSATION, when closed.
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
}

/// `GET /conversations/`: one page, newest conversation first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConversationPage {
    /// This page.
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /conversations/{id}/messages`: one page of messages, in timestamp order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// The conversation.
    pub conversation_id: Uuid,
    /// This page.
    pub messages: Vec<Message>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An event the processor accepted from the log but could not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RejectedEvent {
    /// Sequence number (newer is larger).
    pub id: i64,
    /// NEW_CONVERSATION, NEW_MESSAGE or CLOSE_CONVERSATION.
    pub event_type: String,
    /// `data.id` of the event.
    pub event_id: Option<Uuid>,
    /// Conversation the event belongs to.
    pub conversation_id: Option<Uuid>,
    /// Machine-readable reason, e.g. `conversation_closed`,
    /// `conversation_not_created_in_time`.
    pub reason: String,
    /// Human-readable explanation.
    pub detail: String,
    /// The event as received.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// Ingest arrival time of the event.
    #[schema(format = DateTime)]
    pub arrival: Option<String>,
    /// When it was rejected.
    #[schema(format = DateTime)]
    pub rejected_at: String,
    /// Topic the event was read from.
    pub source_topic: String,
    /// Partition it was read from.
    pub source_partition: i32,
    /// Offset it was read at.
    pub source_offset: i64,
}

/// `GET /rejected-events`: one page, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RejectedPage {
    /// This page.
    pub rejected_events: Vec<RejectedEvent>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}
