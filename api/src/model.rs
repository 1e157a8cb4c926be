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
    /// The messenger channel it came in or goes out through; null for a
    /// conversation of the plain webhook.
    pub channel: Option<String>,
    /// Who wrote it.
    pub author: Author,
    /// `text` (default), or what a contact sent: `image`, `audio`,
    /// `voice`, `video`, `document`, `sticker`, `location`, `contact`,
    /// `other`.
    #[schema(example = "text")]
    pub kind: String,
    /// The provider's media id of a non-text message.
    pub media_id: Option<String>,
    /// The delivery of an OUTBOUND message of a channel conversation;
    /// null otherwise.
    pub delivery: Option<DeliveryState>,
}

/// What wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthorKind {
    /// The person on the other side (every INBOUND message).
    Contact,
    /// The automatic reply.
    Bot,
    /// An agent, through `POST /conversations/{id}/messages`.
    Agent,
}

impl AuthorKind {
    /// The value stored in `message_meta.author_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorKind::Contact => "contact",
            AuthorKind::Bot => "bot",
            AuthorKind::Agent => "agent",
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Author {
    /// `contact`, `bot` or `agent`.
    pub kind: AuthorKind,
    /// The contact's id (null in a conversation of the plain webhook), or
    /// the agent's (null when the api ran without authentication, or the
    /// token was not one of an agent of this api); null for the bot.
    pub id: Option<Uuid>,
    /// The contact's display name (else its provider user id), or the
    /// agent's username; null when unknown.
    pub name: Option<String>,
}

impl Author {
    /// Who wrote a message, from what is stored about it. `meta_kind` is
    /// `message_meta.author_kind` (none without a `message_meta` row):
    /// INBOUND is always the contact; OUTBOUND is the agent when its meta
    /// says so, else the bot.
    pub fn of(
        direction: Direction,
        meta_kind: Option<&str>,
        contact: (Option<Uuid>, Option<String>),
        agent: (Option<Uuid>, Option<String>),
    ) -> Author {
        match (direction, meta_kind) {
            (Direction::Inbound, _) => Author {
                kind: AuthorKind::Contact,
                id: contact.0,
                name: contact.1,
            },
            (Direction::Outbound, Some("agent")) => Author {
                kind: AuthorKind::Agent,
                id: agent.0,
                name: agent.1,
            },
            (Direction::Outbound, _) => Author {
                kind: AuthorKind::Bot,
                id: None,
                name: None,
            },
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting to be sent (or to be sent again after a transient failure).
    Queued,
    /// The provider accepted it.
    Sent,
    /// The provider says it reached the contact's device.
    Delivered,
    /// The provider says the contact read it.
    Read,
    /// It will not be sent (a permanent failure, or too many attempts);
    /// `POST /deliveries/{id}/retry` queues it again.
    Failed,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Sent,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
        DeliveryStatus::Failed,
    ];

    /// The value stored in `deliveries.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// Reads a stored (or requested) status, exactly.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Whether `POST /deliveries/{id}/retry` may queue a delivery in this
    /// status again: only a failed one.
    pub fn retryable(self) -> bool {
        self == DeliveryStatus::Failed
    }
}

/// A message's delivery, as the conversation view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryState {
    /// Where it stands.
    pub status: DeliveryStatus,
    /// The provider's (or chatpipe's, e.g. `max_attempts`) code of the
    /// last failure.
    pub error_code: Option<String>,
    /// Why the last attempt failed.
    pub error_reason: Option<String>,
    /// When the delivery last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// The contact of a channel conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactRef {
    /// Contact id.
    pub id: Uuid,
    /// Telegram chat id, WhatsApp wa_id or Twilio `From` address.
    pub provider_user_id: String,
    /// The name the provider reported, when it did.
    pub display_name: Option<String>,
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
    /// The channel of a conversation a contact opened through a
    /// messenger; null for the plain webhook.
    pub channel: Option<String>,
    /// That contact; null for the plain webhook.
    pub contact: Option<ContactRef>,
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

/// A message in `GET /messages`: a message of the conversation view with
/// its conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeedMessage {
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// The message, as the conversation view shows it.
    #[serde(flatten)]
    pub message: Message,
}

/// `GET /messages`: one page, newest message first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeedPage {
    /// This page.
    pub messages: Vec<FeedMessage>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /conversations/{id}/messages` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SendMessage {
    /// The text: 1 to 4096 characters, not only white space, no NUL.
    #[schema(example = "Hello! How can I help?")]
    pub content: String,
}

/// What became of an agent's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SendStatus {
    /// Stored, and queued for delivery through the conversation's channel.
    Queued,
    /// Stored; the conversation has no channel, there is nothing to deliver.
    Stored,
}

impl SendStatus {
    /// As in the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            SendStatus::Queued => "queued",
            SendStatus::Stored => "stored",
        }
    }
}

/// `202` of `POST /conversations/{id}/messages` (the same on a replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SentMessage {
    /// The new message's id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// `queued` (a channel conversation) or `stored`.
    pub status: SendStatus,
    /// The channel it goes out through; null for `stored`.
    pub channel: Option<String>,
}

/// A contact: a person who wrote through a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Contact {
    /// Contact id (derived from channel and provider user id).
    pub id: Uuid,
    /// The channel.
    pub channel: String,
    /// Telegram chat id, WhatsApp wa_id or Twilio `From` address.
    pub provider_user_id: String,
    /// The name the provider reported, when it did.
    pub display_name: Option<String>,
    /// When the contact first wrote.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the contact last wrote.
    #[schema(format = DateTime)]
    pub last_seen_at: String,
}

/// `GET /contacts`: one page, newest contact first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactPage {
    /// This page.
    pub contacts: Vec<Contact>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /contacts/{id}`: a contact and its conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ContactDetail {
    /// The contact.
    #[serde(flatten)]
    pub contact: Contact,
    /// Its conversations, newest first (at most 50).
    pub conversations: Vec<ConversationSummary>,
}

/// A declared channel and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelInfo {
    /// The channel's name.
    pub name: String,
    /// `telegram`, `whatsappCloud` or `twilio`.
    #[serde(rename = "type")]
    #[schema(example = "telegram")]
    pub kind: String,
    /// Where its provider posts (on ingest, not on this api).
    #[schema(example = "/channels/support-tg/webhook")]
    pub webhook_path: String,
    /// Contacts who wrote through it.
    pub contacts: i64,
    /// Its OPEN conversations.
    pub open_conversations: i64,
    /// Deliveries waiting to be sent.
    pub deliveries_queued: i64,
    /// Deliveries that failed (dead letters).
    pub deliveries_failed: i64,
}

