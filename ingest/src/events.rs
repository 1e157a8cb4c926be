//! What ingest says about itself: one type per observable fact.
//!
//! Each event both logs (level, message and structured fields fixed here)
//! and updates its metrics in one [`InternalEvent::emit`] call, so logs and
//! metrics never disagree. The webhook handler, the producer, the status
//! lookups and the in-flight floor publisher log only through these events,
//! the server its warnings and connection errors (its start and stop lines
//! are plain info logs), and counters and histograms are updated only
//! through them; gauges that describe state (`in_flight_requests`,
//! `inflight_records`) are set directly. Every warning and error counts something; the events
//! of normal operation log at info (a change worth a line), debug or trace
//! (one request).
//!
//! The per-request events ([`WebhookAnswered`], [`RecordAcknowledged`])
//! borrow everything they log and allocate nothing: they do what the
//! handler did by hand (two labelled metric updates) plus a `trace!` that
//! costs one level check when tracing is off.
//!
//! | event | level | metric (`chatpipe_ingest_…`) |
//! |---|---|---|
//! | [`WebhookAnswered`] | trace; warn when answered `503` unavailable | `requests_total{event_type,status}`, `request_duration_seconds{event_type}` |
//! | [`RequestShed`] | debug | `shed_requests_total` |
//! | [`RateLimited`] | debug | `rate_limited_total` |
//! | [`RateLimitClientsForgotten`] | debug | `rate_limit_clients` (gauge) |
//! | [`BodyReadTimedOut`] | info | `body_read_timeouts_total` |
//! | [`EventInvalid`] | trace | `invalid_events_total{field}` |
//! | [`EventRefused`] | trace | `refused_events_total{event_type,reason}` |
//! | [`ClosedCacheHit`] | trace | `closed_cache_hits_total` |
//! | [`MessageIdTaken`] | info | `message_id_conflicts_total{reason}` |
//! | [`ReplayAnswered`] | info | `idempotent_replays_total{event_type}` |
//! | [`LifecycleFailed`] | debug (the `503` is logged by [`WebhookAnswered`]) | `lifecycle_failures_total{kind}` |
//! | [`DecisionTaskFailed`] | error | `decision_task_failures_total` |
//! | [`RecordAcknowledged`] | trace | `produce_duration_seconds` |
//! | [`ProduceFailed`] | debug (the `503` is logged by [`WebhookAnswered`]) | `produce_failures_total{reason}` |
//! | [`ProducerReplaced`] | warn | `producer_recreated_total` |
//! | [`ProducerCreateFailed`] | error | `producer_create_failures_total` |
//! | [`LookupBatchDone`] | trace | `status_lookup_batch_size`, `status_lookup_duration_seconds` |
//! | [`LookupFailed`] | warn | `status_lookup_failures_total{kind}` |
//! | [`InflightPublisherStarted`] | info | — |
//! | [`InflightFloorWritten`] | debug (when the value changed) | `inflight_floor_writes_total` |
//! | [`InflightFloorWritesRecovered`] | info | — (ends what [`InflightFloorWriteFailed`] counted) |
//! | [`InflightFloorWriteFailed`] | warn (first of a run, then one in 100) | `inflight_floor_failures_total{op="upsert"}` |
//! | [`InflightFloorRemoved`] | info | `inflight_floor_writes_total` |
//! | [`InflightFloorRemoveFailed`] | warn | `inflight_floor_failures_total{op="delete"}` |
//! | [`InflightPublisherFailed`] | warn | `inflight_publisher_failures_total` |
//! | [`ConnectionAcceptFailed`] | warn | `connection_errors_total{kind="accept"}` |
//! | [`ConnectionFailed`] | debug | `connection_errors_total{kind}` (`header_timeout`, `other`) |
//! | [`ShutdownWaitExpired`] | warn | `shutdown_incomplete_total{stage}` (`requests`, `webhook_work`) |
//! | [`ProducerFlushIncomplete`] | warn | `shutdown_incomplete_total{stage="producer_flush"}` |
//! | [`WebhookAuthConfigured`] | warn without secrets ("webhooks are not authenticated"), else info | `webhook_auth_secrets` (gauge, set once) |
//! | [`WebhookAuthFailed`] | debug | `webhook_auth_failures_total{reason}` |
//! | [`WebhookAuthenticated`] | trace | `webhook_auth_successes_total{secret}` |
//! | [`ChannelsConfigured`] | info | `channels` (gauge, set once) |
//! | [`ChannelWebhookAnswered`] | debug; warn when answered `503` unavailable | `channel_requests_total{channel,method,status}`, `channel_request_duration_seconds{channel}` |
//! | [`ChannelAuthFailed`] | info | `channel_auth_failures_total{channel,header}` |
//! | [`ChannelMessageDecided`] | debug | `channel_messages_total{channel,kind,outcome}` (`opened`, `appended`, `duplicate`) |
//! | [`ChannelStatusStored`] | debug | `channel_statuses_total{channel,status,applied}` |
//! | [`ChannelItemIgnored`] | debug | `channel_ignored_total{channel}` |

