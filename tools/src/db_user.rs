//! `chatpipe-admin db-user create`: a Postgres LOGIN role for one component,
//! member of that component's group role (migration
//! `V500__component_roles.sql`), so each component can connect with its own
//! least-privileged URL (see `docs/security-db-roles.md`).
//!
//! The password is read from stdin and hashed here (SCRAM-SHA-256, as
//! `psql`'s `\password` does), so neither the SQL sent nor the server's
//! statement log ever holds it in clear text. The decisions (which names
//! are acceptable, whether an existing role may be reused, the statements)
//! are pure functions, tested below; [`run`] is the I/O around them.

use std::io::Read;

use anyhow::{bail, Context};
use chatpipe_core::config::PostgresArgs;
use clap::{Subcommand, ValueEnum};
use tokio_postgres::error::SqlState;

/// `chatpipe-admin db-user …`.
#[derive(Subcommand)]
pub enum DbUserCommand {
    /// Create a LOGIN role for a component (member of its group role), or
    /// set the password of that existing login. Connects with the owner's
    /// URL (`CHATPIPE_POSTGRES_URL`), which needs CREATEROLE (and, on
    /// Postgres 16+, ADMIN OPTION on the group role) or superuser.
    Create(CreateArgs),
}

/// Arguments of `db-user create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// The owner's (migrator's) connection; the login is made on its
    /// server and may connect to its database.
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// The component the login is for.
    #[arg(long, value_enum)]
    pub component: Component,
    /// Name of the LOGIN role (lowercase letters, digits, `_`, `-`, `.`;
    /// at most 63 bytes; not starting with `pg_`).
    #[arg(long)]
    pub username: String,
    /// Read the password from stdin (one line; a trailing newline is
    /// dropped). Required: passwords are never taken from the command line.
    #[arg(long, required = true)]
    pub password_stdin: bool,
}

/// A component with a group role of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// `chatpipe-ingest` (role `chatpipe_ingest`).
    Ingest,
    /// `chatpipe-processor` (role `chatpipe_processor`).
    Processor,
    /// `chatpipe-api` (role `chatpipe_api`).
    Api,
    /// `chatpipe-delivery` (role `chatpipe_delivery`, migration V600).
    Delivery,
    /// People administering the data (role `chatpipe_admin`: every row of
    /// every table, no schema changes).
    Admin,
}

impl Component {
    /// Every component, in a fixed order.
    pub const ALL: [Component; 5] = [
        Component::Ingest,
        Component::Processor,
        Component::Api,
        Component::Delivery,
        Component::Admin,
    ];

    /// The NOLOGIN group role migration V500 (V600 for delivery) creates
    /// for it.
    pub fn group_role(self) -> &'static str {
        match self {
            Component::Ingest => "chatpipe_ingest",
            Component::Processor => "chatpipe_processor",
            Component::Api => "chatpipe_api",
            Component::Delivery => "chatpipe_delivery",
            Component::Admin => "chatpipe_admin",
        }
    }
}

/// Every chatpipe group role (a login must not be named like one).
const RESERVED: [&str; 6] = [
    "chatpipe_ingest",
    "chatpipe_processor",
    "chatpipe_api",
    "chatpipe_delivery",
    "chatpipe_admin",
    "chatpipe_api_readonly",
];

/// Checks a login name: 1–63 bytes of `a-z`, `0-9`, `_`, `-`, `.`,
/// starting with a letter or `_`, not `pg_…` (reserved by Postgres), not
/// a chatpipe group role. Such a name needs no escaping in a URL either.
pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("--username must be 1 to 63 characters long".into());
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.');
    if !first_ok || !rest_ok {
        return Err(format!(
            "--username {name:?}: use lowercase letters, digits, '_', '-' and '.', starting with a letter or '_'"
        ));
    }
    if name.starts_with("pg_") {
        return Err(format!(
            "--username {name:?}: names starting with pg_ are reserved by Postgres"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "--username {name:?} is a chatpipe group role; choose a login name of its own"
        ));
    }
    Ok(())
}

/// The password in what was read from stdin: one trailing `\n` or `\r\n`
/// is dropped; empty, multi-line or NUL-holding input is refused. Errors
/// never quote the input.
pub fn password_from_input(input: &str) -> Result<&str, String> {
    let p = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(input);
    if p.is_empty() {
        return Err("no password on stdin (--password-stdin reads one line)".into());
    }
    if p.contains(['\n', '\r']) {
        return Err("the password on stdin spans several lines; give one line".into());
    }
    if p.contains('\0') {
        return Err("the password on stdin holds a NUL byte, which Postgres cannot use".into());
    }
    Ok(p)
}

