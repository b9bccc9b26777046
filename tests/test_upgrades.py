"""Upgrades: a database built by each earlier release that had migrations, holding executions in
every state that release allowed (and nodes and logs where it had them), is upgraded by today's
`migrate`: nothing in its rows changes, nobody is notified, the state machine works afterwards,
and its schema is the one a fresh database gets."""

import asyncio
import json
from pathlib import Path

import psycopg2
import pytest

from service.db.migrations import apply_migrations, migration_files
from service.db.state_machine import ILLEGAL_CHANGE, NOTIFY_CHANNEL

from .databases import catalog, cursor, empty_database, fetch_all

# The migration files of each earlier release, as it shipped them (see the README beside them).
RELEASES_DIR = Path(__file__).parent / "fixtures" / "releases"
RELEASES = sorted(path.name for path in RELEASES_DIR.iterdir() if path.is_dir())


def test_every_earlier_release_is_here():
    assert RELEASES == ["27dc030", "6db674b", "ccdb67b"]


async def build_like_release(url: str, release: str) -> list[str]:
    """Migrate as that release's runner did: each file in a transaction of its own, recorded by name."""
    names = []
    async with cursor(url) as cur:
        await cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        for path in sorted((RELEASES_DIR / release).glob("[0-9]*.sql")):
            await cur.execute("BEGIN")
            await cur.execute(path.read_text())
            await cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
            await cur.execute("COMMIT")
            names.append(path.name)
    return names


WORKFLOW_NODES = [{"id": "plan", "title": "Plan"}, {"id": "act", "title": "Act"}, {"id": "check"}]


class Writer:
    """Writes an earlier release's database through what that release offered."""

    def __init__(self, cur):
        self.cur = cur

    async def has(self, kind: str, name: str) -> bool:
        [(found,)] = await fetch_all(self.cur, f"SELECT to_{kind}(%s) IS NOT NULL", (name,))
        return found

    async def execution(self, workflow_id: str, *statuses: str, **changes) -> str:
        """A new execution taken through `statuses`; `changes` go with the last (a terminal status
        takes no later change)."""
        [(execution_id,)] = await fetch_all(
            self.cur, "INSERT INTO executions (workflow_id, owner, input_data) VALUES (%s, 'alice', %s)"
                      " RETURNING id", (workflow_id, json.dumps({"q": "hello"})))
        await self._steps("executions", "id = %s", (execution_id,), statuses, changes)
        return execution_id

    async def update(self, execution_id: str, **changes) -> None:
        await self._steps("executions", "id = %s", (execution_id,), (), changes)

    async def node(self, execution_id: str, node_id: str, *statuses: str, **changes) -> None:
        await self._steps("execution_nodes", "execution_id = %s AND node_id = %s", (execution_id, node_id),
                          statuses, changes)

    async def log(self, execution_id: str, message: str, node_id: str | None = None) -> None:
        await self.cur.execute("INSERT INTO execution_logs (execution_id, node_id, message)"
                               " VALUES (%s, %s, %s)", (execution_id, node_id, message))

    async def _steps(self, table: str, where: str, key: tuple, statuses, changes: dict) -> None:
        steps = [{"status": status} for status in statuses] or [{}]
        steps[-1].update(changes)
        for step in filter(None, steps):
            assignments = ", ".join(f"{column} = %s" for column in step)
            await self.cur.execute(f"UPDATE {table} SET {assignments} WHERE {where}", (*step.values(), *key))


async def fill(url: str) -> dict[str, str]:
    """Executions in every state the release allows; nodes, logs, cancelling and pruning where it
    had them. Returns their ids by state."""
    async with cursor(url) as cur:
        writer = Writer(cur)
        [(workflow_id,)] = await fetch_all(
            cur, "INSERT INTO workflows (owner, name, nodes) VALUES ('alice', 'research', %s) RETURNING id",
            (json.dumps(WORKFLOW_NODES),))
        ids = {}
        if await writer.has("regprocedure", "prune_history(timestamptz)"):
            ids["pruned"] = await writer.execution(workflow_id, "running")
            await writer.log(ids["pruned"], "long ago")
            await writer.node(ids["pruned"], "plan", "running", "completed")
            await writer.update(ids["pruned"], status="completed")
            await cur.execute("SELECT * FROM prune_history(clock_timestamp())")
        ids["pending"] = await writer.execution(workflow_id)
        ids["running"] = await writer.execution(workflow_id, "running", progress=40, message="working")
        ids["completed"] = await writer.execution(workflow_id, "running", "completed",
                                                  result=json.dumps({"answer": 42}))
        ids["failed before starting"] = await writer.execution(workflow_id, "failed", error="no worker")
        ids["failed"] = await writer.execution(workflow_id, "running", "failed", error="it broke")
        if await writer.has("regclass", "execution_nodes"):
            ids["running with nodes"] = execution_id = await writer.execution(workflow_id, "running")
            await writer.node(execution_id, "plan", "running", "completed", output=json.dumps({"steps": 3}))
            await writer.log(execution_id, "planned", "plan")
            await writer.node(execution_id, "act", "running", "failed", error="timeout")
            await writer.node(execution_id, "act", "running")  # a retry
            await writer.log(execution_id, "acting again")
            ids["completed with nodes"] = execution_id = await writer.execution(workflow_id, "running")
            await writer.node(execution_id, "plan", "running", "completed")
            await writer.node(execution_id, "act", "skipped")
            await writer.node(execution_id, "check", "running", "completed")
            await writer.log(execution_id, "done")
            await writer.update(execution_id, status="completed")
        if await writer.has("regprocedure", "cancel_execution(uuid)"):
            ids["cancelled"] = execution_id = await writer.execution(workflow_id, "running")
            await writer.node(execution_id, "plan", "running")
            await cur.execute("SELECT cancel_execution(%s)", (execution_id,))
            ids["cancelled before starting"] = execution_id = await writer.execution(workflow_id)
            await cur.execute("SELECT cancel_execution(%s)", (execution_id,))
        return {name: str(execution_id) for name, execution_id in ids.items()}


