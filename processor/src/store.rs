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
//!
//! **The outbox.** A reply (OUTBOUND) the batch wrote whose conversation
//! is a channel conversation (`channel_conversations`) is queued for
//! delivery in the same transaction: its `deliveries` row (status
//! `queued`), a `delivery_events` row `queued` (source `processor`) and
//! its `message_meta` row (author `bot`), in one statement per batch. A
//! reply row the batch met already stored (a replay) queues nothing, and
//! the inserts skip what exists (`ON CONFLICT DO NOTHING`), so a replay
//! after a crash never queues a delivery twice.

use std::collections::{HashMap, HashSet};

use chatpipe_core::Event;
use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::engine::domain::{ConversationLog, EngineConfig, LogPos, StoredMessage};
use crate::engine::effects::{Effect, Outbound, Reason};
use crate::engine::logcheck::PositionCheck;
use crate::engine::reply::reply_id_salted;
use crate::engine::stranded::{answer_stranded, StrandedRow};
use crate::ownership::{fence_and_advance, Claim, PositionUpdate};
use crate::reply_policy::ReplyPolicy;

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
    /// Message ids of the batch are held by other rows (another
    /// conversation's message, or a message and a reply), written by a
    /// transaction the batch's pre-load could not see (another partition,
    /// another replica). The batch was rolled back; deciding its records
    /// again sees those rows and rejects the reuse.
    #[error("message ids {0:?} were taken concurrently by other rows; deciding again")]
    IdTaken(Vec<Uuid>),
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
///
/// With scans disabled, plan costs carry Postgres' large "disabled" penalty
/// and can pass `jit_above_cost`; JIT-compiling a statement then costs far
/// more than running it (measured: 1.9 s of JIT for a 50 ms lookup), so JIT
/// is off as well: no processor statement runs long enough to gain.
pub const SESSION_OPTIONS: &str = "-c enable_seqscan=off -c enable_bitmapscan=off \
                                   -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off";

/// Bounds on how long one processor statement may wait for a lock or run.
/// Ingest holds a conversation's row lock from its lifecycle decision until
/// the broker acknowledged the record; a replica frozen in between must not
/// hold a processor transaction (and with it every partition in the batch)
/// forever: the statement fails with a transient error, the partition is
/// retried on its own with backoff, and the other partitions go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// `lock_timeout`.
    pub lock: std::time::Duration,
    /// `statement_timeout`.
    pub statement: std::time::Duration,
}

impl Default for SessionTimeouts {
    fn default() -> Self {
        Self {
            lock: std::time::Duration::from_secs(5),
            statement: std::time::Duration::from_secs(60),
        }
    }
}

impl SessionTimeouts {
    /// The `-c` options that set them.
    pub fn options(&self) -> String {
        format!(
            "-c lock_timeout={} -c statement_timeout={}",
            self.lock.as_millis(),
            self.statement.as_millis()
        )
    }
}

/// The processor's connection pool for `url`: [`chatpipe_core::db::pool`]
/// with [`SESSION_OPTIONS`] and the default [`SessionTimeouts`] added to
/// the URL's own options.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    pool_with(url, max_size, SessionTimeouts::default())
}

/// [`pool`] with explicit statement and lock timeouts.
pub fn pool_with(
    url: &str,
    max_size: usize,
    timeouts: SessionTimeouts,
) -> anyhow::Result<deadpool_postgres::Pool> {
    let mut pg = chatpipe_core::db::PgConnectOptions::parse(url)?;
    let config = &mut pg.config;
    let ours = format!("{SESSION_OPTIONS} {}", timeouts.options());
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {ours}"),
        _ => ours,
    };
    config.options(&options);
    chatpipe_core::db::pool_from_config(pg, max_size)
}

