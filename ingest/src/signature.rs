//! Webhook authenticity: [Standard Webhooks] signatures.
//!
//! A signed request carries
//! - `webhook-id`: the message id;
//! - `webhook-timestamp`: unix seconds, within `--webhook-tolerance` of
//!   this clock either way (replay protection);
//! - `webhook-signature`: one or more space-separated `v1,<base64>`
//!   entries, each an HMAC-SHA256 of `{id}.{timestamp}.{body}` (the body as
//!   received, byte for byte) under a secret's key. Entries of other
//!   versions are ignored.
//!
//! Secrets are `whsec_<base64>` (the key is the decoded part). Several may
//! be configured while a secret is rotated: a request is authentic when
//! any `v1` signature matches any secret. The comparison is constant-time
//! ([`subtle`]); the HMAC state of each key is prepared once, so a request
//! costs one HMAC over the body per configured secret.
//!
//! [`Verifier`] never shows its keys: its `Debug` prints how many there
//! are, and its errors name a secret by position only.
//!
//! [Standard Webhooks]: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// `webhook-id`.
pub const WEBHOOK_ID: &str = "webhook-id";
/// `webhook-timestamp`.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// `webhook-signature`.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The prefix of a secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a request is not authentic (answered `401`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// A header is absent or empty.
    MissingHeader(&'static str),
    /// A header is not visible ASCII.
    MalformedHeader(&'static str),
    /// `webhook-timestamp` is not unix seconds.
    BadTimestamp,
    /// `webhook-timestamp` is older than the tolerance.
    Stale,
    /// `webhook-timestamp` is further in the future than the tolerance.
    Future,
    /// No `v1` signature matches a secret.
    BadSignature,
}

impl AuthFailure {
    /// Every reason label, in the order of [`AuthFailure::reason`].
    pub const REASONS: [&'static str; 6] = [
        "missing_header",
        "malformed_header",
        "bad_timestamp",
        "stale",
        "future",
        "bad_signature",
    ];

    /// The `reason` label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader(_) => "missing_header",
            AuthFailure::MalformedHeader(_) => "malformed_header",
            AuthFailure::BadTimestamp => "bad_timestamp",
            AuthFailure::Stale => "stale",
            AuthFailure::Future => "future",
            AuthFailure::BadSignature => "bad_signature",
        }
    }

    /// The header at fault (the `field` of the `401` body).
    pub fn field(self) -> &'static str {
        match self {
            AuthFailure::MissingHeader(h) | AuthFailure::MalformedHeader(h) => h,
            AuthFailure::BadTimestamp | AuthFailure::Stale | AuthFailure::Future => {
                WEBHOOK_TIMESTAMP
            }
            AuthFailure::BadSignature => WEBHOOK_SIGNATURE,
        }
    }

    /// The `error` of the `401` body (names no secret).
    pub fn message(self, tolerance: Duration) -> String {
        match self {
            AuthFailure::MissingHeader(h) => format!("missing {h} header"),
            AuthFailure::MalformedHeader(h) => format!("{h} header is not visible ASCII"),
            AuthFailure::BadTimestamp => {
                format!("{WEBHOOK_TIMESTAMP} header is not a unix timestamp in seconds")
            }
            AuthFailure::Stale => format!(
                "{WEBHOOK_TIMESTAMP} is more than {}s in the past",
                tolerance.as_secs()
            ),
            AuthFailure::Future => format!(
                "{WEBHOOK_TIMESTAMP} is more than {}s in the future",
                tolerance.as_secs()
            ),
            AuthFailure::BadSignature => {
                format!("no {WEBHOOK_SIGNATURE} matches the body with a configured secret")
            }
        }
    }
}

/// A request that passed: which secret signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The position of the matching secret (0 = first configured).
    pub secret: usize,
}

