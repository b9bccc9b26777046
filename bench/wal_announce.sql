-- The trigger side of the wal change source, as bench/wal_vs_notify.py runs it (the migrations
-- will own the real one): one announcing function for every trigger that announces, choosing
-- NOTIFY or a transactional WAL message from a database-level setting, and the empty publication
-- pgoutput needs before it passes messages on.

CREATE OR REPLACE FUNCTION aiagent_announce(execution_id text, seq bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- ALTER DATABASE ... SET aiagent.change_source = 'wal' | 'notify': read by each new session.
    IF current_setting('aiagent.change_source', true) = 'wal' THEN
        PERFORM pg_logical_emit_message(true, 'aiagent_live', execution_id || ':' || seq);
    ELSE
        PERFORM pg_notify('aiagent_live', execution_id || ':' || seq);
    END IF;
END $$;

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'aiagent_live') THEN
        CREATE PUBLICATION aiagent_live;  -- no tables: only the messages are wanted
    END IF;
END $$;

-- The bench's table: small, updated one row at a time by pgbench. Its "seq" in the announcement
-- is the trigger's clock in microseconds, so the consumer can tell each change's push latency.
CREATE TABLE IF NOT EXISTS bench_items (id int PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);
INSERT INTO bench_items (id) SELECT generate_series(1, 1000) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION bench_items_announce() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM aiagent_announce(NEW.id::text, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    RETURN NULL;
END $$;

-- The same trigger with the announcement removed: the baseline a source's ceiling is compared to.
CREATE OR REPLACE FUNCTION bench_items_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM NEW.id::text, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    RETURN NULL;
END $$;
