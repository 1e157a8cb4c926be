//! WhatsApp Business Cloud API webhooks (Meta Graph API,
//! <https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/reference/messages>).
//!
//! **Authenticity.** Meta signs every POST with the app secret:
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(appSecret, raw body)>`;
//! the hex is compared in constant time, in either case. The subscription
//! check (a `GET` with `hub.mode=subscribe`, `hub.verify_token`,
//! `hub.challenge`) is answered by [`verification_challenge`].
//!
//! **Payload.** `{"object": "whatsapp_business_account", "entry": [{"changes":
//! [{"field": "messages", "value": {…}}]}]}`; one call may carry several
//! entries and changes. A `messages` change's value holds `metadata`
//! (`phone_number_id`, the business number it concerns), `contacts[]`
//! (`wa_id`, `profile.name`), `messages[]` (the users' messages) and
//! `statuses[]` (reports on the business's messages). Every message becomes
//! an [`Inbound::Message`] (nothing is dropped), every status an
//! [`Inbound::Status`]; everything else an [`Inbound::Ignored`]:
//!
//! | what | item |
//! |---|---|
//! | `object` other than `whatsapp_business_account` (the same app's Page or Instagram webhooks) | Ignored(`object …`) |
//! | `field` other than `messages` (`account_update`, `message_template_status_update`, …) | Ignored(the field) |
//! | a `messages` change with only `errors` | Ignored(`errors`) |
//! | a message of `type: system` (the user changed number or id) | Ignored(`system message`) |
//! | a status other than `sent`/`delivered`/`read`/`played`/`failed` | Ignored(`status …`) |
//! | with [`parse_for`]: a change for another `phone_number_id` than the channel's | Ignored(`phone_number_id …`) |
//!
//! Messages by `type`:
//!
//! | type | kind | text | media id / type |
//! |---|---|---|---|
//! | `text` | Text | `text.body` | — |
//! | `image` | Image | `image.caption` | `image.id` / `image.mime_type` |
//! | `audio` | Voice when `audio.voice` is true, else Audio | — | `audio.id` / `audio.mime_type` |
//! | `video` | Video | `video.caption` | `video.id` / `video.mime_type` |
//! | `document` | Document | `document.caption`, else `document.filename` | `document.id` / `document.mime_type` |
//! | `sticker` | Sticker | — | `sticker.id` / `sticker.mime_type` |
//! | `location` | Location | `"lat,lon"`, then `name` (else `address`) | — |
//! | `contacts` | Contact | per card: first phone, then `name.formatted_name`; cards joined by `; ` | — |
//! | `button` (a template's quick reply) | Text | `button.text` | — |
//! | `interactive` | Text | the `button_reply`/`list_reply` title or the `nfm_reply` body (Other when none) | — |
//! | `reaction` | Other | `reaction.emoji` (none when a reaction is removed) | — |
//! | anything else (`unsupported`, `order`, `request_welcome`, …) | Other | — | — |
//!
//! Ids: the contact is `from` (the `wa_id`); a user who hides the number
//! behind a username comes with only `from_user_id` (a business-scoped user
//! id), which is then used. The message id is its `wamid`, the time
//! `timestamp` (unix seconds, as a string). The display name is the
//! `contacts[]` entry of the same `wa_id` (or `user_id`).
//!
//! Statuses: `sent` → Sent, `delivered` → Delivered, `read` → Read,
//! `played` (a voice message was played, which implies read) → Read,
//! `failed` → Failed; the code is `errors[0].code`, the reason
//! `errors[0].title` with `error_data.details` (else `message`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::channel::Channel;
use crate::inbound::json::{self, Node};
use crate::inbound::{
    constant_time_eq, contact_text, from_unix_seconds, header, location_text, non_empty, Inbound,
    InboundError, InboundMessage, MessageKind, ReportedStatus, StatusReport, WebhookRequest,
};

/// The header Meta signs the body in.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The credential holding the Meta app secret (the HMAC key).
pub const APP_SECRET_CREDENTIAL: &str = "appSecret";

/// The credential holding the token the subscription check must echo.
pub const VERIFY_TOKEN_CREDENTIAL: &str = "verifyToken";

/// The credential holding the business phone number's id.
pub const PHONE_NUMBER_ID_CREDENTIAL: &str = "phoneNumberId";

/// The query parameter of the subscription check holding the token.
pub const VERIFY_TOKEN_PARAM: &str = "hub.verify_token";

/// The `object` of WhatsApp Business Account webhooks.
const OBJECT: &str = "whatsapp_business_account";

/// `sha256=` followed by the hex HMAC-SHA256 of `body` under `app_secret`,
/// as Meta sends it (tests and fakes sign with it).
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(app_secret, body).finalize().into_bytes())
    )
}

