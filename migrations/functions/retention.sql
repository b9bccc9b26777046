-- Retention: drop the logs and node history of executions finished before the cutoff, and note
-- up to which seq, so a client resuming from before it gets a fresh snapshot instead.
CREATE OR REPLACE FUNCTION prune_history(cutoff timestamptz, OUT executions bigint, OUT logs bigint,
                                         OUT node_events bigint)
LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE pruned ON COMMIT DROP AS
        SELECT id FROM executions WHERE finished_at < cutoff AND pruned_through_seq < seq;
    PERFORM set_config('aiagent.pruning', 'on', true);
    -- Exactly as the guard expects it (see stack_shows_write_by).
    UPDATE executions SET pruned_through_seq = seq WHERE id IN (SELECT id FROM pruned);
    PERFORM set_config('aiagent.pruning', 'off', true);
    SELECT count(*) INTO executions FROM pruned;
    DELETE FROM execution_logs WHERE execution_id IN (SELECT id FROM pruned);
    GET DIAGNOSTICS logs = ROW_COUNT;
    DELETE FROM node_events WHERE execution_id IN (SELECT id FROM pruned);
    GET DIAGNOSTICS node_events = ROW_COUNT;
    DROP TABLE pruned;
END $$;
