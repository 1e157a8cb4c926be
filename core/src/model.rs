//! The stored domain values every service reads: a conversation's status
//! (`conversations.status`) and a message's direction
//! (`messages.direction`). One definition for ingest, processor and api.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lifecycle state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
#[schema(as = Status)]
pub enum ConversationStatus {
    /// Accepting messages.
    Open,
    /// Closed by CLOSE_CONVERSATION; no message is accepted any more.
    Closed,
}

impl ConversationStatus {
    /// The value stored in `conversations.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Closed => "CLOSED",
        }
    }

    /// Reads a stored or requested status (exact, upper case).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OPEN" => Some(Self::Open),
            "CLOSED" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// Direction of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Direction {
    /// A user message received through the webhook.
    Inbound,
    /// An automatic reply to a group of inbound messages.
    Outbound,
}

impl Direction {
    /// The value stored in `messages.direction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "INBOUND",
            Self::Outbound => "OUTBOUND",
        }
    }

    /// Reads a stored direction (exact, upper case).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INBOUND" => Some(Self::Inbound),
            "OUTBOUND" => Some(Self::Outbound),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_round_trip() {
        for s in [ConversationStatus::Open, ConversationStatus::Closed] {
            assert_eq!(ConversationStatus::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        for d in [Direction::Inbound, Direction::Outbound] {
            assert_eq!(Direction::parse(d.as_str()), Some(d));
            assert_eq!(
                serde_json::to_value(d).unwrap(),
                serde_json::json!(d.as_str())
            );
        }
        assert_eq!(ConversationStatus::parse("open"), None);
        assert_eq!(Direction::parse(""), None);
    }
}
