//! Postgres access of the api: a read-only connection pool and the queries
//! behind each endpoint. Every connection is opened with
//! `default_transaction_read_only=on` and a statement timeout, and
//! optionally assumes a read-only role, so the api cannot write whatever
//! its login role may do.
//!
//! With authentication on, a second, small pool ([`readwrite_pool`]) writes
//! the agents and refresh-token tables only (their SQL is in
//! [`crate::agents`]).

use std::time::Duration;

use chatpipe_core::event::format_timestamp;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Client, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::{
    Author, ContactRef, ConversationDetail, ConversationStatus, ConversationSummary, DeliveryState,
    DeliveryStatus, Direction, Message, RejectedEvent,
};
use crate::pagination::Cursor;

/// The read-only role created by migration `V300__api_readonly_role.sql`.
pub const READONLY_ROLE: &str = "chatpipe_api_readonly";

/// Builds the api's pool: at most `max_size` connections to `url`, each
/// read-only, with `statement_timeout`, and `SET ROLE role` when `role`
/// is not empty. Nothing is contacted here.
pub fn readonly_pool(
    url: &str,
    max_size: usize,
    statement_timeout: Duration,
    role: &str,
) -> anyhow::Result<Pool> {
    pool(url, max_size, statement_timeout, role, true)
}

/// Connections of the read-write pool of the agents tables.
pub const READWRITE_POOL_SIZE: usize = 4;

/// Builds the pool of the agents and refresh-token tables: like
/// [`readonly_pool`] (statement timeout, `SET ROLE role` when not empty)
/// but writable. Nothing is contacted here.
pub fn readwrite_pool(
    url: &str,
    max_size: usize,
    statement_timeout: Duration,
    role: &str,
) -> anyhow::Result<Pool> {
    pool(url, max_size, statement_timeout, role, false)
}

fn pool(
    url: &str,
    max_size: usize,
    statement_timeout: Duration,
    role: &str,
    read_only: bool,
) -> anyhow::Result<Pool> {
    let mut pg = chatpipe_core::db::PgConnectOptions::parse(url)?;
    let config = &mut pg.config;
    let mut options = config.get_options().unwrap_or_default().to_owned();
    if read_only {
        options.push_str(" -c default_transaction_read_only=on");
    }
    options.push_str(&format!(
        " -c statement_timeout={}",
        statement_timeout.as_millis().max(1)
    ));
    if !role.is_empty() {
        if !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            anyhow::bail!("invalid role name {role:?}");
        }
        options.push_str(&format!(" -c role={role}"));
    }
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("chatpipe-api");
    }
    chatpipe_core::db::pool_from_config(pg, max_size)
}

/// One keyset page from `rows` (a query that fetched `limit + 1`): the
/// first `limit` rows as items, each with the cursor that continues after
/// it, and the last cursor as the next one when there were more rows.
pub(crate) fn keyset_page<T>(
    rows: &[Row],
    limit: i64,
    mut item: impl FnMut(&Row) -> Result<(T, Cursor), ApiError>,
) -> Result<(Vec<T>, Option<Cursor>), ApiError> {
    let take = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > take;
    let mut page = Vec::with_capacity(rows.len().min(take));
    let mut last = None;
    for row in rows.iter().take(take) {
        let (t, cursor) = item(row)?;
        page.push(t);
        last = Some(cursor);
    }
    Ok((page, if more { last } else { None }))
}

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    format_timestamp(t)
}

pub(crate) fn status_of(row: &Row, col: &str) -> Result<ConversationStatus, ApiError> {
    let s: String = row.try_get(col)?;
    ConversationStatus::parse(&s)
        .ok_or_else(|| ApiError::unexpected(format!("unexpected status {s:?}")))
}

