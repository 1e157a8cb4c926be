//! Postgres TLS against a real server: a private cluster started with
//! `ssl=on`, a test CA and a `pg_hba.conf` refusing plain connections
//! (see `tls_cluster/`). Every `sslmode` is checked the way libpq defines
//! it, through `chatpipe_core::db`'s connect, pool, `ensure_database` and
//! `migrate`; and no error shows a password.
//!
//! All cases share one cluster (one `initdb` per test process) and run
//! from one test, which reports every failing case by name.

mod tls_cluster;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use anyhow::{bail, ensure, Context};
use chatpipe_core::db;
use rcgen::ExtendedKeyUsagePurpose;
use tls_cluster::{TestCa, TlsCluster};

/// What the cases know about the cluster.
struct Env {
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Env {
    /// A URL to `host` as `postgres` with the query `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    fn ca(&self) -> String {
        self.ca.display().to_string()
    }
}

/// Whether the session of `client` is encrypted, from `pg_stat_ssl`.
async fn uses_tls(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .context("reading pg_stat_ssl")?;
    Ok(row.get(0))
}

/// Connects to `url` and checks the session is encrypted.
async fn connects_with_tls(url: &str) -> anyhow::Result<()> {
    let client = db::connect(url).await?;
    ensure!(uses_tls(&client).await?, "the session is not encrypted");
    Ok(())
}

/// The whole error chain of connecting to `url`, which must fail.
async fn connect_error(url: &str) -> anyhow::Result<String> {
    match db::connect(url).await {
        Ok(_) => bail!("connecting to {} succeeded", db::redact(url)),
        Err(e) => Ok(format!("{e:#}")),
    }
}

/// Checks `text` contains each of `needles`.
fn mentions(text: &str, needles: &[&str]) -> anyhow::Result<()> {
    for n in needles {
        ensure!(text.contains(n), "{n:?} missing from: {text}");
    }
    Ok(())
}

async fn verify_full_to_localhost(env: &Env) -> anyhow::Result<()> {
    let url = env.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", env.ca()),
    );
    let options = db::PgConnectOptions::parse(&url)?;
    ensure!(options.ssl_mode() == db::SslMode::VerifyFull);
    connects_with_tls(&url).await
}

async fn verify_full_to_the_ip_in_the_san(env: &Env) -> anyhow::Result<()> {
    connects_with_tls(&env.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", env.ca()),
    ))
    .await
}

async fn verify_full_refuses_a_name_not_in_the_san(env: &Env) -> anyhow::Result<()> {
    // hostaddr connects to the server while `host` is the name checked.
    for host in ["db.invalid", "127.0.0.2"] {
        let url = env.url(
            host,
            &format!(
                "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
                env.ca()
            ),
        );
        let e = connect_error(&url).await?;
        mentions(&e, &["sslmode=verify-full", "not valid for name", host])?;
    }
    Ok(())
}

async fn verify_ca_accepts_a_name_not_in_the_san(env: &Env) -> anyhow::Result<()> {
    connects_with_tls(&env.url(
        "db.invalid",
        &format!(
            "hostaddr=127.0.0.1&sslmode=verify-ca&sslrootcert={}",
            env.ca()
        ),
    ))
    .await
}

async fn verify_ca_refuses_another_ca(env: &Env) -> anyhow::Result<()> {
    let url = env.url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={}", env.other_ca.display()),
    );
    let e = connect_error(&url).await?;
    mentions(
        &e,
        &["sslmode=verify-ca", "UnknownIssuer", &db::redact(&url)],
    )
}

async fn verify_full_without_root_cert_uses_the_system_store(env: &Env) -> anyhow::Result<()> {
    // The test CA is in no system store: the chain cannot be verified.
    let e = connect_error(&env.url("localhost", "sslmode=verify-full")).await?;
    ensure!(
        e.contains("UnknownIssuer") || e.contains("system store"),
        "unexpected error: {e}"
    );
    mentions(&e, &["sslmode=verify-full, CAs from the system CA store"])
}

