//! chatpipe ingest: receives provider webhooks on `POST /webhook/`,
//! validates them with the shared event contract, makes conversation
//! lifecycle decisions atomically in Postgres, writes each event to Kafka
//! (keyed by conversation id) and answers only after the broker's
//! acknowledgement.
//!
//! # Layout
//! - [`config`]: clap settings (each with an env var and a default; defined
//!   in `chatpipe-settings`).
//! - [`webhook`]: the handler (admission, body timeout, decision on a task
//!   of its own) and the pure outcome → HTTP mapping, with the table of
//!   status codes.
//! - [`lifecycle`]: NEW_CONVERSATION / CLOSE_CONVERSATION transactions that
//!   hold the row lock until the record is acknowledged, identical
//!   redeliveries answered as replays, and the pool whose sessions end
//!   transactions left idle.
//! - [`status_cache`]: batched exact lookups for NEW_MESSAGE (conversation
//!   status and message-id collisions in one statement) and the memory of
//!   CLOSED ids (the hot path makes no per-request SQL round trip).
//! - [`producer`]: the rdkafka producer wrapper (record shape, arrival
//!   stamp, timeout, recovery from fatal errors).
//! - [`inflight`]: the registry of records waiting for the broker and the
//!   task that publishes this replica's oldest one to `ingest_inflight`.
//! - [`signature`]: Standard Webhooks signature verification (`401`).
//! - [`channels`]: `POST /channels/{name}/webhook` (and WhatsApp's `GET`
//!   check): a messenger's webhook verified and normalised by
//!   `chatpipe-channels`, answered after every item was decided.
//! - [`channel_routes`]: the channels received, by name.
//! - [`channel_store`]: what a channel message changes in Postgres — the
//!   contact, the conversation it opens (one OPEN per contact and channel,
//!   under the contact's row lock), the message's facts — and provider
//!   status reports.
//! - [`rate_limit`]: the per-client rate limit (`429` + `Retry-After`).
//! - [`metrics`]: Prometheus metrics.
//! - [`server`]: wiring, the HTTP/1.1 server (header read timeout),
//!   graceful shutdown, in-process [`spawn`].

pub mod channel_routes;
pub mod channel_store;
pub mod channels;
pub mod config;
pub mod events;
pub mod inflight;
pub mod lifecycle;
pub mod metrics;
pub mod producer;
pub mod rate_limit;
pub mod server;
pub mod signature;
pub mod status_cache;
pub mod webhook;

pub use config::IngestArgs;
pub use server::{run, spawn, Ingest, Running};