/// `text` as Postgres can store it: NUL (which no `text` or `jsonb` value
/// may hold) becomes U+FFFD. Used for what a rejection records, so even an
/// event Postgres refused can be recorded.
pub fn pg_safe_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `value` with [`pg_safe_text`] applied to every string and key.
pub fn pg_safe_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Value::String(pg_safe_text(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(pg_safe_json).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (pg_safe_text(&k), pg_safe_json(v)))
                .collect(),
        ),
        v => v,
    }
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
            "SELECT u.id, l.created_offset, l.created_arrival_ms, l.closed_offset, l.closed_arrival_ms,
                    l.created_event_us, l.closed_event_us
               FROM unnest($2::uuid[]) AS u(id)
               CROSS JOIN LATERAL (
                    SELECT created_offset, created_arrival_ms, closed_offset, closed_arrival_ms,
                           created_event_us, closed_event_us
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
                created_event_us: r.get(5),
                closed_event_us: r.get(6),
            },
        );
    }
    Ok(out)
}

/// Stored messages among `ids` (INBOUND rows, and OUTBOUND rows: a reply's
/// id may not be reused by a message), and rejected NEW_MESSAGE events (a
/// rejection is final for its id); a stored row wins over a rejection of
/// the same id.
pub async fn load_messages(
    client: &impl GenericClient,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, StoredMessage)>, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = client
        .query(
            "SELECT event_id, conversation_id, COALESCE(event->'data'->>'content', ''), NULL::uuid, true,
                    false
               FROM rejected_events WHERE event_type = 'NEW_MESSAGE' AND event_id = ANY($1)
                AND reason NOT IN ('id_reused_with_different_content', 'id_used_by_reply')
             UNION ALL
             SELECT id, conversation_id, content, reply_id, false, direction = 'OUTBOUND'
               FROM messages WHERE id = ANY($1)",
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
            is_reply: r.get(5),
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
    conv_event_us: Vec<i64>,
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
    close_event_us: Vec<i64>,
    msg_index: HashMap<Uuid, usize>,
    /// Ids pushed twice with another row (conversation, direction or
    /// content): two partitions of one batch accepted the same id.
    msg_collisions: Vec<Uuid>,
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
    upd_convs: Vec<Uuid>,
    rej_types: Vec<String>,
    rej_event_ids: Vec<Option<Uuid>>,
    rej_convs: Vec<Option<Uuid>>,
    rej_reasons: Vec<&'static str>,
    rej_details: Vec<String>,
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
        if let Some(&i) = self.msg_index.get(&id) {
            // The same row again (a replayed effect) is written once; a
            // different row with the id is a collision the batch cannot
            // write: only one of them may have it.
            if self.msg_convs[i] != conv
                || self.msg_dirs[i] != dir
                || self.msg_contents[i] != content
            {
                self.msg_collisions.push(id);
            }
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
                    self.conv_event_us.push(created_at.timestamp_micros());
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
                    self.close_event_us.push(closed_at.timestamp_micros());
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
                            Some(&i)
                                if self.msg_dirs[i] == "INBOUND"
                                    && self.msg_convs[i] == o.conversation_id =>
                            {
                                if self.msg_replies[i].is_none() {
                                    self.msg_replies[i] = Some(o.id);
                                }
                            }
                            _ => {
                                self.upd_ids.push(*id);
                                self.upd_replies.push(o.id);
                                self.upd_convs.push(o.conversation_id);
                            }
                        }
                    }
                }
                Effect::Undecodable(u) => {
                    self.rej_types.push(pg_safe_text(&u.event_type()));
                    self.rej_event_ids.push(u.uuid_at("id"));
                    self.rej_convs
                        .push(u.uuid_at("conversation_id").or_else(|| u.uuid_at("id")));
                    self.rej_reasons.push(Reason::Undecodable.as_str());
                    self.rej_details.push(pg_safe_text(&format!(
                        "{}: {}",
                        Reason::Undecodable.detail(),
                        u.error
                    )));
                    self.rej_events.push(pg_safe_json(u.payload.clone()));
                    self.rej_arrivals.push(ms(u.arrival_ms));
                    self.rej_parts.push(partition);
                    self.rej_offsets.push(u.offset);
                }
                Effect::Rejected(r) => {
                    self.rej_types
                        .push(r.event.event_type().as_str().to_owned());
                    self.rej_event_ids.push(Some(r.event.id()));
                    self.rej_convs.push(Some(r.event.conversation_id()));
                    self.rej_reasons.push(r.reason.as_str());
                    self.rej_details.push(match &r.error {
                        Some(e) => pg_safe_text(&format!("{}: {e}", r.reason.detail())),
                        None => r.reason.detail().to_owned(),
                    });
                    self.rej_events.push(pg_safe_json(r.event.to_json()));
                    self.rej_arrivals.push(ms(r.arrival_ms));
                    self.rej_parts.push(partition);
                    self.rej_offsets.push(r.offset);
                }
            }
        }
    }
}

