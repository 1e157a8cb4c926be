//! Settings of `chatpipe-api`: its command line ([`ApiArgs`], clap derive;
//! every flag also reads an environment variable) and what a deployment
//! sets of it ([`ApiSettings`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{parse_duration, LogArgs, PostgresArgs, ServiceSettings, LISTEN_ENV};
use crate::env::EnvWriter;

/// Page size of listings when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest accepted `limit` of listings.
pub const MAX_LIMIT: i64 = 500;

/// Settings of `chatpipe-api`; every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chatpipe-api",
    version,
    about = "chatpipe query API and conversation viewer"
)]
pub struct ApiArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = LISTEN_ENV, default_value = "127.0.0.1:8081")]
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
    #[arg(long, env = "CHATPIPE_API_DEFAULT_LIMIT", default_value_t = DEFAULT_LIMIT)]
    pub default_limit: i64,
    /// Largest accepted `limit` of listings.
    #[arg(long, env = "CHATPIPE_API_MAX_LIMIT", default_value_t = MAX_LIMIT)]
    pub max_limit: i64,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a deployment sets for `chatpipe-api`; `None` leaves the binary's
/// default. Written with [`ApiSettings::to_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiSettings {
    /// Listener, database and logs.
    pub service: ServiceSettings,
}

impl ApiSettings {
    /// The environment that gives `chatpipe-api` these settings.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<ApiArgs>();
        self.service.write(&mut w);
        w.finish()
    }

    /// The settings a parsed command line holds (every one set).
    pub fn from_args(a: &ApiArgs) -> Self {
        Self {
            service: ServiceSettings::from_args(a.listen, &a.postgres, &a.log),
        }
    }
}
