-- Base schema. Later migrations (V2xx processor state, V3xx api) extend it.

-- A conversation's lifecycle. Ingest inserts the row (NEW_CONVERSATION) and
-- closes it (CLOSE_CONVERSATION) atomically; the processor upserts it from
-- the log so a replayed topic rebuilds the same rows.
CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    status      text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'CLOSED')),
    -- Event time of NEW_CONVERSATION.
    created_at  timestamptz NOT NULL,
    -- Event time of the latest lifecycle change.
    updated_at  timestamptz NOT NULL,
    -- Event time of CLOSE_CONVERSATION, when closed.
    closed_at   timestamptz
);
CREATE INDEX conversations_created_idx ON conversations (created_at DESC, id DESC);
CREATE INDEX conversations_status_created_idx ON conversations (status, created_at DESC, id DESC);

-- INBOUND messages (accepted user messages) and OUTBOUND replies, written by
-- the processor with idempotent inserts keyed by id.
CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL,
    direction        text NOT NULL CHECK (direction IN ('INBOUND', 'OUTBOUND')),
    content          text NOT NULL,
    -- INBOUND: the provider's event time. OUTBOUND: last arrival + gap.
    "timestamp"      timestamptz NOT NULL,
    -- INBOUND: ingest arrival time (the record timestamp).
    -- OUTBOUND: arrival time of the group's last message.
    arrival          timestamptz NOT NULL,
    -- INBOUND: the OUTBOUND reply that covered it (set when its group closed).
    reply_id         uuid,
    -- When the row was written (reply timeliness is measured against this).
    written_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX messages_conversation_ts_idx ON messages (conversation_id, "timestamp", id);

-- Events the processor accepted from the log but could not apply, so a
-- provider can always learn what became of a 202.
CREATE TABLE rejected_events (
    id                bigserial PRIMARY KEY,
    event_type        text NOT NULL,
    event_id          uuid,
    conversation_id   uuid,
    -- Machine-readable reason, e.g. conversation_closed,
    -- conversation_not_created_in_time, id_reused_with_different_content.
    reason            text NOT NULL,
    -- Human-readable explanation.
    detail            text NOT NULL DEFAULT '',
    -- The event as received.
    event             jsonb NOT NULL,
    -- Ingest arrival time of the record.
    arrival           timestamptz,
    rejected_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Where the record was read; unique so a replay records nothing twice.
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX rejected_events_conversation_idx ON rejected_events (conversation_id, id);
CREATE INDEX rejected_events_reason_idx ON rejected_events (reason, id);