/// What a committed batch wrote besides its effects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Deliveries queued for the batch's replies of channel conversations.
    pub deliveries_queued: u64,
}

/// Writes a poll batch in one transaction: the fencing check and positions
/// of every partition, then conversations, conversation log positions,
/// messages (INBOUND rows of accepted messages, OUTBOUND rows), `reply_id`
/// on the INBOUND rows of the groups replied in this batch (set where still
/// `NULL`), the deliveries of the replies it wrote to channel
/// conversations, and rejected events. All statements are idempotent, so
/// replaying a batch changes nothing.
pub async fn write_batch(
    client: &mut tokio_postgres::Client,
    topic: &str,
    batches: &[PartitionBatch],
) -> Result<Written, StoreError> {
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
    let written = write_columns(&tx, topic, &c).await?;
    tx.commit().await?;
    Ok(written)
}

/// Runs the statements that write `c` inside the caller's transaction.
async fn write_columns(
    tx: &tokio_postgres::Transaction<'_>,
    topic: &str,
    c: &Columns,
) -> Result<Written, StoreError> {
    if !c.msg_collisions.is_empty() {
        // Two partitions of this batch gave one id to different rows.
        // Written alone after this refusal, the first to commit keeps the
        // id and the other decides again, seeing its row.
        return Err(StoreError::IdTaken(c.msg_collisions.clone()));
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
                    (topic, conversation_id, partition, created_offset, created_arrival_ms,
                     created_event_us)
             SELECT $1, u.id, u.p, u.o, u.a, u.e
               FROM unnest($2::uuid[], $3::int4[], $4::int8[], $5::int8[], $6::int8[])
                    AS u(id, p, o, a, e)
             ON CONFLICT (topic, conversation_id) DO NOTHING",
            &[
                &topic,
                &c.conv_ids,
                &c.log_parts,
                &c.log_offsets,
                &c.log_arrivals,
                &c.conv_event_us,
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
                     closed_offset, closed_arrival_ms, closed_event_us)
             SELECT $1, u.id, u.p, u.co, u.ca, u.o, u.a, u.e
               FROM unnest($2::uuid[], $3::int4[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                           $8::int8[])
                    AS u(id, p, co, ca, o, a, e)
             ON CONFLICT (topic, conversation_id) DO UPDATE
                SET closed_offset = EXCLUDED.closed_offset,
                    closed_arrival_ms = EXCLUDED.closed_arrival_ms,
                    closed_event_us = EXCLUDED.closed_event_us
              WHERE l.closed_offset IS NULL",
            &[
                &topic,
                &c.close_ids,
                &c.close_parts,
                &c.close_created_offsets,
                &c.close_created_arrivals,
                &c.close_offsets,
                &c.close_arrivals,
                &c.close_event_us,
            ],
        )
        .await?;
    }
    // Message rows this batch wrote (inserted, or its reply recorded);
    // the others met a row of the same id.
    let mut conflicted: Vec<usize> = Vec::new();
    let mut taken: Vec<Uuid> = Vec::new();
    // Replies (id, conversation) this batch inserted: the ones to queue.
    let mut new_replies: (Vec<Uuid>, Vec<Uuid>) = (Vec::new(), Vec::new());
    if !c.msg_ids.is_empty() {
        let dirs: Vec<String> = c.msg_dirs.iter().map(|s| s.to_string()).collect();
        let written = tx
            .query(
                "INSERT INTO messages (id, conversation_id, direction, content, \"timestamp\", arrival, reply_id)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[],
                                      $5::timestamptz[], $6::timestamptz[], $7::uuid[])
                 ON CONFLICT (id) DO UPDATE SET reply_id = EXCLUDED.reply_id
                  WHERE messages.reply_id IS NULL AND EXCLUDED.reply_id IS NOT NULL
                    AND messages.direction = 'INBOUND'
                    AND messages.conversation_id = EXCLUDED.conversation_id
                 RETURNING id",
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
        let written: HashSet<Uuid> = written.iter().map(|r| r.get(0)).collect();
        conflicted = (0..c.msg_ids.len())
            .filter(|i| !written.contains(&c.msg_ids[*i]))
            .collect();
        // An OUTBOUND row is returned only when inserted (the upsert's
        // update is for INBOUND rows), never when it met a stored row.
        for i in 0..c.msg_ids.len() {
            if c.msg_dirs[i] == "OUTBOUND" && written.contains(&c.msg_ids[i]) {
                new_replies.0.push(c.msg_ids[i]);
                new_replies.1.push(c.msg_convs[i]);
            }
        }
    }
    if !c.upd_ids.is_empty() {
        // Only the key in WHERE: with `reply_id IS NULL` there as well, a
        // table without statistics looks as if few rows qualify, and the
        // planner read the whole table once per statement with the keys on
        // the inner side (~440 µs per updated row over a 1 M-row table)
        // instead of probing the primary key per key. "Set where unset"
        // is therefore in the SET: a replayed statement rewrites the same
        // value.
        let rows = tx
            .query(
                "UPDATE messages m
                    SET reply_id = CASE WHEN m.direction = 'INBOUND' AND m.reply_id IS NULL
                                             AND m.conversation_id = u.c
                                        THEN u.r ELSE m.reply_id END
                   FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(id, r, c)
                  WHERE m.id = u.id
                 RETURNING m.id, m.direction = 'INBOUND' AND m.conversation_id = u.c",
                &[&c.upd_ids, &c.upd_replies, &c.upd_convs],
            )
            .await?;
        // The INBOUND rows a reply answers must be its conversation's.
        let ours: HashSet<Uuid> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        taken.extend(c.upd_ids.iter().filter(|id| !ours.contains(id)));
    }
    if !conflicted.is_empty() {
        // A row this batch did not write already held one of its ids: a
        // replayed row of its own (same conversation, direction, content)
        // is fine; any other row was written by a transaction the batch's
        // pre-load could not see (another partition, another replica), and
        // this batch's row was not written.
        let ids: Vec<Uuid> = conflicted.iter().map(|i| c.msg_ids[*i]).collect();
        let convs: Vec<Uuid> = conflicted.iter().map(|i| c.msg_convs[*i]).collect();
        let dirs: Vec<&str> = conflicted.iter().map(|i| c.msg_dirs[*i]).collect();
        let contents: Vec<&str> = conflicted
            .iter()
            .map(|i| c.msg_contents[*i].as_str())
            .collect();
        let rows = tx
            .query(
                "SELECT u.id FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[])
                        AS u(id, c, d, t)
                  CROSS JOIN LATERAL (
                        SELECT conversation_id, direction, content FROM messages WHERE id = u.id
                  ) AS m
                 WHERE m.conversation_id <> u.c OR m.direction <> u.d OR m.content <> u.t",
                &[&ids, &convs, &dirs, &contents],
            )
            .await?;
        taken.extend(rows.iter().map(|r| r.get::<_, Uuid>(0)));
    }
    if !taken.is_empty() {
        // Refuse the batch rather than lose a message or answer someone
        // else's: deciding its records again sees those rows.
        return Err(StoreError::IdTaken(taken));
    }
    let deliveries_queued = queue_deliveries(tx, &new_replies.0, &new_replies.1).await?;
    if !c.rej_offsets.is_empty() {
        let reasons: Vec<String> = c.rej_reasons.iter().map(|s| s.to_string()).collect();
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
                &c.rej_types,
                &c.rej_event_ids,
                &c.rej_convs,
                &reasons,
                &c.rej_details,
                &c.rej_events,
                &c.rej_arrivals,
                &c.rej_parts,
                &c.rej_offsets,
            ],
        )
        .await?;
    }
    Ok(Written { deliveries_queued })
}

