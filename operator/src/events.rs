//! What the operator says about itself: one type per observable fact.
//!
//! Each event both logs (level, message and structured fields fixed here)
//! and updates its metric in one [`InternalEvent::emit`] call, so logs and
//! metrics never disagree. The controller (`controller.rs`) and the
//! reconcile runs (`reconcile.rs`) log only through these events and update
//! metrics only through them; every warning and error counts something.
//! (These are the operator's own logs and metrics; the Kubernetes Events it
//! publishes about ChatPipelines are [`crate::k8s_events`]'s.)
//!
//! A failed step of a run (an apply, the topic check or creation, a
//! status write, a Kubernetes API call, …) is one [`ReconcileFailed`],
//! counted by the error's kind.
//!
//! | event | level | metric (`chatpipe_operator_…`) |
//! |---|---|---|
//! | [`OpsListening`] | info | — |
//! | [`OpsServerStopped`] | error | `ops_server_failures_total` |
//! | [`ControllerStarted`] | info | — |
//! | [`ControllerStopped`] | info | — |
//! | [`ReconcileStarted`] | trace | `reconciliations_total` |
//! | [`ReconcileFinished`] | trace | `reconcile_duration_seconds` |
//! | [`Reconciled`] | debug | — (counted by [`ReconcileStarted`]) |
//! | [`ControllerError`] | warn (`queue`, `runner`), debug (`object_not_found`, `reconciler_failed`) | `controller_errors_total{kind}` |
//! | [`ReconcileFailed`] | warn | `reconcile_failures_total{reason}` (`apply`, `kafka`, `status`, `kube`, …) |
//! | [`InvalidSpec`] | warn | `invalid_specs_total` |
//! | [`FailureUnreportable`] | warn | `unreportable_failures_total` |
//! | [`FailureStatusWriteFailed`] | warn | `failure_status_write_failures_total` |
//! | [`EventPublishFailed`] | warn | `event_publish_failures_total{reason}` |
//! | [`TopicCreated`] | info | `topics_created_total` |
//! | [`MigrationWaiting`] | info | `migration_waits_total` |
//! | [`MigrationJobCreated`] | info | `migration_jobs_created_total` |
//! | [`MigrationSucceeded`] | info | `migrations_succeeded_total` |
//! | [`PipelineDeleting`] | info | `deletions_total` |

use std::fmt::{Debug, Display};
use std::net::SocketAddr;
use std::time::Duration;

use kube::runtime::controller;
use kube::runtime::watcher;

use crate::error::Error;
use crate::metrics::Metrics;

/// A fact the operator reports: logs it and updates its metrics.
pub trait InternalEvent {
    /// Logs the event and updates its metrics.
    fn emit(self, metrics: &Metrics);
}

/// The ops endpoints (`/healthz`, `/readyz`, `/metrics`) listen.
#[derive(Debug, Clone, Copy)]
pub struct OpsListening {
    /// Their address.
    pub listen: SocketAddr,
}

impl InternalEvent for OpsListening {
    fn emit(self, _: &Metrics) {
        tracing::info!(listen = %self.listen, "ops endpoints listening");
    }
}

/// The ops server stopped with an error (the controller keeps running).
#[derive(Clone, Copy)]
pub struct OpsServerStopped<'a> {
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for OpsServerStopped<'_> {
    fn emit(self, m: &Metrics) {
        tracing::error!(error = %self.error, "ops server stopped");
        m.ops_server_failures.inc();
    }
}

/// The controller starts watching.
#[derive(Debug, Clone, Copy)]
pub struct ControllerStarted;

impl InternalEvent for ControllerStarted {
    fn emit(self, _: &Metrics) {
        tracing::info!("controller started");
    }
}

/// The controller stopped (after SIGTERM/SIGINT).
#[derive(Debug, Clone, Copy)]
pub struct ControllerStopped;

impl InternalEvent for ControllerStopped {
    fn emit(self, _: &Metrics) {
        tracing::info!("controller stopped");
    }
}

/// A reconcile run starts.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileStarted<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
}

impl InternalEvent for ReconcileStarted<'_> {
    fn emit(self, m: &Metrics) {
        tracing::trace!(pipeline = %self.pipeline, "reconcile started");
        m.reconciliations.inc();
    }
}

