//! Command-line and environment settings of `chatpipe-ingest`. The clap
//! definition ([`IngestArgs`]: every flag with an env var and a documented
//! default) lives in `chatpipe-settings`, next to what a deployment writes
//! of it; this module adds what ties it to the event contract.

use chatpipe_core::event::Limits;
pub use chatpipe_settings::ingest::{parse_properties, replica_name, session_options, IngestArgs};

/// The validation limits `args` describe.
pub fn limits(args: &IngestArgs) -> Limits {
    Limits {
        max_body_bytes: args.max_body_bytes,
        max_content_bytes: args.max_content_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_core::event::DEFAULT_MAX_CONTENT_BYTES;
    use clap::Parser;

    #[test]
    fn default_limits_are_the_event_contracts() {
        let a = IngestArgs::try_parse_from(["chatpipe-ingest"]).unwrap();
        assert_eq!(limits(&a).max_content_bytes, DEFAULT_MAX_CONTENT_BYTES);
        assert_eq!(limits(&a), Limits::default());
    }
}
