//! Postgres access shared by every service: connection pools, creating the
//! database when missing, and the schema migrations in `migrations/`.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory-lock key that serialises concurrent migration runs
/// (`'chatpipe'` in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6368_6174_7069_7065;

/// How long taking a connection from a pool, or making a new one, may wait
/// before it fails (so an exhausted pool or a dead server is an error, not a
/// hang).
pub const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a connection pool of at most `max_size` connections for `url`.
/// Connections are made lazily; nothing is contacted here.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    let config = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("invalid Postgres URL {}", redact(url)))?;
    pool_from_config(config, max_size)
}

/// Like [`pool`], for a connection configuration the caller has adjusted
/// (session options, role, application name).
pub fn pool_from_config(config: tokio_postgres::Config, max_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the Postgres pool")
}

/// Connects one client to `url`, driving its connection on the runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "Postgres connection ended");
        }
    });
    Ok(client)
}

/// Creates the database named in `url` when it does not exist yet, by
/// connecting to the `postgres` maintenance database of the same server.
/// Safe to call from several processes at once.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config = tokio_postgres::Config::from_str(url)
        .with_context(|| format!("invalid Postgres URL {}", redact(url)))?;
    let name = config
        .get_dbname()
        .context("the Postgres URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to the maintenance database for {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("looking up the database")?
        .is_some();
    if exists {
        return Ok(());
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        // Another process created it between our check and our CREATE.
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("creating database {name}")),
    }
}

/// Applies every pending migration of `migrations/` to the database at
/// `url`. Concurrent callers are serialised by a Postgres advisory lock, so
/// several processes may run this at once; all but the first find nothing
/// to do. Returns the names of the migrations this call applied.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut client = connect(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("taking the migration lock")?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(&mut client)
        .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result.context("applying migrations")?;
    unlock.context("releasing the migration lock")?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect();
    for m in &applied {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(applied)
}

/// The names of all migrations compiled into this binary, in order.
pub fn known_migrations() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h user=u"), "host=h user=u");
    }

    #[test]
    fn migrations_are_embedded_in_order() {
        let names = known_migrations();
        assert!(!names.is_empty());
        assert!(names[0].starts_with("V1__"), "{names:?}");
    }
}
