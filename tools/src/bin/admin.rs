//! `chatpipe-admin`: one-shot administration — create the database and apply
//! migrations (`migrate`), or ensure the Kafka topic exists (`ensure-topic`).
//! Both are safe to run from several processes at once.

use std::time::Duration;

use anyhow::{bail, Context};
use chatpipe_core::config::{parse_duration, KafkaArgs, LogArgs, PostgresArgs};
use chatpipe_core::kafka::TopicState;
use chatpipe_settings::common::KAFKA_ADMIN_TIMEOUT_ENV;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chatpipe-admin", version, about = "chatpipe administration")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// api agents (the people who read and answer conversations).
    Agent {
        #[command(subcommand)]
        command: chatpipe_tools::agent::AgentCommand,
    },
    /// Postgres logins of the components (least privilege; see
    /// docs/security-db-roles.md).
    DbUser {
        #[command(subcommand)]
        command: chatpipe_tools::db_user::DbUserCommand,
    },
    /// Create the database when missing and apply pending migrations.
    Migrate {
        #[command(flatten)]
        postgres: PostgresArgs,
    },
    /// Create the topic with its partition count when missing; fail when it
    /// exists with another count.
    EnsureTopic {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partition count of the topic (fixed at creation).
        #[arg(long, env = "CHATPIPE_KAFKA_PARTITIONS", default_value_t = 8)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, env = "CHATPIPE_KAFKA_REPLICATION", default_value_t = 1)]
        replication: i32,
        /// How long to wait for the broker.
        #[arg(long, env = KAFKA_ADMIN_TIMEOUT_ENV, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chatpipe_core::telemetry::init_tracing(&cli.log);
    match cli.command {
        Command::Agent { command } => chatpipe_tools::agent::run(command).await?,
        Command::DbUser { command } => chatpipe_tools::db_user::run(command).await?,
        Command::Migrate { postgres } => {
            let url = postgres.url();
            chatpipe_core::db::ensure_database(&url).await?;
            let applied = chatpipe_core::db::migrate(&url).await?;
            println!("migrations applied: {}", applied.len());
        }
        Command::EnsureTopic {
            kafka,
            partitions,
            replication,
            timeout,
        } => {
            if partitions < 1 {
                bail!("--partitions must be at least 1");
            }
            let connection = chatpipe_core::kafka::KafkaConnection::from_args(&kafka)
                .context("the Kafka connection settings")?;
            let state = chatpipe_core::kafka::ensure_topic(
                &connection,
                &kafka.kafka_topic,
                partitions,
                replication,
                timeout,
            )
            .await
            .with_context(|| format!("ensuring topic {}", kafka.kafka_topic))?;
            match state {
                TopicState::Created => println!("topic {} created with {partitions} partitions", kafka.kafka_topic),
                TopicState::Exists => println!("topic {} exists with {partitions} partitions", kafka.kafka_topic),
                TopicState::Mismatch { actual } => bail!(
                    "topic {} exists with {actual} partitions, not {partitions}; partitions cannot be changed",
                    kafka.kafka_topic
                ),
            }
        }
    }
    Ok(())
}