/// Queues the delivery of the replies `ids` (of conversations `convs`,
/// element by element) that belong to channel conversations: a
/// `deliveries` row, its `queued` event and the reply's `message_meta`
/// (author `bot`), in one statement. Replies of other conversations are
/// left alone; a delivery that exists is kept (`ON CONFLICT DO NOTHING`,
/// so a replay queues nothing twice). Each reply's conversation is one
/// primary-key probe of `channel_conversations` (the lateral subquery
/// keeps the planner from joining the whole table). Returns how many
/// deliveries were queued; no statement when there are no replies.
pub async fn queue_deliveries(
    client: &impl GenericClient,
    ids: &[Uuid],
    convs: &[Uuid],
) -> Result<u64, tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let row = client
        .query_one(
            "WITH q AS (
                 INSERT INTO deliveries (message_id, conversation_id, channel, contact_id)
                 SELECT u.id, cc.conversation_id, cc.channel, cc.contact_id
                   FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(id, c, n)
                  CROSS JOIN LATERAL (
                        SELECT conversation_id, channel, contact_id FROM channel_conversations
                         WHERE conversation_id = u.c) AS cc
                  ORDER BY u.n
                 ON CONFLICT (message_id) DO NOTHING
                 RETURNING id, message_id, conversation_id, channel),
             e AS (
                 INSERT INTO delivery_events (delivery_id, event, source)
                 SELECT id, 'queued', 'processor' FROM q),
             m AS (
                 INSERT INTO message_meta (message_id, conversation_id, channel, author_kind)
                 SELECT message_id, conversation_id, channel, 'bot' FROM q
                 ON CONFLICT DO NOTHING)
             SELECT count(*) FROM q",
            &[&ids, &convs],
        )
        .await?;
    let n: i64 = row.try_get(0)?;
    Ok(u64::try_from(n).unwrap_or_default())
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

