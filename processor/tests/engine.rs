//! Deterministic simulated-time tests of the pure window engine: every spec
//! example, the window boundaries, close, late records and duplicates.

use chatpipe_core::Event;
use chatpipe_processor::engine::domain::{EngineConfig, Record};
use chatpipe_processor::engine::effects::{Effect, Reason};
use chatpipe_processor::engine::memstore::MemStore;
use chatpipe_processor::engine::reply::{reply_id, reply_text};
use chatpipe_processor::engine::window::PartitionEngine;
use chrono::{TimeZone, Utc};
use uuid::Uuid;

const T0: i64 = 1_750_000_000_000;

struct Sim {
    engine: PartitionEngine,
    store: MemStore,
    offset: i64,
    effects: Vec<Effect>,
}

impl Sim {
    fn new() -> Self {
        Self::with(EngineConfig::default())
    }
    fn with(cfg: EngineConfig) -> Self {
        Sim {
            engine: PartitionEngine::new(cfg, 0),
            store: MemStore::default(),
            offset: 0,
            effects: vec![],
        }
    }
    fn feed(&mut self, at_ms: i64, event: Event) -> i64 {
        let r = Record {
            offset: self.offset,
            arrival_ms: T0 + at_ms,
            event,
        };
        self.offset += 1;
        self.engine.begin_batch(1000);
        self.store
            .preload(&mut self.engine, std::slice::from_ref(&r));
        let mut out = vec![];
        self.engine.on_record(r, &mut out);
        self.store.apply(&out);
        self.effects.extend(out);
        self.offset - 1
    }
    fn tick(&mut self, at_ms: i64) {
        let mut out = vec![];
        self.engine.advance_watermark(T0 + at_ms, &mut out);
        self.store.apply(&out);
        self.effects.extend(out);
    }
    fn replies(&self) -> Vec<(Uuid, Vec<Uuid>, i64, bool)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Outbound(o) => Some((
                    o.conversation_id,
                    o.inbound_ids.clone(),
                    o.timestamp_ms - T0,
                    o.flushed_by_close,
                )),
                _ => None,
            })
            .collect()
    }
    fn rejections(&self) -> Vec<(Uuid, Reason)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Rejected(r) => Some((r.event.id(), r.reason)),
                _ => None,
            })
            .collect()
    }
    fn inbound(&self) -> Vec<Uuid> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Inbound(m) => Some(m.id),
                _ => None,
            })
            .collect()
    }
}

fn ts() -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(T0).unwrap()
}
fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}
fn conv(c: Uuid) -> Event {
    Event::NewConversation {
        id: c,
        timestamp: ts(),
    }
}
fn close(c: Uuid) -> Event {
    Event::CloseConversation {
        id: c,
        timestamp: ts(),
    }
}
/// A lifecycle event with another event time than [`ts`].
fn conv_at(c: Uuid, ms: i64) -> Event {
    Event::NewConversation {
        id: c,
        timestamp: Utc.timestamp_millis_opt(T0 + ms).unwrap(),
    }
}
fn close_at(c: Uuid, ms: i64) -> Event {
    Event::CloseConversation {
        id: c,
        timestamp: Utc.timestamp_millis_opt(T0 + ms).unwrap(),
    }
}
fn msg(m: Uuid, c: Uuid) -> Event {
    msg_with(m, c, "hi")
}
fn msg_with(m: Uuid, c: Uuid, content: &str) -> Event {
    Event::NewMessage {
        id: m,
        conversation_id: c,
        content: content.into(),
        timestamp: ts(),
    }
}

/// Spec example: a burst of messages within G gets one reply listing the
/// ids in arrival order, timestamped last arrival + G.
#[test]
fn burst_gets_one_reply() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    s.feed(2_000, msg(id(2), c));
    s.feed(3_000, msg(id(3), c));
    s.tick(8_000);
    assert!(s.replies().is_empty(), "no reply before last + G");
    s.tick(8_001);
    assert_eq!(
        s.replies(),
        vec![(c, vec![id(1), id(2), id(3)], 8_000, false)]
    );
    let out = s
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Outbound(o) => Some(o.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        out.content,
        format!("Mensagens recebidas:\n{}\n{}\n{}\n", id(1), id(2), id(3))
    );
    assert_eq!(out.id, reply_id(&[id(1), id(2), id(3)]));
    assert_eq!(out.content, reply_text(&[id(1), id(2), id(3)]));
    assert_eq!(s.engine.resume_offset(), 4);
}

