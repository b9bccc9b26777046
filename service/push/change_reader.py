"""The push path's reads: every event after a seq, and what new subscribers lack, on
connections of the hub's own with the statements prepared once."""

import asyncio

import psycopg2

from ..db import pg_async
from ..db.repository import EXECUTION_COLUMNS
from . import synchronous_standby_names

# Every event of the given executions after the given seqs, in seq order: the current status (if
# it changed since), node history and log lines. One statement, so one consistent snapshot. Rows
# as json, not jsonb: the status row is read for every change a socket watches, and row_to_json
# costs PostgreSQL about half of what to_jsonb does (S3: bench/PROFILE.md, session 4). Both parse
# to the same values, so a live change and a snapshot (CATCH_UP) of one state are equal.
EVENTS_AFTER = f"""
    WITH wanted AS (SELECT * FROM unnest($1::uuid[], $2::bigint[]) AS w(id, after))
    SELECT 'status' AS kind, e.id::text AS execution_id, e.status_seq AS seq, row_to_json(s) AS data
    FROM wanted w JOIN executions e ON e.id = w.id,
         LATERAL (SELECT {EXECUTION_COLUMNS}) s
    WHERE e.status_seq > w.after
    UNION ALL
    SELECT 'node', v.execution_id::text, v.seq, (to_jsonb(v) || jsonb_build_object('title', n.title))::json
    FROM wanted w JOIN node_events v ON v.execution_id = w.id AND v.seq > w.after
         JOIN execution_nodes n ON n.execution_id = v.execution_id AND n.node_id = v.node_id
    UNION ALL
    SELECT 'log', l.execution_id::text, l.seq, to_json(l)
    FROM wanted w JOIN execution_logs l ON l.execution_id = w.id AND l.seq > w.after
    ORDER BY execution_id, seq
"""

# What new subscribers lack, for many at once ($1 ids, $2 their `since` or NULL, $3 the owner each
# may see or NULL for all, $4 how many log lines a snapshot ends with). Rows per request (`ord`):
# first its head (owner, status, seqs, and whether `since` can be honoured: `resume`); then, when
# it can, every event after `since` in seq order, else a snapshot: the status, every node's state
# in workflow order, the last log lines. An execution the viewer may not see has no rows at all.
CATCH_UP = f"""
    WITH wanted AS (
        SELECT w.ord, w.since, e.id, e.owner, e.status, e.seq, e.status_seq,
               w.since IS NOT NULL AND e.pruned_through_seq <= w.since AND w.since <= e.seq AS resume
        FROM unnest($1::uuid[], $2::bigint[], $3::text[]) WITH ORDINALITY AS w(id, since, viewer, ord)
        JOIN executions e ON e.id = w.id AND (w.viewer IS NULL OR e.owner = w.viewer)
    )
    SELECT w.ord, 'head' AS kind, w.id::text AS execution_id, w.seq, jsonb_build_object(
               'owner', w.owner, 'status', w.status, 'status_seq', w.status_seq, 'resume', w.resume) AS data,
           0 AS part, 0::bigint AS pos
    FROM wanted w
    UNION ALL
    SELECT w.ord, 'status', w.id::text, e.status_seq, to_jsonb(s), 1, CASE WHEN w.resume THEN e.status_seq ELSE 0 END
    FROM wanted w JOIN executions e ON e.id = w.id, LATERAL (SELECT {EXECUTION_COLUMNS}) s
    WHERE NOT w.resume OR e.status_seq > w.since
    UNION ALL
    SELECT w.ord, 'node', w.id::text, v.seq, to_jsonb(v) || jsonb_build_object('title', n.title), 1, v.seq
    FROM wanted w JOIN node_events v ON w.resume AND v.execution_id = w.id AND v.seq > w.since
         JOIN execution_nodes n ON n.execution_id = v.execution_id AND n.node_id = v.node_id
    UNION ALL
    SELECT w.ord, 'node', w.id::text, n.seq, to_jsonb(n) - 'output' || jsonb_build_object(
               'output_preview', node_output_preview(n.output::text), 'output_size', length(n.output::text)),
           2, n.position
    FROM wanted w JOIN execution_nodes n ON NOT w.resume AND n.execution_id = w.id
    UNION ALL
    SELECT w.ord, 'log', w.id::text, l.seq, to_jsonb(l), 1, l.seq
    FROM wanted w JOIN execution_logs l ON w.resume AND l.execution_id = w.id AND l.seq > w.since
    UNION ALL
    SELECT w.ord, 'log', w.id::text, t.seq, t.data, 3, t.seq
    FROM wanted w, LATERAL (
        SELECT l.seq, to_jsonb(l) AS data FROM execution_logs l
        WHERE NOT w.resume AND l.execution_id = w.id ORDER BY l.seq DESC LIMIT $4) t
    ORDER BY ord, part, pos
"""


