"""The push path on a real streaming hot standby (push_database_url, wal only: a standby cannot
LISTEN): decoding and every read that feeds sockets there, REST and writers on the primary."""

import asyncio
import contextlib

import psycopg2
import pytest

from .actors import Actor
from .databases import cursor
from .helpers import Follower, next_status, readiness
from .standby import streaming_standby


@pytest.fixture(scope="module")
def standby(database_url, tmp_path_factory):
    # The primary announces through the WAL (and has the publication) before it is copied.
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("SELECT include_change_source('wal')")
    with streaming_standby(database_url, tmp_path_factory.mktemp("standby")) as standby:
        yield standby


@pytest.fixture
def on_standby(client_with, standby):
    """`await on_standby()`: a client of an app decoding and reading on the standby."""
    return lambda **changes: client_with(change_source="wal", push_database_url=standby.url, **changes)


async def write_logs(url: str, execution_ids: list[str], lines: int) -> None:
    async with cursor(url) as cur:
        for n in range(lines):
            await cur.execute("INSERT INTO execution_logs (execution_id, message) VALUES (%s, %s)",
                              (execution_ids[n % len(execution_ids)], f"line {n}"))
            await asyncio.sleep(0.003)


async def committed_log_seqs(url: str, execution_id: str) -> list[int]:
    async with cursor(url) as cur:
        await cur.execute("SELECT seq FROM execution_logs WHERE execution_id = %s ORDER BY seq",
                          (execution_id,))
        return [seq for seq, in await cur.fetchall()]


async def test_two_instances_decoding_on_one_standby_each_deliver_every_change_made_on_the_primary(
        on_standby, database_url):
    first, second = await on_standby(), await on_standby()
    user = Actor(first)
    workflow = await user.create_workflow()
    executions = [(await user.create_execution(workflow["id"]))["id"] for _ in range(4)]
    followers = [Follower(execution_id, user.token) for execution_id in executions * 2]
    for n, follower in enumerate(followers):
        await follower.follow(first if n < len(executions) else second)
    await write_logs(database_url, executions, 200)
    await asyncio.sleep(1)  # the last lines arrive (the reconcile is 30 s away)
    for follower in followers:
        await follower.leave()
        assert follower.seqs == await committed_log_seqs(database_url, follower.execution_id)


async def test_a_socket_opened_just_after_rest_created_the_execution_gets_it_from_the_standby(on_standby):
    client = await on_standby()
    user = Actor(client)
    workflow = await user.create_workflow()
    for _ in range(20):
        # Created on the primary; the socket's first read is on the standby, a moment behind.
        execution = await user.create_execution(workflow["id"])
        async with user.ws(execution["id"]) as ws:
            snapshot = await next_status(ws)
            assert (snapshot["execution_id"], snapshot["status"]) == (execution["id"], "pending")


async def test_a_restarted_standby_loses_nothing_and_readyz_tells_the_truth(
        on_standby, standby, database_url, sql):
    client = await on_standby(listener_backoff_max_seconds=0.2)
    user = Actor(client)
    workflow = await user.create_workflow()
    executions = [(await user.create_execution(workflow["id"]))["id"] for _ in range(3)]
    followers = [Follower(execution_id, user.token) for execution_id in executions]
    for follower in followers:
        await follower.follow(client)
    assert await readiness(client) == 200

    await write_logs(database_url, executions, 30)
    await asyncio.to_thread(standby.stop)
    await write_logs(database_url, executions, 30)  # while the standby is down
    for _ in range(50):
        if await readiness(client) == 503:
            break
        await asyncio.sleep(0.1)
    assert await readiness(client) == 503, "not ready while push cannot decode"
    await asyncio.to_thread(standby.start)
    await write_logs(database_url, executions, 30)
    for execution_id in executions:
        await sql.execute("UPDATE executions SET status = 'running' WHERE id = %s", (execution_id,))
    for _ in range(100):
        if await readiness(client) == 200:
            break
        await asyncio.sleep(0.1)
    assert await readiness(client) == 200
    await asyncio.sleep(1)
    for follower in followers:
        await follower.leave()
        assert follower.seqs == await committed_log_seqs(database_url, follower.execution_id)
        assert follower.last_seq == len(follower.seqs) + 2, "the status change after the restart arrived too"
