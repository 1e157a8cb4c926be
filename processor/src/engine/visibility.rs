//! When an accepted message's INBOUND row is written: at once while the
//! partition is live, and together with its reply while it works
//! through a backlog.
//!
//! The engine emits [`Effect::Inbound`] when it accepts a message, so the
//! api can show the message before its reply exists. Live (the partition's
//! end reached, or its newest record younger than `max_delay`), the shell
//! writes it in the same batch. While a partition works through a backlog,
//! the message is already late for any reader by the whole backlog, and its group usually closes a few batches
//! later as the watermark races through record time; writing the row then,
//! with its `reply_id` in the same insert, saves a second write (the
//! `UPDATE` that records the reply) per message. So [`PendingInbound`]
//! holds a behind partition's INBOUND rows until the first of:
//! - the group's [`Effect::Outbound`]: the row is written just before it in
//!   the same batch (the store then inserts it with its reply);
//! - the partition is live again: every held row is written;
//! - the row has waited `max_delay` of wall time: it is written without
//!   reply (bounded visibility even under a backlog that never drains).
//!
//! Holding a row never changes a decision: a held row belongs to an open
//! group, whose offsets pin the partition's resume offset, so a crash
//! replays it; the engine recognises its duplicates from the window. When
//! the shell rebuilds a partition it drops the holder with the engine.
//! Pure: wall time comes in as an argument.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use crate::engine::effects::{Effect, Inbound};

/// INBOUND rows held back while a partition is behind.
#[derive(Debug, Default, Clone)]
pub struct PendingInbound {
    rows: HashMap<Uuid, Inbound>,
    /// (wall ms when held, id) in holding order; ids already written are
    /// skipped lazily.
    queue: VecDeque<(i64, Uuid)>,
}

impl PendingInbound {
    /// An empty holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Ids of the rows held (messages accepted but not written yet).
    pub fn ids(&self) -> impl Iterator<Item = &Uuid> {
        self.rows.keys()
    }

    /// Whether held rows must be written now even if the partition has no
    /// new records: it is caught up, or the oldest row waited `max_delay_ms`.
    pub fn release_due(&self, now_ms: i64, max_delay_ms: i64, caught_up: bool) -> bool {
        if self.rows.is_empty() {
            return false;
        }
        caught_up
            || self
                .queue
                .iter()
                .find(|(_, id)| self.rows.contains_key(id))
                .is_some_and(|(held_at, _)| *held_at <= now_ms - max_delay_ms)
    }