use std::fmt::Display;
use std::time::Duration;

use axum::http::StatusCode;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::signature::{AuthFailure, Verifier};

/// A fact ingest reports: logs it and updates its metrics.
pub trait InternalEvent {
    /// Logs the event and updates its metrics.
    fn emit(self, metrics: &Metrics);
}

/// A webhook request was answered.
#[derive(Debug, Clone, Copy)]
pub struct WebhookAnswered<'a> {
    /// Its event type, `INVALID` (the body did not validate), `UNREAD`
    /// (`503` load shedding, `408`) or `UNAUTHENTICATED` (`401`).
    pub event_type: &'a str,
    /// The answer's status.
    pub status: StatusCode,
    /// Time from arrival to answer (s).
    pub seconds: f64,
    /// Why, when answered `503` because the broker or Postgres failed.
    pub unavailable: Option<&'a str>,
}

impl InternalEvent for WebhookAnswered<'_> {
    fn emit(self, m: &Metrics) {
        let status = self.status.as_str();
        tracing::trace!(
            event_type = self.event_type,
            status,
            seconds = self.seconds,
            "webhook answered"
        );
        m.requests
            .with_label_values(&[self.event_type, status])
            .inc();
        m.request_duration
            .with_label_values(&[self.event_type])
            .observe(self.seconds);
        if let Some(reason) = self.unavailable {
            tracing::warn!(event_type = self.event_type, %reason, "answered 503");
        }
    }
}

/// A webhook request was answered `503` at once: the concurrency limit was
/// reached (its body is not read).
#[derive(Debug, Clone, Copy)]
pub struct RequestShed {
    /// The limit.
    pub limit: usize,
}

/// A client over its rate limit was answered `429`.
pub struct RateLimited {
    /// The client.
    pub client: std::net::IpAddr,
    /// How long until its next request is allowed.
    pub wait: std::time::Duration,
}

impl InternalEvent for RateLimited {
    fn emit(self, m: &Metrics) {
        m.rate_limited.inc();
        tracing::debug!(
            client = %self.client,
            wait_ms = self.wait.as_millis() as u64,
            "client over its rate limit: answered 429"
        );
    }
}

/// The rate limiter forgot the clients whose buckets were full again.
pub struct RateLimitClientsForgotten {
    /// Clients it still tracks.
    pub remaining: usize,
}

impl InternalEvent for RateLimitClientsForgotten {
    fn emit(self, m: &Metrics) {
        m.rate_limit_clients.set(self.remaining as i64);
        tracing::debug!(
            remaining = self.remaining,
            "rate limiter: idle clients forgotten"
        );
    }
}

impl InternalEvent for RequestShed {
    fn emit(self, m: &Metrics) {
        m.shed_requests.inc();
        tracing::debug!(
            limit = self.limit,
            "concurrency limit reached: answered 503"
        );
    }
}

/// A webhook body did not arrive within the body read timeout (answered
/// `408`).
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimedOut {
    /// The timeout.
    pub timeout: Duration,
}

impl InternalEvent for BodyReadTimedOut {
    fn emit(self, m: &Metrics) {
        m.body_read_timeouts.inc();
        tracing::info!(
            timeout = ?self.timeout,
            "request body did not arrive in time: answered 408"
        );
    }
}

/// The `field` label of [`EventInvalid`]: the contract's fields, else
/// `other` (label values stay bounded whatever a validator names).
pub fn invalid_field_label(field: &str) -> &'static str {
    match field {
        "body" => "body",
        "type" => "type",
        "timestamp" => "timestamp",
        "data" => "data",
        "data.id" => "data.id",
        "data.content" => "data.content",
        "data.conversation_id" => "data.conversation_id",
        _ => "other",
    }
}

/// A webhook body was answered `400` at validation: unreadable, too large,
/// not JSON or not an event of the contract.
#[derive(Debug, Clone, Copy)]
pub struct EventInvalid<'a> {
    /// The field at fault (`body` for the whole body).
    pub field: &'a str,
    /// What is wrong with it.
    pub error: &'a str,
}

impl InternalEvent for EventInvalid<'_> {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            field = self.field,
            error = self.error,
            "event rejected at validation"
        );
        m.invalid_events
            .with_label_values(&[invalid_field_label(self.field)])
            .inc();
    }
}

/// Why the lifecycle rules refused a valid event ([`EventRefused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// NEW_CONVERSATION for an id that exists (with another time).
    ConversationExists,
    /// CLOSE_CONVERSATION for an unknown id.
    ConversationUnknown,
    /// CLOSE_CONVERSATION (with another time) or NEW_MESSAGE for a CLOSED
    /// conversation.
    ConversationClosed,
}

