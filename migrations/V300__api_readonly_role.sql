-- api: a read-only role. The api connects with its own login (or the
-- default one) and assumes this role with CHATPIPE_API_DB_ROLE, so it can
-- only SELECT the tables it serves. Roles are cluster-wide: creation must
-- be idempotent and tolerate several databases of one server migrating at
-- the same time (a racing CREATE ROLE fails with duplicate_object or, when
-- both insert at once, unique_violation on pg_authid).
DO $$
BEGIN
    CREATE ROLE chatpipe_api_readonly NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO chatpipe_api_readonly;
GRANT SELECT ON conversations, messages, rejected_events TO chatpipe_api_readonly;
