//! What a failed batch write means, and how long to wait before the next
//! try (pure).
//!
//! A *data* failure is Postgres refusing what the batch says (a value it
//! cannot store, a constraint): trying the same records again fails again,
//! so the partition narrows the failure down to one record and, after
//! [`RetryPolicy::poison_attempts`] refusals, sets that record aside as a
//! rejection. Anything else (connection lost, lock or statement timeout,
//! serialization failure) is *transient*: the partition retries with
//! exponential backoff, as long as it takes, and reports itself not ready
//! after [`RetryPolicy::stuck_after`] failures in a row.

use std::time::Duration;

/// The two kinds of failed writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Postgres refused the data (SQLSTATE class 22, 23 or 54).
    Data,
    /// Anything else: retry later.
    Transient,
}

impl FailureKind {
    /// Stable name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Data => "data",
            FailureKind::Transient => "transient",
        }
    }
}

/// Classifies a SQLSTATE code (`None`: no code, e.g. a lost connection).
/// Class 22 is "data exception" (a NUL in text, a value out of range),
/// 23 "integrity constraint violation", 54 "program limit exceeded" (a
/// value too large to index).
pub fn classify_sqlstate(code: Option<&str>) -> FailureKind {
    match code.map(|c| c.get(..2).unwrap_or("")) {
        Some("22" | "23" | "54") => FailureKind::Data,
        _ => FailureKind::Transient,
    }
}

/// Retry settings of a partition whose writes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Refusals of the same single record before it is set aside.
    pub poison_attempts: u32,
    /// Failures in a row after which the partition reports not ready.
    pub stuck_after: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            poison_attempts: 3,
            stuck_after: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Wait before the next try after `failures` failures in a row (≥ 1):
    /// `base · 2^(failures-1)`, at most `max`. A data failure is retried
    /// after `base` (what is tried next is smaller, not later).
    pub fn backoff(&self, failures: u32, kind: FailureKind) -> Duration {
        if kind == FailureKind::Data {
            return self.base.min(self.max);
        }
        let exp = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// Whether `failures` in a row make the partition stuck (not ready).
    pub fn is_stuck(&self, failures: u32) -> bool {
        failures >= self.stuck_after.max(1)
    }

    /// Whether a single record refused `refusals` times is set aside.
    pub fn is_poison(&self, refusals: u32) -> bool {
        refusals >= self.poison_attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sqlstates() {
        // NUL in text, unsupported unicode escape in jsonb, out of range.
        for c in ["22021", "22P05", "22008", "23505", "54000"] {
            assert_eq!(classify_sqlstate(Some(c)), FailureKind::Data, "{c}");
        }
        // Lock timeout, statement timeout, serialization, deadlock,
        // admin shutdown, no code (connection lost).
        for c in [
            Some("55P03"),
            Some("57014"),
            Some("40001"),
            Some("40P01"),
            Some("57P01"),
            None,
            Some(""),
        ] {
            assert_eq!(classify_sqlstate(c), FailureKind::Transient, "{c:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let t = FailureKind::Transient;
        assert_eq!(p.backoff(1, t), Duration::from_millis(100));
        assert_eq!(p.backoff(2, t), Duration::from_millis(200));
        assert_eq!(p.backoff(4, t), Duration::from_millis(800));
        assert_eq!(p.backoff(10, t), Duration::from_secs(5));
        assert_eq!(p.backoff(u32::MAX, t), Duration::from_secs(5));
        assert_eq!(p.backoff(7, FailureKind::Data), Duration::from_millis(100));
        assert!(!p.is_stuck(4) && p.is_stuck(5));
        assert!(!p.is_poison(2) && p.is_poison(3));
    }

    proptest! {
        #[test]
        fn backoff_is_monotonic_and_bounded(a in 1u32..1000, b in 1u32..1000) {
            let p = RetryPolicy::default();
            let (lo, hi) = (a.min(b), a.max(b));
            let t = FailureKind::Transient;
            prop_assert!(p.backoff(lo, t) <= p.backoff(hi, t));
            prop_assert!(p.backoff(hi, t) <= p.max);
            prop_assert!(p.backoff(lo, t) >= p.base);
        }
    }
}
