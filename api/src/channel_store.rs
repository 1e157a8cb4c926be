//! The SQL of the channel endpoints: agents' messages (one read-write
//! transaction each), the message feed, contacts, channel counts and
//! deliveries with their timelines and retries.
//!
//! Pooled connections are read-only by default
//! (`default_transaction_read_only=on`); the two writes here open an
//! explicit `READ WRITE` transaction. The role needs the V600 grants of
//! `chatpipe_api`.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::compose::{match_key, KeyMatch};
use crate::error::ApiError;
use crate::model::{
    Contact, ContactDetail, Delivery, DeliveryDetail, DeliveryEvent, DeliveryStatus, Direction,
    FeedMessage, SendStatus, SentMessage,
};
use crate::pagination::Cursor;
use crate::store::{keyset_page, message_of, summary_of, ts, MESSAGE_COLUMNS, MESSAGE_JOINS};

/// An agent's message to store.
#[derive(Debug, Clone)]
pub struct NewAgentMessage<'a> {
    /// The conversation it answers.
    pub conversation_id: Uuid,
    /// Its text (already checked).
    pub content: &'a str,
    /// The agent recorded on it (`None`: authentication off, or a token
    /// that names no agent of this api).
    pub agent_id: Option<Uuid>,
    /// The idempotency key with its owner, when the request has one.
    pub key: Option<(Uuid, &'a str)>,
    /// The request's digest ([`crate::compose::request_digest`]).
    pub digest: [u8; 32],
}

/// What became of [`send_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored now (and queued when the conversation has a channel).
    Created(SentMessage),
    /// The key's first request was this one: its answer.
    Replayed(SentMessage),
    /// The key was used for another request.
    KeyReused,
    /// No such conversation.
    NotFound,
    /// The conversation is CLOSED.
    Closed,
}

/// The first answer of a key, or `None` when the key is new.
async fn key_answer<C: GenericClient + Sync>(
    client: &C,
    owner: Uuid,
    key: &str,
    digest: &[u8; 32],
) -> Result<Option<SendOutcome>, ApiError> {
    let stmt = client
        .prepare_cached(
            "SELECT k.conversation_id, k.request_digest, k.message_id, d.channel \
             FROM message_idempotency_keys k \
             LEFT JOIN deliveries d ON d.message_id = k.message_id \
             WHERE k.agent_id = $1 AND k.idempotency_key = $2",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&owner, &key]).await? else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.try_get("request_digest")?;
    Ok(Some(match match_key(&stored, digest) {
        KeyMatch::Mismatch => SendOutcome::KeyReused,
        KeyMatch::Replay => {
            let channel: Option<String> = row.try_get("channel")?;
            SendOutcome::Replayed(SentMessage {
                id: row.try_get("message_id")?,
                conversation_id: row.try_get("conversation_id")?,
                status: if channel.is_some() {
                    SendStatus::Queued
                } else {
                    SendStatus::Stored
                },
                channel,
            })
        }
    }))
}

