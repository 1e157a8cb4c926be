//! What the processor says about itself: one type per observable fact.
//!
//! Each event both logs (level, message and structured fields fixed here)
//! and updates its metric in one [`InternalEvent::emit`] call, so logs and
//! metrics never disagree. The consume loop (`pipeline.rs`) logs only
//! through these events and increments counters only through them; gauges
//! that describe state (lag, open groups, held rows, owned partitions) it
//! sets directly. Every warning and error counts something; the events of
//! normal operation log at info (a change worth a line), debug (one batch)
//! or trace (one record).
//!
//! | event | level | metric (`chatpipe_processor_…`) |
//! |---|---|---|
//! | [`TopicMissing`] | warn | `startup_waits_total{reason="topic_missing"}` |
//! | [`BrokerUnreachable`] | warn | `startup_waits_total{reason="broker_unreachable"}` |
//! | [`ReplicaOwnsNoPartitions`] | warn | `starts_without_partitions_total` |
//! | [`PartitionClaimed`] | info | `partition_claims_total` |
//! | [`LogBoundsReadFailed`] | warn | `log_bounds_read_failures_total` |
//! | [`ReassignFailed`] | error | `assign_failures_total` |
//! | [`LibrdkafkaError`] | error | `librdkafka_errors_total` |
//! | [`PositionOutsideLog`] | error | `consumer_errors_total{kind="position_outside_log"}` |
//! | [`ConsumerError`] | warn | `consumer_errors_total{kind="other"}` |
//! | [`RecordClamped`] | warn | `clamped_records_total` |
//! | [`RecordUndecodable`] | warn | `undecodable_records_total` |
//! | [`WatermarkHeld`] | info | `watermark_held_total` |
//! | [`InflightReadFailed`] | warn (first of a run) | `inflight_floor_failures_total` |
//! | [`ReplyIdsSalted`] | debug | `reply_id_collisions_total` |
//! | [`BatchWritten`] | debug | `batches_total`, `records_total`, `batch_write_seconds` |
//! | [`ReplyWritten`] | trace | `replies_total`, `replies_by_policy_total{policy}`, `reply_delta_seconds` |
//! | [`DeliveriesQueued`] | debug | `deliveries_queued_total` |
//! | [`ReplyBotFellBack`] | warn | `reply_bot_failures_total{reason}` (one per reply) |
//! | [`ReplyTemplateFailed`] | error | `reply_template_failures_total` |
//! | [`ReplyRulesLoaded`] | info | `reply_rules_reloads_total`, `reply_rules` |
//! | [`ReplyRulesRejected`] | error | `reply_rules_reload_failures_total` |
//! | [`RecordRejected`] | trace | `rejections_total{reason}` |
//! | [`EngineCounted`] | trace | `late_records_total`, `late_new_groups_total`, `duplicates_total`, `capped_groups_total`, `lifecycle_duplicates_total` |
//! | [`BatchFenced`] | error | `fenced_batches_total`, `fenced_partitions_total` |
//! | [`PartitionFenced`] | error | `fenced_partitions_total` |
//! | [`BatchWriteFailed`] | warn | `write_errors_total`, `write_failures_total{kind}`, `consecutive_failures{partition}` |
//! | [`BatchRefused`] | error | `refused_batches_total` |
//! | [`RecordSetAside`] | error | `poison_records_total` |
//! | [`PartitionRecovered`] | info | `consecutive_failures{partition}` (0) |
//! | [`RefusedRecordsPassed`] | info | — (ends what [`BatchRefused`] counted) |
//! | [`PartitionRebuildFailed`] | warn | `rebuild_failures_total` |
//! | [`PartitionStalled`] | error | `stalled_partitions_total` |
//! | [`PartitionReset`] | error | `partition_resets_total{kind}` |
//! | [`PartitionResetPostponed`] | warn | `partition_reset_failures_total` |
//! | [`PartitionResetFailed`] | error | `partition_reset_failures_total` |
//! | [`ShutdownComplete`] | info | — |

use std::fmt::Display;

use crate::engine::effects::{AnsweredBy, Reason};
use crate::engine::logcheck::PositionCheck;
use crate::engine::policy::BotFailure;
use crate::engine::retry::FailureKind;
use crate::engine::window::EngineStats;
use crate::metrics::Metrics;

