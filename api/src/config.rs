//! The api's command line and environment settings: the clap definition
//! lives in `chatpipe-settings` ([`chatpipe_settings::api::ApiArgs`]), next
//! to what a deployment writes of it.

/// Settings of `chatpipe-api`; every flag also reads an environment variable.
pub use chatpipe_settings::api::ApiArgs as Config;
