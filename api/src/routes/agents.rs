//! Agent management: `POST /agents`, `GET /agents` (admin),
//! `GET /agents/me`, `GET /agents/{id}` and `PATCH /agents/{id}` (admin,
//! or the agent itself), `DELETE /agents/{id}` (admin).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{parse_role, AccountState};
use super::body::{json_object, no_other_fields, optional_bool, optional_string, required_string};
use super::{cursor, page_error, query};
use crate::agents::{self, Agent, AgentError, AgentUpdate, NewAgent};
use crate::auth::{AdminScope, Authenticated, Principal, RequireScope, Role, Scope};
use crate::error::{ApiError, DbFailure, ErrorBody};
use crate::events::{AgentChanged, InternalEvent};
use crate::pagination::{parse_limit, Cursor, CursorKind};

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Invalid { field, message } => ApiError::BadRequest {
                message,
                field: Some(field),
            },
            AgentError::UsernameTaken(_) => ApiError::Conflict {
                message: "username is taken".to_owned(),
                field: "username",
            },
            AgentError::SchemaMissing => ApiError::Unavailable(
                DbFailure::Query,
                "the agents table is missing: run chatpipe-admin migrate".to_owned(),
            ),
            AgentError::Hash(d) => ApiError::Internal(d),
            AgentError::Db(e) => e.into(),
        }
    }
}

/// `POST /agents` body.
#[derive(Deserialize, ToSchema)]
pub struct CreateAgent {
    /// 1–64 letters, digits, `.`, `_`, `-`, `@`; unique regardless of case.
    pub username: String,
    /// At least 8 characters.
    #[schema(format = Password)]
    pub password: String,
    /// `admin` or `agent`.
    pub role: Role,
    /// Optional name shown to people (at most 128 characters).
    pub display_name: Option<String>,
}

/// `PATCH /agents/{id}` body: every field optional.
#[derive(Deserialize, ToSchema)]
pub struct UpdateAgent {
    /// New password (revokes the agent's refresh tokens).
    #[schema(format = Password)]
    pub password: Option<String>,
    /// New display name; `null` clears it.
    pub display_name: Option<String>,
    /// New role (admin only).
    pub role: Option<Role>,
    /// Disable or enable (admin only; disabling revokes the agent's
    /// refresh tokens).
    pub disabled: Option<bool>,
}