async fn require_needs_no_root_cert(env: &Env) -> anyhow::Result<()> {
    connects_with_tls(&env.url("localhost", "sslmode=require")).await?;
    // Key=value form too.
    connects_with_tls(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        env.port
    ))
    .await
}

async fn require_with_a_root_cert_verifies_the_chain(env: &Env) -> anyhow::Result<()> {
    let e = connect_error(&env.url(
        "localhost",
        &format!("sslmode=require&sslrootcert={}", env.other_ca.display()),
    ))
    .await?;
    mentions(&e, &["sslmode=require", "UnknownIssuer"])?;
    connects_with_tls(&env.url(
        "db.invalid",
        &format!(
            "hostaddr=127.0.0.1&sslmode=require&sslrootcert={}",
            env.ca()
        ),
    ))
    .await
}

async fn disable_is_refused_by_the_server(env: &Env) -> anyhow::Result<()> {
    let e = connect_error(&env.url("localhost", "sslmode=disable")).await?;
    mentions(&e, &["sslmode=disable", "pg_hba.conf", "no encryption"])
}

async fn prefer_uses_tls(env: &Env) -> anyhow::Result<()> {
    connects_with_tls(&env.url("localhost", "sslmode=prefer")).await?;
    // prefer is the default.
    let url = format!("postgres://postgres@localhost:{}/postgres", env.port);
    ensure!(db::PgConnectOptions::parse(&url)?.ssl_mode() == db::SslMode::Prefer);
    connects_with_tls(&url).await
}

async fn prefer_reports_the_tls_failure(env: &Env) -> anyhow::Result<()> {
    // TLS fails (unknown CA), plain is refused: the TLS reason is shown.
    let e = connect_error(&env.url(
        "localhost",
        &format!("sslmode=prefer&sslrootcert={}", env.other_ca.display()),
    ))
    .await?;
    mentions(&e, &["sslmode=prefer", "UnknownIssuer"])
}

async fn allow_falls_back_to_tls(env: &Env) -> anyhow::Result<()> {
    connects_with_tls(&env.url("localhost", "sslmode=allow")).await
}

/// `plainuser` is refused with TLS and accepted without: `prefer` falls
/// back to plain text, `allow` starts there, and the modes that require
/// TLS never fall back.
async fn only_weak_modes_fall_back_to_plain_text(env: &Env) -> anyhow::Result<()> {
    let url = |mode: &str| {
        format!(
            "postgres://plainuser@localhost:{}/postgres?sslmode={mode}&sslrootcert={}",
            env.port,
            env.ca()
        )
    };
    for mode in ["disable", "allow", "prefer"] {
        let client = db::connect(&url(mode)).await.context(mode.to_owned())?;
        ensure!(!uses_tls(&client).await?, "{mode}: encrypted");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = connect_error(&url(mode)).await?;
        mentions(
            &e,
            &[&format!("sslmode={mode}"), "pg_hba.conf", "SSL encryption"],
        )?;
    }
    Ok(())
}

async fn unix_sockets_ignore_sslmode(env: &Env, cluster: &TlsCluster) -> anyhow::Result<()> {
    let url = format!(
        "{} sslmode=verify-full sslrootcert={}",
        cluster.socket_conninfo(),
        env.ca()
    );
    let client = db::connect(&url).await?;
    ensure!(!uses_tls(&client).await?, "TLS over a Unix socket");
    Ok(())
}

async fn pool_with_verify_full(env: &Env) -> anyhow::Result<()> {
    let url = env.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&application_name=pg_tls_pool",
            env.ca()
        ),
    );
    let pool = db::pool(&url, 2)?;
    let a = pool.get().await.context("first pooled connection")?;
    let b = pool.get().await.context("second pooled connection")?;
    for c in [&a, &b] {
        let row = c
            .query_one(
                "SELECT s.ssl, a.application_name FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        ensure!(row.get::<_, bool>(0), "pooled session not encrypted");
        ensure!(row.get::<_, String>(1) == "pg_tls_pool");
    }
    // A pool whose TLS cannot verify gives no connection.
    let bad = db::pool(
        &env.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={}", env.other_ca.display()),
        ),
        1,
    )?;
    let e = match bad.get().await {
        Ok(_) => bail!("a pool with the wrong CA connected"),
        Err(e) => format!("{e:?}"),
    };
    mentions(&e, &["UnknownIssuer"])
}

