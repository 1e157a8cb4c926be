//! The webhook event contract: typed events, validation of raw bodies as a
//! pure function, and the canonical encoding written to Kafka.
//!
//! Validation never panics on any input (see the property test below); every
//! rejection names the offending field with the dotted path used in the
//! `400` body, e.g. `data.conversation_id`.
//!
//! Everything the validator accepts can be stored and replayed: an accepted
//! event encodes ([`Event::encode`]) and decodes ([`Event::decode`]) to
//! itself (property-tested over the whole accepted range), so the validator
//! refuses what the canonical encoding or Postgres cannot carry:
//! - `data.content` with a NUL character (U+0000): Postgres `text` and
//!   `jsonb` cannot store it;
//! - a `timestamp` whose UTC value falls outside the years 0001–9999
//!   ([`MIN_TIMESTAMP`]..=[`MAX_TIMESTAMP`]), e.g.
//!   `0000-01-01T00:00:00+00:01` or `9999-12-31T23:59:59-00:01`: RFC 3339
//!   allows them with an offset, but in UTC the canonical encoding would
//!   write a year RFC 3339 (and so the decoder) refuses.

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Default largest accepted `data.content` and request body, in bytes:
/// ingest's flag defaults, defined with its settings.
pub use chatpipe_settings::ingest::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONTENT_BYTES};

/// The earliest accepted event time: `0001-01-01T00:00:00Z`.
pub const MIN_TIMESTAMP: &str = "0001-01-01T00:00:00Z";
/// The latest accepted event time: `9999-12-31T23:59:59.999999999Z`.
pub const MAX_TIMESTAMP: &str = "9999-12-31T23:59:59.999999999Z";

/// Whether `ts` is an event time the contract accepts: its UTC year is in
/// 0001–9999, so [`format_timestamp`] writes four-digit years that RFC 3339
/// parsers (ours included) read back.
pub fn timestamp_in_range(ts: &DateTime<Utc>) -> bool {
    (1..=9999).contains(&ts.year())
}

/// The three event types of the contract, as spelled on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    /// `NEW_CONVERSATION`: creates a conversation in state OPEN.
    NewConversation,
    /// `NEW_MESSAGE`: an INBOUND user message.
    NewMessage,
    /// `CLOSE_CONVERSATION`: moves a conversation to CLOSED.
    CloseConversation,
}

impl EventType {
    /// All event types, in contract order.
    pub const ALL: [EventType; 3] = [
        EventType::NewConversation,
        EventType::NewMessage,
        EventType::CloseConversation,
    ];

