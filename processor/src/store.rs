//! Postgres access of the processor: pre-loading the persisted facts a batch
//! needs, and writing a poll batch's effects in ONE transaction with
//! multi-row idempotent statements (`INSERT … SELECT … FROM unnest(…) ON
//! CONFLICT …`, `UPDATE … FROM unnest(…)`), together with the resume
//! positions and the fencing check.
//!
//! An INBOUND row is inserted (reply `NULL`) in the batch that accepts its
//! message, so the api shows it at once; the batch that writes the group's
//! OUTBOUND sets `reply_id` on the group's rows where it is still `NULL`
//! (in the insert itself when the rows are written by the same batch).
//! Nothing is overwritten once set, so a replayed batch changes nothing.

use std::collections::{HashMap, HashSet};

use chatpipe_core::Event;
use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::effects::Effect;
use crate::ownership::{fence_and_advance, PositionUpdate};
use crate::window::{ConversationLog, LogPos, StoredMessage};

/// Errors of a batch write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another owner claimed these partitions: the batch was rolled back.
    #[error("partitions {0:?} are owned by a newer epoch; batch refused")]
    Fenced(Vec<i32>),
    /// Postgres failed; the batch was not committed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
}

/// Planner settings of every processor session. Each statement of the
/// processor looks up a batch's keys (an array parameter, at most a few
/// thousand values) in a table that keeps growing, by its primary key or a
/// unique index. Postgres has no statistics on an array parameter, and
/// none on a table that grew since its last ANALYZE; it then picks bitmap
/// scans of every row of the topic (the constant leading key column) or
/// hash joins over the whole table. Measured over a 1 M-event catch-up
/// before autovacuum analyzed the tables: the conversation preload grew
/// from 6 ms to 75 ms per batch and a close update from 1 ms to 200 ms.
/// Index lookups cost O(keys · log rows) whatever the table's size, so the
/// processor's sessions prefer them.
pub const SESSION_OPTIONS: &str = "-c enable_seqscan=off -c enable_bitmapscan=off \
                                   -c enable_hashjoin=off -c enable_mergejoin=off";

/// The processor's connection pool for `url`: [`chatpipe_core::db::pool`]
/// with [`SESSION_OPTIONS`] added to the URL's own options.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    use anyhow::Context;
    let mut config = <tokio_postgres::Config as std::str::FromStr>::from_str(url)
        .with_context(|| format!("invalid Postgres URL {}", chatpipe_core::db::redact(url)))?;
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config.options(&options);
    chatpipe_core::db::pool_from_config(config, max_size)
}

