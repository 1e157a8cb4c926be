//! Rate limits of provider calls (GCRA, the `governor` crate): per channel
//! (`--channel-rate` per second; Telegram allows about 30 messages a
//! second per bot) and per chat, i.e. per (channel, contact)
//! (`--chat-rate` per second with a burst of `--chat-burst`; Telegram
//! allows about one a second per chat). A rate of 0 means no limit.
//!
//! The worker takes the chat's token first and then waits for the
//! channel's, so a chat's token is never spent on a call that did not
//! happen.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limiters of one worker.
pub struct Limits<C: Clock = DefaultClock> {
    channel: Option<Keyed<String, C>>,
    chat: Option<Keyed<(String, Uuid), C>>,
    clock: C,
}

impl Limits<DefaultClock> {
    /// `channel_rate` calls a second per channel; `chat_rate` a second per
    /// chat with bursts of `chat_burst` (at least 1). 0 disables a limit.
    pub fn new(channel_rate: u32, chat_rate: u32, chat_burst: u32) -> Self {
        Self::with_clock(channel_rate, chat_rate, chat_burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limits<C> {
    /// Like [`Limits::new`] on `clock` (simulated in tests).
    pub fn with_clock(channel_rate: u32, chat_rate: u32, chat_burst: u32, clock: C) -> Self {
        let channel = NonZeroU32::new(channel_rate)
            .map(|r| RateLimiter::dashmap_with_clock(Quota::per_second(r), clock.clone()));
        let chat = NonZeroU32::new(chat_rate).map(|r| {
            let burst = NonZeroU32::new(chat_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::dashmap_with_clock(Quota::per_second(r).allow_burst(burst), clock.clone())
        });
        Limits {
            channel,
            chat,
            clock,
        }
    }

    /// Takes a token of chat (`channel`, `contact`), or says how long to
    /// wait for one.
    pub fn check_chat(&self, channel: &str, contact: Uuid) -> Result<(), Duration> {
        match &self.chat {
            None => Ok(()),
            Some(l) => l
                .check_key(&(channel.to_owned(), contact))
                .map_err(|n| n.wait_time_from(self.clock.now())),
        }
    }

    /// Takes a token of `channel`, or says how long to wait for one.
    pub fn check_channel(&self, channel: &str) -> Result<(), Duration> {
        match &self.channel {
            None => Ok(()),
            Some(l) => l
                .check_key(&channel.to_owned())
                .map_err(|n| n.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets chats and channels whose buckets are full again.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.chat {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.channel {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn chats_get_their_burst_then_their_rate() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(100, 1, 3, clock.clone());
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        for _ in 0..3 {
            assert_eq!(l.check_chat("tg", a), Ok(()));
        }
        let wait = l.check_chat("tg", a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another chat, and the same contact id on another channel, are
        // not affected.
        assert_eq!(l.check_chat("tg", b), Ok(()));
        assert_eq!(l.check_chat("wa", a), Ok(()));
        clock.advance(Duration::from_secs(1));
        assert_eq!(l.check_chat("tg", a), Ok(()));
        assert!(l.check_chat("tg", a).is_err());
    }

    #[test]
    fn channels_get_their_rate_per_second() {
        let clock = FakeRelativeClock::default();
        let l = Limits::with_clock(30, 1, 1, clock.clone());
        let allowed = (0..100).filter(|_| l.check_channel("tg").is_ok()).count();
        assert_eq!(allowed, 30);
        assert!(l.check_channel("wa").is_ok());
        clock.advance(Duration::from_millis(100));
        let allowed = (0..100).filter(|_| l.check_channel("tg").is_ok()).count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn zero_disables_a_limit() {
        let l = Limits::with_clock(0, 0, 0, FakeRelativeClock::default());
        for _ in 0..1000 {
            assert!(l.check_channel("tg").is_ok());
            assert!(l.check_chat("tg", Uuid::nil()).is_ok());
        }
        l.forget_idle();
    }
}
