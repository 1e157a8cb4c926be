//! The pure window engine of one partition: session grouping, late
//! arrivals, close, duplicates (spec "Processing semantics", points 1–7).
//! No I/O and no clock: records and watermark advances in, [`Effect`]s and
//! the partition's resume offset out.
//!
//! # Rules, as implemented
//! - **Log position decides lifecycle.** A conversation is *created as of*
//!   offset `o` iff its NEW_CONVERSATION is at an offset `< o`; *closed as
//!   of* `o` likewise. The positions are persisted ([`ConversationLog`]) and
//!   pre-loaded by the shell, so a record is judged the same live, lagging,
//!   or on replay.
//! - **Grouping.** An accepted message joins its conversation's open group
//!   iff `first − G ≤ arrival ≤ last + G` (a gap of exactly G joins).
//!   Otherwise it starts a new group. A group closes when the watermark
//!   passes `last + G` (strictly greater) and then yields exactly one
//!   OUTBOUND whose text lists the ids in arrival order and whose timestamp
//!   is `last + G`. A message older than its conversation's open group by
//!   more than G, or starting a group whose window already passed (older
//!   than a written group), forms its own group (counted in
//!   [`EngineStats::late_new_groups`]); a written group is never reopened.
//! - **Orphans.** A message whose conversation is not created yet is
//!   buffered. When NEW_CONVERSATION arrives at `≤ arrival + L` the message
//!   is attached (grouped from its own arrival); once the watermark passes
//!   `arrival + L` it is rejected `conversation_not_created_in_time`.
//! - **Close.** CLOSE flushes the open group at once; later messages are
//!   rejected `conversation_closed`. CLOSE of a conversation not created
//!   earlier in the log → `conversation_not_found`; a second CLOSE →
//!   `conversation_already_closed`; a second NEW_CONVERSATION →
//!   `conversation_already_exists`. The record whose offset equals the
//!   persisted position is the original being replayed and is re-applied
//!   (its effects are idempotent).
//! - **Duplicates.** A message id already in the window, stored, or
//!   rejected earlier, with the same conversation and content changes
//!   nothing (a rejection is final for that id, so a redelivery cannot
//!   resurrect it, live or on replay); with different content or
//!   conversation it is rejected `id_reused_with_different_content`.
//! - **INBOUND rows are written when the message is accepted** (reply
//!   `NULL`, in the batch that accepts or attaches it), so the api shows a
//!   message as soon as the processor has decided it; orphans stay
//!   invisible until attached. When the group closes, its OUTBOUND is
//!   written and `reply_id` is set on the group's INBOUND rows in the same
//!   transaction ([`Effect::Outbound`] carries the ids). A stored INBOUND
//!   *with* a reply is final: a replayed record whose row has one is skipped
//!   for grouping, so a written group is never re-made. A stored INBOUND
//!   *without* reply is a member of an open group being replayed (the
//!   resume offset is at or before it, since open groups pin their
//!   members' offsets) and is accepted again, rebuilding the group.
//! - **Final decisions.** Offsets whose rejection is stored are skipped.
//! - **Resume offset** = the lowest offset an open group or buffered orphan
//!   still needs, else the next offset to read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chatpipe_core::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::engine::domain::{ConversationLog, EngineConfig, LogPos, Record, StoredMessage};
use crate::engine::effects::{
    AnsweredBy, Effect, Inbound, Outbound, Reason, Rejection, ReplyCause, ReplyMessage,
};
use crate::engine::reply::{reply_id, reply_text};
use crate::engine::watermark::Watermark;

/// Counters the engine keeps for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Records whose timestamp was behind the watermark.
    pub late_records: u64,
    /// Groups started by a message whose window had already passed.
    pub late_new_groups: u64,
    /// Duplicate messages that changed nothing.
    pub duplicates: u64,
    /// Records skipped because their decision was already stored.
    pub skipped_decided: u64,
    /// Groups answered at a bound (maximum span or size).
    pub capped_groups: u64,
    /// Identical redeliveries of NEW_CONVERSATION or CLOSE_CONVERSATION.
    pub lifecycle_duplicates: u64,
}