/// A fact the processor reports: logs it and updates its metrics.
pub trait InternalEvent {
    /// Logs the event and updates its metrics.
    fn emit(self, metrics: &Metrics);
}

/// At start: the topic does not exist yet.
#[derive(Debug, Clone, Copy)]
pub struct TopicMissing<'a> {
    /// The topic waited for.
    pub topic: &'a str,
}

impl InternalEvent for TopicMissing<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(topic = %self.topic, "topic does not exist yet; waiting");
        m.startup_waits.with_label_values(&["topic_missing"]).inc();
    }
}

/// At start: the broker did not answer the metadata request.
#[derive(Clone, Copy)]
pub struct BrokerUnreachable<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for BrokerUnreachable<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "broker not reachable; waiting");
        m.startup_waits
            .with_label_values(&["broker_unreachable"])
            .inc();
    }
}

/// At start: no partition of the topic belongs to this replica.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaOwnsNoPartitions {
    /// This replica's ordinal.
    pub ordinal: u32,
    /// The replica count.
    pub replicas: u32,
    /// The topic's partition count.
    pub partitions: i32,
}

impl InternalEvent for ReplicaOwnsNoPartitions {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            ordinal = self.ordinal,
            replicas = self.replicas,
            partitions = self.partitions,
            "this replica owns no partitions (its ordinal is not below the replica count, or the topic has fewer partitions)"
        );
        m.starts_without_partitions.inc();
    }
}

/// A partition was claimed (its owner epoch bumped).
#[derive(Debug, Clone, Copy)]
pub struct PartitionClaimed {
    /// The partition.
    pub partition: i32,
    /// The new owner epoch.
    pub epoch: i64,
    /// Its committed resume offset.
    pub resume: i64,
    /// Its committed processed offset.
    pub processed: i64,
}

impl InternalEvent for PartitionClaimed {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            partition = self.partition,
            epoch = self.epoch,
            resume = self.resume,
            processed = self.processed,
            "claimed partition"
        );
        m.partition_claims.inc();
    }
}

/// At start: a partition's log bounds could not be read (its position is
/// not checked this time).
#[derive(Clone, Copy)]
pub struct LogBoundsReadFailed<'a> {
    /// The partition.
    pub partition: i32,
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for LogBoundsReadFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(partition = self.partition, error = %self.error, "reading the log bounds failed");
        m.log_bounds_read_failures.inc();
    }
}

/// Assigning the owned partitions to the consumer failed (tried again
/// before the next poll that needs it).
#[derive(Clone, Copy)]
pub struct ReassignFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for ReassignFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, "re-assigning partitions failed");
        m.assign_failures.inc();
    }
}

/// librdkafka reported an error to the client (partition EOF, the normal
/// "caught up" signal, is not one).
#[derive(Clone, Copy)]
pub struct LibrdkafkaError<'a> {
    /// The error.
    pub error: &'a dyn Display,
    /// librdkafka's reason text.
    pub reason: &'a str,
}

impl InternalEvent for LibrdkafkaError<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, reason = self.reason, "librdkafka error");
        m.librdkafka_errors.inc();
    }
}

/// The consumer reported a partition's position outside the log; the log
/// bounds are checked at once.
#[derive(Clone, Copy)]
pub struct PositionOutsideLog<'a> {
    /// The consumer's error.
    pub error: &'a dyn Display,
}

impl InternalEvent for PositionOutsideLog<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, "a partition's position is outside the log; checking the log bounds");
        m.consumer_errors
            .with_label_values(&["position_outside_log"])
            .inc();
    }
}

/// The consumer returned an error instead of a record.
#[derive(Clone, Copy)]
pub struct ConsumerError<'a> {
    /// The error.
    pub error: &'a dyn Display,
}

impl InternalEvent for ConsumerError<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "consumer error");
        m.consumer_errors.with_label_values(&["other"]).inc();
    }
}

/// A record's timestamp was further ahead of this clock than the allowed
/// skew and was clamped.
#[derive(Debug, Clone, Copy)]
pub struct RecordClamped {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// How far ahead of the clock it was (ms).
    pub ahead_ms: i64,
}

