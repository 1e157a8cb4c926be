//! The engine's plain data: the windows' configuration, a decoded record,
//! where lifecycle records sit in the log, and what the shell pre-loads
//! about stored messages. Every other engine file builds on these; this
//! one depends on nothing else in the crate.

use chatpipe_core::Event;
use uuid::Uuid;

/// The windows (milliseconds) and the bounds of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Grouping gap G.
    pub gap_ms: i64,
    /// Late-arrival tolerance L.
    pub tolerance_ms: i64,
    /// Longest span of one group (first to last arrival): a group is
    /// answered at the latest when the watermark passes `first + span`, and
    /// a message arriving after that starts a new group.
    pub max_group_span_ms: i64,
    /// Most messages in one group: the group is answered as soon as it has
    /// this many, and the next message starts a new group.
    pub max_group_messages: usize,
}

/// Default [`EngineConfig::max_group_span_ms`]: one minute.
pub const DEFAULT_MAX_GROUP_SPAN_MS: i64 = 60_000;
/// Default [`EngineConfig::max_group_messages`].
pub const DEFAULT_MAX_GROUP_MESSAGES: usize = 100;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            gap_ms: 5_000,
            tolerance_ms: 6_000,
            max_group_span_ms: DEFAULT_MAX_GROUP_SPAN_MS,
            max_group_messages: DEFAULT_MAX_GROUP_MESSAGES,
        }
    }
}

impl EngineConfig {
    /// When an open group with this first and last arrival is answered by
    /// the watermark: `last + G`, or `first + span` when that is earlier.
    /// Saturating, so no arrival time can overflow.
    pub fn group_deadline(&self, first_ms: i64, last_ms: i64) -> i64 {
        last_ms
            .saturating_add(self.gap_ms)
            .min(first_ms.saturating_add(self.max_group_span_ms.max(0)))
    }

    /// When a buffered orphan that arrived at `arrival_ms` expires.
    pub fn orphan_deadline(&self, arrival_ms: i64) -> i64 {
        arrival_ms.saturating_add(self.tolerance_ms)
    }
}

/// One record of the partition, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Log offset.
    pub offset: i64,
    /// Record timestamp = ingest arrival (ms since the epoch).
    pub arrival_ms: i64,
    /// The event.
    pub event: Event,
}

/// Where a lifecycle record sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    /// Record offset.
    pub offset: i64,
    /// Record timestamp (ms).
    pub arrival_ms: i64,
}

/// Persisted lifecycle of one conversation, as seen in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConversationLog {
    /// Its NEW_CONVERSATION.
    pub created: Option<LogPos>,
    /// Its CLOSE_CONVERSATION.
    pub closed: Option<LogPos>,
    /// Event time of its NEW_CONVERSATION in microseconds (Postgres'
    /// precision), so an identical redelivery is told from a different
    /// event; `None` for rows written before it was kept.
    pub created_event_us: Option<i64>,
    /// Event time of its CLOSE_CONVERSATION in microseconds.
    pub closed_event_us: Option<i64>,
}

impl ConversationLog {
    /// Whether the conversation is created as of `offset`: its
    /// NEW_CONVERSATION is earlier in the log.
    pub fn created_before(&self, offset: i64) -> bool {
        self.created.is_some_and(|p| p.offset < offset)
    }

    /// Whether the conversation is closed as of `offset`: its
    /// CLOSE_CONVERSATION is earlier in the log.
    pub fn closed_before(&self, offset: i64) -> bool {
        self.closed.is_some_and(|p| p.offset < offset)
    }
}

/// A stored INBOUND message, pre-loaded by the shell for duplicate checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Its text.
    pub content: String,
    /// The reply that covered it; `None` while its group is open.
    pub reply_id: Option<Uuid>,
    /// The message was rejected (its id is known, its fate final).
    pub rejected: bool,
    /// The id is an OUTBOUND reply's: no message may reuse it.
    pub is_reply: bool,
}
