//! What `/readyz` says about a processor replica.
//!
//! A replica is not ready when it cannot do its job for some partition:
//! it was fenced (a newer owner claimed partitions it had; it stops
//! processing them and is never ready again), or a partition's writes
//! failed [`crate::engine::retry::RetryPolicy::stuck_after`] times in a row. It
//! stays ready, with a warning, after it found a stored position outside
//! the log and moved on (the skipped range is in `partition_resets`), and
//! while its FAQ rules file cannot be used (the rules loaded before stay
//! in use).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared between the consume loop (writer) and the ops server (reader).
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    claimed: bool,
    fenced: Vec<i32>,
    /// partition → (failures in a row, last error), only while stuck.
    stuck: BTreeMap<i32, (u32, String)>,
    warnings: Vec<String>,
    /// Warnings that last while a condition holds, by key.
    conditions: BTreeMap<String, String>,
}

/// Most warnings kept (the newest).
const MAX_WARNINGS: usize = 20;

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// The owned partitions are claimed and assigned.
    pub fn set_claimed(&self, claimed: bool) {
        self.with(|s| s.claimed = claimed);
    }

    /// Partitions taken over by a newer owner.
    pub fn fenced(&self, partitions: &[i32]) {
        self.with(|s| {
            s.fenced.extend_from_slice(partitions);
            s.fenced.sort_unstable();
            s.fenced.dedup();
        });
    }

    /// A partition's writes keep failing (`None`: it is fine again).
    pub fn set_stuck(&self, partition: i32, failing: Option<(u32, String)>) {
        self.with(|s| match failing {
            Some(f) => {
                s.stuck.insert(partition, f);
            }
            None => {
                s.stuck.remove(&partition);
            }
        });
    }

    /// Something an operator must know that does not stop processing.
    pub fn warn(&self, warning: String) {
        self.with(|s| {
            s.warnings.push(warning);
            let n = s.warnings.len();
            if n > MAX_WARNINGS {
                s.warnings.drain(..n - MAX_WARNINGS);
            }
        });
    }

    /// A warning that lasts while a condition holds: `Some` sets (or
    /// replaces) the warning under `key`, `None` clears it.
    pub fn set_condition(&self, key: &str, warning: Option<String>) {
        self.with(|s| match warning {
            Some(w) => {
                s.conditions.insert(key.to_owned(), w);
            }
            None => {
                s.conditions.remove(key);
            }
        });
    }

    /// `Ok` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), String> {
        self.with(|s| {
            let mut reasons = Vec::new();
            if !s.claimed {
                reasons.push("partitions not claimed yet".to_owned());
            }
            if !s.fenced.is_empty() {
                reasons.push(format!(
                    "fenced: partitions {:?} were claimed by a newer owner; this replica stopped processing them",
                    s.fenced
                ));
            }
            for (p, (n, e)) in &s.stuck {
                reasons.push(format!("partition {p}: {n} failed writes in a row; last error: {e}"));
            }
            if reasons.is_empty() {
                Ok(())
            } else {
                Err(reasons.join("; "))
            }
        })
    }

    /// Current warnings: the conditions that hold (by key), then the
    /// others, oldest first.
    pub fn warnings(&self) -> Vec<String> {
        self.with(|s| s.conditions.values().chain(&s.warnings).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_accumulate_and_clear() {
        let h = Health::default();
        assert!(h.readiness().is_err());
        h.set_claimed(true);
        assert_eq!(h.readiness(), Ok(()));
        h.set_stuck(3, Some((5, "lock timeout".into())));
        let r = h.readiness().unwrap_err();
        assert!(
            r.contains("partition 3: 5 failed writes") && r.contains("lock timeout"),
            "{r}"
        );
        h.set_stuck(3, None);
        assert_eq!(h.readiness(), Ok(()));
        h.fenced(&[2, 1, 2]);
        assert!(h
            .readiness()
            .unwrap_err()
            .contains("fenced: partitions [1, 2]"));
        for i in 0..30 {
            h.warn(format!("w{i}"));
        }
        let w = h.warnings();
        assert_eq!(w.len(), MAX_WARNINGS);
        assert_eq!(w.last().map(String::as_str), Some("w29"));
    }

    #[test]
    fn conditions_warn_while_they_hold_and_keep_readiness() {
        let h = Health::default();
        h.set_claimed(true);
        h.warn("reset".into());
        h.set_condition("rules", Some("bad rules".into()));
        h.set_condition("rules", Some("still bad".into()));
        assert_eq!(
            h.warnings(),
            vec!["still bad".to_owned(), "reset".to_owned()]
        );
        assert_eq!(h.readiness(), Ok(()));
        h.set_condition("rules", None);
        assert_eq!(h.warnings(), vec!["reset".to_owned()]);
    }
}
