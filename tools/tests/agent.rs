//! `chatpipe-admin agent create` end to end: the built binary against a
//! fresh database on the local Postgres.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use uuid::Uuid;

const ADMIN: &str = env!("CARGO_BIN_EXE_chatpipe-admin");
const PASSWORD: &str = "first admin pw";

fn agent_create(url: &str, username: &str, stdin: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(ADMIN)
        .args(["agent", "create", "--username", username, "--role", "admin"])
        .args(extra)
        .env("CHATPIPE_POSTGRES_URL", url)
        .env("CHATPIPE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn agent_create_bootstraps_the_first_admin() {
    let name = format!("cp_test_{}", Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    chatpipe_core::db::ensure_database(&url).await.unwrap();

    // Not migrated yet: a clear error.
    let out = agent_create(
        &url,
        "root",
        &format!("{PASSWORD}\n"),
        &["--password-stdin"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("chatpipe-admin migrate"),
        "{}",
        text(&out)
    );

    chatpipe_core::db::migrate(&url).await.unwrap();
    // Without --password-stdin nothing happens.
    let out = agent_create(&url, "root", &format!("{PASSWORD}\n"), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--password-stdin"), "{}", text(&out));

    let out = agent_create(
        &url,
        "root",
        &format!("{PASSWORD}\r\n"),
        &["--password-stdin", "--display-name", "Root"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let id: Uuid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(!text(&out).contains(PASSWORD));

    let pg = chatpipe_core::db::connect(&url).await.unwrap();
    let row = pg
        .query_one(
            "SELECT username, role, display_name, password_hash FROM agents WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "root");
    assert_eq!(row.get::<_, String>(1), "admin");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("Root"));
    let hash: String = row.get(3);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // The line ending is not part of the password.
    assert!(chatpipe_api::auth::password::verify_password(
        &hash, PASSWORD
    ));

    // A taken username (in any case) and a short password are refused.
    let out = agent_create(&url, "ROOT", "another password\n", &["--password-stdin"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = agent_create(&url, "other", "short\n", &["--password-stdin"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("password"), "{}", text(&out));
    assert!(!text(&out).contains("short\n"));
    let n: i64 = pg
        .query_one("SELECT count(*) FROM agents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    drop(pg);
    let admin = chatpipe_core::db::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}
