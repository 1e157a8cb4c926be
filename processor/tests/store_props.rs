//! Property tests of the engine against the REAL Postgres store, fed the
//! way the shell (`pipeline.rs`) feeds it: multi-record poll batches, each
//! one `begin_batch`, pre-loading from Postgres (`load_conversations`,
//! `load_messages`, `load_decided_offsets` below the claim's processed
//! offset), `on_record` per record, an optional wall-clock advance, the
//! INBOUND holding of a partition that is behind ([`PendingInbound`]),
//! `resolve_reply_ids` and one `write_batch` with the partition's
//! position under the epoch of an `ownership::claim`.
//!
//! The generated logs have late, out-of-order and clock-skewed arrivals
//! (some far behind the watermark, some ahead of it), wall-clock ticks
//! between batches that may pass later records, duplicates, identical and
//! different NEW_CONVERSATION / CLOSE redeliveries, messages reusing ids
//! (another conversation's, with other content, and an automatic reply's
//! id computed with [`reply_id`]), and random group bounds.
//!
//! - `postgres_matches_memstore_and_drops_nothing`: after every commit the
//!   Postgres rows (messages: id, conversation, direction, content,
//!   reply_id, time; rejected_events: source offset → event id, reason;
//!   conversation status; conversation log positions; partition position)
//!   equal the [`MemStore`] model fed the same batches; at the end nothing
//!   was silently dropped.
//! - `crash_at_any_commit_replays_to_the_same_postgres_state`: a crash
//!   after a random commit (a new claim and a new engine from the
//!   committed resume offset, re-reading the records from there with
//!   Postgres pre-loading) ends in the same Postgres rows as a run without
//!   crash.
//!
//! - `crash_replay_judges_later_records_against_the_same_watermark` and
//!   `held_message_whose_id_a_reply_takes_is_not_lost`: the minimal cases
//!   of what the properties found (see their docs); the shrunk cases are
//!   also kept in `store_props.proptest-regressions`.
//!
//! One database per test function; each case writes its own topic and
//! its own ids (a per-case prefix), and compares only its own rows.
//! `PROPTEST_CASES=<n>` runs more cases; the counts of what the cases
//! exercised are printed with `--nocapture`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use chatpipe_core::Event;
use chatpipe_processor::engine::domain::{ConversationLog, EngineConfig, Record};
use chatpipe_processor::engine::effects::Effect;
use chatpipe_processor::engine::memstore::MemStore;
use chatpipe_processor::engine::reply::{reply_id, reply_id_salted};
use chatpipe_processor::engine::visibility::PendingInbound;
use chatpipe_processor::engine::window::PartitionEngine;
use chatpipe_processor::ownership::{claim, PositionUpdate};
use chatpipe_processor::store::{
    load_conversations, load_decided_offsets, load_messages, message_ids, resolve_reply_ids,
    write_batch, PartitionBatch,
};
use chatpipe_tests::TestDb;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use tokio_postgres::Client;
use uuid::Uuid;

const G: i64 = 50;
const L: i64 = 60;
/// Arrivals are `T0 + simulated ms`.
const T0: i64 = 1_750_000_000_000;
/// `inbound_max_delay` of the simulated shell (ms of simulated wall time).
const MAX_DELAY: i64 = 2 * G;
const CASES: u32 = 32;
const PARTITION: i32 = 0;

/// Per-case id prefix (and topic suffix), so cases share a database.
static NEXT_CASE: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------
// Generated input
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// NEW_CONVERSATION of conversation `c` with event-time variant `ts`
    /// (the same variant again is an identical redelivery).
    Conv { c: u8, ts: u8 },
    /// CLOSE_CONVERSATION of `c`, event-time variant `ts`.
    Close { c: u8, ts: u8 },
    /// NEW_MESSAGE `m`, in conversation `m % 4` unless `conv` says
    /// otherwise (the id reused by another conversation); `alt` = other
    /// content for the same id.
    Msg { m: u8, conv: Option<u8>, alt: bool },
    /// A NEW_MESSAGE in `c` whose id is the reply id of the group of
    /// messages `m, m + 4, …` (`len` of them: one conversation's).
    ReplyIdMsg { c: u8, m: u8, len: u8 },
}

/// Where a record's arrival stamp is relative to the true clock.
#[derive(Debug, Clone, Copy)]
enum Skew {
    None,
    /// A few ms either way (ingest replicas' clocks).
    Jitter(i64),
    /// Far behind: more than G + L behind the clock.
    Behind(i64),
    /// Ahead of the clock (a fast ingest clock).
    Ahead(i64),
}

impl Skew {
    fn ms(self) -> i64 {
        match self {
            Skew::None => 0,
            Skew::Jitter(d) => d,
            Skew::Behind(d) => -d,
            Skew::Ahead(d) => d,
        }
    }
}

