//! The pure engine: everything the processor decides, as plain functions
//! over plain data. Records, pre-loaded facts and watermark advances go in;
//! [`effects::Effect`]s and positions come out. No I/O, no clock (wall time
//! is always an argument), no threads, and none of tokio, Postgres,
//! rdkafka or Prometheus: the shell around it (the files next to this
//! folder) reads the log, pre-loads from Postgres, writes the effects and
//! reports, and the tests drive the engine directly.
//!
//! # Files
//! - [`domain`]: the plain data everything else builds on: the windows'
//!   configuration ([`domain::EngineConfig`]), a decoded record, log
//!   positions of lifecycle records, stored-message facts.
//! - [`reply`]: the reply's text and its deterministic (salted) id.
//! - [`watermark`]: the watermark rule.
//! - [`retry`]: what a failed write means (data or transient) and the
//!   backoff, poison and stuck thresholds.
//! - [`logcheck`]: whether a stored position is still inside the log.
//! - [`effects`]: what the engine decides, and the rejection reasons.
//! - [`visibility`]: when INBOUND rows are written (at once live, with
//!   their reply while behind).
//! - [`stranded`]: replies for messages whose records are gone from the
//!   log, answered from their rows.
//! - [`policy`]: what a reply says: the bot's checked answer, else the
//!   first matching FAQ rule, else the reply template.
//! - [`window`]: [`window::PartitionEngine`], the session windows, late
//!   arrivals, close and duplicates of one partition.
//! - [`memstore`]: an in-memory model of the store (the second backend of
//!   the same effects: tests and replay checks).
//!
//! # Dependency order
//! Each file uses only files listed before it (no cycles):
//!
//! ```text
//! domain, reply, watermark, retry, logcheck   (nothing of the crate)
//!   <- effects      (domain)
//!   <- visibility   (effects)
//!   <- stranded     (domain, effects, reply)
//!   <- policy       (effects, reply)
//!   <- window       (domain, effects, reply, watermark)
//!   <- memstore     (domain, effects, window)
//! ```
//!
//! Nothing in `engine/` uses the shell; the shell uses the engine.

pub mod domain;
pub mod effects;
pub mod logcheck;
pub mod memstore;
pub mod policy;
pub mod reply;
pub mod retry;
pub mod stranded;
pub mod visibility;
pub mod watermark;
pub mod window;