    /// Routes one batch's effects (in decision order) and returns those to
    /// write now, in an order the store applies correctly: a held row
    /// comes out just before the reply that covers it. `caught_up` writes
    /// everything (and holds nothing); otherwise new rows are held and rows
    /// held since `now_ms - max_delay_ms` or earlier are released.
    pub fn route(
        &mut self,
        effects: Vec<Effect>,
        now_ms: i64,
        max_delay_ms: i64,
        caught_up: bool,
    ) -> Vec<Effect> {
        let mut out = Vec::with_capacity(effects.len() + self.rows.len().min(1024));
        for e in effects {
            match e {
                Effect::Inbound(m) if !caught_up => {
                    // A replayed row emitted again keeps its first hold time.
                    if self.rows.insert(m.id, m.clone()).is_none() {
                        self.queue.push_back((now_ms, m.id));
                    }
                }
                Effect::Inbound(m) => {
                    self.rows.remove(&m.id);
                    out.push(Effect::Inbound(m));
                }
                Effect::Outbound(o) => {
                    for id in &o.inbound_ids {
                        if let Some(m) = self.rows.remove(id) {
                            out.push(Effect::Inbound(m));
                        }
                    }
                    out.push(Effect::Outbound(o));
                }
                other => out.push(other),
            }
        }
        if caught_up {
            for (_, id) in self.queue.drain(..) {
                if let Some(m) = self.rows.remove(&id) {
                    out.push(Effect::Inbound(m));
                }
            }
        } else {
            while let Some(&(held_at, id)) = self.queue.front() {
                if self.rows.contains_key(&id) && held_at > now_ms - max_delay_ms {
                    break;
                }
                self.queue.pop_front();
                if let Some(m) = self.rows.remove(&id) {
                    out.push(Effect::Inbound(m));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::effects::Outbound;
    use chrono::DateTime;

    fn inbound(n: u128) -> Inbound {
        Inbound {
            id: Uuid::from_u128(n),
            conversation_id: Uuid::from_u128(1000),
            content: format!("m{n}"),
            timestamp: DateTime::UNIX_EPOCH,
            arrival_ms: n as i64,
            offset: n as i64,
        }
    }

    fn reply(ids: &[u128]) -> Effect {
        let ids: Vec<Uuid> = ids.iter().map(|n| Uuid::from_u128(*n)).collect();
        Effect::Outbound(Outbound {
            id: crate::engine::reply::reply_id(&ids),
            conversation_id: Uuid::from_u128(1000),
            content: crate::engine::reply::reply_text(&ids),
            answered_by: Default::default(),
            messages: Vec::new(),
            timestamp_ms: 0,
            last_arrival_ms: 0,
            inbound_ids: ids,
            flushed_by_close: false,
            capped: false,
        })
    }

    fn ids(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Inbound(m) => format!("in{}", m.id.as_u128()),
                Effect::Outbound(o) => format!("out{}", o.inbound_ids.len()),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn caught_up_writes_at_once() {
        let mut p = PendingInbound::new();
        let out = p.route(vec![Effect::Inbound(inbound(1))], 0, 1000, true);
        assert_eq!(ids(&out), ["in1"]);
        assert!(p.is_empty());
    }

    #[test]
    fn behind_holds_until_the_reply_and_writes_it_just_before() {
        let mut p = PendingInbound::new();
        let out = p.route(
            vec![Effect::Inbound(inbound(1)), Effect::Inbound(inbound(2))],
            0,
            1000,
            false,
        );
        assert!(out.is_empty());
        assert_eq!(p.len(), 2);
        let out = p.route(
            vec![Effect::Inbound(inbound(3)), reply(&[1, 2])],
            10,
            1000,
            false,
        );
        assert_eq!(ids(&out), ["in1", "in2", "out2"]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn max_delay_releases_the_oldest_rows_without_reply() {
        let mut p = PendingInbound::new();
        p.route(vec![Effect::Inbound(inbound(1))], 0, 1000, false);
        p.route(vec![Effect::Inbound(inbound(2))], 500, 1000, false);
        assert!(p.route(vec![], 999, 1000, false).is_empty());
        assert_eq!(ids(&p.route(vec![], 1000, 1000, false)), ["in1"]);
        assert_eq!(ids(&p.route(vec![], 1500, 1000, false)), ["in2"]);
        assert!(p.is_empty());
    }

    #[test]
    fn catching_up_releases_everything_in_holding_order() {
        let mut p = PendingInbound::new();
        p.route(
            vec![Effect::Inbound(inbound(2)), Effect::Inbound(inbound(1))],
            0,
            1000,
            false,
        );
        let out = p.route(vec![Effect::Inbound(inbound(3))], 1, 1000, true);
        assert_eq!(ids(&out), ["in3", "in2", "in1"]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_replayed_row_keeps_its_first_hold_time_and_is_written_once() {
        let mut p = PendingInbound::new();
        p.route(vec![Effect::Inbound(inbound(1))], 0, 1000, false);
        p.route(vec![Effect::Inbound(inbound(1))], 900, 1000, false);
        assert_eq!(ids(&p.route(vec![], 1000, 1000, false)), ["in1"]);
        assert!(p.route(vec![], 5000, 1000, false).is_empty());
    }

    #[test]
    fn rows_of_other_groups_and_other_effects_pass_through() {
        let mut p = PendingInbound::new();
        p.route(vec![Effect::Inbound(inbound(1))], 0, 1000, false);
        let out = p.route(vec![reply(&[7])], 1, 1000, false);
        assert_eq!(ids(&out), ["out1"]);
        assert_eq!(p.len(), 1);
    }
}