/// One poll batch as the simulated shell sees it.
#[derive(Debug, Clone)]
struct BatchSpec {
    /// Records in this batch (0: a pure wall-clock tick).
    size: usize,
    /// Wall-clock watermark target after the records (caught up), relative
    /// to the true clock at the end of the batch; may pass later records.
    tick: Option<i64>,
    /// Whether the partition is live (INBOUND rows written at once) or
    /// behind (rows held until their reply or `MAX_DELAY`).
    live: bool,
    /// `begin_batch`'s conversation cache size (small: evictions reload
    /// conversations from Postgres).
    cache: usize,
}

#[derive(Debug, Clone)]
struct Case {
    bounds: u8,
    /// Conversations created up front (arrival 0).
    prelude: Vec<bool>,
    /// (event, clock advance before it, its arrival's skew)
    steps: Vec<(Op, i64, Skew)>,
    batches: Vec<BatchSpec>,
    /// Commit after which the crash test crashes (index into the commits).
    crash_at: prop::sample::Index,
    /// Batch sizes of the replay after the crash.
    replay_sizes: Vec<usize>,
}

fn op() -> impl Strategy<Value = Op> {
    let ts = |v: Vec<u8>| prop::sample::select(v);
    prop_oneof![
        2 => (0u8..4, ts(vec![0, 0, 0, 1])).prop_map(|(c, ts)| Op::Conv { c, ts }),
        1 => (0u8..4, ts(vec![0, 0, 1])).prop_map(|(c, ts)| Op::Close { c, ts }),
        14 => (
            0u8..24,
            prop::option::weighted(0.08, 0u8..4),
            prop::bool::weighted(0.06)
        )
            .prop_map(|(m, conv, alt)| Op::Msg { m, conv, alt }),
        1 => (0u8..4, 0u8..24, 1u8..=2).prop_map(|(c, m, len)| Op::ReplyIdMsg { c, m, len }),
    ]
}

fn skew() -> impl Strategy<Value = Skew> {
    prop_oneof![
        8 => Just(Skew::None),
        4 => (-G / 2..=G / 2).prop_map(Skew::Jitter),
        1 => (G + L + 1..3 * (G + L)).prop_map(Skew::Behind),
        2 => (1i64..2 * G).prop_map(Skew::Ahead),
    ]
}

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        7 => 0i64..=8,
        2 => 8..=G + 10,
        1 => 2 * G..3 * G,
    ]
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        prop_oneof![1 => Just(0usize), 6 => 1usize..6],
        prop::option::weighted(0.5, -2 * L..=2 * G),
        prop::bool::weighted(0.6),
        prop_oneof![1 => 0usize..3, 1 => Just(1_000usize)],
    )
        .prop_map(|(size, tick, live, cache)| BatchSpec {
            size,
            tick,
            // A caught-up partition (the only kind whose watermark the
            // wall clock moves) is live.
            live: live || tick.is_some(),
            cache,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        0u8..3,
        prop::collection::vec(prop::bool::weighted(0.75), 4),
        prop::collection::vec((op(), advance(), skew()), 1..50),
        prop::collection::vec(batch_spec(), 1..25),
        any::<prop::sample::Index>(),
        prop::collection::vec(1usize..5, 1..10),
    )
        .prop_map(
            |(bounds, prelude, steps, batches, crash_at, replay_sizes)| Case {
                bounds,
                prelude,
                steps,
                batches,
                crash_at,
                replay_sizes,
            },
        )
}

fn engine_config(bounds: u8) -> EngineConfig {
    let base = EngineConfig {
        gap_ms: G,
        tolerance_ms: L,
        ..EngineConfig::default()
    };
    match bounds {
        1 => EngineConfig {
            max_group_messages: 3,
            ..base
        },
        2 => EngineConfig {
            max_group_span_ms: 2 * G + 20,
            ..base
        },
        _ => base,
    }
}

/// Ids of one case: conversations and messages under the case's prefix.
#[derive(Debug, Clone, Copy)]
struct Ids {
    prefix: u128,
}

impl Ids {
    fn conv(&self, c: u8) -> Uuid {
        Uuid::from_u128((self.prefix << 64) | 0xC000 | c as u128)
    }
    fn msg(&self, m: u8) -> Uuid {
        Uuid::from_u128((self.prefix << 64) | 0xA000 | m as u128)
    }
    fn convs(&self) -> Vec<Uuid> {
        (0..4).map(|c| self.conv(c)).collect()
    }
}

/// A poll batch, materialised.
#[derive(Debug, Clone)]
struct Batch {
    records: Vec<Record>,
    /// Absolute watermark target, if the partition is caught up.
    tick: Option<i64>,
    live: bool,
    cache: usize,
    /// Simulated wall time (ms) of the batch.
    now: i64,
}