/// `s` as a double-quoted SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as a single-quoted SQL string literal (standard_conforming_strings).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// What the server knows about a role of the requested name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingRole {
    /// SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS: the names
    /// of the attributes it holds.
    pub powers: Vec<String>,
    /// It owns the database or a relation in it.
    pub owns_objects: bool,
    /// The chatpipe group roles it is a member of.
    pub groups: Vec<String>,
}

/// What `db-user create` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `CREATE ROLE … LOGIN`.
    Create,
    /// The login exists: set its password (and make sure of its grants).
    Update,
}

/// Decides whether the login can be created or updated. An existing role
/// is only reused when it is a plain login: not the connected user, no
/// administrative attribute, owner of nothing here, and member of no other
/// component's group (one login per component).
pub fn decide(
    existing: Option<&ExistingRole>,
    component: Component,
    username: &str,
    current_user: &str,
) -> Result<Action, String> {
    if username == current_user {
        return Err(format!(
            "{username:?} is the role this command connects as (the owner); give the component a login of its own"
        ));
    }
    let Some(e) = existing else {
        return Ok(Action::Create);
    };
    if !e.powers.is_empty() {
        return Err(format!(
            "role {username:?} exists with {}; a component's login must be a plain LOGIN role: choose another name",
            e.powers.join(", ")
        ));
    }
    if e.owns_objects {
        return Err(format!(
            "role {username:?} owns this database or tables in it (it could change the schema); choose another name"
        ));
    }
    let others: Vec<&str> = e
        .groups
        .iter()
        .map(String::as_str)
        .filter(|g| *g != component.group_role())
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "role {username:?} is already a member of {}; one login per component: choose another name or REVOKE that membership first",
            others.join(", ")
        ));
    }
    Ok(Action::Update)
}

/// The statements (one transaction) that create or update the login with
/// SCRAM `verifier` and make it a member of the component's group (unless
/// it is one already), allowed to connect to `database`.
pub fn statements(
    action: Action,
    component: Component,
    username: &str,
    verifier: &str,
    database: &str,
    member: bool,
) -> Vec<String> {
    let user = quote_ident(username);
    let set = match action {
        Action::Create => "CREATE ROLE",
        Action::Update => "ALTER ROLE",
    };
    let mut sql = vec![format!(
        "{set} {user} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD {}",
        quote_literal(verifier)
    )];
    if !member {
        sql.push(format!(
            "GRANT {} TO {user}",
            quote_ident(component.group_role())
        ));
    }
    sql.push(format!(
        "GRANT CONNECT ON DATABASE {} TO {user}",
        quote_ident(database)
    ));
    sql
}

/// The component's URL: `owner_url` with its user and password replaced by
/// `username` and a `PASSWORD` placeholder (`None` for a key=value
/// connection string). Never holds the owner's password.
pub fn login_url(owner_url: &str, username: &str) -> Option<String> {
    let scheme_end = owner_url.find("://")? + 3;
    let rest = &owner_url[scheme_end..];
    // `@` only counts before the path or query.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end]
        .rfind('@')
        .map(|at| at + 1)
        .unwrap_or(0);
    // The owner's password never reaches the output, in its user info
    // (dropped above) or as a `password` query parameter (dropped here).
    let tail = &rest[host_start..];
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| {
                    !kv.split('=')
                        .next()
                        .is_some_and(|k| k.eq_ignore_ascii_case("password"))
                })
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
    };
    Some(format!(
        "{}{username}:PASSWORD@{tail}",
        &owner_url[..scheme_end],
    ))
}

/// Runs `db-user …`.
pub async fn run(command: DbUserCommand) -> anyhow::Result<()> {
    match command {
        DbUserCommand::Create(args) => {
            if !args.password_stdin {
                bail!("give the password on stdin with --password-stdin");
            }
            validate_username(&args.username).map_err(anyhow::Error::msg)?;
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the password from stdin")?;
            let password = password_from_input(&input).map_err(anyhow::Error::msg)?;
            let outcome = create(
                &args.postgres.url(),
                args.component,
                &args.username,
                password,
            )
            .await?;
            let what = match outcome {
                Action::Create => "created",
                Action::Update => "updated (new password)",
            };
            println!(
                "login role {} {what}: member of {}",
                args.username,
                args.component.group_role()
            );
            if let Some(url) = login_url(&args.postgres.postgres_url, &args.username) {
                println!("its URL: {url} (PASSWORD percent-encoded)");
            }
        }
    }
    Ok(())
}

