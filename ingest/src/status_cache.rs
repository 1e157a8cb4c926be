//! Conversation status for the NEW_MESSAGE hot path without one SQL round
//! trip per request.
//!
//! - [`ClosedSet`]: a bounded memory of conversation ids known to be CLOSED.
//!   CLOSED is final, so a remembered id can be answered `400` at once. OPEN
//!   is never cached: another replica may close the conversation at any time.
//! - [`StatusLookup`]: batched lookups. Each request queues its conversation
//!   id; a few worker tasks (each with its own Postgres connection) take
//!   everything queued, run one `SELECT id, status FROM conversations WHERE
//!   id = ANY($1)` and answer every waiting request. Each answer comes from a
//!   query that started after the request arrived, so it is as exact as a
//!   query per request; under load batches grow by themselves (requests queue
//!   while the previous query runs).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::metrics::Metrics;

/// Lifecycle state of a known conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationStatus {
    /// Accepting messages.
    Open,
    /// Closed for good.
    Closed,
}

impl ConversationStatus {
    /// Parses the `conversations.status` column (`OPEN`/`CLOSED`).
    pub fn from_db(s: &str) -> Option<ConversationStatus> {
        match s {
            "OPEN" => Some(ConversationStatus::Open),
            "CLOSED" => Some(ConversationStatus::Closed),
            _ => None,
        }
    }
}

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

type Reply = oneshot::Sender<Result<Option<ConversationStatus>, LookupError>>;

/// Groups queued requests by conversation id: the distinct ids to query, in
/// first-seen order, and the waiters of each.
pub fn group_requests(batch: Vec<(Uuid, Reply)>) -> (Vec<Uuid>, HashMap<Uuid, Vec<Reply>>) {
    let mut ids = Vec::with_capacity(batch.len());
    let mut waiters: HashMap<Uuid, Vec<Reply>> = HashMap::with_capacity(batch.len());
    for (id, reply) in batch {
        let entry = waiters.entry(id).or_default();
        if entry.is_empty() {
            ids.push(id);
        }
        entry.push(reply);
    }
    (ids, waiters)
}

/// Batched, exact conversation-status lookups plus the CLOSED-id memory.
#[derive(Clone)]
pub struct StatusLookup {
    queue: mpsc::Sender<(Uuid, Reply)>,
    closed: Arc<Mutex<ClosedSet>>,
    metrics: Metrics,
}

const STATUS_SQL: &str = "SELECT id, status FROM conversations WHERE id = ANY($1)";

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
        let (tx, rx) = mpsc::channel::<(Uuid, Reply)>(max_batch.max(1) * 64);
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
            self.metrics.closed_cache_hits.inc();
        }
        hit
    }

    /// Remembers `id` as CLOSED (after this replica committed its close).
    pub fn remember_closed(&self, id: Uuid) {
        remember(&self.closed, id);
    }

    /// The status of conversation `id` (`None` when unknown), read from
    /// Postgres by a query that starts after this call.
    pub async fn status(&self, id: Uuid) -> Result<Option<ConversationStatus>, LookupError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((id, tx))
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
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<(Uuid, Reply)>>>,
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
            let (ids, waiters) = group_requests(std::mem::take(&mut batch));
            self.metrics.lookup_batch_size.observe(ids.len() as f64);
            let started = Instant::now();
            let result = tokio::time::timeout(self.timeout, self.query(&ids)).await;
            self.metrics
                .lookup_duration
                .observe(started.elapsed().as_secs_f64());
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
                    for (id, replies) in waiters {
                        let status = found.get(&id).copied();
                        if status == Some(ConversationStatus::Closed) {
                            remember(&self.closed, id);
                        }
                        for r in replies {
                            let _ = r.send(Ok(status));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "conversation status lookup failed");
                    for r in waiters.into_values().flatten() {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn query(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, ConversationStatus>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let stmt = client
            .prepare_cached(STATUS_SQL)
            .await
            .map_err(|e| e.to_string())?;
        let rows = client
            .query(&stmt, &[&ids])
            .await
            .map_err(|e| e.to_string())?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.try_get(0).map_err(|e| e.to_string())?;
            let status: &str = row.try_get(1).map_err(|e| e.to_string())?;
            let status = ConversationStatus::from_db(status)
                .ok_or_else(|| format!("conversation {id} has unknown status {status:?}"))?;
            found.insert(id, status);
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
    fn requests_are_grouped_by_id_in_first_seen_order() {
        let mut batch = Vec::new();
        let mut receivers = Vec::new();
        for n in [3u128, 1, 3, 2, 1, 3] {
            let (tx, rx) = oneshot::channel();
            batch.push((id(n), tx));
            receivers.push(rx);
        }
        let (ids, waiters) = group_requests(batch);
        assert_eq!(ids, vec![id(3), id(1), id(2)]);
        assert_eq!(waiters[&id(3)].len(), 3);
        assert_eq!(waiters[&id(1)].len(), 2);
        assert_eq!(waiters[&id(2)].len(), 1);
    }
}