/// The case's log, cut into batches; a final caught-up tick far ahead
/// closes every group and expires every orphan.
fn materialise(case: &Case, ids: Ids) -> Vec<Batch> {
    let event_time = |variant: u8, base: i64| {
        // Microsecond precision: Postgres' and the duplicate check's.
        Utc.timestamp_micros((T0 + base) * 1_000 + variant as i64 * 1_000_123)
            .unwrap()
    };
    let mut clock = 0i64;
    let mut records = Vec::new();
    let mut clock_at = Vec::new();
    let prelude = case
        .prelude
        .iter()
        .enumerate()
        .filter(|(_, created)| **created)
        .map(|(c, _)| (Op::Conv { c: c as u8, ts: 0 }, 0, Skew::None));
    let steps: Vec<(Op, i64, Skew)> = prelude.chain(case.steps.iter().cloned()).collect();
    for (i, (op, advance, skew)) in steps.iter().enumerate() {
        clock += advance;
        let event = match op {
            Op::Conv { c, ts } => Event::NewConversation {
                id: ids.conv(*c),
                timestamp: event_time(*ts, *c as i64),
            },
            Op::Close { c, ts } => Event::CloseConversation {
                id: ids.conv(*c),
                timestamp: event_time(*ts, 100 + *c as i64),
            },
            Op::Msg { m, conv, alt } => Event::NewMessage {
                id: ids.msg(*m),
                conversation_id: ids.conv(conv.unwrap_or(m % 4)),
                content: if *alt {
                    format!("other {m}")
                } else {
                    format!("Olá {m} ✓")
                },
                timestamp: event_time(0, 1_000 + *m as i64),
            },
            Op::ReplyIdMsg { c, m, len } => {
                let members: Vec<Uuid> =
                    (0..*len).map(|k| ids.msg(m.wrapping_add(4 * k))).collect();
                Event::NewMessage {
                    id: reply_id(&members),
                    conversation_id: ids.conv(*c),
                    content: format!("takes the reply id of {m}+{len}"),
                    timestamp: event_time(0, 2_000 + *m as i64),
                }
            }
        };
        records.push(Record {
            offset: i as i64,
            arrival_ms: T0 + clock + skew.ms(),
            event,
        });
        clock_at.push(clock);
    }
    let mut out = Vec::new();
    let mut next = 0usize;
    for spec in &case.batches {
        if next >= records.len() && spec.size > 0 {
            break;
        }
        let end = (next + spec.size).min(records.len());
        let now_clock = if end > 0 { clock_at[end - 1] } else { 0 };
        out.push(Batch {
            records: records[next..end].to_vec(),
            tick: spec.tick.map(|d| T0 + now_clock + d),
            live: spec.live,
            cache: spec.cache,
            now: T0 + now_clock,
        });
        next = end;
    }
    if next < records.len() {
        out.push(Batch {
            records: records[next..].to_vec(),
            tick: None,
            live: false,
            cache: 1_000,
            now: T0 + clock,
        });
    }
    out.push(Batch {
        records: vec![],
        tick: Some(T0 + clock + 10 * (G + L) + 3 * (G + L)),
        live: true,
        cache: 1_000,
        now: T0 + clock + 10 * (G + L),
    });
    out
}

// ---------------------------------------------------------------------------
// The simulated shell over Postgres, and over MemStore
// ---------------------------------------------------------------------------

/// One partition owned by the simulated shell, writing to Postgres.
struct PgShell {
    topic: String,
    engine: PartitionEngine,
    held: PendingInbound,
    epoch: i64,
    /// Records below this offset may have stored decisions (the claim's
    /// processed offset).
    replay_until: i64,
}

impl PgShell {
    /// Claims the partition and starts from its committed positions.
    async fn claim(client: &Client, topic: &str, cfg: EngineConfig) -> PgShell {
        let c = claim(client, topic, PARTITION, "store-props")
            .await
            .expect("claim");
        PgShell {
            topic: topic.to_owned(),
            engine: PartitionEngine::from_positions(
                cfg,
                c.resume_offset,
                c.processed_offset,
                c.watermark_ms,
            ),
            held: PendingInbound::new(),
            epoch: c.epoch,
            replay_until: c.processed_offset,
        }
    }