impl RefusalReason {
    /// Every reason.
    pub const ALL: [RefusalReason; 3] = [
        RefusalReason::ConversationExists,
        RefusalReason::ConversationUnknown,
        RefusalReason::ConversationClosed,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::ConversationExists => "conversation_exists",
            RefusalReason::ConversationUnknown => "conversation_unknown",
            RefusalReason::ConversationClosed => "conversation_closed",
        }
    }
}

/// A valid event was refused `400` by the conversation lifecycle rules.
#[derive(Debug, Clone, Copy)]
pub struct EventRefused<'a> {
    /// Its event type.
    pub event_type: &'a str,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Why.
    pub reason: RefusalReason,
}

impl InternalEvent for EventRefused<'_> {
    fn emit(self, m: &Metrics) {
        let reason = self.reason.as_str();
        tracing::trace!(
            event_type = self.event_type,
            conversation_id = %self.conversation_id,
            reason,
            "event refused by the lifecycle rules"
        );
        m.refused_events
            .with_label_values(&[self.event_type, reason])
            .inc();
    }
}

/// A NEW_MESSAGE's conversation was found in the memory of CLOSED ids (it
/// is refused without a lookup).
#[derive(Debug, Clone, Copy)]
pub struct ClosedCacheHit {
    /// The conversation.
    pub conversation_id: Uuid,
}

impl InternalEvent for ClosedCacheHit {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            conversation_id = %self.conversation_id,
            "conversation remembered as CLOSED"
        );
        m.closed_cache_hits.inc();
    }
}

/// A NEW_MESSAGE was refused `400` because its id is stored as an OUTBOUND
/// message or as a message of another conversation.
#[derive(Debug, Clone, Copy)]
pub struct MessageIdTaken {
    /// The message id.
    pub message_id: Uuid,
    /// The conversation it was sent to.
    pub conversation_id: Uuid,
    /// `outbound` or `other_conversation`.
    pub reason: &'static str,
}

impl InternalEvent for MessageIdTaken {
    fn emit(self, m: &Metrics) {
        m.message_id_conflicts
            .with_label_values(&[self.reason])
            .inc();
        tracing::info!(message_id = %self.message_id, conversation_id = %self.conversation_id, reason = self.reason, "NEW_MESSAGE id is taken: answered 400");
    }
}

/// An identical redelivery of a committed NEW_CONVERSATION or
/// CLOSE_CONVERSATION was answered like the first success; nothing was
/// produced.
#[derive(Debug, Clone, Copy)]
pub struct ReplayAnswered<'a> {
    /// NEW_CONVERSATION or CLOSE_CONVERSATION.
    pub event_type: &'a str,
    /// The conversation.
    pub conversation_id: Uuid,
}

impl InternalEvent for ReplayAnswered<'_> {
    fn emit(self, m: &Metrics) {
        m.idempotent_replays
            .with_label_values(&[self.event_type])
            .inc();
        tracing::info!(
            event_type = self.event_type,
            conversation_id = %self.conversation_id,
            "identical redelivery of a committed event: answered as a replay, nothing produced"
        );
    }
}

/// A lifecycle decision failed in Postgres (answered `503`; the
/// transaction was rolled back).
#[derive(Clone, Copy)]
pub struct LifecycleFailed<'a> {
    /// Its event type.
    pub event_type: &'a str,
    /// Postgres did not answer within the timeout (else it failed).
    pub timed_out: bool,
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for LifecycleFailed<'_> {
    fn emit(self, m: &Metrics) {
        let kind = if self.timed_out {
            "timeout"
        } else {
            "database"
        };
        tracing::debug!(
            event_type = self.event_type,
            kind,
            error = %self.error,
            "lifecycle decision failed"
        );
        m.lifecycle_failures.with_label_values(&[kind]).inc();
    }
}

/// The task deciding a webhook request ended abnormally (answered `503`).
#[derive(Clone, Copy)]
pub struct DecisionTaskFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for DecisionTaskFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, "a webhook decision task failed");
        m.decision_task_failures.inc();
    }
}

/// The broker acknowledged a record.
#[derive(Debug, Clone, Copy)]
pub struct RecordAcknowledged {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Time from handing it to the producer to the acknowledgement (s).
    pub seconds: f64,
}

impl InternalEvent for RecordAcknowledged {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            partition = self.partition,
            offset = self.offset,
            seconds = self.seconds,
            "record acknowledged"
        );
        m.produce_duration.observe(self.seconds);
    }
}

/// The broker did not acknowledge a record (its request is answered
/// `503`).
#[derive(Clone, Copy)]
pub struct ProduceFailed<'a> {
    /// Why, as a label value (`timeout`, `queue_full`, `kafka`, …).
    pub reason: &'static str,
    /// The error.
    pub error: &'a dyn std::fmt::Display,
}