/// Creates or updates login `username` of `component` on the server of
/// `owner_url`; returns what it did.
pub async fn create(
    owner_url: &str,
    component: Component,
    username: &str,
    password: &str,
) -> anyhow::Result<Action> {
    validate_username(username).map_err(anyhow::Error::msg)?;
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let mut client = chatpipe_core::db::connect(owner_url).await?;
    let group = component.group_role();
    let group_exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&group])
        .await
        .context("looking up the group role")?
        .is_some();
    if !group_exists {
        bail!("group role {group} does not exist: apply the migrations first (chatpipe-admin migrate)");
    }
    // A concurrent run may create the same role between the look-up and
    // CREATE ROLE: decide again once.
    let mut last_error = None;
    for _ in 0..2 {
        let tx = client.transaction().await.context("begin")?;
        let row = tx
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .context("reading the connection's user and database")?;
        let (current_user, database): (String, String) = (row.get(0), row.get(1));
        let existing = existing_role(&tx, username).await?;
        let action = decide(existing.as_ref(), component, username, &current_user)
            .map_err(anyhow::Error::msg)?;
        let mut failed = None;
        let member = existing
            .as_ref()
            .is_some_and(|e| e.groups.iter().any(|g| g == group));
        for sql in statements(action, component, username, &verifier, &database, member) {
            if let Err(e) = tx.batch_execute(&sql).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                tx.commit().await.context("committing the login role")?;
                return Ok(action);
            }
            Some(e)
                if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
            {
                // Rolled back on drop; try again as an update.
                last_error = Some(e);
            }
            // The statement (it holds the password's hash) is not quoted.
            Some(e) => {
                let hint = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                    " (the owner's role needs CREATEROLE and, on Postgres 16+, ADMIN OPTION on the group role; or use a superuser)"
                } else {
                    ""
                };
                return Err(e).with_context(|| {
                    format!("making login role {username} a member of {group}{hint}")
                });
            }
        }
    }
    Err(last_error
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("role {username} was created concurrently twice")))
    .with_context(|| format!("creating login role {username}"))
}