/// Verifies Standard Webhooks signatures against one or more secrets.
#[derive(Clone)]
pub struct Verifier {
    /// Each secret's keyed HMAC state (cloned per request).
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// A verifier for the space-separated `whsec_<base64>` secrets of
    /// `secrets`. `None` or a blank value means webhooks are not
    /// authenticated (`Ok(None)`). The error names a secret by position,
    /// never by value.
    pub fn from_setting(
        secrets: Option<&str>,
        tolerance: Duration,
    ) -> Result<Option<Verifier>, String> {
        let Some(secrets) = secrets else {
            return Ok(None);
        };
        let parts: Vec<&str> = secrets.split_whitespace().collect();
        if parts.is_empty() {
            return Ok(None);
        }
        let total = parts.len();
        let keys = parts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                key(s).ok_or_else(|| {
                    format!(
                        "webhook secret {} of {total} is not `{SECRET_PREFIX}<base64>` \
                         with a non-empty key",
                        i + 1
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Verifier { keys, tolerance }))
    }

    /// How many secrets are configured.
    pub fn secrets(&self) -> usize {
        self.keys.len()
    }

    /// The timestamp tolerance.
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Verifies a request against this clock.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, AuthFailure> {
        self.verify_at(headers, body, unix_now())
    }

    /// Verifies a request at `now` (unix seconds): headers, then the
    /// timestamp, then the signatures.
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, AuthFailure> {
        let id = header(headers, WEBHOOK_ID)?;
        let timestamp = header(headers, WEBHOOK_TIMESTAMP)?;
        let signatures = header(headers, WEBHOOK_SIGNATURE)?;
        let at = parse_timestamp(timestamp).ok_or(AuthFailure::BadTimestamp)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(at) > tolerance {
            return Err(AuthFailure::Stale);
        }
        if at.saturating_sub(now) > tolerance {
            return Err(AuthFailure::Future);
        }
        self.check_signatures(id, timestamp, body, signatures)
    }

    /// Whether one of the `v1` entries of `signatures` is the HMAC of
    /// `{id}.{timestamp}.{body}` under one of the keys.
    fn check_signatures(
        &self,
        id: &str,
        timestamp: &str,
        body: &[u8],
        signatures: &str,
    ) -> Result<Verified, AuthFailure> {
        let mut candidates: Vec<[u8; TAG_BYTES]> = Vec::new();
        for entry in signatures.split(' ') {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            let mut tag = [0u8; TAG_BYTES];
            // A wrong length or bad base64 can match nothing: skipped.
            if let Ok(TAG_BYTES) = STANDARD.decode_slice(encoded, &mut tag) {
                candidates.push(tag);
            }
        }
        if candidates.is_empty() {
            return Err(AuthFailure::BadSignature);
        }
        // Every key and every candidate is compared (no early exit on the
        // comparison itself); which secret matched is not secret.
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            let expected = sign_with(key.clone(), id, timestamp, body);
            let mut matched = subtle::Choice::from(0);
            for candidate in &candidates {
                matched |= expected.ct_eq(candidate);
            }
            if bool::from(matched) && found.is_none() {
                found = Some(Verified { secret: i });
            }
        }
        found.ok_or(AuthFailure::BadSignature)
    }
}

/// The decoded key of `whsec_<base64>` (None when malformed or empty).
fn key(secret: &str) -> Option<HmacSha256> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    let bytes = STANDARD.decode(encoded).ok()?;
    if bytes.is_empty() {
        return None;
    }
    HmacSha256::new_from_slice(&bytes).ok()
}

