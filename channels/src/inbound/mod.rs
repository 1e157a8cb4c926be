//! Inbound webhooks: each provider's authenticity check and its payload
//! normalised into [`Inbound`] items. Pure: the caller (ingest) hands over
//! the request as received.
//!
//! | provider | authenticity | dedupe key (→ [`crate::ids::inbound_message_id`]) |
//! |---|---|---|
//! | Telegram | `X-Telegram-Bot-Api-Secret-Token` equals `secretToken` | `{chat.id}:{message_id}` |
//! | WhatsApp Cloud | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(appSecret, raw body)>` | `wamid` |
//! | Twilio | `X-Twilio-Signature: base64(HMAC-SHA1(authToken, url + sorted form pairs))` | `MessageSid` |

use chrono::{DateTime, Utc};

use crate::channel::Channel;
use crate::ChannelType;

pub mod telegram;
pub mod twilio;
pub mod whatsapp;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Text.
    Text,
    /// A picture.
    Image,
    /// An audio file.
    Audio,
    /// A voice note.
    Voice,
    /// A video.
    Video,
    /// A file.
    Document,
    /// A sticker.
    Sticker,
    /// A location.
    Location,
    /// A shared contact card.
    Contact,
    /// Anything else the provider sends (kept, never dropped).
    Other,
}

impl MessageKind {
    /// As stored in `message_meta.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::Audio => "audio",
            MessageKind::Voice => "voice",
            MessageKind::Video => "video",
            MessageKind::Document => "document",
            MessageKind::Sticker => "sticker",
            MessageKind::Location => "location",
            MessageKind::Contact => "contact",
            MessageKind::Other => "other",
        }
    }
}

/// A contact's message, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// Who wrote it and where an answer goes: Telegram `chat.id`, WhatsApp
    /// `from` (`wa_id`), Twilio `From` (`+1555…` or `whatsapp:+1555…`).
    pub provider_user_id: String,
    /// The contact's name as the provider shows it, when it does.
    pub display_name: Option<String>,
    /// The provider's id of the message, unique per channel: Telegram
    /// `{chat.id}:{message_id}`, WhatsApp `wamid…`, Twilio `SM…`/`MM…`.
    pub provider_message_id: String,
    /// The provider's time of the message (Telegram `date`, WhatsApp
    /// `timestamp`); Twilio sends none: `None`, the caller uses arrival.
    pub timestamp: Option<DateTime<Utc>>,
    /// Its kind.
    pub kind: MessageKind,
    /// Its text, or a media message's caption; `None` when it has neither.
    pub text: Option<String>,
    /// The provider's media id (Telegram `file_id` of the largest photo,
    /// WhatsApp media `id`, Twilio `MediaUrl0`), for non-text messages.
    pub media_id: Option<String>,
    /// The media's MIME type, when the provider says.
    pub media_type: Option<String>,
}

/// A status a provider reports for a message chatpipe sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportedStatus {
    /// Accepted by the provider / the network.
    Sent,
    /// Reached the device.
    Delivered,
    /// Read.
    Read,
    /// Could not be delivered.
    Failed,
}

impl ReportedStatus {
    /// As stored in `delivery_receipts.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportedStatus::Sent => "sent",
            ReportedStatus::Delivered => "delivered",
            ReportedStatus::Read => "read",
            ReportedStatus::Failed => "failed",
        }
    }
}

/// A provider's status report for one of chatpipe's outbound messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The provider's id of the outbound message (what the send call
    /// returned: WhatsApp `wamid…`, Twilio `SM…`).
    pub provider_message_id: String,
    /// The status.
    pub status: ReportedStatus,
    /// When (the provider's time; Twilio: the caller's arrival time).
    pub at: Option<DateTime<Utc>>,
    /// Provider error code of a failure (WhatsApp `errors[0].code`, Twilio
    /// `ErrorCode`).
    pub code: Option<String>,
    /// Its explanation.
    pub reason: Option<String>,
}

/// One item of a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A contact's message.
    Message(InboundMessage),
    /// A delivery status of an outbound message.
    Status(StatusReport),
    /// Something the provider sends that chatpipe does not act on (a
    /// Telegram `callback_query`, an edited message, a WhatsApp `errors`
    /// notification…), with what it was; acknowledged and logged.
    Ignored(String),
}

