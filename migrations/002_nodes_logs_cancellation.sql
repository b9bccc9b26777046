-- Nodes, logs and cancellation, all on one per-execution sequence.
--
-- executions.seq is the last seq handed out for the execution: every change to the execution,
-- one of its nodes, or its log takes the next one, under the execution's row lock, so seq is
-- gap-free and in commit order. executions.status_seq is the seq of the row's own last change.
-- Node changes are kept in node_events (the history a resuming client replays); log lines live
-- in execution_logs. Each event NOTIFYs "<execution id>:<seq>" on channel aiagent_live.

ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled'));
ALTER TABLE executions
    ADD COLUMN status_seq bigint NOT NULL DEFAULT 1,
    -- false while progress is computed from the nodes; true once a worker sets it.
    ADD COLUMN progress_explicit boolean NOT NULL DEFAULT false,
    -- history (node_events, execution_logs) at or below this seq has been pruned.
    ADD COLUMN pruned_through_seq bigint NOT NULL DEFAULT 0;
UPDATE executions SET status_seq = seq;

CREATE TABLE execution_nodes (
    execution_id  uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    node_id       text NOT NULL,
    title         text NOT NULL,
    position      integer NOT NULL,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped', 'cancelled')),
    attempt       integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    started_at    timestamptz,
    finished_at   timestamptz,
    output        jsonb,
    error         text,
    seq           bigint NOT NULL DEFAULT 1,  -- seq of the node's last change
    PRIMARY KEY (execution_id, node_id)
);

CREATE TABLE node_events (
    execution_id    uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,
    node_id         text NOT NULL,
    status          text NOT NULL,
    attempt         integer NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text,
    output_preview  text,      -- the output as JSON text, cut at 65536 characters
    output_size     integer,   -- length of the whole output as JSON text
    PRIMARY KEY (execution_id, seq)
);

CREATE TABLE execution_logs (
    execution_id  uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    ts            timestamptz NOT NULL DEFAULT clock_timestamp(),
    level         text NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warning', 'error')),
    node_id       text,
    message       text NOT NULL CHECK (length(message) <= 100000),
    PRIMARY KEY (execution_id, seq),
    FOREIGN KEY (execution_id, node_id) REFERENCES execution_nodes (execution_id, node_id) ON DELETE CASCADE
);

-- Hands out the execution's next seq (locking its row until commit). Node and log triggers call
-- it; the flag tells the execution guard that only seq is moving.
CREATE FUNCTION claim_execution_seq(target uuid) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    claimed bigint;
BEGIN
    PERFORM set_config('aiagent.claiming_seq', 'on', true);
    UPDATE executions SET seq = seq + 1 WHERE id = target RETURNING seq INTO claimed;
    PERFORM set_config('aiagent.claiming_seq', 'off', true);
    IF claimed IS NULL THEN
        RAISE EXCEPTION 'no execution %', target USING ERRCODE = 'AL404';
    END IF;
    RETURN claimed;
END $$;