/// `GET /channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelList {
    /// Every declared channel, in declaration order.
    pub channels: Vec<ChannelInfo>,
}

/// The delivery of one OUTBOUND message through its channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// Delivery id (queue order).
    pub id: i64,
    /// The message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The channel.
    pub channel: String,
    /// The contact it goes to.
    pub contact_id: Uuid,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Provider calls made so far.
    pub attempts: i32,
    /// When it is (or was) due next.
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    /// The provider's id of the sent message.
    pub provider_message_id: Option<String>,
    /// Code of the last failure.
    pub error_code: Option<String>,
    /// Reason of the last failure.
    pub error_reason: Option<String>,
    /// The message's text.
    pub content: Option<String>,
    /// When it was queued.
    #[schema(format = DateTime)]
    pub queued_at: String,
    /// When the provider accepted it.
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
    /// When it reached the device.
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    /// When the contact read it.
    #[schema(format = DateTime)]
    pub read_at: Option<String>,
    /// When it failed.
    #[schema(format = DateTime)]
    pub failed_at: Option<String>,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// `GET /deliveries`: one page, newest delivery first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    /// This page.
    pub deliveries: Vec<Delivery>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One step of a delivery's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryEvent {
    /// Sequence number.
    pub id: i64,
    /// `queued`, `sent`, `delivered`, `read`, `failed`, `attempt_failed`,
    /// `retried` or `possible_duplicate`.
    pub event: String,
    /// When.
    #[schema(format = DateTime)]
    pub at: String,
    /// A failure's code (for `retried`: the failure it retries).
    pub code: Option<String>,
    /// A failure's reason.
    pub reason: Option<String>,
    /// Who recorded it: `processor`, `api`, `delivery` or `provider`.
    pub source: String,
}

/// `GET /deliveries/{id}`: a delivery and its timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its timeline, oldest first.
    pub events: Vec<DeliveryEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_follow_direction_and_meta() {
        let contact = (Some(Uuid::from_u128(1)), Some("Ana".to_owned()));
        let agent = (Some(Uuid::from_u128(2)), Some("bob".to_owned()));
        let a = Author::of(
            Direction::Inbound,
            Some("contact"),
            contact.clone(),
            agent.clone(),
        );
        assert_eq!(
            (a.kind, a.id, a.name.as_deref()),
            (AuthorKind::Contact, contact.0, Some("Ana"))
        );
        // An INBOUND message is the contact's even without meta.
        let a = Author::of(Direction::Inbound, None, (None, None), agent.clone());
        assert_eq!((a.kind, a.id), (AuthorKind::Contact, None));
        let a = Author::of(
            Direction::Outbound,
            Some("agent"),
            contact.clone(),
            agent.clone(),
        );
        assert_eq!(
            (a.kind, a.id, a.name.as_deref()),
            (AuthorKind::Agent, agent.0, Some("bob"))
        );
        for meta in [None, Some("bot"), Some("contact")] {
            let a = Author::of(Direction::Outbound, meta, contact.clone(), agent.clone());
            assert_eq!(
                (a.kind, a.id, a.name),
                (AuthorKind::Bot, None, None),
                "{meta:?}"
            );
        }
    }

    #[test]
    fn delivery_statuses_round_trip_and_only_failed_is_retryable() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().to_owned())
            );
            assert_eq!(s.retryable(), s == DeliveryStatus::Failed);
        }
        assert_eq!(DeliveryStatus::parse("FAILED"), None);
        assert_eq!(DeliveryStatus::parse(""), None);
    }
}
