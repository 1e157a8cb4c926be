//! Least privilege in Postgres (migration `V500__component_roles.sql`,
//! `chatpipe-admin db-user create`, docs/security-db-roles.md), on a real
//! server:
//! - the real ingest, processor and api, each connected as its own login,
//!   run a conversation end to end (reply stored and served, CLOSE, a
//!   rejection);
//! - every (role, table, operation) is tried as each component's login and
//!   is refused (`42501 insufficient_privilege`) exactly where [`GRANTS`]
//!   says so; [`GRANTS`] must name every table of the schema;
//! - no login can change the schema or assume another component's role;
//! - `db-user create` stores a SCRAM verifier of the password it read, and
//!   updates it; it refuses to reuse a login of another component;
//! - ingest and processor `--migrate` with a component login fail with a
//!   message naming `chatpipe-admin migrate`.
//!
//! Build the binaries first: `cargo build -p chatpipe-ingest
//! -p chatpipe-processor -p chatpipe-api -p chatpipe-tools --bins`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use chatpipe_tests::{
    binary, close_conversation, expected_reply, new_conversation, new_message, spawn_tied, TestDb,
};
use common::{event_time, outbound, Options, Pipeline};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// The components with a group role of their own.
const COMPONENTS: [&str; 5] = ["ingest", "processor", "api", "delivery", "admin"];

/// What each component's login may do on one table: letters of `S`
/// (SELECT), `I` (INSERT), `U` (UPDATE), `D` (DELETE). TRUNCATE: nobody.
struct Grant {
    table: &'static str,
    ingest: &'static str,
    processor: &'static str,
    api: &'static str,
    delivery: &'static str,
    admin: &'static str,
    /// A statement inserting one valid row (so an allowed INSERT succeeds).
    insert: &'static str,
    /// A column an UPDATE sets (to DEFAULT, on no row).
    column: &'static str,
}

