//! What chatpipe-delivery says about itself: one type per observable fact.
//!
//! Each event both logs (level, message and structured fields fixed here)
//! and updates its metrics in one [`InternalEvent::emit`] call, so logs and
//! metrics never disagree. Every warning and error counts something.
//!
//! | event | level | metric (`chatpipe_delivery_…`) |
//! |---|---|---|
//! | [`Started`] | info | — |
//! | [`RequestTimeoutSet`] | warn when capped to half the lease, else debug | `request_timeout_seconds` (gauge, set once) |
//! | [`Claimed`] | debug | `claimed_total` |
//! | [`PossibleDuplicate`] | warn | `possible_duplicates_total{channel}` |
//! | [`RateLimitWaited`] | debug | `rate_limited_total{scope}` |
//! | [`Released`] | debug (`shutdown`: info) | `released_total{reason}` |
//! | [`CallStarted`] | trace | `queue_delay_seconds` |
//! | [`ProviderAnswered`] | trace | `send_seconds{channel}` |
//! | [`Sent`] | debug | `sent_total{channel}`, `settle_seconds` |
//! | [`RetryScheduled`] | info | `retries_total{channel,code}`, `settle_seconds` |
//! | [`Failed`] | warn | `failed_total{channel,code}`, `settle_seconds` when a call was made |
//! | [`OutcomeStale`] | warn | `stale_outcomes_total` |
//! | [`StoreFailed`] | warn | `store_failures_total{op}` |
//! | [`ListenerLost`] | warn | `listener_failures_total` |
//! //! | [`TaskFailed`] | error | `task_failures_total` |
//! | [`ListenerUnavailable`] | info (once at start) | — |

use std::time::Duration;

use crate::metrics::Metrics;

/// A fact chatpipe-delivery reports: logs it and updates its metrics.
pub trait InternalEvent {
    /// Logs the event and updates its metrics.
    fn emit(self, metrics: &Metrics);
}

/// The worker started.
pub struct Started<'a> {
    /// This replica's name in leases.
    pub owner: &'a str,
    /// The channels it delivers through.
    pub channels: &'a [String],
}

impl InternalEvent for Started<'_> {
    fn emit(self, _: &Metrics) {
        tracing::info!(owner = self.owner, channels = ?self.channels, "delivering");
    }
}

/// Deliveries were claimed.
pub struct Claimed {
    /// How many.
    pub count: usize,
}

impl InternalEvent for Claimed {
    fn emit(self, m: &Metrics) {
        m.claimed.inc_by(self.count as u64);
        tracing::debug!(count = self.count, "claimed deliveries");
    }
}

/// A delivery is called again although its previous call may have
/// delivered it.
pub struct PossibleDuplicate<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// `lost_outcome` (the previous call's outcome was never recorded: a
    /// crash) or the code of an ambiguous failure (`timeout`, `network`).
    pub why: &'a str,
}

impl InternalEvent for PossibleDuplicate<'_> {
    fn emit(self, m: &Metrics) {
        m.possible_duplicates
            .with_label_values(&[self.channel])
            .inc();
        tracing::warn!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            why = self.why,
            "calling the provider again although the message may have been sent"
        );
    }
}

/// A delivery waited for a rate limit.
pub struct RateLimitWaited<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// `channel` or `chat`.
    pub scope: &'a str,
    /// How long.
    pub wait: Duration,
}

impl InternalEvent for RateLimitWaited<'_> {
    fn emit(self, m: &Metrics) {
        m.rate_limited.with_label_values(&[self.scope]).inc();
        tracing::debug!(
            delivery_id = self.delivery_id,
            scope = self.scope,
            wait_ms = self.wait.as_millis() as u64,
            "waiting for a rate limit"
        );
    }
}

/// Claims were given back without a provider call.
pub struct Released<'a> {
    /// How many.
    pub count: u64,
    /// `rate_limit` or `shutdown`.
    pub reason: &'a str,
}

impl InternalEvent for Released<'_> {
    fn emit(self, m: &Metrics) {
        m.released
            .with_label_values(&[self.reason])
            .inc_by(self.count);
        if self.reason == "shutdown" {
            tracing::info!(count = self.count, "released unattempted claims");
        } else {
            tracing::debug!(count = self.count, reason = self.reason, "released claims");
        }
    }
}

/// A provider call starts.
pub struct CallStarted<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// The call's number (1 for the first).
    pub attempt: i32,
    /// Since the delivery was queued.
    pub queue_delay: Duration,
}

impl InternalEvent for CallStarted<'_> {
    fn emit(self, m: &Metrics) {
        m.queue_delay.observe(self.queue_delay.as_secs_f64());
        tracing::trace!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            attempt = self.attempt,
            queue_delay_ms = self.queue_delay.as_millis() as u64,
            "calling the provider"
        );
    }
}

/// A provider call ended (an answer, or a transport failure).
pub struct ProviderAnswered<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// `sent`, `transient` or `permanent`.
    pub outcome: &'a str,
    /// The call's duration.
    pub seconds: f64,
}

impl InternalEvent for ProviderAnswered<'_> {
    fn emit(self, m: &Metrics) {
        m.send_seconds
            .with_label_values(&[self.channel])
            .observe(self.seconds);
        tracing::trace!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            outcome = self.outcome,
            seconds = self.seconds,
            "provider answered"
        );
    }
}

