//! What the window engine decides: effects to write to Postgres, and the
//! reasons an event can be rejected.

use chatpipe_core::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::engine::domain::LogPos;

/// Why an event from the log was not applied. The string form
/// ([`Reason::as_str`]) is stored in `rejected_events.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A NEW_MESSAGE the log orders after its conversation's CLOSE.
    ConversationClosed,
    /// A NEW_MESSAGE whose NEW_CONVERSATION did not arrive within the late
    /// tolerance L of the message's arrival.
    ConversationNotCreatedInTime,
    /// A NEW_MESSAGE whose id is already used by a message with different
    /// content (or in a different conversation).
    IdReusedWithDifferentContent,
    /// A second NEW_CONVERSATION for an id already created in the log.
    ConversationAlreadyExists,
    /// A CLOSE_CONVERSATION for a conversation the log has not created.
    ConversationNotFound,
    /// A second CLOSE_CONVERSATION for an already closed conversation.
    ConversationAlreadyClosed,
    /// A NEW_MESSAGE whose id is an automatic reply's (OUTBOUND) id.
    IdUsedByReply,
    /// Postgres refused the record's effects every time they were tried
    /// (the record was isolated so its partition could go on).
    StorageRefused,
    /// The record is not a valid event (written by something other than
    /// ingest, or by an ingest that validated less): recorded as it was.
    Undecodable,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 9] = [
        Reason::ConversationClosed,
        Reason::ConversationNotCreatedInTime,
        Reason::IdReusedWithDifferentContent,
        Reason::ConversationAlreadyExists,
        Reason::ConversationNotFound,
        Reason::ConversationAlreadyClosed,
        Reason::IdUsedByReply,
        Reason::StorageRefused,
        Reason::Undecodable,
    ];

    /// Machine-readable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConversationClosed => "conversation_closed",
            Reason::ConversationNotCreatedInTime => "conversation_not_created_in_time",
            Reason::IdReusedWithDifferentContent => "id_reused_with_different_content",
            Reason::ConversationAlreadyExists => "conversation_already_exists",
            Reason::ConversationNotFound => "conversation_not_found",
            Reason::ConversationAlreadyClosed => "conversation_already_closed",
            Reason::IdUsedByReply => "id_used_by_reply",
            Reason::StorageRefused => "storage_refused",
            Reason::Undecodable => "undecodable",
        }
    }

    /// Human-readable explanation stored in `rejected_events.detail`.
    pub fn detail(self) -> &'static str {
        match self {
            Reason::ConversationClosed => "the message follows its conversation's CLOSE_CONVERSATION in the log",
            Reason::ConversationNotCreatedInTime => "the conversation's NEW_CONVERSATION did not arrive within the late-arrival tolerance",
            Reason::IdReusedWithDifferentContent => "a message with this id and different content or conversation was already received",
            Reason::ConversationAlreadyExists => "a NEW_CONVERSATION with this id is earlier in the log",
            Reason::ConversationNotFound => "the log has no NEW_CONVERSATION before this CLOSE_CONVERSATION",
            Reason::ConversationAlreadyClosed => "the conversation was already closed earlier in the log",
            Reason::IdUsedByReply => "the message id is the id of an automatic reply",
            Reason::StorageRefused => "the database refused this record's effects on every retry; the record was set aside so its partition could go on",
            Reason::Undecodable => "the record in the log is not a valid event",
        }
    }
}

/// An accepted INBOUND message, written (without reply) in the batch that
/// accepts it; its reply is recorded by the group's [`Outbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Message id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Message text.
    pub content: String,
    /// Provider event time.
    pub timestamp: DateTime<Utc>,
    /// Ingest arrival time = record timestamp (ms).
    pub arrival_ms: i64,
    /// Log offset of the record.
    pub offset: i64,
}

/// One message of a replied group, as the reply policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMessage {
    /// Message id.
    pub id: Uuid,
    /// Message text.
    pub content: String,
    /// Provider event time.
    pub timestamp: DateTime<Utc>,
}

/// What answered a reply (see [`crate::engine::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AnsweredBy {
    /// The reply bot.
    Bot,
    /// A FAQ rule.
    Faq,
    /// The reply template (the engine's default: the original text).
    #[default]
    Template,
}

impl AnsweredBy {
    /// Every policy, for metrics.
    pub const ALL: [AnsweredBy; 3] = [AnsweredBy::Bot, AnsweredBy::Faq, AnsweredBy::Template];

    /// Label value (`bot`, `faq`, `template`).
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Bot => "bot",
            AnsweredBy::Faq => "faq",
            AnsweredBy::Template => "template",
        }
    }
}

