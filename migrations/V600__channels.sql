-- Channels (issue "Channels"): contacts who write through a messenger, the
-- conversations they open, per-message channel facts, and the outbox of
-- OUTBOUND messages to deliver through their channel.
--
-- Writers:
-- - ingest upserts contacts, opens a contact's conversation
--   (channel_conversations, with the conversations row), records each
--   inbound message's facts (message_meta) before producing it, and stores
--   provider status reports (delivery_receipts) and applies them;
-- - the processor queues the delivery of each reply of a channel
--   conversation (deliveries) in the transaction that writes the reply;
-- - the api stores agents' messages with their facts and delivery, and
--   requeues failed deliveries;
-- - chatpipe-delivery claims due deliveries and records each outcome.

CREATE TABLE contacts (
    -- UUIDv5 of (channel, provider user id): the same person on the same
    -- channel is always the same contact.
    id                uuid PRIMARY KEY,
    channel           text NOT NULL,
    -- Telegram chat id, WhatsApp wa_id, Twilio `From` address.
    provider_user_id  text NOT NULL,
    display_name      text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, provider_user_id)
);
CREATE INDEX contacts_created_idx ON contacts (created_at DESC, id DESC);

-- The conversations a contact opened through a channel. A contact has at
-- most one OPEN conversation per channel: ingest decides it under the
-- contact's row lock.
CREATE TABLE channel_conversations (
    conversation_id  uuid PRIMARY KEY,
    channel          text NOT NULL,
    contact_id       uuid NOT NULL REFERENCES contacts (id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_conversations_contact_idx
    ON channel_conversations (contact_id, created_at DESC);
CREATE INDEX channel_conversations_channel_idx ON channel_conversations (channel);

-- What a message is besides its row in `messages`: its channel, who wrote
-- it, its kind and the provider's ids. Written before the message itself
-- (ingest: before producing it; the api: in the same transaction).
CREATE TABLE message_meta (
    message_id           uuid PRIMARY KEY,
    conversation_id      uuid NOT NULL,
    channel              text,
    -- INBOUND: the contact who wrote it.
    contact_id           uuid,
    -- OUTBOUND written by an agent (NULL: the automatic reply).
    agent_id             uuid,
    -- 'agent' for an agent's message when the api runs without
    -- authentication (no agent id to record).
    author_kind          text CHECK (author_kind IN ('contact', 'bot', 'agent')),
    kind                 text NOT NULL DEFAULT 'text'
                         CHECK (kind IN ('text', 'image', 'audio', 'voice', 'video', 'document',
                                         'sticker', 'location', 'contact', 'other')),
    -- The provider's media id (Telegram file_id, WhatsApp media id, Twilio
    -- media URL) of a non-text message.
    media_id             text,
    media_type           text,
    provider_message_id  text,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_meta_contact_idx ON message_meta (contact_id, message_id)
    WHERE contact_id IS NOT NULL;
CREATE INDEX message_meta_agent_idx ON message_meta (agent_id, message_id)
    WHERE agent_id IS NOT NULL;

-- Delivery statuses in the order they may follow each other; a status
-- never moves to a lower rank ('failed' may follow 'queued' or 'sent';
-- only an explicit retry moves 'failed' back to 'queued').
CREATE FUNCTION chatpipe_delivery_rank(status text) RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE status WHEN 'queued' THEN 0 WHEN 'sent' THEN 1 WHEN 'failed' THEN 2
                             WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 END $$;

-- The outbox: one row per OUTBOUND message of a channel conversation,
-- written in the transaction that writes the message.
CREATE TABLE deliveries (
    -- Queue order; per conversation, a delivery is attempted only when
    -- every earlier one of its conversation is no longer queued.
    id                   bigserial PRIMARY KEY,
    message_id           uuid NOT NULL UNIQUE,
    conversation_id      uuid NOT NULL,
    channel              text NOT NULL,
    contact_id           uuid NOT NULL,
    status               text NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'sent', 'delivered', 'read', 'failed')),
    -- Provider calls made so far.
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    -- The worker holding the delivery and until when (a crashed worker's
    -- claim expires).
    lease_owner          text,
    lease_until          timestamptz,
    -- Set (and committed) right before a provider call, cleared with its
    -- outcome: a claim that finds it set knows the previous call's outcome
    -- was lost and that the message may have been sent already.
    attempt_started_at   timestamptz,
    provider_message_id  text,
    -- The last failure (transient or permanent): provider code and reason.
    error_code           text,
    error_reason         text,
    queued_at            timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    delivered_at         timestamptz,
    read_at              timestamptz,
    failed_at            timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX deliveries_queued_conversation_idx ON deliveries (conversation_id, id)
    WHERE status = 'queued';
CREATE UNIQUE INDEX deliveries_provider_idx ON deliveries (channel, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX deliveries_failed_idx ON deliveries (failed_at DESC, id DESC) WHERE status = 'failed';
CREATE INDEX deliveries_conversation_idx ON deliveries (conversation_id, id);
CREATE INDEX deliveries_channel_status_idx ON deliveries (channel, status);

-- Delivery workers LISTEN on `chatpipe_deliveries`: a delivery queued, or
-- one whose status changed (which may make the next one of its
-- conversation due), wakes them at once; one notification per statement
-- (and Postgres folds identical ones of a transaction).
CREATE FUNCTION chatpipe_deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chatpipe_deliveries', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER deliveries_notify AFTER INSERT OR UPDATE OF status ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION chatpipe_deliveries_notify();

-- Each delivery's timeline: every status it took, every failed attempt
-- and every retry, in order.
CREATE TABLE delivery_events (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES deliveries (id),
    -- queued | sent | delivered | read | failed (a status it took),
    -- attempt_failed (a transient failure, retried), retried (a failed
    -- delivery queued again), possible_duplicate (a call whose outcome was
    -- lost is made again).
    event        text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    code         text,
    reason       text,
    -- processor | api | delivery | provider
    source       text NOT NULL
);
CREATE INDEX delivery_events_delivery_idx ON delivery_events (delivery_id, id);

-- Status reports of providers (WhatsApp `statuses`, Twilio status
-- callbacks), kept even when they arrive before the delivery recorded the
-- provider's message id; applied by chatpipe_apply_receipts.
CREATE TABLE delivery_receipts (
    channel              text NOT NULL,
    provider_message_id  text NOT NULL,
    status               text NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    at                   timestamptz NOT NULL,
    code                 text,
    reason               text,
    received_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, provider_message_id, status)
);

-- Moves the delivery of (channel, provider message id) to the highest
-- status its receipts report, when that is higher than its own, and
-- records the step in its timeline. Returns the new status, or NULL when
-- nothing changed (no such delivery yet, or nothing newer).
CREATE FUNCTION chatpipe_apply_receipts(p_channel text, p_provider_message_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
    d record;
BEGIN
    SELECT id, status INTO d FROM deliveries
     WHERE channel = p_channel AND provider_message_id = p_provider_message_id
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT status, at, code, reason INTO r FROM delivery_receipts
     WHERE channel = p_channel AND provider_message_id = p_provider_message_id
     ORDER BY chatpipe_delivery_rank(status) DESC LIMIT 1;
    IF NOT FOUND OR chatpipe_delivery_rank(r.status) <= chatpipe_delivery_rank(d.status) THEN
        RETURN NULL;
    END IF;
    UPDATE deliveries
       SET status = r.status,
           sent_at = coalesce(sent_at, CASE WHEN r.status IN ('sent', 'delivered', 'read') THEN r.at END),
           delivered_at = coalesce(delivered_at, CASE WHEN r.status IN ('delivered', 'read') THEN r.at END),
           read_at = coalesce(read_at, CASE WHEN r.status = 'read' THEN r.at END),
           failed_at = CASE WHEN r.status = 'failed' THEN r.at ELSE failed_at END,
           error_code = CASE WHEN r.status = 'failed' THEN r.code ELSE error_code END,
           error_reason = CASE WHEN r.status = 'failed' THEN r.reason ELSE error_reason END,
           lease_owner = NULL, lease_until = NULL,
           updated_at = now()
     WHERE id = d.id;
    INSERT INTO delivery_events (delivery_id, event, at, code, reason, source)
    VALUES (d.id, r.status, r.at, r.code, r.reason, 'provider');
    RETURN r.status;
END
$$;

-- Agents' Idempotency-Key: the message a key created (per agent; the nil
-- uuid when the api runs without authentication), with a digest of the
-- request so a key reused for another request is refused.
CREATE TABLE message_idempotency_keys (
    agent_id         uuid NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    conversation_id  uuid NOT NULL,
    request_digest   bytea NOT NULL,
    message_id       uuid NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, idempotency_key)
);

