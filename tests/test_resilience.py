"""The push path survives a killed listener and a client that stops reading."""

import asyncio
import struct

import pytest
from aiohttp import WSMsgType

from .actors import Actor
from .helpers import NeverReadingClient, next_status, readiness, terminate_listener

pytestmark = pytest.mark.both_change_sources


async def test_killed_listener_reconnects_and_every_socket_ends_with_the_latest_state(
        client_with, config, sql):
    # A slower backoff keeps the outage visible long enough to watch /readyz report it.
    client = await client_with(listener_backoff_min_seconds=1.0, reconcile_interval_seconds=60)
    user = Actor(client)
    executions = [await user.create_execution() for _ in range(3)]
    sockets = [await user.ws(e["id"]).__aenter__() for e in executions]
    try:
        for ws in sockets:
            await next_status(ws)
        assert await readiness(client) == 200

        async def keep_writing():
            for progress in range(1, 61):
                for execution in executions:
                    await sql.execute("UPDATE executions SET status='running', progress=%s WHERE id=%s",
                                      (progress, execution["id"]))
                await asyncio.sleep(0.02)

        writer = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.2)
        await terminate_listener(config.database_url)
        statuses = []
        while not writer.done() or (statuses and statuses[-1] != 200):
            statuses.append(await readiness(client))
            await asyncio.sleep(0.05)
        await writer
        assert 503 in statuses, statuses
        assert statuses[-1] == 200

        for execution in executions:
            await sql.execute("UPDATE executions SET status='completed' WHERE id=%s", (execution["id"],))
        for ws in sockets:
            seqs, last = [], None
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != WSMsgType.TEXT:
                    break
                if msg.json()["type"] == "status":
                    last = msg.json()
                    seqs.append(last["seq"])
            assert last["status"] == "completed" and last["progress"] == 100 and last["seq"] == 62
            assert seqs == sorted(set(seqs)), "nothing pushed twice or out of order"
            assert ws.close_code == 1000, (msg, seqs)
    finally:
        for ws in sockets:
            await ws.close()


async def test_reconcile_delivers_what_no_notification_announced(client_with, config, sql):
    """A change whose NOTIFY never arrives (here: the listener is cut off) still reaches the socket."""
    client = await client_with(reconcile_interval_seconds=0.5, listener_backoff_min_seconds=30,
                               listener_backoff_max_seconds=30)
    user = Actor(client)
    execution = await user.create_execution()
    async with user.ws(execution["id"]) as ws:
        await next_status(ws)
        await terminate_listener(config.database_url)
        await asyncio.sleep(0.2)
        await sql.execute("UPDATE executions SET status='running', message='unannounced' WHERE id=%s",
                          (execution["id"],))
        message = await next_status(ws, timeout=5)
        assert (message["message"], message["seq"]) == ("unannounced", 2)


async def test_a_client_that_never_reads_is_closed_1013_without_delaying_others(client, user, sql, config):
    execution = await user.create_execution()
    stuck = await asyncio.to_thread(
        NeverReadingClient, client.port,
        f"/api/v1/ws/executions/{execution['id']}?access_token={user.token}")
    try:
        async with user.ws(execution["id"]) as healthy:
            await next_status(healthy)
            # Far more than the kernel's socket buffers hold, so the stuck socket really blocks.
            big = "z" * 1_000_000
            loop = asyncio.get_running_loop()
            lags = []
            for n in range(40):
                await sql.execute("UPDATE executions SET status='running', message=%s WHERE id=%s",
                                  (f"{n} {big}", execution["id"]))
                committed = loop.time()
                message = await next_status(healthy)
                lags.append(loop.time() - committed)
                assert message["message"].startswith(f"{n} ")
            # The healthy socket got every change promptly (well inside the stuck one's send timeout).
            assert max(lags) < config.ws_send_timeout_seconds, lags
            await asyncio.sleep(config.ws_send_timeout_seconds * 2 + 1)
        frames = await asyncio.to_thread(stuck.read_all_frames)
        close_frames = [payload for opcode, payload in frames if opcode == 0x8]
        assert close_frames, f"no close frame among {len(frames)} frames"
        assert struct.unpack(">H", close_frames[0][:2])[0] == 1013
    finally:
        stuck.close()