/// The single OUTBOUND reply of a closed group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Deterministic id (UUIDv5 over `inbound_ids`).
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The reply's text. The engine writes the original text
    /// (`"Mensagens recebidas:\n" + ids + "\n"`, [`crate::engine::reply::reply_text`]);
    /// the shell replaces it with what the reply policy answers before the
    /// reply is written.
    pub content: String,
    /// What answered: [`AnsweredBy::Template`] until the shell applies the
    /// reply policy.
    pub answered_by: AnsweredBy,
    /// The group's messages in arrival order (the same order as
    /// `inbound_ids`): what the reply policy answers.
    pub messages: Vec<ReplyMessage>,
    /// `last_arrival + G` (ms).
    pub timestamp_ms: i64,
    /// Arrival of the group's last message (ms).
    pub last_arrival_ms: i64,
    /// The group's inbound ids in arrival order; writing the reply sets
    /// `reply_id` on each of their INBOUND rows (same transaction).
    pub inbound_ids: Vec<Uuid>,
    /// The group was flushed by CLOSE_CONVERSATION before its window ended.
    pub flushed_by_close: bool,
    /// The group was answered at one of its bounds (maximum span or size)
    /// rather than when its gap ended.
    pub capped: bool,
}

/// Why a group was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyCause {
    /// The watermark passed `last + G`.
    Window,
    /// CLOSE_CONVERSATION flushed it.
    Close,
    /// The watermark passed `first + max span`.
    Span,
    /// It reached the maximum number of messages.
    Size,
}

/// An event that was not applied, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Log offset of the record (unique key of `rejected_events`).
    pub offset: i64,
    /// Record timestamp (ms).
    pub arrival_ms: i64,
    /// The event as read.
    pub event: Event,
    /// Why.
    pub reason: Reason,
    /// What went wrong, when more than the reason's fixed text (e.g. the
    /// database's error for [`Reason::StorageRefused`]).
    pub error: Option<String>,
}

/// A record of the log that is not a valid event. The shell records it
/// (reason [`Reason::Undecodable`]) instead of stepping over it silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Log offset.
    pub offset: i64,
    /// Record timestamp (ms).
    pub arrival_ms: i64,
    /// The payload as JSON when it is JSON, else `{"payload": <text>}`
    /// (lossy UTF-8), or `{"payload": null}` for an empty record.
    pub payload: serde_json::Value,
    /// Why it is not an event.
    pub error: String,
}

impl Undecodable {
    /// Describes a record whose `payload` did not decode.
    pub fn new(offset: i64, arrival_ms: i64, payload: Option<&[u8]>, error: String) -> Self {
        let payload = match payload {
            None => serde_json::json!({ "payload": null }),
            Some(b) => serde_json::from_slice(b)
                .unwrap_or_else(|_| serde_json::json!({ "payload": String::from_utf8_lossy(b) })),
        };
        Self {
            offset,
            arrival_ms,
            payload,
            error,
        }
    }

    /// `data.<key>` of the payload as a UUID, when there is one.
    pub fn uuid_at(&self, key: &str) -> Option<Uuid> {
        self.payload
            .get("data")
            .and_then(|d| d.get(key))
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// The payload's `type` when it is a string, else `UNDECODABLE`.
    pub fn event_type(&self) -> String {
        self.payload
            .get("type")
            .and_then(|v| v.as_str())
            .unwrap_or("UNDECODABLE")
            .to_owned()
    }
}

/// One decision of the engine. Applying effects is idempotent, so a replay
/// may emit an effect again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// NEW_CONVERSATION applied: upsert the conversation (status OPEN) and
    /// persist the log position of its NEW_CONVERSATION.
    ConversationCreated {
        /// Conversation id.
        conversation_id: Uuid,
        /// Provider event time.
        created_at: DateTime<Utc>,
        /// Offset of the NEW_CONVERSATION record.
        offset: i64,
        /// Its arrival (ms).
        arrival_ms: i64,
    },
    /// CLOSE_CONVERSATION applied: set CLOSED and persist its log position.
    ConversationClosed {
        /// Conversation id.
        conversation_id: Uuid,
        /// Where its NEW_CONVERSATION is in the log (known to the engine:
        /// only a created conversation can be closed), so the store can
        /// write the close as an upsert keyed by the unique index.
        created: LogPos,
        /// Provider event time.
        closed_at: DateTime<Utc>,
        /// Offset of the CLOSE record.
        offset: i64,
        /// Its arrival (ms).
        arrival_ms: i64,
    },
    /// Insert an INBOUND message without reply (emitted when the engine
    /// accepts or attaches it, so it is visible at once).
    Inbound(Inbound),
    /// Insert an OUTBOUND reply and set `reply_id` on its INBOUND rows
    /// (where not set yet).
    Outbound(Outbound),
    /// Record a rejected event.
    Rejected(Rejection),
    /// Record a record that is not an event (added by the shell).
    Undecodable(Undecodable),
}
