//! Authentication and authorization of the api.
//!
//! Authentication is on when the api has a JWT secret (its own agents sign
//! in with `POST /auth/token`) or an OIDC issuer (tokens of the platform's
//! identity provider), or both. Then every data endpoint needs
//! `Authorization: Bearer <token>`:
//!
//! - [`authenticate`], a middleware on the data routes, reads and verifies
//!   the token (HS256 → the api's own, RS256/ES256 → the OIDC issuer's)
//!   and leaves the [`Caller`] in the request; no, an invalid or an expired
//!   token is answered `401` with `WWW-Authenticate: Bearer`.
//! - Handlers declare what they need with the extractors
//!   [`RequireScope`] (e.g. `RequireScope<ConversationsRead>`, `403`
//!   without the scope) and [`Authenticated`] (any valid token).
//!
//! With authentication off, [`authenticate`] lets every request through as
//! [`Caller::Open`] and every [`RequireScope`] is satisfied: the api is
//! open, as the original challenge describes.
//!
//! # Layout
//! - [`scopes`]: roles, scopes and the scope claims (pure).
//! - [`failure`]: why a request is refused (pure).
//! - [`jwt`]: the api's own access and refresh tokens (pure).
//! - [`oidc`]: an OIDC issuer's tokens and its cached JWKS.
//! - [`password`]: Argon2id hashes.

pub mod failure;
pub mod jwt;
pub mod oidc;
pub mod password;
pub mod scopes;

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Pool;
use jsonwebtoken::Algorithm;
use uuid::Uuid;

pub use failure::AuthFailure;
pub use scopes::{Role, Scope};

use crate::error::ApiError;
use crate::events::{AuthSucceeded, InternalEvent};
use crate::metrics::Metrics;
use jwt::LocalTokens;
use oidc::OidcVerifier;

/// Who issued a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// This api (`POST /auth/token`), HS256.
    Local,
    /// The OIDC issuer, RS256 or ES256.
    Oidc,
}

impl TokenSource {
    /// The `method` label of `chatpipe_api_auth_successes_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Local => "bearer_local",
            TokenSource::Oidc => "bearer_oidc",
        }
    }
}

/// The caller of a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`.
    pub subject: String,
    /// The agent, for the api's own tokens.
    pub agent_id: Option<Uuid>,
    /// The agent's username (or the OIDC `preferred_username`).
    pub username: Option<String>,
    /// The agent's role, for the api's own tokens.
    pub role: Option<Role>,
    /// The scopes the token grants (known ones only).
    pub scopes: Vec<Scope>,
    /// Who issued it.
    pub source: TokenSource,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// `403` unless the token grants `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    /// Whether this caller is agent `id`.
    pub fn is_agent(&self, id: Uuid) -> bool {
        self.agent_id == Some(id)
    }
}

/// Who is calling, as [`authenticate`] leaves it in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: everything is allowed.
    Open,
    /// A verified token.
    Token(Principal),
}

/// The api's authentication: its own tokens and/or an OIDC issuer, and the
/// read-write pool of the agents tables.
pub struct Auth {
    /// The api's own tokens (`--jwt-secret`); `None`: password sign-in and
    /// `/agents` are not served.
    pub local: Option<LocalTokens>,
    /// The OIDC issuer (`--oidc-issuer`).
    pub oidc: Option<OidcVerifier>,
    /// Read-write pool for the agents and refresh-token tables.
    pub pool: Pool,
    /// Where successes and failures are counted.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("local", &self.local)
            .field("oidc", &self.oidc.as_ref().map(|o| o.config()))
            .finish()
    }
}

impl Auth {
    /// Verifies a bearer token: HS256 with the api's secret, RS256/ES256
    /// with the issuer's JWKS; anything else is refused.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match jwt::failure_of(&e) {
            AuthFailure::UnsupportedAlgorithm => AuthFailure::UnsupportedAlgorithm,
            _ => AuthFailure::Malformed,
        })?;
        match header.alg {
            Algorithm::HS256 => match &self.local {
                Some(local) => local.verify(token),
                None => Err(AuthFailure::UnsupportedAlgorithm),
            },
            Algorithm::RS256 | Algorithm::ES256 => match &self.oidc {
                Some(oidc) => oidc.verify(token, &header).await,
                None => Err(AuthFailure::UnsupportedAlgorithm),
            },
            _ => Err(AuthFailure::UnsupportedAlgorithm),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(AuthFailure::MissingToken)?
        .to_str()
        .map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthFailure::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthFailure::MissingToken);
    }
    Ok(token)
}

