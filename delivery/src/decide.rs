//! What to record after a provider call: pure, from the call's
//! [`SendOutcome`], the number of calls made and the retry policy.

use std::time::Duration;

use chatpipe_channels::outbound::SendOutcome;
use chatpipe_channels::retry::RetryPolicy;

/// The code of a delivery that failed transiently `max_attempts` times.
pub const MAX_ATTEMPTS: &str = "max_attempts";

/// What the store records for a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// `sent`, with the provider's message id.
    Sent {
        /// The provider's message id.
        provider_message_id: String,
    },
    /// Still `queued`: retried after `delay` (event `attempt_failed`).
    Retry {
        /// Until the next call.
        delay: Duration,
        /// The failure's code.
        code: String,
        /// Its reason.
        reason: String,
        /// Whether the failed call may have delivered the message (the
        /// retry may send it twice; event `possible_duplicate`).
        possible_duplicate: bool,
    },
    /// `failed` for good (event `failed`).
    Failed {
        /// The code.
        code: String,
        /// The reason.
        reason: String,
    },
}

/// The settlement of a call with `outcome`, after `attempts_made` calls
/// (this one included). `jitter` is uniform in `[0, 1]`.
pub fn decide(
    outcome: &SendOutcome,
    attempts_made: u32,
    policy: &RetryPolicy,
    jitter: f64,
) -> Settlement {
    match outcome {
        SendOutcome::Sent {
            provider_message_id,
        } => Settlement::Sent {
            provider_message_id: provider_message_id.clone(),
        },
        SendOutcome::Permanent { code, reason } => Settlement::Failed {
            code: code.clone(),
            reason: reason.clone(),
        },
        SendOutcome::Transient {
            code,
            reason,
            retry_after,
            ambiguous,
        } => match policy.next(attempts_made, *retry_after, jitter) {
            Some(delay) => Settlement::Retry {
                delay,
                code: code.clone(),
                reason: reason.clone(),
                possible_duplicate: *ambiguous,
            },
            None => Settlement::Failed {
                code: MAX_ATTEMPTS.to_owned(),
                reason: format!("gave up after {attempts_made} attempts; last: {code}: {reason}"),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_attempts,
        }
    }

    #[test]
    fn outcomes_map_to_settlements() {
        let p = policy(3);
        assert_eq!(
            decide(
                &SendOutcome::Sent {
                    provider_message_id: "42:7".into()
                },
                1,
                &p,
                0.5
            ),
            Settlement::Sent {
                provider_message_id: "42:7".into()
            }
        );
        assert_eq!(
            decide(
                &SendOutcome::permanent("403", "Forbidden: bot was blocked by the user"),
                1,
                &p,
                0.5
            ),
            Settlement::Failed {
                code: "403".into(),
                reason: "Forbidden: bot was blocked by the user".into()
            }
        );
        let t = SendOutcome::Transient {
            code: "429".into(),
            reason: "Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(5)),
            ambiguous: false,
        };
        assert_eq!(
            decide(&t, 2, &p, 0.0),
            Settlement::Retry {
                delay: Duration::from_secs(5),
                code: "429".into(),
                reason: "Too Many Requests".into(),
                possible_duplicate: false
            }
        );
        match decide(&t, 3, &p, 0.0) {
            Settlement::Failed { code, reason } => {
                assert_eq!(code, MAX_ATTEMPTS);
                assert!(reason.contains("429: Too Many Requests"), "{reason}");
                assert!(reason.contains("3 attempts"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// A transient failure is retried while fewer than max_attempts
        /// calls were made, and an ambiguous one is flagged.
        #[test]
        fn transient_failures_retry_until_max(n in 1u32..20, max in 1u32..20, ambiguous: bool, j in 0.0f64..=1.0) {
            let out = SendOutcome::Transient { code: "timeout".into(), reason: "r".into(), retry_after: None, ambiguous };
            match decide(&out, n, &policy(max), j) {
                Settlement::Retry { possible_duplicate, delay, .. } => {
                    prop_assert!(n < max);
                    prop_assert_eq!(possible_duplicate, ambiguous);
                    prop_assert!(delay <= Duration::from_secs(300));
                }
                Settlement::Failed { code, .. } => {
                    prop_assert!(n >= max);
                    prop_assert_eq!(code, MAX_ATTEMPTS);
                }
                Settlement::Sent { .. } => prop_assert!(false, "a failure was recorded sent"),
            }
        }
    }
}