impl InternalEvent for RecordClamped {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            ahead_ms = self.ahead_ms,
            "record timestamp ahead of this clock by more than the allowed skew; clamped"
        );
        m.clamped_records.inc();
    }
}

/// A record that is not an event was read; it is recorded as an
/// `undecodable` rejection.
#[derive(Debug, Clone, Copy)]
pub struct RecordUndecodable<'a> {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it is not an event.
    pub error: &'a str,
}

impl InternalEvent for RecordUndecodable<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            error = %self.error,
            "a record that is not an event; recording it as rejected (undecodable)"
        );
        m.undecodable_records.inc();
    }
}

/// The wall-clock watermark started being held back by a record still in
/// flight at ingest.
#[derive(Debug, Clone, Copy)]
pub struct WatermarkHeld {
    /// How far behind the clock target it is held (ms).
    pub held_ms: i64,
}

impl InternalEvent for WatermarkHeld {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            held_ms = self.held_ms,
            "watermark held back by a record still in flight at ingest"
        );
        m.watermark_held.inc();
    }
}

/// Reading the ingest in-flight reports failed (the watermark keeps the
/// last floor read). Logged once per run of failures, counted each time.
#[derive(Debug, Clone, Copy)]
pub struct InflightReadFailed<'a> {
    /// What went wrong.
    pub error: &'a str,
    /// The previous read failed too (already logged).
    pub already_failing: bool,
}

impl InternalEvent for InflightReadFailed<'_> {
    fn emit(self, m: &Metrics) {
        if !self.already_failing {
            tracing::warn!(error = %self.error, "reading ingest in-flight reports failed");
        }
        m.inflight_floor_failures.inc();
    }
}

/// Replies whose derived id was taken by a message moved to a salted id.
#[derive(Debug, Clone, Copy)]
pub struct ReplyIdsSalted {
    /// How many replies moved.
    pub count: u64,
}

impl InternalEvent for ReplyIdsSalted {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            count = self.count,
            "reply ids taken by messages; replies moved to salted ids"
        );
        m.reply_id_collisions.inc_by(self.count);
    }
}

/// A poll batch was committed (at least one of its transactions).
#[derive(Debug, Clone, Copy)]
pub struct BatchWritten {
    /// Records it read.
    pub records: u64,
    /// How long the write took (s).
    pub seconds: f64,
}

impl InternalEvent for BatchWritten {
    fn emit(self, m: &Metrics) {
        tracing::debug!(
            records = self.records,
            seconds = self.seconds,
            "batch written"
        );
        m.batch_seconds.observe(self.seconds);
        m.batches.inc();
        m.records.inc_by(self.records);
    }
}

/// A reply was written.
#[derive(Debug, Clone, Copy)]
pub struct ReplyWritten {
    /// Its partition.
    pub partition: i32,
    /// δ = written − its timestamp (s); `None` for a group flushed by
    /// CLOSE_CONVERSATION (answered before its window ended).
    pub delta_seconds: Option<f64>,
    /// What answered it.
    pub answered_by: AnsweredBy,
}

impl InternalEvent for ReplyWritten {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            partition = self.partition,
            delta_seconds = self.delta_seconds,
            policy = self.answered_by.as_str(),
            "reply written"
        );
        m.replies.inc();
        m.replies_by_policy
            .with_label_values(&[self.answered_by.as_str()])
            .inc();
        if let Some(d) = self.delta_seconds {
            m.reply_delta.observe(d);
        }
    }
}

/// A committed transaction queued deliveries for replies of channel
/// conversations.
#[derive(Debug, Clone, Copy)]
pub struct DeliveriesQueued {
    /// How many.
    pub count: u64,
}

impl InternalEvent for DeliveriesQueued {
    fn emit(self, m: &Metrics) {
        if self.count == 0 {
            return;
        }
        tracing::debug!(count = self.count, "deliveries queued");
        m.deliveries_queued.inc_by(self.count);
    }
}

/// The reply bot did not answer some replies of a batch; they fell back to
/// the FAQ rules or the template. One event per batch (one log line), one
/// count per reply.
#[derive(Debug, Clone, Copy)]
pub struct ReplyBotFellBack<'a> {
    /// Each failure and what went wrong, in reply order.
    pub failures: &'a [(BotFailure, String)],
    /// Replies the bot was asked for in the batch.
    pub asked: usize,
}

