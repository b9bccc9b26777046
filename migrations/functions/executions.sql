-- Executions: the guards every writer passes, the status notification, the nodes a new execution
-- starts with, the seq that node and log events claim, and cancelling.

CREATE OR REPLACE FUNCTION executions_guard_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'pending' THEN
        PERFORM raise_illegal_change(format('a new execution must be pending, not %s', NEW.status));
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

-- Three writes of the database's own get past the rules, each marked by a flag that one function
-- sets around one statement: claim_execution_seq moves only seq, prune_history only
-- pruned_through_seq, and execution_nodes_record sets a computed progress without making it
-- explicit. A flag is only a cheap first test (a worker's write finds them all off and pays
-- nothing more); when one is on, the call stack must show its owner's statement.
CREATE OR REPLACE FUNCTION executions_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pruned bigint := NEW.pruned_through_seq;
    stack text;
BEGIN
    IF current_setting('aiagent.pruning', true) = 'on' THEN
        GET DIAGNOSTICS stack = PG_CONTEXT;
        IF NOT stack_shows_write_by(stack, 'prune_history(timestamp with time zone)',
                'UPDATE executions SET pruned_through_seq = seq WHERE id IN (SELECT id FROM pruned)') THEN
            PERFORM raise_exemption_misused('aiagent.pruning', 'prune_history(timestamp with time zone)');
        END IF;
        NEW := OLD;
        NEW.pruned_through_seq := pruned;
        RETURN NEW;
    END IF;
    IF current_setting('aiagent.claiming_seq', true) = 'on' THEN
        GET DIAGNOSTICS stack = PG_CONTEXT;
        IF NOT stack_shows_write_by(stack, 'claim_execution_seq(uuid)',
                'UPDATE executions SET seq = seq + 1 WHERE id = target',
                ARRAY['execution_logs_append()', 'execution_nodes_guard()']) THEN
            PERFORM raise_exemption_misused('aiagent.claiming_seq', 'claim_execution_seq(uuid)');
        END IF;
        IF execution_status_is_terminal(OLD.status) THEN
            PERFORM raise_illegal_change(
                format('execution %s is %s and can no longer change', OLD.id, OLD.status));
        END IF;
        NEW := OLD;
        NEW.seq := OLD.seq + 1;
        RETURN NEW;
    END IF;

    IF NEW.id <> OLD.id OR NEW.workflow_id <> OLD.workflow_id OR NEW.owner <> OLD.owner
       OR NEW.created_at <> OLD.created_at THEN
        PERFORM raise_illegal_change('id, workflow_id, owner and created_at of an execution never change');
    END IF;

    -- Columns the database owns: whatever a writer put there is replaced below.
    NEW.seq := OLD.seq;
    NEW.status_seq := OLD.status_seq;
    NEW.updated_at := OLD.updated_at;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;
    NEW.pruned_through_seq := OLD.pruned_through_seq;
    NEW.progress_explicit := OLD.progress_explicit;
    IF NEW.progress IS DISTINCT FROM OLD.progress THEN
        IF current_setting('aiagent.computing_progress', true) = 'on' THEN
            GET DIAGNOSTICS stack = PG_CONTEXT;
            IF NOT stack_shows_write_by(stack, 'execution_nodes_record()',
                    'UPDATE executions SET progress = computed WHERE id = NEW.execution_id'
                    ' AND NOT progress_explicit AND status = ''running''') THEN
                PERFORM raise_exemption_misused('aiagent.computing_progress', 'execution_nodes_record()');
            END IF;
        ELSE
            NEW.progress_explicit := true;  -- a worker set it: stop computing it from the nodes
        END IF;
    END IF;

    -- A write that changes nothing is not a change: no seq, no notification.
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;

    IF execution_status_is_terminal(OLD.status) THEN
        PERFORM raise_illegal_change(format('execution %s is %s and can no longer change', OLD.id, OLD.status));
    END IF;

    IF NEW.status <> OLD.status THEN
        IF NOT execution_transition_is_legal(OLD.status, NEW.status) THEN
            PERFORM raise_illegal_change(format('illegal status transition from %s to %s', OLD.status, NEW.status));
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

