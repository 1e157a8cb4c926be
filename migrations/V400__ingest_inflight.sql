-- Ingest state (owned by ingest; V4xx range).

-- The in-flight floor of each ingest replica: the record timestamp
-- (arrival, ms since the Unix epoch) of its OLDEST record that has been
-- waiting for the broker's acknowledgement for longer than a few
-- milliseconds, or NULL when there is none. Such a record can still land in
-- the log with that timestamp, so processors hold their wall-clock
-- watermark below the smallest live value:
--   SELECT min(oldest_inflight_ms) FROM ingest_inflight
--    WHERE oldest_inflight_ms IS NOT NULL AND heartbeat_at > now() - <lease>
-- A replica writes its row only when the value changes and refreshes
-- heartbeat_at at least every second while the value is not NULL; it
-- deletes its row on a clean shutdown. A crashed replica's row expires with
-- the lease.
CREATE TABLE ingest_inflight (
    -- CHATPIPE_REPLICA_NAME, else HOSTNAME (the pod name), else ingest-<pid>.
    replica             text PRIMARY KEY,
    oldest_inflight_ms  bigint NULL,
    heartbeat_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
