//! HTTP handlers of the query endpoints and what they share: the
//! application state and reading query strings into JSON 400s; the
//! authentication ([`auth`]) and agents ([`agents`]) endpoints, which
//! read their JSON bodies with [`body`]; and the channel endpoints:
//! agents' messages and the message feed ([`messages`]), [`contacts`],
//! [`channels`] and [`deliveries`].

pub mod agents;
pub mod auth;
pub mod body;
pub mod channels;
pub mod contacts;
pub mod conversations;
pub mod deliveries;
pub mod messages;
pub mod rejected;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use chatpipe_settings::channels::Channels;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::auth::{Scope, ScopeMarker};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pagination::{parse_limit, Cursor, CursorKind, PageError};

/// State of the channel endpoints: the query state, the declared channels
/// and the metrics their events count in.
#[derive(Clone)]
pub struct ChannelState {
    /// Pool, page sizes.
    pub app: AppState,
    /// The channels of `--channels` (no credentials).
    pub channels: Arc<Channels>,
    /// Where events are counted.
    pub metrics: Metrics,
}

/// `messages:send`, the scope of answering (sending messages, retrying
/// deliveries).
#[derive(Debug)]
pub struct MessagesSend;
impl ScopeMarker for MessagesSend {
    const SCOPE: Scope = Scope::MessagesSend;
}

/// An optional UUID query parameter: absent or empty → `None`, otherwise a
/// UUID or a `400` naming `field`.
pub fn uuid_param(raw: Option<&str>, field: &'static str) -> Result<Option<Uuid>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => chatpipe_core::event::parse_uuid(s)
            .map(Some)
            .ok_or_else(|| ApiError::bad(field, format!("{field} must be a UUID"))),
    }
}

/// An optional `channel` query parameter: absent or empty → `None`,
/// otherwise a valid channel name (declared or not: a channel removed
/// from the settings keeps its rows) or a `400`.
pub fn channel_param(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => chatpipe_settings::channels::check_channel_name(s)
            .map(|()| Some(s.to_owned()))
            .map_err(|e| ApiError::bad("channel", e)),
    }
}

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