/// Stores an agent's message in one read-write transaction: the
/// conversation row is taken `FOR SHARE` (a concurrent close waits, or
/// this waits for it and sees it CLOSED), then the `messages` row
/// (OUTBOUND, timestamp = arrival = now), its `message_meta` (author
/// `agent`), for a channel conversation its `deliveries` row (queued) and
/// `queued` event (source `api`), and the key's row. A key seen before
/// answers its first answer (or [`SendOutcome::KeyReused`]); two
/// concurrent requests with one key store one message.
pub async fn send_message(
    client: &mut Client,
    m: &NewAgentMessage<'_>,
) -> Result<SendOutcome, ApiError> {
    let tx = client.build_transaction().read_only(false).start().await?;
    if let Some((owner, key)) = m.key {
        if let Some(answer) = key_answer(&tx, owner, key, &m.digest).await? {
            tx.rollback().await?;
            return Ok(answer);
        }
    }
    let stmt = tx
        .prepare_cached(
            "SELECT c.status, cc.channel, cc.contact_id \
             FROM conversations c \
             LEFT JOIN channel_conversations cc ON cc.conversation_id = c.id \
             WHERE c.id = $1 FOR SHARE OF c",
        )
        .await?;
    let Some(conv) = tx.query_opt(&stmt, &[&m.conversation_id]).await? else {
        tx.rollback().await?;
        return Ok(SendOutcome::NotFound);
    };
    let status: String = conv.try_get("status")?;
    if status != "OPEN" {
        tx.rollback().await?;
        return Ok(SendOutcome::Closed);
    }
    let channel: Option<String> = conv.try_get("channel")?;
    let contact_id: Option<Uuid> = conv.try_get("contact_id")?;
    let id = Uuid::new_v4();
    if let Some((owner, key)) = m.key {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO message_idempotency_keys \
                 (agent_id, idempotency_key, conversation_id, request_digest, message_id) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .await?;
        let digest = m.digest.as_slice();
        let inserted = tx
            .execute(&stmt, &[&owner, &key, &m.conversation_id, &digest, &id])
            .await?;
        if inserted == 0 {
            // A concurrent request with this key committed first (the
            // insert waited for it): answer as it did.
            tx.rollback().await?;
            return key_answer(&*client, owner, key, &m.digest)
                .await?
                .ok_or_else(|| ApiError::Internal("an idempotency key vanished".to_owned()));
        }
    }
    let stmt = tx
        .prepare_cached(
            r#"INSERT INTO messages (id, conversation_id, direction, content, "timestamp", arrival, reply_id)
               VALUES ($1, $2, 'OUTBOUND', $3, now(), now(), NULL)"#,
        )
        .await?;
    tx.execute(&stmt, &[&id, &m.conversation_id, &m.content])
        .await?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO message_meta (message_id, conversation_id, channel, agent_id, author_kind, kind) \
             VALUES ($1, $2, $3, $4, 'agent', 'text')",
        )
        .await?;
    tx.execute(&stmt, &[&id, &m.conversation_id, &channel, &m.agent_id])
        .await?;
    let status = match (&channel, contact_id) {
        (Some(ch), Some(contact)) => {
            let stmt = tx
                .prepare_cached(
                    "WITH d AS ( \
                       INSERT INTO deliveries (message_id, conversation_id, channel, contact_id, status) \
                       VALUES ($1, $2, $3, $4, 'queued') RETURNING id) \
                     INSERT INTO delivery_events (delivery_id, event, source) \
                     SELECT id, 'queued', 'api' FROM d",
                )
                .await?;
            tx.execute(&stmt, &[&id, &m.conversation_id, ch, &contact])
                .await?;
            SendStatus::Queued
        }
        _ => SendStatus::Stored,
    };
    tx.commit().await?;
    Ok(SendOutcome::Created(SentMessage {
        id,
        conversation_id: m.conversation_id,
        status,
        channel: if status == SendStatus::Queued {
            channel
        } else {
            None
        },
    }))
}

/// Filters of `GET /messages`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only this conversation's messages.
    pub conversation_id: Option<Uuid>,
    /// Only messages of this contact's conversations.
    pub contact_id: Option<Uuid>,
    /// Only this agent's messages.
    pub agent_id: Option<Uuid>,
    /// Only this direction.
    pub direction: Option<Direction>,
}

