//! Prometheus metrics of the ingest service, registered in one
//! [`prometheus::Registry`] served by `/metrics`.

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
    /// requests. `event_type` is `INVALID` when the body did not validate.
    pub requests: IntCounterVec,
    /// `chatpipe_ingest_request_duration_seconds{event_type}`: time from
    /// arrival to answer.
    pub request_duration: HistogramVec,
    /// `chatpipe_ingest_produce_duration_seconds`: time from handing a
    /// record to the producer to the broker's acknowledgement.
    pub produce_duration: Histogram,
    /// `chatpipe_ingest_produce_failures_total{reason}`: records not
    /// acknowledged (`timeout`, `queue_full`, `kafka`).
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
    /// a fatal librdkafka error.
    pub producer_recreated: IntCounter,
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(produce_duration.clone()))?;
        registry.register(Box::new(produce_failures.clone()))?;
        registry.register(Box::new(lookup_batch_size.clone()))?;
        registry.register(Box::new(lookup_duration.clone()))?;
        registry.register(Box::new(closed_cache_hits.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(producer_recreated.clone()))?;
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
    }
}