# Each announced execution's seq, so the hub knows what is visible yet, and the status row the
# executions feed needs, only for executions whose owner has a feed open ($2; NULL while a worker
# or admin, who sees them all, has one).
FEED_STATUSES = f"""
    SELECT e.id::text, e.seq, e.status_seq,
           CASE WHEN $2 IS NULL OR e.owner = ANY($2) THEN row_to_json(s) END
    FROM executions e, LATERAL (SELECT {EXECUTION_COLUMNS}) s
    WHERE e.id = ANY($1)
"""

# How long a hub read may take before its connection counts as dead (aiopg's default, kept).
READ_TIMEOUT = 60.0


class PreparedReader:
    """The hub's reads on a connection of its own: no pool round trip, statements prepared once
    per connection (no parse or plan per read, a short EXECUTE on the wire), tuple rows.

    The connection opens on first use and after any error; a lock keeps reads from sharing it at
    once. The hub keeps two, so a storm of new subscribers never delays a live change."""

    STATEMENTS = {
        "events_after(uuid[], bigint[])": EVENTS_AFTER,
        "seqs(uuid[])": "SELECT id::text, seq FROM executions WHERE id = ANY($1)",
        "catch_up(uuid[], bigint[], text[], integer)": CATCH_UP,
        "feed_statuses(uuid[], text[])": FEED_STATUSES,
    }

    def __init__(self, dsn: str, application_name: str):
        self._dsn = dsn
        self.application_name = application_name
        self._conn = None  # psycopg2's asynchronous connection (pg_async): no task or timer per read
        self._lock = asyncio.Lock()

    async def _connection(self):
        if self._conn is None or self._conn.closed:
            conn = await pg_async.connect(self._dsn, timeout=READ_TIMEOUT,
                                          application_name=self.application_name)
            try:
                for signature, sql in self.STATEMENTS.items():
                    await pg_async.execute(conn, f"PREPARE {signature} AS {sql}", timeout=READ_TIMEOUT)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _execute(self, sql: str, params) -> list[tuple]:
        async with self._lock:
            retried = False
            while True:
                conn = await self._connection()
                try:
                    return await pg_async.execute(conn, sql, params, timeout=READ_TIMEOUT)
                except BaseException as exc:
                    # Found closed when the read was sent (its backend terminated, the server
                    # restarted since the last read): a read changes nothing, so it is made once
                    # more on a new connection. (A connection that went silent is not retried:
                    # it fails by TCP keepalive or READ_TIMEOUT.)
                    lost = isinstance(exc, psycopg2.Error) and bool(conn.closed)
                    # A broken or cancelled read leaves the connection in an unknown state: start afresh.
                    self.close()
                    if retried or not lost:
                        raise
                    retried = True

    async def events_after(self, after: dict[str, int]) -> list[tuple]:
        """Rows (kind, execution_id, seq, data) of every event after each execution's seq."""
        ids = list(after)
        return await self._execute("EXECUTE events_after(%s::uuid[], %s::bigint[])",
                                   (ids, [after[i] for i in ids]))

    async def feed_statuses(self, execution_ids: list[str], owners: list[str] | None) -> list[tuple]:
        """Rows (execution_id, seq, status_seq, data) of the executions visible now; data only for
        those owned by one of `owners` (None: any)."""
        return await self._execute("EXECUTE feed_statuses(%s::uuid[], %s::text[])", (execution_ids, owners))

    async def replayed(self, position: str) -> bool:
        """Whether this server (a hot standby) has replayed the WAL up to `position`. Once promoted
        it always has: it has all it will ever get from the old primary, and its replay position
        stays where recovery ended while its own WAL position moves on."""
        [(done,)] = await self._execute(
            "SELECT NOT pg_is_in_recovery() OR pg_last_wal_replay_lsn() >= %s::pg_lsn", (position,))
        return bool(done)

    async def in_recovery(self) -> bool:
        """Whether this server is still a standby (not promoted)."""
        [(recovering,)] = await self._execute("SELECT pg_is_in_recovery()", ())
        return bool(recovering)

    async def synchronous_standby_names(self) -> tuple[bool, str]:
        """Whether this server is a standby, and its synchronous_standby_names."""
        [(recovering, setting)] = await self._execute(synchronous_standby_names.QUERY, ())
        return bool(recovering), setting

    async def execution_seqs(self, execution_ids: list[str]) -> dict[str, int]:
        return dict(await self._execute("EXECUTE seqs(%s::uuid[])", (execution_ids,)))

    async def catch_up(self, requests: list[tuple[str, int | None, str | None]],
                       log_tail: int) -> list[list[tuple]]:
        """For each (execution_id, since, viewer): its rows (kind, execution_id, seq, data), the
        head first; no rows when it does not exist or the viewer (None: anyone) may not see it."""
        ids, sinces, viewers = zip(*requests)
        rows = await self._execute("EXECUTE catch_up(%s::uuid[], %s::bigint[], %s::text[], %s)",
                                   (list(ids), list(sinces), list(viewers), log_tail))
        grouped: list[list[tuple]] = [[] for _ in requests]
        for ord_, kind, execution_id, seq, data, _part, _pos in rows:
            grouped[ord_ - 1].append((kind, execution_id, seq, data))
        return grouped

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