impl InternalEvent for ProduceFailed<'_> {
    fn emit(self, m: &Metrics) {
        let reason = self.reason;
        tracing::debug!(reason, error = %self.error, "produce failed");
        m.produce_failures.with_label_values(&[reason]).inc();
    }
}

/// The Kafka producer was replaced after a produce timeout or a fatal
/// librdkafka error.
#[derive(Debug, Clone, Copy)]
pub struct ProducerReplaced<'a> {
    /// Why.
    pub reason: &'a str,
}

impl InternalEvent for ProducerReplaced<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(reason = self.reason, "replaced the Kafka producer");
        m.producer_recreated.inc();
    }
}

/// A replacement Kafka producer could not be created (the failed one
/// stays in use; tried again at the next failure).
#[derive(Clone, Copy)]
pub struct ProducerCreateFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for ProducerCreateFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, "could not create a new Kafka producer");
        m.producer_create_failures.inc();
    }
}

/// A batched NEW_MESSAGE lookup statement ran (successful or not).
#[derive(Debug, Clone, Copy)]
pub struct LookupBatchDone {
    /// Distinct conversation ids it looked up.
    pub conversations: usize,
    /// Requests it answers.
    pub requests: usize,
    /// How long it took (s).
    pub seconds: f64,
}

impl InternalEvent for LookupBatchDone {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            conversations = self.conversations,
            requests = self.requests,
            seconds = self.seconds,
            "NEW_MESSAGE lookup ran"
        );
        m.lookup_batch_size.observe(self.conversations as f64);
        m.lookup_duration.observe(self.seconds);
    }
}

/// A batched NEW_MESSAGE lookup failed; every request of the batch is
/// answered `503`.
#[derive(Clone, Copy)]
pub struct LookupFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
    /// Postgres did not answer within the timeout (else it failed).
    pub timed_out: bool,
}

impl InternalEvent for LookupFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "NEW_MESSAGE lookup failed");
        let kind = if self.timed_out {
            "timeout"
        } else {
            "database"
        };
        m.lookup_failures.with_label_values(&[kind]).inc();
    }
}

/// The in-flight floor publisher started.
#[derive(Debug, Clone, Copy)]
pub struct InflightPublisherStarted<'a> {
    /// This replica's row.
    pub replica: &'a str,
    /// How often it publishes.
    pub interval: Duration,
}

impl InternalEvent for InflightPublisherStarted<'_> {
    fn emit(self, _: &Metrics) {
        tracing::info!(replica = %self.replica, interval = ?self.interval, "publishing the in-flight floor to ingest_inflight");
    }
}

/// This replica's `ingest_inflight` row was upserted.
#[derive(Debug, Clone, Copy)]
pub struct InflightFloorWritten<'a> {
    /// This replica's row.
    pub replica: &'a str,
    /// The floor written.
    pub oldest_inflight_ms: Option<i64>,
    /// It differs from the last value written (else a heartbeat).
    pub changed: bool,
}

impl InternalEvent for InflightFloorWritten<'_> {
    fn emit(self, m: &Metrics) {
        if self.changed {
            tracing::debug!(replica = %self.replica, oldest_inflight_ms = ?self.oldest_inflight_ms, "in-flight floor changed");
        }
        m.inflight_floor_writes.inc();
    }
}

/// Writes of the in-flight floor work again after failures.
#[derive(Debug, Clone, Copy)]
pub struct InflightFloorWritesRecovered<'a> {
    /// This replica's row.
    pub replica: &'a str,
    /// The failures in a row before.
    pub failures: u64,
}

impl InternalEvent for InflightFloorWritesRecovered<'_> {
    fn emit(self, _: &Metrics) {
        tracing::info!(replica = %self.replica, failures = self.failures, "in-flight floor writes work again");
    }
}

/// Upserting this replica's `ingest_inflight` row failed. Logged for the
/// first failure of a run and then one in 100, counted each time.
#[derive(Debug, Clone, Copy)]
pub struct InflightFloorWriteFailed<'a> {
    /// This replica's row.
    pub replica: &'a str,
    /// What went wrong.
    pub error: &'a str,
    /// The failures in a row, this one included.
    pub failures: u64,
}

impl InternalEvent for InflightFloorWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.inflight_floor_failures
            .with_label_values(&["upsert"])
            .inc();
        if self.failures % 100 == 1 {
            tracing::warn!(replica = %self.replica, error = %self.error, failures = self.failures, "could not write the in-flight floor");
        }
    }
}

/// This replica's `ingest_inflight` row was deleted (clean shutdown).
#[derive(Debug, Clone, Copy)]
pub struct InflightFloorRemoved<'a> {
    /// This replica's row.
    pub replica: &'a str,
}