/// `GET /agents`: one page, oldest agent first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentPage {
    /// This page.
    pub agents: Vec<Agent>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /agents`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentListParams {
    /// Page size, 1 to the configured maximum (default 50, max 500).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn agent_id(raw: &str) -> Result<Uuid, ApiError> {
    chatpipe_core::event::parse_uuid(raw)
        .ok_or_else(|| ApiError::NotFound(format!("agent {raw:?} not found")))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("agent {id} not found"))
}

/// Creates an agent.
#[utoipa::path(
    post,
    path = "/agents",
    tag = "agents",
    request_body = CreateAgent,
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 201, description = "Created", body = Agent),
        (status = 400, description = "Invalid username, password, role or display_name", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "Missing scope admin", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
    )
)]
pub async fn create_agent(
    RequireScope(caller, ..): RequireScope<AdminScope>,
    State(state): State<AccountState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Agent>), ApiError> {
    let body = json_object(body)?;
    no_other_fields(&body, &["username", "password", "role", "display_name"])?;
    let username = required_string(&body, "username")?;
    let password = required_string(&body, "password")?;
    let role = parse_role(&required_string(&body, "role")?)?;
    let display_name = optional_string(&body, "display_name", true)?.flatten();
    let client = state.auth.pool.get().await?;
    let agent = agents::create(
        &**client,
        &NewAgent {
            username: &username,
            password: &password,
            role,
            display_name: display_name.as_deref(),
        },
    )
    .await?;
    AgentChanged {
        change: "created",
        agent_id: agent.id,
        by: subject(&caller),
    }
    .emit(&state.auth.metrics);
    Ok((StatusCode::CREATED, Json(agent)))
}

fn subject(caller: &crate::auth::Caller) -> &str {
    match caller {
        crate::auth::Caller::Token(p) => &p.subject,
        crate::auth::Caller::Open => "-",
    }
}

/// Agents, oldest first, keyset-paginated.
#[utoipa::path(
    get,
    path = "/agents",
    tag = "agents",
    params(AgentListParams),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 200, description = "One page", body = AgentPage),
        (status = 400, description = "Invalid limit or cursor", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "Missing scope admin", body = ErrorBody),
    )
)]
pub async fn list_agents(
    _: RequireScope<AdminScope>,
    State(state): State<AccountState>,
    q: Result<Query<AgentListParams>, QueryRejection>,
) -> Result<Json<AgentPage>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), state.default_limit, state.max_limit)
        .map_err(page_error)?;
    let after = match cursor(q.cursor.as_deref(), CursorKind::Agent)? {
        Some(Cursor::Agent { created_at, id }) => Some((created_at, id)),
        _ => None,
    };
    let client = state.auth.pool.get().await?;
    let (agents, next) = agents::list(&**client, after, limit).await?;
    Ok(Json(AgentPage {
        agents,
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// The calling agent.
#[utoipa::path(
    get,
    path = "/agents/me",
    tag = "agents",
    security(("bearerAuth" = [])),
    responses(
        (status = 200, description = "The agent of the bearer token", body = Agent),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "The token is not an agent's (an OIDC token), or the agent was deleted", body = ErrorBody),
    )
)]
pub async fn get_me(
    Authenticated(p): Authenticated,
    State(state): State<AccountState>,
) -> Result<Json<Agent>, ApiError> {
    let id = p
        .agent_id
        .ok_or_else(|| ApiError::NotFound("the bearer token is not an agent's".to_owned()))?;
    let client = state.auth.pool.get().await?;
    agents::get(&**client, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// `403` unless the caller is agent `id` or holds scope `admin`.
fn self_or_admin(p: &Principal, id: Uuid) -> Result<(), ApiError> {
    if p.is_agent(id) {
        Ok(())
    } else {
        p.require(Scope::Admin)
    }
}

/// One agent.
#[utoipa::path(
    get,
    path = "/agents/{id}",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id (UUID)")),
    security(("bearerAuth" = ["admin"]), ("bearerAuth" = [])),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "Neither the agent itself nor scope admin", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
    )
)]
pub async fn get_agent(
    Authenticated(p): Authenticated,
    State(state): State<AccountState>,
    Path(id): Path<String>,
) -> Result<Json<Agent>, ApiError> {
    let id = agent_id(&id)?;
    self_or_admin(&p, id)?;
    let client = state.auth.pool.get().await?;
    agents::get(&**client, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// Changes an agent. The agent itself may change its password and display
/// name; only an admin may change `role` or `disabled`, and not its own.
#[utoipa::path(
    patch,
    path = "/agents/{id}",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id (UUID)")),
    request_body = UpdateAgent,
    security(("bearerAuth" = ["admin"]), ("bearerAuth" = [])),
    responses(
        (status = 200, description = "The changed agent", body = Agent),
        (status = 400, description = "Invalid password, display_name, role or disabled", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "Not allowed to change this agent or this field", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "An admin demoting or disabling itself", body = ErrorBody),
    )
)]
pub async fn update_agent(
    Authenticated(p): Authenticated,
    State(state): State<AccountState>,
    Path(id): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Json<Agent>, ApiError> {
    let id = agent_id(&id)?;
    self_or_admin(&p, id)?;
    let body = json_object(body)?;
    no_other_fields(&body, &["password", "display_name", "role", "disabled"])?;
    let update = AgentUpdate {
        password: optional_string(&body, "password", false)?.flatten(),
        display_name: optional_string(&body, "display_name", true)?,
        role: optional_string(&body, "role", false)?
            .flatten()
            .map(|r| parse_role(&r))
            .transpose()?,
        disabled: optional_bool(&body, "disabled")?,
    };
    let admin = p.has(Scope::Admin);
    for (field, changed) in [
        ("role", update.role.is_some()),
        ("disabled", update.disabled.is_some()),
    ] {
        if changed && !admin {
            return Err(ApiError::NotAllowed {
                message: format!("only an admin may change {field}"),
                field: Some(field),
            });
        }
    }
    if p.is_agent(id) && (update.role == Some(Role::Agent) || update.disabled == Some(true)) {
        return Err(ApiError::Conflict {
            message: "an admin cannot demote or disable itself; ask another admin".to_owned(),
            field: if update.role.is_some() {
                "role"
            } else {
                "disabled"
            },
        });
    }
    let client = state.auth.pool.get().await?;
    let agent = agents::update(&**client, id, &update)
        .await?
        .ok_or_else(|| not_found(id))?;
    AgentChanged {
        change: "updated",
        agent_id: id,
        by: &p.subject,
    }
    .emit(&state.auth.metrics);
    Ok(Json(agent))
}

/// Deletes an agent (its refresh tokens with it; its access tokens stay
/// valid until they expire).
#[utoipa::path(
    delete,
    path = "/agents/{id}",
    tag = "agents",
    params(("id" = String, Path, description = "Agent id (UUID)")),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 403, description = "Missing scope admin", body = ErrorBody),
        (status = 404, description = "Unknown id", body = ErrorBody),
        (status = 409, description = "An admin deleting itself", body = ErrorBody),
    )
)]
pub async fn delete_agent(
    RequireScope(caller, ..): RequireScope<AdminScope>,
    State(state): State<AccountState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = agent_id(&id)?;
    if let crate::auth::Caller::Token(p) = &caller {
        if p.is_agent(id) {
            return Err(ApiError::Conflict {
                message: "an admin cannot delete itself; ask another admin".to_owned(),
                field: "id",
            });
        }
    }
    let client = state.auth.pool.get().await?;
    if !agents::delete(&**client, id).await? {
        return Err(not_found(id));
    }
    AgentChanged {
        change: "deleted",
        agent_id: id,
        by: subject(&caller),
    }
    .emit(&state.auth.metrics);
    Ok(StatusCode::NO_CONTENT)
}
