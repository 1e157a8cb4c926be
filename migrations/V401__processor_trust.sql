-- Processor trust (V4xx; after V400 of ingest).

-- Event times of a conversation's NEW_CONVERSATION and CLOSE_CONVERSATION, in
-- microseconds (Postgres' precision), so an identical redelivery of either
-- (same id, type and timestamp) is recognised as a duplicate, not refused.
ALTER TABLE processor_conversation_log
    ADD COLUMN IF NOT EXISTS created_event_us bigint,
    ADD COLUMN IF NOT EXISTS closed_event_us bigint;
UPDATE processor_conversation_log l
   SET created_event_us = (extract(epoch FROM c.created_at) * 1000000)::bigint,
       closed_event_us = CASE WHEN l.closed_offset IS NULL OR c.closed_at IS NULL THEN NULL
                              ELSE (extract(epoch FROM c.closed_at) * 1000000)::bigint END
  FROM conversations c
 WHERE c.id = l.conversation_id AND l.created_event_us IS NULL;

-- A partition's watermark as of its committed positions, so a restarted
-- owner judges the records after them against the same watermark (it is
-- restored once the replay has re-read up to the processed offset).
ALTER TABLE processor_partitions ADD COLUMN IF NOT EXISTS watermark_ms bigint;

-- Every time a processor found its stored position outside the log (topic
-- recreated, or records removed by retention) and moved on: what it skipped.
CREATE TABLE IF NOT EXISTS partition_resets (
    id                  bigserial PRIMARY KEY,
    topic               text NOT NULL,
    partition           integer NOT NULL,
    -- beyond_log_end (the log is new or shorter: topic recreated) or
    -- before_log_start (records below the log start were removed).
    kind                text NOT NULL CHECK (kind IN ('beyond_log_end', 'before_log_start')),
    stored_resume       bigint NOT NULL,
    stored_processed    bigint NOT NULL,
    log_start           bigint NOT NULL,
    log_end             bigint NOT NULL,
    -- Where the partition goes on.
    new_offset          bigint NOT NULL,
    -- Offsets [skipped_from, skipped_to) were never read (may be empty).
    skipped_from        bigint NOT NULL,
    skipped_to          bigint NOT NULL,
    -- INBOUND messages without reply whose records are gone, answered from
    -- their stored rows.
    stranded_answered   integer NOT NULL DEFAULT 0,
    detail              text NOT NULL DEFAULT '',
    owner               text NOT NULL DEFAULT '',
    reset_at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS partition_resets_topic_idx ON partition_resets (topic, partition, id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chatpipe_api_readonly') THEN
        GRANT SELECT ON partition_resets TO chatpipe_api_readonly;
    END IF;
END
$$;