async def rows(url: str) -> dict[str, list[dict]]:
    """Every row of every table, as JSON objects."""
    async with cursor(url) as cur:
        tables = [name for (name,) in await fetch_all(
            cur, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {table: [row for (row,) in await fetch_all(cur, f"SELECT to_jsonb(t) FROM {table} t")]
                for table in tables}


def keyed(table_rows: list[dict], columns) -> list[str]:
    """The rows as sorted JSON texts of just these columns."""
    return sorted(json.dumps({column: row[column] for column in columns}, sort_keys=True)
                  for row in table_rows)


@pytest.mark.parametrize("release", RELEASES)
async def test_a_database_of_an_earlier_release_upgrades_without_touching_its_rows(database_url, release):
    async with empty_database(database_url, f"upgrade_{release}") as url, \
            empty_database(database_url, "fresh") as fresh_url:
        applied_then = await build_like_release(url, release)
        ids = await fill(url)
        before = await rows(url)

        async with cursor(url) as listener:
            await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            applied_now = await apply_migrations(url)
            async with cursor(url) as cur:
                await cur.execute("SELECT pg_notify(%s, 'after the upgrade')", (NOTIFY_CHANNEL,))
            first = await asyncio.wait_for(listener.connection.notifies.get(), 10)
            assert first.payload == "after the upgrade", "the upgrade itself notified"

        assert applied_now == [name for name in migration_files() if name not in applied_then]
        after = await rows(url)
        for table, old_rows in before.items():
            columns = old_rows[0].keys() if old_rows else ()
            if table == "schema_migrations":
                assert set(keyed(old_rows, columns)) <= set(keyed(after[table], columns))
            else:
                assert keyed(after[table], columns) == keyed(old_rows, columns), table
        old_execution_columns = before["executions"][0].keys()
        for row in after["executions"]:  # the documented backfill of each new column
            if "status_seq" not in old_execution_columns:
                assert (row["status_seq"], row["progress_explicit"], row["pruned_through_seq"]) == (
                    row["seq"], False, 0)

        await apply_migrations(fresh_url)
        assert await catalog(url) == await catalog(fresh_url)
        assert await apply_migrations(url) == []
        await check_the_state_machine_works(url, ids)


async def check_the_state_machine_works(url: str, ids: dict[str, str]) -> None:
    async with cursor(url) as cur:
        writer = Writer(cur)
        await writer.update(ids["running"], status="completed")
        [(status, seq, status_seq)] = await fetch_all(
            cur, "SELECT status, seq, status_seq FROM executions WHERE id = %s", (ids["running"],))
        assert status == "completed" and seq == status_seq
        for finished in ("completed", "failed"):
            with pytest.raises(psycopg2.Error) as refused:
                await writer.update(ids[finished], message="late")
            assert refused.value.pgcode == ILLEGAL_CHANGE
        await writer.update(ids["pending"], status="running")
        await writer.log(ids["pending"], "a line after the upgrade")
        [(seq,)] = await fetch_all(cur, "SELECT seq FROM executions WHERE id = %s", (ids["pending"],))
        assert seq == 3
        await cur.execute("SELECT cancel_execution(%s)", (ids["pending"],))

        [(workflow_id,)] = await fetch_all(cur, "SELECT workflow_id FROM executions WHERE id = %s",
                                           (ids["pending"],))
        new = await writer.execution(workflow_id, "running")
        await writer.node(new, "plan", "running", "completed")
        [(progress, seq)] = await fetch_all(cur, "SELECT progress, seq FROM executions WHERE id = %s", (new,))
        assert (progress, seq) == (33, 5)  # one node of three done, which moved progress (seq 5)