/// A request as ingest received it.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The URL the provider called, as the provider saw it (scheme, host,
    /// path and query; Twilio signs it).
    pub url: &'a str,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The raw body, as received: every check runs over these bytes
    /// (Twilio posts a form, the others JSON).
    pub body: &'a [u8],
}

/// Why a webhook is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The authenticity check failed (→ `401`): `header` names what was
    /// missing or wrong.
    #[error("{reason}")]
    Unauthenticated {
        /// The header checked.
        header: &'static str,
        /// Why it failed (never the expected value).
        reason: String,
    },
    /// The body is not the provider's format (→ `400`), `field` naming
    /// where.
    #[error("{field}: {reason}")]
    Malformed {
        /// Where in the payload.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Verifies `request` as a webhook of `channel`, then normalises it.
/// The check runs over the raw body before anything is parsed.
///
/// WhatsApp Cloud: items addressed to another phone number than the
/// channel's `phoneNumberId` (one Meta app, one callback URL, several
/// numbers) become [`Inbound::Ignored`], see [`whatsapp::parse_for`].
pub fn verify_and_parse(
    channel: &Channel,
    request: &WebhookRequest<'_>,
) -> Result<Vec<Inbound>, InboundError> {
    match channel.kind() {
        ChannelType::Telegram => {
            telegram::verify(channel, request)?;
            telegram::parse(request.body)
        }
        ChannelType::WhatsappCloud => {
            whatsapp::verify(channel, request)?;
            whatsapp::parse_for(channel, request.body)
        }
        ChannelType::Twilio => {
            twilio::verify(channel, request)?;
            twilio::parse(request.body)
        }
    }
}

impl InboundError {
    /// A [`InboundError::Malformed`] at `field`.
    pub fn malformed(field: impl Into<String>, reason: impl Into<String>) -> InboundError {
        InboundError::Malformed {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`InboundError::Unauthenticated`] for `header`.
    pub fn unauthenticated(header: &'static str, reason: impl Into<String>) -> InboundError {
        InboundError::Unauthenticated {
            header,
            reason: reason.into(),
        }
    }
}

/// The value of header `name` (lower case), `None` when absent; a value
/// that is not visible ASCII is refused as [`InboundError::Unauthenticated`]
/// (every header read here is an authenticity header).
pub(crate) fn header<'a>(
    request: &WebhookRequest<'a>,
    name: &'static str,
) -> Result<Option<&'a str>, InboundError> {
    match request.headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| {
            InboundError::unauthenticated(name, format!("{name} is not visible ASCII"))
        }),
    }
}

/// Whether `a` equals `b`, in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A point in time from unix seconds, `None` when out of chrono's range.
pub(crate) fn from_unix_seconds(seconds: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(seconds, 0)
}

/// The text of a location message, the same for every provider:
/// `"{latitude},{longitude}"`, followed by ` {label}` when the provider
/// names the place.
pub(crate) fn location_text(latitude: f64, longitude: f64, label: Option<&str>) -> String {
    match label.map(str::trim).filter(|l| !l.is_empty()) {
        Some(label) => format!("{latitude},{longitude} {label}"),
        None => format!("{latitude},{longitude}"),
    }
}

/// The text of a shared contact, the same for every provider: the phone
/// number, then the name, whichever are present, separated by a space;
/// `None` when neither is.
pub(crate) fn contact_text(phone: Option<&str>, name: Option<&str>) -> Option<String> {
    let parts: Vec<&str> = [phone, name]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `Some(s)` unless `s` is empty or only whitespace.
pub(crate) fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).map(str::to_owned)
}

/// Reading a JSON payload field by field, each value carrying its path
/// (`entry[0].changes[1].value.messages[0].id`) so that an
/// [`InboundError::Malformed`] names where the payload is wrong.
pub(crate) mod json {
    use serde_json::Value;

    use super::InboundError;

    /// Parses `body` as JSON (→ `Malformed { field: "body" }`).
    pub(crate) fn parse(body: &[u8]) -> Result<Value, InboundError> {
        serde_json::from_slice(body)
            .map_err(|e| InboundError::malformed("body", format!("not JSON: {e}")))
    }

