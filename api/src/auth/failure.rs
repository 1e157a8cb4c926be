//! Why a request was refused by authentication: the reasons, their
//! metric labels and their messages. Pure code.

/// Why a request was not authenticated or authorized (the `reason` label
/// of `chatpipe_api_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// Not a JWT, or not readable.
    Malformed,
    /// Its `exp` has passed.
    Expired,
    /// The signature does not verify.
    BadSignature,
    /// `iss`, `aud` or `sub` is wrong or missing.
    BadClaims,
    /// An algorithm this api does not accept for that kind of token.
    UnsupportedAlgorithm,
    /// No key of the issuer's JWKS has the token's `kid`.
    UnknownKey,
    /// The issuer's JWKS could not be fetched.
    JwksUnavailable,
    /// A valid token without the scope the endpoint needs (`403`).
    MissingScope,
    /// `POST /auth/token` with a wrong username or password (or a disabled
    /// agent).
    BadCredentials,
    /// `POST /auth/token/refresh` with an unknown or expired token.
    BadRefreshToken,
    /// `POST /auth/token/refresh` with a token already used (every token
    /// of that agent is then revoked).
    RefreshTokenReused,
}

impl AuthFailure {
    /// Every reason.
    pub const ALL: [AuthFailure; 12] = [
        AuthFailure::MissingToken,
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::BadSignature,
        AuthFailure::BadClaims,
        AuthFailure::UnsupportedAlgorithm,
        AuthFailure::UnknownKey,
        AuthFailure::JwksUnavailable,
        AuthFailure::MissingScope,
        AuthFailure::BadCredentials,
        AuthFailure::BadRefreshToken,
        AuthFailure::RefreshTokenReused,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::Expired => "expired_token",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::BadClaims => "bad_claims",
            AuthFailure::UnsupportedAlgorithm => "unsupported_algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::JwksUnavailable => "jwks_unavailable",
            AuthFailure::MissingScope => "missing_scope",
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::BadRefreshToken => "bad_refresh_token",
            AuthFailure::RefreshTokenReused => "refresh_token_reused",
        }
    }

    /// The message of the `401` (never the token itself).
    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing bearer token (Authorization: Bearer <token>)",
            AuthFailure::Malformed => "invalid bearer token: not a readable JWT",
            AuthFailure::Expired => "invalid bearer token: expired",
            AuthFailure::BadSignature => "invalid bearer token: bad signature",
            AuthFailure::BadClaims => "invalid bearer token: wrong or missing iss, aud or sub",
            AuthFailure::UnsupportedAlgorithm => "invalid bearer token: algorithm not accepted",
            AuthFailure::UnknownKey => "invalid bearer token: unknown signing key",
            AuthFailure::JwksUnavailable => {
                "cannot verify the bearer token now: the identity provider's keys are unavailable"
            }
            AuthFailure::MissingScope => "missing scope",
            AuthFailure::BadCredentials => "invalid username or password",
            AuthFailure::BadRefreshToken => "invalid or expired refresh token",
            AuthFailure::RefreshTokenReused => "invalid or expired refresh token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_labels_are_distinct() {
        let mut labels: Vec<_> = AuthFailure::ALL.iter().map(|f| f.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), AuthFailure::ALL.len());
        // Wrong usernames and wrong passwords read the same.
        assert_eq!(
            AuthFailure::BadRefreshToken.message(),
            AuthFailure::RefreshTokenReused.message()
        );
    }
}
