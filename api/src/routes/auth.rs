//! `POST /auth/token` (sign in with a username and password) and
//! `POST /auth/token/refresh` (a new access token for a refresh token,
//! which is rotated). Both are public; both answer `401` with the same
//! message whatever was wrong.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{json_object, required_string};
use crate::agents::{self, Agent, RefreshUse, MAX_PASSWORD_BYTES};
use crate::auth::jwt::{new_refresh_token, refresh_token_hash, AccessClaims, LocalTokens};
use crate::auth::password::{off_runtime, verify_dummy, verify_password};
use crate::auth::{Auth, AuthFailure, Role};
use crate::error::{ApiError, ErrorBody};
use crate::events::{AuthSucceeded, InternalEvent};

/// State of the authentication and agents routes.
#[derive(Clone)]
pub struct AccountState {
    /// Authentication (with its own tokens configured).
    pub auth: Arc<Auth>,
    /// Page size when `limit` is absent.
    pub default_limit: i64,
    /// Largest accepted `limit`.
    pub max_limit: i64,
}

impl AccountState {
    /// The api's own tokens (the routes are only served when configured).
    pub fn local(&self) -> Result<&LocalTokens, ApiError> {
        self.auth
            .local
            .as_ref()
            .ok_or_else(|| ApiError::NotFound(NOT_CONFIGURED.to_owned()))
    }
}

/// The `404` message of `/auth/…` and `/agents…` when the api has no JWT
/// secret.
pub const NOT_CONFIGURED: &str = "api authentication is not configured: \
set --jwt-secret (CHATPIPE_API_JWT_SECRET) to serve /auth/token and /agents";

/// `POST /auth/token` body.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// Username (any case).
    pub username: String,
    /// Password.
    #[schema(format = Password)]
    pub password: String,
}

/// `POST /auth/token/refresh` body.
#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The `refresh_token` of the last token response (each is usable once).
    pub refresh_token: String,
}

/// A token response.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// HS256 JWT to send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Opaque token for `POST /auth/token/refresh`, usable once.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
}

/// Issues an access token and a new refresh token (stored through
/// `client`) for `agent`.
async fn issue<C: tokio_postgres::GenericClient + Sync>(
    local: &LocalTokens,
    client: &C,
    agent: &Agent,
) -> Result<TokenResponse, ApiError> {
    let now = Utc::now();
    let claims = AccessClaims::new(
        agent.id,
        &agent.username,
        agent.role,
        now.timestamp(),
        local.access_ttl,
    );
    let access_token = local
        .sign(&claims)
        .map_err(|e| ApiError::Internal(format!("signing an access token: {e}")))?;
    let (refresh_token, hash) = new_refresh_token();
    let ttl = chrono::Duration::from_std(local.refresh_ttl)
        .unwrap_or_else(|_| chrono::Duration::days(3650));
    let expires_at = now.checked_add_signed(ttl).unwrap_or(now);
    agents::store_refresh_token(client, &hash, agent.id, expires_at).await?;
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer".to_owned(),
        expires_in: local.access_ttl.as_secs(),
    })
}

/// Signs in: an access token and a refresh token for a username and
/// password.
#[utoipa::path(
    post,
    path = "/auth/token",
    tag = "authentication",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 400, description = "Body is not a JSON object with string `username` and `password`", body = ErrorBody),
        (status = 401, description = "Invalid username or password (the same answer for both), or a disabled agent", body = ErrorBody),
        (status = 404, description = "Authentication is not configured", body = ErrorBody),
    )
)]
pub async fn token(
    State(state): State<AccountState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let local = state.local()?;
    let body = json_object(body)?;
    let username = required_string(&body, "username")?;
    let password = required_string(&body, "password")?;
    if password.len() > MAX_PASSWORD_BYTES || username.len() > 1024 {
        return Err(ApiError::Unauthorized(AuthFailure::BadCredentials));
    }
    let found = {
        let client = state.auth.pool.get().await?;
        agents::for_sign_in(&**client, &username).await?
    };
    // Argon2 off the runtime, without holding a pooled connection while it
    // waits for a slot; a missing user costs the same time.
    let agent = off_runtime(move || match found {
        Some((agent, hash)) => {
            (verify_password(&hash, &password) && !agent.disabled).then_some(agent)
        }
        None => {
            verify_dummy(&password);
            None
        }
    })
    .await
    .map_err(ApiError::Internal)?
    .ok_or(ApiError::Unauthorized(AuthFailure::BadCredentials))?;
    let client = state.auth.pool.get().await?;
    let response = issue(local, &**client, &agent).await?;
    AuthSucceeded { method: "password" }.emit(&state.auth.metrics);
    Ok(Json(response))
}

/// A new access token for a refresh token. The refresh token is rotated:
/// the answer carries a new one and the old one is spent; presenting a
/// spent token again revokes every refresh token of its agent.
#[utoipa::path(
    post,
    path = "/auth/token/refresh",
    tag = "authentication",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and a new refresh token", body = TokenResponse),
        (status = 400, description = "Body is not a JSON object with a string `refresh_token`", body = ErrorBody),
        (status = 401, description = "Unknown, expired, revoked or already used refresh token, or a disabled agent", body = ErrorBody),
        (status = 404, description = "Authentication is not configured", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AccountState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let local = state.local()?;
    let body = json_object(body)?;
    let token = required_string(&body, "refresh_token")?;
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::Unauthorized(AuthFailure::BadRefreshToken));
    }
    let hash = refresh_token_hash(&token);
    let mut client = state.auth.pool.get().await?;
    let tx = client.transaction().await?;
    let agent_id = match agents::use_refresh_token(&*tx, &hash).await? {
        RefreshUse::Rotated(id) => id,
        RefreshUse::Reused(_) => {
            // Keep the revocation of the agent's tokens.
            tx.commit().await?;
            return Err(ApiError::Unauthorized(AuthFailure::RefreshTokenReused));
        }
        RefreshUse::Invalid => return Err(ApiError::Unauthorized(AuthFailure::BadRefreshToken)),
    };
    let agent = match agents::get(&*tx, agent_id).await? {
        Some(a) if !a.disabled => a,
        _ => return Err(ApiError::Unauthorized(AuthFailure::BadRefreshToken)),
    };
    let response = issue(local, &*tx, &agent).await?;
    tx.commit().await?;
    AuthSucceeded { method: "refresh" }.emit(&state.auth.metrics);
    Ok(Json(response))
}

/// Whether `role` may be read from a request (`admin` or `agent`).
pub fn parse_role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw).ok_or_else(|| ApiError::bad("role", "role must be \"admin\" or \"agent\""))
}
