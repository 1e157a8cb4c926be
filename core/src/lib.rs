//! Shared pieces of chatpipe: the webhook event contract, configuration,
//! and access to Postgres and Kafka. It holds no service logic.
//!
//! # Layout
//! - [`event`]: typed events, pure validation of webhook bodies, the
//!   canonical encoding written to Kafka.
//! - [`examples`]: the catalogue of invalid webhook payloads and the field
//!   each `400` names (shared by core's and the end-to-end tests).
//! - [`murmur2`]: Kafka's Java-compatible key partitioner.
//! - [`assignment`]: which processor owns which partition.
//! - [`config`]: clap argument groups (Postgres, Kafka, logs) shared by the
//!   binaries, each flag with an env var (defined in `chatpipe-settings`).
//! - [`db`]: connection pools, database creation, migrations (`migrations/`);
//!   TLS per libpq's `sslmode` with rustls, password redaction.
//! - [`kafka`]: producer/consumer settings and topic management.
//! - [`model`]: stored domain values (conversation status, message
//!   direction) shared by every service.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`telemetry`]: tracing set-up.
//! - [`shutdown`]: the SIGTERM/Ctrl-C future.

pub mod assignment;
pub mod config;
pub mod db;
pub mod event;
pub mod examples;
pub mod kafka;
pub mod model;
pub mod murmur2;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use event::{parse_event, Event, EventType, Limits, ValidationError};
