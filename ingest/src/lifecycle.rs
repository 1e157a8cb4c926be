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
//!
//! # Identical redeliveries
//! When the decisive statement changes nothing, the row is read back and
//! compared with the event: a NEW_CONVERSATION whose time equals
//! `created_at`, or a CLOSE_CONVERSATION of a CLOSED conversation whose time
//! equals `closed_at`, is an identical redelivery of an event that already
//! succeeded ([`Decision::Replay`]): the row is committed only after the
//! broker acknowledged the record, so the record is in the log and nothing
//! is produced again. (A first attempt answered `503` after the
//! acknowledgement — a late commit, a purge after a produce timeout — is
//! thereby answered on the provider's retry.) Times are compared in
//! Postgres, at its microsecond precision. Anything else for a taken id is a
//! [`Rejection`].
//!
//! # Lock coupling
//! The row lock is held while the record waits for the broker. The pool's
//! sessions set `idle_in_transaction_session_timeout`
//! (`--idle-in-transaction-timeout`, see [`pool`]), so a replica frozen
//! between the acknowledgement and the commit cannot hold the lock forever:
//! Postgres ends its session and rolls the transaction back.

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
    /// An identical redelivery of an event that already succeeded: answered
    /// like the first success; nothing was produced or written.
    Replay,
    /// Refused; nothing was written.
    Rejected(Rejection),
}

/// What a lifecycle event is when its decisive statement changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// An identical redelivery of the event that succeeded.
    Replay,
    /// A different event for a taken id (or an unknown id): `400`.
    Rejected(Rejection),
}

/// The row of a taken id, read back when the decisive statement changed
/// nothing, compared with the event's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    /// Its status.
    pub status: ConversationStatus,
    /// `created_at` equals the event's time.
    pub same_created: bool,
    /// `closed_at` is set and equals the event's time.
    pub same_closed: bool,
}

/// A NEW_CONVERSATION whose INSERT found the id taken: a replay when the
/// stored creation time is the event's, else `400`. (`None`: the row went
/// away meanwhile, which nothing does; refused as existing.)
pub fn on_create_conflict(existing: Option<Existing>) -> Conflict {
    match existing {
        Some(e) if e.same_created => Conflict::Replay,
        Some(e) => Conflict::Rejected(Rejection::AlreadyExists(e.status)),
        None => Conflict::Rejected(Rejection::AlreadyExists(ConversationStatus::Open)),
    }
}

/// A CLOSE_CONVERSATION whose UPDATE changed nothing: unknown id, a replay
/// of the close that succeeded (same closing time), or already CLOSED.
pub fn on_close_conflict(existing: Option<Existing>) -> Conflict {
    match existing {
        None => Conflict::Rejected(Rejection::Unknown),
        Some(e) if e.status == ConversationStatus::Closed && e.same_closed => Conflict::Replay,
        // Not OPEN after the UPDATE: CLOSED (a concurrent close committed
        // first).
        Some(_) => Conflict::Rejected(Rejection::AlreadyClosed),
    }
}

/// A pool for ingest's Postgres sessions, with `options` (e.g.
/// `-c idle_in_transaction_session_timeout=30000`, see
/// [`crate::config::IngestArgs::session_options`]) added to any the URL
/// already sets.
pub fn pool(url: &str, max_size: usize, options: &str) -> anyhow::Result<Pool> {
    let mut pg = chatpipe_core::db::PgConnectOptions::parse(url)?;
    let config = &mut pg.config;
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {options}"),
        _ => options.to_owned(),
    };
    config.options(&options);
    chatpipe_core::db::pool_from_config(pg, max_size)
}

/// Why a lifecycle step could not be completed (answered `503`); the
/// transaction was rolled back.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError<E> {
    /// Postgres failed.
    #[error("postgres: {0}")]
    Database(String),
    /// Postgres did not answer within the timeout.
    #[error("postgres: {0}")]
    Timeout(String),
    /// The `produce` step failed.
    #[error("{0}")]
    Produce(E),
}

impl<E> LifecycleError<E> {
    /// For a Postgres failure, whether it was a timeout; `None` for a
    /// failed produce step.
    pub fn timed_out(&self) -> Option<bool> {
        match self {
            LifecycleError::Database(_) => Some(false),
            LifecycleError::Timeout(_) => Some(true),
            LifecycleError::Produce(_) => None,
        }
    }
}

