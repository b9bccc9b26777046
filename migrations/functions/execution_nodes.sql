-- Nodes: the guard every node change passes, and what each change leaves behind (an event in
-- node_events, a notification, and the execution's computed progress).

CREATE OR REPLACE FUNCTION execution_nodes_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Only the execution's creation adds nodes, in the same statement.
        IF NOT EXISTS (SELECT 1 FROM executions WHERE id = NEW.execution_id AND seq = 1) THEN
            PERFORM raise_illegal_change('nodes are created with their execution');
        END IF;
        NEW.status := 'pending';
        NEW.attempt := 0;
        NEW.seq := 1;
        RETURN NEW;
    END IF;

    IF NEW.execution_id <> OLD.execution_id OR NEW.node_id <> OLD.node_id OR NEW.title <> OLD.title
       OR NEW.position <> OLD.position THEN
        PERFORM raise_illegal_change('a node''s execution, id, title and position never change');
    END IF;
    NEW.seq := OLD.seq;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;
    NEW.attempt := OLD.attempt;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;

    IF NEW.status <> OLD.status THEN
        IF NOT node_transition_is_legal(OLD.status, NEW.status) THEN
            PERFORM raise_illegal_change(format('illegal node transition from %s to %s', OLD.status, NEW.status));
        END IF;
        IF NEW.status = 'running' THEN
            NEW.attempt := OLD.attempt + 1;  -- failed -> running is a retry
            NEW.started_at := clock_timestamp();
            NEW.finished_at := NULL;
        ELSE
            NEW.finished_at := clock_timestamp();
        END IF;
    ELSIF node_status_is_terminal(OLD.status) THEN
        PERFORM raise_illegal_change(format('node %s is %s and can no longer change', OLD.node_id, OLD.status));
    END IF;

    NEW.seq := claim_execution_seq(NEW.execution_id);
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION execution_nodes_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    output_text text := NEW.output::text;
    computed integer;
BEGIN
    INSERT INTO node_events (execution_id, seq, node_id, status, attempt, started_at, finished_at, error,
                             output_preview, output_size)
    VALUES (NEW.execution_id, NEW.seq, NEW.node_id, NEW.status, NEW.attempt, NEW.started_at, NEW.finished_at,
            NEW.error, node_output_preview(output_text), length(output_text));
    PERFORM announce_change(NEW.execution_id, NEW.seq);

    -- Progress follows the nodes until a worker sets it: the share of the nodes that are done.
    -- The execution's row is locked since this change claimed its seq, so the count is current.
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        SELECT (100 * count(*) FILTER (WHERE node_status_counts_as_done(n.status))) / greatest(count(*), 1)
        INTO computed
        FROM execution_nodes n WHERE n.execution_id = NEW.execution_id;
        PERFORM set_config('aiagent.computing_progress', 'on', true);
        -- On one line, exactly as the guard expects it (see stack_shows_write_by).
        UPDATE executions SET progress = computed WHERE id = NEW.execution_id AND NOT progress_explicit AND status = 'running';
        PERFORM set_config('aiagent.computing_progress', 'off', true);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS execution_nodes_guard ON execution_nodes;
CREATE TRIGGER execution_nodes_guard BEFORE INSERT OR UPDATE ON execution_nodes
    FOR EACH ROW EXECUTE FUNCTION execution_nodes_guard();
DROP TRIGGER IF EXISTS execution_nodes_record ON execution_nodes;
CREATE TRIGGER execution_nodes_record AFTER UPDATE ON execution_nodes
    FOR EACH ROW WHEN (NEW.seq <> OLD.seq) EXECUTE FUNCTION execution_nodes_record();

REVOKE EXECUTE ON FUNCTION execution_nodes_guard(), execution_nodes_record() FROM PUBLIC;