fn sign_with(mut mac: HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> [u8; TAG_BYTES] {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` value (`v1,<base64>`) of a message signed with
/// `secret` (`whsec_<base64>`); for tests and clients. `None` when the
/// secret is malformed.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let mac = key(secret)?;
    let tag = sign_with(mac, id, &timestamp.to_string(), body);
    Some(format!("v1,{}", STANDARD.encode(tag)))
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthFailure> {
    let value = headers.get(name).ok_or(AuthFailure::MissingHeader(name))?;
    let value = value
        .to_str()
        .map_err(|_| AuthFailure::MalformedHeader(name))?
        .trim();
    if value.is_empty() {
        return Err(AuthFailure::MissingHeader(name));
    }
    Ok(value)
}

/// Unix seconds: ASCII digits only (no sign, no fraction), at most 18 of
/// them.
fn parse_timestamp(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const OTHER: &str = "whsec_dGhlIG90aGVyIHNlY3JldCBvZiB0aGUgcm90YXRpb24=";

    fn verifier(secrets: &str) -> Verifier {
        Verifier::from_setting(Some(secrets), Duration::from_secs(300))
            .unwrap()
            .unwrap()
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(WEBHOOK_ID, HeaderValue::from_str(id).unwrap());
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_str(timestamp).unwrap());
        h.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(signature).unwrap());
        h
    }

    fn vector_headers(signature: &str) -> HeaderMap {
        headers(MSG_ID, &TIMESTAMP.to_string(), signature)
    }

    #[test]
    fn the_published_vector_signs_and_verifies() {
        assert_eq!(
            sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD).as_deref(),
            Some(EXPECTED)
        );
        let v = verifier(SECRET);
        assert_eq!(
            v.verify_at(&vector_headers(EXPECTED), PAYLOAD, TIMESTAMP),
            Ok(Verified { secret: 0 })
        );
    }

    #[test]
    fn rotation_accepts_a_signature_of_the_second_secret_only() {
        let v = verifier(&format!("{OTHER} {SECRET}"));
        assert_eq!(v.secrets(), 2);
        assert_eq!(
            v.verify_at(&vector_headers(EXPECTED), PAYLOAD, TIMESTAMP),
            Ok(Verified { secret: 1 })
        );
        // Extra whitespace between secrets is fine.
        let v = verifier(&format!("  {OTHER}\n {SECRET} "));
        assert_eq!(v.secrets(), 2);
        assert!(v
            .verify_at(&vector_headers(EXPECTED), PAYLOAD, TIMESTAMP)
            .is_ok());
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let v = verifier(SECRET);
        let wrong = sign(OTHER, MSG_ID, TIMESTAMP, PAYLOAD).unwrap();
        for header in [
            format!("{wrong} {EXPECTED}"),
            format!("{EXPECTED} {wrong}"),
            format!("v2,abc v1,!!notbase64 v1,AAAA {EXPECTED}"),
            format!("v1a,{} {EXPECTED}", &EXPECTED[3..]),
        ] {
            assert!(
                v.verify_at(&vector_headers(&header), PAYLOAD, TIMESTAMP)
                    .is_ok(),
                "{header}"
            );
        }
        // Only other versions or undecodable entries: nothing to match.
        for header in [
            format!("v2,{}", &EXPECTED[3..]),
            "v1,".to_owned(),
            "garbage".to_owned(),
            wrong.clone(),
            format!("{wrong} {wrong}"),
        ] {
            assert_eq!(
                v.verify_at(&vector_headers(&header), PAYLOAD, TIMESTAMP),
                Err(AuthFailure::BadSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn the_tolerance_is_inclusive_both_ways() {
        let v = verifier(SECRET);
        let h = vector_headers(EXPECTED);
        for now in [TIMESTAMP - 300, TIMESTAMP, TIMESTAMP + 300] {
            assert!(v.verify_at(&h, PAYLOAD, now).is_ok(), "now {now}");
        }
        // The request is one second too old / too far ahead.
        assert_eq!(
            v.verify_at(&h, PAYLOAD, TIMESTAMP + 301),
            Err(AuthFailure::Stale)
        );
        assert_eq!(
            v.verify_at(&h, PAYLOAD, TIMESTAMP - 301),
            Err(AuthFailure::Future)
        );
        // A configured tolerance is used.
        let v = Verifier::from_setting(Some(SECRET), Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert!(v.verify_at(&h, PAYLOAD, TIMESTAMP + 10).is_ok());
        assert_eq!(
            v.verify_at(&h, PAYLOAD, TIMESTAMP + 11),
            Err(AuthFailure::Stale)
        );
        assert_eq!(
            v.verify_at(&h, PAYLOAD, TIMESTAMP - 11),
            Err(AuthFailure::Future)
        );
    }

    #[test]
    fn malformed_or_missing_headers_are_named() {
        let v = verifier(SECRET);
        let full = vector_headers(EXPECTED);
        for name in [WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE] {
            let mut h = full.clone();
            h.remove(name);
            let e = v.verify_at(&h, PAYLOAD, TIMESTAMP).unwrap_err();
            assert_eq!(e, AuthFailure::MissingHeader(name));
            assert_eq!(e.field(), name);
            assert_eq!(e.reason(), "missing_header");
            let mut h = full.clone();
            h.insert(name, HeaderValue::from_static(" "));
            assert_eq!(
                v.verify_at(&h, PAYLOAD, TIMESTAMP),
                Err(AuthFailure::MissingHeader(name))
            );
            let mut h = full.clone();
            h.insert(name, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
            assert_eq!(
                v.verify_at(&h, PAYLOAD, TIMESTAMP),
                Err(AuthFailure::MalformedHeader(name))
            );
        }
        for ts in [
            "abc",
            "-1614265330",
            "+1614265330",
            "1614265330.5",
            "1e9",
            "9999999999999999999999",
        ] {
            let e = v
                .verify_at(&headers(MSG_ID, ts, EXPECTED), PAYLOAD, TIMESTAMP)
                .unwrap_err();
            assert_eq!(e, AuthFailure::BadTimestamp, "{ts}");
            assert_eq!(e.field(), WEBHOOK_TIMESTAMP);
        }
    }

    #[test]
    fn a_wrong_secret_a_tampered_body_or_other_signed_fields_fail() {
        let h = vector_headers(EXPECTED);
        assert_eq!(
            verifier(OTHER).verify_at(&h, PAYLOAD, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
        let v = verifier(SECRET);
        assert_eq!(
            v.verify_at(&h, br#"{"test": 2432232315}"#, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            v.verify_at(&h, br#"{"test":2432232314}"#, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
        let other_id = headers("msg_other", &TIMESTAMP.to_string(), EXPECTED);
        assert_eq!(
            v.verify_at(&other_id, PAYLOAD, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
        let other_ts = headers(MSG_ID, &(TIMESTAMP + 1).to_string(), EXPECTED);
        assert_eq!(
            v.verify_at(&other_ts, PAYLOAD, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
        // A signature with the last byte flipped.
        let mut tag = STANDARD.decode(&EXPECTED[3..]).unwrap();
        tag[31] ^= 1;
        let flipped = format!("v1,{}", STANDARD.encode(tag));
        assert_eq!(
            v.verify_at(&vector_headers(&flipped), PAYLOAD, TIMESTAMP),
            Err(AuthFailure::BadSignature)
        );
    }

    #[test]
    fn secrets_parse_and_never_show() {
        assert!(Verifier::from_setting(None, Duration::from_secs(1))
            .unwrap()
            .is_none());
        assert!(Verifier::from_setting(Some("  "), Duration::from_secs(1))
            .unwrap()
            .is_none());
        let hidden = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for bad in [
            format!("{SECRET} {hidden}"),
            format!("{SECRET} whsec_!!{hidden}"),
            "whsec_".to_owned(),
        ] {
            let e = Verifier::from_setting(Some(&bad), Duration::from_secs(1)).unwrap_err();
            assert!(!e.contains(hidden), "{e}");
            assert!(e.contains("webhook secret"), "{e}");
        }
        let v = verifier(&format!("{SECRET} {OTHER}"));
        let shown = format!("{v:?}");
        assert!(
            !shown.contains(hidden) && !shown.contains("whsec_"),
            "{shown}"
        );
        assert!(shown.contains("secrets: 2"), "{shown}");
    }

    #[test]
    fn every_reason_is_listed() {
        for f in [
            AuthFailure::MissingHeader(WEBHOOK_ID),
            AuthFailure::MalformedHeader(WEBHOOK_ID),
            AuthFailure::BadTimestamp,
            AuthFailure::Stale,
            AuthFailure::Future,
            AuthFailure::BadSignature,
        ] {
            assert!(AuthFailure::REASONS.contains(&f.reason()));
            assert!(!f.message(Duration::from_secs(300)).is_empty());
        }
    }
}
