//! Keyset pagination: page sizes and opaque cursors. Pure code, no I/O.
//!
//! A cursor names the last row of the page it ends, by the columns the
//! listing is ordered by, so the next page is `WHERE (key) > (cursor)` (or
//! `<` for descending listings) — stable under concurrent inserts and as
//! cheap on page 1000 as on page 1. On the wire a cursor is the URL-safe
//! base64 (no padding) of a short versioned text such as
//! `c1|<created_at micros>|<uuid>`; clients must treat it as opaque.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Page size used when `limit` is absent, and the largest accepted `limit`
/// (the defaults of `--default-limit` and `--max-limit`).
pub use chatpipe_settings::api::{DEFAULT_LIMIT, MAX_LIMIT};

/// Where a page starts: just after the row the cursor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Conversations, listed newest first by `(created_at, id)` descending.
    Conversation {
        /// `created_at` of the last conversation of the previous page.
        created_at: DateTime<Utc>,
        /// Its id.
        id: Uuid,
    },
    /// Messages of one conversation, by `(timestamp, direction, id)`
    /// ascending with INBOUND before OUTBOUND.
    Message {
        /// `timestamp` of the last message of the previous page.
        timestamp: DateTime<Utc>,
        /// Whether it was OUTBOUND.
        outbound: bool,
        /// Its id.
        id: Uuid,
    },
    /// Rejected events, newest first by `id` descending.
    Rejected {
        /// `id` of the last rejected event of the previous page.
        id: i64,
    },
    /// Agents, oldest first by `(created_at, id)` ascending.
    Agent {
        /// `created_at` of the last agent of the previous page.
        created_at: DateTime<Utc>,
        /// Its id.
        id: Uuid,
    },
    /// Messages of any conversation (`GET /messages`), newest first by
    /// `(timestamp, direction, id)` descending (OUTBOUND before INBOUND).
    Feed {
        /// `timestamp` of the last message of the previous page.
        timestamp: DateTime<Utc>,
        /// Whether it was OUTBOUND.
        outbound: bool,
        /// Its id.
        id: Uuid,
    },
    /// Contacts, newest first by `(created_at, id)` descending.
    Contact {
        /// `created_at` of the last contact of the previous page.
        created_at: DateTime<Utc>,
        /// Its id.
        id: Uuid,
    },
    /// Deliveries, newest first by `id` descending.
    Delivery {
        /// `id` of the last delivery of the previous page.
        id: i64,
    },
}

/// The kind of listing a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    /// `GET /conversations/`.
    Conversation,
    /// `GET /conversations/{id}/messages`.
    Message,
    /// `GET /rejected-events`.
    Rejected,
    /// `GET /agents`.
    Agent,
    /// `GET /messages`.
    Feed,
    /// `GET /contacts`.
    Contact,
    /// `GET /deliveries`.
    Delivery,
}

/// Why a cursor or limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The cursor is not one this api issued for this listing.
    #[error("invalid cursor: {0}")]
    Cursor(&'static str),
    /// The limit is not an integer in range.
    #[error("limit must be an integer from 1 to {max}")]
    Limit {
        /// The largest accepted limit.
        max: i64,
    },
}

