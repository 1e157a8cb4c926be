//! What a NEW_MESSAGE needs to know from Postgres — its conversation's
//! status and whether its id is already taken — without one SQL round trip
//! per request.
//!
//! - [`ClosedSet`]: a bounded memory of conversation ids known to be CLOSED.
//!   CLOSED is final, so a remembered id can be answered `400` at once. OPEN
//!   is never cached: another replica may close the conversation at any time.
//! - [`StatusLookup`]: batched lookups. Each request queues its
//!   `(conversation id, message id)`; a few worker tasks (each with its own
//!   Postgres connection) take everything queued and run ONE statement for
//!   all of them ([`LOOKUP_SQL`]: the statuses of the conversations and the
//!   stored messages with those ids, `= ANY($1)` / `= ANY($2)`), then answer
//!   every waiting request. Each answer comes from a query that started
//!   after the request arrived, so it is as exact as a query per request;
//!   under load batches grow by themselves (requests queue while the
//!   previous query runs).
//! - [`message_verdict`]: the pure decision from a [`MessageCheck`]: `400`
//!   for a CLOSED conversation (`data.conversation_id`), for an id stored as
//!   an OUTBOUND message or as another conversation's message (`data.id`);
//!   a redelivery of the same INBOUND message to the same conversation is
//!   fine (the processor dedupes it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_core::event::ValidationError;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::events::{ClosedCacheHit, InternalEvent, LookupBatchDone, LookupFailed};
use crate::metrics::Metrics;

pub use chatpipe_core::model::{ConversationStatus, Direction};

/// A bounded set of CLOSED conversation ids with two generations: when the
/// current generation reaches half the capacity it becomes the old one and
/// the previous old one is forgotten. Forgetting is safe (the id is then
/// looked up in Postgres again).
#[derive(Debug, Default)]
pub struct ClosedSet {
    current: HashSet<Uuid>,
    old: HashSet<Uuid>,
    capacity: usize,
}

impl ClosedSet {
    /// An empty set remembering about `capacity` ids (0 disables it).
    pub fn new(capacity: usize) -> ClosedSet {
        ClosedSet {
            current: HashSet::new(),
            old: HashSet::new(),
            capacity,
        }
    }

    /// Whether `id` is remembered as CLOSED.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.current.contains(id) || self.old.contains(id)
    }

    /// Remembers `id` as CLOSED.
    pub fn insert(&mut self, id: Uuid) {
        if self.capacity == 0 || self.contains(&id) {
            return;
        }
        if self.current.len() >= self.capacity.div_ceil(2) {
            self.old = std::mem::take(&mut self.current);
        }
        self.current.insert(id);
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.current.len() + self.old.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a status lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// Postgres failed or did not answer in time.
    #[error("conversation status lookup failed: {0}")]
    Database(String),
    /// The lookup service is shutting down.
    #[error("status lookup is shutting down")]
    Closed,
}

/// A message row that already has a NEW_MESSAGE's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMessage {
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// INBOUND or OUTBOUND.
    pub direction: Direction,
}

/// What Postgres knows about one NEW_MESSAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageCheck {
    /// Status of its conversation (`None`: not known yet).
    pub conversation: Option<ConversationStatus>,
    /// The stored message with its id, if any.
    pub message: Option<StoredMessage>,
}

/// Why a NEW_MESSAGE is refused by [`message_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRefusal {
    /// Its conversation is CLOSED.
    ConversationClosed,
    /// Its id is stored as an OUTBOUND message.
    IdIsOutbound,
    /// Its id is stored as a message of another conversation.
    IdInOtherConversation(Uuid),
}

impl MessageRefusal {
    /// Label of the `message_id_conflicts` metric (`None` for a closed
    /// conversation, which is not an id conflict).
    pub fn conflict_reason(self) -> Option<&'static str> {
        match self {
            MessageRefusal::ConversationClosed => None,
            MessageRefusal::IdIsOutbound => Some("outbound"),
            MessageRefusal::IdInOtherConversation(_) => Some("other_conversation"),
        }
    }

    /// The `400` body.
    pub fn error(self, message_id: Uuid, conversation_id: Uuid) -> ValidationError {
        match self {
            MessageRefusal::ConversationClosed => ValidationError::new(
                "data.conversation_id",
                format!("conversation {conversation_id} is CLOSED"),
            ),
            MessageRefusal::IdIsOutbound => ValidationError::new(
                "data.id",
                format!("message id {message_id} is already used by an OUTBOUND message"),
            ),
            MessageRefusal::IdInOtherConversation(other) => ValidationError::new(
                "data.id",
                format!(
                    "message id {message_id} is already used by a message of conversation {other}"
                ),
            ),
        }
    }
}