    /// Feeds and commits one poll batch; returns what was written.
    async fn batch(&mut self, client: &mut Client, b: &Batch) -> Vec<Effect> {
        let e = &mut self.engine;
        e.begin_batch(b.cache);
        // Pre-load, as `Processor::preload`.
        let convs = e.conversations_to_load(&b.records);
        let loaded = load_conversations(&*client, &self.topic, &convs)
            .await
            .expect("load_conversations");
        for id in convs {
            e.load_conversation(id, loaded.get(&id).copied().unwrap_or_default());
        }
        let ids = message_ids(b.records.iter().map(|r| &r.event));
        for (id, m) in load_messages(&*client, &ids).await.expect("load_messages") {
            e.load_stored_message(id, m);
        }
        if let (Some(lo), Some(hi)) = (b.records.first(), b.records.last()) {
            if lo.offset < self.replay_until {
                let hi = hi.offset.min(self.replay_until - 1);
                for off in load_decided_offsets(&*client, &self.topic, PARTITION, lo.offset, hi)
                    .await
                    .expect("load_decided_offsets")
                {
                    e.load_decided_offset(off);
                }
            }
        }
        // Feed, as `Processor::feed`.
        let mut effects = Vec::new();
        for r in &b.records {
            e.on_record(r.clone(), &mut effects);
        }
        if let Some(t) = b.tick {
            e.advance_watermark(t, &mut effects);
        }
        let effects = self.held.route(effects, b.now, MAX_DELAY, b.live);
        let mut batches = [PartitionBatch {
            position: PositionUpdate {
                partition: PARTITION,
                epoch: self.epoch,
                resume_offset: e.resume_offset(),
                processed_offset: e.next_offset(),
                watermark_ms: e.watermark(),
            },
            effects,
        }];
        let held: std::collections::HashSet<Uuid> = self.held.ids().copied().collect();
        resolve_reply_ids(&*client, &mut batches, &held)
            .await
            .expect("resolve_reply_ids");
        write_batch(client, &self.topic, &batches)
            .await
            .expect("write_batch");
        let [b] = batches;
        b.effects
    }
}

/// The same shell over the in-memory model.
struct MemShell {
    engine: PartitionEngine,
    held: PendingInbound,
    store: MemStore,
}

impl MemShell {
    fn new(cfg: EngineConfig) -> MemShell {
        MemShell {
            engine: PartitionEngine::new(cfg, 0),
            held: PendingInbound::new(),
            store: MemStore::default(),
        }
    }

    fn batch(&mut self, b: &Batch) -> Vec<Effect> {
        let e = &mut self.engine;
        e.begin_batch(b.cache);
        self.store.preload(e, &b.records);
        let mut effects = Vec::new();
        for r in &b.records {
            e.on_record(r.clone(), &mut effects);
        }
        if let Some(t) = b.tick {
            e.advance_watermark(t, &mut effects);
        }
        let mut effects = self.held.route(effects, b.now, MAX_DELAY, b.live);
        let held: HashSet<Uuid> = self.held.ids().copied().collect();
        resolve_in_memory(&self.store, &held, &mut effects);
        self.store.apply(&effects);
        effects
    }
}

/// The model of `store::resolve_reply_ids`: a reply whose id is an INBOUND
/// message's (stored, written by this batch, or held for a later write), or
/// another reply's with different content, takes the next salted id.
fn resolve_in_memory(store: &MemStore, held: &HashSet<Uuid>, effects: &mut [Effect]) {
    let mut inbound: HashSet<Uuid> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Inbound(m) => Some(m.id),
            _ => None,
        })
        .collect();
    inbound.extend(held);
    for e in effects.iter_mut() {
        let Effect::Outbound(o) = e else { continue };
        for k in 1..=16u32 {
            let clash = inbound.contains(&o.id)
                || store.messages.get(&o.id).is_some_and(|m| {
                    !m.outbound || m.conversation_id != o.conversation_id || m.content != o.content
                });
            if !clash {
                break;
            }
            o.id = reply_id_salted(&o.inbound_ids, k);
        }
    }
}

// ---------------------------------------------------------------------------
// Comparable state
// ---------------------------------------------------------------------------

/// (conversation, outbound, content, reply_id, time ms: INBOUND arrival,
/// OUTBOUND timestamp)
type MessageRow = (Uuid, bool, String, Option<Uuid>, i64);

/// What a case wrote, comparable with the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    messages: BTreeMap<Uuid, MessageRow>,
    /// source offset → (event id, reason)
    rejected: BTreeMap<i64, (Uuid, String)>,
    /// conversation → status
    status: BTreeMap<Uuid, String>,
    /// conversation → persisted log positions
    log: BTreeMap<Uuid, ConversationLog>,
}

