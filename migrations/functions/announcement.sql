-- announce_change(execution_id, seq): each event's hint, "<execution id>:<seq>", never the row
-- (NOTIFY payloads must stay under 8000 bytes, and results can be megabytes); the service reads
-- the rest. Every trigger that announces calls it.
--
-- Its body is generated from change_announcement.sources, so the choice costs a writer nothing per
-- change (no table read, no setting a session could override), and every session uses a new body
-- from its next call (PL/pgSQL re-reads a function whose definition changed):
--   notify  pg_notify on channel aiagent_live. Every notifying commit in the cluster takes
--           PostgreSQL's notify lock and keeps it through its WAL flush: commits take turns.
--   wal     pg_logical_emit_message(true, 'aiagent_live', ...): written with the transaction,
--           decoded at its commit by the service's replication connection (on the primary or a
--           hot standby), no lock between writers. Needs wal_level = logical; on a server
--           restarted below it the hint falls back to NOTIFY rather than fail the write.

-- Sets how changes are announced ('notify', 'wal' or both) and rewrites announce_change to match;
-- returns the sources now in force. Creating or replacing announce_change needs its owner, so
-- only the service's own role can switch.
CREATE OR REPLACE FUNCTION set_change_sources(wanted text[]) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    payload constant text := 'execution_id::text || '':'' || seq::text';
    emit constant text := format('PERFORM pg_logical_emit_message(true, ''aiagent_live'', %s);', payload);
    notify constant text := format('PERFORM pg_notify(''aiagent_live'', %s);', payload);
    body text;
BEGIN
    wanted := ARRAY(SELECT DISTINCT source FROM unnest(wanted) AS source ORDER BY source);
    UPDATE change_announcement SET sources = wanted;  -- its CHECK refuses an unknown or empty set
    IF wanted = '{notify}' THEN
        body := notify;
    ELSIF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'announcing through the WAL needs wal_level = logical (it is %)',
            current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL.';
    ELSE
        body := format('IF current_setting(''wal_level'') = ''logical'' THEN %s ELSE %s END IF; %s',
                       emit, notify, CASE WHEN 'notify' = ANY (wanted) THEN notify ELSE '' END);
        -- pgoutput decodes only for a publication, even when messages are all it is asked for.
        IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'aiagent_live') THEN
            CREATE PUBLICATION aiagent_live;
        END IF;
    END IF;
    EXECUTE format('CREATE OR REPLACE FUNCTION announce_change(execution_id uuid, seq bigint) '
                   'RETURNS void LANGUAGE plpgsql AS %L', 'BEGIN ' || body || ' END');
    RETURN wanted;
END $$;
REVOKE EXECUTE ON FUNCTION set_change_sources(text[]) FROM PUBLIC;

-- Adds one source to those in force (what a serving process listening to it needs); returns the
-- sources now in force. The row lock orders processes starting together.
CREATE OR REPLACE FUNCTION include_change_source(source text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    current text[];
BEGIN
    SELECT sources INTO current FROM change_announcement FOR UPDATE;
    IF source = ANY (current) THEN
        RETURN current;
    END IF;
    RETURN set_change_sources(current || source);
END $$;
REVOKE EXECUTE ON FUNCTION include_change_source(text) FROM PUBLIC;

-- (Re)generate announce_change from the row, whenever this file runs.
SELECT set_change_sources(sources) FROM change_announcement;
