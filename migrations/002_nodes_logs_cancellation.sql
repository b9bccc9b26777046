-- Nodes, logs and cancellation, all on one per-execution sequence.
--
-- executions.seq is the last seq handed out for the execution: every change to the execution,
-- one of its nodes, or its log takes the next one, under the execution's row lock, so seq is
-- gap-free and in commit order. executions.status_seq is the seq of the row's own last change.
-- Node changes are kept in node_events (the history a resuming client replays); log lines live
-- in execution_logs. The functions and triggers that do all this are in functions/.

ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled'));
ALTER TABLE executions
    ADD COLUMN status_seq bigint NOT NULL DEFAULT 1,
    -- false while progress is computed from the nodes; true once a worker sets it.
    ADD COLUMN progress_explicit boolean NOT NULL DEFAULT false,
    -- history (node_events, execution_logs) at or below this seq has been pruned.
    ADD COLUMN pruned_through_seq bigint NOT NULL DEFAULT 0;

-- Until now every event was the row's own change, so its last one is its last event. The
-- triggers of the release being upgraded are still in place (this release's come after the
-- versioned migrations), and would refuse to touch a finished execution or count this as a
-- change (a seq bump and a notification): off for this one write, which only records what
-- was already true.
ALTER TABLE executions DISABLE TRIGGER USER;
UPDATE executions SET status_seq = seq;
ALTER TABLE executions ENABLE TRIGGER USER;

-- The first release's one notify trigger, for inserts and updates alike; status notifications
-- now come from executions_notify_insert and executions_notify_update.
DROP TRIGGER IF EXISTS executions_notify ON executions;

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
    output_preview  text,      -- the start of the output as JSON text (node_output_preview)
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