/// A page of messages of any conversation, newest first by
/// `(timestamp, OUTBOUND, id)` descending, starting after `after`.
pub async fn list_feed(
    client: &Client,
    filter: &FeedFilter,
    after: Option<(DateTime<Utc>, bool, Uuid)>,
    limit: i64,
) -> Result<(Vec<FeedMessage>, Option<Cursor>), ApiError> {
    let mut sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m \
         LEFT JOIN channel_conversations cc ON cc.conversation_id = m.conversation_id \
         {MESSAGE_JOINS} WHERE true"
    );
    let direction = filter.direction.map(Direction::as_str);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(c) = &filter.conversation_id {
        params.push(c);
        sql.push_str(&format!(" AND m.conversation_id = ${}", params.len()));
    }
    if let Some(c) = &filter.contact_id {
        params.push(c);
        sql.push_str(&format!(
            " AND m.conversation_id IN \
             (SELECT conversation_id FROM channel_conversations WHERE contact_id = ${})",
            params.len()
        ));
    }
    if let Some(a) = &filter.agent_id {
        params.push(a);
        sql.push_str(&format!(" AND mm.agent_id = ${}", params.len()));
    }
    if let Some(d) = &direction {
        params.push(d);
        sql.push_str(&format!(" AND m.direction = ${}", params.len()));
    }
    if let Some((t, outbound, id)) = &after {
        params.push(t);
        params.push(outbound);
        params.push(id);
        let n = params.len();
        sql.push_str(&format!(
            r#" AND m."timestamp" <= ${a} AND (m."timestamp", m.direction = 'OUTBOUND', m.id) < (${a}, ${b}, ${c})"#,
            a = n - 2,
            b = n - 1,
            c = n
        ));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    sql.push_str(&format!(
        r#" ORDER BY m."timestamp" DESC, (m.direction = 'OUTBOUND') DESC, m.id DESC LIMIT ${}"#,
        params.len()
    ));
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    keyset_page(&rows, limit, |row| {
        let message = message_of(row)?;
        let cursor = Cursor::Feed {
            timestamp: row.try_get("timestamp")?,
            outbound: message.direction == Direction::Outbound,
            id: message.id,
        };
        let item = FeedMessage {
            conversation_id: row.try_get("m_conversation_id")?,
            message,
        };
        Ok((item, cursor))
    })
}

const CONTACT_COLUMNS: &str =
    "id, channel, provider_user_id, display_name, created_at, last_seen_at";

fn contact_of(row: &Row) -> Result<Contact, ApiError> {
    Ok(Contact {
        id: row.try_get("id")?,
        channel: row.try_get("channel")?,
        provider_user_id: row.try_get("provider_user_id")?,
        display_name: row.try_get("display_name")?,
        created_at: ts(row.try_get("created_at")?),
        last_seen_at: ts(row.try_get("last_seen_at")?),
    })
}

/// A page of contacts, newest first by `(created_at, id)` descending,
/// optionally of one channel.
pub async fn list_contacts(
    client: &Client,
    channel: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<(Vec<Contact>, Option<Cursor>), ApiError> {
    let mut sql = format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE true");
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(c) = &channel {
        params.push(c);
        sql.push_str(&format!(" AND channel = ${}", params.len()));
    }
    if let Some((t, id)) = &after {
        params.push(t);
        params.push(id);
        sql.push_str(&format!(
            " AND (created_at, id) < (${}, ${})",
            params.len() - 1,
            params.len()
        ));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ${}",
        params.len()
    ));
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    keyset_page(&rows, limit, |row| {
        let cursor = Cursor::Contact {
            created_at: row.try_get("created_at")?,
            id: row.try_get("id")?,
        };
        Ok((contact_of(row)?, cursor))
    })
}

/// Most conversations `GET /contacts/{id}` shows.
pub const CONTACT_CONVERSATIONS: i64 = 50;

/// A contact and its newest conversations (one snapshot), or `None`.
pub async fn contact(client: &mut Client, id: Uuid) -> Result<Option<ContactDetail>, ApiError> {
    // Two statements, one snapshot.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = $1"
        ))
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let contact = contact_of(&row)?;
    let stmt = tx
        .prepare_cached(
            "SELECT c.id, c.status, c.created_at, c.updated_at, c.closed_at \
             FROM channel_conversations cc JOIN conversations c ON c.id = cc.conversation_id \
             WHERE cc.contact_id = $1 ORDER BY c.created_at DESC, c.id DESC LIMIT $2",
        )
        .await?;
    let rows = tx.query(&stmt, &[&id, &CONTACT_CONVERSATIONS]).await?;
    let conversations = rows.iter().map(summary_of).collect::<Result<_, _>>()?;
    tx.commit().await?;
    Ok(Some(ContactDetail {
        contact,
        conversations,
    }))
}

