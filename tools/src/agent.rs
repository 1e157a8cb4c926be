//! `chatpipe-admin agent create`: creates an api agent (typically the first
//! admin) directly in Postgres, with the api's own validation and Argon2id
//! hashing ([`chatpipe_api::agents`]). The password is read from standard
//! input (one line; the trailing newline is dropped), never from a flag,
//! so it does not land in shell history or `ps`.

use std::io::BufRead;

use anyhow::{bail, Context};
use chatpipe_api::agents::{self, AgentError, NewAgent};
use chatpipe_api::auth::Role;
use chatpipe_core::config::PostgresArgs;
use clap::{Subcommand, ValueEnum};

/// `chatpipe-admin agent …`.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Create an agent and print its id.
    Create(CreateArgs),
}

/// `chatpipe-admin agent create` arguments.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Postgres connection (the database must be migrated).
    #[command(flatten)]
    pub postgres: PostgresArgs,
    /// Sign-in name: 1–64 letters, digits, `.`, `_`, `-`, `@`; unique
    /// regardless of case.
    #[arg(long)]
    pub username: String,
    /// Role of the agent.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Optional name shown to people.
    #[arg(long)]
    pub display_name: Option<String>,
    /// Read the password (at least 8 characters) from standard input, one
    /// line. Required: passwords are never taken from the command line.
    #[arg(long)]
    pub password_stdin: bool,
}

/// An agent's role on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Manages agents, reads and answers conversations.
    Admin,
    /// Reads and answers conversations.
    Agent,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Agent => Role::Agent,
        }
    }
}

/// The password of one line of input: without its line ending (`\n` or
/// `\r\n`); nothing else is trimmed.
pub fn password_of_line(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// Runs an `agent` subcommand.
pub async fn run(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Create(args) => create(args).await,
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    if !args.password_stdin {
        bail!("pass --password-stdin and write the password to standard input");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = password_of_line(&line);
    // Judge the input before touching the database.
    agents::validate_username(&args.username)?;
    agents::validate_password(password)?;
    let url = &args.postgres.url();
    let client = chatpipe_core::db::connect(url)
        .await
        .with_context(|| format!("connecting to {}", chatpipe_core::db::redact(url)))?;
    if !agents::schema_present(&client).await? {
        bail!("the database has no agents table: run `chatpipe-admin migrate` first");
    }
    let agent = agents::create(
        &client,
        &NewAgent {
            username: &args.username,
            password,
            role: args.role.into(),
            display_name: args.display_name.as_deref(),
        },
    )
    .await
    .map_err(|e| match e {
        AgentError::UsernameTaken(u) => {
            anyhow::anyhow!("an agent named {u:?} (in any case) already exists")
        }
        other => anyhow::Error::new(other),
    })?;
    tracing::info!(agent_id = %agent.id, role = agent.role.as_str(), "agent created");
    println!("{}", agent.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_line_ending_is_dropped() {
        assert_eq!(password_of_line("secret pass\n"), "secret pass");
        assert_eq!(password_of_line("secret pass\r\n"), "secret pass");
        assert_eq!(password_of_line(" padded \n"), " padded ");
        assert_eq!(password_of_line("no newline"), "no newline");
        assert_eq!(password_of_line("\n"), "");
    }
}
