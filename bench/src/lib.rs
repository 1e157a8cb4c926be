//! Benchmarks of chatpipe: programs that print numbers. Speed targets are
//! checked here, never by timed assertions in tests.
//!
//! # Layout
//! - [`load`]: the webhook load generator (conversation-shaped bursts, a
//!   rate limit that does not hide a stalled server, latency histograms).
//! - [`cpu`]: CPU time of running processes by component, from `/proc`.
//! - `src/bin/loadgen.rs`: `chatpipe-loadgen`, the load generator against
//!   any running ingest.
//! - `src/bin/pipeline-bench.rs`: `pipeline-bench`, the end-to-end
//!   benchmark: runs the whole local pipeline (local mode, its own broker
//!   and database), sends conversation-shaped load through ingest and
//!   prints accepted/s, ingest p50/p99, reply δ p50/p99 and CPU time per
//!   message of every component.
//! - `src/bin/processor-bench.rs`: the processor alone (catch-up and live).
//! - `src/bin/api-bench.rs`: `chatpipe-api-bench`, the api's read path.

pub mod cpu;
pub mod load;
