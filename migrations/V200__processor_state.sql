-- Processor state (owned by the processor; V2xx range).

-- One row per (topic, partition): the current owner's epoch (fencing token,
-- bumped by every claim and checked by every write transaction) and the
-- positions committed in the same transaction as the batch's effects.
CREATE TABLE processor_partitions (
    topic             text NOT NULL,
    partition         integer NOT NULL,
    -- Fencing token: a write whose epoch differs is refused.
    owner_epoch       bigint NOT NULL DEFAULT 0,
    -- Who claimed it last (host/pid), for operators.
    owner             text NOT NULL DEFAULT '',
    claimed_at        timestamptz,
    -- Oldest offset an open group or buffered orphan still needs: replay
    -- starts here.
    resume_offset     bigint NOT NULL DEFAULT 0,
    -- Next offset after the last record whose decisions are committed.
    processed_offset  bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, partition)
);

-- Per conversation, where its NEW_CONVERSATION and CLOSE_CONVERSATION are in
-- the log (offset and arrival), so a message is judged by log order the same
-- way live, lagging, or on replay.
CREATE TABLE processor_conversation_log (
    topic               text NOT NULL,
    conversation_id     uuid NOT NULL,
    partition           integer NOT NULL,
    created_offset      bigint NOT NULL,
    created_arrival_ms  bigint NOT NULL,
    closed_offset       bigint,
    closed_arrival_ms   bigint,
    PRIMARY KEY (topic, conversation_id)
);

-- Redeliveries of a rejected message are recognised by id.
CREATE INDEX rejected_events_event_id_idx ON rejected_events (event_id);