/// What one channel holds, by name (see [`channel_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Contacts.
    pub contacts: i64,
    /// OPEN conversations.
    pub open_conversations: i64,
    /// Queued deliveries.
    pub deliveries_queued: i64,
    /// Failed deliveries.
    pub deliveries_failed: i64,
}

/// The counts of each of `names`, in their order (one statement).
pub async fn channel_counts(
    client: &Client,
    names: &[String],
) -> Result<Vec<ChannelCounts>, ApiError> {
    let stmt = client
        .prepare_cached(
            "SELECT ch.name, \
               (SELECT count(*) FROM contacts WHERE channel = ch.name) AS contacts, \
               (SELECT count(*) FROM channel_conversations cc \
                  JOIN conversations c ON c.id = cc.conversation_id \
                 WHERE cc.channel = ch.name AND c.status = 'OPEN') AS open_conversations, \
               (SELECT count(*) FROM deliveries \
                 WHERE channel = ch.name AND status = 'queued') AS deliveries_queued, \
               (SELECT count(*) FROM deliveries \
                 WHERE channel = ch.name AND status = 'failed') AS deliveries_failed \
             FROM unnest($1::text[]) WITH ORDINALITY AS ch(name, n) ORDER BY ch.n",
        )
        .await?;
    let rows = client.query(&stmt, &[&names]).await?;
    rows.iter()
        .map(|row| {
            Ok(ChannelCounts {
                contacts: row.try_get("contacts")?,
                open_conversations: row.try_get("open_conversations")?,
                deliveries_queued: row.try_get("deliveries_queued")?,
                deliveries_failed: row.try_get("deliveries_failed")?,
            })
        })
        .collect()
}

/// Filters of `GET /deliveries`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only deliveries in this status.
    pub status: Option<DeliveryStatus>,
    /// Only this channel's.
    pub channel: Option<String>,
    /// Only this conversation's.
    pub conversation_id: Option<Uuid>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.message_id, d.conversation_id, d.channel, d.contact_id, \
     d.status, d.attempts, d.next_attempt_at, d.provider_message_id, d.error_code, \
     d.error_reason, m.content, d.queued_at, d.sent_at, d.delivered_at, d.read_at, \
     d.failed_at, d.updated_at";

fn delivery_of(row: &Row) -> Result<Delivery, ApiError> {
    let status: String = row.try_get("status")?;
    let opt = |col: &str| -> Result<Option<String>, ApiError> {
        let t: Option<DateTime<Utc>> = row.try_get(col)?;
        Ok(t.map(ts))
    };
    Ok(Delivery {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        conversation_id: row.try_get("conversation_id")?,
        channel: row.try_get("channel")?,
        contact_id: row.try_get("contact_id")?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            ApiError::unexpected(format!("unexpected delivery status {status:?}"))
        })?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: ts(row.try_get("next_attempt_at")?),
        provider_message_id: row.try_get("provider_message_id")?,
        error_code: row.try_get("error_code")?,
        error_reason: row.try_get("error_reason")?,
        content: row.try_get("content")?,
        queued_at: ts(row.try_get("queued_at")?),
        sent_at: opt("sent_at")?,
        delivered_at: opt("delivered_at")?,
        read_at: opt("read_at")?,
        failed_at: opt("failed_at")?,
        updated_at: ts(row.try_get("updated_at")?),
    })
}