/// A single message is a group of one.
#[test]
fn single_message_group() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(10, msg(id(1), c));
    s.tick(100_000);
    assert_eq!(s.replies(), vec![(c, vec![id(1)], 5_010, false)]);
}

fn two_messages_gap(gap: i64) -> Vec<(Uuid, Vec<Uuid>, i64, bool)> {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    s.feed(1_000 + gap, msg(id(2), c));
    s.tick(100_000);
    s.replies()
}

#[test]
fn gap_boundaries() {
    let c = id(100);
    assert_eq!(
        two_messages_gap(4_999),
        vec![(c, vec![id(1), id(2)], 10_999, false)]
    );
    assert_eq!(
        two_messages_gap(5_000),
        vec![(c, vec![id(1), id(2)], 11_000, false)]
    );
    assert_eq!(
        two_messages_gap(5_001),
        vec![
            (c, vec![id(1)], 6_000, false),
            (c, vec![id(2)], 11_001, false)
        ]
    );
}

/// Same boundary with a caught-up partition whose wall clock reaches the
/// deadline exactly: still no reply at last + G, one at last + G + 1 ms.
#[test]
fn clock_reaching_deadline_exactly_does_not_close() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    s.tick(6_000);
    s.feed(6_000, msg(id(2), c));
    s.tick(11_000);
    assert!(s.replies().is_empty());
    s.tick(11_001);
    assert_eq!(s.replies(), vec![(c, vec![id(1), id(2)], 11_000, false)]);
}

fn orphan_lead(lead: i64) -> (Vec<Uuid>, Vec<(Uuid, Reason)>) {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, msg(id(1), c));
    s.feed(lead, conv(c));
    s.tick(100_000);
    (s.inbound(), s.rejections())
}

#[test]
fn orphan_boundaries() {
    assert_eq!(orphan_lead(5_999), (vec![id(1)], vec![]));
    assert_eq!(orphan_lead(6_000), (vec![id(1)], vec![]));
    assert_eq!(
        orphan_lead(6_001),
        (vec![], vec![(id(1), Reason::ConversationNotCreatedInTime)])
    );
}

/// An orphan is rejected once the watermark passes arrival + L even when
/// its conversation never comes; an attached late message is grouped from
/// its own arrival.
#[test]
fn orphan_expires_by_watermark_and_attached_groups_normally() {
    let mut s = Sim::new();
    let (a, b) = (id(100), id(200));
    s.feed(0, msg(id(1), a));
    s.feed(1_000, msg(id(2), b));
    s.feed(3_000, conv(b));
    assert_eq!(s.engine.buffered_orphans(), 1);
    assert_eq!(s.engine.resume_offset(), 0);
    s.tick(6_000);
    assert!(s.rejections().is_empty());
    s.tick(6_001);
    assert_eq!(
        s.rejections(),
        vec![(id(1), Reason::ConversationNotCreatedInTime)]
    );
    assert_eq!(s.replies(), vec![(b, vec![id(2)], 6_000, false)]);
    assert_eq!(s.engine.resume_offset(), 3);
}

/// Orphans attached together are split by their own gaps.
#[test]
fn attached_orphans_keep_their_gaps() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, msg(id(1), c));
    s.feed(5_500, msg(id(2), c));
    s.feed(5_800, conv(c));
    s.tick(100_000);
    assert_eq!(
        s.replies(),
        vec![
            (c, vec![id(1)], 5_000, false),
            (c, vec![id(2)], 10_500, false)
        ]
    );
}

/// A steady trickle every 3 s for 9 s is one group.
#[test]
fn trickle_every_3s_is_one_reply() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    for (i, t) in [0, 3_000, 6_000, 9_000].into_iter().enumerate() {
        s.tick(t);
        s.feed(t, msg(id(i as u128 + 1), c));
        s.tick(t + 2_999);
    }
    assert!(s.replies().is_empty());
    s.tick(14_001);
    assert_eq!(
        s.replies(),
        vec![(c, vec![id(1), id(2), id(3), id(4)], 14_000, false)]
    );
}