impl InternalEvent for InflightFloorRemoved<'_> {
    fn emit(self, m: &Metrics) {
        m.inflight_floor_writes.inc();
        tracing::info!(replica = %self.replica, "removed this replica's in-flight floor row");
    }
}

/// Deleting this replica's `ingest_inflight` row failed (it goes stale and
/// the processors' lease ends its effect).
#[derive(Debug, Clone, Copy)]
pub struct InflightFloorRemoveFailed<'a> {
    /// This replica's row.
    pub replica: &'a str,
    /// What went wrong.
    pub error: &'a str,
}

impl InternalEvent for InflightFloorRemoveFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.inflight_floor_failures
            .with_label_values(&["delete"])
            .inc();
        tracing::warn!(replica = %self.replica, error = %self.error, "could not remove the in-flight floor row");
    }
}

/// The in-flight floor publisher task ended abnormally.
#[derive(Clone, Copy)]
pub struct InflightPublisherFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for InflightPublisherFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "in-flight floor publisher ended abnormally");
        m.inflight_publisher_failures.inc();
    }
}

/// Accepting a connection failed (e.g. out of file descriptors); the
/// server goes on after a short pause.
#[derive(Clone, Copy)]
pub struct ConnectionAcceptFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for ConnectionAcceptFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "accepting a connection failed");
        m.connection_errors.with_label_values(&["accept"]).inc();
    }
}

/// An HTTP connection ended with an error.
#[derive(Clone, Copy)]
pub struct ConnectionFailed<'a> {
    /// Its headers did not arrive within the header read timeout (else
    /// another error, e.g. the client reset it).
    pub header_timeout: bool,
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for ConnectionFailed<'_> {
    fn emit(self, m: &Metrics) {
        let kind = if self.header_timeout {
            "header_timeout"
        } else {
            "other"
        };
        m.connection_errors.with_label_values(&[kind]).inc();
        tracing::debug!(error = %self.error, kind, "HTTP connection ended with an error");
    }
}

/// What a graceful shutdown waits for ([`ShutdownWaitExpired`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownStage {
    /// HTTP requests being served.
    Requests,
    /// Webhook decisions still running for clients that went away.
    WebhookWork,
}

impl ShutdownStage {
    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownStage::Requests => "requests",
            ShutdownStage::WebhookWork => "webhook_work",
        }
    }
}

/// A graceful shutdown stopped waiting for `stage` at the shutdown timeout.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownWaitExpired {
    /// What it waited for.
    pub stage: ShutdownStage,
    /// The shutdown timeout.
    pub grace: Duration,
}

impl InternalEvent for ShutdownWaitExpired {
    fn emit(self, m: &Metrics) {
        let grace = self.grace;
        match self.stage {
            ShutdownStage::Requests => {
                tracing::warn!(?grace, "in-flight requests did not finish in time");
            }
            ShutdownStage::WebhookWork => {
                tracing::warn!(?grace, "webhook work did not finish in time");
            }
        }
        m.shutdown_incomplete
            .with_label_values(&[self.stage.as_str()])
            .inc();
    }
}

/// At shutdown, the producer did not deliver every queued record in time.
#[derive(Clone, Copy)]
pub struct ProducerFlushIncomplete<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for ProducerFlushIncomplete<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "producer flush incomplete");
        m.shutdown_incomplete
            .with_label_values(&["producer_flush"])
            .inc();
    }
}

/// At start: whether webhooks are authenticated (Standard Webhooks
/// signatures) and with how many secrets. Never shows a secret.
#[derive(Debug, Clone, Copy)]
pub struct WebhookAuthConfigured<'a> {
    /// The verifier, `None` when no secret is configured.
    pub verifier: Option<&'a Verifier>,
    /// The variable that holds the secrets.
    pub env: &'a str,
}

impl InternalEvent for WebhookAuthConfigured<'_> {
    fn emit(self, m: &Metrics) {
        match self.verifier {
            None => {
                m.webhook_auth_secrets.set(0);
                tracing::warn!(
                    "webhooks are not authenticated: {} is not set, so POST /webhook/ \
                     accepts unsigned requests from anyone who can reach it",
                    self.env
                );
            }
            Some(v) => {
                m.webhook_auth_secrets
                    .set(i64::try_from(v.secrets()).unwrap_or(i64::MAX));
                // Every reason is exported from the start (at 0).
                for reason in AuthFailure::REASONS {
                    m.webhook_auth_failures.with_label_values(&[reason]);
                }
                tracing::info!(
                    secrets = v.secrets(),
                    tolerance = ?v.tolerance(),
                    "webhooks are authenticated: Standard Webhooks signatures are required"
                );
            }
        }
    }
}

