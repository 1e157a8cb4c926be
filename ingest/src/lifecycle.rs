//! Conversation lifecycle decisions, made atomically in Postgres.
//!
//! NEW_CONVERSATION and CLOSE_CONVERSATION each hold one transaction:
//! the decisive statement (`INSERT … ON CONFLICT DO NOTHING RETURNING` or
//! `UPDATE … WHERE status = 'OPEN' RETURNING`) takes the row lock, then the
//! caller's `produce` step writes the record and waits for the broker's
//! acknowledgement, and only then the transaction commits. A failed or late
//! acknowledgement rolls everything back. A concurrent request for the same
//! id waits on the row lock and then sees the committed outcome, so two
//! replicas can never both accept one NEW_CONVERSATION.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::status_cache::ConversationStatus;

/// Why a lifecycle event is refused (answered `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// NEW_CONVERSATION for an id that exists (open or closed).
    AlreadyExists(ConversationStatus),
    /// CLOSE_CONVERSATION for an id that does not exist.
    Unknown,
    /// CLOSE_CONVERSATION for a conversation that is already CLOSED.
    AlreadyClosed,
}

/// The outcome of a lifecycle step whose Postgres part worked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Accepted: the record was acknowledged (`T` from `produce`) and the
    /// transaction committed.
    Done(T),
    /// Refused; nothing was written.
    Rejected(Rejection),
}

/// Why a lifecycle step could not be completed (answered `503`); the
/// transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError<E> {
    /// Postgres failed or did not answer within the timeout.
    #[error("postgres: {0}")]
    Database(String),
    /// The `produce` step failed.
    #[error("{0}")]
    Produce(E),
}

const INSERT_SQL: &str = "INSERT INTO conversations (id, status, created_at, updated_at) \
     VALUES ($1, 'OPEN', $2, $2) ON CONFLICT (id) DO NOTHING RETURNING id";
const CLOSE_SQL: &str =
    "UPDATE conversations SET status = 'CLOSED', updated_at = $2, closed_at = $2 \
     WHERE id = $1 AND status = 'OPEN' RETURNING id";
const STATUS_SQL: &str = "SELECT status FROM conversations WHERE id = $1";

/// Lifecycle decisions against a Postgres pool.
#[derive(Clone)]
pub struct Lifecycle {
    pool: Pool,
    timeout: Duration,
}

async fn bounded<T, E: std::fmt::Display, P>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, LifecycleError<P>> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(LifecycleError::Database(format!("{what}: {e}"))),
        Err(_) => Err(LifecycleError::Database(format!(
            "{what}: no answer within {timeout:?}"
        ))),
    }
}

impl Lifecycle {
    /// Decisions on `pool`; each Postgres step is bounded by `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> Lifecycle {
        Lifecycle { pool, timeout }
    }

    /// NEW_CONVERSATION `id` at event time `ts`: inserts the OPEN row, runs
    /// `produce`, commits on its success.
    pub async fn create<T, E, F, Fut>(
        &self,
        id: Uuid,
        ts: DateTime<Utc>,
        produce: F,
    ) -> Result<Decision<T>, LifecycleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.decide(INSERT_SQL, id, ts, produce, |row| {
            let status = row
                .and_then(|r| r.try_get::<_, String>(0).ok())
                .and_then(|s| ConversationStatus::from_db(&s))
                .unwrap_or(ConversationStatus::Open);
            Rejection::AlreadyExists(status)
        })
        .await
    }

    /// CLOSE_CONVERSATION `id` at event time `ts`: moves the OPEN row to
    /// CLOSED, runs `produce`, commits on its success.
    pub async fn close<T, E, F, Fut>(
        &self,
        id: Uuid,
        ts: DateTime<Utc>,
        produce: F,
    ) -> Result<Decision<T>, LifecycleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // A row that is not OPEN after the UPDATE is CLOSED (a concurrent
        // close committed first).
        self.decide(CLOSE_SQL, id, ts, produce, |row| match row {
            None => Rejection::Unknown,
            Some(_) => Rejection::AlreadyClosed,
        })
        .await
    }

    /// Runs `change_sql` (`$1` = id, `$2` = event time) in a transaction.
    /// When it returns no row, the conversation's status row (if any) goes
    /// to `refused` and the transaction is rolled back; otherwise `produce`
    /// runs and the transaction commits only on its success.
    async fn decide<T, E, F, Fut>(
        &self,
        change_sql: &str,
        id: Uuid,
        ts: DateTime<Utc>,
        produce: F,
        refused: impl FnOnce(Option<tokio_postgres::Row>) -> Rejection,
    ) -> Result<Decision<T>, LifecycleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let t = self.timeout;
        let mut client = bounded(t, "getting a connection", self.pool.get()).await?;
        let tx = bounded(t, "begin", client.transaction()).await?;
        let stmt = bounded(t, "prepare", tx.prepare_cached(change_sql)).await?;
        let changed = bounded(t, "change", tx.query_opt(&stmt, &[&id, &ts])).await?;
        if changed.is_none() {
            let stmt = bounded(t, "prepare", tx.prepare_cached(STATUS_SQL)).await?;
            let row = bounded(t, "status", tx.query_opt(&stmt, &[&id])).await?;
            let _ = bounded::<_, _, E>(t, "rollback", tx.rollback()).await;
            return Ok(Decision::Rejected(refused(row)));
        }
        self.finish(tx, produce).await
    }

    async fn finish<T, E, F, Fut>(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        produce: F,
    ) -> Result<Decision<T>, LifecycleError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match produce().await {
            Ok(v) => {
                bounded(self.timeout, "commit", tx.commit()).await?;
                Ok(Decision::Done(v))
            }
            Err(e) => {
                let _ = bounded::<_, _, E>(self.timeout, "rollback", tx.rollback()).await;
                Err(LifecycleError::Produce(e))
            }
        }
    }

    /// `SELECT 1` within `timeout`, for `/readyz`.
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        let r: Result<(), LifecycleError<String>> = async {
            let client = bounded(timeout, "getting a connection", self.pool.get()).await?;
            bounded(timeout, "SELECT 1", client.simple_query("SELECT 1")).await?;
            Ok(())
        }
        .await;
        r.map_err(|e| e.to_string())
    }
}