-- Whether the guard's call stack (GET DIAGNOSTICS PG_CONTEXT, innermost first) shows the write
-- under way made by `owner` running `statement`, and, given `callers`, `owner` called by one of
-- them. Its lines are then:
--   PL/pgSQL function executions_guard_update() line 16 at GET DIAGNOSTICS
--   SQL statement "UPDATE executions SET seq = seq + 1 WHERE id = target"
--   PL/pgSQL function claim_execution_seq(uuid) line 7 at SQL statement
--   PL/pgSQL function execution_logs_append() line 3 at assignment
-- A statement's text is its writer's, who could put lines like the ones under it into a statement
-- of theirs (in a quoted alias): so an owner's statement is on one line, which must be exactly
-- `statement`, and it ends where SQL lets no quoted identifier follow (no RETURNING list). A frame
-- shows a function unqualified when search_path found it, and one in pg_temp never, so no
-- temporary function passes for ours; a role that may create functions in a schema on its
-- search_path could give one our name, so workers need no CREATE on any schema (PostgreSQL 15's
-- default for public). A table's owner can disable its triggers anyway.
-- One inlined expression of string functions: this runs for every node change and log line, and
-- costs about 3 us, where a PL/pgSQL function took 20 and a regular expression 10 to 180.
CREATE OR REPLACE FUNCTION stack_shows_write_by(stack text, owner text, statement text,
                                                callers text[] DEFAULT NULL)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT split_part(stack, E'\n', 2) = 'SQL statement "' || statement || '"'
       AND split_part(split_part(stack, E'\n', 3), ' line ', 1) = 'PL/pgSQL function ' || owner
       AND (callers IS NULL
            OR (starts_with(split_part(stack, E'\n', 4), 'PL/pgSQL function ')
                AND substr(split_part(split_part(stack, E'\n', 4), ' line ', 1), 19) = ANY (callers)))
$$;

-- SQLSTATE 42501: a flag of the guard's set by someone other than its owner.
CREATE OR REPLACE FUNCTION raise_exemption_misused(flag text, owner text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is set by % alone', flag, owner
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = 'It exempts one of the database''s own writes from the rules for executions.',
              HINT = 'Write executions, nodes and logs with plain statements; the database keeps seq, '
                     'computed progress and pruning itself.';
END $$;

CREATE OR REPLACE FUNCTION executions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_change(NEW.id, NEW.seq);
    RETURN NULL;
END $$;

-- A new execution gets one pending node per node of its workflow.
CREATE OR REPLACE FUNCTION executions_create_nodes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO execution_nodes (execution_id, node_id, title, position)
    SELECT NEW.id, node ->> 'id', COALESCE(node ->> 'title', node ->> 'id'), ordinality::integer
    FROM workflows w, jsonb_array_elements(w.nodes) WITH ORDINALITY AS n (node, ordinality)
    WHERE w.id = NEW.workflow_id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS executions_guard_insert ON executions;
CREATE TRIGGER executions_guard_insert BEFORE INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_guard_insert();
DROP TRIGGER IF EXISTS executions_guard_update ON executions;
CREATE TRIGGER executions_guard_update BEFORE UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_guard_update();
-- Status notifications only for the row's own changes, not for seq claims.
DROP TRIGGER IF EXISTS executions_notify_insert ON executions;
CREATE TRIGGER executions_notify_insert AFTER INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_notify();
DROP TRIGGER IF EXISTS executions_notify_update ON executions;
CREATE TRIGGER executions_notify_update AFTER UPDATE ON executions
    FOR EACH ROW WHEN (NEW.status_seq <> OLD.status_seq) EXECUTE FUNCTION executions_notify();
DROP TRIGGER IF EXISTS executions_create_nodes ON executions;
CREATE TRIGGER executions_create_nodes AFTER INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_create_nodes();

-- Hands out the execution's next seq, locking its row until commit: for the node and log
-- triggers alone (the guard refuses the flag to anyone else, so a direct call changes nothing).
CREATE OR REPLACE FUNCTION claim_execution_seq(target uuid) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    claimed bigint;
BEGIN
    PERFORM set_config('aiagent.claiming_seq', 'on', true);
    -- Exactly as the guard expects it (see stack_shows_write_by), so without RETURNING.
    UPDATE executions SET seq = seq + 1 WHERE id = target;
    PERFORM set_config('aiagent.claiming_seq', 'off', true);
    SELECT seq INTO claimed FROM executions WHERE id = target;
    IF claimed IS NULL THEN
        PERFORM raise_no_such_execution(target);
    END IF;
    RETURN claimed;
END $$;

-- Cancel a pending or running execution: its running nodes first, then the execution, so the
-- terminal status is the last event. Plain SQL writers call it too: SELECT cancel_execution(id).
CREATE OR REPLACE FUNCTION cancel_execution(target uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    current_status text;
BEGIN
    SELECT status INTO current_status FROM executions WHERE id = target FOR UPDATE;
    IF current_status IS NULL THEN
        PERFORM raise_no_such_execution(target);
    ELSIF execution_status_is_terminal(current_status) THEN
        PERFORM raise_illegal_change(
            format('execution %s is %s and can no longer be cancelled', target, current_status));
    END IF;
    UPDATE execution_nodes SET status = 'cancelled' WHERE execution_id = target AND status = 'running';
    UPDATE executions SET status = 'cancelled' WHERE id = target;
END $$;

-- Triggers run their functions whatever the writer's privileges, and nobody else calls them.
REVOKE EXECUTE ON FUNCTION executions_guard_insert(), executions_guard_update(), executions_notify(),
    executions_create_nodes() FROM PUBLIC;
