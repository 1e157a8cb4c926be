-- api authentication: the agents (people who read and answer
-- conversations) and their refresh tokens. Passwords are stored as
-- Argon2id PHC strings; refresh tokens only as the SHA-256 of the opaque
-- value handed to the client.
CREATE TABLE agents (
    id            uuid PRIMARY KEY,
    username      text NOT NULL CHECK (length(username) BETWEEN 1 AND 64),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'agent')),
    display_name  text,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Usernames are unique regardless of case.
CREATE UNIQUE INDEX agents_username_key ON agents (lower(username));

CREATE TABLE agent_refresh_tokens (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    agent_id   uuid NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX agent_refresh_tokens_agent ON agent_refresh_tokens (agent_id);

-- The api's role (also created by V500; roles are cluster-wide, so the
-- creation is idempotent and tolerates concurrent migrations, as in V300).
-- Only it may read or write these tables; no other role gets SELECT.
DO $$
BEGIN
    CREATE ROLE chatpipe_api NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO chatpipe_api', current_schema());
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON agents, agent_refresh_tokens TO chatpipe_api;
