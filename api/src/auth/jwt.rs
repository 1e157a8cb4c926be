//! The api's own tokens: HS256 access tokens (JWT) and opaque refresh
//! tokens. Pure code, no I/O (the clock is a parameter).
//!
//! An access token's claims are `sub` (the agent's id), `username`,
//! `role`, `scope` (space separated), `iat`, `exp`, `iss` = [`ISSUER`] and
//! `aud` = [`AUDIENCE`]. Verification accepts HS256 only, with this
//! secret, and requires `exp`, `iss`, `aud` and `sub`.
//!
//! A refresh token is 32 random bytes, base64url; only its SHA-256 is
//! stored.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::scopes::{format_scopes, parse_scopes, Role};
use super::{AuthFailure, Principal, TokenSource};

/// `iss` of the api's access tokens.
pub const ISSUER: &str = "chatpipe";
/// `aud` of the api's access tokens.
pub const AUDIENCE: &str = "chatpipe-api";
/// Shortest accepted secret, in bytes.
pub use chatpipe_settings::api::MIN_JWT_SECRET_BYTES;
/// Clock difference tolerated on `exp` (between the api's replicas).
pub const LEEWAY_SECS: u64 = 5;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The agent's id.
    pub sub: String,
    /// The agent's username.
    pub username: String,
    /// `admin` or `agent`.
    pub role: String,
    /// Scopes, space separated.
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// [`ISSUER`].
    pub iss: String,
    /// [`AUDIENCE`].
    pub aud: String,
}

impl AccessClaims {
    /// The claims of a token for agent `id` issued at `now` (Unix seconds),
    /// valid for `ttl`.
    pub fn new(id: Uuid, username: &str, role: Role, now: i64, ttl: Duration) -> Self {
        AccessClaims {
            sub: id.to_string(),
            username: username.to_owned(),
            role: role.as_str().to_owned(),
            scope: format_scopes(&role.scopes()),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        }
    }

    /// The caller these claims describe; refused when `sub` is not a UUID
    /// or `role` is unknown.
    pub fn principal(&self) -> Result<Principal, AuthFailure> {
        let id = Uuid::parse_str(&self.sub).map_err(|_| AuthFailure::BadClaims)?;
        let role = Role::parse(&self.role).ok_or(AuthFailure::BadClaims)?;
        Ok(Principal {
            subject: self.sub.clone(),
            agent_id: Some(id),
            username: Some(self.username.clone()),
            role: Some(role),
            scopes: parse_scopes(&self.scope),
            source: TokenSource::Local,
        })
    }
}

/// Why a JWT secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`MIN_JWT_SECRET_BYTES`].
    #[error(
        "--jwt-secret (CHATPIPE_API_JWT_SECRET) must be at least {MIN_JWT_SECRET_BYTES} bytes, \
         got {0}; generate one with `openssl rand -base64 48`"
    )]
    TooShort(usize),
}

/// Signs and verifies the api's access tokens.
#[derive(Clone)]
pub struct LocalTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Lifetime of access tokens.
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_ttl: Duration,
}

impl std::fmt::Debug for LocalTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTokens")
            .field("secret", &"<redacted>")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish()
    }
}

/// The validation rules of the api's access tokens: HS256 only, `iss`,
/// `aud`, `exp` and `sub` required and checked.
pub fn local_validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    v
}

impl LocalTokens {
    /// Keys from `secret`, refused when shorter than
    /// [`MIN_JWT_SECRET_BYTES`].
    pub fn new(
        secret: &[u8],
        access_ttl: Duration,
        refresh_ttl: Duration,
    ) -> Result<Self, SecretError> {
        if secret.len() < MIN_JWT_SECRET_BYTES {
            return Err(SecretError::TooShort(secret.len()));
        }
        Ok(LocalTokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: local_validation(),
            access_ttl,
            refresh_ttl,
        })
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// Verifies an access token and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| failure_of(&e))?
            .claims
            .principal()
    }
}

/// The failure reason of a token `jsonwebtoken` refused.
pub fn failure_of(e: &jsonwebtoken::errors::Error) -> AuthFailure {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::InvalidKeyFormat => AuthFailure::UnsupportedAlgorithm,
        ErrorKind::InvalidAudience
        | ErrorKind::InvalidIssuer
        | ErrorKind::InvalidSubject
        | ErrorKind::ImmatureSignature
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::MissingRequiredClaim(_) => AuthFailure::BadClaims,
        _ => AuthFailure::Malformed,
    }
}

