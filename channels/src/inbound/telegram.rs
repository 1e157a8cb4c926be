//! Telegram Bot API webhooks (<https://core.telegram.org/bots/api#update>).
//!
//! **Authenticity.** `setWebhook` is called with a `secret_token`; Telegram
//! sends it back in `X-Telegram-Bot-Api-Secret-Token` on every call. It must
//! equal the channel's `secretToken` credential (compared in constant time).
//!
//! **Payload.** One [`Update`](https://core.telegram.org/bots/api#update)
//! per call, holding at most one of its optional fields:
//!
//! | field | item |
//! |---|---|
//! | `message`, `channel_post` | [`Inbound::Message`] |
//! | `edited_message`, `edited_channel_post`, `callback_query`, `my_chat_member`, … (any other) | [`Inbound::Ignored`] with the field's name |
//!
//! A message is never dropped; its kind comes from the first of these
//! fields it has:
//!
//! | field | kind | text | media id / type |
//! |---|---|---|---|
//! | `text` | Text | `text` | — |
//! | `photo` | Image | `caption` | `file_id` of the last (largest) size / — (Telegram does not say) |
//! | `voice` | Voice | `caption` | `file_id` / `mime_type` |
//! | `audio` | Audio | `caption` | `file_id` / `mime_type` |
//! | `video` | Video | `caption` | `file_id` / `mime_type` |
//! | `video_note` | Video | — | `file_id` / — |
//! | `animation` | Video (a GIF or a soundless MPEG-4; checked before `document`, which Telegram also sets for it) | `caption` | `file_id` / `mime_type` |
//! | `document` | Document | `caption`, else `file_name` | `file_id` / `mime_type` |
//! | `sticker` | Sticker | its `emoji` | `file_id` / `image/webp`, `application/x-tgsticker` (animated) or `video/webm` (video) |
//! | `location` (also set for a `venue`) | Location | `"lat,lon"`, then the venue's title | — |
//! | `contact` | Contact | phone number, then first and last name | — |
//! | anything else (service messages, polls, dice, games, stories…) | Other | — | — |
//!
//! Ids: the contact is the chat (`chat.id`, so a group is one contact and
//! answers go back to it); the message is `"{chat.id}:{message_id}"`
//! (`message_id` is unique only within its chat); its time is `date` (unix
//! seconds). The display name is the sender's `first_name last_name`,
//! else the chat's `title` (groups, channels), else a `username`.

use crate::channel::Channel;
use crate::inbound::json::{self, Node};
use crate::inbound::{
    constant_time_eq, contact_text, from_unix_seconds, header, location_text, non_empty, Inbound,
    InboundError, InboundMessage, MessageKind, WebhookRequest,
};

/// The header Telegram sends the webhook's `secret_token` in.
pub const SECRET_TOKEN_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The credential holding the `secret_token` given to `setWebhook`.
pub const SECRET_TOKEN_CREDENTIAL: &str = "secretToken";

/// The Update fields that carry a message chatpipe answers.
const MESSAGE_FIELDS: [&str; 2] = ["message", "channel_post"];

/// Checks that the request carries the channel's secret token.
///
/// Fails closed: a channel without a (non-empty) `secretToken` accepts
/// nothing.
pub fn verify(channel: &Channel, request: &WebhookRequest<'_>) -> Result<(), InboundError> {
    let expected = channel
        .credential(SECRET_TOKEN_CREDENTIAL)
        .map_err(|e| InboundError::unauthenticated(SECRET_TOKEN_HEADER, e.to_string()))?;
    if expected.is_empty() {
        return Err(InboundError::unauthenticated(
            SECRET_TOKEN_HEADER,
            format!(
                "channel {:?} has an empty {SECRET_TOKEN_CREDENTIAL:?} credential",
                channel.name()
            ),
        ));
    }
    let Some(given) = header(request, SECRET_TOKEN_HEADER)? else {
        return Err(InboundError::unauthenticated(
            SECRET_TOKEN_HEADER,
            format!("{SECRET_TOKEN_HEADER} header missing"),
        ));
    };
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(InboundError::unauthenticated(
            SECRET_TOKEN_HEADER,
            format!("{SECRET_TOKEN_HEADER} does not match the channel's secret token"),
        ))
    }
}

