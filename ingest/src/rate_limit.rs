//! The per-client rate limit of webhook requests (`--rate-limit`,
//! `--rate-limit-burst`, `--rate-limit-client`): one token bucket per client
//! address (GCRA, the `governor` crate). A client over its limit is
//! answered `429` with `Retry-After` (whole seconds until its next request
//! would be allowed) before its body is read; nothing is written. Other
//! clients are not affected.
//!
//! Who a client is: the TCP peer, or behind a proxy the last address of
//! `X-Forwarded-For` (the one the proxy in front of ingest appended — the
//! earlier ones are whatever the client claimed). [`client_address`] is
//! pure; [`RateLimit`] takes its clock as a parameter so tests run on
//! simulated time.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::HeaderMap;
use chatpipe_settings::ingest::RateLimitClient;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// The address requests from which are counted together when the client
/// cannot be told (no peer address and no usable header).
const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Who sent a request: per `mode`, the peer, or the last valid address of
/// the last `X-Forwarded-For` header (the peer when there is none).
pub fn client_address(mode: RateLimitClient, peer: Option<IpAddr>, headers: &HeaderMap) -> IpAddr {
    let forwarded = || {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse::<IpAddr>().ok())
    };
    let ip = match mode {
        RateLimitClient::Peer => peer,
        RateLimitClient::ForwardedFor => forwarded().or(peer),
    };
    ip.map_or(UNKNOWN_CLIENT, canonical)
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whole seconds to wait (at least 1): the `Retry-After` of a `429`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The limiter: a bucket per client address.
pub struct RateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    client: RateLimitClient,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The client.
    pub client: IpAddr,
    /// How long until its next request is allowed.
    pub wait: Duration,
}

impl RateLimit<DefaultClock> {
    /// `per_second` sustained requests per client, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, client: RateLimitClient) -> Self {
        Self::with_clock(per_second, burst, client, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// Like [`RateLimit::new`] on `clock` (simulated in tests).
    pub fn with_clock(
        per_second: NonZeroU32,
        burst: NonZeroU32,
        client: RateLimitClient,
        clock: C,
    ) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            client,
            per_second,
            burst,
        }
    }

    /// Takes a token for the request's client, or says how long it must
    /// wait.
    pub fn check(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<(), Limited> {
        let client = client_address(self.client, peer, headers);
        self.limiter
            .check_key(&client)
            .map_err(|not_until| Limited {
                client,
                wait: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets clients whose buckets are full again (they would be
    /// recreated as they are), so the table holds only recent clients.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Clients with a bucket now.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }

    /// Sustained requests per second per client.
    pub fn per_second(&self) -> u32 {
        self.per_second.get()
    }

    /// Burst per client.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_peer_or_the_address_the_proxy_appended() {
        let peer = Some(ip("10.0.0.9"));
        let h = xff(&["203.0.113.7, 198.51.100.2"]);
        assert_eq!(
            client_address(RateLimitClient::Peer, peer, &h),
            ip("10.0.0.9")
        );
        assert_eq!(
            client_address(RateLimitClient::ForwardedFor, peer, &h),
            ip("198.51.100.2"),
            "the last entry: the one the trusted proxy added"
        );
        // Several headers: the last one's last entry.
        let h = xff(&["1.1.1.1", "2.2.2.2, 3.3.3.3"]);
        assert_eq!(
            client_address(RateLimitClient::ForwardedFor, peer, &h),
            ip("3.3.3.3")
        );
        // Garbage or no header: the peer.
        for h in [xff(&["not-an-ip"]), xff(&["1.1.1.1, "]), HeaderMap::new()] {
            assert_eq!(
                client_address(RateLimitClient::ForwardedFor, peer, &h),
                ip("10.0.0.9")
            );
        }
        assert_eq!(
            client_address(RateLimitClient::ForwardedFor, None, &HeaderMap::new()),
            UNKNOWN_CLIENT
        );
        // IPv4-mapped IPv6 is the IPv4 client.
        assert_eq!(
            client_address(RateLimitClient::Peer, Some(ip("::ffff:192.0.2.1")), &h),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(RateLimitClient::ForwardedFor, peer, &xff(&["2001:db8::1"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
    }

    #[test]
    fn a_burst_then_the_sustained_rate_per_client() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(nz(2), nz(3), RateLimitClient::Peer, clock.clone());
        let a = Some(ip("192.0.2.1"));
        let b = Some(ip("192.0.2.2"));
        let none = HeaderMap::new();
        for _ in 0..3 {
            assert!(rl.check(a, &none).is_ok());
        }
        let limited = rl.check(a, &none).unwrap_err();
        assert_eq!(limited.client, ip("192.0.2.1"));
        assert_eq!(
            limited.wait,
            Duration::from_millis(500),
            "one token per 500 ms"
        );
        // Another client is not affected.
        assert!(rl.check(b, &none).is_ok());
        // After the wait, exactly one more.
        clock.advance(Duration::from_millis(500));
        assert!(rl.check(a, &none).is_ok());
        assert!(rl.check(a, &none).is_err());
        // After a long pause the burst is back, and idle clients can be
        // forgotten.
        clock.advance(Duration::from_secs(10));
        rl.forget_idle();
        assert_eq!(rl.clients(), 0);
        for _ in 0..3 {
            assert!(rl.check(a, &none).is_ok());
        }
        assert!(rl.check(a, &none).is_err());
    }

    proptest! {
        /// Over any schedule of requests, a client is allowed at most
        /// `burst + rate·elapsed` of them, and a refused request's wait is
        /// within one emission interval.
        #[test]
        fn never_more_than_burst_plus_rate_times_time(
            rate in 1u32..50,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..300, 1..200),
        ) {
            let clock = FakeRelativeClock::default();
            let rl = RateLimit::with_clock(nz(rate), nz(burst), RateLimitClient::Peer, clock.clone());
            let peer = Some(ip("198.51.100.1"));
            let none = HeaderMap::new();
            let mut allowed = 0u64;
            let mut elapsed_ms = 0u64;
            for gap in gaps {
                clock.advance(Duration::from_millis(gap));
                elapsed_ms += gap;
                match rl.check(peer, &none) {
                    Ok(()) => allowed += 1,
                    Err(l) => prop_assert!(
                        l.wait <= Duration::from_nanos(1_000_000_000 / u64::from(rate) + 1),
                        "wait {:?} at rate {rate}", l.wait
                    ),
                }
                let bound = u64::from(burst) + u64::from(rate) * elapsed_ms / 1000 + 1;
                prop_assert!(allowed <= bound, "{allowed} > {bound}");
            }
        }
    }
}
