-- Workflows, executions, and the rules every writer obeys, whether it goes through the REST API
-- or writes plain SQL. Each committed change to an execution bumps its seq and NOTIFYs a tiny
-- hint on channel aiagent_live ("<execution id>:<seq>"); the service reads the row itself.

CREATE TABLE workflows (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner       text NOT NULL CHECK (owner <> ''),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- [{"id": "plan", "title": "Plan the research"}, ...]
    nodes       jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(nodes) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_owner_created ON workflows (owner, created_at DESC, id DESC);
CREATE INDEX workflows_created ON workflows (created_at DESC, id DESC);

CREATE TABLE executions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    workflow_id  uuid NOT NULL REFERENCES workflows (id),
    owner        text NOT NULL CHECK (owner <> ''),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    progress     integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    message      text,
    input_data   jsonb,
    result       jsonb,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Per-execution, gap-free, increasing: the resume cursor. Bumped under the row lock, so
    -- the order of seq is the order of commits.
    seq          bigint NOT NULL DEFAULT 1
);
CREATE INDEX executions_owner_created ON executions (owner, created_at DESC, id DESC);
CREATE INDEX executions_created ON executions (created_at DESC, id DESC);
CREATE INDEX executions_workflow ON executions (workflow_id);

-- SQLSTATE AL409 marks an illegal change; the service answers it with 409.
CREATE FUNCTION executions_guard_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'pending' THEN
        RAISE EXCEPTION 'a new execution must be pending, not %', NEW.status USING ERRCODE = 'AL409';
    END IF;
    NEW.seq := 1;
    NEW.created_at := clock_timestamp();
    NEW.updated_at := NEW.created_at;
    NEW.started_at := NULL;
    NEW.finished_at := NULL;
    RETURN NEW;
END $$;

CREATE FUNCTION executions_guard_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.workflow_id <> OLD.workflow_id OR NEW.owner <> OLD.owner
       OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'id, workflow_id, owner and created_at of an execution never change'
            USING ERRCODE = 'AL409';
    END IF;

    -- Columns the database owns: whatever a writer put there is replaced below.
    NEW.seq := OLD.seq;
    NEW.updated_at := OLD.updated_at;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;

    -- A write that changes nothing is not a change: no seq, no notification.
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NULL;
    END IF;

    IF OLD.status IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'execution % is % and can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'AL409';
    END IF;

    IF NEW.status <> OLD.status THEN
        IF NOT ((OLD.status = 'pending' AND NEW.status IN ('running', 'failed'))
                OR (OLD.status = 'running' AND NEW.status IN ('completed', 'failed'))) THEN
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
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

CREATE FUNCTION executions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only a hint: ids and seq, never the row (NOTIFY payloads must stay under 8000 bytes).
    PERFORM pg_notify('aiagent_live', NEW.id::text || ':' || NEW.seq::text);
    RETURN NULL;
END $$;

CREATE TRIGGER executions_guard_insert BEFORE INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_guard_insert();
CREATE TRIGGER executions_guard_update BEFORE UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_guard_update();
CREATE TRIGGER executions_notify AFTER INSERT OR UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_notify();