/// Decides a NEW_MESSAGE of `conversation_id` from what Postgres knows.
/// A CLOSED conversation wins over an id conflict (both are `400`).
pub fn message_verdict(conversation_id: Uuid, check: &MessageCheck) -> Result<(), MessageRefusal> {
    if check.conversation == Some(ConversationStatus::Closed) {
        return Err(MessageRefusal::ConversationClosed);
    }
    match check.message {
        Some(StoredMessage {
            direction: Direction::Outbound,
            ..
        }) => Err(MessageRefusal::IdIsOutbound),
        Some(m) if m.conversation_id != conversation_id => {
            Err(MessageRefusal::IdInOtherConversation(m.conversation_id))
        }
        _ => Ok(()),
    }
}

type Reply = oneshot::Sender<Result<MessageCheck, LookupError>>;

/// One queued lookup: conversation id, message id, where to answer.
pub type Request = (Uuid, Uuid, Reply);

/// The distinct conversation ids and message ids of a batch, each in
/// first-seen order.
pub fn distinct_ids(batch: &[Request]) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut seen_c = HashSet::with_capacity(batch.len());
    let mut seen_m = HashSet::with_capacity(batch.len());
    let mut conversations = Vec::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    for (c, m, _) in batch {
        if seen_c.insert(*c) {
            conversations.push(*c);
        }
        if seen_m.insert(*m) {
            messages.push(*m);
        }
    }
    (conversations, messages)
}

/// What one lookup statement found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Status by conversation id.
    pub conversations: HashMap<Uuid, ConversationStatus>,
    /// Stored message by id.
    pub messages: HashMap<Uuid, StoredMessage>,
}

impl Found {
    /// The answer for one request.
    pub fn check(&self, conversation_id: &Uuid, message_id: &Uuid) -> MessageCheck {
        MessageCheck {
            conversation: self.conversations.get(conversation_id).copied(),
            message: self.messages.get(message_id).copied(),
        }
    }
}

/// Batched, exact NEW_MESSAGE lookups plus the CLOSED-id memory.
#[derive(Clone)]
pub struct StatusLookup {
    queue: mpsc::Sender<Request>,
    closed: Arc<Mutex<ClosedSet>>,
    metrics: Metrics,
}

/// The one statement of a batch: conversation statuses (`kind` 0) and the
/// stored messages with the requested ids (`kind` 1), both by primary key.
pub const LOOKUP_SQL: &str =
    "SELECT 0, id, status, NULL::uuid FROM conversations WHERE id = ANY($1) \
     UNION ALL \
     SELECT 1, id, direction, conversation_id FROM messages WHERE id = ANY($2)";

impl StatusLookup {
    /// Starts `workers` lookup tasks on `pool` (give it its own pool, sized
    /// `workers`), each answering up to `max_batch` queued requests per
    /// query, collecting for up to `linger` after the first one; each query
    /// is bounded by `timeout`.
    pub fn start(
        pool: Pool,
        workers: usize,
        max_batch: usize,
        linger: Duration,
        timeout: Duration,
        closed_capacity: usize,
        metrics: Metrics,
    ) -> StatusLookup {
        let (tx, rx) = mpsc::channel::<Request>(max_batch.max(1) * 64);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let closed = Arc::new(Mutex::new(ClosedSet::new(closed_capacity)));
        for _ in 0..workers.max(1) {
            let worker = Worker {
                pool: pool.clone(),
                queue: Arc::clone(&rx),
                max_batch: max_batch.max(1),
                linger,
                timeout,
                closed: Arc::clone(&closed),
                metrics: metrics.clone(),
            };
            tokio::spawn(worker.run());
        }
        StatusLookup {
            queue: tx,
            closed,
            metrics,
        }
    }

