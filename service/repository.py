"""Every SQL statement the service runs, always parameterised; handlers never see a cursor."""

import asyncio
import base64
import binascii
import datetime
import json
import uuid

import aiopg
import psycopg2
import psycopg2.extras

from . import pg_async
from .errors import Conflict


class MissingReference(Exception):
    """A write named an execution or node that does not exist."""

# SQLSTATEs raised by the migrations' triggers: an illegal change, and a missing execution.
ILLEGAL_CHANGE = "AL409"
NO_SUCH_EXECUTION = "AL404"
FOREIGN_KEY_VIOLATION = "23503"

EXECUTION_COLUMNS = """
    e.id::text AS id, e.workflow_id::text AS workflow_id, e.owner, e.status, e.progress, e.message,
    e.input_data, e.result, e.error, e.created_at, e.started_at, e.finished_at, e.updated_at, e.seq,
    e.status_seq, e.pruned_through_seq, EXTRACT(EPOCH FROM e.finished_at - e.started_at)::float8 AS execution_time
"""
NODE_COLUMNS = """
    n.execution_id::text AS execution_id, n.node_id, n.title, n.position, n.status, n.attempt,
    n.started_at, n.finished_at, n.error, n.seq
"""
LOG_COLUMNS = "l.execution_id::text AS execution_id, l.seq, l.ts, l.level, l.node_id, l.message"
WORKFLOW_COLUMNS = "w.id::text AS id, w.owner, w.name, w.nodes, w.created_at"

# What a worker may change on an execution; everything else belongs to the database.
PATCHABLE_COLUMNS = ("status", "progress", "message", "result", "error")
JSON_COLUMNS = ("result", "input_data")


async def _fetch(pool: aiopg.Pool, sql: str, params=()) -> list[dict]:
    async with pool.acquire() as conn:
        async with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            try:
                await cur.execute(sql, params)
            except psycopg2.Error as exc:
                if exc.pgcode == ILLEGAL_CHANGE:
                    raise Conflict(exc.diag.message_primary or "illegal change") from exc
                if exc.pgcode in (NO_SUCH_EXECUTION, FOREIGN_KEY_VIOLATION):
                    raise MissingReference(exc.diag.message_primary or "missing reference") from exc
                raise
            return list(await cur.fetchall()) if cur.description else []


async def _fetch_one(pool: aiopg.Pool, sql: str, params=()) -> dict | None:
    rows = await _fetch(pool, sql, params)
    return rows[0] if rows else None


async def ping(pool: aiopg.Pool) -> None:
    await _fetch(pool, "SELECT 1")


# -- workflows -------------------------------------------------------------------------------

async def create_workflow(pool: aiopg.Pool, owner: str, name: str, nodes: list[dict]) -> dict:
    return await _fetch_one(
        pool,
        f"INSERT INTO workflows AS w (owner, name, nodes) VALUES (%s, %s, %s) RETURNING {WORKFLOW_COLUMNS}",
        (owner, name, psycopg2.extras.Json(nodes)),
    )


async def get_workflow(pool: aiopg.Pool, workflow_id: str) -> dict | None:
    return await _fetch_one(pool, f"SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = %s", (workflow_id,))


async def list_workflows(pool: aiopg.Pool, *, owner: str | None, limit: int, after: "Cursor | None") -> list[dict]:
    where, params = _page_filter("w", owner, after)
    return await _fetch(
        pool,
        f"SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE {where} "
        "ORDER BY w.created_at DESC, w.id DESC LIMIT %s",
        (*params, limit),
    )


# -- executions ------------------------------------------------------------------------------

async def create_execution(pool: aiopg.Pool, workflow_id: str, owner: str, input_data) -> dict:
    return await _fetch_one(
        pool,
        f"INSERT INTO executions AS e (workflow_id, owner, input_data) VALUES (%s, %s, %s) "
        f"RETURNING {EXECUTION_COLUMNS}",
        (workflow_id, owner, psycopg2.extras.Json(input_data)),
    )


async def get_execution(pool: aiopg.Pool, execution_id: str) -> dict | None:
    return await _fetch_one(
        pool, f"SELECT {EXECUTION_COLUMNS} FROM executions e WHERE e.id = %s", (execution_id,)
    )


async def get_executions(pool: aiopg.Pool, execution_ids: list[str]) -> list[dict]:
    """One read for a whole batch of changed executions."""
    return await _fetch(
        pool, f"SELECT {EXECUTION_COLUMNS} FROM executions e WHERE e.id = ANY(%s::uuid[])", (execution_ids,)
    )


async def get_owners(pool: aiopg.Pool, execution_ids: list[str]) -> dict[str, str]:
    rows = await _fetch(
        pool, "SELECT id::text AS id, owner FROM executions WHERE id = ANY(%s::uuid[])", (execution_ids,))
    return {row["id"]: row["owner"] for row in rows}


async def list_executions(
    pool: aiopg.Pool, *, owner: str | None, status: str | None, workflow_id: str | None,
    limit: int, after: "Cursor | None",
) -> list[dict]:
    where, params = _page_filter("e", owner, after)
    if status is not None:
        where += " AND e.status = %s"
        params.append(status)
    if workflow_id is not None:
        where += " AND e.workflow_id = %s"
        params.append(workflow_id)
    return await _fetch(
        pool,
        f"SELECT {EXECUTION_COLUMNS} FROM executions e WHERE {where} "
        "ORDER BY e.created_at DESC, e.id DESC LIMIT %s",
        (*params, limit),
    )


