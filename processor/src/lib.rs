//! The chatpipe processor: owns Kafka partitions, groups each
//! conversation's bursts of messages into session windows, applies the
//! late-arrival and close rules, and writes conversations, INBOUND and
//! OUTBOUND messages and rejected events to Postgres exactly once.
//!
//! # Layout
//! A pure core and a thin I/O shell. The folder says which is which:
//!
//! ```text
//! src/
//!   engine/          pure: no I/O, no clock, no tokio/Postgres/rdkafka/Prometheus
//!     mod.rs         what the engine is, its files and their dependency order
//!     domain.rs      windows config, records, log positions, stored-message facts
//!     reply.rs       reply text and deterministic reply id
//!     watermark.rs   the watermark rule
//!     retry.rs       data vs transient failures, backoff, poison and stuck limits
//!     logcheck.rs    is a stored position still inside the log?
//!     effects.rs     what the engine decides; rejection reasons
//!     visibility.rs  when INBOUND rows are written
//!     stranded.rs    replies for messages whose records are gone
//!     policy.rs      what a reply says: bot answer, FAQ rules, template
//!     window.rs      PartitionEngine: the session windows of one partition
//!     memstore.rs    in-memory model of the store (tests, replay checks)
//!   pipeline.rs      the consume loop: Kafka in, engine, Postgres out
//!   store.rs         Postgres: pre-loads and one transaction per poll batch
//!                    (with the outbox: deliveries of channel replies)
//!   reply_policy.rs  the reply policy's I/O: bot calls, the FAQ rules file
//!   ownership.rs     static partition assignment, owner-epoch fencing
//!   events.rs        every observable fact of the shell: one log line + its metric
//!   metrics.rs       the Prometheus registry and metric definitions
//!   health.rs        what /readyz reports
//!   config.rs        flags and environment
//!   main.rs          the binary: wiring, ops server, shutdown
//!   bin/             processor-bench
//! ```
//!
//! Dependencies point one way: the shell uses the engine, never the other
//! way round (see [`engine`] for the order inside it); in the shell,
//! `pipeline` uses `store`, `reply_policy`, `ownership`, `events`,
//! `metrics` and `health`; `store` uses `ownership` and `reply_policy`;
//! `reply_policy` uses `events`, `metrics` and `health`; `events` uses
//! `metrics`.
//!
//! # Where to look
//! - [`engine::window`]: the grouping rule and the whole pure engine of a
//!   partition; [`engine::domain`] for the data it works on.
//! - [`engine::watermark`]: the watermark rule.
//! - [`engine::effects`]: what the engine decides, and the rejection reasons.
//! - [`engine::reply`]: reply text and deterministic reply id.
//! - [`engine::visibility`]: when INBOUND rows are written (at once live,
//!   with their reply while behind).
//! - [`engine::memstore`]: an in-memory model of the store (tests, replay
//!   checks).
//! - [`engine::retry`]: what a failed write means and when to try again.
//! - [`engine::logcheck`]: whether a stored position is still inside the log.
//! - [`engine::stranded`]: replies for messages whose records are gone.
//! - [`engine::policy`]: what a reply says (bot, FAQ rules, template).
//! - [`store`]: the Postgres writes (one transaction per poll batch), and
//!   the outbox of channel replies.
//! - [`reply_policy`]: asking the reply bot, keeping the FAQ rules file.
//! - [`ownership`]: static partition assignment and owner-epoch fencing.
//! - [`pipeline`]: the consume loop (I/O shell around the engine).
//! - [`events`]: what the processor logs and counts, one type per fact.
//! - [`metrics`]: Prometheus metrics.
//! - [`health`]: what `/readyz` reports.
//! - [`config`]: flags and environment.

pub mod config;
pub mod engine;
pub mod events;
pub mod health;
pub mod metrics;
pub mod ownership;
pub mod pipeline;
pub mod reply_policy;
pub mod store;
