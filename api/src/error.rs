//! The api's error type and its JSON rendering. Every error a client can
//! cause maps to a 4xx with a body `{"error": "...", "field": "..."}`
//! (`field` only when one query parameter is at fault); only a failing
//! database yields a 5xx, and its details are logged, not returned.
//!
//! Authentication errors are `401` with `WWW-Authenticate: Bearer` and
//! `"field": "authorization"`, and `403` (`missing scope <scope>`).
//!
//! An answered error leaves an [`ErrorReport`] in the response's
//! extensions; the request middleware ([`crate::events::track`]) turns it
//! into its event of [`crate::events`], which logs it and counts it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::failure::AuthFailure;
use crate::auth::scopes::Scope;

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// The query parameter, body field or header at fault, when there is
    /// one (`authorization` for a missing or invalid bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The resource does not exist (or the id is not a UUID).
    #[error("{0}")]
    NotFound(String),
    /// A query parameter is invalid.
    #[error("{message}")]
    BadRequest {
        /// What is wrong with it.
        message: String,
        /// The parameter's name (`None`: the query string as a whole).
        field: Option<&'static str>,
    },
    /// `401`: no valid credentials (a bearer token, or a username and
    /// password, or a refresh token).
    #[error("{}", .0.message())]
    Unauthorized(AuthFailure),
    /// `403`: the token lacks the scope.
    #[error("missing scope {}", .0.as_str())]
    Forbidden(Scope),
    /// `403` for another reason than a missing scope (e.g. an agent
    /// changing its own role).
    #[error("{message}")]
    NotAllowed {
        /// Why.
        message: String,
        /// The body field at fault.
        field: Option<&'static str>,
    },
    /// `409`: the request conflicts with what is stored (e.g. a username
    /// that is taken).
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// The body field at fault.
        field: &'static str,
    },
    /// `422`: the request is well formed but cannot be applied (e.g. an
    /// `Idempotency-Key` reused for another request).
    #[error("{message}")]
    Unprocessable {
        /// Why.
        message: String,
        /// The body field or header at fault.
        field: &'static str,
    },
    /// `500`: a bug or an impossible state (details logged, not returned).
    #[error("internal error: {0}")]
    Internal(String),
    /// The database could not be reached or failed, or returned a value
    /// the api does not know.
    #[error("database unavailable: {1}")]
    Unavailable(DbFailure, String),
}

/// What kind of database failure an [`ApiError::Unavailable`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// No pooled connection (Postgres unreachable, pool exhausted).
    Connection,
    /// A statement failed (including its statement timeout).
    Query,
    /// A stored value the api does not know (e.g. an unknown status).
    UnexpectedValue,
}

impl DbFailure {
    /// Every kind.
    pub const ALL: [DbFailure; 3] = [
        DbFailure::Connection,
        DbFailure::Query,
        DbFailure::UnexpectedValue,
    ];

    /// The `kind` label of `chatpipe_api_database_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DbFailure::Connection => "connection",
            DbFailure::Query => "query",
            DbFailure::UnexpectedValue => "unexpected_value",
        }
    }
}

/// What an answered error leaves in the response's extensions for the
/// request middleware to report (log and count) as an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorReport {
    /// Answered `503`: the database failed.
    Database {
        /// How.
        failure: DbFailure,
        /// The details (logged, never returned).
        detail: String,
    },
    /// Answered `400`: a query parameter is invalid.
    InvalidParameter {
        /// The parameter (`query`: the query string as a whole).
        field: &'static str,
    },
    /// Answered `500`.
    Internal {
        /// The details (logged, never returned).
        detail: String,
    },
    /// Answered `401` or `403` by authentication.
    AuthFailed {
        /// Why.
        reason: AuthFailure,
    },
}

impl ApiError {
    /// A 400 naming the parameter `field`.
    pub fn bad(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field),
        }
    }

    /// A 503 for a stored value the api does not know.
    pub fn unexpected(detail: String) -> Self {
        ApiError::Unavailable(DbFailure::UnexpectedValue, detail)
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::NotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(..) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::NotFound(m) => ErrorBody {
                error: m.clone(),
                field: None,
            },
            ApiError::Unauthorized(reason) => ErrorBody {
                error: reason.message().to_owned(),
                field: match reason {
                    AuthFailure::BadCredentials
                    | AuthFailure::BadRefreshToken
                    | AuthFailure::RefreshTokenReused => None,
                    _ => Some("authorization".to_owned()),
                },
            },
            ApiError::Forbidden(_) => ErrorBody {
                error: self.to_string(),
                field: Some("authorization".to_owned()),
            },
            ApiError::NotAllowed { message, field } | ApiError::BadRequest { message, field } => {
                ErrorBody {
                    error: message.clone(),
                    field: field.map(str::to_owned),
                }
            }
            ApiError::Conflict { message, field } | ApiError::Unprocessable { message, field } => {
                ErrorBody {
                    error: message.clone(),
                    field: Some((*field).to_owned()),
                }
            }
            ApiError::Unavailable(..) => ErrorBody {
                error: "the database is unavailable, retry later".to_owned(),
                field: None,
            },
            ApiError::Internal(_) => ErrorBody {
                error: "internal error".to_owned(),
                field: None,
            },
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Unavailable(DbFailure::Query, e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::Unavailable(DbFailure::Connection, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        match &self {
            ApiError::Unauthorized(reason) => {
                let challenge = match reason {
                    AuthFailure::MissingToken => "Bearer".to_owned(),
                    AuthFailure::BadCredentials
                    | AuthFailure::BadRefreshToken
                    | AuthFailure::RefreshTokenReused => "Bearer".to_owned(),
                    other => format!(
                        "Bearer error=\"invalid_token\", error_description=\"{}\"",
                        other.message()
                    ),
                };
                if let Ok(v) = axum::http::HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .insert(axum::http::header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::Forbidden(scope) => {
                let challenge = format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    scope.as_str()
                );
                if let Ok(v) = axum::http::HeaderValue::from_str(&challenge) {
                    response
                        .headers_mut()
                        .insert(axum::http::header::WWW_AUTHENTICATE, v);
                }
            }
            _ => {}
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        let report = match self {
            ApiError::NotFound(_)
            | ApiError::NotAllowed { .. }
            | ApiError::Conflict { .. }
            | ApiError::Unprocessable { .. } => None,
            ApiError::Unauthorized(reason) => Some(ErrorReport::AuthFailed { reason }),
            ApiError::Internal(detail) => Some(ErrorReport::Internal { detail }),
            ApiError::Forbidden(_) => Some(ErrorReport::AuthFailed {
                reason: AuthFailure::MissingScope,
            }),
            ApiError::BadRequest { field, .. } => Some(ErrorReport::InvalidParameter {
                field: field.unwrap_or("query"),
            }),
            ApiError::Unavailable(failure, detail) => {
                Some(ErrorReport::Database { failure, detail })
            }
        };
        if let Some(report) = report {
            response.extensions_mut().insert(report);
        }
        response
    }
}