/// CLOSE flushes the open group at once; later messages are rejected.
#[test]
fn close_flushes_and_rejects_later_messages() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    s.feed(1_500, close(c));
    assert_eq!(s.replies(), vec![(c, vec![id(1)], 6_000, true)]);
    s.feed(1_600, msg(id(2), c));
    assert_eq!(s.rejections(), vec![(id(2), Reason::ConversationClosed)]);
    // Identical redeliveries (same id, type, timestamp) are duplicates;
    // different events for the taken id are rejected.
    s.feed(1_650, close(c));
    s.feed(1_660, conv(c));
    assert_eq!(s.engine.stats().lifecycle_duplicates, 2);
    s.feed(1_700, close_at(c, 1));
    s.feed(1_800, close(id(999)));
    s.feed(1_900, conv_at(c, 1));
    assert_eq!(
        s.rejections(),
        vec![
            (id(2), Reason::ConversationClosed),
            (c, Reason::ConversationAlreadyClosed),
            (id(999), Reason::ConversationNotFound),
            (c, Reason::ConversationAlreadyExists),
        ]
    );
    s.tick(100_000);
    assert_eq!(s.replies().len(), 1);
    assert_eq!(s.engine.resume_offset(), s.engine.next_offset());
}

/// A record older than a written group starts a new group and never
/// reopens the written one.
#[test]
fn record_older_than_written_group_starts_new_group() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(10_000, msg(id(1), c));
    s.tick(15_001);
    assert_eq!(s.replies(), vec![(c, vec![id(1)], 15_000, false)]);
    // Arrives behind the watermark, within G of the written group.
    s.feed(9_000, msg(id(2), c));
    assert_eq!(
        s.replies(),
        vec![
            (c, vec![id(1)], 15_000, false),
            (c, vec![id(2)], 14_000, false)
        ]
    );
    assert_eq!(s.engine.stats().late_new_groups, 1);
    assert_eq!(s.engine.stats().late_records, 1);
}

/// Duplicates (in the window, or stored) change nothing; a reused id with
/// other content is rejected.
#[test]
fn duplicates() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    s.feed(1_100, msg(id(1), c));
    s.feed(1_200, msg_with(id(1), c, "other"));
    s.tick(7_000);
    s.feed(7_000, msg(id(1), c));
    s.feed(7_100, msg_with(id(1), c, "other"));
    s.tick(100_000);
    assert_eq!(s.replies(), vec![(c, vec![id(1)], 6_000, false)]);
    assert_eq!(s.inbound(), vec![id(1)]);
    assert_eq!(
        s.rejections(),
        vec![
            (id(1), Reason::IdReusedWithDifferentContent),
            (id(1), Reason::IdReusedWithDifferentContent)
        ]
    );
    assert_eq!(s.engine.stats().duplicates, 2);
}

/// Shortened windows work the same way.
#[test]
fn configurable_windows() {
    let mut s = Sim::with(EngineConfig {
        gap_ms: 500,
        tolerance_ms: 600,
        ..EngineConfig::default()
    });
    let c = id(100);
    s.feed(0, msg(id(1), c));
    s.feed(600, conv(c));
    s.feed(1_100, msg(id(2), c));
    s.feed(1_601, msg(id(3), c));
    s.tick(10_000);
    assert_eq!(
        s.replies(),
        vec![
            (c, vec![id(1)], 500, false),
            (c, vec![id(2)], 1_600, false),
            (c, vec![id(3)], 2_101, false)
        ]
    );
}