/// Gives every reply of `batches` an id no other row holds. A reply's id is
/// derived from its group (so a replay writes the same row), which a
/// provider can compute in advance and use as a message id. A reply whose
/// id is an INBOUND message's (stored, written by this batch, or `held`:
/// accepted and still held for a later write), or another reply's with
/// different content, takes the next salted id ([`reply_id_salted`])
/// instead, deterministically, so a replay picks the same one. Returns how
/// many replies moved.
pub async fn resolve_reply_ids(
    client: &impl GenericClient,
    batches: &mut [PartitionBatch],
    held: &HashSet<Uuid>,
) -> Result<u64, tokio_postgres::Error> {
    let mut inbound: HashSet<Uuid> = batches
        .iter()
        .flat_map(|b| &b.effects)
        .filter_map(|e| match e {
            Effect::Inbound(m) => Some(m.id),
            _ => None,
        })
        .collect();
    inbound.extend(held);
    let mut moved = 0u64;
    // Candidates still to check, by (batch, effect) index.
    let mut pending: Vec<(usize, usize, u32)> = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        for (ei, e) in b.effects.iter().enumerate() {
            if matches!(e, Effect::Outbound(_)) {
                pending.push((bi, ei, 0));
            }
        }
    }
    // Each round settles every reply whose candidate is free; a taken
    // candidate moves on to the next salt. Bounded: a provider would need
    // a stored message for every salt it wants to block.
    for _round in 0..16 {
        if pending.is_empty() {
            break;
        }
        let ids: Vec<Uuid> = pending
            .iter()
            .filter_map(|(bi, ei, _)| outbound(batches, *bi, *ei).map(|o| o.id))
            .collect();
        let rows = client
            .query(
                "SELECT id, direction = 'OUTBOUND', conversation_id, content FROM messages
                  WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        let taken: HashMap<Uuid, (bool, Uuid, String)> = rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect();
        let mut next = Vec::new();
        for (bi, ei, k) in pending {
            let Some(Effect::Outbound(o)) = batches[bi].effects.get_mut(ei) else {
                continue;
            };
            let clash = inbound.contains(&o.id)
                || taken.get(&o.id).is_some_and(|(is_reply, conv, content)| {
                    !*is_reply || *conv != o.conversation_id || *content != o.content
                });
            if clash {
                let k = k + 1;
                o.id = reply_id_salted(&o.inbound_ids, k);
                moved += 1;
                next.push((bi, ei, k));
            }
        }
        pending = next;
    }
    Ok(moved)
}

