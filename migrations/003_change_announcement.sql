-- How the triggers announce each change (functions/announcement.sql turns this row into the body
-- of announce_change): through NOTIFY, as a transactional logical-decoding message in the WAL, or
-- both while a deployment moves from one change source to the other. `aiagent-live serve` adds
-- the source it listens to; `aiagent-live announce` sets them (README: Switching change source).
CREATE TABLE change_announcement (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    sources   text[] NOT NULL DEFAULT '{notify}'
              CHECK (sources <@ '{notify,wal}' AND cardinality(sources) >= 1)
);
INSERT INTO change_announcement DEFAULT VALUES;
-- Only the service (the migrating role) switches how changes are announced.
REVOKE ALL ON change_announcement FROM PUBLIC;

-- Announcing is announce_change's job now (functions/announcement.sql).
DROP FUNCTION IF EXISTS notify_change(uuid, bigint);