-- Grants (see V500: tables are granted one by one to the roles that need
-- them).
GRANT SELECT, INSERT, UPDATE ON contacts, channel_conversations, message_meta TO chatpipe_ingest;
GRANT SELECT, INSERT ON delivery_receipts TO chatpipe_ingest;
GRANT SELECT, UPDATE ON deliveries TO chatpipe_ingest;
GRANT INSERT ON delivery_events TO chatpipe_ingest;
GRANT INSERT ON conversations TO chatpipe_ingest;
GRANT USAGE ON SEQUENCE delivery_events_id_seq TO chatpipe_ingest;

GRANT SELECT ON channel_conversations TO chatpipe_processor;
GRANT SELECT, INSERT ON message_meta TO chatpipe_processor;
GRANT SELECT, INSERT ON deliveries, delivery_events TO chatpipe_processor;
GRANT USAGE ON SEQUENCE deliveries_id_seq, delivery_events_id_seq TO chatpipe_processor;

GRANT SELECT ON contacts, channel_conversations, delivery_receipts TO chatpipe_api;
GRANT SELECT, INSERT ON message_meta, message_idempotency_keys TO chatpipe_api;
GRANT INSERT ON messages TO chatpipe_api;
GRANT SELECT, INSERT, UPDATE ON deliveries TO chatpipe_api;
GRANT SELECT, INSERT ON delivery_events TO chatpipe_api;
GRANT USAGE ON SEQUENCE deliveries_id_seq, delivery_events_id_seq TO chatpipe_api;