fn mac(app_secret: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(app_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(body);
    mac
}

/// Checks `X-Hub-Signature-256` against the raw body.
///
/// Fails closed: a channel without a (non-empty) `appSecret` accepts
/// nothing.
pub fn verify(channel: &Channel, request: &WebhookRequest<'_>) -> Result<(), InboundError> {
    let refuse = |reason: String| InboundError::unauthenticated(SIGNATURE_HEADER, reason);
    let secret = channel
        .credential(APP_SECRET_CREDENTIAL)
        .map_err(|e| refuse(e.to_string()))?;
    if secret.is_empty() {
        return Err(refuse(format!(
            "channel {:?} has an empty {APP_SECRET_CREDENTIAL:?} credential",
            channel.name()
        )));
    }
    let given = header(request, SIGNATURE_HEADER)?
        .ok_or_else(|| refuse(format!("{SIGNATURE_HEADER} header missing")))?;
    let hex_digest = given
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| refuse(format!("{SIGNATURE_HEADER} is not sha256=<hex>")))?;
    let digest = hex::decode(hex_digest)
        .map_err(|e| refuse(format!("{SIGNATURE_HEADER} is not hex: {e}")))?;
    // `verify_slice` compares in constant time and refuses other lengths.
    mac(secret, request.body)
        .verify_slice(&digest)
        .map_err(|_| refuse(format!("{SIGNATURE_HEADER} does not match the body")))
}

/// Answers Meta's subscription check, `GET
/// ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…` (`query` without
/// or with its leading `?`, percent-encoded): the challenge to answer with
/// `200`, when the mode is `subscribe` and the token equals the channel's
/// `verifyToken` (constant time).
pub fn verification_challenge(channel: &Channel, query: &str) -> Result<String, InboundError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "hub.mode" => mode = Some(value.into_owned()),
            "hub.verify_token" => token = Some(value.into_owned()),
            "hub.challenge" => challenge = Some(value.into_owned()),
            _ => {}
        }
    }
    match mode.as_deref() {
        Some("subscribe") => {}
        Some(other) => {
            return Err(InboundError::malformed(
                "hub.mode",
                format!("{other:?} is not \"subscribe\""),
            ))
        }
        None => return Err(InboundError::malformed("hub.mode", "missing")),
    }
    let refuse = |reason: String| InboundError::unauthenticated(VERIFY_TOKEN_PARAM, reason);
    let expected = channel
        .credential(VERIFY_TOKEN_CREDENTIAL)
        .map_err(|e| refuse(e.to_string()))?;
    if expected.is_empty() {
        return Err(refuse(format!(
            "channel {:?} has an empty {VERIFY_TOKEN_CREDENTIAL:?} credential",
            channel.name()
        )));
    }
    let token = token.ok_or_else(|| refuse(format!("{VERIFY_TOKEN_PARAM} missing")))?;
    if !constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(refuse(format!(
            "{VERIFY_TOKEN_PARAM} does not match the channel's verify token"
        )));
    }
    challenge.ok_or_else(|| InboundError::malformed("hub.challenge", "missing"))
}

/// Normalises a webhook body, whatever business number it concerns.
pub fn parse(body: &[u8]) -> Result<Vec<Inbound>, InboundError> {
    parse_filtered(body, None)
}

/// As [`parse`], for `channel`: a change whose `metadata.phone_number_id`
/// is not the channel's `phoneNumberId` credential (another number of the
/// same Meta app, whose callback URL is shared) becomes one
/// [`Inbound::Ignored`] instead of its messages and statuses; it is
/// authentic, so it is acknowledged, not refused. Without that credential
/// nothing is filtered.
pub fn parse_for(channel: &Channel, body: &[u8]) -> Result<Vec<Inbound>, InboundError> {
    let phone_number_id = channel
        .credential(PHONE_NUMBER_ID_CREDENTIAL)
        .ok()
        .filter(|id| !id.is_empty());
    parse_filtered(body, phone_number_id)
}

fn parse_filtered(
    body: &[u8],
    phone_number_id: Option<&str>,
) -> Result<Vec<Inbound>, InboundError> {
    let value = json::parse(body)?;
    let root = Node::root(&value);
    let object = root.req_str("object")?;
    if object != OBJECT {
        return Ok(vec![Inbound::Ignored(format!("object {object}"))]);
    }
    let mut items = Vec::new();
    for entry in root.req("entry")?.array()? {
        for change in entry.opt_array("changes")? {
            parse_change(&change, phone_number_id, &mut items)?;
        }
    }
    Ok(items)
}

