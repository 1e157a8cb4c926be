//! Prometheus metrics of the api (names `chatpipe_api_*`), registered in the
//! registry `/metrics` serves: requests by route, method and status, a
//! latency histogram by route, database errors by kind, invalid query
//! parameters by field, and authentication: failures by reason, successes
//! by method, JWKS fetches by outcome and changes to agents; agents'
//! messages by outcome and retried deliveries.
//!
//! They are updated only through the events of `events.rs`, each of which
//! logs and counts in one call; its `track` middleware emits them for every
//! request and for the error report an answered error leaves in the
//! response.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// The api's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Registry holding them (served at `/metrics`).
    pub registry: Registry,
    /// `chatpipe_api_requests_total{route,method,status}`: HTTP requests
    /// answered.
    pub requests: IntCounterVec,
    /// `chatpipe_api_request_duration_seconds{route}`: time to answer.
    pub latency: HistogramVec,
    /// `chatpipe_api_database_errors_total{kind}`: requests answered `503`
    /// because of the database: `connection` (no pooled connection),
    /// `query` (a statement failed or timed out), `unexpected_value` (a
    /// stored value the api does not know).
    pub database_errors: IntCounterVec,
    /// `chatpipe_api_invalid_parameters_total{field}`: requests answered
    /// `400` for an invalid query parameter: `cursor` (not a cursor of this
    /// listing), `limit`, `status`, `conversation_id`, `reason`, or `query`
    /// (a malformed query string).
    pub invalid_parameters: IntCounterVec,
    /// `chatpipe_api_auth_failures_total{reason}`: requests refused by
    /// authentication (`401`/`403`), by
    /// [`crate::auth::AuthFailure::as_str`].
    pub auth_failures: IntCounterVec,
    /// `chatpipe_api_auth_successes_total{method}`: successful sign-ins
    /// (`password`, `refresh`) and verified bearer tokens (`bearer_local`,
    /// `bearer_oidc`).
    pub auth_successes: IntCounterVec,
    /// `chatpipe_api_jwks_fetches_total{outcome}`: fetches of the OIDC
    /// issuer's JWKS (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// `chatpipe_api_agent_changes_total{change}`: agents `created`,
    /// `updated`, `deleted` through the api.
    pub agent_changes: IntCounterVec,
    /// `chatpipe_api_agent_messages_total{outcome}`: agents' messages
    /// through `POST /conversations/{id}/messages`: `queued` (stored and
    /// queued for delivery), `stored` (no channel), `replayed` (a repeated
    /// idempotency key answered as the first time), `key_reused` (a key
    /// reused for another request, `422`).
    pub agent_messages: IntCounterVec,
    /// `chatpipe_api_delivery_retries_total`: failed deliveries queued
    /// again through `POST /deliveries/{id}/retry`.
    pub delivery_retries: prometheus::IntCounter,
    /// `chatpipe_api_auth_enabled`: 1 when data endpoints need a bearer
    /// token, 0 when the api is open (it warns at start).
    pub auth_enabled: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics in a new registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_requests_total",
                "HTTP requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "chatpipe_api_request_duration_seconds",
                "Time to answer an HTTP request, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route"],
        )?;
        let database_errors = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_database_errors_total",
                "Requests answered 503 because of the database, by kind (connection, query, unexpected_value).",
            ),
            &["kind"],
        )?;
        let invalid_parameters = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_invalid_parameters_total",
                "Requests answered 400 for an invalid query parameter, by parameter.",
            ),
            &["field"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_auth_failures_total",
                "Requests refused by authentication (401/403), by reason.",
            ),
            &["reason"],
        )?;
        let auth_successes = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_auth_successes_total",
                "Successful sign-ins and verified bearer tokens, by method.",
            ),
            &["method"],
        )?;
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_jwks_fetches_total",
                "Fetches of the OIDC issuer's JWKS, by outcome (ok, error).",
            ),
            &["outcome"],
        )?;
        let agent_changes = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_agent_changes_total",
                "Agents created, updated and deleted through the api.",
            ),
            &["change"],
        )?;
        let agent_messages = IntCounterVec::new(
            Opts::new(
                "chatpipe_api_agent_messages_total",
                "Agents' messages, by outcome (queued, stored, replayed, key_reused).",
            ),
            &["outcome"],
        )?;
        let delivery_retries = prometheus::IntCounter::new(
            "chatpipe_api_delivery_retries_total",
            "Failed deliveries queued again through the api.",
        )?;
        let auth_enabled = IntGauge::new(
            "chatpipe_api_auth_enabled",
            "1 when data endpoints need a bearer token, 0 when the api is open.",
        )?;
        registry.register(Box::new(auth_enabled.clone()))?;
        registry.register(Box::new(agent_messages.clone()))?;
        registry.register(Box::new(delivery_retries.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(auth_successes.clone()))?;
        registry.register(Box::new(jwks_fetches.clone()))?;
        registry.register(Box::new(agent_changes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(database_errors.clone()))?;
        registry.register(Box::new(invalid_parameters.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            database_errors,
            invalid_parameters,
            auth_failures,
            auth_successes,
            jwks_fetches,
            agent_changes,
            agent_messages,
            delivery_retries,
            auth_enabled,
        })
    }
}