    /// The wire spelling, e.g. `NEW_MESSAGE`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::NewConversation => "NEW_CONVERSATION",
            EventType::NewMessage => "NEW_MESSAGE",
            EventType::CloseConversation => "CLOSE_CONVERSATION",
        }
    }

    /// Parses the wire spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated webhook event. `timestamp` is the provider's event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new conversation with id `id`.
    NewConversation {
        /// Conversation id.
        id: Uuid,
        /// Event time given by the provider.
        timestamp: DateTime<Utc>,
    },
    /// A user message `id` in conversation `conversation_id`.
    NewMessage {
        /// Message id.
        id: Uuid,
        /// The conversation the message belongs to.
        conversation_id: Uuid,
        /// Message text.
        content: String,
        /// Event time given by the provider.
        timestamp: DateTime<Utc>,
    },
    /// Closes conversation `id`.
    CloseConversation {
        /// Conversation id.
        id: Uuid,
        /// Event time given by the provider.
        timestamp: DateTime<Utc>,
    },
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::NewConversation { .. } => EventType::NewConversation,
            Event::NewMessage { .. } => EventType::NewMessage,
            Event::CloseConversation { .. } => EventType::CloseConversation,
        }
    }

    /// The conversation this event belongs to: the Kafka record key.
    pub fn conversation_id(&self) -> Uuid {
        match self {
            Event::NewConversation { id, .. } | Event::CloseConversation { id, .. } => *id,
            Event::NewMessage {
                conversation_id, ..
            } => *conversation_id,
        }
    }

    /// The event's own id (`data.id`).
    pub fn id(&self) -> Uuid {
        match self {
            Event::NewConversation { id, .. }
            | Event::CloseConversation { id, .. }
            | Event::NewMessage { id, .. } => *id,
        }
    }

    /// The provider's event time.
    pub fn timestamp(&self) -> DateTime<Utc> {
        match self {
            Event::NewConversation { timestamp, .. }
            | Event::NewMessage { timestamp, .. }
            | Event::CloseConversation { timestamp, .. } => *timestamp,
        }
    }

    /// The canonical JSON form, with the same shape as the webhook body.
    pub fn to_json(&self) -> Value {
        let data = match self {
            Event::NewConversation { id, .. } | Event::CloseConversation { id, .. } => {
                serde_json::json!({ "id": id })
            }
            Event::NewMessage {
                id,
                conversation_id,
                content,
                ..
            } => serde_json::json!({
                "id": id,
                "content": content,
                "conversation_id": conversation_id,
            }),
        };
        serde_json::json!({
            "type": self.event_type().as_str(),
            "timestamp": format_timestamp(self.timestamp()),
            "data": data,
        })
    }

    /// The canonical encoding written as the Kafka record value.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a `Value` built from strings cannot fail.
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }

    /// Decodes a Kafka record value written by [`Event::encode`] (or any valid
    /// webhook body), with no size limits beyond the content limit given.
    pub fn decode(bytes: &[u8], max_content_bytes: usize) -> Result<Event, ValidationError> {
        parse_event(
            bytes,
            &Limits {
                max_body_bytes: usize::MAX,
                max_content_bytes,
            },
        )
    }
}

