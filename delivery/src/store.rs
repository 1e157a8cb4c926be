//! The outbox in Postgres: claiming due deliveries, marking a call
//! started, recording its outcome with the delivery's timeline
//! (`delivery_events`), applying receipts that arrived before the
//! provider's id was known, and giving claims back.
//!
//! Every statement that changes a delivery checks that it is still
//! `queued` (and, but for `sent`, still leased by this worker), so an
//! outcome never moves a status back nor overwrites another worker's.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::decide::Settlement;

/// The channel Postgres notifies (trigger of migration V600) when a
/// delivery is queued or changes status.
pub const NOTIFY_CHANNEL: &str = "chatpipe_deliveries";

/// A delivery this worker claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// `deliveries.id` (queue order).
    pub id: i64,
    /// The OUTBOUND message.
    pub message_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The channel it goes through.
    pub channel: String,
    /// The contact it goes to.
    pub contact_id: Uuid,
    /// The contact's `provider_user_id` (`None`: no such contact).
    pub to: Option<String>,
    /// The message's content (`None`: no such message).
    pub text: Option<String>,
    /// Calls made before this claim.
    pub attempts: i32,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When a previous call started whose outcome was never recorded (a
    /// crash): the message may have been sent already. The claim recorded
    /// a `possible_duplicate` event.
    pub lost_call_at: Option<DateTime<Utc>>,
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Recorded; for `sent`, the status early receipts moved it to.
    Recorded {
        /// `delivered`, `read`, `failed` from receipts, if any.
        receipt_status: Option<String>,
    },
    /// Not recorded: the delivery is no longer queued, or no longer this
    /// worker's.
    Stale,
}

/// The deliveries table, seen by one worker (its lease owner name).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    owner: String,
    lease: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("owner", &self.owner)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

const CLAIM: &str = "
WITH due AS (
    SELECT d.id, d.attempt_started_at
      FROM deliveries d
     WHERE d.status = 'queued'
       AND d.next_attempt_at <= now()
       AND (d.lease_until IS NULL OR d.lease_until < now())
       AND NOT EXISTS (SELECT 1 FROM deliveries e
                        WHERE e.conversation_id = d.conversation_id
                          AND e.status = 'queued' AND e.id < d.id)
     ORDER BY d.id
     LIMIT $1
       FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE deliveries d
       SET lease_owner = $2,
           lease_until = now() + make_interval(secs => $3),
           attempt_started_at = NULL,
           updated_at = now()
      FROM due
     WHERE d.id = due.id
 RETURNING d.id, d.message_id, d.conversation_id, d.channel, d.contact_id, d.attempts,
           d.queued_at, due.attempt_started_at AS lost_call_at
), duplicates AS (
    INSERT INTO delivery_events (delivery_id, event, code, reason, source)
    SELECT id, 'possible_duplicate', 'lost_outcome',
           'the outcome of the call started at ' || lost_call_at || ' was never recorded; calling again',
           'delivery'
      FROM claimed WHERE lost_call_at IS NOT NULL
)
SELECT c.id, c.message_id, c.conversation_id, c.channel, c.contact_id, c.attempts, c.queued_at,
       c.lost_call_at, ct.provider_user_id, m.content
  FROM claimed c
  LEFT JOIN contacts ct ON ct.id = c.contact_id
  LEFT JOIN messages m ON m.id = c.message_id
 ORDER BY c.id";

const START: &str = "
UPDATE deliveries
   SET attempt_started_at = now(), attempts = attempts + 1,
       lease_until = now() + make_interval(secs => $3), updated_at = now()
 WHERE id = $1 AND lease_owner = $2 AND status = 'queued'
RETURNING attempts";

const SENT: &str = "
WITH d AS (
    UPDATE deliveries
       SET status = 'sent', provider_message_id = $2, sent_at = now(),
           lease_owner = NULL, lease_until = NULL, attempt_started_at = NULL, updated_at = now()
     WHERE id = $1 AND status = 'queued'
 RETURNING id
)
INSERT INTO delivery_events (delivery_id, event, source)
SELECT id, 'sent', 'delivery' FROM d";

const RETRY: &str = "
WITH d AS (
    UPDATE deliveries
       SET next_attempt_at = now() + make_interval(secs => $3), error_code = $4, error_reason = $5,
           lease_owner = NULL, lease_until = NULL, attempt_started_at = NULL, updated_at = now()
     WHERE id = $1 AND lease_owner = $2 AND status = 'queued'
 RETURNING id
)
INSERT INTO delivery_events (delivery_id, event, code, reason, source)
SELECT id, 'attempt_failed', $4, $5, 'delivery' FROM d
UNION ALL
SELECT id, 'possible_duplicate', $4,
       'the failed call may have delivered the message; the retry may send it again', 'delivery'
  FROM d WHERE $6";

const FAILED: &str = "
WITH d AS (
    UPDATE deliveries
       SET status = 'failed', failed_at = now(), error_code = $3, error_reason = $4,
           lease_owner = NULL, lease_until = NULL, attempt_started_at = NULL, updated_at = now()
     WHERE id = $1 AND lease_owner = $2 AND status = 'queued'
 RETURNING id
)
INSERT INTO delivery_events (delivery_id, event, code, reason, source)
SELECT id, 'failed', $3, $4, 'delivery' FROM d";

