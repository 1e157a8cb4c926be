//! What the api says about itself: one type per observable fact.
//!
//! Each event both logs (level, message and structured fields fixed here)
//! and updates its metrics in one [`InternalEvent::emit`] call, so logs and
//! metrics never disagree. They are emitted by the request middleware
//! ([`crate::events::track`]): [`RequestAnswered`] for every request, and
//! for an error answer the event of the [`ErrorReport`] the
//! [`crate::error::ApiError`] left in the response's extensions. Every
//! warning counts something.
//!
//! | event | level | metric (`chatpipe_api_…`) |
//! |---|---|---|
//! | [`RequestAnswered`] | trace | `requests_total{route,method,status}`, `request_duration_seconds{route}` |
//! | [`DatabaseFailed`] | warn | `database_errors_total{kind}` (`connection`, `query`) |
//! | [`UnexpectedStoredValue`] | warn | `database_errors_total{kind="unexpected_value"}` |
//! | [`InvalidParameter`] | debug | `invalid_parameters_total{field}` (`cursor`, `limit`, `status`, `conversation_id`, `reason`, `query`) |
//! | [`AuthFailed`] | warn (a reused refresh token), info (wrong credentials), debug | `auth_failures_total{reason}` |
//! | [`AuthSucceeded`] | debug | `auth_successes_total{method}` (`password`, `refresh`, `bearer_local`, `bearer_oidc`) |
//! | [`JwksFetched`] | info | `jwks_fetches_total{outcome="ok"}` |
//! | [`JwksFetchFailed`] | warn | `jwks_fetches_total{outcome="error"}` |
//! | [`AgentChanged`] | info | `agent_changes_total{change}` (`created`, `updated`, `deleted`) |
//! | [`AgentMessageAccepted`] | info (new), debug (replayed) | `agent_messages_total{outcome}` (`queued`, `stored`, `replayed`) |
//! | [`IdempotencyKeyReused`] | info | `agent_messages_total{outcome="key_reused"}` |
//! | [`DeliveryRetried`] | info | `delivery_retries_total` |

use axum::http::StatusCode;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::failure::AuthFailure;
use crate::error::{DbFailure, ErrorReport};
use crate::metrics::Metrics;

/// A fact the api reports: logs it and updates its metrics.
pub trait InternalEvent {
    /// Logs the event and updates its metrics.
    fn emit(self, metrics: &Metrics);
}

/// An HTTP request was answered.
#[derive(Debug, Clone, Copy)]
pub struct RequestAnswered<'a> {
    /// The matched route pattern, or `unmatched`.
    pub route: &'a str,
    /// Its method.
    pub method: &'a str,
    /// The answer's status.
    pub status: StatusCode,
    /// Time to answer (s).
    pub seconds: f64,
}

impl InternalEvent for RequestAnswered<'_> {
    fn emit(self, m: &Metrics) {
        let status = self.status.as_str();
        tracing::trace!(
            route = self.route,
            method = self.method,
            status,
            seconds = self.seconds,
            "request answered"
        );
        m.latency
            .with_label_values(&[self.route])
            .observe(self.seconds);
        m.requests
            .with_label_values(&[self.route, self.method, status])
            .inc();
    }
}

/// A request was answered `503`: no pooled connection, or a statement
/// failed (including its statement timeout).
#[derive(Debug, Clone, Copy)]
pub struct DatabaseFailed<'a> {
    /// [`DbFailure::Connection`] or [`DbFailure::Query`].
    pub kind: DbFailure,
    /// What went wrong.
    pub error: &'a str,
}

impl InternalEvent for DatabaseFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "database error");
        m.database_errors
            .with_label_values(&[self.kind.as_str()])
            .inc();
    }
}

/// A request was answered `503` because a stored value is not one the api
/// knows (e.g. a conversation status other than OPEN and CLOSED).
#[derive(Debug, Clone, Copy)]
pub struct UnexpectedStoredValue<'a> {
    /// Which value.
    pub error: &'a str,
}

impl InternalEvent for UnexpectedStoredValue<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "database error");
        m.database_errors
            .with_label_values(&[DbFailure::UnexpectedValue.as_str()])
            .inc();
    }
}

/// A request was answered `400` for an invalid query parameter (a bad
/// cursor is `field = "cursor"`).
#[derive(Debug, Clone, Copy)]
pub struct InvalidParameter {
    /// The parameter, or `query` for a malformed query string.
    pub field: &'static str,
}

impl InternalEvent for InvalidParameter {
    fn emit(self, m: &Metrics) {
        tracing::debug!(field = self.field, "invalid query parameter: answered 400");
        m.invalid_parameters.with_label_values(&[self.field]).inc();
    }
}

/// A request was refused by authentication (`401`, or `403` for a missing
/// scope). Never logs a token or a password.
#[derive(Debug, Clone, Copy)]
pub struct AuthFailed {
    /// Why.
    pub reason: AuthFailure,
}