impl InternalEvent for ReplyBotFellBack<'_> {
    fn emit(self, m: &Metrics) {
        let Some((first, detail)) = self.failures.first() else {
            return;
        };
        tracing::warn!(
            failed = self.failures.len(),
            asked = self.asked,
            reason = first.reason(),
            error = %detail,
            "the reply bot did not answer; replies fell back to the FAQ rules or the template"
        );
        for (f, _) in self.failures {
            m.reply_bot_failures.with_label_values(&[f.reason()]).inc();
        }
    }
}

/// The reply template failed to render a group (it rendered the sample
/// group at start); the original text answered.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTemplateFailed<'a> {
    /// The reply's conversation.
    pub conversation_id: uuid::Uuid,
    /// What went wrong.
    pub error: &'a str,
}

impl InternalEvent for ReplyTemplateFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            conversation_id = %self.conversation_id,
            error = %self.error,
            "the reply template failed to render; the original text answered"
        );
        m.reply_template_failures.inc();
    }
}

/// The FAQ rules file was loaded (at start, or after it changed): its
/// rules are in use now.
#[derive(Debug, Clone, Copy)]
pub struct ReplyRulesLoaded<'a> {
    /// The file.
    pub path: &'a str,
    /// Rules in use.
    pub rules: usize,
}

impl InternalEvent for ReplyRulesLoaded<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(path = %self.path, rules = self.rules, "FAQ rules file loaded");
        m.reply_rules_reloads.inc();
        m.reply_rules
            .set(i64::try_from(self.rules).unwrap_or(i64::MAX));
    }
}

/// The FAQ rules file changed but cannot be read or parsed: the rules in
/// use are kept (and `/readyz` warns until a good file is loaded).
#[derive(Debug, Clone, Copy)]
pub struct ReplyRulesRejected<'a> {
    /// The file.
    pub path: &'a str,
    /// What is wrong.
    pub error: &'a str,
    /// Rules still in use.
    pub kept: usize,
}

impl ReplyRulesRejected<'_> {
    /// The warning `/readyz` lists for it.
    pub fn warning(&self) -> String {
        format!(
            "FAQ rules file {}: {}; keeping the {} rules loaded before",
            self.path, self.error, self.kept
        )
    }
}

impl InternalEvent for ReplyRulesRejected<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            path = %self.path,
            error = %self.error,
            kept = self.kept,
            "FAQ rules file cannot be used; keeping the rules loaded before"
        );
        m.reply_rules_reload_failures.inc();
    }
}

/// A rejection was written.
#[derive(Debug, Clone, Copy)]
pub struct RecordRejected {
    /// Its partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Why.
    pub reason: Reason,
}

impl InternalEvent for RecordRejected {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            partition = self.partition,
            offset = self.offset,
            reason = self.reason.as_str(),
            "record rejected"
        );
        m.rejections
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// What a partition's engine counted since the last committed batch.
#[derive(Debug, Clone, Copy)]
pub struct EngineCounted {
    /// The partition.
    pub partition: i32,
    /// The engine's counters at the last report.
    pub before: EngineStats,
    /// Its counters now.
    pub now: EngineStats,
}

impl InternalEvent for EngineCounted {
    fn emit(self, m: &Metrics) {
        let (b, n) = (self.before, self.now);
        let late_records = n.late_records.saturating_sub(b.late_records);
        let late_new_groups = n.late_new_groups.saturating_sub(b.late_new_groups);
        let duplicates = n.duplicates.saturating_sub(b.duplicates);
        let capped_groups = n.capped_groups.saturating_sub(b.capped_groups);
        let lifecycle_duplicates = n
            .lifecycle_duplicates
            .saturating_sub(b.lifecycle_duplicates);
        tracing::trace!(
            partition = self.partition,
            late_records,
            late_new_groups,
            duplicates,
            capped_groups,
            lifecycle_duplicates,
            "engine counted"
        );
        m.late_records.inc_by(late_records);
        m.late_new_groups.inc_by(late_new_groups);
        m.duplicates.inc_by(duplicates);
        m.capped_groups.inc_by(capped_groups);
        m.lifecycle_duplicates.inc_by(lifecycle_duplicates);
    }
}