/// A webhook request's signature did not verify (answered `401`; nothing
/// written).
#[derive(Debug, Clone, Copy)]
pub struct WebhookAuthFailed {
    /// Why.
    pub failure: AuthFailure,
}

impl InternalEvent for WebhookAuthFailed {
    fn emit(self, m: &Metrics) {
        let reason = self.failure.reason();
        tracing::debug!(
            reason,
            field = self.failure.field(),
            "webhook signature did not verify: answered 401"
        );
        m.webhook_auth_failures.with_label_values(&[reason]).inc();
    }
}

/// The `secret` label of [`WebhookAuthenticated`]: the 1-based position,
/// `9+` beyond 8 (label values stay bounded).
pub fn secret_label(position: usize) -> &'static str {
    const LABELS: [&str; 8] = ["1", "2", "3", "4", "5", "6", "7", "8"];
    LABELS.get(position).copied().unwrap_or("9+")
}

/// A webhook request's signature verified.
#[derive(Debug, Clone, Copy)]
pub struct WebhookAuthenticated {
    /// The position (0-based) of the configured secret that matched.
    pub secret: usize,
}

impl InternalEvent for WebhookAuthenticated {
    fn emit(self, m: &Metrics) {
        let secret = secret_label(self.secret);
        tracing::trace!(secret, "webhook signature verified");
        m.webhook_auth_successes.with_label_values(&[secret]).inc();
    }
}

/// The channels ingest receives, at start.
pub struct ChannelsConfigured<'a> {
    /// Their names and types.
    pub channels: &'a [(String, &'static str)],
}

impl InternalEvent for ChannelsConfigured<'_> {
    fn emit(self, m: &Metrics) {
        m.channels.set(self.channels.len() as i64);
        for (name, kind) in self.channels {
            tracing::info!(channel = %name, kind, path = %format!("/channels/{name}/webhook"), "receiving channel webhooks");
        }
    }
}

/// A channel webhook was answered.
pub struct ChannelWebhookAnswered<'a> {
    /// The channel (`unknown` for a name that is not declared).
    pub channel: &'a str,
    /// `POST` or `GET`.
    pub method: &'static str,
    /// The answer's status.
    pub status: StatusCode,
    /// Time to answer.
    pub seconds: f64,
    /// The reason of a `503` for an unavailable dependency.
    pub unavailable: Option<&'a str>,
}

impl InternalEvent for ChannelWebhookAnswered<'_> {
    fn emit(self, m: &Metrics) {
        m.channel_requests
            .with_label_values(&[self.channel, self.method, self.status.as_str()])
            .inc();
        m.channel_request_duration
            .with_label_values(&[self.channel])
            .observe(self.seconds);
        match self.unavailable {
            Some(reason) => {
                tracing::warn!(channel = %self.channel, status = %self.status.as_u16(), reason, "channel webhook answered 503: the provider will retry")
            }
            None => {
                tracing::debug!(channel = %self.channel, method = self.method, status = %self.status.as_u16(), seconds = self.seconds, "channel webhook answered")
            }
        }
    }
}

/// A channel webhook whose secret or signature did not verify (`401`), or
/// a failed WhatsApp subscription check (`403`).
pub struct ChannelAuthFailed<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The header (or query parameter) that did not verify.
    pub header: &'a str,
}

impl InternalEvent for ChannelAuthFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.channel_auth_failures
            .with_label_values(&[self.channel, self.header])
            .inc();
        tracing::info!(channel = %self.channel, header = %self.header, "channel webhook refused: not authenticated");
    }
}

/// A contact's message was decided: in the log (opening its conversation
/// or appended to the open one), or a provider's retry of a stored one.
pub struct ChannelMessageDecided<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The NEW_MESSAGE id.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// It opened the conversation.
    pub opened: bool,
    /// A retry of a stored message.
    pub duplicate: bool,
    /// Its kind (`text`, `image`, …).
    pub kind: &'a str,
}

impl InternalEvent for ChannelMessageDecided<'_> {
    fn emit(self, m: &Metrics) {
        let outcome = match (self.duplicate, self.opened) {
            (true, _) => "duplicate",
            (false, true) => "opened",
            (false, false) => "appended",
        };
        m.channel_messages
            .with_label_values(&[self.channel, self.kind, outcome])
            .inc();
        tracing::debug!(channel = %self.channel, message_id = %self.message_id, conversation_id = %self.conversation_id, outcome, kind = %self.kind, "channel message decided");
    }
}

/// A provider's status report was stored (and applied when its delivery
/// is known).
pub struct ChannelStatusStored<'a> {
    /// The channel.
    pub channel: &'a str,
    /// The provider's message id.
    pub provider_message_id: &'a str,
    /// The reported status.
    pub status: &'a str,
    /// The status the delivery moved to, if it moved.
    pub applied: Option<&'a str>,
}