/// Normalises one Update: one item, a message or what was ignored.
pub fn parse(body: &[u8]) -> Result<Vec<Inbound>, InboundError> {
    let value = json::parse(body)?;
    let update = Node::root(&value);
    // Every Update has its id; without one this is not Telegram's format.
    update.req("update_id")?.i64()?;
    for field in MESSAGE_FIELDS {
        if let Some(message) = update.get(field) {
            return Ok(vec![Inbound::Message(parse_message(&message)?)]);
        }
    }
    let other = update
        .object()?
        .iter()
        .find(|(key, value)| key.as_str() != "update_id" && !value.is_null())
        .map(|(key, _)| key.clone())
        .unwrap_or_else(|| "update without content".to_owned());
    Ok(vec![Inbound::Ignored(other)])
}

/// One [`Message`](https://core.telegram.org/bots/api#message).
fn parse_message(message: &Node<'_>) -> Result<InboundMessage, InboundError> {
    let chat = message.req("chat")?;
    let chat_id = chat.req("id")?.i64()?;
    let message_id = message.req("message_id")?.i64()?;
    let date = message.req("date")?;
    let timestamp = from_unix_seconds(date.i64()?).ok_or_else(|| date.malformed("out of range"))?;
    let content = parse_content(message)?;
    Ok(InboundMessage {
        provider_user_id: chat_id.to_string(),
        display_name: display_name(message, &chat)?,
        provider_message_id: format!("{chat_id}:{message_id}"),
        timestamp: Some(timestamp),
        kind: content.kind,
        text: content.text,
        media_id: content.media_id,
        media_type: content.media_type,
    })
}

/// What a message holds.
#[derive(Debug, PartialEq)]
struct Content {
    kind: MessageKind,
    text: Option<String>,
    media_id: Option<String>,
    media_type: Option<String>,
}

impl Content {
    fn new(kind: MessageKind) -> Content {
        Content {
            kind,
            text: None,
            media_id: None,
            media_type: None,
        }
    }

    fn text(mut self, text: Option<String>) -> Content {
        self.text = text;
        self
    }

    /// `file_id` and `mime_type` of a file object.
    fn file(mut self, file: &Node<'_>) -> Result<Content, InboundError> {
        self.media_id = Some(file.req_str("file_id")?.to_owned());
        self.media_type = file.opt_str("mime_type")?.map(str::to_owned);
        Ok(self)
    }
}

fn parse_content(message: &Node<'_>) -> Result<Content, InboundError> {
    let caption = non_empty(message.opt_str("caption")?);
    if let Some(text) = message.get("text") {
        return Ok(Content::new(MessageKind::Text).text(Some(text.str()?.to_owned())));
    }
    if let Some(photo) = message.get("photo") {
        // Sizes come smallest first; the last is the largest.
        let mut content = Content::new(MessageKind::Image).text(caption);
        if let Some(largest) = photo.array()?.last() {
            content.media_id = Some(largest.req_str("file_id")?.to_owned());
        }
        return Ok(content);
    }
    let files = [
        ("voice", MessageKind::Voice),
        ("audio", MessageKind::Audio),
        ("video", MessageKind::Video),
        ("video_note", MessageKind::Video),
        ("animation", MessageKind::Video),
    ];
    for (field, kind) in files {
        if let Some(file) = message.get(field) {
            return Content::new(kind).text(caption).file(&file);
        }
    }
    if let Some(document) = message.get("document") {
        let text = caption.or(non_empty(document.opt_str("file_name")?));
        return Content::new(MessageKind::Document)
            .text(text)
            .file(&document);
    }
    if let Some(sticker) = message.get("sticker") {
        let mut content = Content::new(MessageKind::Sticker)
            .text(non_empty(sticker.opt_str("emoji")?))
            .file(&sticker)?;
        content.media_type = Some(sticker_format(&sticker).to_owned());
        return Ok(content);
    }
    if let Some(location) = message.get("location") {
        let latitude = location.req("latitude")?.f64()?;
        let longitude = location.req("longitude")?.f64()?;
        let venue = match message.get("venue") {
            Some(venue) => venue.opt_str("title")?,
            None => None,
        };
        return Ok(Content::new(MessageKind::Location)
            .text(Some(location_text(latitude, longitude, venue))));
    }
    if let Some(contact) = message.get("contact") {
        let name = full_name(&contact)?;
        let text = contact_text(contact.opt_str("phone_number")?, name.as_deref());
        return Ok(Content::new(MessageKind::Contact).text(text));
    }
    Ok(Content::new(MessageKind::Other))
}