/// A reconcile run ended (its failure, if any, already reported on the object).
#[derive(Debug, Clone, Copy)]
pub struct ReconcileFinished<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// How long the run took.
    pub duration: Duration,
    /// The failure's [`Error::metric_label`], or `None` for a success.
    pub failure: Option<&'static str>,
}

impl InternalEvent for ReconcileFinished<'_> {
    fn emit(self, m: &Metrics) {
        tracing::trace!(
            pipeline = %self.pipeline,
            duration = ?self.duration,
            failure = self.failure,
            "reconcile finished"
        );
        m.duration.observe(self.duration.as_secs_f64());
    }
}

/// The controller's stream reports a successful run.
#[derive(Clone, Copy)]
pub struct Reconciled<'a> {
    /// The pipeline.
    pub pipeline: &'a dyn Display,
    /// What the controller does next.
    pub action: &'a dyn Debug,
}

impl InternalEvent for Reconciled<'_> {
    fn emit(self, _: &Metrics) {
        tracing::debug!(pipeline = %self.pipeline, action = ?self.action, "reconciled");
    }
}

/// The error type of the controller's stream.
pub type StreamError = controller::Error<Error, watcher::Error>;

/// The controller's stream reports an error. Only what is not reported
/// elsewhere and needs a look is a warning:
/// - a reconcile error was already logged (and counted) by [`ReconcileFailed`];
/// - "not found in local store" is what a deleted pipeline's owned objects
///   cause while they are garbage-collected (their events still name the
///   owner, which is gone): expected, so debug.
#[derive(Clone, Copy)]
pub struct ControllerError<'a> {
    /// The error.
    pub error: &'a StreamError,
}

impl ControllerError<'_> {
    /// The `kind` label: `object_not_found`, `reconciler_failed`, `queue`
    /// or `runner`.
    pub fn kind(&self) -> &'static str {
        match self.error {
            controller::Error::ObjectNotFound(_) => "object_not_found",
            controller::Error::ReconcilerFailed(..) => "reconciler_failed",
            controller::Error::QueueError(_) => "queue",
            controller::Error::RunnerError(_) => "runner",
        }
    }

    /// The level it is logged at.
    pub fn level(&self) -> tracing::Level {
        match self.error {
            controller::Error::ObjectNotFound(_) | controller::Error::ReconcilerFailed(..) => {
                tracing::Level::DEBUG
            }
            controller::Error::QueueError(_) | controller::Error::RunnerError(_) => {
                tracing::Level::WARN
            }
        }
    }
}

impl InternalEvent for ControllerError<'_> {
    fn emit(self, m: &Metrics) {
        let e = self.error;
        if self.level() == tracing::Level::WARN {
            tracing::warn!(error = %e, "controller error");
        } else {
            tracing::debug!(error = %e, "controller error");
        }
        m.controller_errors.with_label_values(&[self.kind()]).inc();
    }
}

/// A reconcile run failed (after reporting it on the object); it is
/// retried after `retry_in`.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileFailed<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// What went wrong.
    pub error: &'a Error,
    /// Consecutive failures of this pipeline.
    pub failures: u32,
    /// Delay before the retry.
    pub retry_in: Duration,
}

impl InternalEvent for ReconcileFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(
            pipeline = %self.pipeline,
            error = %self.error,
            failures = self.failures,
            retry_in = ?self.retry_in,
            "reconcile failed"
        );
        m.failures
            .with_label_values(&[self.error.metric_label()])
            .inc();
    }
}

/// The spec is invalid: the pipeline is `Degraded`, nothing running is
/// touched, and it is not retried until the spec changes.
#[derive(Debug, Clone, Copy)]
pub struct InvalidSpec<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The problems found.
    pub message: &'a str,
}

impl InternalEvent for InvalidSpec<'_> {
    fn emit(self, m: &Metrics) {
        let message = self.message;
        tracing::warn!(pipeline = %self.pipeline, %message, "invalid spec");
        m.invalid_specs.inc();
    }
}

/// A failed run cannot be reported on its object: it has no namespace.
#[derive(Debug, Clone, Copy)]
pub struct FailureUnreportable<'a> {
    /// Name of the pipeline.
    pub pipeline: &'a str,
    /// The failure.
    pub error: &'a str,
}