/// The columns of a message as every message listing shows it (its
/// channel, author, kind, media and delivery), over
/// [`MESSAGE_JOINS`]; `cc` must be the `channel_conversations` row of its
/// conversation.
pub(crate) const MESSAGE_COLUMNS: &str = r#"m.id AS m_id, m.conversation_id AS m_conversation_id,
       m.direction, m.content, m."timestamp",
       coalesce(mm.channel, cc.channel) AS m_channel,
       mm.author_kind AS m_author_kind,
       coalesce(mm.kind, 'text') AS m_kind,
       mm.media_id AS m_media_id,
       coalesce(mm.contact_id, cc.contact_id) AS m_contact_id,
       coalesce(mc.display_name, mc.provider_user_id) AS m_contact_name,
       mm.agent_id AS m_agent_id,
       ag.username AS m_agent_name,
       d.status AS d_status, d.error_code AS d_error_code,
       d.error_reason AS d_error_reason, d.updated_at AS d_updated_at"#;

/// The joins behind [`MESSAGE_COLUMNS`] (after `messages m` and `cc`).
pub(crate) const MESSAGE_JOINS: &str = r#"LEFT JOIN message_meta mm ON mm.message_id = m.id
       LEFT JOIN contacts mc ON mc.id = coalesce(mm.contact_id, cc.contact_id)
       LEFT JOIN agents ag ON ag.id = mm.agent_id
       LEFT JOIN deliveries d ON d.message_id = m.id"#;

/// A message of [`MESSAGE_COLUMNS`].
pub(crate) fn message_of(row: &Row) -> Result<Message, ApiError> {
    let dir: String = row.try_get("direction")?;
    let direction = Direction::parse(&dir)
        .ok_or_else(|| ApiError::unexpected(format!("unexpected direction {dir:?}")))?;
    let author_kind: Option<String> = row.try_get("m_author_kind")?;
    let author = Author::of(
        direction,
        author_kind.as_deref(),
        (row.try_get("m_contact_id")?, row.try_get("m_contact_name")?),
        (row.try_get("m_agent_id")?, row.try_get("m_agent_name")?),
    );
    let delivery_status: Option<String> = row.try_get("d_status")?;
    let delivery = match delivery_status {
        None => None,
        Some(s) => Some(DeliveryState {
            status: DeliveryStatus::parse(&s)
                .ok_or_else(|| ApiError::unexpected(format!("unexpected delivery status {s:?}")))?,
            error_code: row.try_get("d_error_code")?,
            error_reason: row.try_get("d_error_reason")?,
            updated_at: ts(row.try_get("d_updated_at")?),
        }),
    };
    Ok(Message {
        id: row.try_get("m_id")?,
        direction,
        content: row.try_get("content")?,
        timestamp: ts(row.try_get("timestamp")?),
        channel: row.try_get("m_channel")?,
        author,
        kind: row.try_get("m_kind")?,
        media_id: row.try_get("m_media_id")?,
        delivery,
    })
}

pub(crate) fn summary_of(row: &Row) -> Result<ConversationSummary, ApiError> {
    let closed: Option<DateTime<Utc>> = row.try_get("closed_at")?;
    Ok(ConversationSummary {
        id: row.try_get("id")?,
        status: status_of(row, "status")?,
        created_at: ts(row.try_get("created_at")?),
        updated_at: ts(row.try_get("updated_at")?),
        closed_at: closed.map(ts),
    })
}

/// Message order of the conversation view and its listing: timestamp, then INBOUND before OUTBOUND,
/// then id.
pub(crate) const MESSAGE_ORDER: &str = r#"m."timestamp", (m.direction = 'OUTBOUND'), m.id"#;

