-- Logs: each line claims the execution's next seq and notifies; the log is append-only.

CREATE OR REPLACE FUNCTION execution_logs_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.seq := claim_execution_seq(NEW.execution_id);
    NEW.ts := clock_timestamp();
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION execution_logs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_change(NEW.execution_id, NEW.seq);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION execution_logs_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM raise_illegal_change('the log is append-only');
END $$;

DROP TRIGGER IF EXISTS execution_logs_append ON execution_logs;
CREATE TRIGGER execution_logs_append BEFORE INSERT ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_append();
DROP TRIGGER IF EXISTS execution_logs_notify ON execution_logs;
CREATE TRIGGER execution_logs_notify AFTER INSERT ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_notify();
DROP TRIGGER IF EXISTS execution_logs_append_only ON execution_logs;
CREATE TRIGGER execution_logs_append_only BEFORE UPDATE ON execution_logs
    FOR EACH ROW EXECUTE FUNCTION execution_logs_append_only();

REVOKE EXECUTE ON FUNCTION execution_logs_append(), execution_logs_notify(), execution_logs_append_only()
    FROM PUBLIC;