CREATE OR REPLACE FUNCTION executions_guard_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'pending' THEN
        RAISE EXCEPTION 'a new execution must be pending, not %', NEW.status USING ERRCODE = 'AL409';
    END IF;
    NEW.seq := 1;
    NEW.status_seq := 1;
    NEW.progress_explicit := false;
    NEW.pruned_through_seq := 0;
    NEW.created_at := clock_timestamp();
    NEW.updated_at := NEW.created_at;
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION executions_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pruned bigint := NEW.pruned_through_seq;
BEGIN
    IF current_setting('aiagent.pruning', true) = 'on' THEN
        NEW := OLD;
        NEW.pruned_through_seq := pruned;
        RETURN NEW;
    END IF;
    IF current_setting('aiagent.claiming_seq', true) = 'on' THEN
        IF OLD.status IN ('completed', 'failed', 'cancelled') THEN
            RAISE EXCEPTION 'execution % is % and can no longer change', OLD.id, OLD.status
                USING ERRCODE = 'AL409';
        END IF;
        NEW := OLD;
        NEW.seq := OLD.seq + 1;
        RETURN NEW;
    END IF;

    IF NEW.id <> OLD.id OR NEW.workflow_id <> OLD.workflow_id OR NEW.owner <> OLD.owner
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'id, workflow_id, owner and created_at of an execution never change'
            USING ERRCODE = 'AL409';
    END IF;

    -- Columns the database owns: whatever a writer put there is replaced below.
    NEW.seq := OLD.seq;
    NEW.status_seq := OLD.status_seq;
    NEW.updated_at := OLD.updated_at;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;
    NEW.pruned_through_seq := OLD.pruned_through_seq;
    IF NEW.progress IS DISTINCT FROM OLD.progress
       AND current_setting('aiagent.computing_progress', true) IS DISTINCT FROM 'on' THEN
        NEW.progress_explicit := true;  -- a worker set it: stop computing it from the nodes
    ELSE
        NEW.progress_explicit := OLD.progress_explicit;
    END IF;

    -- A write that changes nothing is not a change: no seq, no notification.
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;

    IF OLD.status IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'execution % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'AL409';
    END IF;

    IF NEW.status <> OLD.status THEN
        IF NOT ((OLD.status = 'pending' AND NEW.status IN ('running', 'failed', 'cancelled'))
                OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'cancelled'))) THEN
            RAISE EXCEPTION 'illegal status transition from % to %', OLD.status, NEW.status
                USING ERRCODE = 'AL409';
        END IF;
        IF NEW.status = 'running' THEN
            NEW.started_at := clock_timestamp();
        ELSE
            NEW.finished_at := clock_timestamp();
        END IF;
        IF NEW.status = 'completed' THEN
            NEW.progress := 100;
        END IF;
    END IF;

    NEW.seq := OLD.seq + 1;
    NEW.status_seq := NEW.seq;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

-- Status notifications only for the row's own changes, not for seq claims.
DROP TRIGGER executions_notify ON executions;
CREATE TRIGGER executions_notify_insert AFTER INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_notify();
CREATE TRIGGER executions_notify_update AFTER UPDATE ON executions
    FOR EACH ROW WHEN (NEW.status_seq <> OLD.status_seq) EXECUTE FUNCTION executions_notify();

-- A new execution gets one pending node per node of its workflow.
CREATE FUNCTION executions_create_nodes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO execution_nodes (execution_id, node_id, title, position)
    SELECT NEW.id, node ->> 'id', COALESCE(node ->> 'title', node ->> 'id'), ordinality::integer
    FROM workflows w, jsonb_array_elements(w.nodes) WITH ORDINALITY AS n (node, ordinality)
    WHERE w.id = NEW.workflow_id;
    RETURN NULL;
END $$;
CREATE TRIGGER executions_create_nodes AFTER INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_create_nodes();

CREATE FUNCTION execution_nodes_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Only the execution's creation adds nodes, in the same statement.
        IF NOT EXISTS (SELECT 1 FROM executions WHERE id = NEW.execution_id AND seq = 1) THEN
            RAISE EXCEPTION 'nodes are created with their execution' USING ERRCODE = 'AL409';
        END IF;
        NEW.status := 'pending';
        NEW.attempt := 0;
        NEW.seq := 1;
        RETURN NEW;
    END IF;

    IF NEW.execution_id <> OLD.execution_id OR NEW.node_id <> OLD.node_id OR NEW.title <> OLD.title
       OR NEW.position <> OLD.position THEN
        RAISE EXCEPTION 'a node''s execution, id, title and position never change' USING ERRCODE = 'AL409';
    END IF;
    NEW.seq := OLD.seq;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;
    NEW.attempt := OLD.attempt;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;

    IF NEW.status <> OLD.status THEN
        IF NOT ((OLD.status = 'pending' AND NEW.status IN ('running', 'skipped', 'cancelled'))
                OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed', 'skipped', 'cancelled'))
                OR (OLD.status = 'failed' AND NEW.status = 'running')) THEN
            RAISE EXCEPTION 'illegal node transition from % to %', OLD.status, NEW.status
                USING ERRCODE = 'AL409';
        END IF;
        IF NEW.status = 'running' THEN
            NEW.attempt := OLD.attempt + 1;  -- failed -> running is a retry
            NEW.started_at := clock_timestamp();
            NEW.finished_at := NULL;
        ELSE
            NEW.finished_at := clock_timestamp();
        END IF;
    ELSIF OLD.status IN ('completed', 'skipped', 'cancelled') THEN
        RAISE EXCEPTION 'node % is % and can no longer change', OLD.node_id, OLD.status
            USING ERRCODE = 'AL409';
    END IF;

    NEW.seq := claim_execution_seq(NEW.execution_id);
    RETURN NEW;
