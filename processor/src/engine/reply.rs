//! The automatic reply of a closed group: its text and its deterministic id.

use uuid::Uuid;

/// Namespace of OUTBOUND ids: `UUIDv5(REPLY_NAMESPACE, inbound ids)`.
/// A fixed constant, so a replay derives the same id for the same group.
pub const REPLY_NAMESPACE: Uuid = Uuid::from_u128(0x6368_6174_7069_7065_2d72_6570_6c79_0001);

/// Text of the reply to a group: `"Mensagens recebidas:\n" + ids joined by
/// "\n" + "\n"`, ids in arrival order.
pub fn reply_text(ids: &[Uuid]) -> String {
    let mut s = String::with_capacity(21 + ids.len() * 37);
    s.push_str("Mensagens recebidas:\n");
    for id in ids {
        s.push_str(&id.hyphenated().to_string());
        s.push('\n');
    }
    s
}

/// The OUTBOUND id of a group: UUIDv5 over the concatenated 16-byte inbound
/// ids, in arrival order.
pub fn reply_id(ids: &[Uuid]) -> Uuid {
    let mut name = Vec::with_capacity(ids.len() * 16);
    for id in ids {
        name.extend_from_slice(id.as_bytes());
    }
    Uuid::new_v5(&REPLY_NAMESPACE, &name)
}

/// The `k`-th alternative id of a group, used when its reply id is already
/// taken by a message (ids are chosen by providers, and a reply id can be
/// computed in advance): UUIDv5 over the inbound ids followed by `k`.
/// `reply_id_salted(ids, 0) == reply_id(ids)`.
pub fn reply_id_salted(ids: &[Uuid], k: u32) -> Uuid {
    if k == 0 {
        return reply_id(ids);
    }
    let mut name = Vec::with_capacity(ids.len() * 16 + 4);
    for id in ids {
        name.extend_from_slice(id.as_bytes());
    }
    name.extend_from_slice(&k.to_be_bytes());
    Uuid::new_v5(&REPLY_NAMESPACE, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_matches_the_spec() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            reply_text(&[a, b]),
            format!("Mensagens recebidas:\n{a}\n{b}\n")
        );
    }

    #[test]
    fn id_depends_on_members_and_order() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(reply_id(&[a, b]), reply_id(&[a, b]));
        assert_ne!(reply_id(&[a, b]), reply_id(&[b, a]));
        assert_ne!(reply_id(&[a]), reply_id(&[a, b]));
    }

    #[test]
    fn salted_ids_differ_and_start_at_the_plain_one() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        assert_eq!(reply_id_salted(&ids, 0), reply_id(&ids));
        assert_ne!(reply_id_salted(&ids, 1), reply_id(&ids));
        assert_ne!(reply_id_salted(&ids, 1), reply_id_salted(&ids, 2));
        assert_eq!(reply_id_salted(&ids, 3), reply_id_salted(&ids, 3));
    }
}
