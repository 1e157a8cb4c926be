//! Command-line/environment settings shared by every binary (clap derive,
//! each flag with an env var and a documented default). Defined in
//! `chatpipe-settings` with every binary's settings; re-exported here for
//! the binaries and tools that use them through core.

pub use chatpipe_settings::common::{
    format_duration, parse_duration, KafkaArgs, LogArgs, LogFormat, PostgresArgs,
};
