//! Operational tools for chatpipe.
//!
//! # Layout
//! - `src/bin/admin.rs`: `chatpipe-admin` — create the database, apply the
//!   migrations (`migrations/`), ensure the topic. The operator's migration
//!   Job and local mode run the same steps through `chatpipe-core`.
//!
//! Benchmarks and the load generator live in the `chatpipe-bench` crate.