/// A new refresh token: the opaque value for the client and the SHA-256
/// to store.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = refresh_token_hash(&token);
    (token, hash)
}

/// The stored form of a refresh token: its SHA-256.
pub fn refresh_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scopes::Scope;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn tokens() -> LocalTokens {
        LocalTokens::new(
            SECRET,
            Duration::from_secs(900),
            Duration::from_secs(86_400),
        )
        .unwrap()
    }

    fn claims() -> AccessClaims {
        AccessClaims::new(
            Uuid::new_v4(),
            "ana",
            Role::Agent,
            now(),
            Duration::from_secs(900),
        )
    }

    fn forge(header: &Header, claims: &impl Serialize, secret: &[u8]) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        let ttl = Duration::from_secs(1);
        assert_eq!(
            LocalTokens::new(&[7u8; 31], ttl, ttl).unwrap_err(),
            SecretError::TooShort(31)
        );
        assert!(LocalTokens::new(&[7u8; 32], ttl, ttl).is_ok());
        assert!(!format!("{:?}", tokens()).contains("0123456789"));
    }

    #[test]
    fn issued_tokens_verify_with_their_scopes() {
        let t = tokens();
        let c = claims();
        let p = t.verify(&t.sign(&c).unwrap()).unwrap();
        assert_eq!(p.subject, c.sub);
        assert_eq!(p.role, Some(Role::Agent));
        assert_eq!(
            p.scopes,
            vec![Scope::ConversationsRead, Scope::MessagesSend]
        );
        assert_eq!(p.source, TokenSource::Local);
        assert_eq!(c.exp - c.iat, 900);
        assert_eq!(c.scope, "conversations:read messages:send");
    }

    #[test]
    fn expired_wrong_key_wrong_audience_or_issuer_are_refused() {
        let t = tokens();
        let header = Header::new(Algorithm::HS256);
        let mut expired = claims();
        expired.iat = now() - 3_600;
        expired.exp = now() - 60;
        assert_eq!(
            t.verify(&forge(&header, &expired, SECRET)),
            Err(AuthFailure::Expired)
        );
        let other = b"another-secret-another-secret-another";
        assert_eq!(
            t.verify(&forge(&header, &claims(), other)),
            Err(AuthFailure::BadSignature)
        );
        let mut aud = claims();
        aud.aud = "someone-else".into();
        assert_eq!(
            t.verify(&forge(&header, &aud, SECRET)),
            Err(AuthFailure::BadClaims)
        );
        let mut iss = claims();
        iss.iss = "evil".into();
        assert_eq!(
            t.verify(&forge(&header, &iss, SECRET)),
            Err(AuthFailure::BadClaims)
        );
        let mut sub = claims();
        sub.sub = "not-a-uuid".into();
        assert_eq!(
            t.verify(&forge(&header, &sub, SECRET)),
            Err(AuthFailure::BadClaims)
        );
        // No exp at all.
        let no_exp = serde_json::json!({"sub": Uuid::new_v4(), "username": "a", "role": "agent",
            "scope": "", "iat": now(), "iss": ISSUER, "aud": AUDIENCE});
        assert!(matches!(
            t.verify(&forge(&header, &no_exp, SECRET)),
            Err(AuthFailure::BadClaims | AuthFailure::Malformed)
        ));
        // Another HMAC algorithm, even with the right secret.
        assert_eq!(
            t.verify(&forge(&Header::new(Algorithm::HS512), &claims(), SECRET)),
            Err(AuthFailure::UnsupportedAlgorithm)
        );
    }

    #[test]
    fn unsigned_and_garbage_tokens_are_refused() {
        let t = tokens();
        let b64 = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let body = b64(serde_json::to_value(claims()).unwrap());
        for alg in ["none", "None", "NONE"] {
            let header = b64(serde_json::json!({"alg": alg, "typ": "JWT"}));
            for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
                assert!(t.verify(&token).is_err(), "{token}");
            }
        }
        // A valid token with its signature removed.
        let signed = t.sign(&claims()).unwrap();
        let stripped = signed.rsplit_once('.').unwrap().0.to_owned() + ".";
        assert_eq!(t.verify(&stripped), Err(AuthFailure::BadSignature));
        for garbage in ["", "a", "a.b", "a.b.c", "....", "Bearer x"] {
            assert!(t.verify(garbage).is_err(), "{garbage}");
        }
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, hb) = new_refresh_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(a.len(), 43);
        assert_eq!(refresh_token_hash(&a), ha);
        assert_ne!(&ha[..], a.as_bytes());
    }
}
