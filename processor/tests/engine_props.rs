//! Property tests of the window engine over random interleavings of
//! events (simulated time): grouping invariants, orphan rule, nothing
//! silently dropped, accepted messages stored in the commit that accepts
//! them (their reply recorded when the group closes), and replay
//! equivalence from any committed resume position with the state persisted
//! as of that commit. Also: holding INBOUND rows while a partition is
//! behind ([`PendingInbound`]) changes no final row and keeps replay exact.

use std::collections::{BTreeMap, HashMap};

use chatpipe_core::Event;
use chatpipe_processor::engine::domain::{EngineConfig, Record};
use chatpipe_processor::engine::effects::{Effect, Reason};
use chatpipe_processor::engine::memstore::MemStore;
use chatpipe_processor::engine::visibility::PendingInbound;
use chatpipe_processor::engine::window::PartitionEngine;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

const G: i64 = 50;
const L: i64 = 60;
/// Unbounded groups: the invariants below are those of the gap rule alone
/// (the bounds have tests of their own).
const CFG: EngineConfig = EngineConfig {
    gap_ms: G,
    tolerance_ms: L,
    max_group_span_ms: i64::MAX,
    max_group_messages: usize::MAX,
};

#[derive(Debug, Clone)]
enum Input {
    Rec(Record),
    Tick(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Conv(u8),
    Msg(u8, u8, bool),
    Close(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..4).prop_map(Op::Conv),
        10 => (0u8..4, 0u8..40, prop::bool::weighted(0.05)).prop_map(|(c, m, alt)| Op::Msg(c, m, alt)),
        1 => (0u8..4).prop_map(Op::Close),
    ]
}

/// (op, arrival step, tick before the record: fraction of the step)
fn inputs() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec((op(), 0i64..90, prop::option::of(0i64..=100)), 1..60).prop_map(|steps| {
        let mut t = 0i64;
        let mut out = vec![];
        for (i, (op, step, tick)) in steps.into_iter().enumerate() {
            let next = t + step;
            if let Some(f) = tick {
                // A caught-up consumer's clock (minus allowance) never passes
                // the next record's arrival.
                out.push(Input::Tick(t + step * f / 100));
            }
            t = next;
            let ts = Utc.timestamp_millis_opt(0).unwrap();
            let event = match op {
                Op::Conv(c) => Event::NewConversation {
                    id: conv(c),
                    timestamp: ts,
                },
                Op::Close(c) => Event::CloseConversation {
                    id: conv(c),
                    timestamp: ts,
                },
                Op::Msg(c, m, alt) => Event::NewMessage {
                    id: Uuid::from_u128(1_000 + m as u128),
                    conversation_id: conv(c),
                    content: if alt { "other".into() } else { format!("m{m}") },
                    timestamp: ts,
                },
            };
            out.push(Input::Rec(Record {
                offset: i as i64,
                arrival_ms: t,
                event,
            }));
        }
        out.push(Input::Tick(t + 10 * (G + L)));
        out
    })
}

fn conv(c: u8) -> Uuid {
    Uuid::from_u128(c as u128 + 1)
}

/// The engine's effects for one input fed as its own batch (pre-loaded
/// from `store` as the shell does), not yet applied.
fn decide(engine: &mut PartitionEngine, store: &MemStore, input: &Input) -> Vec<Effect> {
    let mut out = vec![];
    match input {
        Input::Rec(r) => {
            engine.begin_batch(2);
            store.preload(engine, std::slice::from_ref(r));
            engine.on_record(r.clone(), &mut out);
        }
        Input::Tick(t) => engine.advance_watermark(*t, &mut out),
    }
    out
}

/// Feeds one input as its own committed batch; returns its effects.
fn step(engine: &mut PartitionEngine, store: &mut MemStore, input: &Input) -> Vec<Effect> {
    let out = decide(engine, store, input);
    store.apply(&out);
    out
}

