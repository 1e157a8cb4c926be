//! Prometheus metrics of chatpipe-delivery (names `chatpipe_delivery_*`),
//! registered in one [`prometheus::Registry`] served by `/metrics`.
//!
//! Counters and histograms are updated only through the events of
//! [`crate::events`], each of which logs and counts in one call; the gauge
//! `inflight` describes state and is set by the worker, and
//! `request_timeout_seconds` is set once at start by
//! [`crate::events::RequestTimeoutSet`].

use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

/// Every metric chatpipe-delivery records.
#[derive(Clone)]
pub struct Metrics {
    /// The registry holding all metrics below.
    pub registry: Registry,
    /// `chatpipe_delivery_sent_total{channel}`: deliveries the provider
    /// accepted (recorded `sent`).
    pub sent: IntCounterVec,
    /// `chatpipe_delivery_failed_total{channel,code}`: deliveries recorded
    /// `failed` (a permanent answer, `max_attempts`, `unknown_channel`…).
    pub failed: IntCounterVec,
    /// `chatpipe_delivery_retries_total{channel,code}`: transient failures
    /// that will be retried.
    pub retries: IntCounterVec,
    /// `chatpipe_delivery_possible_duplicates_total{channel}`: calls made
    /// again although the previous one may have delivered the message (its
    /// outcome was lost in a crash, or it timed out after the request was
    /// written).
    pub possible_duplicates: IntCounterVec,
    /// `chatpipe_delivery_send_seconds{channel}`: duration of provider
    /// calls, whatever their outcome.
    pub send_seconds: HistogramVec,
    /// `chatpipe_delivery_queue_delay_seconds`: from a delivery's
    /// `queued_at` to the start of its provider call (includes retries'
    /// backoff).
    pub queue_delay: Histogram,
    /// `chatpipe_delivery_settle_seconds`: from the provider's answer to
    /// its outcome committed — the window in which a crash makes the next
    /// claim send the message again.
    pub settle_seconds: Histogram,
    /// `chatpipe_delivery_claimed_total`: deliveries claimed.
    pub claimed: IntCounter,
    /// `chatpipe_delivery_inflight`: deliveries claimed and not settled or
    /// released yet.
    pub inflight: IntGauge,
    /// `chatpipe_delivery_rate_limited_total{scope}`: deliveries that
    /// waited for a rate limit (`channel`, `chat`).
    pub rate_limited: IntCounterVec,
    /// `chatpipe_delivery_released_total{reason}`: claims given back
    /// unattempted (`rate_limit`: the wait was longer than the lease
    /// allows; `shutdown`).
    pub released: IntCounterVec,
    /// `chatpipe_delivery_stale_outcomes_total`: outcomes not recorded
    /// because the delivery had moved on (its lease expired and another
    /// worker took it, or it was settled already).
    pub stale_outcomes: IntCounter,
    /// `chatpipe_delivery_store_failures_total{op}`: failed Postgres
    /// statements (`claim`, `start`, `settle`, `release`).
    pub store_failures: IntCounterVec,
    /// `chatpipe_delivery_listener_failures_total`: losses of the
    /// connection that listens for new deliveries (the worker polls
    /// meanwhile).
    pub listener_failures: IntCounter,
    /// `chatpipe_delivery_task_failures_total`: delivery tasks that ended
    /// abnormally (panicked).
    pub task_failures: IntCounter,
    /// `chatpipe_delivery_request_timeout_seconds`: the timeout of
    /// provider calls in force (`--request-timeout`, capped to half of
    /// `--lease`).
    pub request_timeout: Gauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("chatpipe_delivery_{name}"), help);
        let hopts = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramOpts::new(format!("chatpipe_delivery_{name}"), help).buckets(buckets)
        };
        let m = Metrics {
            sent: IntCounterVec::new(
                opts("sent_total", "Deliveries the provider accepted."),
                &["channel"],
            )?,
            failed: IntCounterVec::new(
                opts(
                    "failed_total",
                    "Deliveries recorded failed, by channel and error code.",
                ),
                &["channel", "code"],
            )?,
            retries: IntCounterVec::new(
                opts("retries_total", "Transient failures that will be retried."),
                &["channel", "code"],
            )?,
            possible_duplicates: IntCounterVec::new(
                opts(
                    "possible_duplicates_total",
                    "Calls made again although the previous call may have delivered the message.",
                ),
                &["channel"],
            )?,
            send_seconds: HistogramVec::new(
                hopts(
                    "send_seconds",
                    "Duration of provider calls.",
                    exponential_buckets(0.005, 2.0, 14)?,
                ),
                &["channel"],
            )?,
            queue_delay: Histogram::with_opts(hopts(
                "queue_delay_seconds",
                "From queued_at to the start of the provider call.",
                exponential_buckets(0.005, 2.0, 20)?,
            ))?,
            settle_seconds: Histogram::with_opts(hopts(
                "settle_seconds",
                "From the provider's answer to its outcome committed (the double-send window).",
                exponential_buckets(0.0005, 2.0, 16)?,
            ))?,
            claimed: IntCounter::with_opts(opts("claimed_total", "Deliveries claimed."))?,
            inflight: IntGauge::with_opts(opts(
                "inflight",
                "Deliveries claimed and not settled or released.",
            ))?,
            rate_limited: IntCounterVec::new(
                opts(
                    "rate_limited_total",
                    "Deliveries that waited for a rate limit.",
                ),
                &["scope"],
            )?,
            released: IntCounterVec::new(
                opts(
                    "released_total",
                    "Claims given back without a provider call.",
                ),
                &["reason"],
            )?,
            stale_outcomes: IntCounter::with_opts(opts(
                "stale_outcomes_total",
                "Outcomes not recorded because the delivery had moved on.",
            ))?,
            store_failures: IntCounterVec::new(
                opts("store_failures_total", "Failed Postgres statements."),
                &["op"],
            )?,
            listener_failures: IntCounter::with_opts(opts(
                "listener_failures_total",
                "Losses of the connection listening for new deliveries.",
            ))?,
            task_failures: IntCounter::with_opts(opts(
                "task_failures_total",
                "Delivery tasks that ended abnormally.",
            ))?,
            request_timeout: Gauge::with_opts(opts(
                "request_timeout_seconds",
                "The timeout of provider calls in force.",
            ))?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.sent.clone()))?;
        r.register(Box::new(m.failed.clone()))?;
        r.register(Box::new(m.retries.clone()))?;
        r.register(Box::new(m.possible_duplicates.clone()))?;
        r.register(Box::new(m.send_seconds.clone()))?;
        r.register(Box::new(m.queue_delay.clone()))?;
        r.register(Box::new(m.settle_seconds.clone()))?;
        r.register(Box::new(m.claimed.clone()))?;
        r.register(Box::new(m.inflight.clone()))?;
        r.register(Box::new(m.rate_limited.clone()))?;
        r.register(Box::new(m.released.clone()))?;
        r.register(Box::new(m.stale_outcomes.clone()))?;
        r.register(Box::new(m.store_failures.clone()))?;
        r.register(Box::new(m.listener_failures.clone()))?;
        r.register(Box::new(m.task_failures.clone()))?;
        r.register(Box::new(m.request_timeout.clone()))?;
        Ok(m)
    }
}