const RELEASE: &str = "
UPDATE deliveries
   SET lease_owner = NULL, lease_until = NULL,
       next_attempt_at = greatest(next_attempt_at, now() + make_interval(secs => $3)),
       updated_at = now()
 WHERE id = ANY($1) AND lease_owner = $2 AND status = 'queued'";

const RELEASE_UNSTARTED: &str = "
UPDATE deliveries
   SET lease_owner = NULL, lease_until = NULL, updated_at = now()
 WHERE lease_owner = $1 AND status = 'queued' AND attempt_started_at IS NULL";

impl Store {
    /// A store on `pool` whose claims are named `owner` and last `lease`.
    pub fn new(pool: Pool, owner: impl Into<String>, lease: Duration) -> Store {
        Store {
            pool,
            owner: owner.into(),
            lease,
        }
    }

    /// This worker's name in leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .context("taking a Postgres connection from the pool")
    }

    /// Claims up to `limit` due deliveries, oldest first, each the first
    /// queued one of its conversation, skipping rows other workers are
    /// claiming; a claimed delivery whose previous call's outcome was lost
    /// gets a `possible_duplicate` event (see [`Claimed::lost_call_at`]).
    pub async fn claim(&self, limit: usize) -> anyhow::Result<Vec<Claimed>> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(CLAIM, &[&limit, &self.owner, &self.lease.as_secs_f64()])
            .await
            .context("claiming due deliveries")?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("id")?,
                    message_id: r.try_get("message_id")?,
                    conversation_id: r.try_get("conversation_id")?,
                    channel: r.try_get("channel")?,
                    contact_id: r.try_get("contact_id")?,
                    attempts: r.try_get("attempts")?,
                    queued_at: r.try_get("queued_at")?,
                    lost_call_at: r.try_get("lost_call_at")?,
                    to: r.try_get("provider_user_id")?,
                    text: r.try_get("content")?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .context("reading claimed deliveries")
    }

    /// Records that a provider call starts now (committed before the call)
    /// and renews the lease. Returns the number of calls made with this
    /// one, or `None` when the delivery is no longer this worker's.
    pub async fn start_attempt(&self, id: i64) -> anyhow::Result<Option<i32>> {
        let client = self.client().await?;
        let row = client
            .query_opt(START, &[&id, &self.owner, &self.lease.as_secs_f64()])
            .await
            .with_context(|| format!("marking the call of delivery {id} started"))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .context("reading the attempt count")
    }

    /// Records `settlement` for delivery `id` of channel `channel` in one
    /// transaction with its event; for `sent`, also applies the receipts
    /// that arrived before (`chatpipe_apply_receipts`).
    pub async fn settle(
        &self,
        id: i64,
        channel: &str,
        settlement: &Settlement,
    ) -> anyhow::Result<Settled> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .context("starting a transaction")?;
        let (changed, receipt_status) = match settlement {
            Settlement::Sent {
                provider_message_id,
            } => {
                let n = tx
                    .execute(SENT, &[&id, provider_message_id])
                    .await
                    .with_context(|| format!("recording delivery {id} sent"))?;
                let status = if n > 0 {
                    tx.query_one(
                        "SELECT chatpipe_apply_receipts($1, $2)",
                        &[&channel, provider_message_id],
                    )
                    .await
                    .with_context(|| format!("applying early receipts of delivery {id}"))?
                    .try_get::<_, Option<String>>(0)
                    .context("reading the receipts' status")?
                } else {
                    None
                };
                (n, status)
            }
            Settlement::Retry {
                delay,
                code,
                reason,
                possible_duplicate,
            } => {
                let n = tx
                    .execute(
                        RETRY,
                        &[
                            &id,
                            &self.owner,
                            &delay.as_secs_f64(),
                            code,
                            reason,
                            possible_duplicate,
                        ],
                    )
                    .await
                    .with_context(|| format!("recording the failed attempt of delivery {id}"))?;
                (n, None)
            }
            Settlement::Failed { code, reason } => {
                let n = tx
                    .execute(FAILED, &[&id, &self.owner, code, reason])
                    .await
                    .with_context(|| format!("recording delivery {id} failed"))?;
                (n, None)
            }
        };
        tx.commit().await.context("committing the outcome")?;
        Ok(if changed > 0 {
            Settled::Recorded { receipt_status }
        } else {
            Settled::Stale
        })
    }

    /// Gives claims back unattempted, due again no sooner than `not_before`
    /// from now. Returns how many were released.
    pub async fn release(&self, ids: &[i64], not_before: Duration) -> anyhow::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let client = self.client().await?;
        client
            .execute(RELEASE, &[&ids, &self.owner, &not_before.as_secs_f64()])
            .await
            .context("releasing claims")
    }

    /// Gives back every claim of this worker whose call has not started
    /// (at shutdown). Returns how many.
    pub async fn release_unstarted(&self) -> anyhow::Result<u64> {
        let client = self.client().await?;
        client
            .execute(RELEASE_UNSTARTED, &[&self.owner])
            .await
            .context("releasing unstarted claims")
    }

    /// Whether Postgres answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .context("querying Postgres")?;
        Ok(())
    }
}