fn parse_change(
    change: &Node<'_>,
    phone_number_id: Option<&str>,
    items: &mut Vec<Inbound>,
) -> Result<(), InboundError> {
    let field = change.req_str("field")?;
    if field != "messages" {
        items.push(Inbound::Ignored(field.to_owned()));
        return Ok(());
    }
    let value = change.req("value")?;
    if let Some(expected) = phone_number_id {
        let metadata = value.req("metadata")?;
        let got = metadata.req_str("phone_number_id")?;
        if got != expected {
            items.push(Inbound::Ignored(format!("phone_number_id {got}")));
            return Ok(());
        }
    }
    let contacts = value
        .opt_array("contacts")?
        .iter()
        .map(Contact::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let messages = value.opt_array("messages")?;
    let statuses = value.opt_array("statuses")?;
    for message in &messages {
        items.push(parse_message(message, &contacts)?);
    }
    for status in &statuses {
        items.push(parse_status(status)?);
    }
    if messages.is_empty() && statuses.is_empty() {
        let what = if value.get("errors").is_some() {
            "errors"
        } else {
            "messages change without messages or statuses"
        };
        items.push(Inbound::Ignored(what.to_owned()));
    }
    Ok(())
}

/// A `contacts[]` entry: who wrote, as WhatsApp shows them.
struct Contact<'a> {
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Contact<'a> {
    fn parse(node: &Node<'a>) -> Result<Contact<'a>, InboundError> {
        Ok(Contact {
            wa_id: node.opt_str("wa_id")?,
            user_id: node.opt_str("user_id")?,
            name: match node.get("profile") {
                Some(profile) => profile.opt_str("name")?,
                None => None,
            },
        })
    }
}

/// Unix seconds as WhatsApp sends them: a string (or a number).
fn unix_time(node: &Node<'_>) -> Result<chrono::DateTime<chrono::Utc>, InboundError> {
    let seconds = match node.value() {
        serde_json::Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|e| node.malformed(format!("not unix seconds: {e}")))?,
        _ => node.i64()?,
    };
    from_unix_seconds(seconds).ok_or_else(|| node.malformed("out of range"))
}

fn parse_message(message: &Node<'_>, contacts: &[Contact<'_>]) -> Result<Inbound, InboundError> {
    let kind = message.req_str("type")?;
    if kind == "system" {
        return Ok(Inbound::Ignored("system message".to_owned()));
    }
    let id = message.req_str("id")?;
    let from = message.opt_str("from")?;
    let from_user_id = message.opt_str("from_user_id")?;
    let provider_user_id = from
        .or(from_user_id)
        .ok_or_else(|| InboundError::malformed(format!("{}.from", message.path()), "missing"))?;
    let display_name = contacts
        .iter()
        .find(|c| {
            (from.is_some() && c.wa_id == from)
                || (from_user_id.is_some() && c.user_id == from_user_id)
        })
        .and_then(|c| non_empty(c.name));
    let timestamp = unix_time(&message.req("timestamp")?)?;
    let content = parse_content(message, kind)?;
    Ok(Inbound::Message(InboundMessage {
        provider_user_id: provider_user_id.to_owned(),
        display_name,
        provider_message_id: id.to_owned(),
        timestamp: Some(timestamp),
        kind: content.kind,
        text: content.text,
        media_id: content.media_id,
        media_type: content.media_type,
    }))
}

/// What a message holds.
struct Content {
    kind: MessageKind,
    text: Option<String>,
    media_id: Option<String>,
    media_type: Option<String>,
}

impl Content {
    fn new(kind: MessageKind, text: Option<String>) -> Content {
        Content {
            kind,
            text,
            media_id: None,
            media_type: None,
        }
    }

    /// A media message: `id` and `mime_type` of its media object.
    fn media(
        kind: MessageKind,
        media: &Node<'_>,
        text: Option<String>,
    ) -> Result<Content, InboundError> {
        Ok(Content {
            kind,
            text,
            media_id: Some(media.req_str("id")?.to_owned()),
            media_type: media.opt_str("mime_type")?.map(str::to_owned),
        })
    }
}