/// One conversation with all its messages, its channel and contact, and
/// each message's author and delivery (one query, one snapshot), or `None`
/// when it does not exist.
pub async fn conversation(
    client: &Client,
    id: Uuid,
) -> Result<Option<ConversationDetail>, ApiError> {
    let sql = format!(
        r#"SELECT c.id, c.status, c.created_at, c.updated_at,
                  cc.channel AS c_channel, ct.id AS ct_id,
                  ct.provider_user_id AS ct_provider_user_id,
                  ct.display_name AS ct_display_name,
                  {MESSAGE_COLUMNS}
           FROM conversations c
           LEFT JOIN channel_conversations cc ON cc.conversation_id = c.id
           LEFT JOIN contacts ct ON ct.id = cc.contact_id
           LEFT JOIN messages m ON m.conversation_id = c.id
           {MESSAGE_JOINS}
           WHERE c.id = $1
           ORDER BY {MESSAGE_ORDER}"#
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&id]).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let contact_id: Option<Uuid> = first.try_get("ct_id")?;
    let contact = match contact_id {
        None => None,
        Some(id) => Some(ContactRef {
            id,
            provider_user_id: first.try_get("ct_provider_user_id")?,
            display_name: first.try_get("ct_display_name")?,
        }),
    };
    let mut detail = ConversationDetail {
        id: first.try_get("id")?,
        status: status_of(first, "status")?,
        created_at: ts(first.try_get("created_at")?),
        updated_at: ts(first.try_get("updated_at")?),
        messages: Vec::with_capacity(rows.len()),
        channel: first.try_get("c_channel")?,
        contact,
    };
    for row in &rows {
        let m_id: Option<Uuid> = row.try_get("m_id")?;
        if m_id.is_some() {
            detail.messages.push(message_of(row)?);
        }
    }
    Ok(Some(detail))
}

/// Whether conversation `id` exists.
pub async fn conversation_exists(client: &Client, id: Uuid) -> Result<bool, ApiError> {
    let stmt = client
        .prepare_cached("SELECT 1 FROM conversations WHERE id = $1")
        .await?;
    Ok(client.query_opt(&stmt, &[&id]).await?.is_some())
}