/// A batch was rolled back because a newer owner claimed some of its
/// partitions; they are dropped.
#[derive(Debug, Clone, Copy)]
pub struct BatchFenced<'a> {
    /// The partitions taken over.
    pub fenced: &'a [i32],
}

impl InternalEvent for BatchFenced<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            fenced = ?self.fenced,
            "a newer owner claimed partitions; dropping them"
        );
        m.fenced.inc();
        m.fenced_partitions.inc_by(self.fenced.len() as u64);
    }
}

/// A partition found claimed by a newer owner (while rebuilding or
/// resetting it) is dropped.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFenced {
    /// The partition.
    pub partition: i32,
}

impl InternalEvent for PartitionFenced {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            partition = self.partition,
            "partition was claimed by a newer owner; dropping it"
        );
        m.fenced_partitions.inc();
    }
}

/// A write failed; its partitions are rebuilt from their committed state
/// and paused for a backoff.
#[derive(Debug, Clone, Copy)]
pub struct BatchWriteFailed<'a> {
    /// Data (Postgres refused it) or transient.
    pub kind: FailureKind,
    /// What went wrong.
    pub error: &'a str,
    /// Each partition of the write with its failures in a row.
    pub partitions: &'a [(i32, u32)],
}

impl InternalEvent for BatchWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.write_errors.inc();
        m.write_failures
            .with_label_values(&[self.kind.as_str()])
            .inc();
        for &(partition, failures) in self.partitions {
            tracing::warn!(
                partition,
                failures,
                kind = self.kind.as_str(),
                error = self.error,
                "batch write failed; rebuilding the partition from its committed state"
            );
            m.consecutive_failures
                .with_label_values(&[&partition.to_string()])
                .set(i64::from(failures));
        }
    }
}

/// Postgres refused a partition's batch (a data failure): it is written
/// record by record until it has read past `up_to`.
#[derive(Debug, Clone, Copy)]
pub struct BatchRefused<'a> {
    /// The partition.
    pub partition: i32,
    /// The last offset of the refused batch.
    pub up_to: i64,
    /// The database's error.
    pub error: &'a str,
}

impl InternalEvent for BatchRefused<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            partition = self.partition,
            up_to = self.up_to,
            error = self.error,
            "Postgres refused a batch; writing this partition record by record to find the record"
        );
        m.refused_batches.inc();
    }
}

/// A record Postgres refused too often is set aside as a
/// `storage_refused` rejection.
#[derive(Debug, Clone, Copy)]
pub struct RecordSetAside<'a> {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// How often it was refused.
    pub refusals: u32,
    /// The database's error.
    pub error: &'a str,
}

impl InternalEvent for RecordSetAside<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            partition = self.partition,
            offset = self.offset,
            refusals = self.refusals,
            error = self.error,
            "record set aside: recorded as a storage_refused rejection, the partition goes on"
        );
        m.poison_records.inc();
    }
}

/// A partition whose writes failed committed again.
#[derive(Debug, Clone, Copy)]
pub struct PartitionRecovered {
    /// The partition.
    pub partition: i32,
    /// The failures in a row before.
    pub failures: u32,
}

impl InternalEvent for PartitionRecovered {
    fn emit(self, m: &Metrics) {
        tracing::info!(
            partition = self.partition,
            failures = self.failures,
            "partition writes again"
        );
        m.consecutive_failures
            .with_label_values(&[&self.partition.to_string()])
            .set(0);
    }
}

/// A partition written record by record is past the refused records and
/// writes whole batches again.
#[derive(Debug, Clone, Copy)]
pub struct RefusedRecordsPassed {
    /// The partition.
    pub partition: i32,
    /// Records it set aside meanwhile.
    pub set_aside: usize,
}

impl InternalEvent for RefusedRecordsPassed {
    fn emit(self, _: &Metrics) {
        tracing::info!(
            partition = self.partition,
            set_aside = self.set_aside,
            "partition is past the refused records; batches again"
        );
    }
}