fn parse_content(message: &Node<'_>, kind: &str) -> Result<Content, InboundError> {
    Ok(match kind {
        "text" => {
            let text = message.req("text")?;
            Content::new(MessageKind::Text, Some(text.req_str("body")?.to_owned()))
        }
        "image" | "video" | "sticker" => {
            let media = message.req(kind)?;
            let kind = match kind {
                "image" => MessageKind::Image,
                "video" => MessageKind::Video,
                _ => MessageKind::Sticker,
            };
            let caption = non_empty(media.opt_str("caption")?);
            Content::media(kind, &media, caption)?
        }
        "audio" => {
            let audio = message.req("audio")?;
            let voice = audio.get("voice").is_some_and(|v| v.is_true());
            let kind = if voice {
                MessageKind::Voice
            } else {
                MessageKind::Audio
            };
            Content::media(kind, &audio, None)?
        }
        "document" => {
            let document = message.req("document")?;
            let text = non_empty(document.opt_str("caption")?)
                .or(non_empty(document.opt_str("filename")?));
            Content::media(MessageKind::Document, &document, text)?
        }
        "location" => {
            let location = message.req("location")?;
            let latitude = location.req("latitude")?.f64_lenient()?;
            let longitude = location.req("longitude")?.f64_lenient()?;
            let label =
                non_empty(location.opt_str("name")?).or(non_empty(location.opt_str("address")?));
            Content::new(
                MessageKind::Location,
                Some(location_text(latitude, longitude, label.as_deref())),
            )
        }
        "contacts" => {
            let mut cards = Vec::new();
            for card in message.req("contacts")?.array()? {
                let phone = match card.opt_array("phones")?.first() {
                    Some(phone) => phone.opt_str("phone")?,
                    None => None,
                };
                let name = match card.get("name") {
                    Some(name) => name.opt_str("formatted_name")?,
                    None => None,
                };
                cards.extend(contact_text(phone, name));
            }
            Content::new(
                MessageKind::Contact,
                (!cards.is_empty()).then(|| cards.join("; ")),
            )
        }
        "button" => {
            let button = message.req("button")?;
            Content::new(MessageKind::Text, non_empty(button.opt_str("text")?))
        }
        "interactive" => {
            let interactive = message.req("interactive")?;
            let mut text = None;
            for (reply, field) in [
                ("button_reply", "title"),
                ("list_reply", "title"),
                ("nfm_reply", "body"),
            ] {
                if let Some(reply) = interactive.get(reply) {
                    text = non_empty(reply.opt_str(field)?);
                    break;
                }
            }
            match text {
                Some(text) => Content::new(MessageKind::Text, Some(text)),
                None => Content::new(MessageKind::Other, None),
            }
        }
        "reaction" => {
            let emoji = match message.get("reaction") {
                Some(reaction) => non_empty(reaction.opt_str("emoji")?),
                None => None,
            };
            Content::new(MessageKind::Other, emoji)
        }
        _ => Content::new(MessageKind::Other, None),
    })
}

fn parse_status(status: &Node<'_>) -> Result<Inbound, InboundError> {
    let id = status.req_str("id")?;
    let name = status.req_str("status")?;
    let reported = match name {
        "sent" => ReportedStatus::Sent,
        "delivered" => ReportedStatus::Delivered,
        "read" | "played" => ReportedStatus::Read,
        "failed" => ReportedStatus::Failed,
        other => return Ok(Inbound::Ignored(format!("status {other}"))),
    };
    let at = match status.get("timestamp") {
        Some(t) => Some(unix_time(&t)?),
        None => None,
    };
    let (code, reason) = match status.opt_array("errors")?.first() {
        Some(error) => status_error(error)?,
        None => (None, None),
    };
    Ok(Inbound::Status(StatusReport {
        provider_message_id: id.to_owned(),
        status: reported,
        at,
        code,
        reason,
    }))
}