/// The state of [`authenticate`]: `None` when authentication is off.
pub type AuthLayerState = Option<Arc<Auth>>;

/// Middleware of the data routes: leaves the [`Caller`] in the request, or
/// answers `401` when authentication is on and the bearer token is absent
/// or invalid.
pub async fn authenticate(
    State(auth): State<AuthLayerState>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = match &auth {
        None => Caller::Open,
        Some(auth) => {
            let verified = match bearer_token(req.headers()) {
                Ok(token) => auth.verify(token).await,
                Err(e) => Err(e),
            };
            match verified {
                Ok(p) => {
                    AuthSucceeded {
                        method: p.source.as_str(),
                    }
                    .emit(&auth.metrics);
                    Caller::Token(p)
                }
                Err(reason) => return ApiError::Unauthorized(reason).into_response(),
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// A scope an endpoint needs, as a type (for [`RequireScope`]).
pub trait ScopeMarker {
    /// The scope.
    const SCOPE: Scope;
}

/// `conversations:read`.
#[derive(Debug)]
pub struct ConversationsRead;
impl ScopeMarker for ConversationsRead {
    const SCOPE: Scope = Scope::ConversationsRead;
}

/// `admin`.
#[derive(Debug)]
pub struct AdminScope;
impl ScopeMarker for AdminScope {
    const SCOPE: Scope = Scope::Admin;
}

/// Extractor of a handler that needs scope `S`: `403` when the token lacks
/// it, `401` when the route has no [`authenticate`] layer (never open by
/// mistake). Holds the caller.
#[derive(Debug)]
pub struct RequireScope<S: ScopeMarker>(pub Caller, pub PhantomData<S>);

impl<S: ScopeMarker, St: Send + Sync> FromRequestParts<St> for RequireScope<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::Open) => Ok(RequireScope(Caller::Open, PhantomData)),
            Some(Caller::Token(p)) => {
                p.require(S::SCOPE)?;
                Ok(RequireScope(Caller::Token(p.clone()), PhantomData))
            }
            None => Err(ApiError::Unauthorized(AuthFailure::MissingToken)),
        }
    }
}

/// Extractor of a handler that needs a verified token (any scope): `401`
/// otherwise (also when authentication is off: such routes are not served
/// then).
#[derive(Debug)]
pub struct Authenticated(pub Principal);

impl<St: Send + Sync> FromRequestParts<St> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::Token(p)) => Ok(Authenticated(p.clone())),
            _ => Err(ApiError::Unauthorized(AuthFailure::MissingToken)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), Err(AuthFailure::MissingToken));
        for (value, want) in [
            ("Bearer abc.def.ghi", Ok("abc.def.ghi")),
            ("bearer   abc ", Ok("abc")),
            ("Basic dXNlcjpwYXNz", Err(AuthFailure::MissingToken)),
            ("Bearer", Err(AuthFailure::MissingToken)),
            ("Bearer    ", Err(AuthFailure::MissingToken)),
            ("abc", Err(AuthFailure::MissingToken)),
        ] {
            h.insert(
                axum::http::header::AUTHORIZATION,
                HeaderValue::from_static(value),
            );
            assert_eq!(bearer_token(&h), want, "{value}");
        }
    }

    #[test]
    fn principals_need_their_scopes() {
        let p = Principal {
            subject: "s".into(),
            agent_id: None,
            username: None,
            role: None,
            scopes: vec![Scope::ConversationsRead],
            source: TokenSource::Oidc,
        };
        assert!(p.require(Scope::ConversationsRead).is_ok());
        let err = p.require(Scope::Admin).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);
        assert_eq!(err.body().error, "missing scope admin");
    }
}