#[derive(Debug, Clone)]
struct Member {
    id: Uuid,
    offset: i64,
    arrival_ms: i64,
    /// Provider event time (the reply policy's input).
    timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct OpenGroup {
    members: Vec<Member>,
    first_ms: i64,
    last_ms: i64,
}

#[derive(Debug, Clone)]
struct Orphan {
    record: Record,
}

/// The window engine of one partition. Feed records in log order with
/// [`PartitionEngine::on_record`] and wall-clock advances with
/// [`PartitionEngine::advance_watermark`]; pre-load persisted facts with the
/// `load_*` methods before the records that need them.
#[derive(Debug, Clone)]
pub struct PartitionEngine {
    cfg: EngineConfig,
    watermark: Watermark,
    next_offset: i64,
    conversations: HashMap<Uuid, ConversationLog>,
    groups: HashMap<Uuid, OpenGroup>,
    /// (last + G, conversation) of every open group.
    group_deadlines: BTreeSet<(i64, Uuid)>,
    orphans: HashMap<Uuid, Vec<Orphan>>,
    /// (arrival + L, offset, conversation) of every buffered orphan.
    orphan_deadlines: BTreeSet<(i64, i64, Uuid)>,
    /// Message ids in open groups or buffered: (conversation, content).
    in_window: HashMap<Uuid, (Uuid, String)>,
    /// Multiset of offsets still needed by open groups and orphans.
    pinned: BTreeMap<i64, u32>,
    stored: HashMap<Uuid, StoredMessage>,
    decided_offsets: HashSet<i64>,
    /// A committed watermark to restore once the replay has read up to
    /// the offset: (processed offset, watermark).
    restore: Option<(i64, i64)>,
    stats: EngineStats,
}

impl PartitionEngine {
    /// A new engine that will read from `start_offset` (the resume offset).
    pub fn new(cfg: EngineConfig, start_offset: i64) -> Self {
        Self {
            cfg,
            watermark: Watermark::new(),
            next_offset: start_offset,
            conversations: HashMap::new(),
            groups: HashMap::new(),
            group_deadlines: BTreeSet::new(),
            orphans: HashMap::new(),
            orphan_deadlines: BTreeSet::new(),
            in_window: HashMap::new(),
            pinned: BTreeMap::new(),
            stored: HashMap::new(),
            decided_offsets: HashSet::new(),
            restore: None,
            stats: EngineStats::default(),
        }
    }

    /// An engine for a partition whose committed positions are `resume`
    /// (replay starts there) and `processed` (records below it were read),
    /// with the `watermark` committed with them. The replay rebuilds the
    /// open groups from the records at and after `resume`, but the records
    /// before it and the wall-clock advances that raised the watermark are
    /// not read again; the committed watermark is therefore restored once
    /// the replay has read up to `processed` (not before: it would close
    /// the groups being rebuilt early), so every later record is judged
    /// as it would have been without the restart.
    pub fn from_positions(
        cfg: EngineConfig,
        resume: i64,
        processed: i64,
        watermark: Option<i64>,
    ) -> Self {
        let mut e = Self::new(cfg, resume);
        if let Some(w) = watermark {
            if processed <= resume {
                e.watermark.advance_to(w);
            } else {
                e.restore = Some((processed, w));
            }
        }
        e
    }

    /// Restores the committed watermark once the replay reached it.
    fn restore_watermark(&mut self, out: &mut Vec<Effect>) {
        if let Some((processed, w)) = self.restore {
            if self.next_offset >= processed {
                self.restore = None;
                self.watermark.advance_to(w);
                self.expire(out);
            }
        }
    }

    /// The windows in use.
    pub fn config(&self) -> EngineConfig {
        self.cfg
    }

    /// Current watermark (ms), if any.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark.value()
    }

