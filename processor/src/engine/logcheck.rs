//! Is a stored position still inside the log? (pure)
//!
//! A partition's committed positions are offsets of the log they were read
//! from. When the topic is recreated (a new, shorter log) the stored offset
//! lies beyond the log's end; when retention removed old records it lies
//! before the log's start. Either way reading from there would skip records
//! silently (Tansu answers a fetch beyond the end with nothing at all), so
//! the processor checks, says so, and goes on from the records that exist.

/// Where a stored next offset stands against the log's current bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionCheck {
    /// `start ≤ next ≤ end`: read on.
    Inside,
    /// `next > end`: the log is not the one the offsets came from (topic
    /// recreated, broker replaced). Its records start again at `start`.
    BeyondEnd,
    /// `next < start`: records `[next, start)` were removed (retention).
    BeforeStart,
}

impl PositionCheck {
    /// Stable name, for metrics and the `partition_resets` table.
    pub fn as_str(self) -> &'static str {
        match self {
            PositionCheck::Inside => "inside",
            PositionCheck::BeyondEnd => "beyond_log_end",
            PositionCheck::BeforeStart => "before_log_start",
        }
    }
}

/// Checks a partition's positions — `resume` (the oldest offset it still
/// needs) and `next` (the next offset to read; every record below it was
/// read) — against the log's `start` (low watermark) and `end` (high
/// watermark, the offset the next record gets). Records it has read that
/// the log no longer reaches mean a new log; records it still needs below
/// the start were removed.
pub fn check_position(resume: i64, next: i64, start: i64, end: i64) -> PositionCheck {
    if next > end {
        PositionCheck::BeyondEnd
    } else if resume < start {
        PositionCheck::BeforeStart
    } else {
        PositionCheck::Inside
    }
}

/// A beyond-the-end reading is acted on only when it is confirmed: the
/// partition made no progress between two readings `confirmations` apart
/// and both saw the end below its position. (A reading taken while the
/// consumer is mid-fetch can never show that, but a broker that briefly
/// reports a stale end must not make a processor throw its place away.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BeyondEndConfirmation {
    seen: u32,
    at_next: i64,
}

impl BeyondEndConfirmation {
    /// Feeds one reading; returns whether the reset is now confirmed.
    pub fn observe(&mut self, check: PositionCheck, next: i64, confirmations: u32) -> bool {
        if check != PositionCheck::BeyondEnd || (self.seen > 0 && next != self.at_next) {
            *self = Self::default();
            if check != PositionCheck::BeyondEnd {
                return false;
            }
        }
        self.seen += 1;
        self.at_next = next;
        self.seen >= confirmations.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(check_position(0, 0, 0, 0), PositionCheck::Inside);
        assert_eq!(check_position(3, 10, 0, 10), PositionCheck::Inside);
        assert_eq!(check_position(3, 11, 0, 10), PositionCheck::BeyondEnd);
        assert_eq!(
            check_position(20_000, 20_000, 0, 0),
            PositionCheck::BeyondEnd
        );
        assert_eq!(check_position(4, 8, 5, 10), PositionCheck::BeforeStart);
        // Beyond the end wins: a new log's start says nothing of the old.
        assert_eq!(check_position(4, 30, 5, 10), PositionCheck::BeyondEnd);
    }

    #[test]
    fn beyond_end_needs_repeated_readings_without_progress() {
        let mut c = BeyondEndConfirmation::default();
        assert!(!c.observe(PositionCheck::BeyondEnd, 100, 2));
        assert!(c.observe(PositionCheck::BeyondEnd, 100, 2));
        let mut c = BeyondEndConfirmation::default();
        assert!(!c.observe(PositionCheck::BeyondEnd, 100, 2));
        // Progress in between: start over.
        assert!(!c.observe(PositionCheck::BeyondEnd, 120, 2));
        assert!(c.observe(PositionCheck::BeyondEnd, 120, 2));
        let mut c = BeyondEndConfirmation::default();
        assert!(!c.observe(PositionCheck::BeyondEnd, 100, 2));
        assert!(!c.observe(PositionCheck::Inside, 100, 2));
        assert!(!c.observe(PositionCheck::BeyondEnd, 100, 2));
        assert!(c.observe(PositionCheck::BeyondEnd, 100, 1));
    }

    proptest! {
        #[test]
        fn exactly_one_verdict(resume in 0i64..50, ahead in 0i64..10, start in 0i64..20, len in 0i64..20) {
            let (next, end) = (resume + ahead, start + len);
            let v = check_position(resume, next, start, end);
            prop_assert_eq!(v == PositionCheck::Inside, next <= end && resume >= start);
            prop_assert_eq!(v == PositionCheck::BeyondEnd, next > end);
            prop_assert_eq!(v == PositionCheck::BeforeStart, next <= end && resume < start);
        }
    }
}