/// Rebuilding partitions from their committed state failed (retried).
#[derive(Clone, Copy)]
pub struct PartitionRebuildFailed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for PartitionRebuildFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "rebuilding partitions failed; retrying");
        m.rebuild_failures.inc();
    }
}

/// A partition with records to read received none for a long while; it is
/// assigned again.
#[derive(Debug, Clone, Copy)]
pub struct PartitionStalled {
    /// The partition.
    pub partition: i32,
    /// Its next offset.
    pub next: i64,
    /// The log's end.
    pub log_end: i64,
    /// Seconds since its last record.
    pub idle_s: u64,
}

impl InternalEvent for PartitionStalled {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            partition = self.partition,
            next = self.next,
            log_end = self.log_end,
            idle_s = self.idle_s,
            "records to read but none delivered; assigning the partition again"
        );
        m.stalled_partitions.inc();
    }
}

/// A partition's stored position was outside the log; it was moved to the
/// log's start (see the `partition_resets` table).
#[derive(Debug, Clone, Copy)]
pub struct PartitionReset {
    /// The partition.
    pub partition: i32,
    /// Where the position was.
    pub kind: PositionCheck,
    /// The stored resume offset.
    pub stored_resume: i64,
    /// The stored next offset.
    pub stored_next: i64,
    /// The log's start.
    pub log_start: i64,
    /// The log's end.
    pub log_end: i64,
    /// Where reading goes on.
    pub reading_from: i64,
    /// Offsets skipped, `[from, to)`.
    pub skipped: (i64, i64),
    /// Stranded messages answered from their rows.
    pub stranded_answered: usize,
}

impl PartitionReset {
    /// The warning `/readyz` lists for it.
    pub fn warning(&self) -> String {
        format!(
            "partition {}: stored position (resume {}, next {}) was {} (log {}..{}); reading from {} on; skipped offsets [{}, {}); {} stranded messages answered from their rows (see partition_resets)",
            self.partition,
            self.stored_resume,
            self.stored_next,
            self.kind.as_str(),
            self.log_start,
            self.log_end,
            self.reading_from,
            self.skipped.0,
            self.skipped.1,
            self.stranded_answered,
        )
    }
}

impl InternalEvent for PartitionReset {
    fn emit(self, m: &Metrics) {
        tracing::error!(
            partition = self.partition,
            kind = self.kind.as_str(),
            stored_resume = self.stored_resume,
            stored_next = self.stored_next,
            log_start = self.log_start,
            log_end = self.log_end,
            skipped_from = self.skipped.0,
            skipped_to = self.skipped.1,
            stranded_answered = self.stranded_answered,
            "stored position outside the log; partition reset"
        );
        m.partition_resets
            .with_label_values(&[self.kind.as_str()])
            .inc();
    }
}

/// A partition to reset could not be reset now: Postgres is unavailable
/// (tried again at the next reading).
#[derive(Clone, Copy)]
pub struct PartitionResetPostponed<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for PartitionResetPostponed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(error = %self.error, "cannot reset a partition now: Postgres unavailable");
        m.partition_reset_failures.inc();
    }
}

/// Resetting a partition failed (tried again at the next reading).
#[derive(Clone, Copy)]
pub struct PartitionResetFailed<'a> {
    /// The partition.
    pub partition: i32,
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for PartitionResetFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(partition = self.partition, error = %self.error, "resetting a partition failed; will try again");
        m.partition_reset_failures.inc();
    }
}

/// The loop stopped after committing its last batch.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownComplete;