    /// Whether `id` is remembered as CLOSED (no I/O).
    pub fn known_closed(&self, id: &Uuid) -> bool {
        let hit = match self.closed.lock() {
            Ok(set) => set.contains(id),
            Err(poisoned) => poisoned.into_inner().contains(id),
        };
        if hit {
            ClosedCacheHit {
                conversation_id: *id,
            }
            .emit(&self.metrics);
        }
        hit
    }

    /// Remembers `id` as CLOSED (after this replica committed its close).
    pub fn remember_closed(&self, id: Uuid) {
        remember(&self.closed, id);
    }

    /// The status of conversation `conversation_id` and the stored message
    /// with id `message_id`, read from Postgres by a query that starts after
    /// this call.
    pub async fn check(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> Result<MessageCheck, LookupError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((conversation_id, message_id, tx))
            .await
            .map_err(|_| LookupError::Closed)?;
        rx.await.map_err(|_| LookupError::Closed)?
    }
}

fn remember(closed: &Mutex<ClosedSet>, id: Uuid) {
    match closed.lock() {
        Ok(mut set) => set.insert(id),
        Err(poisoned) => poisoned.into_inner().insert(id),
    }
}

struct Worker {
    pool: Pool,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>,
    max_batch: usize,
    linger: Duration,
    timeout: Duration,
    closed: Arc<Mutex<ClosedSet>>,
    metrics: Metrics,
}

