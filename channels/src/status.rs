//! The delivery status of an OUTBOUND message, and the rule that it never
//! moves back: `queued → sent → delivered → read`, or `failed` (from
//! `queued` or `sent`). The ranks are the SQL function
//! `chatpipe_delivery_rank` of migration V600; only an explicit retry of a
//! dead letter moves `failed` back to `queued`.

use serde::{Deserialize, Serialize};

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting to be sent (or to be retried).
    Queued,
    /// The provider accepted it.
    Sent,
    /// The provider could not deliver it, or gave up.
    Failed,
    /// The provider reports it reached the contact's device.
    Delivered,
    /// The provider reports the contact read it.
    Read,
}

impl DeliveryStatus {
    /// Every status, in rank order.
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Sent,
        DeliveryStatus::Failed,
        DeliveryStatus::Delivered,
        DeliveryStatus::Read,
    ];

    /// As stored: `queued`, `sent`, `failed`, `delivered`, `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The rank of `chatpipe_delivery_rank`.
    pub fn rank(self) -> u8 {
        match self {
            DeliveryStatus::Queued => 0,
            DeliveryStatus::Sent => 1,
            DeliveryStatus::Failed => 2,
            DeliveryStatus::Delivered => 3,
            DeliveryStatus::Read => 4,
        }
    }

    /// Whether a report of `next` moves a delivery in status `self`: only
    /// to a higher rank. (A provider that reports `delivered` after `read`
    /// changes nothing; `failed` after `delivered` neither.)
    pub fn advances_to(self, next: DeliveryStatus) -> bool {
        next.rank() > self.rank()
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = DeliveryStatus> {
        proptest::sample::select(DeliveryStatus::ALL.to_vec())
    }

    #[test]
    fn spellings_round_trip() {
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryStatus::parse("sending"), None);
    }

    proptest! {
        /// Whatever order reports arrive in, the status only climbs, and it
        /// ends at the highest status reported.
        #[test]
        fn reports_in_any_order_end_at_the_highest(reports in proptest::collection::vec(status(), 0..12)) {
            let mut s = DeliveryStatus::Queued;
            for r in &reports {
                let before = s;
                if s.advances_to(*r) {
                    s = *r;
                }
                prop_assert!(s.rank() >= before.rank());
            }
            let highest = reports.iter().copied().max_by_key(|r| r.rank()).unwrap_or(DeliveryStatus::Queued);
            prop_assert_eq!(s, highest);
        }
    }
}
