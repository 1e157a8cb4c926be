//! What a channel webhook changes in Postgres: the contact, the
//! conversation a contact's message opens, the message's facts, and the
//! provider's status reports.
//!
//! # One OPEN conversation per contact and channel
//! A contact's message is decided in one transaction that starts by
//! upserting the contact's row, which takes its row lock: two messages of
//! one contact (two ingest replicas, a provider's parallel retries) are
//! decided one after the other. Inside it:
//! 1. a message whose facts (`message_meta`) are stored is a provider's
//!    retry of a message already in the log (the facts commit only after
//!    the broker acknowledged it): a duplicate, nothing is produced;
//! 2. the contact's OPEN conversation is taken `FOR SHARE` (a concurrent
//!    CLOSE_CONVERSATION waits for this transaction, so the message is in
//!    the log before the close); without one, a conversation is opened:
//!    its id derives from the contact and the message
//!    ([`chatpipe_channels::ids::opened_conversation_id`]), its rows are
//!    inserted and its NEW_CONVERSATION is produced and acknowledged;
//! 3. the message's facts are inserted and its NEW_MESSAGE is produced and
//!    acknowledged; then the transaction commits.
//!
//! A failure anywhere rolls everything back and the webhook is answered
//! `503`; the provider's retry decides again. A NEW_CONVERSATION that did
//! reach the log before a rollback is produced again with the same id and
//! time: the processor takes it for the identical redelivery it is.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

/// A contact's message, ready to be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactMessage {
    /// The channel's name.
    pub channel: String,
    /// [`chatpipe_channels::ids::contact_id`].
    pub contact_id: Uuid,
    /// The provider's id of the contact.
    pub provider_user_id: String,
    /// The contact's name, when the provider gives it.
    pub display_name: Option<String>,
    /// [`chatpipe_channels::ids::inbound_message_id`]: the NEW_MESSAGE id.
    pub message_id: Uuid,
    /// The provider's id of the message.
    pub provider_message_id: String,
    /// Event time of the message (and of a conversation it opens).
    pub timestamp: DateTime<Utc>,
    /// `message_meta.kind`.
    pub kind: &'static str,
    /// The provider's media id.
    pub media_id: Option<String>,
    /// The media's type.
    pub media_type: Option<String>,
}

/// What became of a contact's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageDecision {
    /// Its conversation.
    pub conversation_id: Uuid,
    /// It opened that conversation.
    pub opened: bool,
    /// It was stored before (a provider's retry): nothing was produced.
    pub duplicate: bool,
}

/// Why a contact's message could not be decided (answered `503`, or `409`
/// for a taken conversation id); nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelStoreError<E> {
    /// Postgres failed or did not answer in time.
    #[error("postgres: {0}")]
    Database(String),
    /// Producing a record failed.
    #[error("{0}")]
    Produce(E),
    /// The conversation id this message would open is taken by a
    /// conversation that is not this contact's (someone created it through
    /// the generic webhook).
    #[error("conversation id {0} is taken by a conversation of another origin")]
    ConversationIdTaken(Uuid),
}

/// The records a decision produces, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRecord {
    /// NEW_CONVERSATION of a conversation the message opens.
    NewConversation {
        /// The conversation.
        id: Uuid,
        /// Its creation time (the message's).
        timestamp: DateTime<Utc>,
    },
    /// The contact's NEW_MESSAGE.
    NewMessage {
        /// The message id.
        id: Uuid,
        /// Its conversation.
        conversation_id: Uuid,
    },
}

const UPSERT_CONTACT: &str = "INSERT INTO contacts (id, channel, provider_user_id, display_name)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (id) DO UPDATE
        SET display_name = coalesce(EXCLUDED.display_name, contacts.display_name),
            last_seen_at = now()
     RETURNING id";
const STORED_META: &str = "SELECT conversation_id FROM message_meta WHERE message_id = $1";
const OPEN_CONVERSATION: &str = "SELECT c.id FROM channel_conversations cc
       JOIN conversations c ON c.id = cc.conversation_id
      WHERE cc.contact_id = $1 AND cc.channel = $2 AND c.status = 'OPEN'
      ORDER BY cc.created_at DESC
      LIMIT 1
        FOR SHARE OF c";
const INSERT_CONVERSATION: &str = "INSERT INTO conversations (id, status, created_at, updated_at)
     VALUES ($1, 'OPEN', $2, $2) ON CONFLICT (id) DO NOTHING RETURNING id";
const INSERT_CHANNEL_CONVERSATION: &str =
    "INSERT INTO channel_conversations (conversation_id, channel, contact_id) VALUES ($1, $2, $3)";
const INSERT_META: &str = "INSERT INTO message_meta
        (message_id, conversation_id, channel, contact_id, author_kind, kind, media_id, media_type,
         provider_message_id)
     VALUES ($1, $2, $3, $4, 'contact', $5, $6, $7, $8)";