impl Cursor {
    /// The listing this cursor belongs to.
    pub fn kind(&self) -> CursorKind {
        match self {
            Cursor::Conversation { .. } => CursorKind::Conversation,
            Cursor::Message { .. } => CursorKind::Message,
            Cursor::Rejected { .. } => CursorKind::Rejected,
            Cursor::Agent { .. } => CursorKind::Agent,
            Cursor::Feed { .. } => CursorKind::Feed,
            Cursor::Contact { .. } => CursorKind::Contact,
            Cursor::Delivery { .. } => CursorKind::Delivery,
        }
    }

    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        let text = match self {
            Cursor::Conversation { created_at, id } => {
                format!("c1|{}|{}", created_at.timestamp_micros(), id)
            }
            Cursor::Message {
                timestamp,
                outbound,
                id,
            } => format!(
                "m1|{}|{}|{}",
                timestamp.timestamp_micros(),
                u8::from(*outbound),
                id
            ),
            Cursor::Rejected { id } => format!("r1|{id}"),
            Cursor::Agent { created_at, id } => {
                format!("a1|{}|{}", created_at.timestamp_micros(), id)
            }
            Cursor::Feed {
                timestamp,
                outbound,
                id,
            } => format!(
                "f1|{}|{}|{}",
                timestamp.timestamp_micros(),
                u8::from(*outbound),
                id
            ),
            Cursor::Contact { created_at, id } => {
                format!("k1|{}|{}", created_at.timestamp_micros(), id)
            }
            Cursor::Delivery { id } => format!("d1|{id}"),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads a cursor issued by [`Cursor::encode`] for a listing of `kind`.
    pub fn decode(s: &str, kind: CursorKind) -> Result<Cursor, PageError> {
        if s.len() > 200 {
            return Err(PageError::Cursor("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| PageError::Cursor("not base64url"))?;
        let text = String::from_utf8(bytes).map_err(|_| PageError::Cursor("not text"))?;
        let parts: Vec<&str> = text.split('|').collect();
        let cursor = match parts.as_slice() {
            ["c1", micros, id] => Cursor::Conversation {
                created_at: micros_to_time(micros)?,
                id: parse_id(id)?,
            },
            ["m1", micros, dir, id] => Cursor::Message {
                timestamp: micros_to_time(micros)?,
                outbound: parse_outbound(dir)?,
                id: parse_id(id)?,
            },
            ["f1", micros, dir, id] => Cursor::Feed {
                timestamp: micros_to_time(micros)?,
                outbound: parse_outbound(dir)?,
                id: parse_id(id)?,
            },
            ["k1", micros, id] => Cursor::Contact {
                created_at: micros_to_time(micros)?,
                id: parse_id(id)?,
            },
            ["d1", id] => Cursor::Delivery {
                id: id.parse::<i64>().map_err(|_| PageError::Cursor("bad id"))?,
            },
            ["a1", micros, id] => Cursor::Agent {
                created_at: micros_to_time(micros)?,
                id: parse_id(id)?,
            },
            ["r1", id] => Cursor::Rejected {
                id: id.parse::<i64>().map_err(|_| PageError::Cursor("bad id"))?,
            },
            _ => return Err(PageError::Cursor("unknown format")),
        };
        if cursor.kind() != kind {
            return Err(PageError::Cursor("issued for another listing"));
        }
        Ok(cursor)
    }
}

fn micros_to_time(s: &str) -> Result<DateTime<Utc>, PageError> {
    let micros = s
        .parse::<i64>()
        .map_err(|_| PageError::Cursor("bad timestamp"))?;
    DateTime::from_timestamp_micros(micros).ok_or(PageError::Cursor("timestamp out of range"))
}

fn parse_outbound(s: &str) -> Result<bool, PageError> {
    match s {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(PageError::Cursor("bad direction")),
    }
}

fn parse_id(s: &str) -> Result<Uuid, PageError> {
    chatpipe_core::event::parse_uuid(s).ok_or(PageError::Cursor("bad id"))
}

/// Reads the `limit` parameter: absent → [`DEFAULT_LIMIT`], otherwise an
/// integer in `1..=max`.
pub fn parse_limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, PageError> {
    match raw {
        None => Ok(default.clamp(1, max)),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(PageError::Limit { max }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit(None, 50, 500), Ok(50));
        assert_eq!(parse_limit(Some("1"), 50, 500), Ok(1));
        assert_eq!(parse_limit(Some("500"), 50, 500), Ok(500));
        for bad in ["0", "501", "-1", "abc", "", "1.5", "99999999999999999999"] {
            assert_eq!(
                parse_limit(Some(bad), 50, 500),
                Err(PageError::Limit { max: 500 }),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_garbage_and_foreign_cursors() {
        for bad in ["", "!!", "abc", "YWJj", &"A".repeat(300)] {
            assert!(
                Cursor::decode(bad, CursorKind::Conversation).is_err(),
                "{bad}"
            );
        }
        let r = Cursor::Rejected { id: 7 }.encode();
        assert_eq!(
            Cursor::decode(&r, CursorKind::Conversation),
            Err(PageError::Cursor("issued for another listing"))
        );
        let forged = URL_SAFE_NO_PAD.encode("m1|5|2|00000000-0000-0000-0000-000000000000");
        assert!(Cursor::decode(&forged, CursorKind::Message).is_err());
    }

    const ALL_KINDS: [CursorKind; 7] = [
        CursorKind::Conversation,
        CursorKind::Message,
        CursorKind::Rejected,
        CursorKind::Agent,
        CursorKind::Feed,
        CursorKind::Contact,
        CursorKind::Delivery,
    ];

    fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
        // Postgres timestamptz range is wider, but this covers any real data.
        (-62_135_596_800_000_000i64..253_402_300_799_000_000i64)
            .prop_map(|m| DateTime::from_timestamp_micros(m).unwrap())
    }

    fn arb_cursor() -> impl Strategy<Value = Cursor> {
        prop_oneof![
            (arb_time(), any::<u128>()).prop_map(|(t, id)| Cursor::Conversation {
                created_at: t,
                id: Uuid::from_u128(id)
            }),
            (arb_time(), any::<bool>(), any::<u128>()).prop_map(|(t, o, id)| Cursor::Message {
                timestamp: t,
                outbound: o,
                id: Uuid::from_u128(id)
            }),
            any::<i64>().prop_map(|id| Cursor::Rejected { id }),
            (arb_time(), any::<u128>()).prop_map(|(t, id)| Cursor::Agent {
                created_at: t,
                id: Uuid::from_u128(id)
            }),
            (arb_time(), any::<bool>(), any::<u128>()).prop_map(|(t, o, id)| Cursor::Feed {
                timestamp: t,
                outbound: o,
                id: Uuid::from_u128(id)
            }),
            (arb_time(), any::<u128>()).prop_map(|(t, id)| Cursor::Contact {
                created_at: t,
                id: Uuid::from_u128(id)
            }),
            any::<i64>().prop_map(|id| Cursor::Delivery { id }),
        ]
    }

    proptest! {
        #[test]
        fn cursors_round_trip(c in arb_cursor()) {
            let s = c.encode();
            prop_assert!(s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
            prop_assert_eq!(Cursor::decode(&s, c.kind()), Ok(c));
        }

        #[test]
        fn decoding_never_panics(s in ".{0,120}") {
            for kind in ALL_KINDS {
                let _ = Cursor::decode(&s, kind);
            }
        }

        #[test]
        fn a_cursor_is_refused_by_every_other_listing(c in arb_cursor()) {
            let s = c.encode();
            for kind in ALL_KINDS.into_iter().filter(|k| *k != c.kind()) {
                prop_assert_eq!(
                    Cursor::decode(&s, kind),
                    Err(PageError::Cursor("issued for another listing"))
                );
            }
        }

        #[test]
        fn limits_in_range_are_accepted(n in 1i64..=500) {
            prop_assert_eq!(parse_limit(Some(&n.to_string()), 50, 500), Ok(n));
        }
    }
}