/// Every table of the schema and who may do what on it: the one list the
/// test derives its (role, table, operation, allowed) cases from.
const GRANTS: &[Grant] = &[
    Grant {
        table: "conversations",
        ingest: "SIU",
        processor: "SIU",
        api: "S",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO conversations (id, created_at, updated_at) \
                 VALUES (gen_random_uuid(), now(), now())",
        column: "closed_at",
    },
    Grant {
        table: "messages",
        ingest: "S",
        processor: "SIU",
        // Agents' messages (V600).
        api: "SI",
        delivery: "S",
        admin: "SIUD",
        insert: "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival) \
                 VALUES (gen_random_uuid(), gen_random_uuid(), 'INBOUND', 'x', now(), now())",
        column: "reply_id",
    },
    Grant {
        table: "rejected_events",
        ingest: "",
        processor: "SIU",
        api: "S",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO rejected_events (event_type, reason, event, source_topic, \
                 source_partition, source_offset) \
                 VALUES ('NEW_MESSAGE', 'probe', '{}', 'probe', 0, (random() * 1e9)::int8)",
        column: "detail",
    },
    Grant {
        table: "processor_partitions",
        ingest: "",
        processor: "SIU",
        api: "",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO processor_partitions (topic, partition) \
                 VALUES (gen_random_uuid()::text, 0)",
        column: "owner",
    },
    Grant {
        table: "processor_conversation_log",
        ingest: "",
        processor: "SIU",
        api: "",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO processor_conversation_log \
                 (topic, conversation_id, partition, created_offset, created_arrival_ms) \
                 VALUES ('probe', gen_random_uuid(), 0, 0, 0)",
        column: "closed_offset",
    },
    Grant {
        table: "ingest_inflight",
        ingest: "SIUD",
        processor: "S",
        api: "",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO ingest_inflight (replica) VALUES (gen_random_uuid()::text)",
        column: "oldest_inflight_ms",
    },
    Grant {
        table: "partition_resets",
        ingest: "",
        processor: "I",
        api: "",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO partition_resets (topic, partition, kind, stored_resume, \
                 stored_processed, log_start, log_end, new_offset, skipped_from, skipped_to) \
                 VALUES ('probe', 0, 'beyond_log_end', 0, 0, 0, 0, 0, 0, 0)",
        column: "detail",
    },
    // V510: the api's own tables (agents and their sessions).
    Grant {
        table: "agents",
        ingest: "",
        processor: "",
        api: "SIUD",
        delivery: "",
        admin: "",
        insert: "INSERT INTO agents (id, username, password_hash, role) \
                 VALUES (gen_random_uuid(), gen_random_uuid()::text, 'x', 'agent')",
        column: "display_name",
    },
    Grant {
        table: "agent_refresh_tokens",
        ingest: "",
        processor: "",
        api: "SIUD",
        delivery: "",
        admin: "",
        // No agent has this id: an allowed INSERT ends in a foreign-key
        // violation (class 23), past the privilege check.
        insert: "INSERT INTO agent_refresh_tokens (token_hash, agent_id, expires_at) \
                 VALUES (sha256(gen_random_uuid()::text::bytea), gen_random_uuid(), now())",
        column: "revoked_at",
    },
    // refinery's migration history: the owner's only.
    Grant {
        table: "refinery_schema_history",
        ingest: "",
        processor: "",
        api: "",
        delivery: "",
        admin: "",
        insert: "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                 VALUES (-1, 'probe', 'probe', 'probe')",
        column: "checksum",
    },
    Grant {
        table: "contacts",
        ingest: "SIU",
        processor: "",
        api: "S",
        delivery: "S",
        admin: "SIUD",
        insert: "INSERT INTO contacts (id, channel, provider_user_id) \
                 VALUES (gen_random_uuid(), 'probe', gen_random_uuid()::text)",
        column: "display_name",
    },
    Grant {
        table: "channel_conversations",
        ingest: "SIU",
        processor: "S",
        api: "S",
        delivery: "S",
        admin: "SIUD",
        insert: "INSERT INTO channel_conversations (conversation_id, channel, contact_id) \
                 VALUES (gen_random_uuid(), 'probe', NULL)",
        column: "channel",
    },
    Grant {
        table: "message_meta",
        ingest: "SIU",
        processor: "SI",
        api: "SI",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO message_meta (message_id, conversation_id) \
                 VALUES (gen_random_uuid(), gen_random_uuid())",
        column: "media_id",
    },
    Grant {
        table: "deliveries",
        ingest: "SU",
        processor: "SI",
        api: "SIU",
        delivery: "SU",
        admin: "SIUD",
        insert: "INSERT INTO deliveries (message_id, conversation_id, channel, contact_id) \
                 VALUES (gen_random_uuid(), gen_random_uuid(), 'probe', gen_random_uuid())",
        column: "error_reason",
    },
    Grant {
        table: "delivery_events",
        ingest: "I",
        processor: "SI",
        api: "SI",
        delivery: "SI",
        admin: "SIUD",
        insert: "INSERT INTO delivery_events (delivery_id, event, source) VALUES (-1, 'probe', 'probe')",
        column: "reason",
    },
    Grant {
        table: "delivery_receipts",
        ingest: "SI",
        processor: "",
        api: "S",
        delivery: "S",
        admin: "SIUD",
        insert: "INSERT INTO delivery_receipts (channel, provider_message_id, status, at) \
                 VALUES ('probe', gen_random_uuid()::text, 'sent', now())",
        column: "reason",
    },
    Grant {
        table: "message_idempotency_keys",
        ingest: "",
        processor: "",
        api: "SI",
        delivery: "",
        admin: "SIUD",
        insert: "INSERT INTO message_idempotency_keys \
                 (agent_id, idempotency_key, conversation_id, request_digest, message_id) \
                 VALUES (gen_random_uuid(), gen_random_uuid()::text, gen_random_uuid(), '\\x00', \
                 gen_random_uuid())",
        column: "idempotency_key",
    },
];