impl InternalEvent for ShutdownComplete {
    fn emit(self, _: &Metrics) {
        tracing::info!("shutting down: last batch committed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> Metrics {
        Metrics::new().expect("metrics register")
    }

    #[test]
    fn startup_events_count() {
        let m = fresh();
        TopicMissing { topic: "events" }.emit(&m);
        assert_eq!(
            m.startup_waits.with_label_values(&["topic_missing"]).get(),
            1
        );
        BrokerUnreachable { error: &"refused" }.emit(&m);
        assert_eq!(
            m.startup_waits
                .with_label_values(&["broker_unreachable"])
                .get(),
            1
        );
        ReplicaOwnsNoPartitions {
            ordinal: 3,
            replicas: 2,
            partitions: 4,
        }
        .emit(&m);
        assert_eq!(m.starts_without_partitions.get(), 1);
        PartitionClaimed {
            partition: 0,
            epoch: 2,
            resume: 0,
            processed: 0,
        }
        .emit(&m);
        assert_eq!(m.partition_claims.get(), 1);
        LogBoundsReadFailed {
            partition: 0,
            error: &"timeout",
        }
        .emit(&m);
        assert_eq!(m.log_bounds_read_failures.get(), 1);
    }

    #[test]
    fn consumer_events_count() {
        let m = fresh();
        ReassignFailed { error: &"x" }.emit(&m);
        assert_eq!(m.assign_failures.get(), 1);
        LibrdkafkaError {
            error: &"x",
            reason: "y",
        }
        .emit(&m);
        assert_eq!(m.librdkafka_errors.get(), 1);
        PositionOutsideLog { error: &"x" }.emit(&m);
        ConsumerError { error: &"x" }.emit(&m);
        ConsumerError { error: &"x" }.emit(&m);
        let kind = |k: &str| m.consumer_errors.with_label_values(&[k]).get();
        assert_eq!(kind("position_outside_log"), 1);
        assert_eq!(kind("other"), 2);
        RecordClamped {
            partition: 0,
            offset: 1,
            ahead_ms: 10_000,
        }
        .emit(&m);
        assert_eq!(m.clamped_records.get(), 1);
        RecordUndecodable {
            partition: 0,
            offset: 1,
            error: "not JSON",
        }
        .emit(&m);
        assert_eq!(m.undecodable_records.get(), 1);
    }

    #[test]
    fn watermark_events_count() {
        let m = fresh();
        WatermarkHeld { held_ms: 5 }.emit(&m);
        assert_eq!(m.watermark_held.get(), 1);
        for already_failing in [false, true, true] {
            InflightReadFailed {
                error: "down",
                already_failing,
            }
            .emit(&m);
        }
        assert_eq!(m.inflight_floor_failures.get(), 3);
    }

    #[test]
    fn write_events_count() {
        let m = fresh();
        ReplyIdsSalted { count: 2 }.emit(&m);
        assert_eq!(m.reply_id_collisions.get(), 2);
        BatchWritten {
            records: 7,
            seconds: 0.01,
        }
        .emit(&m);
        assert_eq!(m.batches.get(), 1);
        assert_eq!(m.records.get(), 7);
        assert_eq!(m.batch_seconds.get_sample_count(), 1);
        ReplyWritten {
            partition: 0,
            delta_seconds: Some(0.02),
            answered_by: AnsweredBy::Template,
        }
        .emit(&m);
        ReplyWritten {
            partition: 0,
            delta_seconds: None,
            answered_by: AnsweredBy::Faq,
        }
        .emit(&m);
        assert_eq!(m.replies.get(), 2);
        assert_eq!(m.reply_delta.get_sample_count(), 1);
        let by = |p: &str| m.replies_by_policy.with_label_values(&[p]).get();
        assert_eq!((by("bot"), by("faq"), by("template")), (0, 1, 1));
        for reason in Reason::ALL {
            RecordRejected {
                partition: 0,
                offset: 1,
                reason,
            }
            .emit(&m);
            assert_eq!(m.rejections.with_label_values(&[reason.as_str()]).get(), 1);
        }
        let before = EngineStats {
            late_records: 1,
            duplicates: 2,
            ..EngineStats::default()
        };
        let now = EngineStats {
            late_records: 4,
            late_new_groups: 1,
            duplicates: 2,
            skipped_decided: 9,
            capped_groups: 2,
            lifecycle_duplicates: 3,
        };
        EngineCounted {
            partition: 0,
            before,
            now,
        }
        .emit(&m);
        assert_eq!(m.late_records.get(), 3);
        assert_eq!(m.late_new_groups.get(), 1);
        assert_eq!(m.duplicates.get(), 0);
        assert_eq!(m.capped_groups.get(), 2);
        assert_eq!(m.lifecycle_duplicates.get(), 3);
    }

    #[test]
    fn failure_events_count() {
        let m = fresh();
        let failures = |p: i32| {
            m.consecutive_failures
                .with_label_values(&[&p.to_string()])
                .get()
        };
        BatchFenced { fenced: &[1, 3] }.emit(&m);
        assert_eq!(m.fenced.get(), 1);
        assert_eq!(m.fenced_partitions.get(), 2);
        PartitionFenced { partition: 5 }.emit(&m);
        assert_eq!(m.fenced_partitions.get(), 3);
        BatchWriteFailed {
            kind: FailureKind::Transient,
            error: "lock timeout",
            partitions: &[(0, 1), (2, 4)],
        }
        .emit(&m);
        assert_eq!(m.write_errors.get(), 1);
        assert_eq!(m.write_failures.with_label_values(&["transient"]).get(), 1);
        assert_eq!((failures(0), failures(2)), (1, 4));
        BatchRefused {
            partition: 0,
            up_to: 10,
            error: "NUL",
        }
        .emit(&m);
        assert_eq!(m.refused_batches.get(), 1);
        RecordSetAside {
            partition: 0,
            offset: 4,
            refusals: 3,
            error: "NUL",
        }
        .emit(&m);
        assert_eq!(m.poison_records.get(), 1);
        PartitionRecovered {
            partition: 2,
            failures: 4,
        }
        .emit(&m);
        assert_eq!(failures(2), 0);
        PartitionRebuildFailed { error: &"down" }.emit(&m);
        assert_eq!(m.rebuild_failures.get(), 1);
    }

    #[test]
    fn log_check_events_count() {
        let m = fresh();
        PartitionStalled {
            partition: 0,
            next: 1,
            log_end: 5,
            idle_s: 11,
        }
        .emit(&m);
        assert_eq!(m.stalled_partitions.get(), 1);
        let reset = PartitionReset {
            partition: 1,
            kind: PositionCheck::BeyondEnd,
            stored_resume: 90,
            stored_next: 100,
            log_start: 0,
            log_end: 3,
            reading_from: 0,
            skipped: (0, 0),
            stranded_answered: 2,
        };
        assert!(reset.warning().starts_with(
            "partition 1: stored position (resume 90, next 100) was beyond_log_end (log 0..3)"
        ));
        reset.emit(&m);
        assert_eq!(
            m.partition_resets
                .with_label_values(&["beyond_log_end"])
                .get(),
            1
        );
        PartitionResetPostponed { error: &"down" }.emit(&m);
        PartitionResetFailed {
            partition: 1,
            error: &"down",
        }
        .emit(&m);
        assert_eq!(m.partition_reset_failures.get(), 2);
    }

    #[test]
    fn reply_policy_events_count() {
        let m = fresh();
        DeliveriesQueued { count: 0 }.emit(&m);
        DeliveriesQueued { count: 3 }.emit(&m);
        assert_eq!(m.deliveries_queued.get(), 3);
        ReplyBotFellBack {
            failures: &[],
            asked: 2,
        }
        .emit(&m);
        ReplyBotFellBack {
            failures: &[
                (BotFailure::Timeout, "no answer".into()),
                (BotFailure::Status(502), "502".into()),
                (BotFailure::Timeout, "no answer".into()),
            ],
            asked: 4,
        }
        .emit(&m);
        let failures = |r: &str| m.reply_bot_failures.with_label_values(&[r]).get();
        assert_eq!(
            (failures("timeout"), failures("status"), failures("nul")),
            (2, 1, 0)
        );
        ReplyTemplateFailed {
            conversation_id: uuid::Uuid::nil(),
            error: "boom",
        }
        .emit(&m);
        assert_eq!(m.reply_template_failures.get(), 1);
        ReplyRulesLoaded {
            path: "/r.json",
            rules: 4,
        }
        .emit(&m);
        assert_eq!((m.reply_rules_reloads.get(), m.reply_rules.get()), (1, 4));
        let rejected = ReplyRulesRejected {
            path: "/r.json",
            error: "reply rule 1: has neither `keyword` nor `regex`",
            kept: 4,
        };
        assert_eq!(
            rejected.warning(),
            "FAQ rules file /r.json: reply rule 1: has neither `keyword` nor `regex`; keeping the 4 rules loaded before"
        );
        rejected.emit(&m);
        assert_eq!(
            (m.reply_rules_reload_failures.get(), m.reply_rules.get()),
            (1, 4)
        );
    }
}
