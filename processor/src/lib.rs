//! The chatpipe processor: owns Kafka partitions, groups each
//! conversation's bursts of messages into session windows, applies the
//! late-arrival and close rules, and writes conversations, INBOUND and
//! OUTBOUND messages and rejected events to Postgres exactly once.
//!
//! # Where to look
//! - [`window`]: the grouping rule and the whole pure engine of a partition.
//! - [`watermark`]: the watermark rule.
//! - [`effects`]: what the engine decides, and the rejection reasons.
//! - [`reply`]: reply text and deterministic reply id.
//! - [`visibility`]: when INBOUND rows are written (at once live, with
//!   their reply while behind).
//! - [`memstore`]: an in-memory model of the store (tests, replay checks).
//! - [`store`]: the Postgres writes (one transaction per poll batch).
//! - [`ownership`]: static partition assignment and owner-epoch fencing.
//! - [`pipeline`]: the consume loop (I/O shell around the engine).
//! - [`metrics`]: Prometheus metrics.
//! - [`failure`]: what a failed write means and when to try again.
//! - [`logcheck`]: whether a stored position is still inside the log.
//! - [`stranded`]: replies for messages whose records are gone.
//! - [`health`]: what `/readyz` reports.
//! - [`config`]: flags and environment.

pub mod config;
pub mod effects;
pub mod failure;
pub mod health;
pub mod logcheck;
pub mod memstore;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod reply;
pub mod store;
pub mod stranded;
pub mod visibility;
pub mod watermark;
pub mod window;