/// A page of deliveries, newest first by id, filtered.
pub async fn list_deliveries(
    client: &Client,
    filter: &DeliveryFilter,
    after: Option<i64>,
    limit: i64,
) -> Result<(Vec<Delivery>, Option<Cursor>), ApiError> {
    let mut sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
         LEFT JOIN messages m ON m.id = d.message_id WHERE true"
    );
    let status = filter.status.map(DeliveryStatus::as_str);
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(s) = &status {
        params.push(s);
        sql.push_str(&format!(" AND d.status = ${}", params.len()));
    }
    if let Some(c) = &filter.channel {
        params.push(c);
        sql.push_str(&format!(" AND d.channel = ${}", params.len()));
    }
    if let Some(c) = &filter.conversation_id {
        params.push(c);
        sql.push_str(&format!(" AND d.conversation_id = ${}", params.len()));
    }
    if let Some(a) = &after {
        params.push(a);
        sql.push_str(&format!(" AND d.id < ${}", params.len()));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    sql.push_str(&format!(" ORDER BY d.id DESC LIMIT ${}", params.len()));
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    keyset_page(&rows, limit, |row| {
        let d = delivery_of(row)?;
        let cursor = Cursor::Delivery { id: d.id };
        Ok((d, cursor))
    })
}

/// One delivery and its timeline (one statement each, one snapshot), or
/// `None`.
pub async fn delivery(client: &mut Client, id: i64) -> Result<Option<DeliveryDetail>, ApiError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let detail = delivery_in(&tx, id).await?;
    tx.commit().await?;
    Ok(detail)
}

async fn delivery_in<C: GenericClient + Sync>(
    client: &C,
    id: i64,
) -> Result<Option<DeliveryDetail>, ApiError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
             LEFT JOIN messages m ON m.id = d.message_id WHERE d.id = $1"
        ))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let delivery = delivery_of(&row)?;
    let stmt = client
        .prepare_cached(
            "SELECT id, event, at, code, reason, source FROM delivery_events \
             WHERE delivery_id = $1 ORDER BY id",
        )
        .await?;
    let events = client
        .query(&stmt, &[&id])
        .await?
        .iter()
        .map(|r| {
            Ok(DeliveryEvent {
                id: r.try_get("id")?,
                event: r.try_get("event")?,
                at: ts(r.try_get("at")?),
                code: r.try_get("code")?,
                reason: r.try_get("reason")?,
                source: r.try_get("source")?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Some(DeliveryDetail { delivery, events }))
}

/// What became of [`retry_delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued again; the delivery as it is now.
    Retried(Box<DeliveryDetail>),
    /// No such delivery.
    NotFound,
    /// It is not failed (its status).
    NotFailed(DeliveryStatus),
}

/// Queues a failed delivery again in one read-write transaction: status
/// `queued`, attempts 0, due now, lease and failure cleared from the row;
/// the failure it retries stays in the `retried` event (source `api`).
pub async fn retry_delivery(client: &mut Client, id: i64) -> Result<RetryOutcome, ApiError> {
    let tx = client.build_transaction().read_only(false).start().await?;
    let stmt = tx
        .prepare_cached(
            "SELECT status, error_code, error_reason FROM deliveries WHERE id = $1 FOR UPDATE",
        )
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
        tx.rollback().await?;
        return Ok(RetryOutcome::NotFound);
    };
    let status: String = row.try_get("status")?;
    let status = DeliveryStatus::parse(&status)
        .ok_or_else(|| ApiError::unexpected(format!("unexpected delivery status {status:?}")))?;
    if !status.retryable() {
        tx.rollback().await?;
        return Ok(RetryOutcome::NotFailed(status));
    }
    let code: Option<String> = row.try_get("error_code")?;
    let reason: Option<String> = row.try_get("error_reason")?;
    let stmt = tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'queued', attempts = 0, next_attempt_at = now(), \
               lease_owner = NULL, lease_until = NULL, attempt_started_at = NULL, \
               error_code = NULL, error_reason = NULL, failed_at = NULL, updated_at = now() \
             WHERE id = $1",
        )
        .await?;
    tx.execute(&stmt, &[&id]).await?;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO delivery_events (delivery_id, event, code, reason, source) \
             VALUES ($1, 'retried', $2, $3, 'api')",
        )
        .await?;
    tx.execute(&stmt, &[&id, &code, &reason]).await?;
    let detail = delivery_in(&tx, id)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("delivery {id} vanished while retried")))?;
    tx.commit().await?;
    Ok(RetryOutcome::Retried(Box::new(detail)))
}
