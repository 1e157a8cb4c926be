//! The settings of every chatpipe binary, defined once.
//!
//! Each binary's clap definition (flags, `env = "CHATPIPE_…"` names,
//! defaults) lives here, next to the settings struct a deployment fills
//! for it; the binary parses with the definition, the deployments (the
//! operator's ConfigMaps and pod env, local mode's process env) write the
//! struct with its `to_env()`, which takes every variable name from the
//! definition ([`env::EnvWriter`]). So no `CHATPIPE_*` name is spelled
//! twice, and `tests/round_trip.rs` parses what `to_env()` writes with
//! the binary's own parser, for every setting.
//!
//! The crate depends on clap, humantime and serde(_json) only, so the plan (and both
//! deployments) can use it without pulling in the services.
//!
//! # Layout
//! - [`env`] — [`env::EnvWriter`]: argument ids to `(NAME, value)` pairs
//!   through clap's introspection; how each value type is written.
//! - [`common`] — the Postgres, Kafka and log argument groups every binary
//!   flattens, the duration syntax, and the settings shared by the
//!   services (listener, database, logs, Kafka).
//! - [`ingest`] — `chatpipe-ingest`: [`ingest::IngestArgs`], [`ingest::IngestSettings`].
//! - [`processor`] — `chatpipe-processor`: [`processor::Cli`], [`processor::ProcessorSettings`],
//!   and the default windows.
//! - [`api`] — `chatpipe-api`: [`api::ApiArgs`], [`api::ApiSettings`].
//! - [`delivery`] — `chatpipe-delivery`: [`delivery::DeliveryArgs`], [`delivery::DeliverySettings`].
//! - [`channels`] — the messenger channels (`CHATPIPE_CHANNELS`) and the
//!   variables of their credentials.
//! - [`migrate`] — `chatpipe-admin migrate`: [`migrate::MigrateArgs`], [`migrate::MigrateSettings`].

pub mod api;
pub mod channels;
pub mod common;
pub mod delivery;
pub mod env;
pub mod ingest;
pub mod migrate;
pub mod processor;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    /// Every binary's environment variables, by binary.
    fn env_names() -> BTreeMap<&'static str, Vec<String>> {
        let names = |c: clap::Command| -> Vec<String> {
            c.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect()
        };
        BTreeMap::from([
            ("ingest", names(crate::ingest::IngestArgs::command())),
            ("processor", names(crate::processor::Cli::command())),
            ("api", names(crate::api::ApiArgs::command())),
            ("migrate", names(crate::migrate::MigrateArgs::command())),
            ("delivery", names(crate::delivery::DeliveryArgs::command())),
        ])
    }

    /// No binary reads one variable for two settings, and a name two
    /// binaries share means one thing: it comes from a shared argument
    /// group, or is one of the few every service declares alike.
    #[test]
    fn env_names_are_unique_where_they_should_be() {
        let mut shared_groups = BTreeSet::new();
        for c in [
            <crate::common::PostgresArgs as clap::Args>::augment_args(clap::Command::new("p")),
            <crate::common::KafkaArgs as clap::Args>::augment_args(clap::Command::new("k")),
            <crate::common::LogArgs as clap::Args>::augment_args(clap::Command::new("l")),
            <crate::channels::ChannelArgs as clap::Args>::augment_args(clap::Command::new("c")),
        ] {
            for a in c.get_arguments().filter_map(|a| a.get_env()) {
                shared_groups.insert(a.to_string_lossy().into_owned());
            }
        }
        // The listener, the migrate-at-start switch and the replica name: declared by each
        // service (their defaults differ), with one meaning and one name.
        let alike = [
            crate::common::LISTEN_ENV,
            crate::common::MIGRATE_ENV,
            crate::common::REPLICA_NAME_ENV,
        ];

        let mut owners: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (bin, names) in env_names() {
            let unique: BTreeSet<&String> = names.iter().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "{bin} reads a variable twice: {names:?}"
            );
            for n in names {
                owners.entry(n).or_default().push(bin);
            }
        }
        for (name, bins) in owners {
            if bins.len() > 1 {
                assert!(
                    shared_groups.contains(&name) || alike.contains(&name.as_str()),
                    "{name} is declared separately by {bins:?}"
                );
            }
        }
    }

    #[test]
    fn every_definition_is_consistent() {
        crate::ingest::IngestArgs::command().debug_assert();
        crate::processor::Cli::command().debug_assert();
        crate::api::ApiArgs::command().debug_assert();
        crate::migrate::MigrateArgs::command().debug_assert();
        crate::delivery::DeliveryArgs::command().debug_assert();
    }
}