const INSERT_RECEIPT: &str = "INSERT INTO delivery_receipts
        (channel, provider_message_id, status, at, code, reason)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (channel, provider_message_id, status) DO NOTHING";
const APPLY_RECEIPTS: &str = "SELECT chatpipe_apply_receipts($1, $2)";

async fn bounded<T, E: std::fmt::Display, P>(
    timeout: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, ChannelStoreError<P>> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ChannelStoreError::Database(format!("{what}: {e}"))),
        Err(_) => Err(ChannelStoreError::Database(format!(
            "{what}: no answer within {timeout:?}"
        ))),
    }
}

/// Channel decisions against a Postgres pool (ingest's lifecycle pool).
#[derive(Clone)]
pub struct ChannelStore {
    pool: Pool,
    timeout: Duration,
}

impl ChannelStore {
    /// Decisions on `pool`, each Postgres step bounded by `timeout`.
    pub fn new(pool: Pool, timeout: Duration) -> ChannelStore {
        ChannelStore { pool, timeout }
    }

    /// Decides `m` (see the module docs); `produce` writes one record and
    /// resolves once the broker acknowledged it.
    pub async fn decide<E, F, Fut>(
        &self,
        m: &ContactMessage,
        mut produce: F,
    ) -> Result<MessageDecision, ChannelStoreError<E>>
    where
        F: FnMut(ChannelRecord) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let t = self.timeout;
        let mut client = bounded(t, "getting a connection", self.pool.get()).await?;
        let tx = bounded(t, "begin", client.transaction()).await?;
        bounded(
            t,
            "upserting the contact",
            tx.query_one(
                UPSERT_CONTACT,
                &[
                    &m.contact_id,
                    &m.channel,
                    &m.provider_user_id,
                    &m.display_name,
                ],
            ),
        )
        .await?;
        let stored = bounded(
            t,
            "looking the message up",
            tx.query_opt(STORED_META, &[&m.message_id]),
        )
        .await?;
        if let Some(row) = stored {
            let conversation_id: Uuid = row.get(0);
            bounded(t, "commit", tx.commit()).await?;
            return Ok(MessageDecision {
                conversation_id,
                opened: false,
                duplicate: true,
            });
        }
        let open = bounded(
            t,
            "looking the open conversation up",
            tx.query_opt(OPEN_CONVERSATION, &[&m.contact_id, &m.channel]),
        )
        .await?;
        let (conversation_id, opened) = match open {
            Some(row) => (row.get::<_, Uuid>(0), false),
            None => {
                let id = chatpipe_channels::ids::opened_conversation_id(m.contact_id, m.message_id);
                let inserted = bounded(
                    t,
                    "opening the conversation",
                    tx.query_opt(INSERT_CONVERSATION, &[&id, &m.timestamp]),
                )
                .await?;
                if inserted.is_none() {
                    let _ = tx.rollback().await;
                    return Err(ChannelStoreError::ConversationIdTaken(id));
                }
                bounded(
                    t,
                    "recording the contact's conversation",
                    tx.execute(
                        INSERT_CHANNEL_CONVERSATION,
                        &[&id, &m.channel, &m.contact_id],
                    ),
                )
                .await?;
                produce(ChannelRecord::NewConversation {
                    id,
                    timestamp: m.timestamp,
                })
                .await
                .map_err(ChannelStoreError::Produce)?;
                (id, true)
            }
        };
        bounded(
            t,
            "recording the message's facts",
            tx.execute(
                INSERT_META,
                &[
                    &m.message_id,
                    &conversation_id,
                    &m.channel,
                    &m.contact_id,
                    &m.kind,
                    &m.media_id,
                    &m.media_type,
                    &m.provider_message_id,
                ],
            ),
        )
        .await?;
        produce(ChannelRecord::NewMessage {
            id: m.message_id,
            conversation_id,
        })
        .await
        .map_err(ChannelStoreError::Produce)?;
        bounded(t, "commit", tx.commit()).await?;
        Ok(MessageDecision {
            conversation_id,
            opened,
            duplicate: false,
        })
    }

    /// Stores a provider's status report and applies it to the delivery it
    /// names (when that delivery has recorded the provider's id; else the
    /// delivery component applies it when it does). Returns the status the
    /// delivery moved to, if it moved.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_receipt(
        &self,
        channel: &str,
        provider_message_id: &str,
        status: &str,
        at: DateTime<Utc>,
        code: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Option<String>, ChannelStoreError<std::convert::Infallible>> {
        let t = self.timeout;
        let client = bounded(t, "getting a connection", self.pool.get()).await?;
        bounded(
            t,
            "storing the receipt",
            client.execute(
                INSERT_RECEIPT,
                &[&channel, &provider_message_id, &status, &at, &code, &reason],
            ),
        )
        .await?;
        let row = bounded(
            t,
            "applying the receipt",
            client.query_one(APPLY_RECEIPTS, &[&channel, &provider_message_id]),
        )
        .await?;
        Ok(row.get::<_, Option<String>>(0))
    }
}