async fn existing_role(
    tx: &tokio_postgres::Transaction<'_>,
    username: &str,
) -> anyhow::Result<Option<ExistingRole>> {
    let Some(row) = tx
        .query_opt(
            "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls,
                    EXISTS (SELECT 1 FROM pg_database d
                             WHERE d.datname = current_database() AND d.datdba = r.oid)
                    OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relowner = r.oid
                                 AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace
                                                             WHERE nspname IN ('pg_catalog', 'information_schema'))),
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                           WHERE m.member = r.oid AND g.rolname = ANY($2))
               FROM pg_roles r WHERE r.rolname = $1",
            &[&username, &RESERVED[..4].to_vec()],
        )
        .await
        .context("looking up the login role")?
    else {
        return Ok(None);
    };
    let names = [
        "SUPERUSER",
        "CREATEROLE",
        "CREATEDB",
        "REPLICATION",
        "BYPASSRLS",
    ];
    let mut powers = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if row
            .try_get::<_, bool>(i)
            .context("reading role attributes")?
        {
            powers.push((*name).to_owned());
        }
    }
    Ok(Some(ExistingRole {
        powers,
        owns_objects: row.try_get(5).context("reading role ownership")?,
        groups: row.try_get(6).context("reading role memberships")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_roles_are_the_migrations() {
        let roles: Vec<&str> = Component::ALL.iter().map(|c| c.group_role()).collect();
        assert_eq!(roles, RESERVED[..5]);
        let v500 = include_str!("../../migrations/V500__component_roles.sql");
        let v600 = include_str!("../../migrations/V600__channels.sql");
        for r in roles {
            assert!(
                v500.contains(&format!("'{r}'"))
                    || v600.contains(&format!("CREATE ROLE {r} NOLOGIN")),
                "{r} is not created by V500 or V600"
            );
        }
    }

    #[test]
    fn usernames() {
        for ok in ["ingest", "cp_ingest-1", "_x", "a.b", &"a".repeat(63)] {
            assert_eq!(validate_username(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Ingest",
            "1ingest",
            "in gest",
            "in\"gest",
            "in'gest",
            "ingest;drop",
            "pg_ingest",
            "chatpipe_ingest",
            "chatpipe_api_readonly",
            &"a".repeat(64),
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_from_stdin() {
        assert_eq!(password_from_input("s3cret\n"), Ok("s3cret"));
        assert_eq!(password_from_input("s3cret\r\n"), Ok("s3cret"));
        assert_eq!(password_from_input("s3cret"), Ok("s3cret"));
        assert_eq!(password_from_input(" sp ace \n"), Ok(" sp ace "));
        for bad in ["", "\n", "a\nb\n", "a\rb", "a\0b"] {
            assert!(password_from_input(bad).is_err(), "{bad:?} accepted");
        }
        let e = password_from_input("secretpw\nsecond\n").expect_err("two lines");
        assert!(!e.contains("secretpw"), "{e}");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn new_names_are_created() {
        assert_eq!(
            decide(None, Component::Ingest, "ing", "postgres"),
            Ok(Action::Create)
        );
    }

    #[test]
    fn plain_logins_of_the_same_component_are_updated() {
        let e = ExistingRole {
            groups: vec!["chatpipe_api".into()],
            ..ExistingRole::default()
        };
        assert_eq!(
            decide(Some(&e), Component::Api, "api", "postgres"),
            Ok(Action::Update)
        );
        assert_eq!(
            decide(Some(&ExistingRole::default()), Component::Api, "api", "o"),
            Ok(Action::Update)
        );
    }

    #[test]
    fn powerful_or_shared_roles_are_refused() {
        let refused = |e: ExistingRole, user: &str, current: &str| {
            decide(Some(&e), Component::Ingest, user, current).expect_err(user)
        };
        let e = refused(
            ExistingRole {
                powers: vec!["SUPERUSER".into()],
                ..ExistingRole::default()
            },
            "root",
            "postgres",
        );
        assert!(e.contains("SUPERUSER"), "{e}");
        let e = refused(
            ExistingRole {
                owns_objects: true,
                ..ExistingRole::default()
            },
            "owner2",
            "postgres",
        );
        assert!(e.contains("owns"), "{e}");
        let e = refused(
            ExistingRole {
                groups: vec!["chatpipe_processor".into()],
                ..ExistingRole::default()
            },
            "worker",
            "postgres",
        );
        assert!(e.contains("chatpipe_processor"), "{e}");
        let e = decide(None, Component::Ingest, "postgres", "postgres").expect_err("self");
        assert!(e.contains("connects as"), "{e}");
    }

    #[test]
    fn statements_grant_the_group_only() {
        let s = statements(
            Action::Create,
            Component::Processor,
            "proc",
            "SCRAM-SHA-256$4096:c2FsdA==$a:b",
            "my db",
            false,
        );
        assert_eq!(s.len(), 3);
        assert!(s[0].starts_with("CREATE ROLE \"proc\" WITH LOGIN NOSUPERUSER"));
        assert!(s[0].ends_with("PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a:b'"));
        assert_eq!(s[1], "GRANT \"chatpipe_processor\" TO \"proc\"");
        assert_eq!(s[2], "GRANT CONNECT ON DATABASE \"my db\" TO \"proc\"");
        let u = statements(Action::Update, Component::Api, "a", "v", "d", true);
        assert!(u[0].starts_with("ALTER ROLE \"a\" WITH LOGIN"));
        assert_eq!(u.len(), 2, "{u:?}");
        assert!(u[1].starts_with("GRANT CONNECT"));
    }

    #[test]
    fn verifiers_hold_no_password() {
        let v = postgres_protocol::password::scram_sha_256(b"hunter2-secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("hunter2"));
        assert!(!v.contains('\''));
    }

    #[test]
    fn login_urls_drop_the_owner_credentials() {
        assert_eq!(
            login_url(
                "postgres://owner:s3cret@db.example:5432/chatpipe?sslmode=require",
                "ing"
            )
            .as_deref(),
            Some("postgres://ing:PASSWORD@db.example:5432/chatpipe?sslmode=require")
        );
        assert_eq!(
            login_url("postgresql://127.0.0.1/chatpipe", "api").as_deref(),
            Some("postgresql://api:PASSWORD@127.0.0.1/chatpipe")
        );
        assert_eq!(
            login_url("postgres://o:p@h/db?options=a@b", "x").as_deref(),
            Some("postgres://x:PASSWORD@h/db?options=a@b")
        );
        assert_eq!(
            login_url("postgres://o:p@h?options=a@b", "x").as_deref(),
            Some("postgres://x:PASSWORD@h?options=a@b")
        );
        assert_eq!(login_url("host=h user=owner password=s3cret", "x"), None);
        let shown = login_url("postgres://o@h/db?password=s3cret&sslmode=require", "x").unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "postgres://x:PASSWORD@h/db?sslmode=require");
    }
}
