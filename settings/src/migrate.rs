//! Settings of the schema migration, `chatpipe-admin migrate`: the
//! database and the logs ([`MigrateArgs`] is the argument groups that
//! command flattens), and what a deployment sets of them
//! ([`MigrateSettings`]).

use crate::common::{LogArgs, LogSettings, PostgresArgs};
use crate::env::EnvWriter;

/// The settings `chatpipe-admin migrate` reads: the same Postgres and log
/// argument groups, under one command.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "chatpipe-admin-migrate")]
pub struct MigrateArgs {
    /// Postgres connection.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a deployment sets for the migration; `None` leaves the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateSettings {
    /// `CHATPIPE_POSTGRES_URL` (on Kubernetes a Secret reference instead).
    pub postgres_url: Option<String>,
    /// Logging.
    pub log: LogSettings,
}

impl MigrateSettings {
    /// The environment that gives the migration these settings.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut w = EnvWriter::new::<MigrateArgs>();
        w.set("postgres_url", self.postgres_url.as_ref());
        self.log.write(&mut w);
        w.finish()
    }

    /// The settings a parsed command line holds (every one set).
    pub fn from_args(a: &MigrateArgs) -> Self {
        Self {
            postgres_url: Some(a.postgres.postgres_url.clone()),
            log: LogSettings::from_args(&a.log),
        }
    }
}