/// A delivery was recorded `sent`.
pub struct Sent<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// The provider's message id.
    pub provider_message_id: &'a str,
    /// A status its early receipts moved it to (`delivered`, `read`…).
    pub receipt_status: Option<&'a str>,
    /// From the provider's answer to the commit.
    pub settle: Duration,
}

impl InternalEvent for Sent<'_> {
    fn emit(self, m: &Metrics) {
        m.sent.with_label_values(&[self.channel]).inc();
        m.settle_seconds.observe(self.settle.as_secs_f64());
        tracing::debug!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            provider_message_id = self.provider_message_id,
            receipt_status = self.receipt_status,
            "sent"
        );
    }
}

/// A transient failure was recorded; the delivery will be retried.
pub struct RetryScheduled<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// The failure's code.
    pub code: &'a str,
    /// Its reason.
    pub reason: &'a str,
    /// Calls made so far.
    pub attempts: i32,
    /// When the next call may be made.
    pub retry_in: Duration,
    /// From the provider's answer to the commit.
    pub settle: Duration,
}

impl InternalEvent for RetryScheduled<'_> {
    fn emit(self, m: &Metrics) {
        m.retries
            .with_label_values(&[self.channel, self.code])
            .inc();
        m.settle_seconds.observe(self.settle.as_secs_f64());
        tracing::info!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            code = self.code,
            reason = self.reason,
            attempts = self.attempts,
            retry_in_ms = self.retry_in.as_millis() as u64,
            "delivery failed, will retry"
        );
    }
}

/// A delivery was recorded `failed`.
pub struct Failed<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// Its channel.
    pub channel: &'a str,
    /// The code (`max_attempts`, `unknown_channel`, the provider's…).
    pub code: &'a str,
    /// The reason.
    pub reason: &'a str,
    /// From the provider's answer to the commit, when a call was made.
    pub settle: Option<Duration>,
}

impl InternalEvent for Failed<'_> {
    fn emit(self, m: &Metrics) {
        m.failed.with_label_values(&[self.channel, self.code]).inc();
        if let Some(s) = self.settle {
            m.settle_seconds.observe(s.as_secs_f64());
        }
        tracing::warn!(
            delivery_id = self.delivery_id,
            channel = self.channel,
            code = self.code,
            reason = self.reason,
            "delivery failed"
        );
    }
}

/// An outcome was not recorded: the delivery had moved on (its lease
/// expired and another worker took it, or it was settled already).
pub struct OutcomeStale<'a> {
    /// The delivery.
    pub delivery_id: i64,
    /// What was not recorded (`sent`, `retry`, `failed`, `start`).
    pub outcome: &'a str,
}

impl InternalEvent for OutcomeStale<'_> {
    fn emit(self, m: &Metrics) {
        m.stale_outcomes.inc();
        tracing::warn!(
            delivery_id = self.delivery_id,
            outcome = self.outcome,
            "delivery no longer held by this worker: outcome not recorded"
        );
    }
}

/// A Postgres statement failed.
pub struct StoreFailed<'a> {
    /// `claim`, `start`, `settle`, `release`.
    pub op: &'a str,
    /// The error with its causes.
    pub error: &'a anyhow::Error,
}

impl InternalEvent for StoreFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.store_failures.with_label_values(&[self.op]).inc();
        tracing::warn!(
            op = self.op,
            error = format!("{:#}", self.error),
            "Postgres statement failed"
        );
    }
}

/// The connection listening for new deliveries was lost (or could not be
/// made); the worker polls until it is back.
pub struct ListenerLost<'a> {
    /// The error with its causes.
    pub error: &'a anyhow::Error,
}

impl InternalEvent for ListenerLost<'_> {
    fn emit(self, m: &Metrics) {
        m.listener_failures.inc();
        tracing::warn!(
            error = format!("{:#}", self.error),
            "not listening for new deliveries: polling meanwhile"
        );
    }
}

/// The worker cannot LISTEN with this connection's settings and polls
/// (every `--poll-interval`).
pub struct ListenerUnavailable<'a> {
    /// Why.
    pub reason: &'a str,
}

impl InternalEvent for ListenerUnavailable<'_> {
    fn emit(self, _: &Metrics) {
        tracing::info!(
            reason = self.reason,
            "not listening for new deliveries: polling"
        );
    }
}

/// A delivery task ended abnormally (a panic); its claim expires and the
/// delivery is claimed again.
pub struct TaskFailed<'a> {
    /// The join error.
    pub error: &'a tokio::task::JoinError,
}

impl InternalEvent for TaskFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.task_failures.inc();
        tracing::error!(error = %self.error, "delivery task ended abnormally");
    }
}

/// The timeout of provider calls was set (at start).
pub struct RequestTimeoutSet {
    /// `--request-timeout`.
    pub configured: Duration,
    /// In force: capped to half the lease.
    pub effective: Duration,
}

impl InternalEvent for RequestTimeoutSet {
    fn emit(self, m: &Metrics) {
        m.request_timeout.set(self.effective.as_secs_f64());
        if self.effective < self.configured {
            tracing::warn!(
                configured_ms = self.configured.as_millis() as u64,
                effective_ms = self.effective.as_millis() as u64,
                "--request-timeout capped to half of --lease: a call must end within its lease"
            );
        } else {
            tracing::debug!(
                effective_ms = self.effective.as_millis() as u64,
                "request timeout"
            );
        }
    }
}
