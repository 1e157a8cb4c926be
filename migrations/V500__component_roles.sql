-- Least privilege: one NOLOGIN group role per component, holding exactly the
-- grants that component's SQL needs (see docs/security-db-roles.md). An
-- operator makes a LOGIN role per component that is a member of its group
-- (`chatpipe-admin db-user create --component ingest …`) and gives each
-- component its own URL.
--
-- Roles are cluster-wide, grants are per database: every database migrated
-- here grants its own tables to the same four roles. Creation must therefore
-- be idempotent and tolerate several databases of one server migrating at the
-- same time (a racing CREATE ROLE fails with duplicate_object or, when both
-- insert at once, unique_violation on pg_authid), as in V300.
--
-- Tables are listed one by one: `GRANT … ON ALL TABLES IN SCHEMA` would also
-- hand out tables that a later migration adds for another component (and
-- refinery's own history table). A migration that adds a table grants it
-- explicitly to the roles that need it (V510 does so for the agents tables).
--
-- Migrations keep running as the owner of the tables (the URL given to
-- `chatpipe-admin migrate`): ALTER/DROP need ownership, which Postgres does
-- not hand out as a grant. `chatpipe_admin` is the data administrator
-- (reads and writes every table, e.g. repairs and retention deletes) and can
-- change no schema.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['chatpipe_ingest', 'chatpipe_processor', 'chatpipe_api', 'chatpipe_admin']
    LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END
$$;

-- The schema the tables live in (the migrator's current schema; `public`
-- unless the URL sets another search_path). Before Postgres 15 every role may
-- CREATE in `public` (through PUBLIC): take that away, so only the owner
-- (and superusers) can add objects, as Postgres 15 does by default. The
-- database owner keeps CREATE explicitly, so a non-superuser owner can still
-- migrate. A migrator that may not change the schema's ACL (neither its owner
-- nor a superuser) leaves it as it is, with a warning.
DO $$
DECLARE
    s text := current_schema();
    db_owner text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO chatpipe_ingest, chatpipe_processor, chatpipe_api, chatpipe_admin', s);
    IF EXISTS (
        SELECT 1
          FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
         WHERE n.nspname = s AND a.grantee = 0 AND a.privilege_type = 'CREATE'
    ) THEN
        SELECT pg_get_userbyid(datdba) INTO db_owner FROM pg_database WHERE datname = current_database();
        BEGIN
            EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', s, db_owner);
            EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', s);
        EXCEPTION
            WHEN insufficient_privilege THEN NULL;
        END;
        IF EXISTS (
            SELECT 1
              FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
             WHERE n.nspname = s AND a.grantee = 0 AND a.privilege_type = 'CREATE'
        ) THEN
            RAISE WARNING 'every role can still CREATE in schema %: as its owner or a superuser, run REVOKE CREATE ON SCHEMA % FROM PUBLIC', s, s;
        END IF;
    END IF;
END
$$;

-- ingest: opens and closes conversations (INSERT … ON CONFLICT DO NOTHING
-- RETURNING, UPDATE … WHERE status = 'OPEN' RETURNING, the existing row),
-- looks up conversation statuses and stored message ids (status cache), and
-- upserts / deletes its replica's in-flight floor.
GRANT SELECT, INSERT, UPDATE ON conversations TO chatpipe_ingest;
GRANT SELECT ON messages TO chatpipe_ingest;
GRANT SELECT, INSERT, UPDATE, DELETE ON ingest_inflight TO chatpipe_ingest;

-- processor: rebuilds conversations from the log, writes messages and
-- replies, rejections, its partition ownership and positions, per
-- conversation log positions, and partition resets; reads the ingest
-- replicas' in-flight floors. It deletes nothing.
GRANT SELECT, INSERT, UPDATE ON conversations, messages, rejected_events,
    processor_partitions, processor_conversation_log TO chatpipe_processor;
GRANT INSERT ON partition_resets TO chatpipe_processor;
GRANT SELECT ON ingest_inflight TO chatpipe_processor;
GRANT USAGE ON SEQUENCE rejected_events_id_seq, partition_resets_id_seq TO chatpipe_processor;

-- api: reads what it serves. (chatpipe_api_readonly of V300 stays as it is
-- for deployments that assume it with CHATPIPE_API_DB_ROLE.)
GRANT SELECT ON conversations, messages, rejected_events TO chatpipe_api;

-- admin: every row of every table, no schema changes.
GRANT SELECT, INSERT, UPDATE, DELETE ON conversations, messages, rejected_events,
    processor_partitions, processor_conversation_log, ingest_inflight, partition_resets
    TO chatpipe_admin;
GRANT USAGE, SELECT ON SEQUENCE rejected_events_id_seq, partition_resets_id_seq TO chatpipe_admin;
