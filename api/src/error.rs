//! The api's error type and its JSON rendering. Every error a client can
//! cause maps to a 4xx with a body `{"error": "...", "field": "..."}`
//! (`field` only when one query parameter is at fault); only a failing
//! database yields a 5xx, and its details are logged, not returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    pub error: String,
    /// The query parameter or path segment at fault, when there is one.
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
        /// The parameter's name.
        field: Option<String>,
    },
    /// The database could not be reached or failed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 naming the parameter `field`.
    pub fn bad(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body this error is answered with.
    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::NotFound(m) => ErrorBody {
                error: m.clone(),
                field: None,
            },
            ApiError::BadRequest { message, field } => ErrorBody {
                error: message.clone(),
                field: field.clone(),
            },
            ApiError::Unavailable(_) => ErrorBody {
                error: "the database is unavailable, retry later".to_owned(),
                field: None,
            },
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Unavailable(detail) = &self {
            tracing::warn!(error = %detail, "database error");
        }
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
