//! Fake Telegram, WhatsApp Cloud and Twilio servers on fixed ports, for
//! trying channels on one machine (`examples/channels-local.yaml` points
//! its channels' `apiBaseUrl` here). They speak the providers' wire
//! formats, check the credentials of that example, and print every message
//! chatpipe sends them.
//!
//! ```sh
//! chatpipe-fake-providers            # Telegram :9401, WhatsApp :9402, Twilio :9403
//! ```

use std::time::Duration;

use chatpipe_tests::fakes::{FakeTelegram, FakeTwilio, FakeWhatsApp, Sent};

/// The credentials of `examples/channels-local.yaml`.
const TELEGRAM_BOT_TOKEN: &str = "100001:local-demo-bot-token";
const WHATSAPP_ACCESS_TOKEN: &str = "local-demo-whatsapp-access-token";
const WHATSAPP_PHONE_NUMBER_ID: &str = "100000000000001";
const TWILIO_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const TWILIO_AUTH_TOKEN: &str = "local-demo-twilio-auth-token";

fn print_new(provider: &str, sent: &[Sent], seen: &mut usize) {
    for s in sent.iter().skip(*seen) {
        println!(
            "[{provider}] to {}: {:?} (id {})",
            s.to, s.text, s.provider_message_id
        );
    }
    *seen = sent.len();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let host = std::env::var("CHATPIPE_FAKES_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let telegram = FakeTelegram::start_on(&format!("{host}:9401"), TELEGRAM_BOT_TOKEN).await?;
    let whatsapp = FakeWhatsApp::start_on(
        &format!("{host}:9402"),
        WHATSAPP_ACCESS_TOKEN,
        WHATSAPP_PHONE_NUMBER_ID,
    )
    .await?;
    let twilio = FakeTwilio::start_on(
        &format!("{host}:9403"),
        TWILIO_ACCOUNT_SID,
        TWILIO_AUTH_TOKEN,
    )
    .await?;
    println!("fake Telegram:  {}", telegram.base_url());
    println!("fake WhatsApp:  {}", whatsapp.base_url());
    println!("fake Twilio:    {}", twilio.base_url());
    println!("printing every message chatpipe sends them; Ctrl-C stops");
    let (mut t, mut w, mut s) = (0, 0, 0);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {
                print_new("telegram", &telegram.sent(), &mut t);
                print_new("whatsapp", &whatsapp.sent(), &mut w);
                print_new("twilio", &twilio.sent(), &mut s);
            }
        }
    }
}