impl InternalEvent for AuthFailed {
    fn emit(self, m: &Metrics) {
        let reason = self.reason.as_str();
        match self.reason {
            AuthFailure::RefreshTokenReused => tracing::warn!(
                reason,
                "a refresh token was used twice: every refresh token of its agent is revoked"
            ),
            AuthFailure::BadCredentials => {
                tracing::info!(reason, "sign-in refused: invalid username or password")
            }
            _ => tracing::debug!(reason, "request refused by authentication"),
        }
        m.auth_failures.with_label_values(&[reason]).inc();
    }
}

/// A sign-in succeeded (`password`, `refresh`) or a bearer token verified
/// (`bearer_local`, `bearer_oidc`).
#[derive(Debug, Clone, Copy)]
pub struct AuthSucceeded {
    /// How.
    pub method: &'static str,
}

impl InternalEvent for AuthSucceeded {
    fn emit(self, m: &Metrics) {
        tracing::debug!(method = self.method, "authenticated");
        m.auth_successes.with_label_values(&[self.method]).inc();
    }
}

/// The OIDC issuer's JWKS was fetched.
#[derive(Debug, Clone, Copy)]
pub struct JwksFetched<'a> {
    /// From where.
    pub url: &'a str,
    /// How many usable keys it holds.
    pub keys: usize,
}

impl InternalEvent for JwksFetched<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            jwks_url = self.url,
            keys = self.keys,
            "fetched the OIDC issuer's JWKS"
        );
        m.jwks_fetches.with_label_values(&["ok"]).inc();
    }
}

/// The OIDC issuer's JWKS could not be fetched (the keys fetched before,
/// if any, stay in use).
#[derive(Debug, Clone, Copy)]
pub struct JwksFetchFailed<'a> {
    /// What went wrong.
    pub error: &'a str,
}

impl InternalEvent for JwksFetchFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = self.error, "could not fetch the OIDC issuer's JWKS");
        m.jwks_fetches.with_label_values(&["error"]).inc();
    }
}

/// An agent was created, updated or deleted through the api (an audit
/// line: who did what to whom, never a password).
#[derive(Debug, Clone, Copy)]
pub struct AgentChanged<'a> {
    /// `created`, `updated` or `deleted`.
    pub change: &'static str,
    /// The agent.
    pub agent_id: uuid::Uuid,
    /// The caller's subject.
    pub by: &'a str,
}

impl InternalEvent for AgentChanged<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            change = self.change,
            agent_id = %self.agent_id,
            by = self.by,
            "agent changed"
        );
        m.agent_changes.with_label_values(&[self.change]).inc();
    }
}

/// An agent's message was accepted (`202`): stored now, or the answer
/// of its idempotency key's first request replayed.
#[derive(Debug, Clone, Copy)]
pub struct AgentMessageAccepted {
    /// The message.
    pub message_id: uuid::Uuid,
    /// Its conversation.
    pub conversation_id: uuid::Uuid,
    /// The agent (none: authentication off, or an OIDC token).
    pub agent_id: Option<uuid::Uuid>,
    /// `queued` or `stored`.
    pub status: crate::model::SendStatus,
    /// Whether this answer is a replay.
    pub replayed: bool,
}

impl InternalEvent for AgentMessageAccepted {
    fn emit(self, m: &Metrics) {
        let agent = self.agent_id.map(|a| a.to_string());
        let agent = agent.as_deref().unwrap_or("-");
        if self.replayed {
            tracing::debug!(
                message_id = %self.message_id,
                conversation_id = %self.conversation_id,
                agent_id = agent,
                "agent message replayed for a repeated idempotency key"
            );
            m.agent_messages.with_label_values(&["replayed"]).inc();
        } else {
            tracing::info!(
                message_id = %self.message_id,
                conversation_id = %self.conversation_id,
                agent_id = agent,
                status = self.status.as_str(),
                "agent message stored"
            );
            m.agent_messages
                .with_label_values(&[self.status.as_str()])
                .inc();
        }
    }
}

/// An idempotency key was reused for another request (`422`).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKeyReused {
    /// The conversation of the refused request.
    pub conversation_id: uuid::Uuid,
}

impl InternalEvent for IdempotencyKeyReused {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            conversation_id = %self.conversation_id,
            "idempotency key reused for another request: answered 422"
        );
        m.agent_messages.with_label_values(&["key_reused"]).inc();
    }
}

/// A failed delivery was queued again.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRetried<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// The caller's subject (`-` with authentication off).
    pub by: &'a str,
}

impl InternalEvent for DeliveryRetried<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            delivery_id = self.delivery_id,
            by = self.by,
            "failed delivery queued again"
        );
        m.delivery_retries.inc();
    }
}

