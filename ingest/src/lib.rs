//! chatpipe ingest: receives provider webhooks on `POST /webhook/`,
//! validates them with the shared event contract, makes conversation
//! lifecycle decisions atomically in Postgres, writes each event to Kafka
//! (keyed by conversation id) and answers only after the broker's
//! acknowledgement.
//!
//! # Layout
//! - [`config`]: clap settings (each with an env var and a default).
//! - [`webhook`]: the handler and the pure outcome → HTTP mapping.
//! - [`lifecycle`]: NEW_CONVERSATION / CLOSE_CONVERSATION transactions that
//!   hold the row lock until the record is acknowledged.
//! - [`status_cache`]: batched exact status lookups for NEW_MESSAGE and the
//!   memory of CLOSED ids (the hot path makes no per-request SQL round trip).
//! - [`producer`]: the rdkafka producer wrapper (record shape, timeout,
//!   recovery from fatal errors).
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: wiring, router, graceful shutdown, in-process [`spawn`].

pub mod config;
pub mod lifecycle;
pub mod metrics;
pub mod producer;
pub mod server;
pub mod status_cache;
pub mod webhook;

pub use config::IngestArgs;
pub use server::{run, spawn, Ingest, Running};
