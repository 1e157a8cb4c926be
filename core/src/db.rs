//! Postgres access shared by every service: connection pools, creating the
//! database when missing, and the schema migrations in `migrations/`.
//!
//! Every connection honours libpq's `sslmode` (default `prefer`) with
//! rustls: [`conninfo`] takes the TLS parameters out of the connection
//! string and hides passwords ([`redact`]); [`tls`] builds the rustls
//! configuration and makes the connection attempts the mode prescribes;
//! [`PgConnectOptions`] joins both, and every function here uses it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

pub mod conninfo;
pub mod tls;

pub use conninfo::{redact, RootCert, SslMode};
pub use tls::PgTls;

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

/// Everything needed to open connections to one Postgres database: the
/// tokio-postgres configuration (adjust it before building a pool: session
/// options, role, application name) and the TLS that the connection
/// string's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` ask for.
#[derive(Clone, Debug)]
pub struct PgConnectOptions {
    /// Host, port, user, password, database, options… (its own `ssl_mode`
    /// is ignored: [`PgConnectOptions::tls`] decides).
    pub config: tokio_postgres::Config,
    /// The TLS connector and `sslmode`.
    pub tls: PgTls,
    /// The connection string with passwords hidden, for messages.
    redacted: String,
}

impl PgConnectOptions {
    /// Parses a libpq connection string: a URL
    /// (`postgres://user:pw@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem`)
    /// or key=value (`host=h dbname=db sslmode=require`). `sslmode`
    /// defaults to `prefer`, as in libpq. CA and client certificate files
    /// are read here. Errors never show the password.
    pub fn parse(url: &str) -> anyhow::Result<PgConnectOptions> {
        let redacted = redact(url);
        let split = conninfo::split_ssl_params(url)
            .with_context(|| format!("invalid Postgres URL {redacted}"))?;
        let config = tokio_postgres::Config::from_str(&split.rest)
            // tokio-postgres's message may quote the text around a
            // mistake: scrub the passwords out of it.
            .map_err(|e| anyhow::anyhow!(split.scrub(&e.to_string())))
            .with_context(|| format!("invalid Postgres URL {redacted}"))?;
        let tls = PgTls::new(&split.ssl).with_context(|| {
            format!("setting up TLS (sslmode={}) for {redacted}", split.ssl.mode)
        })?;
        Ok(PgConnectOptions {
            config,
            tls,
            redacted,
        })
    }

    /// The `sslmode` in force.
    pub fn ssl_mode(&self) -> SslMode {
        self.tls.mode()
    }

    /// The connection string with passwords hidden.
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    /// Connects one client, driving its connection on the runtime. The
    /// error names the redacted URL and the `sslmode`, and its source says
    /// why (e.g. `invalid peer certificate: UnknownIssuer`).
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, _connection) = self.tls.open(&self.config).await.with_context(|| {
            format!(
                "connecting to Postgres at {} ({})",
                self.redacted,
                self.tls.describe()
            )
        })?;
        Ok(client)
    }

    /// Connects one client whose notifications (`LISTEN`) arrive on the
    /// returned receiver, which closes when the connection ends; TLS as
    /// [`PgConnectOptions::connect`].
    pub async fn connect_listening(
        &self,
    ) -> anyhow::Result<(
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    )> {
        let (client, rx, _connection) =
            self.tls
                .open_listening(&self.config)
                .await
                .with_context(|| {
                    format!(
                        "connecting to Postgres at {} ({})",
                        self.redacted,
                        self.tls.describe()
                    )
                })?;
        Ok((client, rx))
    }
}

/// Builds a connection pool of at most `max_size` connections for `url`
/// (see [`PgConnectOptions::parse`]). Connections are made lazily; nothing
/// is contacted here.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    pool_from_config(PgConnectOptions::parse(url)?, max_size)
}

/// Like [`pool`], for connection options the caller has adjusted
/// (session options, role, application name).
pub fn pool_from_config(options: PgConnectOptions, max_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_connect(
        options.config,
        options.tls,
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

/// Connects one client to `url` (see [`PgConnectOptions::parse`]), driving
/// its connection on the runtime.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    PgConnectOptions::parse(url)?.connect().await
}

/// Creates the database named in `url` when it does not exist yet, by
/// connecting to the `postgres` maintenance database of the same server
/// (with the same TLS settings). Safe to call from several processes at
/// once.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options = PgConnectOptions::parse(url)?;
    let name = options
        .config
        .get_dbname()
        .with_context(|| format!("the Postgres URL {} names no database", options.redacted))?
        .to_owned();
    let mut admin = options.clone();
    admin.config.dbname("postgres");
    let client = admin
        .connect()
        .await
        .context("connecting to the maintenance database `postgres`")?;
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

/// What a service's `--migrate` (`CHATPIPE_MIGRATE`) does at start:
/// [`ensure_database`] then [`migrate`]. A failure says what usually
/// causes it: a component's own least-privileged login (migration V500)
/// may not change the schema.
pub async fn migrate_at_start(url: &str) -> anyhow::Result<()> {
    async {
        ensure_database(url).await?;
        migrate(url).await
    }
    .await
    .context(
        "--migrate (CHATPIPE_MIGRATE) failed: a component's own restricted login cannot \
         apply migrations; run migrations with the owner's URL (chatpipe-admin migrate) \
         and start without --migrate",
    )?;
    Ok(())
}

/// The names of all migrations compiled into this binary, in order.
pub fn known_migrations() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_never_show_the_password() {
        for url in [
            "postgres://u:S3cr3t-pw@h/db?sslmode=disable",
            "host=h user=u password='S3cr3t-pw' sslmode=require",
        ] {
            let options = PgConnectOptions::parse(url).unwrap();
            let shown = format!("{options:?} {}", options.redacted_url());
            assert!(!shown.contains("S3cr3t-pw"), "{shown}");
            assert_eq!(options.config.get_password(), Some(&b"S3cr3t-pw"[..]));
        }
    }

    #[test]
    fn parse_takes_sslmode_and_keeps_the_rest() {
        let o = PgConnectOptions::parse(
            "postgres://u@h:5433/db?sslmode=verify-ca&sslrootcert=system&application_name=a",
        );
        // system roots need verify-full, as in libpq.
        let e = format!("{:#}", o.unwrap_err());
        assert!(e.contains("verify-full"), "{e}");
        let o =
            PgConnectOptions::parse("postgres://u@h:5433/db?sslmode=require&application_name=a")
                .unwrap();
        assert_eq!(o.ssl_mode(), SslMode::Require);
        assert_eq!(o.config.get_application_name(), Some("a"));
        assert_eq!(o.config.get_ports(), &[5433]);
        assert_eq!(o.config.get_dbname(), Some("db"));
    }

    #[test]
    fn migrations_are_embedded_in_order() {
        let names = known_migrations();
        assert!(!names.is_empty());
        assert!(names[0].starts_with("V1__"), "{names:?}");
    }
}