async fn ensure_database_and_migrate_over_tls(env: &Env) -> anyhow::Result<()> {
    let name = format!("cp_tls_{}", uuid::Uuid::new_v4().simple());
    let url = format!(
        "postgres://postgres@localhost:{}/{name}?sslmode=verify-full&sslrootcert={}",
        env.port,
        env.ca()
    );
    db::ensure_database(&url).await?;
    db::ensure_database(&url).await.context("second ensure")?;
    let applied = db::migrate(&url).await?;
    ensure!(applied == db::known_migrations(), "applied {applied:?}");
    ensure!(db::migrate(&url).await?.is_empty(), "migrated twice");
    let client = db::connect(&url).await?;
    ensure!(uses_tls(&client).await?);
    let n: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await?
        .get(0);
    ensure!(n as usize == applied.len());
    Ok(())
}

async fn client_certificates_authenticate(env: &Env) -> anyhow::Result<()> {
    let base = format!(
        "postgres://certuser@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        env.port,
        env.ca()
    );
    connects_with_tls(&format!(
        "{base}&sslcert={}&sslkey={}",
        env.client_cert.display(),
        env.client_key.display()
    ))
    .await?;
    let e = connect_error(&base).await?;
    mentions(&e, &["certificate"])
}

/// Neither a wrong password, nor an unreachable server, nor a malformed
/// URL shows the password in the error chain.
async fn errors_never_show_the_password(env: &Env) -> anyhow::Result<()> {
    const SECRET: &str = "Wr0ng-S3cret";
    let tls = format!("sslmode=verify-full&sslrootcert={}", env.ca());
    let cases = [
        // Wrong password, URL (percent-encoded '@') and key=value (quoted).
        format!(
            "postgres://pwuser:{SECRET}%40x@localhost:{}/postgres?{tls}",
            env.port
        ),
        format!(
            "host=localhost port={} user=pwuser dbname=postgres password='{SECRET} x' \
             sslmode=verify-full sslrootcert={}",
            env.port,
            env.ca()
        ),
        format!(
            "postgres://localhost:{}/postgres?user=pwuser&password={SECRET}&{tls}",
            env.port
        ),
        // Raw '@' in the password.
        format!(
            "postgres://pwuser:{SECRET}@x@localhost:{}/postgres?{tls}",
            env.port
        ),
        // Unreachable.
        format!("postgres://u:{SECRET}@127.0.0.1:1/db?sslmode=require"),
        // Malformed.
        format!("postgres://u:{SECRET}@localhost/db?sslmode=bogus"),
        format!("postgres://u:{SECRET}@localhost/db?no_such_option=1"),
        format!("host=localhost password={SECRET} sslrootcert=/nonexistent/ca.pem"),
        format!("host=localhost password={SECRET} user"),
    ];
    for url in &cases {
        let e = match db::connect(url).await {
            Ok(_) => bail!("connected with {}", db::redact(url)),
            Err(e) => e,
        };
        for shown in [format!("{e:#}"), format!("{e:?}")] {
            ensure!(!shown.contains(SECRET), "password shown: {shown}");
        }
        ensure!(
            format!("{e:#}").contains("***"),
            "no redacted URL in: {e:#}"
        );
        let pool = db::pool(url, 1);
        if let Ok(pool) = pool {
            if let Err(e) = pool.get().await {
                for shown in [format!("{e}"), format!("{e:?}")] {
                    ensure!(
                        !shown.contains(SECRET),
                        "password shown by the pool: {shown}"
                    );
                }
            }
        }
    }
    let e = connect_error(&format!(
        "postgres://pwuser:{SECRET}@localhost:{}/postgres?{tls}",
        env.port
    ))
    .await?;
    mentions(&e, &["password authentication failed"])?;
    // The right password works (SCRAM over TLS, with channel binding).
    connects_with_tls(&format!(
        "postgres://pwuser:right%20one@localhost:{}/postgres?{tls}",
        env.port
    ))
    .await
}