-- The read-only role of V300 (CHATPIPE_API_DB_ROLE=chatpipe_api_readonly)
-- reads what the views show; agents' writes need the api role.
GRANT SELECT ON contacts, channel_conversations, message_meta, deliveries, delivery_events,
    delivery_receipts TO chatpipe_api_readonly;
-- An agent message's author is shown by name; nothing else of `agents`.
GRANT SELECT (id, username) ON agents TO chatpipe_api_readonly;

GRANT SELECT, INSERT, UPDATE, DELETE ON contacts, channel_conversations, message_meta, deliveries,
    delivery_events, delivery_receipts, message_idempotency_keys TO chatpipe_admin;
GRANT USAGE, SELECT ON SEQUENCE deliveries_id_seq, delivery_events_id_seq TO chatpipe_admin;

-- chatpipe-delivery: claims and settles deliveries, applies receipts.
DO $$
BEGIN
    CREATE ROLE chatpipe_delivery NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO chatpipe_delivery', current_schema());
END
$$;
GRANT SELECT, UPDATE ON deliveries TO chatpipe_delivery;
GRANT SELECT, INSERT ON delivery_events TO chatpipe_delivery;
GRANT SELECT ON delivery_receipts, contacts, messages, channel_conversations TO chatpipe_delivery;
GRANT USAGE ON SEQUENCE delivery_events_id_seq TO chatpipe_delivery;