    /// The next offset to read.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The offset a restart must replay from: the oldest record an open
    /// group or buffered orphan still needs, else [`Self::next_offset`].
    pub fn resume_offset(&self) -> i64 {
        self.pinned
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_offset)
    }

    /// Number of open groups.
    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }

    /// Number of buffered orphan messages.
    pub fn buffered_orphans(&self) -> usize {
        self.orphan_deadlines.len()
    }

    /// Counters since creation.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Starts a new batch: forgets pre-loaded message outcomes and decided
    /// offsets (the shell re-loads what the next batch needs, now that the
    /// previous batch is committed) and evicts cached conversation states
    /// with nothing in the window when more than `max_cached` are held.
    pub fn begin_batch(&mut self, max_cached: usize) {
        self.stored.clear();
        self.decided_offsets.clear();
        if self.conversations.len() > max_cached {
            let groups = &self.groups;
            let orphans = &self.orphans;
            self.conversations
                .retain(|id, _| groups.contains_key(id) || orphans.contains_key(id));
        }
    }

    /// Conversation ids of `records` whose persisted state is not cached;
    /// the shell loads them and passes them to [`Self::load_conversation`].
    pub fn conversations_to_load<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Vec<Uuid> {
        let mut seen = HashSet::new();
        records
            .into_iter()
            .map(|r| r.event.conversation_id())
            .filter(|id| !self.conversations.contains_key(id) && seen.insert(*id))
            .collect()
    }

    /// Pre-loads a conversation's persisted log state (default = unknown).
    pub fn load_conversation(&mut self, id: Uuid, state: ConversationLog) {
        self.conversations.insert(id, state);
    }

    /// Pre-loads a stored INBOUND message.
    pub fn load_stored_message(&mut self, id: Uuid, message: StoredMessage) {
        self.stored.insert(id, message);
    }

    /// Pre-loads an offset whose rejection is stored (its decision is final).
    pub fn load_decided_offset(&mut self, offset: i64) {
        self.decided_offsets.insert(offset);
    }

    /// Applies one record (offsets must increase). Effects are appended to
    /// `out`.
    pub fn on_record(&mut self, record: Record, out: &mut Vec<Effect>) {
        if record.offset < self.next_offset {
            return;
        }
        self.next_offset = record.offset + 1;
        if self.watermark.observe_record(record.arrival_ms) {
            self.stats.late_records += 1;
        }
        self.expire(out);
        if self.decided_offsets.contains(&record.offset) {
            self.stats.skipped_decided += 1;
            self.restore_watermark(out);
            return;
        }
        match record.event {
            Event::NewConversation { .. } => self.on_new_conversation(record, out),
            Event::NewMessage { .. } => self.on_message(record, out),
            Event::CloseConversation { .. } => self.on_close(record, out),
        }
        self.expire(out);
        self.restore_watermark(out);
    }

    /// Steps over a record the shell decided for the engine: one that is
    /// not an event, or one set aside because Postgres refused its effects
    /// (the shell records both as rejections).
    pub fn skip_record(&mut self, offset: i64, out: &mut Vec<Effect>) {
        if offset >= self.next_offset {
            self.next_offset = offset + 1;
        }
        self.restore_watermark(out);
    }

    /// Advances the watermark to `t` (a caught-up partition's wall clock
    /// minus allowance) and closes what it passes.
    pub fn advance_watermark(&mut self, t: i64, out: &mut Vec<Effect>) {
        self.watermark.advance_to(t);
        self.expire(out);
    }

    /// Flushes nothing and closes nothing: returns the earliest deadline
    /// (group end or orphan expiry) the watermark must pass next, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let g = self.group_deadlines.first().map(|d| d.0);
        let o = self.orphan_deadlines.first().map(|d| d.0);
        match (g, o) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn conversation(&mut self, id: Uuid) -> &mut ConversationLog {
        self.conversations.entry(id).or_default()
    }

    fn reject(&mut self, record: Record, reason: Reason, out: &mut Vec<Effect>) {
        self.decided_offsets.insert(record.offset);
        // The message's own fate is final for its id (a reused id is not
        // this message's fate: the id belongs to another message).
        if let (
            Event::NewMessage {
                id,
                conversation_id,
                ref content,
                ..
            },
            false,
        ) = (
            &record.event,
            matches!(
                reason,
                Reason::IdReusedWithDifferentContent | Reason::IdUsedByReply
            ),
        ) {
            let (id, conversation_id) = (*id, *conversation_id);
            self.stored.entry(id).or_insert_with(|| StoredMessage {
                conversation_id,
                content: content.clone(),
                reply_id: None,
                rejected: true,
                is_reply: false,
            });
        }
        out.push(Effect::Rejected(Rejection {
            offset: record.offset,
            arrival_ms: record.arrival_ms,
            event: record.event,
            reason,
            error: None,
        }));
    }

    fn on_new_conversation(&mut self, record: Record, out: &mut Vec<Effect>) {
        let Event::NewConversation { id, timestamp } = record.event else {
            return;
        };
        let offset = record.offset;
        let event_us = timestamp.timestamp_micros();
        let log = self.conversation(id);
        if let Some(created) = log.created {
            if created.offset < offset {
                if log.created_event_us == Some(event_us) {
                    // The same event delivered again (e.g. a provider's
                    // retry after a 503 whose record did reach the log).
                    self.stats.lifecycle_duplicates += 1;
                } else {
                    self.reject(record, Reason::ConversationAlreadyExists, out);
                }
                return;
            }
        }
        log.created = Some(LogPos {
            offset,
            arrival_ms: record.arrival_ms,
        });
        log.created_event_us = Some(event_us);
        out.push(Effect::ConversationCreated {
            conversation_id: id,
            created_at: timestamp,
            offset,
            arrival_ms: record.arrival_ms,
        });
        // Attach (or reject) the messages that waited for it, in log order.
        let Some(waiting) = self.orphans.remove(&id) else {
            return;
        };
        for orphan in waiting {
            let r = orphan.record;
            self.orphan_deadlines
                .remove(&(self.cfg.orphan_deadline(r.arrival_ms), r.offset, id));
            self.in_window.remove(&r.event.id());
            self.unpin(r.offset);
            if record.arrival_ms <= self.cfg.orphan_deadline(r.arrival_ms) {
                self.accept(r, out);
            } else {
                self.reject(r, Reason::ConversationNotCreatedInTime, out);
            }
        }
    }

    fn on_close(&mut self, record: Record, out: &mut Vec<Effect>) {
        let Event::CloseConversation { id, timestamp } = record.event else {
            return;
        };
        let offset = record.offset;
        let log = *self.conversation(id);
        let Some(created) = log.created.filter(|c| c.offset < offset) else {
            self.reject(record, Reason::ConversationNotFound, out);
            return;
        };
        if log.closed_before(offset) {
            if log.closed_event_us == Some(timestamp.timestamp_micros()) {
                self.stats.lifecycle_duplicates += 1;
            } else {
                self.reject(record, Reason::ConversationAlreadyClosed, out);
            }
            return;
        }
        let entry = self.conversation(id);
        entry.closed = Some(LogPos {
            offset,
            arrival_ms: record.arrival_ms,
        });
        entry.closed_event_us = Some(timestamp.timestamp_micros());
        self.close_group(id, ReplyCause::Close, out);
        out.push(Effect::ConversationClosed {
            conversation_id: id,
            created,
            closed_at: timestamp,
            offset,
            arrival_ms: record.arrival_ms,
        });
    }

    fn on_message(&mut self, record: Record, out: &mut Vec<Effect>) {
        let Event::NewMessage {
            id,
            conversation_id,
            ref content,
            ..
        } = record.event
        else {
            return;
        };
        // Duplicates: in the window, or stored.
        if let Some((conv, c)) = self.in_window.get(&id) {
            if *conv == conversation_id && c == content {
                self.stats.duplicates += 1;
            } else {
                self.reject(record, Reason::IdReusedWithDifferentContent, out);
            }
            return;
        }
        if let Some(s) = self.stored.get(&id) {
            if s.is_reply {
                self.reject(record, Reason::IdUsedByReply, out);
                return;
            }
            if s.conversation_id != conversation_id || &s.content != content {
                self.reject(record, Reason::IdReusedWithDifferentContent, out);
                return;
            }
            if s.reply_id.is_some() || s.rejected {
                // Its group is written, or it was rejected: final.
                self.stats.duplicates += 1;
                return;
            }
            // Stored without reply: a member of an open group, replayed
            // from the resume offset; accepted again below.
        }
        let log = *self.conversation(conversation_id);
        if log.closed_before(record.offset) {
            self.reject(record, Reason::ConversationClosed, out);
        } else if log.created_before(record.offset) {
            self.accept(record, out);
        } else {
            // Orphan: wait for NEW_CONVERSATION up to arrival + L.
            let deadline = self.cfg.orphan_deadline(record.arrival_ms);
            self.orphan_deadlines
                .insert((deadline, record.offset, conversation_id));
            self.in_window
                .insert(id, (conversation_id, content.clone()));
            self.pin(record.offset);
            self.orphans
                .entry(conversation_id)
                .or_default()
                .push(Orphan { record });
        }
    }

    /// Accepts a message of a created, open conversation into its group.
    fn accept(&mut self, record: Record, out: &mut Vec<Effect>) {
        let Event::NewMessage {
            id,
            conversation_id: conv,
            content,
            timestamp,
        } = record.event
        else {
            return;
        };
        let g = self.cfg.gap_ms;
        let arrival = record.arrival_ms;
        self.in_window.insert(id, (conv, content.clone()));
        self.pin(record.offset);
        let member = Member {
            id,
            offset: record.offset,
            arrival_ms: arrival,
            timestamp,
        };
        if let Some(group) = self.groups.get(&conv) {
            let deadline = self.cfg.group_deadline(group.first_ms, group.last_ms);
            if arrival > deadline {
                // Its window ended or its span is used up (the watermark is
                // past it): write it first.
                let cause = if deadline < group.last_ms.saturating_add(g) {
                    ReplyCause::Span
                } else {
                    ReplyCause::Window
                };
                self.close_group(conv, cause, out);
            }
        }
        // Visible at once: the row is written (without reply) in this batch.
        out.push(Effect::Inbound(Inbound {
            id,
            conversation_id: conv,
            content,
            timestamp,
            arrival_ms: arrival,
            offset: record.offset,
        }));

        if let Some(group) = self.groups.get(&conv) {
            if arrival < group.first_ms.saturating_sub(g) {
                // Older than the open group by more than G: a group of its
                // own whose window has already passed.
                self.stats.late_new_groups += 1;
                let single = OpenGroup {
                    members: vec![member],
                    first_ms: arrival,
                    last_ms: arrival,
                };
                self.write_group(conv, single, ReplyCause::Window, out);
                return;
            }
        }
        let cfg = self.cfg;
        let full = match self.groups.get_mut(&conv) {
            Some(group) => {
                let old = (cfg.group_deadline(group.first_ms, group.last_ms), conv);
                group.first_ms = group.first_ms.min(arrival);
                group.last_ms = group.last_ms.max(arrival);
                group.members.push(member);
                let new = (cfg.group_deadline(group.first_ms, group.last_ms), conv);
                if new != old {
                    self.group_deadlines.remove(&old);
                    self.group_deadlines.insert(new);
                }
                group.members.len() >= cfg.max_group_messages
            }
            None => {
                let deadline = cfg.group_deadline(arrival, arrival);
                if self.watermark.passed(deadline) {
                    self.stats.late_new_groups += 1;
                }
                self.groups.insert(
                    conv,
                    OpenGroup {
                        members: vec![member],
                        first_ms: arrival,
                        last_ms: arrival,
                    },
                );
                self.group_deadlines.insert((deadline, conv));
                cfg.max_group_messages <= 1
            }
        };
        if full {
            // Bounded size: answered now; the next message starts a group.
            self.stats.capped_groups += 1;
            self.close_group(conv, ReplyCause::Size, out);
        }
    }

    /// Closes what the watermark has passed: groups (reply) and orphans
    /// (rejection), earliest deadline first.
    fn expire(&mut self, out: &mut Vec<Effect>) {
        while let Some(&(deadline, conv)) = self.group_deadlines.first() {
            if !self.watermark.passed(deadline) {
                break;
            }
            let cause = match self.groups.get(&conv) {
                Some(group) if deadline < group.last_ms.saturating_add(self.cfg.gap_ms) => {
                    self.stats.capped_groups += 1;
                    ReplyCause::Span
                }
                _ => ReplyCause::Window,
            };
            self.close_group(conv, cause, out);
        }
        while let Some(&(deadline, offset, conv)) = self.orphan_deadlines.first() {
            if !self.watermark.passed(deadline) {
                break;
            }
            self.orphan_deadlines.pop_first();
            let Some(list) = self.orphans.get_mut(&conv) else {
                continue;
            };
            let Some(pos) = list.iter().position(|o| o.record.offset == offset) else {
                continue;
            };
            let orphan = list.remove(pos);
            if list.is_empty() {
                self.orphans.remove(&conv);
            }
            self.in_window.remove(&orphan.record.event.id());
            self.unpin(offset);
            self.reject(orphan.record, Reason::ConversationNotCreatedInTime, out);
        }
    }

    fn close_group(&mut self, conv: Uuid, cause: ReplyCause, out: &mut Vec<Effect>) {
        if let Some(group) = self.groups.remove(&conv) {
            self.group_deadlines
                .remove(&(self.cfg.group_deadline(group.first_ms, group.last_ms), conv));
            self.write_group(conv, group, cause, out);
        }
    }

    /// Emits the reply of a group that is no longer open.
    fn write_group(
        &mut self,
        conv: Uuid,
        mut group: OpenGroup,
        cause: ReplyCause,
        out: &mut Vec<Effect>,
    ) {
        group.members.sort_by_key(|m| (m.arrival_ms, m.offset));
        // The INBOUND rows were written on accept; the OUTBOUND records its
        // id on them (same transaction), which makes them final.
        let ids: Vec<Uuid> = group.members.iter().map(|m| m.id).collect();
        let id = reply_id(&ids);
        let mut messages = Vec::with_capacity(group.members.len());
        for m in group.members {
            self.unpin(m.offset);
            let window = self.in_window.remove(&m.id);
            messages.push(ReplyMessage {
                id: m.id,
                content: window.as_ref().map(|w| w.1.clone()).unwrap_or_default(),
                timestamp: m.timestamp,
            });
            if let Some((_, content)) = window {
                self.stored.insert(
                    m.id,
                    StoredMessage {
                        conversation_id: conv,
                        content,
                        reply_id: Some(id),
                        rejected: false,
                        is_reply: false,
                    },
                );
            }
        }
        // `last + G` (the spec's rule), `first + span` for a group cut at
        // its span, and the last arrival for one cut at its size.
        let timestamp_ms = match cause {
            ReplyCause::Size => group.last_ms,
            _ => self.cfg.group_deadline(group.first_ms, group.last_ms),
        };
        out.push(Effect::Outbound(Outbound {
            id,
            conversation_id: conv,
            content: reply_text(&ids),
            answered_by: AnsweredBy::Template,
            messages,
            timestamp_ms,
            last_arrival_ms: group.last_ms,
            inbound_ids: ids,
            flushed_by_close: cause == ReplyCause::Close,
            capped: matches!(cause, ReplyCause::Size | ReplyCause::Span),
        }));
    }

    fn pin(&mut self, offset: i64) {
        *self.pinned.entry(offset).or_default() += 1;
    }

    fn unpin(&mut self, offset: i64) {
        if let Some(n) = self.pinned.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.pinned.remove(&offset);
            }
        }
    }
}
