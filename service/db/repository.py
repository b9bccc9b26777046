"""Every SQL statement the service runs, always parameterised; handlers never see a cursor."""

import base64
import binascii
import contextlib
import datetime
import json
import uuid

import aiopg
import psycopg2
import psycopg2.extras

from ..api.errors import Conflict
from .state_machine import ILLEGAL_CHANGE, NO_SUCH_EXECUTION

FOREIGN_KEY_VIOLATION = "23503"  # PostgreSQL's own SQLSTATE; the triggers' are in state_machine.py


class MissingReference(Exception):
    """A write named an execution or node that does not exist."""


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


@contextlib.asynccontextmanager
async def connection(pool: aiopg.Pool):
    """A connection of the pool's. Under uvloop, aiopg's attempt right after one the server refused
    fails to register its socket (RuntimeError: the refused attempt's poller is still there, on the
    same descriptor number) where asyncio's loop gives OperationalError: both mean the server
    cannot be reached, and are said here as psycopg2 says it (an outage: 503, not 500)."""
    try:
        conn = await pool.acquire()
    except RuntimeError as exc:
        if "handler is closed" not in str(exc):  # uvloop's words; any other is a bug, not an outage
            raise
        raise psycopg2.OperationalError(f"could not connect to the database ({exc})") from exc
    try:
        yield conn
    finally:
        await pool.release(conn)


async def _fetch(pool: aiopg.Pool, sql: str, params=()) -> list[dict]:
    async with connection(pool) as conn:
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


async def execution_wal_position(pool: aiopg.Pool, execution_id: str) -> str | None:
    """The primary's current WAL position if the execution exists (so a standby that has replayed
    that far has it too); None if it does not."""
    row = await _fetch_one(
        pool, "SELECT pg_current_wal_lsn()::text AS position FROM executions WHERE id = %s", (execution_id,))
    return row["position"] if row else None


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


async def include_change_source(pool: aiopg.Pool, source: str) -> list[str]:
    """Make the triggers announce through `source` too; the sources now in force."""
    return (await _fetch_one(pool, "SELECT include_change_source(%s) AS sources", (source,)))["sources"]


async def set_change_sources(pool: aiopg.Pool, sources: list[str]) -> list[str]:
    """Make the triggers announce through exactly these sources; the sources now in force."""
    return (await _fetch_one(pool, "SELECT set_change_sources(%s) AS sources", (sources,)))["sources"]


async def log_standby_snapshot(pool: aiopg.Pool) -> None:
    """Have the primary log its running transactions now (a standby's new slot waits for that)."""
    await _fetch(pool, "SELECT pg_log_standby_snapshot()")


async def change_listeners(pool: aiopg.Pool, application_names: list[str]) -> dict[str, int]:
    """How many connections to this database each application name has open (service listeners)."""
    rows = await _fetch(
        pool, "SELECT application_name, count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = ANY(%s) GROUP BY application_name",
        (application_names,))
    return {row["application_name"]: row["n"] for row in rows}


async def prune_history(pool: aiopg.Pool, older_than_days: float) -> dict[str, int]:
    """Remove logs and node history of executions finished before the cutoff; they stay readable."""
    return await _fetch_one(
        pool, "SELECT * FROM prune_history(now() - make_interval(secs => %s))", (older_than_days * 86400,))


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