/// [`step`] with the shell's INBOUND holding: `caught_up` and the wall
/// time `now` decide which rows are written in this commit.
fn step_held(
    engine: &mut PartitionEngine,
    held: &mut PendingInbound,
    store: &mut MemStore,
    input: &Input,
    now: i64,
    caught_up: bool,
) -> Vec<Effect> {
    let out = decide(engine, store, input);
    store.apply(&held.route(out.clone(), now, 100, caught_up));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn held_inbound_rows_change_nothing(
        inputs in inputs(),
        modes in prop::collection::vec((any::<bool>(), 0i64..60), 64),
        cut in any::<prop::sample::Index>(),
    ) {
        // Reference: every row written in the commit that accepts it.
        let mut engine = PartitionEngine::new(CFG, 0);
        let mut reference = MemStore::default();
        for input in &inputs {
            step(&mut engine, &mut reference, input);
        }
        // Held: random caught-up flags and wall-clock steps per commit.
        let mut engine = PartitionEngine::new(CFG, 0);
        let mut held = PendingInbound::new();
        let mut store = MemStore::default();
        let mut now = 0;
        let mut commits = vec![];
        let mut accepted_at: HashMap<Uuid, i64> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let (caught_up, dt) = modes[i % modes.len()];
            now += dt;
            for e in step_held(&mut engine, &mut held, &mut store, input, now, caught_up) {
                if let Effect::Inbound(m) = e {
                    accepted_at.entry(m.id).or_insert(m.offset);
                }
            }
            // A written row without reply is still re-read by a replay.
            for (id, m) in &store.messages {
                if !m.outbound && m.reply_id.is_none() {
                    prop_assert!(accepted_at[id] >= engine.resume_offset());
                }
            }
            commits.push((i, store.clone(), engine.resume_offset()));
        }
        // Every group was closed by the final tick, so nothing is held.
        prop_assert!(held.is_empty());
        prop_assert_eq!(&store, &reference);

        // A crash after any commit (held rows lost) replays to the same rows.
        let (k, snapshot, resume) = commits[cut.index(commits.len())].clone();
        let mut replay = PartitionEngine::new(CFG, resume);
        let mut held = PendingInbound::new();
        let mut rstore = snapshot;
        let already: Vec<Input> = inputs[..=k].iter().filter(|i| matches!(i, Input::Rec(r) if r.offset >= resume)).cloned().collect();
        for (j, input) in already.iter().chain(inputs[k + 1..].iter()).enumerate() {
            let (caught_up, dt) = modes[(j * 7) % modes.len()];
            now += dt;
            step_held(&mut replay, &mut held, &mut rstore, input, now, caught_up);
        }
        prop_assert_eq!(rstore, reference);
    }

    #[test]
    fn invariants_and_replay(inputs in inputs(), cut in any::<prop::sample::Index>()) {
        // Live run, keeping the committed state after every input.
        let mut engine = PartitionEngine::new(CFG, 0);
        let mut store = MemStore::default();
        let mut effects = vec![];
        let mut commits = vec![];
        let mut accepted_at: HashMap<Uuid, i64> = HashMap::new();
        for (i, input) in inputs.iter().enumerate() {
            let out = step(&mut engine, &mut store, input);
            for e in &out {
                if let Effect::Outbound(o) = e {
                    if !o.flushed_by_close {
                        // No reply before last arrival + G.
                        prop_assert!(engine.watermark().unwrap() > o.last_arrival_ms + G);
                    }
                }
                if let Effect::Inbound(m) = e {
                    // Visible in the commit that accepts it.
                    prop_assert!(store.messages.get(&m.id).is_some_and(|s| !s.outbound));
                    accepted_at.entry(m.id).or_insert(m.offset);
                }
            }
            // A stored INBOUND without reply belongs to an open group, so a
            // replay from this commit's resume offset re-reads it.
            for (id, m) in &store.messages {
                if !m.outbound && m.reply_id.is_none() {
                    prop_assert!(accepted_at[id] >= engine.resume_offset(),
                        "unreplied {} at {} before resume {}", id, accepted_at[id], engine.resume_offset());
                }
            }
            effects.extend(out);
            commits.push((i, store.clone(), engine.resume_offset()));
        }

        let records: Vec<&Record> = inputs.iter().filter_map(|i| match i { Input::Rec(r) => Some(r), _ => None }).collect();
        let mut arrival: HashMap<Uuid, i64> = HashMap::new();
        let mut covered: HashMap<Uuid, usize> = HashMap::new();
        let mut groups: BTreeMap<Uuid, Vec<(i64, i64)>> = BTreeMap::new();
        for e in &effects {
            match e {
                Effect::Inbound(m) => { arrival.entry(m.id).or_insert(m.arrival_ms); }
                Effect::Outbound(o) => {
                    let a: Vec<i64> = o.inbound_ids.iter().map(|id| arrival[id]).collect();
                    for w in a.windows(2) {
                        prop_assert!(w[1] >= w[0] && w[1] - w[0] <= G, "gap inside a group");
                    }
                    for id in &o.inbound_ids { *covered.entry(*id).or_default() += 1; }
                    groups.entry(o.conversation_id).or_default().push((a[0], *a.last().unwrap()));
                }
                _ => {}
            }
        }
        // Every accepted inbound in exactly one reply.
        for id in arrival.keys() {
            prop_assert_eq!(covered.get(id).copied(), Some(1));
            prop_assert!(store.messages[id].reply_id.is_some());
        }
        // Consecutive groups of a conversation are more than G apart.
        for gs in groups.values() {
            for w in gs.windows(2) {
                prop_assert!(w[1].0 - w[0].1 > G, "groups too close: {:?}", gs);
            }
        }
        // Orphan rule, and nothing silently dropped.
        let first_conv: HashMap<Uuid, &Record> = records.iter().rev()
            .filter(|r| matches!(r.event, Event::NewConversation { .. }))
            .map(|r| (r.event.id(), *r)).collect();
        let mut first_msg: HashMap<Uuid, &Record> = HashMap::new();
        for r in &records {
            if let Event::NewMessage { id, conversation_id, content, .. } = &r.event {
                let first = *first_msg.entry(*id).or_insert(r);
                let stored = store.messages.get(id);
                let rejected = store.rejected.get(&r.offset);
                // A redelivery shares the fate of an earlier identical delivery.
                let earlier_rejected = records.iter().any(|e| e.offset < r.offset && e.event == r.event && store.rejected.contains_key(&e.offset));
                prop_assert!(rejected.is_some()
                    || stored.is_some_and(|m| &m.content == content && m.conversation_id == *conversation_id)
                    || earlier_rejected,
                    "message at {} neither stored nor rejected", r.offset);
                if first.offset == r.offset {
                    let closed_before = records.iter().any(|c| c.offset < r.offset && matches!(c.event, Event::CloseConversation { id: cid, .. } if cid == *conversation_id)
                        && !store.rejected.contains_key(&c.offset));
                    if closed_before { continue; }
                    match first_conv.get(conversation_id) {
                        Some(c) if c.offset > r.offset => {
                            let within = c.arrival_ms <= r.arrival_ms + L;
                            prop_assert_eq!(rejected.is_none(), within, "orphan at {}", r.offset);
                            if within {
                                prop_assert!(stored.is_some());
                            } else {
                                prop_assert_eq!(rejected.map(|x| x.1), Some(Reason::ConversationNotCreatedInTime));
                            }
                        }
                        None => prop_assert_eq!(rejected.map(|x| x.1), Some(Reason::ConversationNotCreatedInTime)),
                        _ => prop_assert!(stored.is_some()),
                    }
                }
            }
        }

        // Replay from a committed resume position with the state as of that
        // commit: same final store.
        let (k, snapshot, resume) = commits[cut.index(commits.len())].clone();
        let mut replay = PartitionEngine::new(CFG, resume);
        let mut rstore = snapshot;
        let already: Vec<Input> = inputs[..=k].iter().filter(|i| matches!(i, Input::Rec(r) if r.offset >= resume)).cloned().collect();
        for input in already.iter().chain(inputs[k + 1..].iter()) {
            step(&mut replay, &mut rstore, input);
        }
        prop_assert_eq!(rstore, store);
    }
}
