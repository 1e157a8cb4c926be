//! Flags and environment of `chatpipe-processor`. The clap definitions
//! ([`Cli`], [`ProcessorArgs`]) live in `chatpipe-settings`, next to what a
//! deployment writes of them; this module turns them into the engine's
//! configuration.

use std::time::Duration;

pub use chatpipe_settings::processor::{Cli, ProcessorArgs};

use crate::engine::domain::EngineConfig;

/// The engine windows `args` describe.
pub fn engine(args: &ProcessorArgs) -> EngineConfig {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    EngineConfig {
        gap_ms: ms(args.grouping_gap),
        tolerance_ms: ms(args.late_tolerance),
        max_group_span_ms: ms(args.max_group_span),
        max_group_messages: args.max_group_messages.max(1),
    }
}

/// This replica's ordinal: the flag, else HOSTNAME's trailing `-<n>`,
/// else 0.
pub fn resolved_ordinal(args: &ProcessorArgs) -> u32 {
    args.ordinal
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .and_then(|h| crate::ownership::ordinal_from_hostname(&h))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags' defaults are the engine's defaults.
    #[test]
    fn default_flags_give_the_default_engine() {
        let cli = Cli::try_parse_from(["chatpipe-processor"]).unwrap();
        assert_eq!(engine(&cli.processor), EngineConfig::default());
    }
}
