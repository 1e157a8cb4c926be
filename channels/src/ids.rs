//! Deterministic ids (UUIDv5), so a provider's retry of a webhook is the
//! same event and a contact is always the same contact.

use uuid::Uuid;

/// The namespace of every channel id.
pub fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"chatpipe.channels")
}

fn v5(parts: &[&str]) -> Uuid {
    // Each part is length-prefixed, so no two part lists share a name.
    let mut name = Vec::new();
    for p in parts {
        name.extend_from_slice(p.len().to_string().as_bytes());
        name.push(b':');
        name.extend_from_slice(p.as_bytes());
    }
    Uuid::new_v5(&namespace(), &name)
}

/// The contact `provider_user_id` (Telegram chat id, WhatsApp `wa_id`,
/// Twilio `From`) of channel `channel`.
pub fn contact_id(channel: &str, provider_user_id: &str) -> Uuid {
    v5(&["contact", channel, provider_user_id])
}

/// The NEW_MESSAGE id of a provider message: Telegram
/// `{chat.id}:{message_id}`, WhatsApp `wamid`, Twilio `MessageSid`.
pub fn inbound_message_id(channel: &str, provider_message_id: &str) -> Uuid {
    v5(&["message", channel, provider_message_id])
}

/// The conversation a contact's message opens when the contact has no OPEN
/// conversation: derived from the message, so a provider's retry of that
/// message opens the same conversation.
pub fn opened_conversation_id(contact: Uuid, first_message: Uuid) -> Uuid {
    v5(&[
        "conversation",
        &contact.to_string(),
        &first_message.to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(contact_id("tg", "42"), contact_id("tg", "42"));
        assert_ne!(contact_id("tg", "42"), contact_id("tg2", "42"));
        assert_ne!(contact_id("tg", "42"), inbound_message_id("tg", "42"));
        // Length prefixes: ("a:b","c") and ("a","b:c") differ.
        assert_ne!(contact_id("a:b", "c"), contact_id("a", "b:c"));
        let c = contact_id("tg", "42");
        let m = inbound_message_id("tg", "42:7");
        assert_eq!(opened_conversation_id(c, m), opened_conversation_id(c, m));
        assert_eq!(contact_id("tg", "42").get_version_num(), 5);
    }
}