type Case<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

#[test]
fn every_sslmode_against_a_tls_only_server() {
    let ca = TestCa::new("chatpipe test CA");
    let other = TestCa::new("some other CA");
    let cluster = TlsCluster::start(&ca);
    let (client_cert, client_key) = ca.issue("certuser", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let env = Env {
        port: cluster.port,
        ca: cluster.dir.join("ca.crt"),
        other_ca: cluster.file("other-ca.crt", &other.pem()),
        client_cert: cluster.file("client.crt", &client_cert),
        client_key: cluster.file("client.key", &client_key),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let admin = db::connect(&cluster.socket_conninfo())
            .await
            .expect("connecting over the Unix socket");
        admin
            .batch_execute(
                "CREATE ROLE certuser LOGIN; CREATE ROLE plainuser LOGIN; \
                 CREATE ROLE pwuser LOGIN PASSWORD 'right one';",
            )
            .await
            .expect("creating roles");
    });

    let cases: Vec<(&str, Case<'_>)> = vec![
        (
            "verify-full to localhost",
            Box::pin(verify_full_to_localhost(&env)),
        ),
        (
            "verify-full to 127.0.0.1 (in the SAN)",
            Box::pin(verify_full_to_the_ip_in_the_san(&env)),
        ),
        (
            "verify-full refuses a name not in the SAN",
            Box::pin(verify_full_refuses_a_name_not_in_the_san(&env)),
        ),
        (
            "verify-ca accepts a name not in the SAN",
            Box::pin(verify_ca_accepts_a_name_not_in_the_san(&env)),
        ),
        (
            "verify-ca refuses another CA",
            Box::pin(verify_ca_refuses_another_ca(&env)),
        ),
        (
            "verify-full without sslrootcert uses the system store",
            Box::pin(verify_full_without_root_cert_uses_the_system_store(&env)),
        ),
        (
            "require needs no root cert",
            Box::pin(require_needs_no_root_cert(&env)),
        ),
        (
            "require with sslrootcert verifies the chain",
            Box::pin(require_with_a_root_cert_verifies_the_chain(&env)),
        ),
        (
            "disable is refused by the server",
            Box::pin(disable_is_refused_by_the_server(&env)),
        ),
        ("prefer uses TLS", Box::pin(prefer_uses_tls(&env))),
        (
            "prefer reports the TLS failure",
            Box::pin(prefer_reports_the_tls_failure(&env)),
        ),
        (
            "allow falls back to TLS",
            Box::pin(allow_falls_back_to_tls(&env)),
        ),
        (
            "only weak modes fall back to plain text",
            Box::pin(only_weak_modes_fall_back_to_plain_text(&env)),
        ),
        (
            "Unix sockets ignore sslmode",
            Box::pin(unix_sockets_ignore_sslmode(&env, &cluster)),
        ),
        (
            "a pool with verify-full",
            Box::pin(pool_with_verify_full(&env)),
        ),
        (
            "ensure_database and migrate over TLS",
            Box::pin(ensure_database_and_migrate_over_tls(&env)),
        ),
        (
            "client certificates authenticate",
            Box::pin(client_certificates_authenticate(&env)),
        ),
        (
            "errors never show the password",
            Box::pin(errors_never_show_the_password(&env)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, case) in cases {
        match rt.block_on(case) {
            Ok(()) => eprintln!("ok: {name}"),
            Err(e) => {
                eprintln!("FAILED: {name}: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    drop(rt);
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}\n--- server log ---\n{}",
        failures.len(),
        failures.join("\n"),
        cluster.log()
    );
}
