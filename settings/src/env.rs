//! Writing settings as the environment a binary reads.
//!
//! Every variable name comes from the binary's own clap definition: a
//! settings struct names the *argument* (its clap id, the field name of the
//! `Args` struct) and [`EnvWriter`] looks up the `env = "CHATPIPE_…"` that
//! argument declares. The `env` attribute is therefore the only place a
//! name is spelled.

use std::net::SocketAddr;
use std::time::Duration;

use clap::CommandFactory;

/// A value written in the form the binary's parser reads back.
pub trait EnvValue {
    /// The text of the environment variable.
    fn env_value(&self) -> String;
}

macro_rules! display_env_value {
    ($($t:ty),*) => {$(
        impl EnvValue for $t {
            fn env_value(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

display_env_value!(String, u32, u64, usize, i64, bool, SocketAddr);

/// Implements [`EnvValue`] for choices of a flag (`clap::ValueEnum`): the
/// name clap accepts (`json`, `SCRAM-SHA-512`, `forwarded-for`). Invoked
/// next to each such type.
macro_rules! value_enum_env_value {
    ($($t:ty),*) => {$(
        impl $crate::env::EnvValue for $t {
            fn env_value(&self) -> String {
                clap::ValueEnum::to_possible_value(self)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            }
        }
    )*};
}
pub(crate) use value_enum_env_value;

/// Formats a duration the way `parse_duration` reads it (`5s`, `1m 30s`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl EnvValue for Duration {
    /// [`format_duration`]: what `parse_duration` reads (`5s`, `1m 30s`).
    fn env_value(&self) -> String {
        format_duration(*self)
    }
}

/// The environment variable argument `id` of `command` reads.
///
/// # Panics
/// When `command` has no argument `id`, or that argument reads no
/// environment variable. Either is a settings struct naming an argument its
/// binary does not have, a programming error the round-trip tests
/// (`settings/tests/round_trip.rs`) catch for every setting.
pub fn env_name(command: &clap::Command, id: &str) -> String {
    let arg = command
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("{} has no argument {id:?}", command.get_name()));
    let name = arg
        .get_env()
        .unwrap_or_else(|| panic!("argument {id:?} of {} reads no env var", command.get_name()));
    name.to_string_lossy().into_owned()
}

/// Collects `(NAME, value)` pairs for one binary, in the order they are set.
#[derive(Debug)]
pub struct EnvWriter {
    command: clap::Command,
    vars: Vec<(String, String)>,
}

impl EnvWriter {
    /// A writer for the binary whose command line is `C`.
    pub fn new<C: CommandFactory>() -> Self {
        Self {
            command: C::command(),
            vars: Vec::new(),
        }
    }

    /// Writes argument `id` when `value` is set; unset leaves the variable
    /// out, so the binary's default applies.
    pub fn set<T: EnvValue>(&mut self, id: &str, value: Option<&T>) -> &mut Self {
        if let Some(v) = value {
            let name = env_name(&self.command, id);
            self.vars.push((name, v.env_value()));
        }
        self
    }

    /// The variables written, in order.
    pub fn finish(self) -> Vec<(String, String)> {
        self.vars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::{LogArgs, LogFormat};

    #[derive(Debug, clap::Parser)]
    struct Bin {
        #[command(flatten)]
        log: LogArgs,
        #[arg(long)]
        no_env: bool,
    }

    #[test]
    fn names_come_from_the_clap_definition() {
        let mut w = EnvWriter::new::<Bin>();
        w.set("log", Some(&"debug".to_owned()))
            .set("log_format", Some(&LogFormat::Json))
            .set::<String>("log", None);
        assert_eq!(
            w.finish(),
            [
                ("CHATPIPE_LOG".to_owned(), "debug".to_owned()),
                ("CHATPIPE_LOG_FORMAT".to_owned(), "json".to_owned())
            ]
        );
        assert_eq!(Duration::from_secs(90).env_value(), "1m 30s");
    }

    #[test]
    #[should_panic(expected = "has no argument \"nope\"")]
    fn an_unknown_argument_is_a_bug() {
        EnvWriter::new::<Bin>().set("nope", Some(&1u32));
    }

    #[test]
    #[should_panic(expected = "reads no env var")]
    fn an_argument_without_env_is_a_bug() {
        EnvWriter::new::<Bin>().set("no_env", Some(&true));
    }
}
