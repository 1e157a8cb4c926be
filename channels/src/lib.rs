//! Messenger channels: what chatpipe knows of Telegram, WhatsApp Cloud and
//! Twilio, apart from where it runs.
//!
//! # Layout
//! - [`channel`] — a declared channel with its credentials.
//! - [`ids`] — the deterministic ids of contacts, inbound messages and the
//!   conversations they open (UUIDv5), so a provider's retry is the same
//!   event.
//! - [`inbound`] — verifying a provider's webhook (its secret or
//!   signature) and normalising it into messages and status reports; one
//!   file per provider. Pure.
//! - [`outbound`] — calling a provider's send API and classifying its
//!   answer (sent, transient with its retry-after, permanent with its
//!   reason); one file per provider.
//! - [`status`] — the delivery status timeline, which never moves back.
//! - [`retry`] — the retry policy: exponential backoff with full jitter,
//!   honouring the provider's retry-after.

pub mod channel;
pub mod ids;
pub mod inbound;
pub mod outbound;
pub mod retry;
pub mod status;

pub use channel::Channel;
pub use chatpipe_settings::channels::{ChannelDecl, ChannelType, Channels, CredentialReader};
