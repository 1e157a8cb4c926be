//! Replies for stranded messages (pure).
//!
//! An accepted message's INBOUND row is written before its group closes;
//! the group's records pin the partition's resume offset until then. When
//! those records are gone from the log (the topic was recreated, or
//! retention removed them while the processor was away), the group can
//! never be rebuilt from the log. Its stored rows are all that is left, so
//! the processor answers them from the rows: the same grouping rule (gap
//! ≤ G, bounded span and size) over their arrival times, the same reply
//! text and id.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::engine::domain::EngineConfig;
use crate::engine::effects::{AnsweredBy, Outbound, ReplyMessage};
use crate::engine::reply::{reply_id, reply_text};

/// A stored INBOUND row without reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrandedRow {
    /// Message id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Its arrival (ms).
    pub arrival_ms: i64,
    /// Its text (the reply policy's input).
    pub content: String,
    /// Its provider event time.
    pub timestamp: DateTime<Utc>,
}

/// The replies that answer `rows`, one per group, conversations in id
/// order and groups in arrival order.
pub fn answer_stranded(cfg: &EngineConfig, mut rows: Vec<StrandedRow>) -> Vec<Outbound> {
    rows.sort_by_key(|r| (r.conversation_id, r.arrival_ms, r.id));
    let mut seen = std::collections::HashSet::new();
    rows.retain(|r| seen.insert(r.id));
    let mut by_conv: BTreeMap<Uuid, Vec<StrandedRow>> = BTreeMap::new();
    for r in rows {
        by_conv.entry(r.conversation_id).or_default().push(r);
    }
    let mut out = Vec::new();
    for (conv, rows) in by_conv {
        let mut group: Vec<StrandedRow> = Vec::new();
        for r in rows {
            if let (Some(first), Some(last)) = (group.first(), group.last()) {
                let ends = cfg.group_deadline(first.arrival_ms, last.arrival_ms);
                if r.arrival_ms > ends || group.len() >= cfg.max_group_messages.max(1) {
                    out.push(reply(cfg, conv, std::mem::take(&mut group)));
                }
            }
            group.push(r);
        }
        if !group.is_empty() {
            out.push(reply(cfg, conv, group));
        }
    }
    out
}

fn reply(cfg: &EngineConfig, conv: Uuid, group: Vec<StrandedRow>) -> Outbound {
    let ids: Vec<Uuid> = group.iter().map(|r| r.id).collect();
    let first = group.first().map_or(0, |r| r.arrival_ms);
    let last = group.last().map_or(0, |r| r.arrival_ms);
    let messages = group
        .into_iter()
        .map(|r| ReplyMessage {
            id: r.id,
            content: r.content,
            timestamp: r.timestamp,
        })
        .collect();
    Outbound {
        id: reply_id(&ids),
        conversation_id: conv,
        content: reply_text(&ids),
        answered_by: AnsweredBy::Template,
        messages,
        timestamp_ms: cfg.group_deadline(first, last),
        last_arrival_ms: last,
        inbound_ids: ids,
        flushed_by_close: false,
        capped: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(conv: u128, id: u128, arrival_ms: i64) -> StrandedRow {
        StrandedRow {
            id: Uuid::from_u128(id),
            conversation_id: Uuid::from_u128(conv),
            arrival_ms,
            content: format!("text {id}"),
            timestamp: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn groups_by_gap_per_conversation() {
        let cfg = EngineConfig::default();
        let out = answer_stranded(
            &cfg,
            vec![
                row(1, 11, 0),
                row(2, 21, 100),
                row(1, 12, 5_000),
                row(1, 13, 10_001),
            ],
        );
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0].inbound_ids,
            vec![Uuid::from_u128(11), Uuid::from_u128(12)]
        );
        assert_eq!(out[0].timestamp_ms, 10_000);
        assert_eq!(out[1].inbound_ids, vec![Uuid::from_u128(13)]);
        assert_eq!(out[2].conversation_id, Uuid::from_u128(2));
        assert_eq!(out[0].content, reply_text(&out[0].inbound_ids));
        let texts: Vec<&str> = out[0].messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["text 11", "text 12"]);
    }

    #[test]
    fn bounded_by_size() {
        let cfg = EngineConfig {
            max_group_messages: 2,
            ..EngineConfig::default()
        };
        let out = answer_stranded(&cfg, (0..5).map(|i| row(1, i, i as i64)).collect());
        let sizes: Vec<usize> = out.iter().map(|o| o.inbound_ids.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    proptest! {
        #[test]
        fn every_row_is_answered_exactly_once(
            rows in proptest::collection::vec((0u128..4, 0u128..40, 0i64..60_000), 0..60)
        ) {
            let rows: Vec<StrandedRow> = rows.into_iter().map(|(c, i, a)| row(c, c * 1000 + i, a)).collect();
            let mut ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
            ids.sort();
            ids.dedup();
            let out = answer_stranded(&EngineConfig::default(), rows);
            let mut answered: Vec<Uuid> = out.iter().flat_map(|o| o.inbound_ids.clone()).collect();
            answered.sort();
            prop_assert_eq!(answered, ids);
        }
    }
}
