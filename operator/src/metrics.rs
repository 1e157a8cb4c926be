//! Reconcile metrics (Prometheus): runs, failures by reason, and duration.
//! Served on `/metrics` of the controller's ops port.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::error::Error;

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconcile runs started.
    pub reconciliations: IntCounter,
    /// Failed runs by reason ([`Error::metric_label`]).
    pub failures: IntCounterVec,
    /// Duration of reconcile runs in seconds.
    pub duration: Histogram,
    /// Objects found with an invalid spec (Degraded, not retried).
    pub invalid_specs: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            reconciliations: IntCounter::with_opts(Opts::new(
                "chatpipe_operator_reconciliations_total",
                "Reconcile runs started",
            ))?,
            failures: IntCounterVec::new(
                Opts::new(
                    "chatpipe_operator_reconcile_failures_total",
                    "Reconcile runs that failed, by reason",
                ),
                &["reason"],
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
            invalid_specs: IntCounter::with_opts(Opts::new(
                "chatpipe_operator_invalid_specs_total",
                "Reconcile runs that found an invalid spec",
            ))?,
        };
        registry.register(Box::new(m.reconciliations.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.invalid_specs.clone()))?;
        Ok(m)
    }

    /// Counts a run and returns a timer that records its duration when dropped.
    pub fn start(&self) -> prometheus::HistogramTimer {
        self.reconciliations.inc();
        self.duration.start_timer()
    }

    /// Counts a failed run.
    pub fn failure(&self, error: &Error) {
        self.failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exported() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        drop(m.start());
        m.failure(&Error::MissingMetadata("uid"));
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for n in [
            "chatpipe_operator_reconciliations_total",
            "chatpipe_operator_reconcile_failures_total",
            "chatpipe_operator_reconcile_duration_seconds",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert_eq!(m.failures.with_label_values(&["missing_metadata"]).get(), 1);
    }
}
