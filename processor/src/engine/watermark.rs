//! The watermark rule (spec "Processing semantics", point 5).
//!
//! Per partition the watermark is the highest record (arrival) timestamp
//! seen. Only when the consumer has caught up with the partition's end does
//! it also advance with the wall clock minus a small allowance for records
//! still in flight; with a backlog it never moves by wall clock, so a
//! replay cannot close a group early. A deadline `d` has *passed* when the
//! watermark is strictly greater than `d` (a gap of exactly G still joins).
//!
//! Pure: the caller supplies the clock reading.

/// A partition's event-time watermark in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    value: Option<i64>,
}

impl Watermark {
    /// A watermark that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current value, if any record or clock advance was seen.
    pub fn value(&self) -> Option<i64> {
        self.value
    }

    /// Accounts for a record with arrival timestamp `ts`. Returns `true` when
    /// the record is *behind* the watermark (arrived late: its timestamp is
    /// lower than the watermark already was).
    pub fn observe_record(&mut self, ts: i64) -> bool {
        match self.value {
            Some(v) if ts < v => true,
            _ => {
                self.value = Some(ts);
                false
            }
        }
    }

    /// Advances to `t` (never backwards). Used for the wall-clock advance of
    /// a caught-up partition, with `t` from [`clock_target`].
    pub fn advance_to(&mut self, t: i64) {
        if self.value.is_none_or(|v| t > v) {
            self.value = Some(t);
        }
    }

    /// Whether the watermark has passed `deadline` (strictly greater).
    pub fn passed(&self, deadline: i64) -> bool {
        self.value.is_some_and(|v| v > deadline)
    }
}

/// Where a caught-up partition's watermark may move given the wall clock
/// `now_ms` and the allowance for in-flight records / clock skew.
pub fn clock_target(now_ms: i64, allowance_ms: i64) -> i64 {
    now_ms - allowance_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_timestamp_and_late_records() {
        let mut w = Watermark::new();
        assert!(!w.passed(0));
        assert!(!w.observe_record(100));
        assert!(w.observe_record(99));
        assert_eq!(w.value(), Some(100));
        assert!(w.passed(99));
        assert!(!w.passed(100));
        w.advance_to(50);
        assert_eq!(w.value(), Some(100));
        w.advance_to(clock_target(1_000, 50));
        assert_eq!(w.value(), Some(950));
    }
}