/// `(code, reason)` of an `errors[]` entry.
fn status_error(error: &Node<'_>) -> Result<(Option<String>, Option<String>), InboundError> {
    let code = match error.get("code") {
        None => None,
        Some(code) => match code.value() {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) => Some(s.clone()),
            _ => return Err(code.malformed("expected a number")),
        },
    };
    let title = non_empty(error.opt_str("title")?);
    let details = match error.get("error_data") {
        Some(data) => non_empty(data.opt_str("details")?),
        None => None,
    };
    let details = details.or(non_empty(error.opt_str("message")?));
    let reason = match (title, details) {
        (Some(title), Some(details)) if title != details => Some(format!("{title}: {details}")),
        (Some(title), _) => Some(title),
        (None, details) => details,
    };
    Ok((code, reason))
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::inbound::testing::{arb_json, channel, headers, node_count, replace_nth};
    use crate::ChannelType;

    /// Meta's sample text message (messages webhook reference).
    fn text_sample() -> Value {
        json!({
          "object": "whatsapp_business_account",
          "entry": [{
            "id": "102290129340398",
            "changes": [{
              "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
                "messages": [{
                  "from": "16505551234",
                  "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
                  "timestamp": "1749416383",
                  "type": "text",
                  "text": {"body": "Does it come in another color?"}
                }]
              },
              "field": "messages"
            }]
          }]
        })
    }

    /// The text sample with its message replaced by `message` (keeping
    /// `from`, `id`, `timestamp`).
    fn with_message(message: Value) -> Value {
        let mut v = text_sample();
        let m = &mut v["entry"][0]["changes"][0]["value"]["messages"][0];
        let Some(obj) = m.as_object_mut() else {
            unreachable!()
        };
        obj.remove("text");
        if let Value::Object(extra) = message {
            obj.extend(extra);
        }
        v
    }

    /// Meta's status samples: `status` with `errors`.
    fn status_sample(status: &str, errors: Option<Value>) -> Value {
        let mut s = json!({
            "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjMxMDFBMEJFQTRBNzYA",
            "status": status,
            "timestamp": "1750263773",
            "recipient_id": "16505551234",
            "pricing": {"billable": true, "pricing_model": "PMP", "category": "utility", "type": "regular"}
        });
        if let Some(errors) = errors {
            s["errors"] = errors;
        }
        json!({
          "object": "whatsapp_business_account",
          "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [s]
          }}]}]
        })
    }

    fn items(v: &Value) -> Vec<Inbound> {
        parse(v.to_string().as_bytes()).expect("parses")
    }

    fn only_message(v: &Value) -> InboundMessage {
        match items(v).as_slice() {
            [Inbound::Message(m)] => m.clone(),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    fn content(m: &InboundMessage) -> (MessageKind, Option<&str>, Option<&str>, Option<&str>) {
        (
            m.kind,
            m.text.as_deref(),
            m.media_id.as_deref(),
            m.media_type.as_deref(),
        )
    }

    #[test]
    fn text_message() {
        assert_eq!(
            only_message(&text_sample()),
            InboundMessage {
                provider_user_id: "16505551234".into(),
                display_name: Some("Sheena Nelson".into()),
                provider_message_id:
                    "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=".into(),
                timestamp: Some(Utc.timestamp_opt(1749416383, 0).single().expect("valid")),
                kind: MessageKind::Text,
                text: Some("Does it come in another color?".into()),
                media_id: None,
                media_type: None,
            }
        );
    }

    #[test]
    fn every_kind() {
        let cases = [
            (
                json!({"type": "image", "image": {"caption": "the red one", "mime_type": "image/jpeg",
                       "sha256": "QMe/zC+/4MVm8lXBV8fHZv4QK4yv3cMkZ+ViJpKfmSw=", "id": "1003383421387256"}}),
                (
                    MessageKind::Image,
                    Some("the red one"),
                    Some("1003383421387256"),
                    Some("image/jpeg"),
                ),
            ),
            (
                json!({"type": "audio", "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": "x",
                       "id": "1003383421387257", "voice": true}}),
                (
                    MessageKind::Voice,
                    None,
                    Some("1003383421387257"),
                    Some("audio/ogg; codecs=opus"),
                ),
            ),
            (
                json!({"type": "audio", "audio": {"mime_type": "audio/mpeg", "sha256": "x", "id": "a2", "voice": false}}),
                (MessageKind::Audio, None, Some("a2"), Some("audio/mpeg")),
            ),
            (
                json!({"type": "video", "video": {"mime_type": "video/mp4", "sha256": "x", "id": "v1", "caption": "look"}}),
                (
                    MessageKind::Video,
                    Some("look"),
                    Some("v1"),
                    Some("video/mp4"),
                ),
            ),
            (
                json!({"type": "document", "document": {"filename": "invoice.pdf", "mime_type": "application/pdf",
                       "sha256": "x", "id": "d1"}}),
                (
                    MessageKind::Document,
                    Some("invoice.pdf"),
                    Some("d1"),
                    Some("application/pdf"),
                ),
            ),
            (
                json!({"type": "document", "document": {"caption": "here", "filename": "invoice.pdf",
                       "mime_type": "application/pdf", "sha256": "x", "id": "d2"}}),
                (
                    MessageKind::Document,
                    Some("here"),
                    Some("d2"),
                    Some("application/pdf"),
                ),
            ),
            (
                json!({"type": "sticker", "sticker": {"mime_type": "image/webp", "sha256": "x", "id": "s1", "animated": false}}),
                (MessageKind::Sticker, None, Some("s1"), Some("image/webp")),
            ),
            (
                json!({"type": "location", "location": {"address": "1 Hacker Way, Menlo Park, CA 94025",
                       "latitude": 37.483253479003906, "longitude": -122.14960479736328, "name": "Meta Headquarters",
                       "url": "https://meta.com"}}),
                (
                    MessageKind::Location,
                    Some("37.483253479003906,-122.14960479736328 Meta Headquarters"),
                    None,
                    None,
                ),
            ),
            (
                json!({"type": "location", "location": {"latitude": "1.5", "longitude": "2"}}),
                (MessageKind::Location, Some("1.5,2"), None, None),
            ),
            (
                json!({"type": "contacts", "contacts": [
                    {"name": {"formatted_name": "Barbara J. Johnson", "first_name": "Barbara"},
                     "phones": [{"phone": "+1 (940) 555-1234", "type": "HOME", "wa_id": "19405551234"}]},
                    {"name": {"formatted_name": "Ann"}}
                ]}),
                (
                    MessageKind::Contact,
                    Some("+1 (940) 555-1234 Barbara J. Johnson; Ann"),
                    None,
                    None,
                ),
            ),
            (
                json!({"type": "button", "button": {"payload": "STOP", "text": "Stop promotions"}}),
                (MessageKind::Text, Some("Stop promotions"), None, None),
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "button_reply",
                       "button_reply": {"id": "yes", "title": "Yes please"}}}),
                (MessageKind::Text, Some("Yes please"), None, None),
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "list_reply",
                       "list_reply": {"id": "r1", "title": "Red", "description": "the red one"}}}),
                (MessageKind::Text, Some("Red"), None, None),
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "nfm_reply",
                       "nfm_reply": {"name": "flow", "body": "Sent", "response_json": "{}"}}}),
                (MessageKind::Text, Some("Sent"), None, None),
            ),
            (
                json!({"type": "interactive", "interactive": {"type": "call_permission_reply"}}),
                (MessageKind::Other, None, None, None),
            ),
            (
                json!({"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}}),
                (MessageKind::Other, Some("👍"), None, None),
            ),
            (
                json!({"type": "reaction", "reaction": {"message_id": "wamid.X"}}),
                (MessageKind::Other, None, None, None),
            ),
            (
                json!({"type": "unsupported", "errors": [{"code": 131051, "title": "Message type unknown"}],
                       "unsupported": {"type": "edit"}}),
                (MessageKind::Other, None, None, None),
            ),
            (
                json!({"type": "order", "order": {"catalog_id": "1", "product_items": []}}),
                (MessageKind::Other, None, None, None),
            ),
        ];
        for (message, expected) in cases {
            let m = only_message(&with_message(message.clone()));
            assert_eq!(content(&m), expected, "{message}");
            assert_eq!(m.provider_user_id, "16505551234");
        }
    }

    #[test]
    fn username_users_are_their_business_scoped_id() {
        let mut v = text_sample();
        let value = &mut v["entry"][0]["changes"][0]["value"];
        value["contacts"] =
            json!([{"profile": {"name": "Bob"}, "user_id": "US.13491208655302741918"}]);
        let Some(m) = value["messages"][0].as_object_mut() else {
            unreachable!()
        };
        m.remove("from");
        m.insert("from_user_id".into(), json!("US.13491208655302741918"));
        let m = only_message(&v);
        assert_eq!(m.provider_user_id, "US.13491208655302741918");
        assert_eq!(m.display_name.as_deref(), Some("Bob"));
    }

    #[test]
    fn system_messages_and_other_fields_are_ignored() {
        let system = with_message(json!({"type": "system", "system": {
            "body": "User A changed from 1 to 2", "wa_id": "2", "type": "user_changed_number"}}));
        assert_eq!(
            items(&system),
            vec![Inbound::Ignored("system message".into())]
        );
        let template = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "time": 1, "changes": [
            {"field": "message_template_status_update", "value": {"event": "APPROVED", "message_template_id": 1}}]}]});
        assert_eq!(
            items(&template),
            vec![Inbound::Ignored("message_template_status_update".into())]
        );
        let page = json!({"object": "page", "entry": []});
        assert_eq!(items(&page), vec![Inbound::Ignored("object page".into())]);
        let errors = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "1"},
                      "errors": [{"code": 130429, "title": "Rate limit hit"}]}}]}]});
        assert_eq!(items(&errors), vec![Inbound::Ignored("errors".into())]);
    }

    #[test]
    fn statuses() {
        let at = Some(Utc.timestamp_opt(1750263773, 0).single().expect("valid"));
        let report = |status, code: Option<&str>, reason: Option<&str>| {
            Inbound::Status(StatusReport {
                provider_message_id: "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjMxMDFBMEJFQTRBNzYA"
                    .into(),
                status,
                at,
                code: code.map(Into::into),
                reason: reason.map(Into::into),
            })
        };
        for (name, status) in [
            ("sent", ReportedStatus::Sent),
            ("delivered", ReportedStatus::Delivered),
            ("read", ReportedStatus::Read),
            ("played", ReportedStatus::Read),
        ] {
            assert_eq!(
                items(&status_sample(name, None)),
                vec![report(status, None, None)],
                "{name}"
            );
        }
        let failed = status_sample(
            "failed",
            Some(json!([{
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
            }])),
        );
        assert_eq!(
            items(&failed),
            vec![report(
                ReportedStatus::Failed,
                Some("131047"),
                Some("Re-engagement message: Message failed to send because more than 24 hours have passed since the customer last replied to this number.")
            )]
        );
        let terse = status_sample(
            "failed",
            Some(json!([{"code": 131026, "title": "Message undeliverable"}])),
        );
        assert_eq!(
            items(&terse),
            vec![report(
                ReportedStatus::Failed,
                Some("131026"),
                Some("Message undeliverable")
            )]
        );
        let failed_bare = status_sample("failed", None);
        assert_eq!(
            items(&failed_bare),
            vec![report(ReportedStatus::Failed, None, None)]
        );
        assert_eq!(
            items(&status_sample("deleted", None)),
            vec![Inbound::Ignored("status deleted".into())]
        );
    }

    #[test]
    fn several_entries_and_changes_keep_their_order() {
        let mut v = text_sample();
        let status = status_sample("read", None)["entry"][0]["changes"][0].clone();
        let Some(changes) = v["entry"][0]["changes"].as_array_mut() else {
            unreachable!()
        };
        changes.push(status);
        let Some(entries) = v["entry"].as_array_mut() else {
            unreachable!()
        };
        entries.push(json!({"id": "2", "changes": [{"field": "account_update", "value": {}}]}));
        let got = items(&v);
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0], Inbound::Message(_)));
        assert!(matches!(got[1], Inbound::Status(_)));
        assert_eq!(got[2], Inbound::Ignored("account_update".into()));
    }

    #[test]
    fn other_phone_numbers_are_ignored_for_a_channel() {
        let body = text_sample().to_string();
        let ours = channel(
            ChannelType::WhatsappCloud,
            &[("phoneNumberId", "106540352242922")],
        );
        assert!(matches!(
            parse_for(&ours, body.as_bytes()).as_deref(),
            Ok([Inbound::Message(_)])
        ));
        let other = channel(ChannelType::WhatsappCloud, &[("phoneNumberId", "999")]);
        assert_eq!(
            parse_for(&other, body.as_bytes()),
            Ok(vec![Inbound::Ignored(
                "phone_number_id 106540352242922".into()
            )])
        );
        let unset = channel(ChannelType::WhatsappCloud, &[]);
        assert!(matches!(
            parse_for(&unset, body.as_bytes()).as_deref(),
            Ok([Inbound::Message(_)])
        ));
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let err = |v: Value| match parse(v.to_string().as_bytes()) {
            Err(InboundError::Malformed { field, .. }) => field,
            other => panic!("{v}: expected malformed, got {other:?}"),
        };
        assert_eq!(err(json!({"entry": []})), "object");
        assert_eq!(err(json!({"object": "whatsapp_business_account"})), "entry");
        let mut v = text_sample();
        v["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = json!("yesterday");
        assert_eq!(err(v), "entry[0].changes[0].value.messages[0].timestamp");
        let mut v = text_sample();
        if let Some(m) = v["entry"][0]["changes"][0]["value"]["messages"][0].as_object_mut() {
            m.remove("from");
        }
        assert_eq!(err(v), "entry[0].changes[0].value.messages[0].from");
        let v = with_message(json!({"type": "image", "image": {"mime_type": "image/jpeg"}}));
        assert_eq!(err(v), "entry[0].changes[0].value.messages[0].image.id");
        assert!(matches!(
            parse(b"\xff"),
            Err(InboundError::Malformed { .. })
        ));
    }

    fn wa_channel() -> Channel {
        channel(
            ChannelType::WhatsappCloud,
            &[
                ("appSecret", "8a4ad5fbd43d5d3ec7c6b5d0c9a0e2f1"),
                ("verifyToken", "my verify token"),
                ("phoneNumberId", "106540352242922"),
            ],
        )
    }

    fn check(channel: &Channel, signature: Option<&str>, body: &[u8]) -> Result<(), InboundError> {
        let headers = match signature {
            Some(s) => headers(&[("X-Hub-Signature-256", s)]),
            None => headers(&[]),
        };
        verify(
            channel,
            &WebhookRequest {
                url: "https://hooks.example.com/channels/wa/webhook",
                headers: &headers,
                body,
            },
        )
    }

    #[test]
    fn signature_known_answer() {
        // HMAC-SHA256 test case 2 of RFC 4231: key "Jefe".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signature_accept_and_reject() {
        let c = wa_channel();
        let body = text_sample().to_string();
        let good = signature("8a4ad5fbd43d5d3ec7c6b5d0c9a0e2f1", body.as_bytes());
        assert_eq!(check(&c, Some(&good), body.as_bytes()), Ok(()));
        let upper = format!("sha256={}", good["sha256=".len()..].to_uppercase());
        assert_eq!(
            check(&c, Some(&upper), body.as_bytes()),
            Ok(()),
            "uppercase hex"
        );

        let tampered = body.replace("another color", "another colour");
        let wrong_secret = signature("another secret", body.as_bytes());
        let cases: Vec<(Option<&str>, &[u8])> = vec![
            (Some(&good), tampered.as_bytes()),
            (Some(&wrong_secret), body.as_bytes()),
            (None, body.as_bytes()),
            (Some(""), body.as_bytes()),
            (Some(&good["sha256=".len()..]), body.as_bytes()),
            (Some("sha1=0123"), body.as_bytes()),
            (Some("sha256=zz"), body.as_bytes()),
            (Some(&good[..good.len() - 2]), body.as_bytes()),
        ];
        for (sig, body) in cases {
            match check(&c, sig, body) {
                Err(InboundError::Unauthenticated { header, .. }) => {
                    assert_eq!(header, SIGNATURE_HEADER)
                }
                other => panic!("{sig:?}: expected unauthenticated, got {other:?}"),
            }
        }
        let no_secret = channel(ChannelType::WhatsappCloud, &[("appSecret", "")]);
        let empty_key_signature = signature("", body.as_bytes());
        assert!(check(&no_secret, Some(&empty_key_signature), body.as_bytes()).is_err());
    }

    #[test]
    fn subscription_check() {
        let c = wa_channel();
        assert_eq!(
            verification_challenge(
                &c,
                "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=my+verify%20token"
            ),
            Ok("1158201444".into())
        );
        assert_eq!(
            verification_challenge(
                &c,
                "?hub.verify_token=my%20verify%20token&hub.challenge=a%26b&hub.mode=subscribe"
            ),
            Ok("a&b".into())
        );
        let unauthenticated = |q: &str| {
            matches!(verification_challenge(&c, q),
                Err(InboundError::Unauthenticated { header, .. }) if header == VERIFY_TOKEN_PARAM)
        };
        assert!(unauthenticated(
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=my+verify+tokeN"
        ));
        assert!(unauthenticated("hub.mode=subscribe&hub.challenge=1"));
        assert_eq!(
            verification_challenge(
                &c,
                "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=my+verify+token"
            ),
            Err(InboundError::malformed(
                "hub.mode",
                "\"unsubscribe\" is not \"subscribe\""
            ))
        );
        assert_eq!(
            verification_challenge(&c, "hub.mode=subscribe&hub.verify_token=my+verify+token"),
            Err(InboundError::malformed("hub.challenge", "missing"))
        );
    }

    fn samples() -> Vec<Value> {
        vec![
            text_sample(),
            status_sample(
                "failed",
                Some(json!([{"code": 1, "title": "t", "error_data": {"details": "d"}}])),
            ),
            with_message(json!({"type": "location", "location": {"latitude": 1, "longitude": 2}})),
            with_message(
                json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "A"}, "phones": [{"phone": "1"}]}]}),
            ),
            with_message(
                json!({"type": "interactive", "interactive": {"list_reply": {"title": "x"}}}),
            ),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body);
        }

        #[test]
        fn never_panics_on_json(value in arb_json()) {
            let _ = parse(value.to_string().as_bytes());
        }

        #[test]
        fn never_panics_on_mutated_samples(sample in 0usize..5, at in any::<prop::sample::Index>(), replacement in arb_json()) {
            let samples = samples();
            let base = &samples[sample];
            let mutated = replace_nth(base, at.index(node_count(base)), &replacement);
            let _ = parse(mutated.to_string().as_bytes());
        }

        /// A signature over the exact body verifies; any change of the body
        /// or the secret does not.
        #[test]
        fn signature_round_trip(
            secret in "[ -~]{1,40}",
            body in prop::collection::vec(any::<u8>(), 0..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let c = channel(ChannelType::WhatsappCloud, &[("appSecret", &secret)]);
            let sig = signature(&secret, &body);
            prop_assert_eq!(check(&c, Some(&sig), &body), Ok(()));
            let mut tampered = body.clone();
            if tampered.is_empty() {
                tampered.push(0);
            } else {
                let i = flip.index(tampered.len());
                tampered[i] ^= 1 << bit;
            }
            prop_assert!(check(&c, Some(&sig), &tampered).is_err());
            let other = channel(ChannelType::WhatsappCloud, &[("appSecret", &format!("{secret}x"))]);
            prop_assert!(check(&other, Some(&sig), &body).is_err());
        }
    }
}