/// Replay after a "crash": a new engine pre-loaded from the store and fed
/// from the resume offset produces no new rows and rebuilds open windows.
#[test]
fn replay_from_resume_offset_is_idempotent() {
    let c1 = id(100);
    let c2 = id(200);
    let events = vec![
        (0, conv(c1)),
        (100, msg(id(1), c1)),
        (200, conv(c2)),
        (300, msg(id(2), c2)),
        (5_200, msg(id(3), c1)),
        (6_000, msg(id(4), c2)),
    ];
    let mut live = Sim::new();
    for (t, e) in &events {
        live.feed(*t, e.clone());
    }
    let resume = live.engine.resume_offset();
    assert_eq!(resume, 4, "c1's second group and c2's group are open");
    let snapshot = live.store.clone();
    live.tick(100_000);

    let mut replay = Sim::new();
    replay.engine = PartitionEngine::new(EngineConfig::default(), resume);
    replay.store = snapshot;
    replay.offset = 0;
    for (t, e) in &events {
        replay.feed(*t, e.clone());
    }
    replay.tick(100_000);
    assert_eq!(replay.store, live.store);
    let _ = replay.store.replies();
}

/// An accepted message is stored (without reply) by the batch that accepts
/// it, so the api shows it at once; the batch that closes its group writes
/// the reply and records it on every INBOUND row of the group.
#[test]
fn inbound_visible_on_accept_reply_recorded_on_close() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(1_000, msg(id(1), c));
    let m1 = &s.store.messages[&id(1)];
    assert!(!m1.outbound);
    assert_eq!(m1.reply_id, None, "visible before its reply");
    s.feed(2_000, msg(id(2), c));
    assert_eq!(s.store.messages[&id(2)].reply_id, None);
    assert!(s.store.replies().is_empty());
    s.tick(7_000);
    assert_eq!(s.store.messages[&id(1)].reply_id, None, "group still open");
    s.tick(7_001);
    let reply = reply_id(&[id(1), id(2)]);
    assert_eq!(s.store.messages[&id(1)].reply_id, Some(reply));
    assert_eq!(s.store.messages[&id(2)].reply_id, Some(reply));
    assert!(s.store.messages[&reply].outbound);
    // The Inbound effects came with the accepting records, before the reply.
    let kinds: Vec<&str> = s
        .effects
        .iter()
        .map(|e| match e {
            Effect::Inbound(_) => "in",
            Effect::Outbound(_) => "out",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["other", "in", "in", "out"]);
}

/// An orphan is invisible until attached, then visible without reply.
#[test]
fn orphan_invisible_until_attached() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, msg(id(1), c));
    assert!(!s.store.messages.contains_key(&id(1)));
    s.feed(2_000, conv(c));
    assert_eq!(s.store.messages[&id(1)].reply_id, None);
    s.tick(100_000);
    assert_eq!(s.store.messages[&id(1)].reply_id, Some(reply_id(&[id(1)])));
}

/// A crash while a group is open: its rows are stored without reply; the
/// replay from the resume offset re-accepts them (not duplicates), and the
/// reply is written once, recorded on every row, as without the crash.
#[test]
fn replay_rebuilds_open_group_from_rows_without_reply() {
    let c = id(100);
    let events = vec![(0, conv(c)), (1_000, msg(id(1), c)), (2_000, msg(id(2), c))];
    let mut live = Sim::new();
    for (t, e) in &events {
        live.feed(*t, e.clone());
    }
    let resume = live.engine.resume_offset();
    assert_eq!(resume, 1);
    let snapshot = live.store.clone();
    assert_eq!(snapshot.messages.len(), 2);
    assert!(snapshot.messages.values().all(|m| m.reply_id.is_none()));
    live.feed(2_500, msg(id(3), c));
    live.tick(100_000);

    let mut replay = Sim::new();
    replay.engine = PartitionEngine::new(EngineConfig::default(), resume);
    replay.store = snapshot;
    for (t, e) in &events {
        replay.feed(*t, e.clone());
    }
    replay.feed(2_500, msg(id(3), c));
    replay.tick(100_000);
    assert_eq!(replay.engine.stats().duplicates, 0);
    assert_eq!(
        replay.replies(),
        vec![(c, vec![id(1), id(2), id(3)], 7_500, false)]
    );
    assert_eq!(replay.store, live.store);
    let reply = reply_id(&[id(1), id(2), id(3)]);
    for m in [id(1), id(2), id(3)] {
        assert_eq!(replay.store.messages[&m].reply_id, Some(reply));
    }
}

