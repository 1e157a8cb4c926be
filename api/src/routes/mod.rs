//! HTTP handlers of the query endpoints and what they share: the
//! application state and reading query strings into JSON 400s; and the
//! authentication ([`auth`]) and agents ([`agents`]) endpoints, which
//! read their JSON bodies with [`body`].

pub mod agents;
pub mod auth;
pub mod body;
pub mod conversations;
pub mod rejected;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use deadpool_postgres::Pool;

use crate::error::ApiError;
use crate::pagination::{parse_limit, Cursor, CursorKind, PageError};

/// State shared by the query handlers.
#[derive(Clone)]
pub struct AppState {
    /// Read-only connection pool.
    pub pool: Pool,
    /// Page size when `limit` is absent.
    pub default_limit: i64,
    /// Largest accepted `limit`.
    pub max_limit: i64,
}

impl AppState {
    /// Reads `limit` with this api's bounds.
    pub fn limit(&self, raw: Option<&str>) -> Result<i64, ApiError> {
        parse_limit(raw, self.default_limit, self.max_limit).map_err(page_error)
    }
}

/// Reads an optional `cursor` of a listing of `kind`.
pub fn cursor(raw: Option<&str>, kind: CursorKind) -> Result<Option<Cursor>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => Cursor::decode(s, kind).map(Some).map_err(page_error),
    }
}

/// A page error as a `400` naming `cursor` or `limit`.
pub fn page_error(e: PageError) -> ApiError {
    let field = match e {
        PageError::Cursor(_) => "cursor",
        PageError::Limit { .. } => "limit",
    };
    ApiError::bad(field, e.to_string())
}

/// Unwraps a query string, turning a malformed one into a JSON 400.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::BadRequest {
        message: format!("invalid query string: {}", e.body_text()),
        field: None,
    })
}
