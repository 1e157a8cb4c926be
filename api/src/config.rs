//! The api's command line and environment settings.

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_core::config::{parse_duration, LogArgs, PostgresArgs};

/// Settings of `chatpipe-api`; every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-api",
    version,
    about = "chatpipe query API and conversation viewer"
)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "CHATPIPE_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Postgres connection.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Role assumed on every connection (`SET ROLE` at connect), e.g.
    /// `chatpipe_api_readonly` created by migration V300; empty keeps the
    /// login role. Connections are read-only either way.
    #[arg(long, env = "CHATPIPE_API_DB_ROLE", default_value = "")]
    pub db_role: String,
    /// Longest a single query may run before Postgres cancels it.
    #[arg(long, env = "CHATPIPE_API_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Page size of listings when `limit` is absent.
    #[arg(long, env = "CHATPIPE_API_DEFAULT_LIMIT", default_value_t = crate::pagination::DEFAULT_LIMIT)]
    pub default_limit: i64,
    /// Largest accepted `limit` of listings.
    #[arg(long, env = "CHATPIPE_API_MAX_LIMIT", default_value_t = crate::pagination::MAX_LIMIT)]
    pub max_limit: i64,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}