/// A conversation that keeps talking within the gap is answered when its
/// group reaches the maximum span, and the next message starts a group.
#[test]
fn groups_are_bounded_by_span() {
    let mut s = Sim::with(EngineConfig {
        max_group_span_ms: 10_000,
        ..EngineConfig::default()
    });
    let c = id(100);
    s.feed(0, conv(c));
    // Every 3 s for 30 s: within G of each other, forever.
    for i in 0..10u128 {
        s.feed(1_000 + 3_000 * i as i64, msg(id(i + 1), c));
        s.tick(1_000 + 3_000 * i as i64 + 1);
    }
    s.tick(100_000);
    let replies = s.replies();
    // Groups of first..first+10 s: arrivals 1,4,7,10 | 13,16,19 (22 > 23?) ...
    assert!(replies.len() >= 3, "{replies:?}");
    for (_, ids, ts, _) in &replies {
        assert!(!ids.is_empty());
        assert!(*ts > 0);
    }
    let all: Vec<Uuid> = replies.iter().flat_map(|r| r.1.clone()).collect();
    assert_eq!(
        all,
        (1..=10).map(id).collect::<Vec<_>>(),
        "every message answered once, in order"
    );
    // The first group ends at its span: first arrival + 10 s.
    assert_eq!(replies[0].1, vec![id(1), id(2), id(3), id(4)]);
    assert_eq!(replies[0].2, 11_000);
    assert_eq!(s.engine.stats().capped_groups, 2);
    assert_eq!(s.engine.resume_offset(), s.engine.next_offset());
}

/// A group is answered as soon as it has the maximum number of messages.
#[test]
fn groups_are_bounded_by_size() {
    let mut s = Sim::with(EngineConfig {
        max_group_messages: 3,
        ..EngineConfig::default()
    });
    let c = id(100);
    s.feed(0, conv(c));
    for i in 0..7u128 {
        s.feed(100 + i as i64, msg(id(i + 1), c));
    }
    // Two full groups answered at once (at their last arrival), one open.
    assert_eq!(
        s.replies(),
        vec![
            (c, vec![id(1), id(2), id(3)], 102, false),
            (c, vec![id(4), id(5), id(6)], 105, false),
        ]
    );
    s.tick(100_000);
    assert_eq!(s.replies().len(), 3);
    assert_eq!(s.replies()[2].1, vec![id(7)]);
    assert_eq!(s.engine.stats().capped_groups, 2);
}

/// A message reusing a reply's id is rejected and never touches the reply.
#[test]
fn message_reusing_a_reply_id_is_rejected() {
    let mut s = Sim::new();
    let c = id(100);
    s.feed(0, conv(c));
    s.feed(100, msg(id(1), c));
    s.tick(10_000);
    let reply = reply_id(&[id(1)]);
    s.feed(10_100, msg(reply, c));
    assert_eq!(s.rejections(), vec![(reply, Reason::IdUsedByReply)]);
    assert!(s.store.messages[&reply].outbound);
    assert_eq!(s.store.messages[&reply].content, reply_text(&[id(1)]));
    // Its redelivery is rejected again (the id is not its own).
    s.feed(10_200, msg(reply, c));
    assert_eq!(s.rejections().len(), 2);
}

/// Arrival arithmetic saturates: extreme record timestamps neither panic
/// nor wrap around.
#[test]
fn extreme_arrivals_do_not_overflow() {
    let mut e = PartitionEngine::new(EngineConfig::default(), 0);
    let c = id(100);
    let mut out = vec![];
    for (i, at) in [i64::MAX - 1, i64::MAX, i64::MIN, 0]
        .into_iter()
        .enumerate()
    {
        e.on_record(
            Record {
                offset: 2 * i as i64,
                arrival_ms: at,
                event: conv(c),
            },
            &mut out,
        );
        e.on_record(
            Record {
                offset: 2 * i as i64 + 1,
                arrival_ms: at,
                event: msg(id(i as u128 + 1), c),
            },
            &mut out,
        );
    }
    e.advance_watermark(i64::MAX, &mut out);
    assert!(out.iter().any(|e| matches!(e, Effect::Outbound(_))));
}