END $$;

CREATE FUNCTION execution_nodes_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    output_text text := NEW.output::text;
BEGIN
    INSERT INTO node_events (execution_id, seq, node_id, status, attempt, started_at, finished_at, error,
                             output_preview, output_size)
    VALUES (NEW.execution_id, NEW.seq, NEW.node_id, NEW.status, NEW.attempt, NEW.started_at, NEW.finished_at,
            NEW.error, left(output_text, 65536), length(output_text));
    PERFORM pg_notify('aiagent_live', NEW.execution_id::text || ':' || NEW.seq::text);

    -- Progress follows the nodes until a worker sets it: finished (completed, failed or skipped)
    -- nodes over all nodes.
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        PERFORM set_config('aiagent.computing_progress', 'on', true);
        UPDATE executions e SET progress = (
            SELECT (100 * count(*) FILTER (WHERE n.status IN ('completed', 'failed', 'skipped')))
                   / greatest(count(*), 1)
            FROM execution_nodes n WHERE n.execution_id = e.id)
        WHERE e.id = NEW.execution_id AND NOT e.progress_explicit AND e.status = 'running';
        PERFORM set_config('aiagent.computing_progress', 'off', true);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER execution_nodes_guard BEFORE INSERT OR UPDATE ON execution_nodes
    FOR EACH ROW EXECUTE FUNCTION execution_nodes_guard();
CREATE TRIGGER execution_nodes_record AFTER UPDATE ON execution_nodes
    FOR EACH ROW WHEN (NEW.seq <> OLD.seq) EXECUTE FUNCTION execution_nodes_record();

CREATE FUNCTION execution_logs_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.seq := claim_execution_seq(NEW.execution_id);
    NEW.ts := clock_timestamp();
    RETURN NEW;
END $$;
CREATE FUNCTION execution_logs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aiagent_live', NEW.execution_id::text || ':' || NEW.seq::text);
    RETURN NULL;
END $$;
CREATE FUNCTION execution_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the log is append-only' USING ERRCODE = 'AL409';
END $$;
CREATE TRIGGER execution_logs_append BEFORE INSERT ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_append();
CREATE TRIGGER execution_logs_notify AFTER INSERT ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_notify();
CREATE TRIGGER execution_logs_append_only BEFORE UPDATE ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_append_only();

-- Cancel a pending or running execution: its running nodes first, then the execution, so the
-- terminal status is the last event. Plain SQL writers call it too: SELECT cancel_execution(id).
CREATE FUNCTION cancel_execution(target uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_status text;
BEGIN
    SELECT status INTO current_status FROM executions WHERE id = target FOR UPDATE;
    IF current_status IS NULL THEN
        RAISE EXCEPTION 'no execution %', target USING ERRCODE = 'AL404';
    ELSIF current_status NOT IN ('pending', 'running') THEN
        RAISE EXCEPTION 'execution % is % and can no longer be cancelled', target, current_status
            USING ERRCODE = 'AL409';
    END IF;
    UPDATE execution_nodes SET status = 'cancelled' WHERE execution_id = target AND status = 'running';
    UPDATE executions SET status = 'cancelled' WHERE id = target;
END $$;

-- Retention: drop the logs and node history of executions finished before the cutoff, and note
-- up to which seq, so a client resuming from before it gets a fresh snapshot instead.
CREATE FUNCTION prune_history(cutoff timestamptz, OUT executions bigint, OUT logs bigint, OUT node_events bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('aiagent.pruning', 'on', true);
    CREATE TEMP TABLE pruned ON COMMIT DROP AS
        SELECT id FROM executions WHERE finished_at < cutoff AND pruned_through_seq < seq;
    UPDATE executions SET pruned_through_seq = seq WHERE id IN (SELECT id FROM pruned);
    PERFORM set_config('aiagent.pruning', 'off', true);
    SELECT count(*) INTO executions FROM pruned;
    DELETE FROM execution_logs WHERE execution_id IN (SELECT id FROM pruned);
    GET DIAGNOSTICS logs = ROW_COUNT;
    DELETE FROM node_events WHERE execution_id IN (SELECT id FROM pruned);
    GET DIAGNOSTICS node_events = ROW_COUNT;
    DROP TABLE pruned;
END $$;