fn outbound(batches: &[PartitionBatch], bi: usize, ei: usize) -> Option<&Outbound> {
    match batches.get(bi).and_then(|b| b.effects.get(ei)) {
        Some(Effect::Outbound(o)) => Some(o),
        _ => None,
    }
}

/// The oldest arrival stamp of a record some live ingest replica is still
/// waiting to have acknowledged (`ingest_inflight`, migration V400), among
/// replicas whose heartbeat is younger than `lease`. A caught-up
/// partition's watermark must not pass it: that record can still land.
pub async fn inflight_floor(
    client: &impl GenericClient,
    lease: std::time::Duration,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let lease_ms = lease.as_millis() as i64;
    let row = client
        .query_one(
            "SELECT min(oldest_inflight_ms) FROM ingest_inflight
              WHERE oldest_inflight_ms IS NOT NULL
                AND heartbeat_at > clock_timestamp() - make_interval(secs => $1::int8 / 1000.0)",
            &[&lease_ms],
        )
        .await?;
    row.try_get(0)
}

/// What a reset found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The partition's positions from now on.
    pub claim: Claim,
    /// Stored INBOUND messages without reply that were answered from their
    /// rows (their records are gone).
    pub stranded_answered: usize,
    /// Deliveries queued for those replies (channel conversations).
    pub deliveries_queued: u64,
    /// Offsets `[from, to)` that could not be read again.
    pub skipped: (i64, i64),
}