impl InternalEvent for ErrorReport {
    /// Emits the event of the report.
    fn emit(self, m: &Metrics) {
        match self {
            ErrorReport::Database {
                failure: DbFailure::UnexpectedValue,
                detail,
            } => UnexpectedStoredValue { error: &detail }.emit(m),
            ErrorReport::Database { failure, detail } => DatabaseFailed {
                kind: failure,
                error: &detail,
            }
            .emit(m),
            ErrorReport::InvalidParameter { field } => InvalidParameter { field }.emit(m),
            ErrorReport::AuthFailed { reason } => AuthFailed { reason }.emit(m),
            ErrorReport::Internal { detail } => {
                // Counted by requests_total{status="500"}.
                tracing::error!(error = %detail, "internal error: answered 500");
            }
        }
    }
}

/// Middleware recording each request; the route label is the matched route
/// pattern (`/conversations/{id}/`), or `unmatched`, so ids never become
/// label values. It reports the [`ErrorReport`] an error answer carries.
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let mut response = next.run(req).await;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(report) = response.extensions_mut().remove::<ErrorReport>() {
        report.emit(&metrics);
    }
    RequestAnswered {
        route: route.as_ref().map_or("unmatched", MatchedPath::as_str),
        method: method.as_str(),
        status: response.status(),
        seconds,
    }
    .emit(&metrics);
    response
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::error::ApiError;

    fn fresh() -> Metrics {
        Metrics::new().expect("metrics register")
    }

    #[test]
    fn request_answered_counts() {
        let m = fresh();
        RequestAnswered {
            route: "/conversations/{id}/",
            method: "GET",
            status: StatusCode::NOT_FOUND,
            seconds: 0.004,
        }
        .emit(&m);
        assert_eq!(
            m.requests
                .with_label_values(&["/conversations/{id}/", "GET", "404"])
                .get(),
            1
        );
        assert_eq!(
            m.latency
                .with_label_values(&["/conversations/{id}/"])
                .get_sample_count(),
            1
        );
    }

    #[test]
    fn error_events_count() {
        let m = fresh();
        let kind = |k: DbFailure| m.database_errors.with_label_values(&[k.as_str()]).get();
        DatabaseFailed {
            kind: DbFailure::Connection,
            error: "timed out waiting for a connection",
        }
        .emit(&m);
        DatabaseFailed {
            kind: DbFailure::Query,
            error: "canceling statement due to statement timeout",
        }
        .emit(&m);
        UnexpectedStoredValue {
            error: "unexpected status \"PAUSED\"",
        }
        .emit(&m);
        for k in DbFailure::ALL {
            assert_eq!(kind(k), 1, "{k:?}");
        }
        InvalidParameter { field: "cursor" }.emit(&m);
        assert_eq!(m.invalid_parameters.with_label_values(&["cursor"]).get(), 1);
    }

    #[test]
    fn channel_events_count() {
        use crate::model::SendStatus;
        let m = fresh();
        let accepted = |status, replayed| AgentMessageAccepted {
            message_id: uuid::Uuid::from_u128(1),
            conversation_id: uuid::Uuid::from_u128(2),
            agent_id: None,
            status,
            replayed,
        };
        accepted(SendStatus::Queued, false).emit(&m);
        accepted(SendStatus::Stored, false).emit(&m);
        accepted(SendStatus::Queued, true).emit(&m);
        accepted(SendStatus::Stored, true).emit(&m);
        IdempotencyKeyReused {
            conversation_id: uuid::Uuid::from_u128(2),
        }
        .emit(&m);
        let n = |o: &str| m.agent_messages.with_label_values(&[o]).get();
        assert_eq!(
            (n("queued"), n("stored"), n("replayed"), n("key_reused")),
            (1, 1, 2, 1)
        );
        DeliveryRetried {
            delivery_id: 3,
            by: "-",
        }
        .emit(&m);
        assert_eq!(m.delivery_retries.get(), 1);
    }

    #[test]
    fn error_answers_carry_their_report() {
        let m = fresh();
        let report = |e: ApiError| e.into_response().extensions_mut().remove::<ErrorReport>();
        assert_eq!(report(ApiError::NotFound("x".into())), None);
        let bad = report(ApiError::bad("limit", "too big")).expect("a report");
        assert_eq!(bad, ErrorReport::InvalidParameter { field: "limit" });
        bad.emit(&m);
        let query = report(ApiError::BadRequest {
            message: "invalid query string".into(),
            field: None,
        });
        query.expect("a report").emit(&m);
        assert_eq!(m.invalid_parameters.with_label_values(&["limit"]).get(), 1);
        assert_eq!(m.invalid_parameters.with_label_values(&["query"]).get(), 1);
        for failure in DbFailure::ALL {
            report(ApiError::Unavailable(failure, "down".into()))
                .expect("a report")
                .emit(&m);
            assert_eq!(
                m.database_errors
                    .with_label_values(&[failure.as_str()])
                    .get(),
                1
            );
        }
        assert_eq!(
            report(ApiError::unexpected(
                "unexpected direction \"SIDEWAYS\"".into()
            )),
            Some(ErrorReport::Database {
                failure: DbFailure::UnexpectedValue,
                detail: "unexpected direction \"SIDEWAYS\"".into(),
            })
        );
    }
}