impl Grant {
    fn allowed(&self, component: &str) -> &'static str {
        match component {
            "ingest" => self.ingest,
            "processor" => self.processor,
            "api" => self.api,
            "delivery" => self.delivery,
            "admin" => self.admin,
            other => panic!("no component {other}"),
        }
    }
}

/// One operation on a table.
#[derive(Debug, Clone, Copy)]
enum Op {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    const ALL: [Op; 5] = [Op::Select, Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    fn letter(self) -> char {
        match self {
            Op::Select => 'S',
            Op::Insert => 'I',
            Op::Update => 'U',
            Op::Delete => 'D',
            Op::Truncate => 'T',
        }
    }

    fn sql(self, g: &Grant) -> String {
        match self {
            Op::Select => format!("SELECT count(*) FROM {}", g.table),
            Op::Insert => g.insert.to_owned(),
            Op::Update => format!("UPDATE {} SET {} = DEFAULT WHERE false", g.table, g.column),
            Op::Delete => format!("DELETE FROM {} WHERE false", g.table),
            Op::Truncate => format!("TRUNCATE {} CASCADE", g.table),
        }
    }
}

/// One case: (role, table, operation, allowed).
struct Case {
    component: &'static str,
    grant: &'static Grant,
    op: Op,
    allowed: bool,
}

/// Every (component, table, operation) with whether it is allowed.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for component in COMPONENTS {
        for grant in GRANTS {
            for op in Op::ALL {
                out.push(Case {
                    component,
                    grant,
                    op,
                    allowed: grant.allowed(component).contains(op.letter()),
                });
            }
        }
    }
    out
}

/// Schema changes no component login may make (each valid for the owner).
const DDL: &[&str] = &[
    "CREATE TABLE cp_probe (x int)",
    "CREATE VIEW cp_probe_v AS SELECT 1 AS x",
    "CREATE FUNCTION cp_probe_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA cp_probe_s",
    "CREATE INDEX cp_probe_i ON conversations (updated_at)",
    "ALTER TABLE conversations ADD COLUMN cp_probe int",
    "DROP TABLE messages",
    "DROP TABLE agents CASCADE",
];

/// What a statement met.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Ran (or failed on a constraint, past the privilege check).
    Allowed,
    /// `42501 insufficient_privilege`.
    Refused,
    /// Anything else: the probe itself is wrong.
    Other(String),
}

/// Runs `sql` in a transaction that is rolled back.
async fn attempt(client: &mut Client, sql: &str) -> Outcome {
    let tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return Outcome::Other(format!("begin: {e}")),
    };
    let r = tx.batch_execute(sql).await;
    let _ = tx.rollback().await;
    match r {
        Ok(()) => Outcome::Allowed,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Outcome::Refused,
        Err(e) if e.code().is_some_and(|c| c.code().starts_with("23")) => Outcome::Allowed,
        Err(e) => Outcome::Other(format!("{e:?}")),
    }
}

