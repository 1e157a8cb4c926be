//! The retry policy of a delivery: exponential backoff with full jitter,
//! never sooner than the provider asked (`Retry-After`, Telegram
//! `parameters.retry_after`), and a bound on the number of provider calls.
//!
//! Pure: the caller draws the jitter (uniform in `[0, 1]`) and applies the
//! delay, so the policy is tested deterministically.

use std::time::Duration;

/// When to retry a delivery whose provider call failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first retry delay; it doubles per attempt.
    pub base: Duration,
    /// The largest ceiling (the provider's retry-after may exceed it).
    pub max: Duration,
    /// Provider calls after which a transient failure is final.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The ceiling of the delay after `attempts_made` calls:
    /// `min(max, base · 2^(attempts_made − 1))` (`base` for 0 or 1).
    pub fn ceiling(&self, attempts_made: u32) -> Duration {
        let doublings = attempts_made.saturating_sub(1).min(63);
        let factor = 1u64 << doublings;
        let nanos = self.base.as_nanos().saturating_mul(u128::from(factor));
        let capped = nanos.min(self.max.as_nanos());
        // `capped` ≤ `max`, which is a Duration: it fits.
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }

    /// The delay before the next call after `attempts_made` calls failed
    /// transiently, or `None` when the delivery gives up (`attempts_made ≥
    /// max_attempts`). Full jitter: `jitter × ceiling(attempts_made)`, with
    /// `jitter` in `[0, 1]` (clamped; a NaN counts as 1), and never below
    /// the provider's `retry_after`.
    pub fn next(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let jitter = if jitter.is_nan() {
            1.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let backoff = self.ceiling(attempts_made).mul_f64(jitter);
        Some(backoff.max(retry_after.unwrap_or(Duration::ZERO)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        (1u64..5_000, 1u64..600_000, 0u32..30).prop_map(|(base, max, max_attempts)| RetryPolicy {
            base: Duration::from_millis(base),
            max: Duration::from_millis(max),
            max_attempts,
        })
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_attempts: 10,
        };
        let ceilings: Vec<u64> = (1..=6).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(p.next(3, None, 0.5), Some(Duration::from_secs(2)));
        assert_eq!(p.next(3, None, 1.0), Some(Duration::from_secs(4)));
        assert_eq!(p.next(3, None, 0.0), Some(Duration::ZERO));
        assert_eq!(
            p.next(1, Some(Duration::from_secs(35)), 0.3),
            Some(Duration::from_secs(35))
        );
        assert_eq!(p.next(10, None, 0.5), None);
        assert_eq!(p.next(9, None, f64::NAN), Some(Duration::from_secs(10)));
        // Huge attempt counts neither overflow nor panic.
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
    }

    proptest! {
        /// The delay is within [retry_after, max(cap, retry_after)].
        #[test]
        fn bounded(p in policy(), n in 0u32..40, ra in proptest::option::of(0u64..1_000_000), j in -1.0f64..2.0) {
            let ra = ra.map(Duration::from_millis);
            if let Some(d) = p.next(n, ra, j) {
                prop_assert!(d <= p.max.max(ra.unwrap_or_default()));
                prop_assert!(d <= p.ceiling(n).max(ra.unwrap_or_default()));
                prop_assert!(d >= ra.unwrap_or_default());
            }
        }

        /// The ceiling never decreases with the attempt count and never
        /// exceeds `max`.
        #[test]
        fn monotone_cap(p in policy(), n in 0u32..80) {
            prop_assert!(p.ceiling(n) <= p.ceiling(n + 1));
            prop_assert!(p.ceiling(n) <= p.max);
        }

        /// It retries while fewer than `max_attempts` calls were made, and
        /// gives up from then on.
        #[test]
        fn gives_up_exactly_after_max_attempts(p in policy(), n in 0u32..60, j in 0.0f64..=1.0) {
            prop_assert_eq!(p.next(n, None, j).is_none(), n >= p.max_attempts);
        }

        /// The provider's retry-after is honoured whatever the jitter.
        #[test]
        fn honours_retry_after(p in policy(), n in 0u32..20, ra in 0u64..10_000_000, j in 0.0f64..=1.0) {
            let ra = Duration::from_millis(ra);
            if let Some(d) = p.next(n, Some(ra), j) {
                prop_assert!(d >= ra);
            }
        }

        /// More jitter never means a shorter delay.
        #[test]
        fn jitter_is_monotone(p in policy(), n in 0u32..20, a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(p.next(n, None, lo) <= p.next(n, None, hi));
        }
    }
}
