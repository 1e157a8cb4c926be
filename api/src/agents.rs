//! Agents — the people who read and answer conversations — and their
//! refresh tokens, in Postgres (tables of migration `V510__agents.sql`).
//!
//! One implementation for the api's `/agents` endpoints and for
//! `chatpipe-admin agent create`: validation (pure), Argon2id hashing
//! ([`crate::auth::password`]) and the SQL. Usernames are unique regardless
//! of case; the password hash never leaves this module in an [`Agent`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::password::hash_password;
use crate::auth::Role;
use crate::pagination::Cursor;
use chatpipe_core::event::format_timestamp;

/// Longest username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 128;

/// An agent as the api shows it (no credential of any kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    /// Agent id (the `sub` of its access tokens).
    pub id: Uuid,
    /// Sign-in name (unique regardless of case).
    pub username: String,
    /// `admin` or `agent`.
    pub role: Role,
    /// Name shown to people, when set.
    pub display_name: Option<String>,
    /// A disabled agent cannot sign in or refresh its tokens.
    pub disabled: bool,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it last changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// What a new agent is made of.
#[derive(Debug, Clone)]
pub struct NewAgent<'a> {
    /// Sign-in name.
    pub username: &'a str,
    /// Password in clear (hashed here, never stored).
    pub password: &'a str,
    /// Role.
    pub role: Role,
    /// Optional display name.
    pub display_name: Option<&'a str>,
}

/// What an update changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct AgentUpdate {
    /// New password (hashed here); revokes the agent's refresh tokens.
    pub password: Option<String>,
    /// New display name; `Some(None)` clears it.
    pub display_name: Option<Option<String>>,
    /// New role.
    pub role: Option<Role>,
    /// Disable (revokes the agent's refresh tokens) or enable.
    pub disabled: Option<bool>,
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A value is invalid.
    #[error("{message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// Another agent has this username (regardless of case).
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    /// The agents table does not exist.
    #[error("the database has no agents table: run `chatpipe-admin migrate` first")]
    SchemaMissing,
    /// Hashing the password failed.
    #[error("hashing the password failed: {0}")]
    Hash(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        field,
        message: message.into(),
    }
}