impl InternalEvent for FailureUnreportable<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(pipeline = %self.pipeline, error = %self.error, "cannot report on an object without a namespace");
        m.unreportable_failures.inc();
    }
}

/// A failed run's failure could not be written to the status (its Warning
/// Event is still published).
#[derive(Clone, Copy)]
pub struct FailureStatusWriteFailed<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// What went wrong writing it.
    pub error: &'a dyn Display,
}

impl InternalEvent for FailureStatusWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(pipeline = %self.pipeline, error = %self.error, "cannot write the failure to the status");
        m.failure_status_write_failures.inc();
    }
}

/// A Kubernetes Event could not be published (never fatal).
#[derive(Clone, Copy)]
pub struct EventPublishFailed<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The Event's reason.
    pub reason: &'a str,
    /// What went wrong.
    pub error: &'a dyn Display,
}

impl InternalEvent for EventPublishFailed<'_> {
    fn emit(self, m: &Metrics) {
        tracing::warn!(pipeline = %self.pipeline, reason = %self.reason, error = %self.error, "cannot publish event");
        m.event_publish_failures
            .with_label_values(&[self.reason])
            .inc();
    }
}

/// The Kafka topic was missing and was created.
#[derive(Debug, Clone, Copy)]
pub struct TopicCreated<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The topic.
    pub topic: &'a str,
    /// Its partitions.
    pub partitions: i32,
}

impl InternalEvent for TopicCreated<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(pipeline = %self.pipeline, topic = %self.topic, partitions = self.partitions, "created topic");
        m.topics_created.inc();
    }
}

/// Another migration Job of the pipeline still runs: the desired one waits.
#[derive(Debug, Clone, Copy)]
pub struct MigrationWaiting<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The running Job.
    pub running: &'a str,
    /// The Job waiting to be created.
    pub waiting: &'a str,
}

impl InternalEvent for MigrationWaiting<'_> {
    fn emit(self, m: &Metrics) {
        let running = self.running;
        tracing::info!(pipeline = %self.pipeline, %running, waiting = %self.waiting, "a migration Job is still running; waiting before the next one");
        m.migration_waits.inc();
    }
}

/// A migration Job was created.
#[derive(Debug, Clone, Copy)]
pub struct MigrationJobCreated<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The Job.
    pub job: &'a str,
}

impl InternalEvent for MigrationJobCreated<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(pipeline = %self.pipeline, job = %self.job, "started migration Job");
        m.migration_jobs_created.inc();
    }
}

/// A migration Job is newly seen succeeded (it becomes the status's
/// `lastMigration`).
#[derive(Debug, Clone, Copy)]
pub struct MigrationSucceeded<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
    /// The Job.
    pub job: &'a str,
    /// The schema version it brought the database to.
    pub schema_version: &'a str,
}

impl InternalEvent for MigrationSucceeded<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(pipeline = %self.pipeline, job = %self.job, schema_version = %self.schema_version, "migration succeeded");
        m.migrations_succeeded.inc();
    }
}

/// A deleted pipeline is cleaned up: its owned objects are
/// garbage-collected; the topic and the database are kept.
#[derive(Debug, Clone, Copy)]
pub struct PipelineDeleting<'a> {
    /// `namespace/name` of the pipeline.
    pub pipeline: &'a str,
}

