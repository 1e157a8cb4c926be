//! The operator's metrics (Prometheus), served on `/metrics` of the
//! controller's ops port. Every counter is updated by an event of
//! [`crate::events`] (which also logs it); the table there says which.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `chatpipe_operator_reconciliations_total` | counter | reconcile runs started |
//! | `chatpipe_operator_reconcile_failures_total{reason}` | counter | failed runs, by [`Error::metric_label`](crate::error::Error::metric_label) (`kube`, `apply`, `finalizer`, `status`, `missing_metadata`, `secret_missing`, `kafka`, `topic_mismatch`) |
//! | `chatpipe_operator_reconcile_duration_seconds` | histogram | duration of reconcile runs |
//! | `chatpipe_operator_invalid_specs_total` | counter | runs that found an invalid spec (Degraded, not retried) |
//! | `chatpipe_operator_unreportable_failures_total` | counter | failed runs reported nowhere: the object has no namespace |
//! | `chatpipe_operator_failure_status_write_failures_total` | counter | failed runs whose failure could not be written to the status |
//! | `chatpipe_operator_event_publish_failures_total{reason}` | counter | Kubernetes Events that could not be published, by the Event's reason |
//! | `chatpipe_operator_controller_errors_total{kind}` | counter | errors of the controller's stream: `object_not_found`, `reconciler_failed` (also in `reconcile_failures_total`), `queue`, `runner` |
//! | `chatpipe_operator_ops_server_failures_total` | counter | ops server (`/healthz`, `/readyz`, `/metrics`) stopped with an error |
//! | `chatpipe_operator_topics_created_total` | counter | Kafka topics created |
//! | `chatpipe_operator_migration_jobs_created_total` | counter | migration Jobs created |
//! | `chatpipe_operator_migration_waits_total` | counter | runs that postponed a migration Job because another one still runs |
//! | `chatpipe_operator_migrations_succeeded_total` | counter | migrations newly seen succeeded |
//! | `chatpipe_operator_deletions_total` | counter | cleanups of deleted pipelines |

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconcile runs started.
    pub reconciliations: IntCounter,
    /// Failed runs by reason ([`crate::error::Error::metric_label`]).
    pub failures: IntCounterVec,
    /// Duration of reconcile runs in seconds.
    pub duration: Histogram,
    /// Objects found with an invalid spec (Degraded, not retried).
    pub invalid_specs: IntCounter,
    /// Failed runs that could not be reported at all (no namespace).
    pub unreportable_failures: IntCounter,
    /// Failed runs whose failure could not be written to the status.
    pub failure_status_write_failures: IntCounter,
    /// Kubernetes Events not published, by the Event's reason.
    pub event_publish_failures: IntCounterVec,
    /// Errors of the controller's stream, by kind.
    pub controller_errors: IntCounterVec,
    /// The ops server stopped with an error.
    pub ops_server_failures: IntCounter,
    /// Kafka topics created.
    pub topics_created: IntCounter,
    /// Migration Jobs created.
    pub migration_jobs_created: IntCounter,
    /// Migration Jobs postponed because another one still runs.
    pub migration_waits: IntCounter,
    /// Migrations newly seen succeeded.
    pub migrations_succeeded: IntCounter,
    /// Cleanups of deleted pipelines.
    pub deletions: IntCounter,
}

fn counter(name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    IntCounter::with_opts(Opts::new(name, help))
}

fn counter_vec(name: &str, help: &str, label: &str) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            reconciliations: counter(
                "chatpipe_operator_reconciliations_total",
                "Reconcile runs started",
            )?,
            failures: counter_vec(
                "chatpipe_operator_reconcile_failures_total",
                "Reconcile runs that failed, by reason",
                "reason",
            )?,
            duration: Histogram::with_opts(
                HistogramOpts::new(
                    "chatpipe_operator_reconcile_duration_seconds",
                    "Duration of reconcile runs",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            invalid_specs: counter(
                "chatpipe_operator_invalid_specs_total",
                "Reconcile runs that found an invalid spec",
            )?,
            unreportable_failures: counter(
                "chatpipe_operator_unreportable_failures_total",
                "Failed reconcile runs that could not be reported (object without a namespace)",
            )?,
            failure_status_write_failures: counter(
                "chatpipe_operator_failure_status_write_failures_total",
                "Failed reconcile runs whose failure could not be written to the status",
            )?,
            event_publish_failures: counter_vec(
                "chatpipe_operator_event_publish_failures_total",
                "Kubernetes Events that could not be published, by the Event's reason",
                "reason",
            )?,
            controller_errors: counter_vec(
                "chatpipe_operator_controller_errors_total",
                "Errors of the controller's stream, by kind",
                "kind",
            )?,
            ops_server_failures: counter(
                "chatpipe_operator_ops_server_failures_total",
                "Times the ops server stopped with an error",
            )?,
            topics_created: counter(
                "chatpipe_operator_topics_created_total",
                "Kafka topics created",
            )?,
            migration_jobs_created: counter(
                "chatpipe_operator_migration_jobs_created_total",
                "Migration Jobs created",
            )?,
            migration_waits: counter(
                "chatpipe_operator_migration_waits_total",
                "Reconcile runs that postponed a migration Job because another one still runs",
            )?,
            migrations_succeeded: counter(
                "chatpipe_operator_migrations_succeeded_total",
                "Migrations newly seen succeeded",
            )?,
            deletions: counter(
                "chatpipe_operator_deletions_total",
                "Cleanups of deleted ChatPipelines",
            )?,
        };
        registry.register(Box::new(m.reconciliations.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.invalid_specs.clone()))?;
        registry.register(Box::new(m.unreportable_failures.clone()))?;
        registry.register(Box::new(m.failure_status_write_failures.clone()))?;
        registry.register(Box::new(m.event_publish_failures.clone()))?;
        registry.register(Box::new(m.controller_errors.clone()))?;
        registry.register(Box::new(m.ops_server_failures.clone()))?;
        registry.register(Box::new(m.topics_created.clone()))?;
        registry.register(Box::new(m.migration_jobs_created.clone()))?;
        registry.register(Box::new(m.migration_waits.clone()))?;
        registry.register(Box::new(m.migrations_succeeded.clone()))?;
        registry.register(Box::new(m.deletions.clone()))?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exported() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.reconciliations.inc();
        m.duration.observe(0.1);
        m.failures.with_label_values(&["missing_metadata"]).inc();
        m.event_publish_failures.with_label_values(&["Ready"]).inc();
        m.controller_errors.with_label_values(&["queue"]).inc();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for n in [
            "chatpipe_operator_reconciliations_total",
            "chatpipe_operator_reconcile_failures_total",
            "chatpipe_operator_reconcile_duration_seconds",
            "chatpipe_operator_invalid_specs_total",
            "chatpipe_operator_unreportable_failures_total",
            "chatpipe_operator_failure_status_write_failures_total",
            "chatpipe_operator_event_publish_failures_total",
            "chatpipe_operator_controller_errors_total",
            "chatpipe_operator_ops_server_failures_total",
            "chatpipe_operator_topics_created_total",
            "chatpipe_operator_migration_jobs_created_total",
            "chatpipe_operator_migration_waits_total",
            "chatpipe_operator_migrations_succeeded_total",
            "chatpipe_operator_deletions_total",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert_eq!(m.failures.with_label_values(&["missing_metadata"]).get(), 1);
    }
}