/// `url` with its user and password replaced.
fn with_login(url: &str, user: &str, password: &str) -> String {
    let scheme_end = url.find("://").expect("URL form") + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end]
        .rfind('@')
        .map(|at| at + 1)
        .unwrap_or(0);
    format!(
        "{}{user}:{password}@{}",
        &url[..scheme_end],
        &rest[host_start..]
    )
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting as {}: {e}", chatpipe_core::db::redact(url)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// What `chatpipe-admin` printed and how it ended.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `chatpipe-admin db-user create` against `owner_url`, the password on stdin.
fn db_user_create(owner_url: &str, component: &str, username: &str, password: &str) -> Ran {
    let mut child = Command::new(binary("chatpipe-admin"))
        .args([
            "db-user",
            "create",
            "--component",
            component,
            "--username",
            username,
            "--password-stdin",
        ])
        .env("CHATPIPE_POSTGRES_URL", owner_url)
        .env("RUST_BACKTRACE", "0")
        .env("CHATPIPE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chatpipe-admin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("writing the password");
    let out = child.wait_with_output().expect("chatpipe-admin");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One login per component on a fresh migrated database; the logins are
/// dropped on drop (after their database's CONNECT grant is revoked).
struct Logins {
    db: TestDb,
    prefix: String,
    password: String,
}

impl Logins {
    async fn create() -> Logins {
        let db = TestDb::create().await.expect("test database");
        let prefix = format!("cp_test_{}", &Uuid::new_v4().simple().to_string()[..10]);
        let l = Logins {
            db,
            prefix,
            password: format!("pw-{}", Uuid::new_v4().simple()),
        };
        for c in COMPONENTS {
            let r = db_user_create(&l.db.url, c, &l.user(c), &l.password);
            assert!(r.ok, "db-user create {c} failed: {}", r.stderr);
            assert!(r.stdout.contains("created"), "{}", r.stdout);
            assert!(
                !r.stdout.contains(&l.password) && !r.stderr.contains(&l.password),
                "the password was printed"
            );
        }
        l
    }

    fn user(&self, component: &str) -> String {
        format!("{}_{component}", self.prefix)
    }

    fn url(&self, component: &str) -> String {
        with_login(&self.db.url, &self.user(component), &self.password)
    }
}

impl Drop for Logins {
    fn drop(&mut self) {
        let owner = self.db.url.clone();
        let db = self.db.name.clone();
        let users: Vec<String> = COMPONENTS.iter().map(|c| self.user(c)).collect();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok((c, conn)) = tokio_postgres::connect(&owner, NoTls).await else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                for u in users {
                    let _ = c
                        .batch_execute(&format!(
                            "REVOKE CONNECT ON DATABASE \"{db}\" FROM \"{u}\"; DROP ROLE IF EXISTS \"{u}\""
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn every_role_is_refused_what_it_does_not_need() {
    let logins = Logins::create().await;
    let mut owner = connect(&logins.db.url).await;

    // GRANTS names exactly the tables of the schema.
    let tables: BTreeSet<String> = owner
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let listed: BTreeSet<String> = GRANTS.iter().map(|g| g.table.to_owned()).collect();
    assert_eq!(
        tables, listed,
        "every table needs an entry in GRANTS (and no entry may name a missing table)"
    );

    // Every probe is valid: the owner may run all of them.
    for g in GRANTS {
        for op in Op::ALL {
            let sql = op.sql(g);
            assert_eq!(attempt(&mut owner, &sql).await, Outcome::Allowed, "{sql}");
        }
    }
    for sql in DDL {
        assert_eq!(attempt(&mut owner, sql).await, Outcome::Allowed, "{sql}");
    }

    let mut wrong = Vec::new();
    for component in COMPONENTS {
        let mut client = connect(&logins.url(component)).await;
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("current_user")
            .get(0);
        assert_eq!(user, logins.user(component));
        for case in cases().iter().filter(|c| c.component == component) {
            let sql = case.op.sql(case.grant);
            let got = attempt(&mut client, &sql).await;
            let want = if case.allowed {
                Outcome::Allowed
            } else {
                Outcome::Refused
            };
            if got != want {
                wrong.push(format!(
                    "{component} {:?} {}: expected {want:?}, got {got:?}",
                    case.op, case.grant.table
                ));
            }
        }
        for sql in DDL {
            let got = attempt(&mut client, sql).await;
            if got != Outcome::Refused {
                wrong.push(format!(
                    "{component} `{sql}`: expected Refused, got {got:?}"
                ));
            }
        }
        // A login holds its own group role and no other.
        for other in COMPONENTS
            .iter()
            .map(|c| format!("chatpipe_{c}"))
            .chain(["chatpipe_api_readonly".to_owned()])
        {
            let got = attempt(&mut client, &format!("SET ROLE {other}")).await;
            let want = if other == format!("chatpipe_{component}") {
                Outcome::Allowed
            } else {
                Outcome::Refused
            };
            if got != want {
                wrong.push(format!(
                    "{component} SET ROLE {other}: expected {want:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong outcome(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // V300's role still works as before (reads, never writes).
    let mut readonly = connect(&logins.db.url).await;
    readonly
        .batch_execute("SET ROLE chatpipe_api_readonly")
        .await
        .expect("SET ROLE chatpipe_api_readonly");
    for (sql, want) in [
        ("SELECT count(*) FROM conversations", Outcome::Allowed),
        ("SELECT count(*) FROM partition_resets", Outcome::Allowed),
        (GRANTS[0].insert, Outcome::Refused),
        ("DELETE FROM messages WHERE false", Outcome::Refused),
    ] {
        assert_eq!(attempt(&mut readonly, sql).await, want, "{sql}");
    }
}

#[tokio::test]
async fn the_pipeline_runs_with_one_login_per_component() {
    let logins = Logins::create().await;
    let (ingest_url, processor_url, api_url) = (
        logins.url("ingest"),
        logins.url("processor"),
        logins.url("api"),
    );
    let mut opts = Options::short();
    opts.private_broker = true;
    // These URLs come after the harness's own (its owner URL of another
    // database, which stays unused): the later value of a variable wins.
    opts.ingest_env = vec![("CHATPIPE_POSTGRES_URL".into(), ingest_url)];
    opts.processor_env = vec![("CHATPIPE_POSTGRES_URL".into(), processor_url)];
    opts.api_env = vec![
        ("CHATPIPE_POSTGRES_URL".into(), api_url),
        // Its login's own grants (chatpipe_api); it may not assume V300's role.
        ("CHATPIPE_API_DB_ROLE".into(), String::new()),
    ];
    let p = Pipeline::start(opts).await;

    let conv = Uuid::new_v4();
    p.post_ok(&new_conversation(conv, event_time(0)), 201).await;
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    for (i, id) in ids.iter().enumerate() {
        p.post_ok(
            &new_message(*id, conv, "hello", event_time(1 + i as i64)),
            202,
        )
        .await;
    }
    // The processor wrote the messages and the reply; the api serves them.
    let v = p.wait_replies(conv, 1).await;
    assert_eq!(outbound(&v)[0]["content"], expected_reply(&ids), "{v}");
    p.post_ok(&close_conversation(conv, event_time(10)), 200)
        .await;
    p.wait_conversation(conv, "CLOSED", |v| v["status"] == "CLOSED")
        .await;
    // Ingest reads the closed status: a later message is refused.
    p.post_ok(
        &new_message(Uuid::new_v4(), conv, "late", event_time(11)),
        400,
    )
    .await;
    // A message of a conversation that never opens: the processor records
    // the rejection (its sequence), the api lists it.
    let orphan_conv = Uuid::new_v4();
    let orphan = Uuid::new_v4();
    p.post_ok(
        &new_message(orphan, orphan_conv, "lost", event_time(12)),
        202,
    )
    .await;
    p.wait_rejected(orphan_conv, orphan).await;

    // Each service really was connected as its own login.
    let owner = connect(&logins.db.url).await;
    let owner_user: String = owner
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    let users: BTreeSet<String> = owner
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity
              WHERE datname = $1 AND usename IS NOT NULL",
            &[&logins.db.name],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: BTreeSet<String> = ["ingest", "processor", "api"]
        .iter()
        .map(|c| logins.user(c))
        .chain([owner_user])
        .collect();
    assert_eq!(users, expected, "sessions on the pipeline's database");
}

/// SCRAM-SHA-256 verifier `v` (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`)
/// matches `password` (ASCII, so SASLprep leaves it as it is).
fn verifier_matches(v: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = v.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iter, salt)), Some((stored, server))) =
        (params.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let iterations: u32 = iter.parse().expect("iterations");
    let salt = b64.decode(salt).expect("salt");
    let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key size");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    };
    // Hi(password, salt, i) of RFC 5802 (PBKDF2 with one block).
    let mut u = hmac(
        password.as_bytes(),
        &[salt.as_slice(), &1u32.to_be_bytes()].concat(),
    );
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(&u) {
            *s ^= x;
        }
    }
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key).to_vec();
    let server_key = hmac(&salted, b"Server Key");
    b64.encode(stored_key) == stored && b64.encode(server_key) == server
}

/// The stored password verifier of login `user`, after checking that it
/// is a plain login that inherits its group's grants.
async fn stored_verifier(owner: &Client, user: &str) -> String {
    let row = owner
        .query_one(
            "SELECT rolpassword, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolinherit
               FROM pg_authid WHERE rolname = $1",
            &[&user],
        )
        .await
        .expect("pg_authid");
    assert!(row.get::<_, bool>(1), "{user} cannot log in");
    assert!(!row.get::<_, bool>(2) && !row.get::<_, bool>(3) && !row.get::<_, bool>(4));
    assert!(
        row.get::<_, bool>(5),
        "{user} does not inherit its group's grants"
    );
    row.get(0)
}

#[tokio::test]
async fn db_user_create_stores_a_verifier_and_updates_it() {
    let logins = Logins::create().await;
    let owner = connect(&logins.db.url).await;
    let owner_user: String = owner
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    let ingest = logins.user("ingest");
    let first = stored_verifier(&owner, &ingest).await;
    assert!(verifier_matches(&first, &logins.password), "{first}");
    assert!(!verifier_matches(&first, "another password"));

    // Again with a new password: the same login, updated.
    let new_password = format!("new-{}", Uuid::new_v4().simple());
    let r = db_user_create(&logins.db.url, "ingest", &ingest, &new_password);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("updated"), "{}", r.stdout);
    let second = stored_verifier(&owner, &ingest).await;
    assert!(verifier_matches(&second, &new_password), "{second}");
    assert!(!verifier_matches(&second, &logins.password));

    // A login of one component is not reused for another, the owner is
    // never turned into a component login, and nothing is printed of the
    // password.
    for (component, user, needle) in [
        ("api", ingest.clone(), "already a member of chatpipe_ingest"),
        ("api", owner_user, "the role this command connects as"),
        ("processor", "pg_probe".to_owned(), "reserved"),
    ] {
        let r = db_user_create(&logins.db.url, component, &user, "p4ss-secret-word");
        assert!(!r.ok, "{component} {user}: {}", r.stdout);
        assert!(
            r.stderr.contains(needle),
            "{component} {user}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("p4ss-secret-word"));
    }
    let memberships: Vec<String> = owner
        .query(
            "SELECT g.rolname::text FROM pg_auth_members m
               JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
              WHERE u.rolname = $1",
            &[&ingest],
        )
        .await
        .expect("memberships")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(memberships, ["chatpipe_ingest"]);
}

#[tokio::test]
async fn migrate_at_start_with_a_component_login_names_the_owner_migration() {
    let logins = Logins::create().await;
    for (binary_name, component) in [
        ("chatpipe-ingest", "ingest"),
        ("chatpipe-processor", "processor"),
    ] {
        let log = std::env::temp_dir().join(format!("cp-migrate-{}.log", Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary(binary_name));
        cmd.env("CHATPIPE_POSTGRES_URL", logins.url(component))
            .env("CHATPIPE_MIGRATE", "true")
            .env("CHATPIPE_LISTEN", "127.0.0.1:0")
            .env("CHATPIPE_KAFKA_BROKERS", "127.0.0.1:1")
            .env("CHATPIPE_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let mut child = spawn_tied(cmd).expect("spawning");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{binary_name} --migrate as {component} kept running");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        assert!(!status.success(), "{binary_name}: {stderr}");
        assert!(
            stderr.contains("run migrations with the owner's URL (chatpipe-admin migrate)"),
            "{binary_name}: {stderr}"
        );
        assert!(
            stderr.contains("permission denied"),
            "{binary_name}: {stderr}"
        );
        assert!(
            !stderr.contains(&logins.password),
            "{binary_name} printed the password"
        );
    }
}