impl InternalEvent for PipelineDeleting<'_> {
    fn emit(self, m: &Metrics) {
        tracing::info!(pipeline = %self.pipeline, "deleting pipeline; the Kafka topic and the database are kept");
        m.deletions.inc();
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::ObjectRef;
    use prometheus::Registry;

    use super::*;
    use crate::crd::ChatPipeline;

    fn fresh() -> Metrics {
        Metrics::register(&Registry::new()).expect("metrics register")
    }

    fn object() -> Box<ObjectRef<kube::api::DynamicObject>> {
        Box::new(
            ObjectRef::<ChatPipeline>::new("demo")
                .within("chat")
                .erase(),
        )
    }

    #[test]
    fn process_events_count() {
        let m = fresh();
        OpsListening {
            listen: "127.0.0.1:8080".parse().unwrap(),
        }
        .emit(&m);
        ControllerStarted.emit(&m);
        ControllerStopped.emit(&m);
        OpsServerStopped { error: &"closed" }.emit(&m);
        assert_eq!(m.ops_server_failures.get(), 1);
    }

    #[test]
    fn run_events_count() {
        let m = fresh();
        ReconcileStarted {
            pipeline: "chat/demo",
        }
        .emit(&m);
        assert_eq!(m.reconciliations.get(), 1);
        ReconcileFinished {
            pipeline: "chat/demo",
            duration: Duration::from_millis(20),
            failure: Some("kafka"),
        }
        .emit(&m);
        assert_eq!(m.duration.get_sample_count(), 1);
        assert!((m.duration.get_sample_sum() - 0.02).abs() < 1e-9);
        Reconciled {
            pipeline: &"chat/demo",
            action: &kube::runtime::controller::Action::await_change(),
        }
        .emit(&m);
        assert_eq!(
            m.reconciliations.get(),
            1,
            "the stream's report counts nothing"
        );
        let error = Error::Kafka("down".into());
        ReconcileFailed {
            pipeline: "chat/demo",
            error: &error,
            failures: 1,
            retry_in: Duration::from_secs(5),
        }
        .emit(&m);
        assert_eq!(m.failures.with_label_values(&["kafka"]).get(), 1);
        InvalidSpec {
            pipeline: "chat/demo",
            message: "bad",
        }
        .emit(&m);
        assert_eq!(m.invalid_specs.get(), 1);
    }

    #[test]
    fn controller_errors_count_by_kind() {
        let m = fresh();
        let kind = |k: &str| m.controller_errors.with_label_values(&[k]).get();
        let not_found: StreamError = controller::Error::ObjectNotFound(object());
        let e = ControllerError { error: &not_found };
        assert_eq!(e.level(), tracing::Level::DEBUG);
        e.emit(&m);
        assert_eq!(kind("object_not_found"), 1);
        let failed: StreamError =
            controller::Error::ReconcilerFailed(Error::MissingMetadata("uid"), object());
        let e = ControllerError { error: &failed };
        assert_eq!(e.level(), tracing::Level::DEBUG, "ReconcileFailed warns");
        e.emit(&m);
        assert_eq!(kind("reconciler_failed"), 1);
        let queue: StreamError = controller::Error::QueueError(watcher::Error::NoResourceVersion);
        let e = ControllerError { error: &queue };
        assert_eq!(e.level(), tracing::Level::WARN);
        e.emit(&m);
        e.emit(&m);
        assert_eq!(kind("queue"), 2);
        assert_eq!(kind("runner"), 0);
    }

    #[test]
    fn report_events_count() {
        let m = fresh();
        FailureUnreportable {
            pipeline: "demo",
            error: "x",
        }
        .emit(&m);
        assert_eq!(m.unreportable_failures.get(), 1);
        FailureStatusWriteFailed {
            pipeline: "chat/demo",
            error: &"conflict",
        }
        .emit(&m);
        assert_eq!(m.failure_status_write_failures.get(), 1);
        EventPublishFailed {
            pipeline: "chat/demo",
            reason: "Ready",
            error: &"forbidden",
        }
        .emit(&m);
        assert_eq!(
            m.event_publish_failures.with_label_values(&["Ready"]).get(),
            1
        );
    }

    #[test]
    fn lifecycle_events_count() {
        let m = fresh();
        TopicCreated {
            pipeline: "chat/demo",
            topic: "events",
            partitions: 6,
        }
        .emit(&m);
        assert_eq!(m.topics_created.get(), 1);
        MigrationWaiting {
            pipeline: "chat/demo",
            running: "demo-migrate-a",
            waiting: "demo-migrate-b",
        }
        .emit(&m);
        assert_eq!(m.migration_waits.get(), 1);
        MigrationJobCreated {
            pipeline: "chat/demo",
            job: "demo-migrate-b",
        }
        .emit(&m);
        assert_eq!(m.migration_jobs_created.get(), 1);
        MigrationSucceeded {
            pipeline: "chat/demo",
            job: "demo-migrate-b",
            schema_version: "7",
        }
        .emit(&m);
        assert_eq!(m.migrations_succeeded.get(), 1);
        PipelineDeleting {
            pipeline: "chat/demo",
        }
        .emit(&m);
        assert_eq!(m.deletions.get(), 1);
    }
}
