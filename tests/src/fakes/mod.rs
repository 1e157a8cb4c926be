//! Fake Telegram, WhatsApp Cloud and Twilio: real HTTP servers speaking the
//! providers' wire formats, for testing chatpipe's delivery against them,
//! and helpers that post inbound webhooks to chatpipe's ingest the way the
//! providers do (signatures included).
//!
//! # The fakes
//! [`FakeTelegram`], [`FakeWhatsApp`] and [`FakeTwilio`] each listen on
//! `127.0.0.1:<free port>` from a thread of their own (with its own tokio
//! runtime), so they answer from any test: a `#[tokio::test]` on a
//! current-thread runtime, a blocking test, or a chatpipe binary running as a
//! child process. The server stops when the value is dropped.
//!
//! Every send call is handled in the same order:
//! 1. it is counted ([`FakeTelegram::calls`] and the others);
//! 2. its credentials are checked as the provider checks them; a refusal is
//!    counted ([`FakeTelegram::rejected_auth`]) and answered the provider's
//!    way (`401`) — it does not take a fault;
//! 3. the next pushed [`Fault`], if any, is taken and answered
//!    ([`Fault::Timeout`] only delays: the call then goes on);
//! 4. the request is validated (a bad one gets the provider's `400`);
//! 5. a blocked recipient is refused for good (the provider's answer);
//! 6. the message is accepted, recorded as a [`Sent`] and answered with
//!    the provider's success shape.
//!
//! A call's handling runs on a task of its own, so a client that gives up
//! (its timeout) does not stop it: a [`Fault::Timeout`] longer than the
//! client's timeout is the ambiguous case of the real world — the provider
//! sent the message but the client never heard so, and
//! [`FakeTelegram::sent`] shows the message.
//!
//! # Webhook helpers
//! - Telegram: [`telegram_update`], [`telegram_photo_update`],
//!   [`post_telegram`] (`X-Telegram-Bot-Api-Secret-Token`).
//! - WhatsApp Cloud: [`whatsapp_message`], [`whatsapp_status`],
//!   [`post_whatsapp`] (`X-Hub-Signature-256`).
//! - Twilio: [`twilio_inbound_params`], [`twilio_status_params`],
//!   [`twilio_signature`], [`post_twilio`] (`X-Twilio-Signature`).
//!
//! The signatures are computed here with the `hmac`, `sha1` and `sha2`
//! crates, independently of chatpipe's own code.

mod server;
mod telegram;
mod twilio;
mod whatsapp;

use std::time::{Duration, SystemTime};

pub use telegram::{post_telegram, telegram_photo_update, telegram_update, FakeTelegram};
pub use twilio::{
    post_twilio, twilio_inbound_params, twilio_signature, twilio_status_params, FakeTwilio,
};
pub use whatsapp::{
    post_whatsapp, whatsapp_message, whatsapp_signature, whatsapp_status, FakeWhatsApp,
    DISPLAY_PHONE_NUMBER, WABA_ID,
};

/// One message a fake accepted (answered with the provider's success).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The recipient as the request named it: Telegram's `chat_id` (in
    /// decimal), WhatsApp's `to`, Twilio's `To`.
    pub to: String,
    /// The message text (Telegram `text`, WhatsApp `text.body`, Twilio
    /// `Body`).
    pub text: String,
    /// The id the provider answered with, as chatpipe stores it: Telegram
    /// `"{chat_id}:{message_id}"`, WhatsApp `wamid.…`, Twilio `SM…`.
    pub provider_message_id: String,
    /// When the fake accepted it.
    pub at: SystemTime,
}

/// A failure a fake answers instead of handling a call (see
/// [`FakeTelegram::push_faults`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The provider's rate limit answer (`429`). Telegram states the wait
    /// (`parameters.retry_after` and a `Retry-After` header); WhatsApp
    /// (code `130429`) and Twilio (code `20429`) state none, as the real
    /// ones, so `retry_after_secs` is used by Telegram only.
    TooManyRequests {
        /// Seconds the client is told to wait (Telegram).
        retry_after_secs: u64,
    },
    /// The provider's server error: Telegram `502 Bad Gateway`, WhatsApp
    /// `500` code `131000`, Twilio `500` code `20500`.
    ServerError,
    /// The call is held this long, then handled as usual (accepted, or
    /// refused if the request is bad or the recipient blocked): a client
    /// with a shorter timeout gives up although the message is sent.
    Timeout(Duration),
}

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A client for the webhook helpers.
pub(crate) fn http_client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the webhook HTTP client")
}