/// A username: 1 to 64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_username(username: &str) -> Result<(), AgentError> {
    let n = username.chars().count();
    if n == 0 {
        return Err(invalid("username", "username must not be empty"));
    }
    if n > MAX_USERNAME_CHARS {
        return Err(invalid(
            "username",
            format!("username must be at most {MAX_USERNAME_CHARS} characters"),
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(invalid(
            "username",
            "username may hold only letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(())
}

/// A password: at least 8 characters, at most 1024 bytes.
pub fn validate_password(password: &str) -> Result<(), AgentError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(invalid(
            "password",
            format!("password must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("password must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A display name: at most 128 characters, no control characters.
pub fn validate_display_name(name: &str) -> Result<(), AgentError> {
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(invalid(
            "display_name",
            format!("display_name must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(
            "display_name",
            "display_name must not hold control characters",
        ));
    }
    Ok(())
}

/// Hashes `password` off the async runtime.
async fn hash(password: &str) -> Result<String, AgentError> {
    let password = password.to_owned();
    crate::auth::password::off_runtime(move || hash_password(&password))
        .await
        .map_err(AgentError::Hash)?
        .map_err(|e| AgentError::Hash(e.to_string()))
}

fn db_error(e: tokio_postgres::Error, username: &str) -> AgentError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => AgentError::UsernameTaken(username.into()),
        Some(c) if *c == SqlState::UNDEFINED_TABLE => AgentError::SchemaMissing,
        _ => AgentError::Db(e),
    }
}

const COLUMNS: &str = "id, username, role, display_name, disabled, created_at, updated_at";

fn agent_of(row: &Row) -> Result<Agent, AgentError> {
    let role: String = row.try_get("role")?;
    Ok(Agent {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        role: Role::parse(&role).ok_or_else(|| invalid("role", format!("stored role {role:?}")))?,
        display_name: row.try_get("display_name")?,
        disabled: row.try_get("disabled")?,
        created_at: format_timestamp(row.try_get("created_at")?),
        updated_at: format_timestamp(row.try_get("updated_at")?),
    })
}

/// Whether the agents table exists.
pub async fn schema_present<C: GenericClient + Sync>(client: &C) -> Result<bool, AgentError> {
    let row = client
        .query_one("SELECT to_regclass('agents') IS NOT NULL", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// Validates, hashes and stores a new agent.
pub async fn create<C: GenericClient + Sync>(
    client: &C,
    new: &NewAgent<'_>,
) -> Result<Agent, AgentError> {
    validate_username(new.username)?;
    validate_password(new.password)?;
    if let Some(d) = new.display_name {
        validate_display_name(d)?;
    }
    let password_hash = hash(new.password).await?;
    let sql = format!(
        "INSERT INTO agents (id, username, password_hash, role, display_name) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &Uuid::new_v4(),
                &new.username,
                &password_hash,
                &new.role.as_str(),
                &new.display_name,
            ],
        )
        .await
        .map_err(|e| db_error(e, new.username))?;
    agent_of(&row)
}

/// Agent `id`.
pub async fn get<C: GenericClient + Sync>(
    client: &C,
    id: Uuid,
) -> Result<Option<Agent>, AgentError> {
    let sql = format!("SELECT {COLUMNS} FROM agents WHERE id = $1");
    client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(agent_of)
        .transpose()
}

/// The agent signing in as `username` (any case) and its password hash.
pub async fn for_sign_in<C: GenericClient + Sync>(
    client: &C,
    username: &str,
) -> Result<Option<(Agent, String)>, AgentError> {
    let sql =
        format!("SELECT {COLUMNS}, password_hash FROM agents WHERE lower(username) = lower($1)");
    match client.query_opt(&sql, &[&username]).await? {
        Some(row) => Ok(Some((agent_of(&row)?, row.try_get("password_hash")?))),
        None => Ok(None),
    }
}

/// A page of agents, oldest first (by `created_at`, then id), after
/// `after`; up to `limit` agents and the cursor of the next page.
pub async fn list<C: GenericClient + Sync>(
    client: &C,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<(Vec<Agent>, Option<Cursor>), AgentError> {
    let fetch = limit + 1;
    let rows = match after {
        None => {
            let sql = format!("SELECT {COLUMNS} FROM agents ORDER BY created_at, id LIMIT $1");
            client.query(&sql, &[&fetch]).await?
        }
        Some((t, id)) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM agents WHERE (created_at, id) > ($1, $2) \
                 ORDER BY created_at, id LIMIT $3"
            );
            client.query(&sql, &[&t, &id, &fetch]).await?
        }
    };
    let more = rows.len() as i64 > limit;
    let page_rows = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(0))];
    let page = page_rows
        .iter()
        .map(agent_of)
        .collect::<Result<Vec<_>, _>>()?;
    let next = match page_rows.last() {
        Some(row) if more => Some(Cursor::Agent {
            created_at: row.try_get("created_at")?,
            id: row.try_get("id")?,
        }),
        _ => None,
    };
    Ok((page, next))
}

/// Applies `update` to agent `id` (validated first); `None` when it does
/// not exist. A new password or disabling revokes its refresh tokens.
pub async fn update<C: GenericClient + Sync>(
    client: &C,
    id: Uuid,
    update: &AgentUpdate,
) -> Result<Option<Agent>, AgentError> {
    if let Some(p) = &update.password {
        validate_password(p)?;
    }
    if let Some(Some(d)) = &update.display_name {
        validate_display_name(d)?;
    }
    let password_hash = match &update.password {
        Some(p) => Some(hash(p).await?),
        None => None,
    };
    let sql = format!(
        "UPDATE agents SET \
           password_hash = coalesce($2, password_hash), \
           display_name = CASE WHEN $3 THEN $4 ELSE display_name END, \
           role = coalesce($5, role), \
           disabled = coalesce($6, disabled), \
           updated_at = now() \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = client
        .query_opt(
            &sql,
            &[
                &id,
                &password_hash,
                &update.display_name.is_some(),
                &update.display_name.clone().flatten(),
                &update.role.map(Role::as_str),
                &update.disabled,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if password_hash.is_some() || update.disabled == Some(true) {
        revoke_refresh_tokens(client, id).await?;
    }
    agent_of(&row).map(Some)
}

/// Deletes agent `id` (its refresh tokens go with it); whether it existed.
pub async fn delete<C: GenericClient + Sync>(client: &C, id: Uuid) -> Result<bool, AgentError> {
    Ok(client
        .execute("DELETE FROM agents WHERE id = $1", &[&id])
        .await?
        > 0)
}

/// Stores a refresh token (its SHA-256) of agent `id`, and forgets the
/// agent's expired ones.
pub async fn store_refresh_token<C: GenericClient + Sync>(
    client: &C,
    token_hash: &[u8; 32],
    agent_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), AgentError> {
    client
        .execute(
            "DELETE FROM agent_refresh_tokens WHERE agent_id = $1 AND expires_at < now()",
            &[&agent_id],
        )
        .await?;
    client
        .execute(
            "INSERT INTO agent_refresh_tokens (token_hash, agent_id, expires_at) VALUES ($1, $2, $3)",
            &[&&token_hash[..], &agent_id, &expires_at],
        )
        .await?;
    Ok(())
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid: it is now revoked (rotated) and agent `0` gets a new one.
    Rotated(Uuid),
    /// Already revoked: a replay. Every token of agent `0` is revoked.
    Reused(Uuid),
    /// Unknown or expired.
    Invalid,
}

/// Uses the refresh token whose SHA-256 is `token_hash`: revokes it when
/// valid (atomically: of two concurrent uses, one wins), and revokes every
/// token of its agent when it was already revoked.
pub async fn use_refresh_token<C: GenericClient + Sync>(
    client: &C,
    token_hash: &[u8; 32],
) -> Result<RefreshUse, AgentError> {
    let hash = &token_hash[..];
    let rotated = client
        .query_opt(
            "UPDATE agent_refresh_tokens SET revoked_at = now() \
             WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now() \
             RETURNING agent_id",
            &[&hash],
        )
        .await?;
    if let Some(row) = rotated {
        return Ok(RefreshUse::Rotated(row.try_get(0)?));
    }
    let replayed = client
        .query_opt(
            "SELECT agent_id FROM agent_refresh_tokens \
             WHERE token_hash = $1 AND revoked_at IS NOT NULL AND expires_at > now()",
            &[&hash],
        )
        .await?;
    match replayed {
        Some(row) => {
            let agent_id: Uuid = row.try_get(0)?;
            revoke_refresh_tokens(client, agent_id).await?;
            Ok(RefreshUse::Reused(agent_id))
        }
        None => Ok(RefreshUse::Invalid),
    }
}

/// Revokes every refresh token of agent `id`.
pub async fn revoke_refresh_tokens<C: GenericClient + Sync>(
    client: &C,
    agent_id: Uuid,
) -> Result<u64, AgentError> {
    Ok(client
        .execute(
            "UPDATE agent_refresh_tokens SET revoked_at = now() \
             WHERE agent_id = $1 AND revoked_at IS NULL",
            &[&agent_id],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<(), AgentError>) -> Option<&'static str> {
        match r {
            Err(AgentError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn usernames_are_validated() {
        for ok in [
            "ana",
            "ana.silva@example.com",
            "a_b-c",
            "João",
            &"x".repeat(64),
        ] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ana",
            "ana silva",
            "ana\n",
            "a/b",
            "<script>",
            &"x".repeat(65),
        ] {
            assert_eq!(field(validate_username(bad)), Some("username"), "{bad}");
        }
    }

    #[test]
    fn passwords_and_display_names_are_validated() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("ççççççç8").is_ok());
        assert_eq!(field(validate_password("1234567")), Some("password"));
        assert_eq!(field(validate_password("")), Some("password"));
        assert_eq!(
            field(validate_password(&"x".repeat(MAX_PASSWORD_BYTES + 1))),
            Some("password")
        );
        assert!(validate_display_name("Ana Silva").is_ok());
        assert_eq!(
            field(validate_display_name("a\u{0}b")),
            Some("display_name")
        );
        assert_eq!(
            field(validate_display_name(&"x".repeat(129))),
            Some("display_name")
        );
    }
}
