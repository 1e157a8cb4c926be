//! An in-memory model of what the Postgres store holds after applying
//! effects, with the same idempotency rules as `store.rs`. Used by the
//! deterministic tests and property tests (replay equivalence), and to
//! pre-load an engine the way the shell does from Postgres.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::engine::domain::{ConversationLog, LogPos, Record, StoredMessage};
use crate::engine::effects::{Effect, Reason};
use crate::engine::window::PartitionEngine;

/// A stored message row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemMessage {
    /// Conversation.
    pub conversation_id: Uuid,
    /// `true` for OUTBOUND.
    pub outbound: bool,
    /// Text.
    pub content: String,
    /// INBOUND: covering reply (`None` from accept until its group closes).
    pub reply_id: Option<Uuid>,
    /// OUTBOUND: timestamp (last arrival + G), ms. INBOUND: arrival.
    pub time_ms: i64,
}

/// The database model: rows keyed like the real tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    /// `messages` by id.
    pub messages: BTreeMap<Uuid, MemMessage>,
    /// Conversation log positions (and whether closed).
    pub conversations: BTreeMap<Uuid, ConversationLog>,
    /// `rejected_events` by source offset: (message/event id, reason).
    pub rejected: BTreeMap<i64, (Uuid, Reason)>,
    /// Rejected NEW_MESSAGE events by message id: (conversation, content).
    pub rejected_messages: BTreeMap<Uuid, (Uuid, String)>,
}

impl MemStore {
    /// Applies effects idempotently (insert-if-absent, set-if-unset).
    pub fn apply(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::ConversationCreated {
                    conversation_id,
                    created_at,
                    offset,
                    arrival_ms,
                } => {
                    let c = self.conversations.entry(*conversation_id).or_default();
                    if c.created.is_none() {
                        c.created = Some(LogPos {
                            offset: *offset,
                            arrival_ms: *arrival_ms,
                        });
                        c.created_event_us = Some(created_at.timestamp_micros());
                    }
                }
                Effect::ConversationClosed {
                    conversation_id,
                    closed_at,
                    offset,
                    arrival_ms,
                    ..
                } => {
                    let c = self.conversations.entry(*conversation_id).or_default();
                    if c.closed.is_none() {
                        c.closed = Some(LogPos {
                            offset: *offset,
                            arrival_ms: *arrival_ms,
                        });
                        c.closed_event_us = Some(closed_at.timestamp_micros());
                    }
                }
                Effect::Inbound(m) => {
                    self.messages.entry(m.id).or_insert(MemMessage {
                        conversation_id: m.conversation_id,
                        outbound: false,
                        content: m.content.clone(),
                        reply_id: None,
                        time_ms: m.arrival_ms,
                    });
                }
                Effect::Outbound(o) => {
                    self.messages.entry(o.id).or_insert(MemMessage {
                        conversation_id: o.conversation_id,
                        outbound: true,
                        content: o.content.clone(),
                        reply_id: None,
                        time_ms: o.timestamp_ms,
                    });
                    for id in &o.inbound_ids {
                        if let Some(m) = self.messages.get_mut(id) {
                            if !m.outbound && m.reply_id.is_none() {
                                m.reply_id = Some(o.id);
                            }
                        }
                    }
                }
                Effect::Undecodable(u) => {
                    self.rejected
                        .entry(u.offset)
                        .or_insert((u.uuid_at("id").unwrap_or_default(), Reason::Undecodable));
                }
                Effect::Rejected(r) => {
                    if let chatpipe_core::Event::NewMessage {
                        id,
                        conversation_id,
                        content,
                        ..
                    } = &r.event
                    {
                        // A reused id is not this message's fate.
                        if !matches!(
                            r.reason,
                            Reason::IdReusedWithDifferentContent | Reason::IdUsedByReply
                        ) {
                            self.rejected_messages
                                .entry(*id)
                                .or_insert((*conversation_id, content.clone()));
                        }
                    }
                    self.rejected
                        .entry(r.offset)
                        .or_insert((r.event.id(), r.reason));
                }
            }
        }
    }

    /// Pre-loads `engine` with the persisted facts `records` need, as the
    /// shell does from Postgres before feeding a batch.
    pub fn preload(&self, engine: &mut PartitionEngine, records: &[Record]) {
        for id in engine.conversations_to_load(records) {
            engine.load_conversation(id, self.conversations.get(&id).copied().unwrap_or_default());
        }
        for r in records {
            if let chatpipe_core::Event::NewMessage { id, .. } = &r.event {
                if let Some((conversation_id, content)) = self.rejected_messages.get(id) {
                    engine.load_stored_message(
                        *id,
                        StoredMessage {
                            conversation_id: *conversation_id,
                            content: content.clone(),
                            reply_id: None,
                            rejected: true,
                            is_reply: false,
                        },
                    );
                }
                if let Some(m) = self.messages.get(id) {
                    engine.load_stored_message(
                        *id,
                        StoredMessage {
                            conversation_id: m.conversation_id,
                            content: m.content.clone(),
                            reply_id: m.reply_id,
                            rejected: false,
                            is_reply: m.outbound,
                        },
                    );
                }
            }
            if self.rejected.contains_key(&r.offset) {
                engine.load_decided_offset(r.offset);
            }
        }
    }

    /// The replies: (conversation, content), as a set.
    pub fn replies(&self) -> BTreeSet<(Uuid, String)> {
        self.messages
            .values()
            .filter(|m| m.outbound)
            .map(|m| (m.conversation_id, m.content.clone()))
            .collect()
    }
}
