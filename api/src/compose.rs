//! What an agent's message must be, pure code: the content, the
//! `Idempotency-Key` header, the digest a key's first request is stored
//! with, and whose keys a key belongs to. The SQL that stores the message
//! is in [`crate::channel_store`].

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;

/// Longest content, in characters (Telegram's limit of one message; the
/// other providers allow as much or more).
pub const MAX_CONTENT_CHARS: usize = 4096;

/// Longest `Idempotency-Key`, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The request header that makes a send idempotent.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The response header of an answer replayed for a repeated key.
pub const REPLAY_HEADER: &str = "idempotent-replay";

/// The `field` of errors about the idempotency key.
pub const KEY_FIELD: &str = "idempotency-key";

/// Why a content is refused (a pure value, turned into a `400` naming
/// `content` by [`check_content`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// No character, or only white space (providers refuse an empty text).
    #[error("content must not be empty or only white space")]
    Empty,
    /// More than [`MAX_CONTENT_CHARS`] characters.
    #[error("content must be at most {MAX_CONTENT_CHARS} characters")]
    TooLong,
    /// A NUL character (Postgres text cannot hold it).
    #[error("content must not contain NUL characters")]
    Nul,
}

/// Whether `content` may be sent: 1 to [`MAX_CONTENT_CHARS`] characters,
/// not only white space, no NUL.
pub fn validate_content(content: &str) -> Result<(), ContentError> {
    if content.contains('\0') {
        return Err(ContentError::Nul);
    }
    if content.trim().is_empty() {
        return Err(ContentError::Empty);
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(ContentError::TooLong);
    }
    Ok(())
}

/// [`validate_content`] as a `400` naming `content`.
pub fn check_content(content: &str) -> Result<(), ApiError> {
    validate_content(content).map_err(|e| ApiError::bad("content", e.to_string()))
}

/// Whether `key` is an acceptable idempotency key: 1 to
/// [`MAX_KEY_BYTES`] visible ASCII characters (`!` to `~`).
pub fn valid_key(key: &[u8]) -> bool {
    (1..=MAX_KEY_BYTES).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The `Idempotency-Key` of a request: `None` without the header, a `400`
/// naming `idempotency-key` when it is invalid or given twice.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad(
            KEY_FIELD,
            "Idempotency-Key must be given once",
        ));
    }
    let bytes = value.as_bytes();
    if !valid_key(bytes) {
        return Err(ApiError::bad(
            KEY_FIELD,
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"),
        ));
    }
    // Visible ASCII is UTF-8.
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The digest a key's first request is stored with: SHA-256 over a
/// version tag, the conversation id and the content, so the same key with
/// another conversation or another content is told apart.
pub fn request_digest(conversation_id: Uuid, content: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"chatpipe-send-v1\0");
    h.update(conversation_id.as_bytes());
    h.update(content.as_bytes());
    h.finalize().into()
}

/// Namespace of [`key_owner`]'s ids for tokens of an OIDC issuer that
/// name no agent of this api (UUIDv5 of `oidc:<sub>`).
const OIDC_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6c1b_5f0e_8a41_4d53_9f1e_2b7d_0c3a_9e55);

/// Who sends, as stored: the agent id recorded on the message (`None`
/// with authentication off, or for an OIDC token that names no agent of
/// this api), and the owner of the caller's idempotency keys — the agent
/// id, the nil UUID with authentication off, or a UUIDv5 of the OIDC
/// subject (so two people of the issuer never share keys).
pub fn key_owner(caller: &Caller) -> (Option<Uuid>, Uuid) {
    match caller {
        Caller::Open => (None, Uuid::nil()),
        Caller::Token(p) => match p.agent_id {
            Some(id) => (Some(id), id),
            None => (
                None,
                Uuid::new_v5(
                    &OIDC_KEY_NAMESPACE,
                    format!("oidc:{}", p.subject).as_bytes(),
                ),
            ),
        },
    }
}

/// What a repeated key means: the first answer again, or a refusal
/// because the request differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMatch {
    /// Same request: answer as the first time.
    Replay,
    /// Another request under the same key: `422`.
    Mismatch,
}

/// Compares a request's digest with the stored one.
pub fn match_key(stored: &[u8], digest: &[u8; 32]) -> KeyMatch {
    if stored == digest.as_slice() {
        KeyMatch::Replay
    } else {
        KeyMatch::Mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, TokenSource};
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    #[test]
    fn contents_are_checked() {
        assert_eq!(validate_content("hi"), Ok(()));
        assert_eq!(validate_content(&"é".repeat(MAX_CONTENT_CHARS)), Ok(()));
        assert_eq!(
            validate_content(&"é".repeat(MAX_CONTENT_CHARS + 1)),
            Err(ContentError::TooLong)
        );
        assert_eq!(validate_content(""), Err(ContentError::Empty));
        assert_eq!(validate_content(" \n\t"), Err(ContentError::Empty));
        assert_eq!(validate_content("a\0b"), Err(ContentError::Nul));
        let e = check_content("").unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("content"));
    }

    #[test]
    fn keys_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_static("abc-123_~!"),
        );
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("abc-123_~!"));
        for bad in ["", "a b", "é"] {
            let mut h = HeaderMap::new();
            h.insert(
                IDEMPOTENCY_KEY_HEADER,
                HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            let e = idempotency_key(&h).unwrap_err();
            assert_eq!(e.body().field.as_deref(), Some(KEY_FIELD), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&h).is_err());
        h.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(&"k".repeat(255)).unwrap(),
        );
        assert!(idempotency_key(&h).is_ok());
        h.append(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("other"));
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn key_owners_never_mix_callers() {
        let agent = Uuid::from_u128(7);
        let token = |agent_id: Option<Uuid>, sub: &str| {
            Caller::Token(Principal {
                subject: sub.to_owned(),
                agent_id,
                username: None,
                role: None,
                scopes: vec![],
                source: TokenSource::Oidc,
            })
        };
        assert_eq!(key_owner(&Caller::Open), (None, Uuid::nil()));
        assert_eq!(key_owner(&token(Some(agent), "x")), (Some(agent), agent));
        let (a, ns_a) = key_owner(&token(None, "alice"));
        let (_, ns_b) = key_owner(&token(None, "bob"));
        assert_eq!(a, None);
        assert_ne!(ns_a, ns_b);
        assert_ne!(ns_a, Uuid::nil());
        assert_eq!(key_owner(&token(None, "alice")).1, ns_a);
    }

    proptest! {
        #[test]
        fn keys_accept_exactly_visible_ascii(key in proptest::collection::vec(any::<u8>(), 0..300)) {
            let want = !key.is_empty() && key.len() <= MAX_KEY_BYTES
                && key.iter().all(|b| (b'!'..=b'~').contains(b));
            prop_assert_eq!(valid_key(&key), want);
        }

        #[test]
        fn digests_tell_requests_apart(
            c1 in any::<u128>(), c2 in any::<u128>(), t1 in ".{0,40}", t2 in ".{0,40}"
        ) {
            let (c1, c2) = (Uuid::from_u128(c1), Uuid::from_u128(c2));
            let d1 = request_digest(c1, &t1);
            prop_assert_eq!(match_key(&d1, &request_digest(c1, &t1)), KeyMatch::Replay);
            let same = c1 == c2 && t1 == t2;
            prop_assert_eq!(match_key(&d1, &request_digest(c2, &t2)) == KeyMatch::Replay, same);
        }

        #[test]
        fn contents_within_bounds_are_accepted(s in "[a-z]{1,200}") {
            prop_assert_eq!(validate_content(&s), Ok(()));
        }
    }
}