fn ms(t: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Persisted log states of `ids` (missing ids are unknown conversations).
pub async fn load_conversations(
    client: &impl GenericClient,
    topic: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, ConversationLog>, tokio_postgres::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = client
        .query(
            // Driven by the keys, one index probe each. With
            // `conversation_id = ANY($2)`, or a plain join, the planner may
            // use only the constant `topic` as index condition and read
            // every row of the topic (20 ms instead of 0.8 ms for 250 keys
            // in a 50 k-row table, growing with the table); the LIMIT keeps
            // the per-key subquery from being flattened into such a join.
            "SELECT u.id, l.created_offset, l.created_arrival_ms, l.closed_offset, l.closed_arrival_ms
               FROM unnest($2::uuid[]) AS u(id)
               CROSS JOIN LATERAL (
                    SELECT created_offset, created_arrival_ms, closed_offset, closed_arrival_ms
                      FROM processor_conversation_log
                     WHERE topic = $1 AND conversation_id = u.id
                     LIMIT 1) AS l",
            &[&topic, &ids],
        )
        .await?;
    for r in rows {
        let closed_offset: Option<i64> = r.get(3);
        let closed_arrival: Option<i64> = r.get(4);
        out.insert(
            r.get(0),
            ConversationLog {
                created: Some(LogPos {
                    offset: r.get(1),
                    arrival_ms: r.get(2),
                }),
                closed: closed_offset.map(|offset| LogPos {
                    offset,
                    arrival_ms: closed_arrival.unwrap_or_default(),
                }),
            },
        );
    }
    Ok(out)
}

/// Stored INBOUND messages among `ids`, and rejected NEW_MESSAGE events
/// (a rejection is final for its id); an accepted row wins over a
/// rejection of the same id.
pub async fn load_messages(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, StoredMessage)>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = client
        .query(
            "SELECT event_id, conversation_id, COALESCE(event->'data'->>'content', ''), NULL::uuid, true
               FROM rejected_events WHERE event_type = 'NEW_MESSAGE' AND event_id = ANY($1)
                AND reason <> 'id_reused_with_different_content'
             UNION ALL
             SELECT id, conversation_id, content, reply_id, false FROM messages
              WHERE id = ANY($1) AND direction = 'INBOUND'",
            &[&ids],
        )
        .await?;
    let mut out: HashMap<Uuid, StoredMessage> = HashMap::with_capacity(rows.len());
    for r in rows {
        let m = StoredMessage {
            conversation_id: r.get(1),
            content: r.get(2),
            reply_id: r.get(3),
            rejected: r.get(4),
        };
        let id: Uuid = r.get(0);
        match out.get(&id) {
            Some(prev) if !prev.rejected => {}
            Some(prev) if m.rejected && prev.rejected => {}
            _ => {
                out.insert(id, m);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Offsets in `[from, to]` of `partition` whose rejection is stored.
pub async fn load_decided_offsets(
    client: &impl GenericClient,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT source_offset FROM rejected_events
              WHERE source_topic = $1 AND source_partition = $2 AND source_offset BETWEEN $3 AND $4",
            &[&topic, &partition, &from, &to],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// The effects of one partition in a batch, and its new positions.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    /// Positions and the writer's epoch (the fencing check).
    pub position: PositionUpdate,
    /// Effects in decision order.
    pub effects: Vec<Effect>,
}

/// Column arrays of the batch, coalesced across partitions.
#[derive(Default)]
struct Columns {
    conv_ids: Vec<Uuid>,
    conv_ts: Vec<DateTime<Utc>>,
    log_parts: Vec<i32>,
    log_offsets: Vec<i64>,
    log_arrivals: Vec<i64>,
    close_seen: HashSet<Uuid>,
    close_ids: Vec<Uuid>,
    close_ts: Vec<DateTime<Utc>>,
    close_parts: Vec<i32>,
    close_created_offsets: Vec<i64>,
    close_created_arrivals: Vec<i64>,
    close_offsets: Vec<i64>,
    close_arrivals: Vec<i64>,
    msg_index: HashMap<Uuid, usize>,
    msg_ids: Vec<Uuid>,
    msg_convs: Vec<Uuid>,
    msg_dirs: Vec<&'static str>,
    msg_contents: Vec<String>,
    msg_ts: Vec<DateTime<Utc>>,
    msg_arrivals: Vec<DateTime<Utc>>,
    msg_replies: Vec<Option<Uuid>>,
    /// INBOUND rows written by an earlier batch whose reply is written now.
    upd_ids: Vec<Uuid>,
    upd_replies: Vec<Uuid>,
    rej_types: Vec<&'static str>,
    rej_event_ids: Vec<Uuid>,
    rej_convs: Vec<Uuid>,
    rej_reasons: Vec<&'static str>,
    rej_details: Vec<&'static str>,
    rej_events: Vec<serde_json::Value>,
    rej_arrivals: Vec<DateTime<Utc>>,
    rej_parts: Vec<i32>,
    rej_offsets: Vec<i64>,
}

impl Columns {
    fn push_message(
        &mut self,
        id: Uuid,
        conv: Uuid,
        dir: &'static str,
        content: &str,
        ts: DateTime<Utc>,
        arrival: DateTime<Utc>,
    ) {
        if self.msg_index.contains_key(&id) {
            return;
        }
        self.msg_index.insert(id, self.msg_ids.len());
        self.msg_ids.push(id);
        self.msg_convs.push(conv);
        self.msg_dirs.push(dir);
        self.msg_contents.push(content.to_owned());
        self.msg_ts.push(ts);
        self.msg_arrivals.push(arrival);
        self.msg_replies.push(None);
    }

    fn add(&mut self, partition: i32, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::ConversationCreated {
                    conversation_id,
                    created_at,
                    offset,
                    arrival_ms,
                } => {
                    self.conv_ids.push(*conversation_id);
                    self.conv_ts.push(*created_at);
                    self.log_parts.push(partition);
                    self.log_offsets.push(*offset);
                    self.log_arrivals.push(*arrival_ms);
                }
                Effect::ConversationClosed {
                    conversation_id,
                    created,
                    closed_at,
                    offset,
                    arrival_ms,
                } => {
                    // One row per key: an upsert cannot touch a row twice.
                    // (The engine closes a conversation once; this keeps
                    // a batch writable whatever it is handed.)
                    if !self.close_seen.insert(*conversation_id) {
                        continue;
                    }
                    self.close_ids.push(*conversation_id);
                    self.close_ts.push(*closed_at);
                    self.close_parts.push(partition);
                    self.close_created_offsets.push(created.offset);
                    self.close_created_arrivals.push(created.arrival_ms);
                    self.close_offsets.push(*offset);
                    self.close_arrivals.push(*arrival_ms);
                }
                Effect::Inbound(m) => {
                    self.push_message(
                        m.id,
                        m.conversation_id,
                        "INBOUND",
                        &m.content,
                        m.timestamp,
                        ms(m.arrival_ms),
                    );
                }
                Effect::Outbound(o) => {
                    self.push_message(
                        o.id,
                        o.conversation_id,
                        "OUTBOUND",
                        &o.content,
                        ms(o.timestamp_ms),
                        ms(o.last_arrival_ms),
                    );
                    // Record the reply on its INBOUND rows: directly in the
                    // insert when the row is written by this batch (the
                    // upsert also covers a replayed row stored without
                    // reply), else by an UPDATE of the stored row.
                    for id in &o.inbound_ids {
                        match self.msg_index.get(id) {
                            Some(&i) if self.msg_dirs[i] == "INBOUND" => {
                                if self.msg_replies[i].is_none() {
                                    self.msg_replies[i] = Some(o.id);
                                }
                            }
                            _ => {
                                self.upd_ids.push(*id);
                                self.upd_replies.push(o.id);
                            }
                        }
                    }
                }
                Effect::Rejected(r) => {
                    self.rej_types.push(r.event.event_type().as_str());
                    self.rej_event_ids.push(r.event.id());
                    self.rej_convs.push(r.event.conversation_id());
                    self.rej_reasons.push(r.reason.as_str());
                    self.rej_details.push(r.reason.detail());
                    self.rej_events.push(r.event.to_json());
                    self.rej_arrivals.push(ms(r.arrival_ms));
                    self.rej_parts.push(partition);
                    self.rej_offsets.push(r.offset);
                }
            }
        }
    }
}

/// Writes a poll batch in one transaction: the fencing check and positions
/// of every partition, then conversations, conversation log positions,
/// messages (INBOUND rows of accepted messages, OUTBOUND rows), `reply_id`
/// on the INBOUND rows of the groups replied in this batch (set where still
/// `NULL`), and rejected events. All statements are idempotent, so
/// replaying a batch changes nothing.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    topic: &str,
    batches: &[PartitionBatch],
) -> Result<(), StoreError> {
    let mut c = Columns::default();
    for b in batches {
        c.add(b.position.partition, &b.effects);
    }
    let positions: Vec<PositionUpdate> = batches.iter().map(|b| b.position).collect();

    let tx = client.transaction().await?;
    // Fencing first: it also locks the partitions' rows, so a concurrent
    // claim waits for this transaction and then sees its positions.
    let fenced = fence_and_advance(&tx, topic, &positions).await?;
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Err(StoreError::Fenced(fenced));
    }
    if !c.conv_ids.is_empty() {
        tx.execute(
            "INSERT INTO conversations (id, status, created_at, updated_at)
             SELECT u.id, 'OPEN', u.ts, u.ts FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, ts)
             ON CONFLICT (id) DO NOTHING",
            &[&c.conv_ids, &c.conv_ts],
        )
        .await?;
        tx.execute(
            "INSERT INTO processor_conversation_log
                    (topic, conversation_id, partition, created_offset, created_arrival_ms)
             SELECT $1, u.id, u.p, u.o, u.a
               FROM unnest($2::uuid[], $3::int4[], $4::int8[], $5::int8[]) AS u(id, p, o, a)
             ON CONFLICT (topic, conversation_id) DO NOTHING",
            &[
                &topic,
                &c.conv_ids,
                &c.log_parts,
                &c.log_offsets,
                &c.log_arrivals,
            ],
        )
        .await?;
    }
    if !c.close_ids.is_empty() {
        // `<> 'CLOSED'` (the CHECK allows OPEN and CLOSED only) rather than
        // `= 'OPEN'`: no index can serve it, so the planner cannot read
        // every open conversation through the status index instead of
        // probing the batch's ids.
        tx.execute(
            "UPDATE conversations c SET status = 'CLOSED', closed_at = u.ts, updated_at = u.ts
               FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, ts)
              WHERE c.id = u.id AND c.status <> 'CLOSED'",
            &[&c.close_ids, &c.close_ts],
        )
        .await?;
        // An upsert, not an UPDATE … FROM unnest: its conflict check probes
        // the unique index row by row, where a join on the constant topic
        // column let the planner scan every row of the topic (cost growing
        // with the table: 1 ms → 200 ms per batch over a 1 M-event run).
        // The row exists (only a created conversation is closed); the
        // created position is supplied anyway so the statement is total.
        tx.execute(
            "INSERT INTO processor_conversation_log AS l
                    (topic, conversation_id, partition, created_offset, created_arrival_ms,
                     closed_offset, closed_arrival_ms)
             SELECT $1, u.id, u.p, u.co, u.ca, u.o, u.a
               FROM unnest($2::uuid[], $3::int4[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])
                    AS u(id, p, co, ca, o, a)
             ON CONFLICT (topic, conversation_id) DO UPDATE
                SET closed_offset = EXCLUDED.closed_offset,
                    closed_arrival_ms = EXCLUDED.closed_arrival_ms
              WHERE l.closed_offset IS NULL",
            &[
                &topic,
                &c.close_ids,
                &c.close_parts,
                &c.close_created_offsets,
                &c.close_created_arrivals,
                &c.close_offsets,
                &c.close_arrivals,
            ],
        )
        .await?;
    }
    if !c.msg_ids.is_empty() {
        let dirs: Vec<String> = c.msg_dirs.iter().map(|s| s.to_string()).collect();
        tx.execute(
            "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival, reply_id)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                  $5::timestamptz[], $6::timestamptz[], $7::uuid[])
             ON CONFLICT (id) DO UPDATE SET reply_id = EXCLUDED.reply_id
              WHERE messages.reply_id IS NULL AND EXCLUDED.reply_id IS NOT NULL
                AND messages.direction = 'INBOUND'",
            &[
                &c.msg_ids,
                &c.msg_convs,
                &dirs,
                &c.msg_contents,
                &c.msg_ts,
                &c.msg_arrivals,
                &c.msg_replies,
            ],
        )
        .await?;
    }
    if !c.upd_ids.is_empty() {
        // Only the key in WHERE: with `reply_id IS NULL` there as well, a
        // table without statistics looks as if few rows qualify, and the
        // planner read the whole table once per statement with the keys on
        // the inner side (~440 µs per updated row over a 1 M-row table)
        // instead of probing the primary key per key. "Set where unset"
        // is therefore in the SET: a replayed statement rewrites the same
        // value.
        tx.execute(
            "UPDATE messages m
                SET reply_id = CASE WHEN m.direction = 'INBOUND' AND m.reply_id IS NULL
                                    THEN u.r ELSE m.reply_id END
               FROM unnest($1::uuid[], $2::uuid[]) AS u(id, r)
              WHERE m.id = u.id",
            &[&c.upd_ids, &c.upd_replies],
        )
        .await?;
    }
    if !c.rej_offsets.is_empty() {
        let types: Vec<String> = c.rej_types.iter().map(|s| s.to_string()).collect();
        let reasons: Vec<String> = c.rej_reasons.iter().map(|s| s.to_string()).collect();
        let details: Vec<String> = c.rej_details.iter().map(|s| s.to_string()).collect();
        tx.execute(
            "INSERT INTO rejected_events (event_type, event_id, conversation_id, reason, detail, event,
                                          arrival, source_topic, source_partition, source_offset)
             SELECT u.t, u.e, u.c, u.r, u.d, u.ev, u.a, $1, u.p, u.o
               FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::jsonb[],
                           $8::timestamptz[], $9::int4[], $10::int8[])
                    AS u(t, e, c, r, d, ev, a, p, o)
             ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
            &[
                &topic,
                &types,
                &c.rej_event_ids,
                &c.rej_convs,
                &reasons,
                &details,
                &c.rej_events,
                &c.rej_arrivals,
                &c.rej_parts,
                &c.rej_offsets,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Message ids of NEW_MESSAGE events among `events` (deduplicated).
pub fn message_ids<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::NewMessage { id, .. } => Some(*id),
            _ => None,
        })
        .filter(|id| seen.insert(*id))
        .collect()
}
