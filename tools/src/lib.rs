//! Operational tools for chatpipe.
//!
//! # Layout
//! - `src/bin/admin.rs`: `chatpipe-admin` — create the database, apply the
//!   migrations (`migrations/`), ensure the topic. The operator's migration
//!   Job and local mode run the same steps through `chatpipe-core`.
//! - `src/db_user.rs`: `chatpipe-admin db-user create` — a least-privileged
//!   Postgres login per component (migration `V500__component_roles.sql`).
//!
//! - `src/agent.rs`: `chatpipe-admin agent create` — an api agent (the
//!   first admin), with the api's own validation and hashing.
//!
//! Benchmarks and the load generator live in the `chatpipe-bench` crate.

pub mod agent;
pub mod db_user;