/// The sticker's file format (<https://core.telegram.org/stickers>).
fn sticker_format(sticker: &Node<'_>) -> &'static str {
    if sticker.get("is_animated").is_some_and(|n| n.is_true()) {
        "application/x-tgsticker"
    } else if sticker.get("is_video").is_some_and(|n| n.is_true()) {
        "video/webm"
    } else {
        "image/webp"
    }
}

/// `first_name last_name` of a User, Chat or Contact, when it has them.
fn full_name(node: &Node<'_>) -> Result<Option<String>, InboundError> {
    let parts: Vec<&str> = [node.opt_str("first_name")?, node.opt_str("last_name")?]
        .into_iter()
        .flatten()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    Ok((!parts.is_empty()).then(|| parts.join(" ")))
}

fn display_name(message: &Node<'_>, chat: &Node<'_>) -> Result<Option<String>, InboundError> {
    let from = message.get("from");
    if let Some(name) = from.as_ref().map(full_name).transpose()?.flatten() {
        return Ok(Some(name));
    }
    if let Some(title) = non_empty(chat.opt_str("title")?) {
        return Ok(Some(title));
    }
    if let Some(username) = non_empty(
        from.as_ref()
            .map(|f| f.opt_str("username"))
            .transpose()?
            .flatten(),
    ) {
        return Ok(Some(username));
    }
    if let Some(username) = non_empty(chat.opt_str("username")?) {
        return Ok(Some(username));
    }
    full_name(chat)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::inbound::testing::{arb_json, channel, headers, node_count, replace_nth};
    use crate::ChannelType;

    fn only_message(body: &Value) -> InboundMessage {
        let items = parse(body.to_string().as_bytes()).expect("parses");
        match items.as_slice() {
            [Inbound::Message(m)] => m.clone(),
            other => panic!("expected one message, got {other:?}"),
        }
    }

    /// A private-chat message as the Bot API sends it, with `content`
    /// merged in.
    fn private_message(content: Value) -> Value {
        let mut message = json!({
            "message_id": 698,
            "from": {"id": 234140659, "is_bot": false, "first_name": "Dmitry", "last_name": "Z",
                     "username": "zhmurko", "language_code": "en"},
            "chat": {"id": 234140659, "first_name": "Dmitry", "last_name": "Z", "username": "zhmurko", "type": "private"},
            "date": 1650205024
        });
        if let (Some(m), Value::Object(c)) = (message.as_object_mut(), content) {
            m.extend(c);
        }
        json!({"update_id": 841266257, "message": message})
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
        let m = only_message(&private_message(json!({"text": "test"})));
        assert_eq!(
            m,
            InboundMessage {
                provider_user_id: "234140659".into(),
                display_name: Some("Dmitry Z".into()),
                provider_message_id: "234140659:698".into(),
                timestamp: Some(Utc.timestamp_opt(1650205024, 0).single().expect("valid")),
                kind: MessageKind::Text,
                text: Some("test".into()),
                media_id: None,
                media_type: None,
            }
        );
    }

    #[test]
    fn photo_takes_the_largest_size_and_the_caption() {
        let m = only_message(&private_message(json!({
            "photo": [
                {"file_id": "AgAD-small", "file_unique_id": "s", "file_size": 1200, "width": 90, "height": 67},
                {"file_id": "AgAD-medium", "file_unique_id": "m", "file_size": 14000, "width": 320, "height": 240},
                {"file_id": "AgAD-large", "file_unique_id": "l", "file_size": 60000, "width": 1280, "height": 960}
            ],
            "caption": "my cat"
        })));
        assert_eq!(
            content(&m),
            (MessageKind::Image, Some("my cat"), Some("AgAD-large"), None)
        );
    }

    #[test]
    fn every_file_kind() {
        let cases = [
            (
                json!({"voice": {"file_id": "v1", "file_unique_id": "u", "duration": 3, "mime_type": "audio/ogg", "file_size": 9000}}),
                (MessageKind::Voice, None, Some("v1"), Some("audio/ogg")),
            ),
            (
                json!({"audio": {"file_id": "a1", "file_unique_id": "u", "duration": 200, "performer": "X", "title": "Y",
                                 "mime_type": "audio/mpeg"}, "caption": "listen"}),
                (
                    MessageKind::Audio,
                    Some("listen"),
                    Some("a1"),
                    Some("audio/mpeg"),
                ),
            ),
            (
                json!({"video": {"file_id": "vd1", "file_unique_id": "u", "width": 640, "height": 480, "duration": 5,
                                 "mime_type": "video/mp4"}}),
                (MessageKind::Video, None, Some("vd1"), Some("video/mp4")),
            ),
            (
                json!({"video_note": {"file_id": "vn1", "file_unique_id": "u", "length": 240, "duration": 4}}),
                (MessageKind::Video, None, Some("vn1"), None),
            ),
            (
                // Telegram sets `document` too for an animation.
                json!({"animation": {"file_id": "an1", "file_unique_id": "u", "width": 320, "height": 240, "duration": 2,
                                     "mime_type": "video/mp4"},
                       "document": {"file_id": "an1", "file_unique_id": "u", "mime_type": "video/mp4"}}),
                (MessageKind::Video, None, Some("an1"), Some("video/mp4")),
            ),
            (
                json!({"document": {"file_id": "d1", "file_unique_id": "u", "file_name": "invoice.pdf",
                                    "mime_type": "application/pdf"}}),
                (
                    MessageKind::Document,
                    Some("invoice.pdf"),
                    Some("d1"),
                    Some("application/pdf"),
                ),
            ),
            (
                json!({"document": {"file_id": "d2", "file_unique_id": "u", "file_name": "a.pdf"}, "caption": "see"}),
                (MessageKind::Document, Some("see"), Some("d2"), None),
            ),
            (
                json!({"sticker": {"file_id": "st1", "file_unique_id": "u", "type": "regular", "width": 512,
                                   "height": 512, "is_animated": false, "is_video": false, "emoji": "😀"}}),
                (
                    MessageKind::Sticker,
                    Some("😀"),
                    Some("st1"),
                    Some("image/webp"),
                ),
            ),
            (
                json!({"sticker": {"file_id": "st2", "file_unique_id": "u", "type": "regular", "width": 512,
                                   "height": 512, "is_animated": true, "is_video": false}}),
                (
                    MessageKind::Sticker,
                    None,
                    Some("st2"),
                    Some("application/x-tgsticker"),
                ),
            ),
            (
                json!({"sticker": {"file_id": "st3", "file_unique_id": "u", "type": "regular", "width": 512,
                                   "height": 512, "is_animated": false, "is_video": true}}),
                (MessageKind::Sticker, None, Some("st3"), Some("video/webm")),
            ),
        ];
        for (extra, expected) in cases {
            let m = only_message(&private_message(extra.clone()));
            assert_eq!(content(&m), expected, "{extra}");
        }
    }

    #[test]
    fn location_venue_and_contact() {
        let m = only_message(&private_message(
            json!({"location": {"latitude": 52.52, "longitude": 13.405}}),
        ));
        assert_eq!(
            content(&m),
            (MessageKind::Location, Some("52.52,13.405"), None, None)
        );
        let m = only_message(&private_message(json!({
            "location": {"latitude": 52.52, "longitude": 13.405},
            "venue": {"location": {"latitude": 52.52, "longitude": 13.405}, "title": "Cafe", "address": "Main St 1"}
        })));
        assert_eq!(m.text.as_deref(), Some("52.52,13.405 Cafe"));
        let m = only_message(&private_message(
            json!({"contact": {"phone_number": "+15551234567", "first_name": "Ann", "last_name": "Lee", "user_id": 7}}),
        ));
        assert_eq!(
            content(&m),
            (
                MessageKind::Contact,
                Some("+15551234567 Ann Lee"),
                None,
                None
            )
        );
    }

    #[test]
    fn anything_else_is_kept_as_other() {
        for extra in [
            json!({"dice": {"emoji": "🎲", "value": 3}}),
            json!({"poll": {"id": "1", "question": "?", "options": []}}),
            json!({"new_chat_members": [{"id": 1, "is_bot": false, "first_name": "A"}]}),
            json!({}),
        ] {
            let m = only_message(&private_message(extra.clone()));
            assert_eq!(
                content(&m),
                (MessageKind::Other, None, None, None),
                "{extra}"
            );
            assert_eq!(m.provider_message_id, "234140659:698");
        }
    }

    #[test]
    fn group_and_channel_names() {
        let group = json!({"update_id": 1, "message": {
            "message_id": 5, "date": 1700000000,
            "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
            "chat": {"id": -100123, "title": "Support group", "type": "supergroup"},
            "text": "hi"}});
        let m = only_message(&group);
        assert_eq!(m.provider_user_id, "-100123");
        assert_eq!(m.provider_message_id, "-100123:5");
        assert_eq!(m.display_name.as_deref(), Some("Ann"));
        let post = json!({"update_id": 2, "channel_post": {
            "message_id": 9, "date": 1700000000,
            "sender_chat": {"id": -1009, "title": "News", "type": "channel"},
            "chat": {"id": -1009, "title": "News", "type": "channel"},
            "text": "hello"}});
        let m = only_message(&post);
        assert_eq!(m.display_name.as_deref(), Some("News"));
        assert_eq!(m.provider_message_id, "-1009:9");
        let username_only = json!({"update_id": 3, "message": {
            "message_id": 1, "date": 1700000000,
            "from": {"id": 42, "is_bot": false, "first_name": "", "username": "ann_l"},
            "chat": {"id": 42, "type": "private"}, "text": "x"}});
        assert_eq!(
            only_message(&username_only).display_name.as_deref(),
            Some("ann_l")
        );
        let nameless = json!({"update_id": 4, "message": {
            "message_id": 1, "date": 1700000000, "chat": {"id": 42, "type": "private"}, "text": "x"}});
        assert_eq!(only_message(&nameless).display_name, None);
    }

    #[test]
    fn other_updates_are_ignored_by_name() {
        let edited = json!({"update_id": 10, "edited_message": {"message_id": 1, "date": 1, "edit_date": 2,
                             "chat": {"id": 1, "type": "private"}, "text": "x"}});
        assert_eq!(
            parse(edited.to_string().as_bytes()),
            Ok(vec![Inbound::Ignored("edited_message".into())])
        );
        let callback = json!({"update_id": 11, "callback_query": {"id": "4382", "chat_instance": "1",
                               "from": {"id": 1, "is_bot": false, "first_name": "A"}, "data": "yes"}});
        assert_eq!(
            parse(callback.to_string().as_bytes()),
            Ok(vec![Inbound::Ignored("callback_query".into())])
        );
        let member =
            json!({"update_id": 12, "my_chat_member": {"chat": {"id": 1, "type": "private"}}});
        assert_eq!(
            parse(member.to_string().as_bytes()),
            Ok(vec![Inbound::Ignored("my_chat_member".into())])
        );
        assert_eq!(
            parse(br#"{"update_id": 13}"#),
            Ok(vec![Inbound::Ignored("update without content".into())])
        );
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let err = |body: &str| match parse(body.as_bytes()) {
            Err(InboundError::Malformed { field, .. }) => field,
            other => panic!("{body}: expected malformed, got {other:?}"),
        };
        assert_eq!(err("not json"), "body");
        assert_eq!(err("[]"), "body");
        assert_eq!(err(r#"{"message": {}}"#), "update_id");
        assert_eq!(
            err(r#"{"update_id": 1, "message": {"message_id": 1, "date": 1}}"#),
            "message.chat"
        );
        assert_eq!(
            err(
                r#"{"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": "x"}}}"#
            ),
            "message.chat.id"
        );
        assert_eq!(
            err(
                r#"{"update_id": 1, "message": {"message_id": 1, "date": 1e300, "chat": {"id": 1}}}"#
            ),
            "message.date"
        );
        assert_eq!(
            err(
                r#"{"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": 1}, "photo": [{}]}}"#
            ),
            "message.photo[0].file_id"
        );
    }

    fn tg_channel(secret: &str) -> Channel {
        channel(
            ChannelType::Telegram,
            &[("botToken", "123:abc"), ("secretToken", secret)],
        )
    }

    fn check(channel: &Channel, header_value: Option<&str>) -> Result<(), InboundError> {
        let headers = match header_value {
            Some(v) => headers(&[("X-Telegram-Bot-Api-Secret-Token", v)]),
            None => headers(&[]),
        };
        let body = private_message(json!({"text": "x"})).to_string();
        verify(
            channel,
            &WebhookRequest {
                url: "https://hooks.example.com/channels/tg/webhook",
                headers: &headers,
                body: body.as_bytes(),
            },
        )
    }

    #[test]
    fn secret_token_is_checked() {
        let c = tg_channel("s3cr3t-T0ken_x");
        assert_eq!(check(&c, Some("s3cr3t-T0ken_x")), Ok(()));
        for wrong in [Some("s3cr3t-T0ken_X"), Some("s3cr3t-T0ken"), Some(""), None] {
            match check(&c, wrong) {
                Err(InboundError::Unauthenticated { header, reason }) => {
                    assert_eq!(header, SECRET_TOKEN_HEADER);
                    assert!(
                        !reason.contains("s3cr3t"),
                        "reason leaks the secret: {reason}"
                    );
                }
                other => panic!("{wrong:?}: expected unauthenticated, got {other:?}"),
            }
        }
        // A channel without a secret accepts nothing, not even an empty header.
        assert!(check(&tg_channel(""), Some("")).is_err());
        let no_secret = channel(ChannelType::Telegram, &[("botToken", "123:abc")]);
        assert!(check(&no_secret, Some("anything")).is_err());
    }

    #[test]
    fn verify_and_parse_refuses_before_parsing() {
        let c = tg_channel("tok");
        let h = headers(&[("x-telegram-bot-api-secret-token", "bad")]);
        let request = WebhookRequest {
            url: "https://x/",
            headers: &h,
            body: b"not json",
        };
        assert!(matches!(
            crate::inbound::verify_and_parse(&c, &request),
            Err(InboundError::Unauthenticated { .. })
        ));
        let h = headers(&[("x-telegram-bot-api-secret-token", "tok")]);
        let body = private_message(json!({"text": "hi"})).to_string();
        let request = WebhookRequest {
            url: "https://x/",
            headers: &h,
            body: body.as_bytes(),
        };
        let items = crate::inbound::verify_and_parse(&c, &request).expect("accepted");
        assert!(
            matches!(items.as_slice(), [Inbound::Message(m)] if m.text.as_deref() == Some("hi"))
        );
    }

    fn samples() -> Vec<Value> {
        vec![
            private_message(json!({"text": "t"})),
            private_message(
                json!({"photo": [{"file_id": "p", "file_unique_id": "u", "width": 1, "height": 1}],
                                   "caption": "c"}),
            ),
            private_message(
                json!({"document": {"file_id": "d", "file_unique_id": "u", "mime_type": "a/b"}}),
            ),
            private_message(
                json!({"location": {"latitude": 1.0, "longitude": 2.0}, "venue": {"title": "v"}}),
            ),
            private_message(json!({"contact": {"phone_number": "1", "first_name": "A"}})),
            private_message(json!({"sticker": {"file_id": "s", "is_animated": true}})),
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
        fn never_panics_on_mutated_samples(sample in 0usize..6, at in any::<prop::sample::Index>(), replacement in arb_json()) {
            let samples = samples();
            let base = &samples[sample];
            let mutated = replace_nth(base, at.index(node_count(base)), &replacement);
            let _ = parse(mutated.to_string().as_bytes());
        }

        /// Never drop a message: whatever else it holds, a message with its
        /// ids and date is one item with the right ids.
        #[test]
        fn a_message_is_never_dropped(
            chat in any::<i64>(),
            id in any::<i64>(),
            date in 0i64..4_000_000_000,
            extra in prop::collection::btree_map("[a-z_]{1,12}", arb_json(), 0..4),
        ) {
            let mut message = serde_json::Map::new();
            for (k, v) in extra {
                // Fields the Bot API types precisely keep their type.
                if !["photo", "voice", "audio", "video", "video_note", "animation", "document", "sticker",
                     "location", "contact", "text", "caption", "from", "venue"].contains(&k.as_str()) {
                    message.insert(k, v);
                }
            }
            message.insert("message_id".into(), json!(id));
            message.insert("date".into(), json!(date));
            message.insert("chat".into(), json!({"id": chat, "type": "private"}));
            let update = json!({"update_id": 1, "message": message});
            let items = parse(update.to_string().as_bytes());
            let expected_id = format!("{chat}:{id}");
            let ok = matches!(items.as_deref(), Ok([Inbound::Message(m)])
                if m.provider_message_id == expected_id && m.provider_user_id == chat.to_string());
            prop_assert!(ok, "{:?}", items);
        }
    }
}
