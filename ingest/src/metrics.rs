//! Prometheus metrics of the ingest service (names `chatpipe_ingest_*`),
//! registered in one [`prometheus::Registry`] served by `/metrics`.
//!
//! Counters and histograms are updated only through the events of
//! [`crate::events`], each of which logs and counts in one call (the table
//! there maps every event to its level and metrics), so every warning and
//! error has its metric. Gauges that describe state (`in_flight_requests`,
//! `inflight_records`) are set directly by their owners;
//! `webhook_auth_secrets` is set once at start by
//! [`crate::events::WebhookAuthConfigured`].

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

/// Every metric ingest records.
#[derive(Clone)]
pub struct Metrics {
    /// The registry holding all metrics below.
    pub registry: Registry,
    /// `chatpipe_ingest_requests_total{event_type,status}`: answered webhook
    /// requests. `event_type` is `INVALID` when the body did not validate,
    /// `UNREAD` when it was not read (`503` load shedding, `408`),
    /// `UNAUTHENTICATED` when its signature did not verify (`401`).
    pub requests: IntCounterVec,
    /// `chatpipe_ingest_request_duration_seconds{event_type}`: time from
    /// arrival to answer.
    pub request_duration: HistogramVec,
    /// `chatpipe_ingest_produce_duration_seconds`: time from handing a
    /// record to the producer to the broker's acknowledgement.
    pub produce_duration: Histogram,
    /// `chatpipe_ingest_produce_failures_total{reason}`: records not
    /// acknowledged (`timeout`, `queue_full`, `kafka`, `canceled`).
    pub produce_failures: IntCounterVec,
    /// `chatpipe_ingest_status_lookup_batch_size`: distinct conversation ids
    /// per batched status query.
    pub lookup_batch_size: Histogram,
    /// `chatpipe_ingest_status_lookup_duration_seconds`: duration of one
    /// batched status query.
    pub lookup_duration: Histogram,
    /// `chatpipe_ingest_closed_cache_hits_total`: NEW_MESSAGE rejections
    /// answered from the CLOSED-id cache.
    pub closed_cache_hits: IntCounter,
    /// `chatpipe_ingest_in_flight_requests`: webhook requests being served.
    pub in_flight: IntGauge,
    /// `chatpipe_ingest_producer_recreated_total`: producers replaced after
    /// a produce timeout or a fatal librdkafka error.
    pub producer_recreated: IntCounter,
    /// `chatpipe_ingest_idempotent_replays_total{event_type}`: identical
    /// redeliveries of a committed NEW_CONVERSATION / CLOSE_CONVERSATION
    /// answered like the first success (`Idempotent-Replay: true`), with
    /// nothing produced.
    pub idempotent_replays: IntCounterVec,
    /// `chatpipe_ingest_message_id_conflicts_total{reason}`: NEW_MESSAGE
    /// refused because its id is stored as an OUTBOUND message
    /// (`outbound`) or as a message of another conversation
    /// (`other_conversation`).
    pub message_id_conflicts: IntCounterVec,
    /// `chatpipe_ingest_shed_requests_total`: webhook requests answered
    /// `503` at once because `--max-concurrent-requests` were being served.
    pub shed_requests: IntCounter,
    /// `chatpipe_ingest_rate_limited_total`: webhook requests answered
    /// `429` because their client was over `--rate-limit`.
    pub rate_limited: IntCounter,
    /// `chatpipe_ingest_rate_limit_clients`: clients the rate limiter
    /// tracks (after its last clean-up).
    pub rate_limit_clients: IntGauge,
    /// `chatpipe_ingest_body_read_timeouts_total`: webhook requests whose
    /// body did not arrive within `--body-read-timeout` (answered `408`).
    pub body_read_timeouts: IntCounter,
    /// `chatpipe_ingest_connection_errors_total{kind}`: HTTP connections
    /// ended by an error: `header_timeout` (headers not received within
    /// `--header-read-timeout`), `other` (e.g. the client reset it), or
    /// not accepted at all (`accept`, e.g. out of file descriptors).
    pub connection_errors: IntCounterVec,
    /// `chatpipe_ingest_inflight_records`: records handed to the producer
    /// and not answered by the broker yet (sampled by the floor publisher).
    pub inflight_records: IntGauge,
    /// `chatpipe_ingest_inflight_floor_writes_total`: successful writes of
    /// this replica's `ingest_inflight` row (upserts and the final delete).
    pub inflight_floor_writes: IntCounter,
    /// `chatpipe_ingest_inflight_floor_failures_total{op}`: failed writes of
    /// the `ingest_inflight` row (`upsert`, `delete`).
    pub inflight_floor_failures: IntCounterVec,
    /// `chatpipe_ingest_invalid_events_total{field}`: bodies answered `400`
    /// because they did not validate (or could not be read, or were too
    /// large), by the field at fault (`body`, `type`, `timestamp`, `data`,
    /// `data.id`, `data.content`, `data.conversation_id`, else `other`).
    pub invalid_events: IntCounterVec,
    /// `chatpipe_ingest_refused_events_total{event_type,reason}`: valid
    /// events refused `400` by the lifecycle rules: `conversation_exists`
    /// (NEW_CONVERSATION), `conversation_unknown` and `conversation_closed`
    /// (CLOSE_CONVERSATION; NEW_MESSAGE to a CLOSED conversation). Message
    /// id conflicts are `message_id_conflicts_total`.
    pub refused_events: IntCounterVec,
    /// `chatpipe_ingest_lifecycle_failures_total{kind}`: NEW_CONVERSATION /
    /// CLOSE_CONVERSATION decisions answered `503` because Postgres failed
    /// (`database`) or did not answer within `--db-timeout` (`timeout`).
    pub lifecycle_failures: IntCounterVec,
    /// `chatpipe_ingest_status_lookup_failures_total{kind}`: batched
    /// NEW_MESSAGE lookups that failed (`database`) or timed out
    /// (`timeout`); every request of the batch is answered `503`.
    pub lookup_failures: IntCounterVec,
    /// `chatpipe_ingest_decision_task_failures_total`: webhook decision
    /// tasks that ended abnormally (panicked; answered `503`).
    pub decision_task_failures: IntCounter,
    /// `chatpipe_ingest_producer_create_failures_total`: failed attempts to
    /// create a replacement Kafka producer (the failed one stays in use).
    pub producer_create_failures: IntCounter,
    /// `chatpipe_ingest_inflight_publisher_failures_total`: in-flight floor
    /// publisher tasks that ended abnormally.
    pub inflight_publisher_failures: IntCounter,
    /// `chatpipe_ingest_shutdown_incomplete_total{stage}`: graceful
    /// shutdown stages cut short by the shutdown timeout: `requests`
    /// (in-flight HTTP requests), `webhook_work` (decisions of clients that
    /// went away), `producer_flush`.
    pub shutdown_incomplete: IntCounterVec,
    /// `chatpipe_ingest_webhook_auth_failures_total{reason}`: webhook
    /// requests answered `401` because their Standard Webhooks signature did
    /// not verify: `missing_header`, `malformed_header`, `bad_timestamp`,
    /// `stale`, `future`, `bad_signature` (each reason is present from the
    /// start when secrets are configured).
    pub webhook_auth_failures: IntCounterVec,
    /// `chatpipe_ingest_webhook_auth_successes_total{secret}`: webhook
    /// requests whose signature verified, by the position (`1`, `2`, …) of
    /// the configured secret that matched (shows when an old secret is no
    /// longer used during a rotation).
    pub webhook_auth_successes: IntCounterVec,
    /// `chatpipe_ingest_webhook_auth_secrets`: configured webhook signing
    /// secrets; `0` when webhooks are not authenticated.
    pub webhook_auth_secrets: IntGauge,
    /// `chatpipe_ingest_channels`: messenger channels received.
    pub channels: IntGauge,
    /// `chatpipe_ingest_channel_requests_total{channel,method,status}`.
    pub channel_requests: IntCounterVec,
    /// `chatpipe_ingest_channel_request_duration_seconds{channel}`.
    pub channel_request_duration: HistogramVec,
    /// `chatpipe_ingest_channel_auth_failures_total{channel,header}`:
    /// channel webhooks refused `401` (or a WhatsApp check refused `403`).
    pub channel_auth_failures: IntCounterVec,
    /// `chatpipe_ingest_channel_messages_total{channel,kind,outcome}`:
    /// contacts' messages decided (`opened`, `appended`, `duplicate`).
    pub channel_messages: IntCounterVec,
    /// `chatpipe_ingest_channel_statuses_total{channel,status,applied}`:
    /// provider status reports stored.
    pub channel_statuses: IntCounterVec,
    /// `chatpipe_ingest_channel_ignored_total{channel}`: webhook items
    /// acknowledged without action.
    pub channel_ignored: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let latency = exponential_buckets(0.0005, 2.0, 16)?; // 0.5 ms … ~16 s
        let requests = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_requests_total",
                "Answered webhook requests by event type and HTTP status.",
            ),
            &["event_type", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "chatpipe_ingest_request_duration_seconds",
                "Time from a webhook request's arrival to its answer.",
            )
            .buckets(latency.clone()),
            &["event_type"],
        )?;
        let produce_duration = Histogram::with_opts(
            HistogramOpts::new(
                "chatpipe_ingest_produce_duration_seconds",
                "Time from handing a record to the producer to the broker's acknowledgement.",
            )
            .buckets(latency.clone()),
        )?;
        let produce_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_produce_failures_total",
                "Records the broker did not acknowledge, by reason.",
            ),
            &["reason"],
        )?;
        let lookup_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "chatpipe_ingest_status_lookup_batch_size",
                "Distinct conversation ids per batched status query.",
            )
            .buckets(exponential_buckets(1.0, 2.0, 12)?),
        )?;
        let lookup_duration = Histogram::with_opts(
            HistogramOpts::new(
                "chatpipe_ingest_status_lookup_duration_seconds",
                "Duration of one batched conversation status query.",
            )
            .buckets(latency),
        )?;
        let closed_cache_hits = IntCounter::new(
            "chatpipe_ingest_closed_cache_hits_total",
            "NEW_MESSAGE rejections answered from the cache of CLOSED conversations.",
        )?;
        let in_flight = IntGauge::new(
            "chatpipe_ingest_in_flight_requests",
            "Webhook requests being served.",
        )?;
        let producer_recreated = IntCounter::new(
            "chatpipe_ingest_producer_recreated_total",
            "Kafka producers replaced after a fatal error.",
        )?;
        let idempotent_replays = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_idempotent_replays_total",
                "Identical lifecycle redeliveries answered like the first success, by event type.",
            ),
            &["event_type"],
        )?;
        let message_id_conflicts = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_message_id_conflicts_total",
                "NEW_MESSAGE refused because its id names an OUTBOUND message or another conversation's message.",
            ),
            &["reason"],
        )?;
        let shed_requests = IntCounter::new(
            "chatpipe_ingest_shed_requests_total",
            "Webhook requests answered 503 at once because the concurrency limit was reached.",
        )?;
        let rate_limited = IntCounter::new(
            "chatpipe_ingest_rate_limited_total",
            "Webhook requests answered 429 because their client was over the rate limit.",
        )?;
        let rate_limit_clients = IntGauge::new(
            "chatpipe_ingest_rate_limit_clients",
            "Clients the rate limiter tracks (after its last clean-up).",
        )?;
        let body_read_timeouts = IntCounter::new(
            "chatpipe_ingest_body_read_timeouts_total",
            "Webhook requests whose body did not arrive in time (answered 408).",
        )?;
        let connection_errors = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_connection_errors_total",
                "HTTP connections ended by an error, by kind (header_timeout, other, accept).",
            ),
            &["kind"],
        )?;
        let inflight_records = IntGauge::new(
            "chatpipe_ingest_inflight_records",
            "Records handed to the producer and not yet answered by the broker.",
        )?;
        let inflight_floor_writes = IntCounter::new(
            "chatpipe_ingest_inflight_floor_writes_total",
            "Successful writes of this replica's ingest_inflight row.",
        )?;
        let inflight_floor_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_inflight_floor_failures_total",
                "Failed writes of this replica's ingest_inflight row, by operation.",
            ),
            &["op"],
        )?;
        let invalid_events = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_invalid_events_total",
                "Webhook bodies answered 400 because they did not validate, by field.",
            ),
            &["field"],
        )?;
        let refused_events = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_refused_events_total",
                "Valid events refused 400 by the conversation lifecycle rules, by event type and reason.",
            ),
            &["event_type", "reason"],
        )?;
        let lifecycle_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_lifecycle_failures_total",
                "Lifecycle decisions answered 503 because Postgres failed or timed out, by kind.",
            ),
            &["kind"],
        )?;
        let lookup_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_status_lookup_failures_total",
                "Batched NEW_MESSAGE status lookups that failed or timed out, by kind.",
            ),
            &["kind"],
        )?;
        let decision_task_failures = IntCounter::new(
            "chatpipe_ingest_decision_task_failures_total",
            "Webhook decision tasks that ended abnormally (answered 503).",
        )?;
        let producer_create_failures = IntCounter::new(
            "chatpipe_ingest_producer_create_failures_total",
            "Failed attempts to create a replacement Kafka producer.",
        )?;
        let inflight_publisher_failures = IntCounter::new(
            "chatpipe_ingest_inflight_publisher_failures_total",
            "In-flight floor publisher tasks that ended abnormally.",
        )?;
        let shutdown_incomplete = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_shutdown_incomplete_total",
                "Graceful shutdown stages cut short by the shutdown timeout, by stage.",
            ),
            &["stage"],
        )?;
        let webhook_auth_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_webhook_auth_failures_total",
                "Webhook requests answered 401 because their signature did not verify, by reason.",
            ),
            &["reason"],
        )?;
        let webhook_auth_successes = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_webhook_auth_successes_total",
                "Webhook requests whose signature verified, by the position of the matching secret.",
            ),
            &["secret"],
        )?;
        let webhook_auth_secrets = IntGauge::new(
            "chatpipe_ingest_webhook_auth_secrets",
            "Configured webhook signing secrets (0: webhooks are not authenticated).",
        )?;
        let channels = IntGauge::new("chatpipe_ingest_channels", "Messenger channels received.")?;
        let channel_requests = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_channel_requests_total",
                "Channel webhook requests answered.",
            ),
            &["channel", "method", "status"],
        )?;
        let channel_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "chatpipe_ingest_channel_request_duration_seconds",
                "Time to answer a channel webhook.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            &["channel"],
        )?;
        let channel_auth_failures = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_channel_auth_failures_total",
                "Channel webhooks whose secret or signature did not verify.",
            ),
            &["channel", "header"],
        )?;
        let channel_messages = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_channel_messages_total",
                "Contacts' messages decided (opened, appended, duplicate).",
            ),
            &["channel", "kind", "outcome"],
        )?;
        let channel_statuses = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_channel_statuses_total",
                "Provider delivery status reports stored.",
            ),
            &["channel", "status", "applied"],
        )?;
        let channel_ignored = IntCounterVec::new(
            Opts::new(
                "chatpipe_ingest_channel_ignored_total",
                "Channel webhook items acknowledged without action.",
            ),
            &["channel"],
        )?;
        registry.register(Box::new(channels.clone()))?;
        registry.register(Box::new(channel_requests.clone()))?;
        registry.register(Box::new(channel_request_duration.clone()))?;
        registry.register(Box::new(channel_auth_failures.clone()))?;
        registry.register(Box::new(channel_messages.clone()))?;
        registry.register(Box::new(channel_statuses.clone()))?;
        registry.register(Box::new(channel_ignored.clone()))?;
        registry.register(Box::new(webhook_auth_failures.clone()))?;
        registry.register(Box::new(webhook_auth_successes.clone()))?;
        registry.register(Box::new(webhook_auth_secrets.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(produce_duration.clone()))?;
        registry.register(Box::new(produce_failures.clone()))?;
        registry.register(Box::new(lookup_batch_size.clone()))?;
        registry.register(Box::new(lookup_duration.clone()))?;
        registry.register(Box::new(closed_cache_hits.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(producer_recreated.clone()))?;
        registry.register(Box::new(idempotent_replays.clone()))?;
        registry.register(Box::new(message_id_conflicts.clone()))?;
        registry.register(Box::new(shed_requests.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(rate_limit_clients.clone()))?;
        registry.register(Box::new(body_read_timeouts.clone()))?;
        registry.register(Box::new(connection_errors.clone()))?;
        registry.register(Box::new(inflight_records.clone()))?;
        registry.register(Box::new(inflight_floor_writes.clone()))?;
        registry.register(Box::new(inflight_floor_failures.clone()))?;
        registry.register(Box::new(invalid_events.clone()))?;
        registry.register(Box::new(refused_events.clone()))?;
        registry.register(Box::new(lifecycle_failures.clone()))?;
        registry.register(Box::new(lookup_failures.clone()))?;
        registry.register(Box::new(decision_task_failures.clone()))?;
        registry.register(Box::new(producer_create_failures.clone()))?;
        registry.register(Box::new(inflight_publisher_failures.clone()))?;
        registry.register(Box::new(shutdown_incomplete.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            produce_duration,
            produce_failures,
            lookup_batch_size,
            lookup_duration,
            closed_cache_hits,
            in_flight,
            producer_recreated,
            idempotent_replays,
            message_id_conflicts,
            shed_requests,
            rate_limited,
            rate_limit_clients,
            body_read_timeouts,
            connection_errors,
            inflight_records,
            inflight_floor_writes,
            inflight_floor_failures,
            invalid_events,
            refused_events,
            lifecycle_failures,
            lookup_failures,
            decision_task_failures,
            producer_create_failures,
            inflight_publisher_failures,
            shutdown_incomplete,
            webhook_auth_failures,
            webhook_auth_successes,
            webhook_auth_secrets,
            channels,
            channel_requests,
            channel_request_duration,
            channel_auth_failures,
            channel_messages,
            channel_statuses,
            channel_ignored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_encodes() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["NEW_MESSAGE", "202"]).inc();
        m.produce_duration.observe(0.003);
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(names.contains(&"chatpipe_ingest_requests_total".to_owned()));
        assert!(names.contains(&"chatpipe_ingest_produce_duration_seconds".to_owned()));
        m.idempotent_replays
            .with_label_values(&["NEW_CONVERSATION"])
            .inc();
        m.shed_requests.inc();
        let names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(names.contains(&"chatpipe_ingest_idempotent_replays_total".to_owned()));
        assert!(names.contains(&"chatpipe_ingest_shed_requests_total".to_owned()));
        assert!(names.contains(&"chatpipe_ingest_webhook_auth_secrets".to_owned()));
    }
}