    /// A value inside a payload with its path.
    #[derive(Debug, Clone)]
    pub(crate) struct Node<'a> {
        value: &'a Value,
        path: String,
    }

    impl<'a> Node<'a> {
        /// The payload itself.
        pub(crate) fn root(value: &'a Value) -> Node<'a> {
            Node {
                value,
                path: String::new(),
            }
        }

        /// Where it is (`body` for the payload itself).
        pub(crate) fn path(&self) -> &str {
            if self.path.is_empty() {
                "body"
            } else {
                &self.path
            }
        }

        /// Its value.
        pub(crate) fn value(&self) -> &'a Value {
            self.value
        }

        /// A `Malformed` error about this value.
        pub(crate) fn malformed(&self, reason: impl Into<String>) -> InboundError {
            InboundError::malformed(self.path(), reason)
        }

        fn child_path(&self, key: &str) -> String {
            if self.path.is_empty() {
                key.to_owned()
            } else {
                format!("{}.{key}", self.path)
            }
        }

        /// Field `key`, `None` when absent or `null` (or when this is not
        /// an object).
        pub(crate) fn get(&self, key: &str) -> Option<Node<'a>> {
            match self.value.get(key) {
                None | Some(Value::Null) => None,
                Some(value) => Some(Node {
                    value,
                    path: self.child_path(key),
                }),
            }
        }

        /// Field `key`, which must be there.
        pub(crate) fn req(&self, key: &str) -> Result<Node<'a>, InboundError> {
            self.object()?;
            self.get(key)
                .ok_or_else(|| InboundError::malformed(self.child_path(key), "missing"))
        }

        /// This value's fields; an error unless it is an object.
        pub(crate) fn object(&self) -> Result<&'a serde_json::Map<String, Value>, InboundError> {
            self.value.as_object().ok_or_else(|| {
                self.malformed(format!("expected an object, got {}", kind(self.value)))
            })
        }

        /// This value as a string.
        pub(crate) fn str(&self) -> Result<&'a str, InboundError> {
            self.value.as_str().ok_or_else(|| {
                self.malformed(format!("expected a string, got {}", kind(self.value)))
            })
        }

        /// This value as an integer.
        pub(crate) fn i64(&self) -> Result<i64, InboundError> {
            self.value.as_i64().ok_or_else(|| {
                self.malformed(format!("expected an integer, got {}", kind(self.value)))
            })
        }

        /// This value as a number.
        pub(crate) fn f64(&self) -> Result<f64, InboundError> {
            self.value.as_f64().ok_or_else(|| {
                self.malformed(format!("expected a number, got {}", kind(self.value)))
            })
        }

        /// This value as a number, or as a string holding one (WhatsApp
        /// has sent coordinates both ways).
        pub(crate) fn f64_lenient(&self) -> Result<f64, InboundError> {
            match self.value {
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| self.malformed(format!("expected a number, got {s:?}"))),
                _ => self.f64(),
            }
        }

        /// Whether this value is `true`.
        pub(crate) fn is_true(&self) -> bool {
            self.value.as_bool() == Some(true)
        }

        /// Field `key` as a string, `None` when absent.
        pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, InboundError> {
            self.get(key).map(|n| n.str()).transpose()
        }

        /// Field `key` as a string, which must be there.
        pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, InboundError> {
            self.req(key)?.str()
        }

        /// This value's elements; an error unless it is an array.
        pub(crate) fn array(&self) -> Result<Vec<Node<'a>>, InboundError> {
            let items = self.value.as_array().ok_or_else(|| {
                self.malformed(format!("expected an array, got {}", kind(self.value)))
            })?;
            Ok(items
                .iter()
                .enumerate()
                .map(|(i, value)| Node {
                    value,
                    path: format!("{}[{i}]", self.path()),
                })
                .collect())
        }

        /// Field `key`'s elements, none when absent.
        pub(crate) fn opt_array(&self, key: &str) -> Result<Vec<Node<'a>>, InboundError> {
            match self.get(key) {
                None => Ok(Vec::new()),
                Some(node) => node.array(),
            }
        }
    }

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Helpers of the providers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::Value;

    use crate::channel::Channel;
    use crate::{ChannelDecl, ChannelType};

    /// A channel named `test` of `kind` with `credentials`.
    pub(crate) fn channel(kind: ChannelType, credentials: &[(&str, &str)]) -> Channel {
        Channel {
            decl: ChannelDecl {
                name: "test".into(),
                kind,
                api_base_url: None,
                webhook_url: None,
            },
            credentials: credentials
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Headers from pairs.
    pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            let value = http::HeaderValue::from_str(value).expect("test header value");
            map.append(*name, value);
        }
        map
    }

    /// Any JSON value, a few levels deep.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// How many values `value` holds, itself included.
    pub(crate) fn node_count(value: &Value) -> usize {
        1 + match value {
            Value::Array(items) => items.iter().map(node_count).sum(),
            Value::Object(map) => map.values().map(node_count).sum(),
            _ => 0,
        }
    }

    /// `value` with its `index`-th value (depth first, itself 0) replaced
    /// by `replacement`.
    pub(crate) fn replace_nth(value: &Value, index: usize, replacement: &Value) -> Value {
        fn walk(value: &mut Value, index: &mut usize, replacement: &Value) -> bool {
            if *index == 0 {
                *value = replacement.clone();
                return true;
            }
            *index -= 1;
            match value {
                Value::Array(items) => items.iter_mut().any(|v| walk(v, index, replacement)),
                Value::Object(map) => map.values_mut().any(|v| walk(v, index, replacement)),
                _ => false,
            }
        }
        let mut out = value.clone();
        let mut index = index;
        walk(&mut out, &mut index, replacement);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_texts() {
        assert_eq!(location_text(1.5, -2.25, None), "1.5,-2.25");
        assert_eq!(location_text(1.5, -2.25, Some("  ")), "1.5,-2.25");
        assert_eq!(location_text(1.5, -2.25, Some("Cafe")), "1.5,-2.25 Cafe");
        assert_eq!(
            contact_text(Some("+1555"), Some("Ann Lee")).as_deref(),
            Some("+1555 Ann Lee")
        );
        assert_eq!(contact_text(None, Some("Ann")).as_deref(), Some("Ann"));
        assert_eq!(contact_text(Some(""), None), None);
        assert_eq!(non_empty(Some(" ")), None);
        assert_eq!(non_empty(Some("a")).as_deref(), Some("a"));
    }

    #[test]
    fn json_paths_name_the_field() {
        let v: serde_json::Value = serde_json::json!({"a": [{"b": 1}, {"b": "x"}], "n": null});
        let root = json::Node::root(&v);
        let items = root.req("a").and_then(|a| a.array()).expect("array");
        assert_eq!(items[0].req("b").and_then(|b| b.i64()), Ok(1));
        assert_eq!(
            items[1].req("b").and_then(|b| b.i64()),
            Err(InboundError::malformed(
                "a[1].b",
                "expected an integer, got a string"
            ))
        );
        assert_eq!(
            root.req("n").err(),
            Some(InboundError::malformed("n", "missing"))
        );
        assert_eq!(
            root.req("zz").err(),
            Some(InboundError::malformed("zz", "missing"))
        );
        let s = serde_json::json!("x");
        assert_eq!(
            json::Node::root(&s).req("k").err(),
            Some(InboundError::malformed(
                "body",
                "expected an object, got a string"
            ))
        );
        assert!(json::parse(b"{").is_err());
    }

    #[test]
    fn replace_nth_visits_every_value() {
        let v = serde_json::json!({"a": [1, {"b": 2}], "c": 3});
        assert_eq!(testing::node_count(&v), 6);
        let r = testing::replace_nth(&v, 0, &serde_json::json!(null));
        assert_eq!(r, serde_json::json!(null));
        let changed: Vec<serde_json::Value> = (0..6)
            .map(|i| testing::replace_nth(&v, i, &serde_json::json!("X")))
            .collect();
        for (i, c) in changed.iter().enumerate() {
            assert_ne!(c, &v, "index {i} replaced nothing");
        }
    }
}