const INSERT_SQL: &str = "INSERT INTO conversations (id, status, created_at, updated_at) \
     VALUES ($1, 'OPEN', $2, $2) ON CONFLICT (id) DO NOTHING RETURNING id";
const CLOSE_SQL: &str =
    "UPDATE conversations SET status = 'CLOSED', updated_at = $2, closed_at = $2 \
     WHERE id = $1 AND status = 'OPEN' RETURNING id";
/// The row of a taken id, with the event time (`$2`) compared in Postgres
/// (at its precision, the one the row was written with).
const EXISTING_SQL: &str = "SELECT status, created_at = $2, coalesce(closed_at = $2, false) \
     FROM conversations WHERE id = $1";

fn existing_from_row<E>(
    id: Uuid,
    row: &tokio_postgres::Row,
) -> Result<Existing, LifecycleError<E>> {
    let read = || -> Result<Existing, String> {
        let status: &str = row.try_get(0).map_err(|e| e.to_string())?;
        Ok(Existing {
            status: ConversationStatus::parse(status)
                .ok_or_else(|| format!("unknown status {status:?}"))?,
            same_created: row.try_get(1).map_err(|e| e.to_string())?,
            same_closed: row.try_get(2).map_err(|e| e.to_string())?,
        })
    };
    read().map_err(|e| LifecycleError::Database(format!("conversation {id}: {e}")))
}

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
        Err(_) => Err(LifecycleError::Timeout(format!(
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
        self.decide(INSERT_SQL, id, ts, produce, on_create_conflict)
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
        self.decide(CLOSE_SQL, id, ts, produce, on_close_conflict)
            .await
    }

    /// Runs `change_sql` (`$1` = id, `$2` = event time) in a transaction.
    /// When it returns no row, the conversation's row (if any, compared
    /// with the event time) goes to `conflict` (replay or refusal) and the
    /// transaction is rolled back; otherwise `produce` runs and the
    /// transaction commits only on its success.
    async fn decide<T, E, F, Fut>(
        &self,
        change_sql: &str,
        id: Uuid,
        ts: DateTime<Utc>,
        produce: F,
        conflict: impl FnOnce(Option<Existing>) -> Conflict,
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
            let stmt = bounded(t, "prepare", tx.prepare_cached(EXISTING_SQL)).await?;
            let row = bounded(t, "existing row", tx.query_opt(&stmt, &[&id, &ts])).await?;
            let _ = bounded::<_, _, E>(t, "rollback", tx.rollback()).await;
            let existing = row.map(|r| existing_from_row(id, &r)).transpose()?;
            return Ok(match conflict(existing) {
                Conflict::Replay => Decision::Replay,
                Conflict::Rejected(r) => Decision::Rejected(r),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use ConversationStatus::*;

    fn row(status: ConversationStatus, same_created: bool, same_closed: bool) -> Option<Existing> {
        Some(Existing {
            status,
            same_created,
            same_closed,
        })
    }

    #[test]
    fn a_create_with_the_stored_time_is_a_replay_in_any_status() {
        assert_eq!(on_create_conflict(row(Open, true, false)), Conflict::Replay);
        assert_eq!(
            on_create_conflict(row(Closed, true, false)),
            Conflict::Replay
        );
        assert_eq!(
            on_create_conflict(row(Open, false, false)),
            Conflict::Rejected(Rejection::AlreadyExists(Open))
        );
        assert_eq!(
            on_create_conflict(row(Closed, false, true)),
            Conflict::Rejected(Rejection::AlreadyExists(Closed))
        );
        assert_eq!(
            on_create_conflict(None),
            Conflict::Rejected(Rejection::AlreadyExists(Open))
        );
    }

    #[test]
    fn a_close_with_the_stored_closing_time_is_a_replay() {
        assert_eq!(
            on_close_conflict(row(Closed, false, true)),
            Conflict::Replay
        );
        assert_eq!(on_close_conflict(row(Closed, true, true)), Conflict::Replay);
        assert_eq!(
            on_close_conflict(row(Closed, true, false)),
            Conflict::Rejected(Rejection::AlreadyClosed)
        );
        assert_eq!(
            on_close_conflict(None),
            Conflict::Rejected(Rejection::Unknown)
        );
        // OPEN after an UPDATE that found no OPEN row cannot be seen; it is
        // never taken for a replay.
        assert_eq!(
            on_close_conflict(row(Open, true, true)),
            Conflict::Rejected(Rejection::AlreadyClosed)
        );
    }
}