/// Moves a partition whose stored position is outside the log (see
/// [`crate::engine::logcheck`]) to the log's start `start`, in one transaction
/// fenced by `epoch`:
/// - beyond the end (a new log): the stored log positions of its
///   conversations and the source offsets of its rejections are moved
///   below every offset of the new log (`-1`, and `-1 - id`), so the new
///   log's records are judged as after everything the old one decided and
///   their rejections are stored under their own offsets;
/// - either way, INBOUND rows of its conversations still without reply are
///   answered from the rows ([`answer_stranded`], contents by `policy`):
///   their groups' records cannot be read again; the replies of channel
///   conversations are queued for delivery;
/// - a `partition_resets` row records what was skipped.
#[allow(clippy::too_many_arguments)]
pub async fn reset_partition(
    client: &mut tokio_postgres::Client,
    topic: &str,
    partition: i32,
    epoch: i64,
    kind: PositionCheck,
    stored: Claim,
    (start, end): (i64, i64),
    owner: &str,
    cfg: &EngineConfig,
    policy: &ReplyPolicy,
) -> Result<Reset, StoreError> {
    let tx = client.transaction().await?;
    let position = PositionUpdate {
        partition,
        epoch,
        resume_offset: start,
        processed_offset: start,
        // A new log, or records removed: nothing read yet to judge by.
        watermark_ms: None,
    };
    let fenced = fence_and_advance(&tx, topic, &[position]).await?;
    if !fenced.is_empty() {
        tx.rollback().await?;
        return Err(StoreError::Fenced(fenced));
    }
    if kind == PositionCheck::BeyondEnd {
        tx.execute(
            "UPDATE processor_conversation_log
                SET created_offset = -1,
                    closed_offset = CASE WHEN closed_offset IS NULL THEN NULL ELSE -1 END
              WHERE topic = $1 AND partition = $2 AND (created_offset >= 0 OR closed_offset >= 0)",
            &[&topic, &partition],
        )
        .await?;
        tx.execute(
            "UPDATE rejected_events SET source_offset = -1 - id
              WHERE source_topic = $1 AND source_partition = $2 AND source_offset >= 0",
            &[&topic, &partition],
        )
        .await?;
    }
    let rows = tx
        .query(
            "SELECT m.id, m.conversation_id, (extract(epoch FROM m.arrival) * 1000)::int8,
                    m.content, m.\"timestamp\"
               FROM processor_conversation_log l
               JOIN messages m ON m.conversation_id = l.conversation_id
              WHERE l.topic = $1 AND l.partition = $2
                AND m.direction = 'INBOUND' AND m.reply_id IS NULL",
            &[&topic, &partition],
        )
        .await?;
    let stranded: Vec<StrandedRow> = rows
        .iter()
        .map(|r| StrandedRow {
            id: r.get(0),
            conversation_id: r.get(1),
            arrival_ms: r.get(2),
            content: r.get(3),
            timestamp: r.get(4),
        })
        .collect();
    let stranded_answered = stranded.len();
    let mut effects: Vec<Effect> = answer_stranded(cfg, stranded)
        .into_iter()
        .map(Effect::Outbound)
        .collect();
    // The reply policy may ask the bot: this transaction then waits up to
    // its timeout (a reset is rare, and only this partition waits).
    policy.answer_effects(effects.iter_mut()).await;
    let mut batch = [PartitionBatch { position, effects }];
    resolve_reply_ids(&tx, &mut batch, &HashSet::new()).await?;
    let mut c = Columns::default();
    c.add(partition, &batch[0].effects);
    let written = write_columns(&tx, topic, &c).await?;
    let skipped = (stored.resume_offset.min(start), start);
    let skipped = match kind {
        // A new log: nothing of it was skipped (the old one's records
        // after the stored position were never in it).
        PositionCheck::BeyondEnd => (start, start),
        _ => skipped,
    };
    let detail = match kind {
        PositionCheck::BeyondEnd => format!(
            "stored position {} is beyond the log end {end}: the topic was recreated or the broker replaced; reading the new log from {start}",
            stored.processed_offset
        ),
        _ => format!(
            "stored resume position {} is before the log start {start}: records [{}, {start}) were removed before they were processed",
            stored.resume_offset, skipped.0
        ),
    };
    let stranded_i32 = i32::try_from(stranded_answered).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO partition_resets (topic, partition, kind, stored_resume, stored_processed,
                                       log_start, log_end, new_offset, skipped_from, skipped_to,
                                       stranded_answered, detail, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &topic,
            &partition,
            &kind.as_str(),
            &stored.resume_offset,
            &stored.processed_offset,
            &start,
            &end,
            &start,
            &skipped.0,
            &skipped.1,
            &stranded_i32,
            &detail,
            &owner,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Reset {
        claim: Claim {
            epoch,
            resume_offset: start,
            processed_offset: start,
            watermark_ms: None,
        },
        stranded_answered,
        deliveries_queued: written.deliveries_queued,
        skipped,
    })
}
