-- The state machines of executions and nodes, and the few names every trigger shares: the
-- SQLSTATEs they raise and how much of a node's output history keeps (the channel they announce
-- on is in announcement.sql).
-- Each is said here once. A new status also needs the CHECK constraint of a versioned migration,
-- and service/db/state_machine.py, which tests/test_state_machine_source.py holds to what the
-- database enforces.
--
-- The predicates are LANGUAGE sql and IMMUTABLE: the planner inlines them into the expressions
-- that call them, so a guard that asks one costs what a literal list would.

-- Executions: pending -> running -> completed | failed | cancelled, or pending -> failed | cancelled.
CREATE OR REPLACE FUNCTION execution_transition_is_legal(from_status text, to_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (from_status = 'pending' AND to_status IN ('running', 'failed', 'cancelled'))
        OR (from_status = 'running' AND to_status IN ('completed', 'failed', 'cancelled'))
$$;

-- The statuses with no way out: an execution in one never changes again.
CREATE OR REPLACE FUNCTION execution_status_is_terminal(status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('completed', 'failed', 'cancelled')
$$;

-- Nodes: pending -> running | skipped | cancelled; running -> completed | failed | skipped |
-- cancelled; failed -> running (a retry).
CREATE OR REPLACE FUNCTION node_transition_is_legal(from_status text, to_status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (from_status = 'pending' AND to_status IN ('running', 'skipped', 'cancelled'))
        OR (from_status = 'running' AND to_status IN ('completed', 'failed', 'skipped', 'cancelled'))
        OR (from_status = 'failed' AND to_status = 'running')
$$;

-- The node statuses with no way out (a failed node may still be retried).
CREATE OR REPLACE FUNCTION node_status_is_terminal(status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('completed', 'skipped', 'cancelled')
$$;

-- The node statuses that count as done when progress is computed from the nodes.
CREATE OR REPLACE FUNCTION node_status_counts_as_done(status text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT status IN ('completed', 'failed', 'skipped')
$$;

-- SQLSTATE AL409: an illegal change, refused; the row stays as it was (the service answers 409).
CREATE OR REPLACE FUNCTION raise_illegal_change(message text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'AL409';
END $$;

-- SQLSTATE AL404: no such execution (the service answers 404).
CREATE OR REPLACE FUNCTION raise_no_such_execution(execution_id uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = format('no execution %s', execution_id), ERRCODE = 'AL404';
END $$;

-- The start of a node's output (as JSON text) that its history keeps and a snapshot sends: a
-- bound on what one event reads, whatever the output's size.
CREATE OR REPLACE FUNCTION node_output_preview(output_text text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(output_text, 65536)
$$;