/// A page of conversations, newest first, optionally of one status,
/// starting after `after`. Returns up to `limit` rows and the cursor of the
/// next page (`None` on the last page).
pub async fn list_conversations(
    client: &Client,
    status: Option<ConversationStatus>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<(Vec<ConversationSummary>, Option<Cursor>), ApiError> {
    let status_str = status.map(ConversationStatus::as_str);
    let fetch = limit + 1;
    let mut sql = String::from(
        "SELECT id, status, created_at, updated_at, closed_at FROM conversations WHERE true",
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(s) = &status_str {
        params.push(s);
        sql.push_str(&format!(" AND status = ${}", params.len()));
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
    params.push(&fetch);
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT ${}",
        params.len()
    ));
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    keyset_page(&rows, limit, |row| {
        let cursor = Cursor::Conversation {
            created_at: row.try_get("created_at")?,
            id: row.try_get("id")?,
        };
        Ok((summary_of(row)?, cursor))
    })
}

/// A page of one conversation's messages in timestamp order, starting after
/// `after`. Returns up to `limit` messages and the cursor of the next page
/// (`None` on the last page).
pub async fn list_messages(
    client: &Client,
    conversation_id: Uuid,
    after: Option<(DateTime<Utc>, bool, Uuid)>,
    limit: i64,
) -> Result<(Vec<Message>, Option<Cursor>), ApiError> {
    let fetch = limit + 1;
    let rows = match after {
        None => {
            let sql = format!(
                r#"SELECT {MESSAGE_COLUMNS}
                   FROM messages m
                   LEFT JOIN channel_conversations cc ON cc.conversation_id = m.conversation_id
                   {MESSAGE_JOINS}
                   WHERE m.conversation_id = $1
                   ORDER BY {MESSAGE_ORDER} LIMIT $2"#
            );
            let stmt = client.prepare_cached(&sql).await?;
            client.query(&stmt, &[&conversation_id, &fetch]).await?
        }
        Some((t, outbound, id)) => {
            let sql = format!(
                r#"SELECT {MESSAGE_COLUMNS}
                   FROM messages m
                   LEFT JOIN channel_conversations cc ON cc.conversation_id = m.conversation_id
                   {MESSAGE_JOINS}
                   WHERE m.conversation_id = $1
                     AND m."timestamp" >= $2
                     AND (m."timestamp", m.direction = 'OUTBOUND', m.id) > ($2, $3, $4)
                   ORDER BY {MESSAGE_ORDER} LIMIT $5"#
            );
            let stmt = client.prepare_cached(&sql).await?;
            client
                .query(&stmt, &[&conversation_id, &t, &outbound, &id, &fetch])
                .await?
        }
    };
    keyset_page(&rows, limit, |row| {
        let m = message_of(row)?;
        let cursor = Cursor::Message {
            timestamp: row.try_get("timestamp")?,
            outbound: m.direction == Direction::Outbound,
            id: m.id,
        };
        Ok((m, cursor))
    })
}

/// A page of rejected events, newest first, optionally of one conversation
/// and/or one reason, starting after the event with id `after`. Returns
/// up to `limit` events and the cursor of the next page.
pub async fn list_rejected(
    client: &Client,
    conversation_id: Option<Uuid>,
    reason: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<(Vec<RejectedEvent>, Option<Cursor>), ApiError> {
    let mut sql = String::from(
        "SELECT id, event_type, event_id, conversation_id, reason, detail, event, arrival, \
         rejected_at, source_topic, source_partition, source_offset FROM rejected_events WHERE true",
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(c) = &conversation_id {
        params.push(c);
        sql.push_str(&format!(" AND conversation_id = ${}", params.len()));
    }
    if let Some(r) = &reason {
        params.push(r);
        sql.push_str(&format!(" AND reason = ${}", params.len()));
    }
    if let Some(a) = &after {
        params.push(a);
        sql.push_str(&format!(" AND id < ${}", params.len()));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &params).await?;
    let more = rows.len() as i64 > limit;
    let mut page = Vec::with_capacity(rows.len().min(limit as usize));
    for row in rows.iter().take(limit as usize) {
        let arrival: Option<DateTime<Utc>> = row.try_get("arrival")?;
        page.push(RejectedEvent {
            id: row.try_get("id")?,
            event_type: row.try_get("event_type")?,
            event_id: row.try_get("event_id")?,
            conversation_id: row.try_get("conversation_id")?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            event: row.try_get("event")?,
            arrival: arrival.map(ts),
            rejected_at: ts(row.try_get("rejected_at")?),
            source_topic: row.try_get("source_topic")?,
            source_partition: row.try_get("source_partition")?,
            source_offset: row.try_get("source_offset")?,
        });
    }
    let next = match page.last() {
        Some(e) if more => Some(Cursor::Rejected { id: e.id }),
        _ => None,
    };
    Ok((page, next))
}

/// Whether the read-write pool's role may use the agents tables (password
/// sign-in needs them): the readiness check of an api with password
/// sign-in, so a role that cannot (e.g. `chatpipe_api_readonly`) shows as
/// not ready with the fix, not as `503`s at sign-in.
pub async fn agents_usable(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT current_user::text, \
                    has_table_privilege('agents', 'SELECT, INSERT, UPDATE, DELETE') \
                AND has_table_privilege('agent_refresh_tokens', 'SELECT, INSERT, UPDATE, DELETE')",
            &[],
        )
        .await
        .map_err(|e| format!("the agents tables (is the schema migrated?): {e}"))?;
    let (role, usable): (String, bool) = (row.get(0), row.get(1));
    if usable {
        Ok(())
    } else {
        Err(format!(
            "role {role} may not use the agents tables, which password sign-in needs: run the api \
             as chatpipe_api (CHATPIPE_API_DB_ROLE=chatpipe_api, or a login in that group)"
        ))
    }
}

/// Readiness: a pooled connection answers a query.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
