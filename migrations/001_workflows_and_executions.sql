-- Workflows and their executions. The rules every writer obeys, whether it goes through the REST
-- API or writes plain SQL, are the functions and triggers in functions/ (executions.sql).

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