impl InternalEvent for ChannelStatusStored<'_> {
    fn emit(self, m: &Metrics) {
        let applied = if self.applied.is_some() {
            "true"
        } else {
            "false"
        };
        m.channel_statuses
            .with_label_values(&[self.channel, self.status, applied])
            .inc();
        tracing::debug!(channel = %self.channel, provider_message_id = %self.provider_message_id, status = %self.status, applied = ?self.applied, "delivery status report stored");
    }
}

/// An item of a channel webhook that chatpipe does not act on.
pub struct ChannelItemIgnored<'a> {
    /// The channel.
    pub channel: &'a str,
    /// What it was.
    pub what: &'a str,
}

impl InternalEvent for ChannelItemIgnored<'_> {
    fn emit(self, m: &Metrics) {
        m.channel_ignored.with_label_values(&[self.channel]).inc();
        tracing::debug!(channel = %self.channel, what = %self.what, "channel webhook item acknowledged without action");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::ProduceError;

    #[test]
    fn webhook_auth_events_count() {
        let m = fresh();
        WebhookAuthConfigured {
            verifier: None,
            env: "CHATPIPE_WEBHOOK_SECRETS",
        }
        .emit(&m);
        assert_eq!(m.webhook_auth_secrets.get(), 0);
        let v = Verifier::from_setting(
            Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_AAAA"),
            Duration::from_secs(300),
        )
        .unwrap()
        .unwrap();
        WebhookAuthConfigured {
            verifier: Some(&v),
            env: "CHATPIPE_WEBHOOK_SECRETS",
        }
        .emit(&m);
        assert_eq!(m.webhook_auth_secrets.get(), 2);
        let stale = |m: &Metrics| m.webhook_auth_failures.with_label_values(&["stale"]).get();
        assert_eq!(stale(&m), 0);
        WebhookAuthFailed {
            failure: AuthFailure::Stale,
        }
        .emit(&m);
        assert_eq!(stale(&m), 1);
        WebhookAuthenticated { secret: 1 }.emit(&m);
        assert_eq!(m.webhook_auth_successes.with_label_values(&["2"]).get(), 1);
        assert_eq!(secret_label(0), "1");
        assert_eq!(secret_label(20), "9+");
    }

    fn fresh() -> Metrics {
        Metrics::new().expect("metrics register")
    }

    const ID: Uuid = Uuid::from_u128(7);

    #[test]
    fn request_events_count() {
        let m = fresh();
        WebhookAnswered {
            event_type: "NEW_MESSAGE",
            status: StatusCode::ACCEPTED,
            seconds: 0.002,
            unavailable: None,
        }
        .emit(&m);
        WebhookAnswered {
            event_type: "NEW_MESSAGE",
            status: StatusCode::SERVICE_UNAVAILABLE,
            seconds: 0.5,
            unavailable: Some("broker down"),
        }
        .emit(&m);
        let requests = |status: &str| m.requests.with_label_values(&["NEW_MESSAGE", status]).get();
        assert_eq!((requests("202"), requests("503")), (1, 1));
        assert_eq!(
            m.request_duration
                .with_label_values(&["NEW_MESSAGE"])
                .get_sample_count(),
            2
        );
        RequestShed { limit: 4 }.emit(&m);
        assert_eq!(m.shed_requests.get(), 1);
        BodyReadTimedOut {
            timeout: Duration::from_secs(10),
        }
        .emit(&m);
        assert_eq!(m.body_read_timeouts.get(), 1);
    }

    #[test]
    fn refusal_events_count() {
        let m = fresh();
        EventInvalid {
            field: "data.content",
            error: "too long",
        }
        .emit(&m);
        EventInvalid {
            field: "something.new",
            error: "x",
        }
        .emit(&m);
        let invalid = |f: &str| m.invalid_events.with_label_values(&[f]).get();
        assert_eq!((invalid("data.content"), invalid("other")), (1, 1));
        for reason in RefusalReason::ALL {
            EventRefused {
                event_type: "CLOSE_CONVERSATION",
                conversation_id: ID,
                reason,
            }
            .emit(&m);
            assert_eq!(
                m.refused_events
                    .with_label_values(&["CLOSE_CONVERSATION", reason.as_str()])
                    .get(),
                1
            );
        }
        ClosedCacheHit {
            conversation_id: ID,
        }
        .emit(&m);
        assert_eq!(m.closed_cache_hits.get(), 1);
        MessageIdTaken {
            message_id: ID,
            conversation_id: ID,
            reason: "outbound",
        }
        .emit(&m);
        assert_eq!(
            m.message_id_conflicts
                .with_label_values(&["outbound"])
                .get(),
            1
        );
        ReplayAnswered {
            event_type: "NEW_CONVERSATION",
            conversation_id: ID,
        }
        .emit(&m);
        assert_eq!(
            m.idempotent_replays
                .with_label_values(&["NEW_CONVERSATION"])
                .get(),
            1
        );
    }

    #[test]
    fn decision_failure_events_count() {
        let m = fresh();
        for timed_out in [true, false, false] {
            LifecycleFailed {
                event_type: "NEW_CONVERSATION",
                timed_out,
                error: &"postgres: down",
            }
            .emit(&m);
        }
        let kind = |k: &str| m.lifecycle_failures.with_label_values(&[k]).get();
        assert_eq!((kind("timeout"), kind("database")), (1, 2));
        DecisionTaskFailed { error: &"panicked" }.emit(&m);
        assert_eq!(m.decision_task_failures.get(), 1);
    }

    #[test]
    fn producer_events_count() {
        let m = fresh();
        RecordAcknowledged {
            partition: 1,
            offset: 2,
            seconds: 0.003,
        }
        .emit(&m);
        assert_eq!(m.produce_duration.get_sample_count(), 1);
        for error in [
            ProduceError::Timeout(Duration::from_secs(5)),
            ProduceError::QueueFull,
            ProduceError::Canceled,
        ] {
            ProduceFailed {
                reason: error.reason(),
                error: &error,
            }
            .emit(&m);
            assert_eq!(
                m.produce_failures
                    .with_label_values(&[error.reason()])
                    .get(),
                1
            );
        }
        ProducerReplaced { reason: "timeout" }.emit(&m);
        assert_eq!(m.producer_recreated.get(), 1);
        ProducerCreateFailed {
            error: &"no memory",
        }
        .emit(&m);
        assert_eq!(m.producer_create_failures.get(), 1);
    }

    #[test]
    fn lookup_events_count() {
        let m = fresh();
        LookupBatchDone {
            conversations: 3,
            requests: 5,
            seconds: 0.001,
        }
        .emit(&m);
        assert_eq!(m.lookup_batch_size.get_sample_count(), 1);
        assert_eq!(m.lookup_batch_size.get_sample_sum(), 3.0);
        assert_eq!(m.lookup_duration.get_sample_count(), 1);
        LookupFailed {
            error: &"down",
            timed_out: false,
        }
        .emit(&m);
        LookupFailed {
            error: &"slow",
            timed_out: true,
        }
        .emit(&m);
        let kind = |k: &str| m.lookup_failures.with_label_values(&[k]).get();
        assert_eq!((kind("database"), kind("timeout")), (1, 1));
    }

    #[test]
    fn inflight_events_count() {
        let m = fresh();
        InflightPublisherStarted {
            replica: "r",
            interval: Duration::from_millis(100),
        }
        .emit(&m);
        for changed in [true, false] {
            InflightFloorWritten {
                replica: "r",
                oldest_inflight_ms: Some(5),
                changed,
            }
            .emit(&m);
        }
        assert_eq!(m.inflight_floor_writes.get(), 2);
        for failures in 1..=3 {
            InflightFloorWriteFailed {
                replica: "r",
                error: "down",
                failures,
            }
            .emit(&m);
        }
        InflightFloorWritesRecovered {
            replica: "r",
            failures: 3,
        }
        .emit(&m);
        let op = |o: &str| m.inflight_floor_failures.with_label_values(&[o]).get();
        assert_eq!(op("upsert"), 3);
        InflightFloorRemoved { replica: "r" }.emit(&m);
        assert_eq!(m.inflight_floor_writes.get(), 3);
        InflightFloorRemoveFailed {
            replica: "r",
            error: "down",
        }
        .emit(&m);
        assert_eq!(op("delete"), 1);
        InflightPublisherFailed { error: &"panicked" }.emit(&m);
        assert_eq!(m.inflight_publisher_failures.get(), 1);
    }

    #[test]
    fn server_events_count() {
        let m = fresh();
        ConnectionAcceptFailed {
            error: &"too many open files",
        }
        .emit(&m);
        ConnectionFailed {
            header_timeout: true,
            error: &"timeout",
        }
        .emit(&m);
        ConnectionFailed {
            header_timeout: false,
            error: &"reset",
        }
        .emit(&m);
        let kind = |k: &str| m.connection_errors.with_label_values(&[k]).get();
        assert_eq!(
            (kind("accept"), kind("header_timeout"), kind("other")),
            (1, 1, 1)
        );
        for stage in [ShutdownStage::Requests, ShutdownStage::WebhookWork] {
            ShutdownWaitExpired {
                stage,
                grace: Duration::from_secs(1),
            }
            .emit(&m);
        }
        ProducerFlushIncomplete {
            error: &"timed out",
        }
        .emit(&m);
        let stage = |s: &str| m.shutdown_incomplete.with_label_values(&[s]).get();
        assert_eq!(
            (
                stage("requests"),
                stage("webhook_work"),
                stage("producer_flush")
            ),
            (1, 1, 1)
        );
    }
}
