//! `--postgres-ca-file` (`CHATPIPE_POSTGRES_CA_FILE`, what
//! `spec.postgres.caSecretRef` mounts) end to end: the built
//! `chatpipe-admin migrate` against a private TLS-only Postgres cluster
//! whose server certificate a test CA signed. With that CA as the file and
//! `sslmode=verify-full` the migration runs; with another CA, or none (the
//! system roots), it is refused.

// Shared with chatpipe-core's TLS tests; this test uses part of it.
#[allow(dead_code)]
#[path = "../../core/tests/tls_cluster/mod.rs"]
mod tls_cluster;

use std::process::{Command, Output};

use tls_cluster::{TestCa, TlsCluster};

const ADMIN: &str = env!("CARGO_BIN_EXE_chatpipe-admin");

fn migrate(url: &str, ca_file: Option<&str>) -> Output {
    let mut c = Command::new(ADMIN);
    c.arg("migrate")
        .env("CHATPIPE_POSTGRES_URL", url)
        .env("CHATPIPE_LOG", "warn")
        .env_remove("CHATPIPE_POSTGRES_CA_FILE");
    if let Some(ca) = ca_file {
        c.env("CHATPIPE_POSTGRES_CA_FILE", ca);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_ca_file_verifies_the_server() {
    let ca = TestCa::new("chatpipe test CA");
    let other = TestCa::new("some other CA");
    let cluster = TlsCluster::start(&ca);
    let ca_file = cluster.file("ca.pem", &ca.pem()).display().to_string();
    let other_file = cluster
        .file("other.pem", &other.pem())
        .display()
        .to_string();
    let url = format!(
        "postgres://postgres@localhost:{}/cp_ca_file?sslmode=verify-full",
        cluster.port
    );

    let ok = migrate(&url, Some(&ca_file));
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("migrations applied"), "{}", text(&ok));

    let wrong = migrate(&url, Some(&other_file));
    assert!(
        !wrong.status.success(),
        "another CA must not verify the server"
    );
    assert!(text(&wrong).contains("UnknownIssuer"), "{}", text(&wrong));

    let none = migrate(&url, None);
    assert!(
        !none.status.success(),
        "the system roots do not know the test CA: {}",
        text(&none)
    );

    // The URL's own sslrootcert wins over the file.
    let own = format!("{url}&sslrootcert={ca_file}");
    let ok = migrate(&own, Some(&other_file));
    assert!(ok.status.success(), "{}", text(&ok));
}