async def update_execution(pool: aiopg.Pool, execution_id: str, changes: dict) -> dict | None:
    """Apply a worker's changes; the triggers enforce the state machine (Conflict on a violation)."""
    assignments, params = [], []
    for column in PATCHABLE_COLUMNS:
        if column in changes:
            value = changes[column]
            assignments.append(f"{column} = %s")
            params.append(psycopg2.extras.Json(value) if column in JSON_COLUMNS and value is not None else value)
    if not assignments:
        return await get_execution(pool, execution_id)
    # A write that changes nothing is skipped by the trigger and returns no row: read it then.
    row = await _fetch_one(
        pool,
        f"UPDATE executions AS e SET {', '.join(assignments)} WHERE e.id = %s RETURNING {EXECUTION_COLUMNS}",
        (*params, execution_id),
    )
    return row or await get_execution(pool, execution_id)


# -- nodes -----------------------------------------------------------------------------------

async def list_nodes(pool: aiopg.Pool, execution_id: str) -> list[dict]:
    return await _fetch(
        pool, f"SELECT {NODE_COLUMNS}, n.output FROM execution_nodes n WHERE n.execution_id = %s "
        "ORDER BY n.position", (execution_id,))


async def update_node(pool: aiopg.Pool, execution_id: str, node_id: str, changes: dict) -> dict | None:
    """Apply a worker's change to one node; the triggers enforce its state machine."""
    assignments, params = [], []
    for column in ("status", "output", "error"):
        if column in changes:
            value = changes[column]
            assignments.append(f"{column} = %s")
            params.append(psycopg2.extras.Json(value) if column == "output" and value is not None else value)
    select = (f"SELECT {NODE_COLUMNS}, n.output FROM execution_nodes n "
              "WHERE n.execution_id = %s AND n.node_id = %s")
    if assignments:
        row = await _fetch_one(
            pool,
            f"UPDATE execution_nodes AS n SET {', '.join(assignments)} "
            f"WHERE n.execution_id = %s AND n.node_id = %s RETURNING {NODE_COLUMNS}, n.output",
            (*params, execution_id, node_id))
        if row is not None:
            return row
    return await _fetch_one(pool, select, (execution_id, node_id))


# -- logs ------------------------------------------------------------------------------------

async def append_logs(pool: aiopg.Pool, execution_id: str, lines: list[dict]) -> list[dict]:
    """Append a batch of lines in one statement (one transaction): all or none."""
    return await _fetch(
        pool,
        f"INSERT INTO execution_logs AS l (execution_id, level, node_id, message) "
        f"SELECT %s, x.level, x.node_id, x.message FROM jsonb_to_recordset(%s) "
        f"AS x(ord integer, level text, node_id text, message text) ORDER BY x.ord RETURNING {LOG_COLUMNS}",
        (execution_id, psycopg2.extras.Json([{**line, "ord": i} for i, line in enumerate(lines)])))


async def list_logs(pool: aiopg.Pool, execution_id: str, after_seq: int, limit: int) -> list[dict]:
    return await _fetch(
        pool, f"SELECT {LOG_COLUMNS} FROM execution_logs l WHERE l.execution_id = %s AND l.seq > %s "
        "ORDER BY l.seq LIMIT %s", (execution_id, after_seq, limit))


# -- cancellation and retention --------------------------------------------------------------

async def cancel_execution(pool: aiopg.Pool, execution_id: str) -> dict | None:
    await _fetch(pool, "SELECT cancel_execution(%s)", (execution_id,))
    return await get_execution(pool, execution_id)


async def prune_history(pool: aiopg.Pool, older_than_days: float) -> dict[str, int]:
    """Remove logs and node history of executions finished before the cutoff; they stay readable."""
    return await _fetch_one(
        pool, "SELECT * FROM prune_history(now() - make_interval(secs => %s))", (older_than_days * 86400,))


# -- what the push path reads ----------------------------------------------------------------

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
               'output_preview', left(n.output::text, 65536), 'output_size', length(n.output::text)),
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

    async def execution_seqs(self, execution_ids: list[str]) -> dict[str, int]:
        return dict(await self._execute("EXECUTE seqs(%s::uuid[])", (execution_ids,)))

    async def catch_up(self, requests: list[tuple[str, int | None, str | None]], log_tail: int) -> list[list[tuple]]:
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


# -- pagination ------------------------------------------------------------------------------

class Cursor:
    """Keyset position (created_at, id) in a newest-first listing, opaque to clients."""

    def __init__(self, created_at: str, ident: str):
        self.created_at, self.ident = created_at, ident

    @classmethod
    def after_row(cls, row: dict) -> "Cursor":
        return cls(row["created_at"].isoformat(), row["id"])

    def encode(self) -> str:
        return base64.urlsafe_b64encode(json.dumps([self.created_at, self.ident]).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        """Raises ValueError for anything that is not a cursor this service issued."""
        try:
            created_at, ident = json.loads(base64.urlsafe_b64decode(text.encode("ascii")))
            datetime.datetime.fromisoformat(created_at)
            return cls(created_at, str(uuid.UUID(ident)))
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ValueError("not a cursor issued by this service") from exc


def _page_filter(alias: str, owner: str | None, after: Cursor | None) -> tuple[str, list]:
    where, params = "TRUE", []
    if owner is not None:
        where += f" AND {alias}.owner = %s"
        params.append(owner)
    if after is not None:
        where += f" AND ({alias}.created_at, {alias}.id) < (%s::timestamptz, %s::uuid)"
        params += [after.created_at, after.ident]
    return where, params