impl Worker {
    async fn run(self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            {
                let mut queue = self.queue.lock().await;
                if queue.recv_many(&mut batch, self.max_batch).await == 0 {
                    return; // every sender is gone: shutting down
                }
                // Keep collecting for the linger time so one query answers
                // more requests.
                let until = tokio::time::Instant::now() + self.linger;
                while batch.len() < self.max_batch && !self.linger.is_zero() {
                    let room = self.max_batch - batch.len();
                    match tokio::time::timeout_at(until, queue.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            let requests = std::mem::take(&mut batch);
            let (conversations, messages) = distinct_ids(&requests);
            let started = Instant::now();
            let result =
                tokio::time::timeout(self.timeout, self.query(&conversations, &messages)).await;
            LookupBatchDone {
                conversations: conversations.len(),
                requests: requests.len(),
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit(&self.metrics);
            let timed_out = result.is_err();
            let found = match result {
                Ok(Ok(found)) => Ok(found),
                Ok(Err(e)) => Err(LookupError::Database(e)),
                Err(_) => Err(LookupError::Database(format!(
                    "no answer within {:?}",
                    self.timeout
                ))),
            };
            match found {
                Ok(found) => {
                    for (id, status) in &found.conversations {
                        if *status == ConversationStatus::Closed {
                            remember(&self.closed, *id);
                        }
                    }
                    for (c, m, reply) in requests {
                        let _ = reply.send(Ok(found.check(&c, &m)));
                    }
                }
                Err(e) => {
                    LookupFailed {
                        error: &e,
                        timed_out,
                    }
                    .emit(&self.metrics);
                    for (_, _, reply) in requests {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn query(&self, conversations: &[Uuid], messages: &[Uuid]) -> Result<Found, String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| format!("getting a connection: {e}"))?;
        let stmt = client
            .prepare_cached(LOOKUP_SQL)
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        let rows = client
            .query(&stmt, &[&conversations, &messages])
            .await
            .map_err(|e| e.to_string())?;
        let mut found = Found::default();
        for row in rows {
            let kind: i32 = row.try_get(0).map_err(|e| e.to_string())?;
            let id: Uuid = row.try_get(1).map_err(|e| e.to_string())?;
            let value: &str = row.try_get(2).map_err(|e| e.to_string())?;
            if kind == 0 {
                let status = ConversationStatus::parse(value)
                    .ok_or_else(|| format!("conversation {id} has unknown status {value:?}"))?;
                found.conversations.insert(id, status);
            } else {
                let direction = Direction::parse(value)
                    .ok_or_else(|| format!("message {id} has unknown direction {value:?}"))?;
                let conversation_id: Uuid = row.try_get(3).map_err(|e| e.to_string())?;
                found.messages.insert(
                    id,
                    StoredMessage {
                        conversation_id,
                        direction,
                    },
                );
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn closed_set_remembers_and_forgets_the_oldest_generation() {
        let mut s = ClosedSet::new(4);
        for n in 1..=2 {
            s.insert(id(n));
        }
        assert!(s.contains(&id(1)) && s.contains(&id(2)));
        s.insert(id(3)); // current (2 = cap/2) becomes old
        s.insert(id(4));
        assert!(s.contains(&id(1)) && s.contains(&id(4)));
        s.insert(id(5)); // {1,2} are forgotten
        assert!(!s.contains(&id(1)) && !s.contains(&id(2)));
        assert!(s.contains(&id(3)) && s.contains(&id(5)));
        assert!(s.len() <= 4);
        s.insert(id(5));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn closed_set_of_zero_capacity_remembers_nothing() {
        let mut s = ClosedSet::new(0);
        s.insert(id(1));
        assert!(!s.contains(&id(1)));
        assert!(s.is_empty());
    }

    #[test]
    fn ids_are_distinct_in_first_seen_order() {
        let mut batch = Vec::new();
        let mut receivers = Vec::new();
        for (c, m) in [(3u128, 10u128), (1, 11), (3, 12), (2, 10), (1, 13), (3, 12)] {
            let (tx, rx) = oneshot::channel();
            batch.push((id(c), id(m), tx));
            receivers.push(rx);
        }
        let (conversations, messages) = distinct_ids(&batch);
        assert_eq!(conversations, vec![id(3), id(1), id(2)]);
        assert_eq!(messages, vec![id(10), id(11), id(12), id(13)]);
    }

    #[test]
    fn verdicts_follow_the_contract() {
        let (conv, other) = (id(1), id(2));
        let msg = |c, direction| {
            Some(StoredMessage {
                conversation_id: c,
                direction,
            })
        };
        let check = |conversation, message| MessageCheck {
            conversation,
            message,
        };
        use ConversationStatus::*;
        use Direction::*;
        // Unknown or OPEN conversation, new id or a redelivery: accepted.
        assert_eq!(message_verdict(conv, &check(None, None)), Ok(()));
        assert_eq!(message_verdict(conv, &check(Some(Open), None)), Ok(()));
        assert_eq!(
            message_verdict(conv, &check(Some(Open), msg(conv, Inbound))),
            Ok(())
        );
        assert_eq!(
            message_verdict(conv, &check(None, msg(conv, Inbound))),
            Ok(())
        );
        // Id conflicts.
        assert_eq!(
            message_verdict(conv, &check(Some(Open), msg(conv, Outbound))),
            Err(MessageRefusal::IdIsOutbound)
        );
        assert_eq!(
            message_verdict(conv, &check(None, msg(other, Outbound))),
            Err(MessageRefusal::IdIsOutbound)
        );
        assert_eq!(
            message_verdict(conv, &check(Some(Open), msg(other, Inbound))),
            Err(MessageRefusal::IdInOtherConversation(other))
        );
        // A CLOSED conversation wins.
        assert_eq!(
            message_verdict(conv, &check(Some(Closed), msg(other, Outbound))),
            Err(MessageRefusal::ConversationClosed)
        );
        let e = MessageRefusal::IdInOtherConversation(other).error(id(9), conv);
        assert_eq!(e.field, "data.id");
        assert!(e.error.contains(&other.to_string()), "{e:?}");
        assert_eq!(
            MessageRefusal::ConversationClosed.error(id(9), conv).field,
            "data.conversation_id"
        );
        assert_eq!(
            MessageRefusal::IdIsOutbound.error(id(9), conv).field,
            "data.id"
        );
    }

    #[test]
    fn found_answers_each_request() {
        let mut found = Found::default();
        found
            .conversations
            .insert(id(1), ConversationStatus::Closed);
        found.messages.insert(
            id(10),
            StoredMessage {
                conversation_id: id(2),
                direction: Direction::Inbound,
            },
        );
        assert_eq!(
            found.check(&id(1), &id(10)),
            MessageCheck {
                conversation: Some(ConversationStatus::Closed),
                message: Some(StoredMessage {
                    conversation_id: id(2),
                    direction: Direction::Inbound
                }),
            }
        );
        assert_eq!(found.check(&id(3), &id(11)), MessageCheck::default());
    }
}
