-- Baseline 2's trigger, in its own database (never the service's): the whole row as JSON in
-- the NOTIFY payload, on one channel, as a developer following broadcaster's docs would write.
-- (the harness has dropped the service's notifying triggers in this database)
CREATE OR REPLACE FUNCTION bench_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('executions', row_to_json(NEW)::text);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_row_notify ON executions;
CREATE TRIGGER bench_row_notify AFTER INSERT OR UPDATE ON executions
    FOR EACH ROW EXECUTE FUNCTION bench_row_notify();