async fn pg_state(client: &Client, topic: &str, ids: Ids) -> State {
    let convs = ids.convs();
    let messages = client
        .query(
            "SELECT id, conversation_id, direction = 'OUTBOUND', content, reply_id,
                    (extract(epoch FROM CASE direction WHEN 'INBOUND' THEN arrival
                                                       ELSE \"timestamp\" END) * 1000)::int8
               FROM messages WHERE conversation_id = ANY($1)",
            &[&convs],
        )
        .await
        .expect("messages")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
        .collect();
    let rejected = client
        .query(
            "SELECT source_offset, event_id, reason FROM rejected_events
              WHERE source_topic = $1 AND source_partition = $2",
            &[&topic, &PARTITION],
        )
        .await
        .expect("rejected_events")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let status = client
        .query(
            "SELECT id, status FROM conversations WHERE id = ANY($1)",
            &[&convs],
        )
        .await
        .expect("conversations")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let log = load_conversations(client, topic, &convs)
        .await
        .expect("conversation log")
        .into_iter()
        .collect();
    State {
        messages,
        rejected,
        status,
        log,
    }
}

fn mem_state(store: &MemStore) -> State {
    State {
        messages: store
            .messages
            .iter()
            .map(|(id, m)| {
                (
                    *id,
                    (
                        m.conversation_id,
                        m.outbound,
                        m.content.clone(),
                        m.reply_id,
                        m.time_ms,
                    ),
                )
            })
            .collect(),
        rejected: store
            .rejected
            .iter()
            .map(|(o, (id, reason))| (*o, (*id, reason.as_str().to_owned())))
            .collect(),
        status: store
            .conversations
            .iter()
            .filter(|(_, c)| c.created.is_some())
            .map(|(id, c)| {
                let s = if c.closed.is_some() { "CLOSED" } else { "OPEN" };
                (*id, s.to_owned())
            })
            .collect(),
        log: store
            .conversations
            .iter()
            .filter(|(_, c)| c.created.is_some())
            .map(|(id, c)| (*id, *c))
            .collect(),
    }
}

async fn position(client: &Client, topic: &str) -> (i64, i64) {
    let r = client
        .query_one(
            "SELECT resume_offset, processed_offset FROM processor_partitions
              WHERE topic = $1 AND partition = $2",
            &[&topic, &PARTITION],
        )
        .await
        .expect("position");
    (r.get(0), r.get(1))
}

// ---------------------------------------------------------------------------
// Nothing silently dropped
// ---------------------------------------------------------------------------

/// Every NEW_MESSAGE record is rejected (a `rejected_events` row at its
/// offset), or its id is an INBOUND row with its conversation and content
/// answered by exactly one OUTBOUND reply, or it is an identical
/// redelivery of an earlier record that was rejected. Every lifecycle
/// record is applied (its offset is the persisted position), rejected, or
/// an identical redelivery (same id and event time) of the applied one.
fn nothing_dropped(records: &[Record], s: &State) -> Result<(), TestCaseError> {
    // Each INBOUND row is listed by exactly one reply, the one it names.
    let mut listed: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (id, (conv, outbound, content, _, _)) in &s.messages {
        if !outbound {
            continue;
        }
        let mut lines = content.lines();
        prop_assert_eq!(lines.next(), Some("Mensagens recebidas:"), "reply {}", id);
        prop_assert!(content.ends_with('\n'), "reply {} text", id);
        for line in lines {
            let member: Uuid = line
                .parse()
                .map_err(|e| TestCaseError::fail(format!("reply {id} lists {line:?}: {e}")))?;
            listed.entry(member).or_default().push(*id);
            let row = s.messages.get(&member);
            prop_assert!(
                row.is_some_and(|r| !r.1 && r.0 == *conv && r.3 == Some(*id)),
                "reply {} lists {} which is not its INBOUND row: {:?}",
                id,
                member,
                row
            );
        }
    }
    for (id, (_, outbound, _, reply, _)) in &s.messages {
        if *outbound {
            continue;
        }
        prop_assert!(reply.is_some(), "INBOUND {} without reply", id);
        prop_assert_eq!(
            listed.get(id).map(Vec::len),
            Some(1),
            "INBOUND {} listed by {:?}",
            id,
            listed.get(id)
        );
    }
    for (i, r) in records.iter().enumerate() {
        let rejected = s.rejected.get(&r.offset);
        if let Some((id, _)) = rejected {
            prop_assert_eq!(
                *id,
                r.event.id(),
                "rejection at {} names another event",
                r.offset
            );
        }
        match &r.event {
            Event::NewMessage {
                id,
                conversation_id,
                content,
                ..
            } => {
                if rejected.is_some() {
                    continue;
                }
                let stored = s
                    .messages
                    .get(id)
                    .is_some_and(|(c, outbound, text, reply, _)| {
                        !outbound && c == conversation_id && text == content && reply.is_some()
                    });
                let duplicate_of_rejected = records[..i]
                    .iter()
                    .any(|e| e.event == r.event && s.rejected.contains_key(&e.offset));
                prop_assert!(
                    stored || duplicate_of_rejected,
                    "NEW_MESSAGE {} at offset {} silently dropped: row {:?}",
                    id,
                    r.offset,
                    s.messages.get(id)
                );
            }
            Event::NewConversation { id, timestamp } => {
                let log = s.log.get(id);
                let applied = log.is_some_and(|l| l.created.map(|p| p.offset) == Some(r.offset));
                let identical = log.is_some_and(|l| {
                    l.created.is_some_and(|p| p.offset < r.offset)
                        && l.created_event_us == Some(timestamp.timestamp_micros())
                });
                prop_assert_eq!(
                    [applied, rejected.is_some(), identical]
                        .iter()
                        .filter(|b| **b)
                        .count(),
                    1,
                    "NEW_CONVERSATION {} at {}: applied {} rejected {:?} identical {}",
                    id,
                    r.offset,
                    applied,
                    rejected,
                    identical
                );
            }
            Event::CloseConversation { id, timestamp } => {
                let log = s.log.get(id);
                let applied = log.is_some_and(|l| l.closed.map(|p| p.offset) == Some(r.offset));
                let identical = log.is_some_and(|l| {
                    l.closed.is_some_and(|p| p.offset < r.offset)
                        && l.closed_event_us == Some(timestamp.timestamp_micros())
                });
                prop_assert_eq!(
                    [applied, rejected.is_some(), identical]
                        .iter()
                        .filter(|b| **b)
                        .count(),
                    1,
                    "CLOSE {} at {}: applied {} rejected {:?} identical {}",
                    id,
                    r.offset,
                    applied,
                    rejected,
                    identical
                );
                if applied {
                    prop_assert_eq!(s.status.get(id).map(String::as_str), Some("CLOSED"));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Coverage (printed with --nocapture): what the generated cases exercised
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Coverage(std::cell::RefCell<BTreeMap<String, u64>>);

impl Coverage {
    fn add(&self, what: impl Into<String>, n: u64) {
        *self.0.borrow_mut().entry(what.into()).or_default() += n;
    }

    fn effects(&self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::Rejected(r) => self.add(format!("rejected {}", r.reason.as_str()), 1),
                Effect::Outbound(o) => {
                    self.add("replies", 1);
                    if o.id != reply_id(&o.inbound_ids) {
                        self.add("replies with a salted id", 1);
                    }
                    if o.capped {
                        self.add("replies at a bound", 1);
                    }
                    if o.flushed_by_close {
                        self.add("replies flushed by close", 1);
                    }
                }
                _ => {}
            }
        }
    }

    fn stats(&self, e: &PartitionEngine) {
        let s = e.stats();
        self.add("late records", s.late_records);
        self.add("late new groups", s.late_new_groups);
        self.add("duplicate messages", s.duplicates);
        self.add("lifecycle duplicates", s.lifecycle_duplicates);
        self.add("skipped decided", s.skipped_decided);
    }

    fn print(&self, test: &str) {
        eprintln!("{test}: {:#?}", self.0.borrow());
    }
}

// ---------------------------------------------------------------------------
// Runner
// ---------------------------------------------------------------------------

fn runner() -> TestRunner {
    // `PROPTEST_CASES` overrides the case count (e.g. for a longer hunt).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 400,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh case: its ids, topic and materialised batches.
fn start_case(case: &Case) -> (Ids, String, Vec<Batch>) {
    let n = NEXT_CASE.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id() as u128;
    let ids = Ids {
        prefix: (pid << 32) | n as u128,
    };
    let topic = format!("props-{pid}-{n}");
    let batches = materialise(case, ids);
    (ids, topic, batches)
}

#[test]
fn postgres_matches_memstore_and_drops_nothing() {
    const TEST: &str = "postgres_matches_memstore_and_drops_nothing";
    let rt = runtime();
    let db = rt.block_on(TestDb::create()).expect("test database");
    let coverage = Coverage::default();
    let mut runner = runner();
    let result = runner.run(&case(), |case| {
        rt.block_on(async {
            let (ids, topic, batches) = start_case(&case);
            let cfg = engine_config(case.bounds);
            let mut client = db.client().await.expect("client");
            let mut pg = PgShell::claim(&client, &topic, cfg).await;
            let mut mem = MemShell::new(cfg);
            for (i, b) in batches.iter().enumerate() {
                let written = pg.batch(&mut client, b).await;
                let modelled = mem.batch(b);
                coverage.effects(&written);
                prop_assert_eq!(&written, &modelled, "effects of batch {}", i);
                let got = pg_state(&client, &topic, ids).await;
                let want = mem_state(&mem.store);
                prop_assert_eq!(
                    &got,
                    &want,
                    "Postgres differs from MemStore after batch {}",
                    i
                );
                prop_assert_eq!(
                    position(&client, &topic).await,
                    (mem.engine.resume_offset(), mem.engine.next_offset()),
                    "position after batch {}",
                    i
                );
                // A stored INBOUND without reply is re-read by a replay
                // from the committed resume offset.
                let resume = mem.engine.resume_offset();
                let first_offset: HashMap<Uuid, i64> = batches[..=i]
                    .iter()
                    .flat_map(|b| &b.records)
                    .rev()
                    .map(|r| (r.event.id(), r.offset))
                    .collect();
                for (id, m) in &got.messages {
                    if !m.1 && m.3.is_none() {
                        let at = first_offset.get(id).copied();
                        prop_assert!(
                            batches[..=i]
                                .iter()
                                .flat_map(|b| &b.records)
                                .any(|r| r.event.id() == *id && r.offset >= resume),
                            "unreplied INBOUND {} (first at {:?}) before resume offset {}",
                            id,
                            at,
                            resume
                        );
                    }
                }
            }
            let records: Vec<Record> = batches.iter().flat_map(|b| b.records.clone()).collect();
            let last = pg_state(&client, &topic, ids).await;
            nothing_dropped(&records, &last)?;
            coverage.stats(&pg.engine);
            coverage.add("cases", 1);
            prop_assert_eq!(pg.engine.open_groups(), 0);
            prop_assert_eq!(pg.engine.buffered_orphans(), 0);
            Ok(())
        })
    });
    coverage.print(TEST);
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Runs `batches` through a Postgres shell that owns the partition from
/// the start; returns the rows and the committed position.
async fn run_through(
    db: &TestDb,
    topic: &str,
    ids: Ids,
    cfg: EngineConfig,
    batches: &[Batch],
) -> (State, (i64, i64)) {
    let mut client = db.client().await.expect("client");
    let mut pg = PgShell::claim(&client, topic, cfg).await;
    for b in batches {
        pg.batch(&mut client, b).await;
    }
    (
        pg_state(&client, topic, ids).await,
        position(&client, topic).await,
    )
}

/// Runs `batches[..=k]`, then crashes: a new owner claims the partition
/// and replays from the committed resume offset what was read before the
/// crash (a backlog: no wall-clock ticks, rows held; cut by
/// `replay_sizes`), then reads on with the remaining batches. Returns the
/// rows, the final position and the position committed before the crash.
#[allow(clippy::too_many_arguments)]
async fn run_crashing(
    db: &TestDb,
    topic: &str,
    ids: Ids,
    cfg: EngineConfig,
    batches: &[Batch],
    k: usize,
    replay_sizes: &[usize],
    coverage: &Coverage,
) -> Result<(State, (i64, i64), (i64, i64)), TestCaseError> {
    let mut client = db.client().await.expect("client");
    let mut pg = PgShell::claim(&client, topic, cfg).await;
    for b in &batches[..=k] {
        pg.batch(&mut client, b).await;
    }
    let committed = (pg.engine.resume_offset(), pg.engine.next_offset());
    drop(pg);
    let mut pg = PgShell::claim(&client, topic, cfg).await;
    prop_assert_eq!(
        (pg.engine.resume_offset(), pg.replay_until),
        committed,
        "the claim returns the committed positions"
    );
    let again: Vec<Record> = batches[..=k]
        .iter()
        .flat_map(|b| &b.records)
        .filter(|r| r.offset >= committed.0)
        .cloned()
        .collect();
    coverage.add("cases", 1);
    coverage.add("records re-read after the crash", again.len() as u64);
    if !again.is_empty() {
        coverage.add("crashes with records to re-read", 1);
    }
    let now = batches[k].now;
    let mut rest = again.as_slice();
    let mut sizes = replay_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let b = Batch {
            records: rest[..n].to_vec(),
            tick: None,
            live: false,
            cache: 1_000,
            now,
        };
        coverage.effects(&pg.batch(&mut client, &b).await);
        rest = &rest[n..];
    }
    for b in &batches[k + 1..] {
        pg.batch(&mut client, b).await;
    }
    Ok((
        pg_state(&client, topic, ids).await,
        position(&client, topic).await,
        committed,
    ))
}

#[test]
fn crash_at_any_commit_replays_to_the_same_postgres_state() {
    const TEST: &str = "crash_at_any_commit_replays_to_the_same_postgres_state";
    let rt = runtime();
    let (reference_db, crashed_db) = rt.block_on(async {
        (
            TestDb::create().await.expect("test database"),
            TestDb::create().await.expect("test database"),
        )
    });
    let coverage = Coverage::default();
    let mut runner = runner();
    let result = runner.run(&case(), |case| {
        rt.block_on(async {
            let (ids, topic, batches) = start_case(&case);
            let cfg = engine_config(case.bounds);
            let (reference, reference_position) =
                run_through(&reference_db, &topic, ids, cfg, &batches).await;
            let k = case.crash_at.index(batches.len());
            let (crashed, crashed_position, committed) = run_crashing(
                &crashed_db,
                &topic,
                ids,
                cfg,
                &batches,
                k,
                &case.replay_sizes,
                &coverage,
            )
            .await?;
            prop_assert_eq!(
                &crashed,
                &reference,
                "crash after commit {} of {} (resume {}, processed {})",
                k,
                batches.len(),
                committed.0,
                committed.1
            );
            prop_assert_eq!(crashed_position, reference_position);
            let records: Vec<Record> = batches.iter().flat_map(|b| b.records.clone()).collect();
            nothing_dropped(&records, &crashed)?;
            Ok(())
        })
    });
    coverage.print(TEST);
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// Minimal cases of what the properties found
// ---------------------------------------------------------------------------

fn rec(offset: i64, at: i64, event: Event) -> Record {
    Record {
        offset,
        arrival_ms: T0 + at,
        event,
    }
}

fn new_conv(id: Uuid) -> Event {
    Event::NewConversation {
        id,
        timestamp: Utc.timestamp_millis_opt(T0).unwrap(),
    }
}

fn new_msg(id: Uuid, conversation_id: Uuid) -> Event {
    Event::NewMessage {
        id,
        conversation_id,
        content: format!("content of {id}"),
        timestamp: Utc.timestamp_millis_opt(T0).unwrap(),
    }
}

fn batch(records: Vec<Record>, now: i64, live: bool) -> Batch {
    Batch {
        records,
        tick: None,
        live,
        cache: 1_000,
        now: T0 + now,
    }
}

fn final_tick(now: i64) -> Batch {
    Batch {
        records: vec![],
        tick: Some(T0 + now),
        live: true,
        cache: 1_000,
        now: T0 + now,
    }
}

/// The watermark is the highest record timestamp seen in the partition
/// (spec point 5). A record before the resume offset may have the highest
/// one (an ingest clock a few ms ahead); a replay from the resume offset
/// does not see it, so after a crash later records are judged against a
/// lower watermark than without the crash.
///
/// G = 50 ms: C's NEW_CONVERSATION arrives at 130, a1 at 100 keeps the
/// resume offset at 3. Without crash b1 (60) is behind the watermark 130
/// by more than G and is answered alone at once; b2 (105) starts its own
/// group: replies [b1] and [b2]. After a crash following the first batch
/// the replay's watermark is 100: b1's group stays open and b2 joins it:
/// one reply [b1, b2].
#[test]
fn crash_replay_judges_later_records_against_the_same_watermark() {
    let rt = runtime();
    rt.block_on(async {
        let db = TestDb::create().await.expect("test database");
        let crashed_db = TestDb::create().await.expect("test database");
        let ids = Ids {
            prefix: (std::process::id() as u128) << 32 | 0xFFFF_0001,
        };
        let topic = "minimal-watermark";
        let (a, b, c) = (ids.conv(0), ids.conv(1), ids.conv(2));
        let (a1, b1, b2) = (ids.msg(0), ids.msg(1), ids.msg(5));
        let batches = vec![
            batch(
                vec![
                    rec(0, 0, new_conv(a)),
                    rec(1, 0, new_conv(b)),
                    rec(2, 130, new_conv(c)),
                    rec(3, 100, new_msg(a1, a)),
                ],
                130,
                true,
            ),
            batch(
                vec![rec(4, 60, new_msg(b1, b)), rec(5, 105, new_msg(b2, b))],
                140,
                true,
            ),
            final_tick(10_000),
        ];
        let cfg = engine_config(0);
        let (reference, _) = run_through(&db, topic, ids, cfg, &batches).await;
        let (crashed, _, committed) = run_crashing(
            &crashed_db,
            topic,
            ids,
            cfg,
            &batches,
            0,
            &[10],
            &Coverage::default(),
        )
        .await
        .expect("crash run");
        assert_eq!(committed, (3, 4));
        let replies = |s: &State| -> Vec<String> {
            let mut r: Vec<String> = s
                .messages
                .values()
                .filter(|m| m.1 && m.0 == b)
                .map(|m| m.2.clone())
                .collect();
            r.sort();
            r
        };
        assert_eq!(
            replies(&crashed),
            replies(&reference),
            "replies of b after a crash differ from those without"
        );
        assert_eq!(crashed, reference);
    });
}

/// A message whose id is the reply id of another conversation's group,
/// accepted while its partition is behind (its INBOUND row held by
/// [`PendingInbound`]), when that group closes before the row is written:
/// `resolve_reply_ids` sees neither a stored row nor an INBOUND effect of
/// the batch, so the reply takes the id; the held row is then written
/// with `ON CONFLICT` against the OUTBOUND row and silently vanishes, and
/// its own reply lists an id whose row is the other group's reply.
#[test]
fn held_message_whose_id_a_reply_takes_is_not_lost() {
    let rt = runtime();
    rt.block_on(async {
        let db = TestDb::create().await.expect("test database");
        let ids = Ids {
            prefix: (std::process::id() as u128) << 32 | 0xFFFF_0002,
        };
        let topic = "minimal-held-reply-id";
        let (a, b, c) = (ids.conv(0), ids.conv(1), ids.conv(2));
        let m = ids.msg(0);
        let x = reply_id(&[m]);
        let batches = vec![
            // Behind: m's and x's rows are held.
            batch(
                vec![
                    rec(0, 0, new_conv(a)),
                    rec(1, 0, new_conv(b)),
                    rec(2, 0, new_msg(m, a)),
                    rec(3, 60, new_msg(x, b)),
                ],
                0,
                false,
            ),
            // Still behind (x held less than MAX_DELAY): 100 closes m's
            // group (50) but not x's (110).
            batch(vec![rec(4, 100, new_conv(c))], 1, false),
            final_tick(10_000),
        ];
        let cfg = engine_config(0);
        let (state, _) = run_through(&db, topic, ids, cfg, &batches).await;
        let records: Vec<Record> = batches.iter().flat_map(|b| b.records.clone()).collect();
        if let Err(e) = nothing_dropped(&records, &state) {
            panic!("{e}\nmessages: {:#?}", state.messages);
        }
    });
}