/// Formats a timestamp as RFC 3339 in UTC with a `Z` suffix and only the
/// sub-second digits that are needed.
pub fn format_timestamp(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Size limits applied by [`parse_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted `data.content`, in bytes of UTF-8.
    pub max_content_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
        }
    }
}

/// Why a body was rejected: a message and the dotted path of the field.
/// Serialises to the `400` body `{"error":"…","field":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {error}")]
pub struct ValidationError {
    /// Human-readable reason.
    pub error: String,
    /// Dotted path of the offending field (`body` for the whole body).
    pub field: String,
}

impl ValidationError {
    /// A rejection of `field` for `error`.
    pub fn new(field: impl Into<String>, error: impl Into<String>) -> Self {
        ValidationError {
            error: error.into(),
            field: field.into(),
        }
    }
}

/// Validates a raw webhook body and returns the typed event.
///
/// Unknown extra fields are ignored (providers add fields over time); every
/// field the contract names must be present with the right type.
pub fn parse_event(body: &[u8], limits: &Limits) -> Result<Event, ValidationError> {
    if body.len() > limits.max_body_bytes {
        return Err(ValidationError::new(
            "body",
            format!("body is larger than {} bytes", limits.max_body_bytes),
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::new("body", format!("body is not valid JSON: {e}")))?;
    let root = value
        .as_object()
        .ok_or_else(|| ValidationError::new("body", "body must be a JSON object"))?;

    let type_str = required_str(root, "type", "type")?;
    let event_type = EventType::parse(type_str).ok_or_else(|| {
        ValidationError::new(
            "type",
            format!(
                "unknown event type {type_str:?}; expected one of NEW_CONVERSATION, NEW_MESSAGE, CLOSE_CONVERSATION"
            ),
        )
    })?;
    let timestamp = parse_timestamp(required_str(root, "timestamp", "timestamp")?)?;
    let data = match root.get("data") {
        None | Some(Value::Null) => return Err(ValidationError::new("data", "field is required")),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(ValidationError::new(
                "data",
                format!("expected an object, found {}", json_kind(other)),
            ))
        }
    };
    let id = required_uuid(data, "id", "data.id")?;
    Ok(match event_type {
        EventType::NewConversation => Event::NewConversation { id, timestamp },
        EventType::CloseConversation => Event::CloseConversation { id, timestamp },
        EventType::NewMessage => {
            let content = required_str(data, "content", "data.content")?;
            if content.len() > limits.max_content_bytes {
                return Err(ValidationError::new(
                    "data.content",
                    format!(
                        "content is {} bytes; the limit is {} bytes",
                        content.len(),
                        limits.max_content_bytes
                    ),
                ));
            }
            if let Some(at) = content.find('\0') {
                return Err(ValidationError::new(
                    "data.content",
                    format!(
                        "content contains the NUL character (U+0000) at byte {at}; it cannot be stored"
                    ),
                ));
            }
            let conversation_id = required_uuid(data, "conversation_id", "data.conversation_id")?;
            Event::NewMessage {
                id,
                conversation_id,
                content: content.to_owned(),
                timestamp,
            }
        }
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, ValidationError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(ValidationError::new(path, "field is required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ValidationError::new(
            path,
            format!("expected a string, found {}", json_kind(other)),
        )),
    }
}

fn required_uuid(map: &Map<String, Value>, key: &str, path: &str) -> Result<Uuid, ValidationError> {
    let s = required_str(map, key, path)?;
    parse_uuid(s).ok_or_else(|| {
        ValidationError::new(
            path,
            format!(
                "{s:?} is not a UUID in the hyphenated form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
            ),
        )
    })
}

/// Parses a UUID in its canonical hyphenated form (any letter case).
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, ValidationError> {
    let ts = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ValidationError::new(
                "timestamp",
                format!("{s:?} is not an RFC 3339 timestamp: {e}"),
            )
        })?;
    if !timestamp_in_range(&ts) {
        return Err(ValidationError::new(
            "timestamp",
            format!(
                "{s:?} is out of range: in UTC it must be between {MIN_TIMESTAMP} and {MAX_TIMESTAMP}"
            ),
        ));
    }
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CONV: &str = "6a41b347-8d80-4ce9-84ba-7af66f369f6a";
    const MSG: &str = "49108c71-4dca-4af3-9f32-61bc745926e2";

    fn parse(s: &str) -> Result<Event, ValidationError> {
        parse_event(s.as_bytes(), &Limits::default())
    }

    fn field_of(s: &str) -> String {
        match parse(s) {
            Ok(e) => panic!("expected a rejection, got {e:?}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn parses_the_three_examples_of_the_spec() {
        let nc = parse(&format!(
            r#"{{"type":"NEW_CONVERSATION","timestamp":"2025-06-04T14:20:00Z","data":{{"id":"{CONV}"}}}}"#
        ))
        .unwrap();
        assert_eq!(nc.event_type(), EventType::NewConversation);
        assert_eq!(nc.conversation_id().to_string(), CONV);
        let nm = parse(&format!(
            r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z","data":{{"id":"{MSG}","content":"Olá, quero informações sobre alugar um apartamento.","conversation_id":"{CONV}"}}}}"#
        ))
        .unwrap();
        assert_eq!(nm.conversation_id().to_string(), CONV);
        assert_eq!(nm.id().to_string(), MSG);
        match &nm {
            Event::NewMessage { content, .. } => assert!(content.starts_with("Olá")),
            other => panic!("{other:?}"),
        }
        let cc = parse(&format!(
            r#"{{"type":"CLOSE_CONVERSATION","timestamp":"2025-06-04T14:25:00Z","data":{{"id":"{CONV}"}}}}"#
        ))
        .unwrap();
        assert_eq!(cc.event_type(), EventType::CloseConversation);
        assert_eq!(format_timestamp(cc.timestamp()), "2025-06-04T14:25:00Z");
    }

    #[test]
    fn every_invalid_case_names_its_field() {
        let (c, m) = (CONV.parse().unwrap(), MSG.parse().unwrap());
        let cases = crate::examples::invalid_payloads(c, m);
        for (body, field) in cases {
            assert_eq!(field_of(&body), field, "body: {body}");
        }
    }

    #[test]
    fn content_and_body_limits_are_enforced() {
        let limits = Limits {
            max_body_bytes: 400,
            max_content_bytes: 10,
        };
        let body = |content: &str| {
            format!(
                r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z","data":{{"id":"{MSG}","content":"{content}","conversation_id":"{CONV}"}}}}"#
            )
        };
        assert!(parse_event(body("0123456789").as_bytes(), &limits).is_ok());
        let err = parse_event(body("01234567890").as_bytes(), &limits).unwrap_err();
        assert_eq!(err.field, "data.content");
        // Multi-byte characters count in bytes: 4 × 3 bytes = 12 > 10.
        assert_eq!(
            parse_event(body("€€€€").as_bytes(), &limits)
                .unwrap_err()
                .field,
            "data.content"
        );
        let big = body(&"x".repeat(500));
        assert_eq!(
            parse_event(big.as_bytes(), &limits).unwrap_err().field,
            "body"
        );
    }

    #[test]
    fn encoding_round_trips_and_normalises() {
        let e = parse(&format!(
            r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T11:20:05.250-03:00","extra":true,"data":{{"id":"{}","content":"a\nb","conversation_id":"{CONV}","x":1}}}}"#,
            MSG.to_uppercase()
        ))
        .unwrap();
        let bytes = e.encode();
        let back = Event::decode(&bytes, DEFAULT_MAX_CONTENT_BYTES).unwrap();
        assert_eq!(back, e);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["timestamp"], "2025-06-04T14:20:05.250Z");
        assert_eq!(v["data"]["id"], MSG);
        assert!(v.get("extra").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_event(&bytes, &Limits::default());
        }

        #[test]
        fn arbitrary_json_never_panics(s in r#"\{("(type|timestamp|data|id|content|conversation_id)":("NEW_MESSAGE"|"NEW_CONVERSATION"|"2025-06-04T14:20:05Z"|"[a-f0-9-]{0,40}"|1|null|\{\}|\[\]),?){0,6}\}"#) {
            let _ = parse_event(s.as_bytes(), &Limits::default());
        }

        #[test]
        fn valid_messages_round_trip(content in "\\PC{0,200}", secs in 0i64..4_000_000_000, a in any::<u128>(), b in any::<u128>()) {
            let e = Event::NewMessage {
                id: Uuid::from_u128(a),
                conversation_id: Uuid::from_u128(b),
                content,
                timestamp: DateTime::from_timestamp(secs, 0).unwrap(),
            };
            let back = parse_event(&e.encode(), &Limits { max_body_bytes: usize::MAX, max_content_bytes: usize::MAX }).unwrap();
            prop_assert_eq!(back, e);
        }

        /// The whole accepted range: any event type, any instant of years
        /// 0001–9999 (ends included, any precision) written with any offset,
        /// any content without NUL up to exactly the limit. Every such body
        /// is accepted, means what it says, and its canonical encoding
        /// decodes to the same event.
        #[test]
        fn every_accepted_event_round_trips(
            kind in 0u8..3,
            (instant, offset) in (accepted_instant(), any_offset()).prop_filter(
                "the local time must have a 4-digit year to be written in RFC 3339",
                |(i, o)| (0..=9999).contains(&i.with_timezone(o).year()),
            ),
            content in any_content(),
            a in any::<u128>(),
            b in any::<u128>(),
        ) {
            let local = instant.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::AutoSi, false);
            let (id, conversation_id) = (Uuid::from_u128(a), Uuid::from_u128(b));
            let body = match kind {
                0 => serde_json::json!({"type": "NEW_CONVERSATION", "timestamp": local, "data": {"id": id}}),
                1 => serde_json::json!({"type": "CLOSE_CONVERSATION", "timestamp": local, "data": {"id": id}}),
                _ => serde_json::json!({"type": "NEW_MESSAGE", "timestamp": local,
                                        "data": {"id": id, "content": content, "conversation_id": conversation_id}}),
            };
            let limits = Limits { max_body_bytes: usize::MAX, max_content_bytes: DEFAULT_MAX_CONTENT_BYTES };
            let event = parse_event(body.to_string().as_bytes(), &limits);
            prop_assert!(event.is_ok(), "{} refused: {:?}", body, event);
            let event = event.unwrap();
            prop_assert_eq!(event.timestamp(), instant);
            prop_assert_eq!(event.id(), id);
            if let Event::NewMessage { content: c, conversation_id: cid, .. } = &event {
                prop_assert_eq!(c, &content);
                prop_assert_eq!(*cid, conversation_id);
            }
            let decoded = Event::decode(&event.encode(), DEFAULT_MAX_CONTENT_BYTES);
            prop_assert_eq!(decoded, Ok(event.clone()));
            // The canonical form is itself a valid webhook body.
            prop_assert_eq!(parse_event(&event.encode(), &limits), Ok(event));
        }

        /// Any RFC 3339 timestamp, in or out of range: the validator accepts
        /// it exactly when its UTC year is 0001–9999, and then the canonical
        /// encoding round-trips it; otherwise the `400` names `timestamp`.
        #[test]
        fn timestamps_are_accepted_exactly_in_range(
            year in prop_oneof![0i32..=9999, 0i32..=2, 9997i32..=9999],
            month in 1u32..=12,
            day in 1u32..=31,
            hour in 0u32..=23,
            minute in 0u32..=59,
            second in prop_oneof![0u32..=59, Just(59u32), Just(60u32)],
            frac in proptest::option::of("[0-9]{1,12}"),
            offset in prop_oneof![Just(None), (-1439i32..=1439).prop_map(Some), Just(Some(1439)), Just(Some(-1439)), Just(Some(1)), Just(Some(-1))],
        ) {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let zone = match offset {
                None => "Z".to_owned(),
                Some(m) => format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60),
            };
            let ts = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{frac}{zone}");
            let body = format!(r#"{{"type":"NEW_CONVERSATION","timestamp":"{ts}","data":{{"id":"{CONV}"}}}}"#);
            let parsed = DateTime::parse_from_rfc3339(&ts).map(|t| t.with_timezone(&Utc));
            match (parse(&body), parsed) {
                (Ok(event), Ok(utc)) => {
                    prop_assert!(timestamp_in_range(&utc), "{} accepted", ts);
                    prop_assert_eq!(event.timestamp(), utc);
                    prop_assert_eq!(Event::decode(&event.encode(), 0), Ok(event));
                }
                (Ok(event), Err(e)) => prop_assert!(false, "{} accepted as {:?} but chrono says {}", ts, event, e),
                (Err(e), Ok(utc)) => {
                    prop_assert_eq!(e.field.as_str(), "timestamp");
                    prop_assert!(!timestamp_in_range(&utc), "{} in range but refused: {:?}", ts, e);
                }
                (Err(e), Err(_)) => prop_assert_eq!(e.field.as_str(), "timestamp"),
            }
        }

        /// A NUL anywhere in the content is refused naming `data.content`;
        /// any other character is fine.
        #[test]
        fn nul_in_content_is_refused(prefix in any_content(), suffix in "\\PC{0,20}") {
            let mut content: String = prefix.chars().take(100).collect();
            content.push('\0');
            content.push_str(&suffix);
            let body = serde_json::json!({"type": "NEW_MESSAGE", "timestamp": "2025-06-04T14:20:05Z",
                                          "data": {"id": MSG, "content": content, "conversation_id": CONV}});
            let err = parse(&body.to_string()).unwrap_err();
            prop_assert_eq!(err.field, "data.content");
        }
    }

    /// Instants of the accepted range with any precision, often at its ends.
    fn accepted_instant() -> impl Strategy<Value = DateTime<Utc>> {
        let min = DateTime::parse_from_rfc3339(MIN_TIMESTAMP)
            .unwrap()
            .timestamp();
        let max = DateTime::parse_from_rfc3339(MAX_TIMESTAMP)
            .unwrap()
            .timestamp();
        const DAY: i64 = 86_400;
        let secs = prop_oneof![
            3 => min..=max,
            1 => min..min + 2 * DAY,
            1 => max - 2 * DAY..=max,
            1 => Just(min),
            1 => Just(max),
        ];
        let nanos = prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|ms| ms * 1_000_000),
            (0u32..1_000_000).prop_map(|us| us * 1000),
            0u32..1_000_000_000,
            Just(999_999_999u32),
        ];
        (secs, nanos).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    /// Offsets RFC 3339 can write: whole minutes up to ±23:59.
    fn any_offset() -> impl Strategy<Value = chrono::FixedOffset> {
        prop_oneof![
            Just(0),
            Just(23 * 60 + 59),
            Just(-(23 * 60 + 59)),
            Just(1),
            Just(-1),
            -1439i32..=1439,
        ]
        .prop_map(|minutes| chrono::FixedOffset::east_opt(minutes * 60).unwrap())
    }

    /// Content without NUL: any other character (controls, non-BMP,
    /// quotes, backslashes), short or exactly the default limit in bytes.
    fn any_content() -> impl Strategy<Value = String> {
        let ch = any::<char>().prop_filter("no NUL", |c| *c != '\0');
        let short =
            proptest::collection::vec(ch.clone(), 0..64).prop_map(|v| v.into_iter().collect());
        let full = proptest::collection::vec(ch, 0..2048).prop_map(|v| {
            let mut s = String::with_capacity(DEFAULT_MAX_CONTENT_BYTES);
            for c in v {
                if s.len() + c.len_utf8() > DEFAULT_MAX_CONTENT_BYTES {
                    break;
                }
                s.push(c);
            }
            while s.len() < DEFAULT_MAX_CONTENT_BYTES {
                s.push('"');
            }
            s
        });
        prop_oneof![3 => short, 1 => full, 1 => Just("\u{1}\u{7f}\u{ffff}\u{10ffff}\\\"".to_owned())]
    }

    #[test]
    fn nul_content_is_refused_naming_the_content() {
        let body = format!(
            r#"{{"type":"NEW_MESSAGE","timestamp":"2025-06-04T14:20:05Z","data":{{"id":"{MSG}","content":"a\u0000b","conversation_id":"{CONV}"}}}}"#
        );
        let err = parse(&body).unwrap_err();
        assert_eq!(err.field, "data.content");
        assert!(err.error.contains("U+0000"), "{err:?}");
    }

    #[test]
    fn timestamp_range_ends_are_exact() {
        let ts = |t: &str| {
            parse(&format!(
                r#"{{"type":"NEW_CONVERSATION","timestamp":"{t}","data":{{"id":"{CONV}"}}}}"#
            ))
        };
        for ok in [
            MIN_TIMESTAMP,
            MAX_TIMESTAMP,
            "0001-01-01T00:00:00-00:01",
            "0001-01-01T23:59:00+23:59",
            "9999-12-31T23:59:59.999999999+00:00",
            "9999-12-31T00:00:00-23:59",
            "9999-12-31T23:58:59-00:01",
        ] {
            let e = ts(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(Event::decode(&e.encode(), 0).unwrap(), e, "{ok}");
        }
        for bad in [
            "0000-01-01T00:00:00+00:01",
            "9999-12-31T23:59:59-00:01",
            "0000-12-31T23:59:59.999999999Z",
            "0000-06-01T00:00:00Z",
            "0001-01-01T00:00:00+00:01",
            "0001-01-01T23:58:00+23:59",
            "9999-12-31T00:01:00-23:59",
        ] {
            assert_eq!(ts(bad).unwrap_err().field, "timestamp", "{bad}");
        }
    }
}
