//! Prometheus metrics of the processor (names `chatpipe_processor_*`).
//! The shell updates counters through the events of `events.rs`, so every
//! log line has its metric; gauges (lag, open groups, …) describe state and
//! are set by the consume loop directly.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Label values of [`Metrics::startup_waits`].
pub const STARTUP_WAIT_REASONS: [&str; 2] = ["topic_missing", "broker_unreachable"];

/// Label values of [`Metrics::consumer_errors`].
pub const CONSUMER_ERROR_KINDS: [&str; 2] = ["position_outside_log", "other"];

/// Every metric the processor exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on /metrics.
    pub registry: Registry,
    /// Records behind the partition end, per partition.
    pub lag: IntGaugeVec,
    /// Open groups per partition.
    pub open_groups: IntGaugeVec,
    /// Buffered orphan messages per partition.
    pub buffered_orphans: IntGaugeVec,
    /// INBOUND rows of a behind partition held until their reply.
    pub held_inbound: IntGaugeVec,
    /// Rejected events by reason.
    pub rejections: IntCounterVec,
    /// Records whose timestamp was behind the watermark.
    pub late_records: IntCounter,
    /// Groups started by a record older than a written group.
    pub late_new_groups: IntCounter,
    /// Duplicate messages ignored.
    pub duplicates: IntCounter,
    /// δ = reply written − (last arrival + G), seconds.
    pub reply_delta: Histogram,
    /// Replies written.
    pub replies: IntCounter,
    /// Records processed.
    pub records: IntCounter,
    /// Batches committed.
    pub batches: IntCounter,
    /// Duration of a batch write transaction, seconds.
    pub batch_seconds: Histogram,
    /// Batches refused because a newer owner fenced a partition.
    pub fenced: IntCounter,
    /// Failed batch writes (rebuilt from the committed state).
    pub write_errors: IntCounter,
    /// Partitions currently owned.
    pub owned_partitions: IntGauge,
    /// Failed writes by kind (data, transient).
    pub write_failures: IntCounterVec,
    /// Failed writes in a row, per partition (0 when healthy).
    pub consecutive_failures: IntGaugeVec,
    /// Records set aside because Postgres refused their effects.
    pub poison_records: IntCounter,
    /// Partitions whose stored position was outside the log, by kind.
    pub partition_resets: IntCounterVec,
    /// Record timestamps clamped to clock + max skew.
    pub clamped_records: IntCounter,
    /// Groups answered at their maximum span or size.
    pub capped_groups: IntCounter,
    /// Identical redeliveries of NEW_CONVERSATION / CLOSE_CONVERSATION.
    pub lifecycle_duplicates: IntCounter,
    /// Replies whose derived id was taken and that moved to a salted id.
    pub reply_id_collisions: IntCounter,
    /// Wall-clock watermark advances held back by an ingest record in
    /// flight.
    pub watermark_held: IntCounter,
    /// Partitions assigned again because records were waiting and none
    /// were delivered.
    pub stalled_partitions: IntCounter,
    /// Failed reads of the ingest in-flight reports (the watermark keeps
    /// the last floor read).
    pub inflight_floor_failures: IntCounter,
    /// Waits at start for the topic or the broker, by reason
    /// (`topic_missing`, `broker_unreachable`).
    pub startup_waits: IntCounterVec,
    /// Starts at which this replica owned no partitions.
    pub starts_without_partitions: IntCounter,
    /// Partitions claimed (each claim bumps the owner epoch).
    pub partition_claims: IntCounter,
    /// Failed assignments of the owned partitions to the consumer.
    pub assign_failures: IntCounter,
    /// Records read that are not events (a replay reads them again; the
    /// rejections they become are in `rejections_total{reason="undecodable"}`).
    pub undecodable_records: IntCounter,
    /// Errors the consumer returned instead of a record, by kind
    /// (`position_outside_log`, `other`).
    pub consumer_errors: IntCounterVec,
    /// Errors librdkafka reported to the client (partition EOF excluded).
    pub librdkafka_errors: IntCounter,
    /// Failed rebuilds of partitions from their committed state (retried).
    pub rebuild_failures: IntCounter,
    /// Partitions dropped because a newer owner claimed them.
    pub fenced_partitions: IntCounter,
    /// Failed resets of a partition whose position is outside the log
    /// (tried again at the next reading).
    pub partition_reset_failures: IntCounter,
    /// Failed readings of a partition's log bounds at start.
    pub log_bounds_read_failures: IntCounter,
    /// Batches Postgres refused (data failure): the partition then writes
    /// record by record to find the record.
    pub refused_batches: IntCounter,
    /// Deliveries queued for replies of channel conversations.
    pub deliveries_queued: IntCounter,
    /// Replies written, by what answered them (`bot`, `faq`, `template`).
    pub replies_by_policy: IntCounterVec,
    /// Replies the bot did not answer (they fell back), by reason.
    pub reply_bot_failures: IntCounterVec,
    /// Replies the template failed to render (the original text answered).
    pub reply_template_failures: IntCounter,
    /// FAQ rules files loaded (at start and after each change).
    pub reply_rules_reloads: IntCounter,
    /// Changed FAQ rules files that could not be read or parsed (the rules
    /// in use were kept).
    pub reply_rules_reload_failures: IntCounter,
    /// FAQ rules in use.
    pub reply_rules: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let p = |n: &str, h: &str| Opts::new(n, h).namespace("chatpipe_processor");
        let lag = IntGaugeVec::new(
            p("lag_records", "records behind the partition end"),
            &["partition"],
        )?;
        let open_groups =
            IntGaugeVec::new(p("open_groups", "open session groups"), &["partition"])?;
        let buffered_orphans = IntGaugeVec::new(
            p(
                "buffered_orphans",
                "messages waiting for their conversation",
            ),
            &["partition"],
        )?;
        let held_inbound = IntGaugeVec::new(
            p(
                "held_inbound",
                "INBOUND rows of a behind partition held to be written with their reply",
            ),
            &["partition"],
        )?;
        let rejections = IntCounterVec::new(
            p("rejections_total", "rejected events by reason"),
            &["reason"],
        )?;
        let late_records =
            IntCounter::with_opts(p("late_records_total", "records behind the watermark"))?;
        let late_new_groups = IntCounter::with_opts(p(
            "late_new_groups_total",
            "groups started by a record older than a written group",
        ))?;
        let duplicates =
            IntCounter::with_opts(p("duplicates_total", "duplicate messages ignored"))?;
        let reply_delta = Histogram::with_opts(
            HistogramOpts::new(
                "reply_delta_seconds",
                "reply written - (last arrival + gap)",
            )
            .namespace("chatpipe_processor")
            .buckets(vec![
                -0.05, 0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ]),
        )?;
        let replies = IntCounter::with_opts(p("replies_total", "replies written"))?;
        let records = IntCounter::with_opts(p("records_total", "records processed"))?;
        let batches = IntCounter::with_opts(p("batches_total", "batches committed"))?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("batch_write_seconds", "batch transaction duration")
                .namespace("chatpipe_processor")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14)?),
        )?;
        let fenced =
            IntCounter::with_opts(p("fenced_batches_total", "batches refused by fencing"))?;
        let write_errors = IntCounter::with_opts(p("write_errors_total", "failed batch writes"))?;
        let owned_partitions = IntGauge::with_opts(p("owned_partitions", "partitions owned"))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(open_groups.clone()))?;
        registry.register(Box::new(buffered_orphans.clone()))?;
        registry.register(Box::new(held_inbound.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(late_records.clone()))?;
        registry.register(Box::new(late_new_groups.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(reply_delta.clone()))?;
        registry.register(Box::new(replies.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(fenced.clone()))?;
        registry.register(Box::new(write_errors.clone()))?;
        registry.register(Box::new(owned_partitions.clone()))?;
        let write_failures = IntCounterVec::new(
            p(
                "write_failures_total",
                "failed batch writes by kind (data, transient)",
            ),
            &["kind"],
        )?;
        let consecutive_failures = IntGaugeVec::new(
            p(
                "consecutive_failures",
                "failed writes in a row (0 when healthy)",
            ),
            &["partition"],
        )?;
        let poison_records = IntCounter::with_opts(p(
            "poison_records_total",
            "records set aside because Postgres refused their effects",
        ))?;
        let partition_resets = IntCounterVec::new(
            p(
                "partition_resets_total",
                "stored positions found outside the log (see partition_resets)",
            ),
            &["kind"],
        )?;
        let clamped_records = IntCounter::with_opts(p(
            "clamped_records_total",
            "record timestamps clamped to clock + max skew",
        ))?;
        let capped_groups = IntCounter::with_opts(p(
            "capped_groups_total",
            "groups answered at their maximum span or size",
        ))?;
        let lifecycle_duplicates = IntCounter::with_opts(p(
            "lifecycle_duplicates_total",
            "identical redeliveries of NEW_CONVERSATION or CLOSE_CONVERSATION",
        ))?;
        let reply_id_collisions = IntCounter::with_opts(p(
            "reply_id_collisions_total",
            "replies whose derived id was taken by a message",
        ))?;
        let watermark_held = IntCounter::with_opts(p(
            "watermark_held_total",
            "wall-clock watermark advances held back by a record still in flight at ingest",
        ))?;
        registry.register(Box::new(write_failures.clone()))?;
        registry.register(Box::new(consecutive_failures.clone()))?;
        registry.register(Box::new(poison_records.clone()))?;
        registry.register(Box::new(partition_resets.clone()))?;
        registry.register(Box::new(clamped_records.clone()))?;
        registry.register(Box::new(capped_groups.clone()))?;
        registry.register(Box::new(lifecycle_duplicates.clone()))?;
        registry.register(Box::new(reply_id_collisions.clone()))?;
        registry.register(Box::new(watermark_held.clone()))?;
        let stalled_partitions = IntCounter::with_opts(p(
            "stalled_partitions_total",
            "partitions assigned again: records waiting, none delivered",
        ))?;
        registry.register(Box::new(stalled_partitions.clone()))?;
        let inflight_floor_failures = IntCounter::with_opts(p(
            "inflight_floor_failures_total",
            "failed reads of the ingest in-flight reports",
        ))?;
        registry.register(Box::new(inflight_floor_failures.clone()))?;
        let startup_waits = IntCounterVec::new(
            p(
                "startup_waits_total",
                "waits at start for the topic or the broker, by reason",
            ),
            &["reason"],
        )?;
        let starts_without_partitions = IntCounter::with_opts(p(
            "starts_without_partitions_total",
            "starts at which this replica owned no partitions",
        ))?;
        let partition_claims = IntCounter::with_opts(p(
            "partition_claims_total",
            "partitions claimed (each claim bumps the owner epoch)",
        ))?;
        let assign_failures = IntCounter::with_opts(p(
            "assign_failures_total",
            "failed assignments of the owned partitions to the consumer",
        ))?;
        let undecodable_records = IntCounter::with_opts(p(
            "undecodable_records_total",
            "records read that are not events (a replay reads them again)",
        ))?;
        let consumer_errors = IntCounterVec::new(
            p(
                "consumer_errors_total",
                "errors the consumer returned instead of a record, by kind",
            ),
            &["kind"],
        )?;
        let librdkafka_errors = IntCounter::with_opts(p(
            "librdkafka_errors_total",
            "errors librdkafka reported (partition EOF excluded)",
        ))?;
        let rebuild_failures = IntCounter::with_opts(p(
            "rebuild_failures_total",
            "failed rebuilds of partitions from their committed state",
        ))?;
        let fenced_partitions = IntCounter::with_opts(p(
            "fenced_partitions_total",
            "partitions dropped because a newer owner claimed them",
        ))?;
        let partition_reset_failures = IntCounter::with_opts(p(
            "partition_reset_failures_total",
            "failed resets of a partition whose position is outside the log",
        ))?;
        let log_bounds_read_failures = IntCounter::with_opts(p(
            "log_bounds_read_failures_total",
            "failed readings of a partition's log bounds at start",
        ))?;
        let refused_batches = IntCounter::with_opts(p(
            "refused_batches_total",
            "batches Postgres refused (data failure); the partition then writes record by record",
        ))?;
        let deliveries_queued = IntCounter::with_opts(p(
            "deliveries_queued_total",
            "deliveries queued for replies of channel conversations",
        ))?;
        let replies_by_policy = IntCounterVec::new(
            p(
                "replies_by_policy_total",
                "replies written, by what answered them",
            ),
            &["policy"],
        )?;
        let reply_bot_failures = IntCounterVec::new(
            p(
                "reply_bot_failures_total",
                "replies the reply bot did not answer (they fell back to the rules or the template), by reason",
            ),
            &["reason"],
        )?;
        let reply_template_failures = IntCounter::with_opts(p(
            "reply_template_failures_total",
            "replies the template failed to render (the original text answered)",
        ))?;
        let reply_rules_reloads = IntCounter::with_opts(p(
            "reply_rules_reloads_total",
            "FAQ rules files loaded (at start and after each change)",
        ))?;
        let reply_rules_reload_failures = IntCounter::with_opts(p(
            "reply_rules_reload_failures_total",
            "changed FAQ rules files that could not be read or parsed (the rules in use were kept)",
        ))?;
        let reply_rules = IntGauge::with_opts(p("reply_rules", "FAQ rules in use"))?;
        registry.register(Box::new(deliveries_queued.clone()))?;
        registry.register(Box::new(replies_by_policy.clone()))?;
        registry.register(Box::new(reply_bot_failures.clone()))?;
        registry.register(Box::new(reply_template_failures.clone()))?;
        registry.register(Box::new(reply_rules_reloads.clone()))?;
        registry.register(Box::new(reply_rules_reload_failures.clone()))?;
        registry.register(Box::new(reply_rules.clone()))?;
        for a in crate::engine::effects::AnsweredBy::ALL {
            replies_by_policy.with_label_values(&[a.as_str()]);
        }
        for r in crate::engine::policy::BotFailure::REASONS {
            reply_bot_failures.with_label_values(&[r]);
        }
        registry.register(Box::new(startup_waits.clone()))?;
        registry.register(Box::new(starts_without_partitions.clone()))?;
        registry.register(Box::new(partition_claims.clone()))?;
        registry.register(Box::new(assign_failures.clone()))?;
        registry.register(Box::new(undecodable_records.clone()))?;
        registry.register(Box::new(consumer_errors.clone()))?;
        registry.register(Box::new(librdkafka_errors.clone()))?;
        registry.register(Box::new(rebuild_failures.clone()))?;
        registry.register(Box::new(fenced_partitions.clone()))?;
        registry.register(Box::new(partition_reset_failures.clone()))?;
        registry.register(Box::new(log_bounds_read_failures.clone()))?;
        registry.register(Box::new(refused_batches.clone()))?;
        for r in STARTUP_WAIT_REASONS {
            startup_waits.with_label_values(&[r]);
        }
        for k in CONSUMER_ERROR_KINDS {
            consumer_errors.with_label_values(&[k]);
        }
        for r in crate::engine::effects::Reason::ALL {
            rejections.with_label_values(&[r.as_str()]);
        }
        for k in ["data", "transient"] {
            write_failures.with_label_values(&[k]);
        }
        for k in ["beyond_log_end", "before_log_start"] {
            partition_resets.with_label_values(&[k]);
        }
        Ok(Self {
            registry,
            lag,
            open_groups,
            buffered_orphans,
            held_inbound,
            rejections,
            late_records,
            late_new_groups,
            duplicates,
            reply_delta,
            replies,
            records,
            batches,
            batch_seconds,
            fenced,
            write_errors,
            owned_partitions,
            write_failures,
            consecutive_failures,
            poison_records,
            partition_resets,
            clamped_records,
            capped_groups,
            lifecycle_duplicates,
            reply_id_collisions,
            watermark_held,
            stalled_partitions,
            inflight_floor_failures,
            startup_waits,
            starts_without_partitions,
            partition_claims,
            assign_failures,
            undecodable_records,
            consumer_errors,
            librdkafka_errors,
            rebuild_failures,
            fenced_partitions,
            partition_reset_failures,
            log_bounds_read_failures,
            refused_batches,
            deliveries_queued,
            replies_by_policy,
            reply_bot_failures,
            reply_template_failures,
            reply_rules_reloads,
            reply_rules_reload_failures,
            reply_rules,
        })
    }
}
